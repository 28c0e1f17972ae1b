"""The ``django-helpdesk`` source end to end: django-helpdesk 2.6.1's own schema, forms,
``update_ticket`` and ``get_email``; the events from itsm-notify's shipped receivers;
the tool run as a site would run it (``ITSM_SOURCE=django-helpdesk``, ``db init``,
``send-pending``) against the real SMTP test server.

Every test runs on SQLite, PostgreSQL and MariaDB (``helpdesk_site``).
"""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import sqlalchemy as sa

from contract_app import run_cli, smtp_env
from django_apps.helpdesk_site import HelpdeskSite
from itsm_notify.storage import schema
from smtp_server import ReceivedMessage, SmtpSink

OPEN, REOPENED, RESOLVED, CLOSED = 1, 2, 3, 4
SITE = "https://helpdesk.example.com"


@pytest.fixture
def desk_env(helpdesk_site: HelpdeskSite, smtp_sink: SmtpSink) -> dict[str, str]:
    """The environment of the tool in a django-helpdesk site: one preset, nothing else."""
    return smtp_env(helpdesk_site.url, smtp_sink, ITSM_SOURCE="django-helpdesk",
                    SITE_URL=SITE, DEFAULT_FROM_EMAIL="Help Desk <helpdesk@example.com>")


@pytest.fixture
def site(helpdesk_site: HelpdeskSite, desk_env: dict[str, str]) -> Iterator[HelpdeskSite]:
    """django-helpdesk with its own mail off and the tool's tables made by ``db init``."""
    helpdesk_site.switch_off_helpdesk_mail()
    result = run_cli(["db", "init"], desk_env)
    assert result.exit_code == 0, result.output + result.stderr
    yield helpdesk_site


def send(env: dict[str, str], sink: SmtpSink) -> dict[str, ReceivedMessage]:
    """Run ``send-pending``; address → the one email it got (no address gets two)."""
    sink.clear()
    result = run_cli(["send-pending"], env)
    assert result.exit_code == 0, result.output + result.stderr
    got: dict[str, ReceivedMessage] = {}
    for message in sink.messages:
        for address in message.rcpt_tos:
            assert address not in got, f"{address} got two emails"
            got[address] = message
    return got


def text_of(message: ReceivedMessage) -> str:
    part = message.message.get_body(("plain",))
    assert part is not None
    return part.get_content()


def tables(url: str) -> set[str]:
    engine = sa.create_engine(url)
    try:
        inspector = sa.inspect(engine)
        return set(inspector.get_table_names()) | set(inspector.get_view_names())
    finally:
        engine.dispose()


def test_db_init_makes_only_the_tools_tables(helpdesk_site: HelpdeskSite,
                                             desk_env: dict[str, str]) -> None:
    before = tables(helpdesk_site.url)
    result = run_cli(["db", "init"], desk_env)
    assert result.exit_code == 0, result.output + result.stderr
    made = tables(helpdesk_site.url) - before
    assert made and all(name.startswith("itsm_notify_") or name in {
        t.name for t in schema.metadata.sorted_tables} for name in made)
    assert not made & {"users", "tickets", "comments", "projects", "project_members"}
    # and every command now runs against django-helpdesk's own tables
    status = run_cli(["status"], desk_env)
    assert status.exit_code == 0, status.output + status.stderr


def test_emails_go_where_django_helpdesk_would_send_them(site: HelpdeskSite,
                                                         desk_env: dict[str, str],
                                                         smtp_sink: SmtpSink) -> None:
    agent = site.user("agent", email="agent@example.com", staff=True, first_name="Ada")
    owner = site.user("owner", email="owner@example.com", staff=True, first_name="Olu")
    quiet = site.user("quiet", email="quiet@example.com", staff=True,
                      email_on_ticket_assign=False, email_on_ticket_change=False)
    staff_cc = site.user("watcher", email="watcher@example.com", staff=True)
    queue = site.queue("it", title="IT", email_address="it@example.com",
                       new_ticket_cc="new-cc@example.com",
                       updated_ticket_cc="updates@example.com, boss@example.com",
                       notify_ticket_ccs=True)

    # a ticket opened by staff for a submitter whose address needs URL-encoding
    ticket = site.open_ticket(queue, title="VPN down", body="Since 9:00.", by=agent,
                              submitter_email="sam+vpn@example.com", assigned_to=owner,
                              priority=2)
    got = send(desk_env, smtp_sink)
    # the submitter, the owner (email_on_ticket_assign), both queue CC fields; the
    # actor is not told
    assert set(got) == {"sam+vpn@example.com", "owner@example.com", "new-cc@example.com",
                        "updates@example.com", "boss@example.com"}
    tag = f"[it-{ticket.id}]"
    assert all(m.subject.startswith(tag) for m in got.values()), \
        [m.subject for m in got.values()]
    assert all(m.message["Reply-To"] == "it@example.com" for m in got.values())
    body = text_of(got["owner@example.com"])
    assert "2. High" in body and "Open" in body  # labels, not the stored 2 and 1
    assert f"{SITE}/helpdesk/tickets/{ticket.id}/" in body  # the staff page
    submitter_text = text_of(got["sam+vpn@example.com"])
    assert f"/helpdesk/tickets/{ticket.id}/" not in submitter_text
    link = next(word for word in submitter_text.split() if "/helpdesk/view/?" in word)
    query = parse_qs(urlsplit(link).query)
    assert query == {"ticket": [f"it-{ticket.id}"], "email": ["sam+vpn@example.com"],
                     "key": [ticket.secret_key]}

    site.add_cc(ticket, email="outside@example.com")
    site.add_cc(ticket, user=staff_cc)
    # a public follow-up: submitter, owner, updated CCs, the ticket's CCs (queue flag)
    site.comment(ticket, agent, "We are on it.")
    got = send(desk_env, smtp_sink)
    assert set(got) == {"sam+vpn@example.com", "owner@example.com", "updates@example.com",
                        "boss@example.com", "outside@example.com", "watcher@example.com"}
    assert "We are on it." in text_of(got["sam+vpn@example.com"])

    # a private follow-up: nobody outside staff
    site.comment(ticket, agent, "The firewall again, I think.", public=False)
    got = send(desk_env, smtp_sink)
    assert set(got) == {"owner@example.com", "watcher@example.com"}

    # resolved without a comment: the submitter is told (Resolved is one of the two)
    site.change_status(ticket, owner, RESOLVED)
    got = send(desk_env, smtp_sink)
    assert "sam+vpn@example.com" in got and "owner@example.com" not in got  # the actor
    assert "Resolved" in got["sam+vpn@example.com"].subject + \
        text_of(got["sam+vpn@example.com"])

    # reassigned to someone who switched assignment mail off: the queue is told, not them
    site.assign(ticket, agent, quiet)
    got = send(desk_env, smtp_sink)
    assert "quiet@example.com" not in got
    assert {"updates@example.com", "boss@example.com"} <= set(got)


def test_an_event_is_told_as_it_happened(site: HelpdeskSite, desk_env: dict[str, str],
                                        smtp_sink: SmtpSink) -> None:
    """Opened unassigned, then assigned before the tool runs: the new ticket's email
    does not tell the later owner; the assignment does, once."""
    agent = site.user("agent", email="agent@example.com", staff=True)
    owner = site.user("owner", email="owner@example.com", staff=True)
    queue = site.queue("it", email_address="it@example.com")
    ticket = site.open_ticket(queue, title="Printer", body="Jammed.", by=agent,
                              submitter_email="sam@example.com")
    site.assign(ticket, agent, owner)
    smtp_sink.clear()
    result = run_cli(["send-pending"], desk_env)
    assert result.exit_code == 0, result.output + result.stderr
    to_owner = smtp_sink.messages_to("owner@example.com")
    assert len(to_owner) == 1 and "ssign" in (to_owner[0].subject or "")


def test_a_reply_to_our_email_joins_its_ticket_in_get_email(
        site: HelpdeskSite, desk_env: dict[str, str], smtp_sink: SmtpSink,
        tmp_path: Any) -> None:
    agent = site.user("agent", email="agent@example.com", staff=True)
    queue = site.queue("it", email_address="it@example.com", intake_dir=tmp_path / "mail")
    ticket = site.open_ticket(queue, title="VPN down", body="Since 9:00.", by=agent,
                              submitter_email="sam@example.com", assigned_to=agent)
    got = send(desk_env, smtp_sink)
    ours = got["sam@example.com"]

    answer = EmailMessage()
    answer["From"] = "sam@example.com"
    answer["To"] = ours.message["Reply-To"]
    answer["Subject"] = f"Re: {ours.subject}"
    answer["Message-ID"] = "<reply-1@example.com>"
    answer["In-Reply-To"] = ours.message["Message-ID"]
    answer.set_content("Still down here.")
    result = site.receive_email(queue, answer)
    assert result.ticket is not None and result.ticket.id == ticket.id, result.log

    # the reply is a follow-up without an author: delivered, not a crash
    assert result.followup is not None and result.followup.user_id is None
    got = send(desk_env, smtp_sink)
    # the owner hears of it; the submitter gets the acknowledgement django-helpdesk sends
    assert set(got) == {"agent@example.com", "sam@example.com"}
    assert "Still down here." in text_of(got["agent@example.com"])
    with sa.create_engine(site.url).connect() as conn:
        states = conn.execute(sa.select(schema.outbox.c.state, schema.outbox.c.last_error)
                              ).all()
    assert all(state == "done" for state, _ in states), states


def test_an_authorless_follow_up_is_delivered(site: HelpdeskSite, desk_env: dict[str, str],
                                              smtp_sink: SmtpSink) -> None:
    """A follow-up by a non-staff user has no author in django-helpdesk: its email is
    still sent, with no name where the author would be."""
    agent = site.user("agent", email="agent@example.com", staff=True)
    customer = site.user("customer", email="sam@example.com")
    queue = site.queue("it", email_address="it@example.com")
    ticket = site.open_ticket(queue, title="VPN down", body="x", by=agent,
                              submitter_email="sam@example.com", assigned_to=agent)
    send(desk_env, smtp_sink)
    followup = site.comment(ticket, customer, "Any news?")
    assert followup.user_id is None
    got = send(desk_env, smtp_sink)
    assert "agent@example.com" in got
    assert "Any news?" in text_of(got["agent@example.com"])
