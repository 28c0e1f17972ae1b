"""The django-helpdesk harness works, and django-helpdesk 2.6.1 behaves as docs/sources says.

Each test runs on SQLite, PostgreSQL and MariaDB (``helpdesk_site``). Rows are read back
with plain SQL through SQLAlchemy, the way itsm-notify will read them, not through
Django's ORM.
"""

from __future__ import annotations

from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import sqlalchemy as sa

from django_apps import preset_sql
from django_apps.helpdesk_site import HelpdeskSite

OPEN, REOPENED, RESOLVED, CLOSED = 1, 2, 3, 4


def rows(url: str, sql: str, **params: Any) -> list[dict[str, Any]]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(sa.text(sql), params)]
    finally:
        engine.dispose()


def relations(url: str) -> tuple[set[str], set[str]]:
    """The database's table names and view names."""
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        return set(inspector.get_table_names()), set(inspector.get_view_names())
    finally:
        engine.dispose()


def recipients(mails: list[Any]) -> dict[str, str]:
    """address -> the subject django-helpdesk sent it (one mail per address here)."""
    return {address.strip(): mail.subject for mail in mails for address in mail.to}


def reply(subject: str, sender: str, message_id: str, body: str = "Thanks!") -> EmailMessage:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = "it@example.com"
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message.set_content(body)
    return message


def test_its_own_migrations_build_the_schema(helpdesk_site: HelpdeskSite) -> None:
    applied = rows(helpdesk_site.url, "SELECT app, name FROM django_migrations")
    assert {"app": "helpdesk", "name": "0043_fix_on_delete_behaviour"} in applied
    tables, _ = relations(helpdesk_site.url)
    assert {"auth_user", "auth_group", "auth_user_groups", "auth_permission",
            "helpdesk_ticket", "helpdesk_followup", "helpdesk_queue", "helpdesk_ticketcc",
            "helpdesk_usersettings", "helpdesk_ticketchange", "helpdesk_emailtemplate",
            "django_site"} <= tables
    # the seeded rows a reset keeps: 16 templates x 10 locales, plus "merged" in en and fr
    assert rows(helpdesk_site.url, "SELECT COUNT(*) AS n FROM helpdesk_emailtemplate") \
        == [{"n": 162}]
    assert rows(helpdesk_site.url, "SELECT domain FROM django_site") \
        == [{"domain": "helpdesk.example.com"}]


def test_tickets_and_follow_ups_through_its_forms_and_update_ticket(
        helpdesk_site: HelpdeskSite) -> None:
    site = helpdesk_site
    alice = site.user("alice", email="alice@example.com", staff=True)
    bob = site.user("bob", email="bob@example.com", staff=True)
    carol = site.user("carol", email="carol@example.com", staff=True)
    queue = site.queue("it", email_address="it@example.com",
                       new_ticket_cc="new1@example.com, new2@example.com",
                       updated_ticket_cc="watch@example.com")
    with site.signals() as signals:
        ticket = site.open_ticket(queue, title="VPN down", body="Since 9:00", by=alice,
                                  submitter_email="sub@example.com", assigned_to=bob,
                                  priority=2)
        opened = recipients(site.helpdesk_mail())
        site.add_cc(ticket, email="outsider@example.com")
        note = site.comment(ticket, alice, "internal: the router again", public=False)
        noted = recipients(site.helpdesk_mail())
        resolved = site.change_status(ticket, alice, RESOLVED, comment="Router replaced")
        resolved_mail = recipients(site.helpdesk_mail())
        moved = site.assign(ticket, alice, carol)
        assigned = recipients(site.helpdesk_mail())

    assert rows(site.url, "SELECT id, queue_id, title, status, priority, submitter_email,"
                          " assigned_to_id FROM helpdesk_ticket") == [{
        "id": ticket.id, "queue_id": queue.id, "title": "VPN down", "status": RESOLVED,
        "priority": 2, "submitter_email": "sub@example.com", "assigned_to_id": carol.id}]
    followups = rows(site.url, "SELECT id, user_id, public, new_status, comment"
                               " FROM helpdesk_followup ORDER BY id")
    assert [(f["user_id"], bool(f["public"]), f["new_status"]) for f in followups] == [
        (alice.id, True, None),  # "Ticket Opened & Assigned to bob"
        (alice.id, False, None),  # the private note
        (alice.id, True, RESOLVED),
        (alice.id, False, None),  # the assignment (update_ticket's default public=False)
    ]
    assert rows(site.url, "SELECT field, old_value, new_value FROM helpdesk_ticketchange"
                          " WHERE followup_id = :f ORDER BY id", f=moved.id) \
        == [{"field": "Owner", "old_value": "bob", "new_value": "carol"}]
    assert rows(site.url, "SELECT field, old_value, new_value FROM helpdesk_ticketchange"
                          " WHERE followup_id = :f", f=resolved.id) \
        == [{"field": "Status", "old_value": "Open", "new_value": "Resolved"}]

    # whom django-helpdesk itself mails (docs/sources/django-helpdesk.md)
    assert opened == {"sub@example.com": "[it-1] VPN down (Opened)",
                      "new1@example.com": "[it-1] VPN down (Opened)",
                      "new2@example.com": "[it-1] VPN down (Opened)",
                      "watch@example.com": "[it-1] VPN down (Opened)",
                      "bob@example.com": "[it-1] VPN down (Assigned To You)"}
    assert set(noted) == {"bob@example.com", "watch@example.com"}  # no submitter, no CC
    assert set(resolved_mail) == {"sub@example.com", "bob@example.com", "watch@example.com"}
    assert assigned == {"carol@example.com": "[it-1] VPN down (Assigned To You)",
                        "watch@example.com": "[it-1] VPN down (Assigned)"}
    assert [(s.signal, s.sender, s.followup.id if s.followup else None) for s in signals] == [
        ("new_ticket_done", "TicketForm", None),
        ("update_ticket_done", "update_ticket", note.id),
        ("update_ticket_done", "update_ticket", resolved.id),
        ("update_ticket_done", "update_ticket", moved.id),
    ]


def test_ticket_ccs_are_mailed_only_when_the_queue_says_so(helpdesk_site: HelpdeskSite) -> None:
    site = helpdesk_site
    alice = site.user("alice", email="alice@example.com", staff=True)
    dave = site.user("dave", email="dave@example.com")
    quiet = site.queue("quiet", email_address="quiet@example.com")
    loud = site.queue("loud", email_address="loud@example.com", notify_ticket_ccs=True)
    for queue in (quiet, loud):
        ticket = site.open_ticket(queue, title="Printer", body="Jammed", by=alice)
        site.add_cc(ticket, user=dave)
        site.add_cc(ticket, email="outsider@example.com")
        site.helpdesk_mail()
        site.comment(ticket, alice, "private", public=False)
        mailed = set(recipients(site.helpdesk_mail()))
        if queue is quiet:
            assert mailed == set()
        else:  # even a private follow-up goes to every CC, account or not
            assert mailed == {"dave@example.com", "outsider@example.com"}
    assert rows(site.url, "SELECT user_id, email FROM helpdesk_ticketcc ORDER BY id") == [
        {"user_id": dave.id, "email": None}, {"user_id": None, "email": "outsider@example.com"},
    ] * 2


def test_public_tickets_and_follow_ups_without_an_author(helpdesk_site: HelpdeskSite) -> None:
    site = helpdesk_site
    erin = site.user("erin", email="erin@example.com")  # not staff
    queue = site.queue("web", email_address="web@example.com")
    with site.signals() as signals:
        ticket = site.open_public_ticket(queue, title="Cannot log in", body="Help",
                                         submitter_email="erin@example.com")
        followup = site.comment(ticket, erin, "Any news?")
    assert followup.user_id is None  # update_ticket records only staff as the author
    stored = rows(site.url, "SELECT user_id, public FROM helpdesk_followup WHERE id = :f",
                  f=followup.id)
    assert [(row["user_id"], bool(row["public"])) for row in stored] == [(None, True)]
    assert [(s.signal, s.sender) for s in signals] == [
        ("new_ticket_done", "PublicTicketForm"), ("update_ticket_done", "update_ticket")]
    assert ticket.ticket_url.startswith(
        f"http://helpdesk.example.com/helpdesk/view/?ticket=web-{ticket.id}"
        "&email=erin@example.com&key=")
    assert ticket.staff_url == f"http://helpdesk.example.com/helpdesk/tickets/{ticket.id}/"


def test_get_email_files_a_reply_with_the_tracking_tag_on_its_ticket(
        helpdesk_site: HelpdeskSite, tmp_path: Path) -> None:
    site = helpdesk_site
    alice = site.user("alice", email="alice@example.com", staff=True)
    bob = site.user("bob", email="bob@example.com", staff=True, email_on_ticket_change=False)
    queue = site.queue("it", email_address="it@example.com", new_ticket_cc="new@example.com",
                       updated_ticket_cc="watch@example.com", intake_dir=tmp_path / "mail")
    ticket = site.open_ticket(queue, title="VPN down", body="Since 9:00", by=alice,
                              submitter_email="sub@example.com", assigned_to=bob)
    site.change_status(ticket, alice, CLOSED, comment="Fixed")
    site.helpdesk_mail()

    with site.signals() as signals:
        joined = site.receive_email(queue, reply(f"Re: [it-{ticket.id}] VPN down",
                                                 "sub@example.com", "<reply-1@example.com>"))
        told_of_reply = recipients(site.helpdesk_mail())
        untagged = site.receive_email(queue, reply("Re: VPN down", "sub@example.com",
                                                   "<reply-2@example.com>"))
        told_of_new = recipients(site.helpdesk_mail())
    assert joined.consumed, joined.log
    assert joined.ticket.id == ticket.id
    assert untagged.ticket.id != ticket.id  # without the tag: a new ticket
    [stored] = rows(site.url, "SELECT ticket_id, user_id, public, new_status, message_id"
                              " FROM helpdesk_followup WHERE id = :f", f=joined.followup.id)
    assert (stored["ticket_id"], stored["user_id"], bool(stored["public"]),
            stored["new_status"], stored["message_id"]) \
        == (ticket.id, None, True, REOPENED, "<reply-1@example.com>")  # no author
    assert rows(site.url, "SELECT status FROM helpdesk_ticket WHERE id = :t", t=ticket.id) \
        == [{"status": REOPENED}]  # a reply reopens a closed ticket
    assert [(s.signal, s.sender) for s in signals] == [
        ("update_ticket_done", "create_object_from_email_message"),
        ("new_ticket_done", "create_object_from_email_message")]
    # whom get_email itself mails: the sender back, and the owner whatever his settings
    assert set(told_of_reply) == {"sub@example.com", "bob@example.com"}
    assert set(told_of_new) == {"sub@example.com", "new@example.com", "watch@example.com"}


def test_a_queue_locale_without_templates_mails_nobody(helpdesk_site: HelpdeskSite) -> None:
    site = helpdesk_site
    alice = site.user("alice", email="alice@example.com", staff=True)
    bob = site.user("bob", email="bob@example.com", staff=True)
    german = site.queue("de", email_address="de@example.com", locale="de")
    japanese = site.queue("ja", email_address="ja@example.com", locale="ja")
    site.open_ticket(german, title="Drucker", body="kaputt", by=alice, assigned_to=bob)
    assert [mail.subject for mail in site.helpdesk_mail()] \
        == ["[de-1] Drucker (Ihnen zugewiesen)"]
    site.open_ticket(japanese, title="Printer", body="broken", by=alice, assigned_to=bob)
    assert site.helpdesk_mail() == []


def test_its_mail_can_be_switched_off_and_a_reset_restores_it(
        helpdesk_site: HelpdeskSite) -> None:
    site = helpdesk_site
    alice = site.user("alice", email="alice@example.com", staff=True)
    queue = site.queue("it", email_address="it@example.com")
    assert site.switch_off_helpdesk_mail() == 162
    site.open_ticket(queue, title="Quiet", body="x", by=alice, submitter_email="s@example.com")
    assert site.helpdesk_mail() == []

    again = HelpdeskSite.open(site.url)  # what the next test gets
    assert rows(again.url, "SELECT COUNT(*) AS n FROM helpdesk_ticket") == [{"n": 0}]
    alice = again.user("alice", email="alice@example.com", staff=True)
    queue = again.queue("it", email_address="it@example.com")
    ticket = again.open_ticket(queue, title="Loud", body="x", by=alice,
                               submitter_email="s@example.com")
    assert ticket.id == 1  # sequences restart too
    assert set(recipients(again.helpdesk_mail())) == {"s@example.com"}


def test_open_drops_what_other_tools_left(helpdesk_site: HelpdeskSite) -> None:
    engine = sa.create_engine(helpdesk_site.url)
    try:
        with engine.begin() as conn:
            conn.exec_driver_sql("CREATE TABLE notification_deliveries (id INTEGER PRIMARY KEY)")
            conn.exec_driver_sql("CREATE VIEW tickets AS SELECT id FROM helpdesk_ticket")
    finally:
        engine.dispose()
    tables, views = relations(HelpdeskSite.open(helpdesk_site.url).url)
    assert "notification_deliveries" not in tables
    assert "tickets" not in views
    # the outbox belongs to an installed app (itsm_notify.django): kept, emptied
    assert {"helpdesk_ticket", "notification_outbox"} <= tables


def test_the_links_it_serves(helpdesk_site: HelpdeskSite) -> None:
    from django.test import Client

    site = helpdesk_site
    alice = site.user("alice", email="alice@example.com", staff=True)
    queue = site.queue("it", email_address="it@example.com")
    ticket = site.open_public_ticket(queue, title="Printer on fire", body="Really",
                                     submitter_email="a+b@example.com")
    staff_path = f"/helpdesk/tickets/{ticket.id}/"
    assert Client().get(staff_path).status_code == 302  # to the login page
    staff = Client()
    staff.force_login(alice)
    assert staff.get(staff_path).status_code == 200

    query = urlencode({"ticket": f"it-{ticket.id}", "email": ticket.submitter_email,
                       "key": ticket.secret_key})
    page = Client().get(f"/helpdesk/view/?{query}")
    assert page.status_code == 200
    assert b"Printer on fire" in page.content
    # django-helpdesk's own Ticket.ticket_url leaves the address unencoded: '+' reads as
    # a space, the lookup fails, and the submitter is refused
    own = urlsplit(ticket.ticket_url)
    assert Client().get(f"{own.path}?{own.query}").status_code == 403


def test_the_draft_preset_sql_reads_its_rows(helpdesk_site: HelpdeskSite, tmp_path: Path) -> None:
    from django.contrib.auth.models import Group, Permission

    site = helpdesk_site
    alice = site.user("alice", email="alice@example.com", staff=True, first_name="Alice")
    quiet = site.user("quiet", email="", staff=True, email_on_ticket_assign=False)
    member = site.user("member", email="member@example.com", staff=True)
    grouped = site.user("grouped", email="grouped@example.com", staff=True)
    root = site.user("root", email="root@example.com", superuser=True)
    site.user("gone", email="gone@example.com", staff=True, active=False, superuser=True)
    queue = site.queue("it-ops", email_address="it@example.com", locale="de",
                       new_ticket_cc="a@example.com,b@example.com", notify_ticket_ccs=True,
                       intake_dir=tmp_path / "mail")
    access = Permission.objects.get(codename="queue_access_it-ops")
    member.user_permissions.add(access)
    team = Group.objects.create(name="ops")
    team.permissions.add(access)
    grouped.groups.add(team)
    ticket = site.open_ticket(queue, title="Disk full", body="/ at 100%", by=alice,
                              submitter_email="sub@example.com", assigned_to=quiet, priority=1)
    site.add_cc(ticket, user=member)
    site.add_cc(ticket, email="outsider@example.com")
    site.add_cc(ticket, user=quiet)  # an account without an address
    note = site.comment(ticket, alice, "internal", public=False)
    mailed = site.receive_email(queue, reply(f"Re: [it-ops-{ticket.id}] Disk full",
                                             "sub@example.com", "<r@example.com>"))

    def select(entity: str, where: str = "", **params: Any) -> list[dict[str, Any]]:
        return rows(site.url, preset_sql.HELPDESK[entity].select(where), **params)

    users = {user["username"]: user for user in select("user")}
    assert users["alice"]["email"] == "alice@example.com"
    assert users["quiet"]["email"] is None  # '' in auth_user
    assert bool(users["quiet"]["email_on_ticket_assign"]) is False
    assert bool(users["quiet"]["email_on_ticket_change"]) is True
    assert bool(users["root"]["is_staff"]) is True

    [row] = select("ticket", "t.id = :t", t=ticket.id)
    assert row | {"due_at": None, "created_at": None, "on_hold": None} == {
        "id": ticket.id, "queue_slug": "it-ops", "title": "Disk full", "description": "/ at 100%",
        "status": OPEN, "priority": 1, "requester_email": "sub@example.com",
        "secret_key": ticket.secret_key, "assignee_id": quiet.id, "queue_id": queue.id,
        "due_at": None, "created_at": None, "on_hold": None, "merged_to_id": None}
    assert f"[{row['queue_slug']}-{row['id']}]" == ticket.ticket  # joined in Python

    comments = {c["id"]: c for c in select("comment", "f.ticket_id = :t", t=ticket.id)}
    assert bool(comments[note.id]["is_internal"]) is True
    assert comments[note.id]["author_id"] == alice.id
    assert comments[mailed.followup.id]["author_id"] is None
    assert bool(comments[mailed.followup.id]["is_internal"]) is False
    assert comments[mailed.followup.id]["message_id"] == "<r@example.com>"

    [queue_row] = select("queue", "q.id = :q", q=queue.id)
    assert (queue_row["locale"], queue_row["new_ticket_cc"], bool(queue_row["notify_ticket_ccs"])) \
        == ("de", "a@example.com,b@example.com", True)

    ccs = select("ticket_cc", "c.ticket_id = :t", t=ticket.id)
    assert sorted((cc["user_id"] or 0, cc["email"] or "") for cc in ccs) == sorted(
        [(member.id, "member@example.com"), (0, "outsider@example.com"), (quiet.id, "")])

    members = {m["user_id"] for m in select("membership", "q.id = :q", q=queue.id)}
    assert members == {member.id, grouped.id, root.id}  # not alice, not the inactive one
    from helpdesk.user import HelpdeskUser

    with_permission = {user.id for user in (alice, quiet, member, grouped, root)
                       if user.has_perm(queue.permission_name)}
    assert members == with_permission
    assert HelpdeskUser(member).can_access_queue(queue)  # with per-queue permissions off
