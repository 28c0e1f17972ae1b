"""Inbound mail written through the source (issue 15): replies and new mail land in
django-helpdesk 2.6.1 and django-spire 1.3.0 as rows their own code reads, on SQLite,
PostgreSQL and MariaDB; and two ``fetch-mail`` processes on one Maildir handle each
message exactly once.

The tool runs as a site would run it (``ITSM_SOURCE``, ``db init``, ``send-pending``,
``receive`` with the message on stdin) against the real SMTP test server; replies are
built from the email the tool really sent (tests/inbound_mail.py).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import sqlalchemy as sa

import inbound_mail as mail
from contract_app import create_schema, run_cli, seed_helpdesk, smtp_env
from django_apps.helpdesk_site import HelpdeskSite
from django_apps.spire import run_spire
from itsm_notify.errors import EventError
from itsm_notify.events.types import parse_payload
from itsm_notify.states import InboundOutcome
from itsm_notify.storage import schema
from smtp_server import ReceivedMessage, SmtpSink

pytestmark = pytest.mark.timeout(180)

SITE = "https://helpdesk.example.com"
SAM = "Sam Rivera <sam@example.com>"
CLOSED, REOPENED = 4, 2


def send(env: dict[str, str], sink: SmtpSink) -> dict[str, list[ReceivedMessage]]:
    """Run ``send-pending``; address → the emails it got."""
    sink.clear()
    result = run_cli(["send-pending"], env)
    assert result.exit_code == 0, result.output + result.stderr
    got: dict[str, list[ReceivedMessage]] = defaultdict(list)
    for message in sink.messages:
        for address in message.rcpt_tos:
            got[address].append(message)
    return got


def receive(env: dict[str, str], raw: bytes, **more: str) -> dict[str, Any]:
    """Pipe ``raw`` to ``itsm-notify receive``; the message's inbound record."""
    result = run_cli(["receive"], {**env, **more}, input=raw)
    assert result.exit_code == 0, result.output + result.stderr
    return last_record(env["DATABASE_URL"])


def last_record(url: str) -> dict[str, Any]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            table = schema.inbound_messages
            return dict(conn.execute(sa.select(table).order_by(table.c.id.desc())
                                     .limit(1)).one()._mapping)
    finally:
        engine.dispose()


def test_an_event_may_name_an_actor_without_an_account_by_address() -> None:
    assert parse_payload("comment_added", '{"comment_id": 7, "actor_email": " Sam@Example.com"}'
                         ) == {"comment_id": 7, "actor_email": "sam@example.com"}
    with pytest.raises(EventError, match="'actor_email' must be an email address"):
        parse_payload("comment_added", '{"comment_id": 7, "actor_email": "sam"}')


# ------------------------------------------------------------------ django-helpdesk


@pytest.fixture
def helpdesk_env(helpdesk_site: HelpdeskSite, smtp_sink: SmtpSink) -> dict[str, str]:
    """The tool in a django-helpdesk site whose own mail is off, its tables made."""
    helpdesk_site.switch_off_helpdesk_mail()
    env = smtp_env(helpdesk_site.url, smtp_sink, ITSM_SOURCE="django-helpdesk", SITE_URL=SITE,
                   DEFAULT_FROM_EMAIL="Help Desk <helpdesk@example.com>",
                   ITSM_INBOUND_ADDRESSES="it@example.com")
    result = run_cli(["db", "init"], env)
    assert result.exit_code == 0, result.output + result.stderr
    return env


def test_a_reply_becomes_a_django_helpdesk_follow_up_that_reopens_its_ticket(
        helpdesk_site: HelpdeskSite, helpdesk_env: dict[str, str], smtp_sink: SmtpSink,
        tmp_path: Path) -> None:
    from django.test import Client
    from helpdesk.models import FollowUp

    site, env = helpdesk_site, helpdesk_env
    owner = site.user("owner", email="owner@example.com", staff=True)
    queue = site.queue("it", email_address="it@example.com", intake_dir=tmp_path / "intake")
    ticket = site.open_ticket(queue, title="VPN down", body="Since 9:00.", by=owner,
                              submitter_email="sam@example.com", assigned_to=owner)
    site.change_status(ticket, owner, CLOSED, comment="Fixed the tunnel.")
    closed = send(env, smtp_sink)["sam@example.com"][-1]
    assert (closed.subject or "").startswith(f"[it-{ticket.id}]")

    # sam has no account: django-helpdesk's submitter is an address
    reply = mail.gmail_reply(closed, SAM, "Still down here, same error.")
    record = receive(env, reply)
    assert record["outcome"] == InboundOutcome.COMMENT, record["reason"]
    assert "reopened" in record["reason"] and "in-reply-to" in record["reason"]

    # django-helpdesk's own ORM reads what was written, as get_email would write it
    ticket.refresh_from_db()
    assert ticket.status == REOPENED
    followup = ticket.followup_set.order_by("id").last()
    assert followup is not None and followup.pk == record["comment_id"]
    assert followup.title == "Ticket Re-Opened by E-Mail Received from sam@example.com"
    assert followup.comment == "Still down here, same error."
    assert (followup.public, followup.user_id, followup.new_status) == (True, None, REOPENED)
    message_id = re.search(rb"^Message-ID: (<[^>]+>)", reply, re.M)
    assert message_id is not None and followup.message_id == message_id.group(1).decode()

    # the owner is told of the reopening and the comment; sam, the author, is not
    told = send(env, smtp_sink)
    assert set(told) == {"owner@example.com"}
    assert any("Still down here" in mail.plain_text(m) for m in told["owner@example.com"])

    # the submitter's own page (its secret key) shows the follow-up
    query = urlencode({"ticket": f"it-{ticket.id}", "email": "sam@example.com",
                       "key": ticket.secret_key})
    page = Client().get(f"/helpdesk/view/?{query}")
    assert page.status_code == 200 and b"Still down here, same error." in page.content

    # django-helpdesk's own get_email files an answer to that message on the ticket, by
    # the Message-ID the follow-up records (no tag in the subject)
    answer = mail.plain_mail(SAM, "it@example.com", "Re: VPN", "And now it works.",
                             extra_headers=(f"In-Reply-To: {followup.message_id}",))
    assert site.receive_email(queue, answer).ticket.id == ticket.id

    # a ticket CC by address, replying with only the tag in the subject: a comment
    site.add_cc(ticket, email="cc@example.com")
    by_tag = receive(env, mail.plain_mail("cc@example.com", "it@example.com",
                                          f"Re: [it-{ticket.id}] VPN down", "Me too."))
    assert by_tag["outcome"] == InboundOutcome.COMMENT, by_tag["reason"]
    assert "subject" in by_tag["reason"]
    # staff may write on any ticket; a stranger may not
    site.user("agent", email="agent@example.com", staff=True)
    staff = receive(env, mail.gmail_reply(closed, "agent@example.com", "Looking."))
    assert staff["outcome"] == InboundOutcome.COMMENT, staff["reason"]
    assert FollowUp.objects.get(pk=staff["comment_id"]).user.username == "agent"
    stranger = receive(env, mail.gmail_reply(closed, "Mallory <mallory@evil.example>",
                                             "Click here."))
    assert stranger["outcome"] == InboundOutcome.REFUSED
    assert "mallory@evil.example is not on the ticket" in stranger["reason"]
    assert stranger["raw"] is not None
    assert not FollowUp.objects.filter(comment__contains="Click here").exists()


def test_a_signed_reply_address_finds_its_django_helpdesk_ticket(
        helpdesk_site: HelpdeskSite, helpdesk_env: dict[str, str],
        smtp_sink: SmtpSink) -> None:
    """A queue without an address of its own: each email to an account carries the
    signed Reply-To, and a reply to it alone (no threading, no tag) finds the ticket."""
    from helpdesk.models import FollowUp

    site = helpdesk_site
    env = {**helpdesk_env, "REPLY_TO_EMAIL": "Support <support@example.com>",
           "SECRET_KEY": "inbound-sources-secret"}
    agent = site.user("agent", email="agent@example.com", staff=True)
    owner = site.user("owner", email="owner@example.com", staff=True)
    ticket = site.open_ticket(site.queue("hw"), title="Laptop", body="Broken.", by=agent,
                              submitter_email="sam@example.com", assigned_to=owner)
    to_owner = send(env, smtp_sink)["owner@example.com"][0]
    reply_to = mail.reply_address(to_owner)
    assert reply_to.startswith(f"support+{ticket.id}.{owner.pk}.")
    record = receive(env, mail.plain_mail("owner@example.com", reply_to, "Re: your laptop",
                                          "Ordered a new one."))
    assert record["outcome"] == InboundOutcome.COMMENT, record["reason"]
    assert "reply-address" in record["reason"]
    followup = FollowUp.objects.get(pk=record["comment_id"])
    assert (followup.ticket_id, followup.user_id, followup.comment) == \
        (ticket.id, owner.pk, "Ordered a new one.")


def test_new_mail_becomes_a_django_helpdesk_ticket_in_the_configured_queue(
        helpdesk_site: HelpdeskSite, helpdesk_env: dict[str, str],
        smtp_sink: SmtpSink) -> None:
    from django.test import Client
    from helpdesk.models import Ticket

    site, env = helpdesk_site, helpdesk_env
    site.queue("it", email_address="it@example.com")
    new = mail.plain_mail("Zoe Quinn <zoe@newcorp.example>", "IT <it@example.com>",
                          "Printer on floor 3 is jammed", "It says PC LOAD LETTER.")
    refused = receive(env, new)
    assert refused["outcome"] == InboundOutcome.REFUSED
    assert "set it to the slug" in refused["reason"] and refused["raw"] is not None

    other = mail.plain_mail("zoe@newcorp.example", "it@example.com", "Toner", "Empty.")
    wrong = run_cli(["receive"], {**env, "ITSM_INBOUND_QUEUE": "hr"}, input=other)
    assert wrong.exit_code == 2 and "'hr', which is no django-helpdesk queue" in wrong.stderr

    env["ITSM_INBOUND_QUEUE"] = "it"
    again = run_cli(["inbound", "reprocess", str(refused["id"])], env)
    assert again.exit_code == 0, again.output + again.stderr
    record = last_record(env["DATABASE_URL"])
    assert record["outcome"] == InboundOutcome.TICKET, record["reason"]
    ticket = Ticket.objects.get(pk=record["ticket_id"])
    assert f"Opened ticket it-{ticket.id} " in record["reason"]
    assert (ticket.queue.slug, ticket.title, ticket.description) == \
        ("it", "Printer on floor 3 is jammed", "It says PC LOAD LETTER.")
    assert (ticket.submitter_email, ticket.status, ticket.priority, ticket.assigned_to) == \
        ("zoe@newcorp.example", Ticket.OPEN_STATUS, 3, None)
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}",
                        ticket.secret_key)
    [first] = ticket.followup_set.all()
    assert (first.title, first.public, first.comment) == \
        ("E-Mail Received from zoe@newcorp.example", True, "It says PC LOAD LETTER.")
    assert ticket.ticket == f"[it-{ticket.id}]"

    # no account was made for zoe; she is told her ticket's tag, and django-helpdesk's
    # public page opens the ticket for her address and its secret key
    assert not site_users_with("zoe@newcorp.example")
    [told] = send(env, smtp_sink)["zoe@newcorp.example"]
    assert (told.subject or "").startswith(f"[it-{ticket.id}]")
    query = urlencode({"ticket": f"it-{ticket.id}", "email": "zoe@newcorp.example",
                       "key": ticket.secret_key})
    page = Client().get(f"/helpdesk/view/?{query}")
    assert page.status_code == 200 and b"It says PC LOAD LETTER." in page.content


def site_users_with(address: str) -> list[Any]:
    from django.contrib.auth import get_user_model

    return list(get_user_model().objects.filter(email__iexact=address))


# ------------------------------------------------------------------ django-spire


def test_new_mail_becomes_a_django_spire_ticket_and_a_reply_is_kept(
        database_url: str, spire_python: Path, smtp_sink: SmtpSink) -> None:
    run_spire(spire_python, database_url, "accounts")  # requester, developer, manager ...
    env = smtp_env(database_url, smtp_sink, ITSM_SOURCE="django-spire",
                   SITE_URL="https://spire.example.com", ADMINS="Dev One <dev@example.com>",
                   DEFAULT_FROM_EMAIL="Help Desk <helpdesk@example.com>",
                   ITSM_INBOUND_ADDRESSES="help@example.com")
    assert run_cli(["db", "init"], env).exit_code == 0

    new = receive(env, mail.plain_mail("Requester <requester@example.com>", "help@example.com",
                                       "Login fails for SSO users", "Error 500 since 9:00."))
    assert new["outcome"] == InboundOutcome.TICKET, new["reason"]
    stranger = receive(env, mail.plain_mail("x@stranger.example", "help@example.com",
                                            "Hello", "Anyone?"))
    assert stranger["outcome"] == InboundOutcome.REFUSED
    assert "fallback:<username>" in stranger["reason"] and stranger["raw"] is not None
    fallback = receive(env, mail.plain_mail("y@stranger.example", "help@example.com",
                                            "Printer", "Jammed."),
                       ITSM_INBOUND_UNKNOWN_SENDER="fallback:manager")
    assert fallback["outcome"] == InboundOutcome.TICKET, fallback["reason"]

    # the developers hear of the new ticket; a developer's reply cannot be a comment
    # (spire has none): kept, with the reason
    to_dev = next(m for m in send(env, smtp_sink)["dev@example.com"]
                  if (m.subject or "").endswith(f"(#{new['ticket_id']})"))
    reply = receive(env, mail.gmail_reply(to_dev, "Dev One <dev@example.com>", "On it."))
    assert reply["outcome"] == InboundOutcome.UNMATCHED and reply["raw"] is not None
    assert "django-spire tickets have no comments" in reply["reason"]
    assert reply["ticket_id"] == new["ticket_id"]

    # spire's own ORM reads the tickets, as its list page shows them
    shown = run_spire(spire_python, database_url, "tickets")["tickets"]
    assert [(t["id"], t["str"], t["created_by"]) for t in shown] == [
        (new["ticket_id"], f"Ticket #{new['ticket_id']}", "requester"),
        (fallback["ticket_id"], f"Ticket #{fallback['ticket_id']}", "manager")]
    first = shown[0]
    assert (first["purpose"], first["priority"], first["status"]) == ("App", "Low", "Ready")
    assert first["description"] == "Login fails for SSO users\n\nError 500 since 9:00."
    assert first["created_datetime"].endswith("+00:00")


# ------------------------------------------------------------------ two fetch-mail processes


MESSAGES = 20
SUMMARY = re.compile(r"(\d+) handled, \d+ rejected, (\d+) already seen")


def test_two_fetch_mail_processes_on_one_maildir_handle_each_message_once(
        database_url: str, tmp_path: Path) -> None:
    """Two ``itsm-notify fetch-mail`` processes start on the same 20 messages at the same
    moment: each message becomes one comment or one ticket."""
    engine = create_schema(database_url)
    ids = seed_helpdesk(engine)
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    for n in range(MESSAGES):  # half replies by the subject tag, half new tickets
        (maildir / "new" / f"{n:03d}.eml").write_bytes(mail.plain_mail(
            "Alice Lopez <alice@example.com>", "support@desk.example",
            f"Re: VPN drops (TKT-001) #{n}" if n % 2 else f"New issue {n}",
            f"Message number {n}."))
    before = _count(engine, schema.comments), _count(engine, schema.tickets)
    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("ITSM_", "EMAIL_"))},
           "DATABASE_URL": database_url, "ITSM_INBOUND_URL": f"maildir:{maildir}",
           "SITE_URL": "https://desk.example", "REPLY_TO_EMAIL": "support@desk.example",
           "DEFAULT_FROM_EMAIL": "Help Desk <helpdesk@desk.example>"}
    cli = shutil.which("itsm-notify", path=str(Path(sys.executable).parent))
    assert cli is not None

    # the start line: no message can be recorded until both processes wait to record
    # their first, then both race on the same messages from the same moment
    with _start_line(database_url) as barrier:
        processes = [subprocess.Popen([cli, "fetch-mail"], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE) for _ in range(2)]
        _wait_until_both_wait(barrier, processes, database_url)
    runs = []
    for process in processes:
        _, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr.decode()
        found = SUMMARY.search(stderr.decode())  # a run that found nothing says nothing
        runs.append((int(found.group(1)), int(found.group(2))) if found else (0, 0))
    if engine.dialect.name != "sqlite":  # one writer at a time there: either may take all
        # both waited on the first message's record: one handled it, the other saw it done
        assert all(handled + seen > 0 for handled, seen in runs), runs

    with engine.connect() as conn:
        outcomes = list(conn.execute(sa.select(schema.inbound_messages.c.outcome)).scalars())
        comments = conn.execute(sa.select(schema.comments.c.body).where(
            schema.comments.c.ticket_id == ids["vpn"])).scalars().all()
    assert sorted(outcomes) == sorted([InboundOutcome.COMMENT] * (MESSAGES // 2)
                                      + [InboundOutcome.TICKET] * (MESSAGES // 2))
    assert sum(handled for handled, _ in runs) == MESSAGES
    assert _count(engine, schema.comments) == before[0] + MESSAGES // 2
    assert _count(engine, schema.tickets) == before[1] + MESSAGES // 2
    assert len([c for c in comments if c.startswith("Message number")]) == MESSAGES // 2
    assert list((maildir / "new").iterdir()) == []
    engine.dispose()


@contextmanager
def _start_line(database_url: str) -> Iterator[sa.Connection]:
    """A connection that keeps every process from recording an inbound message until
    the block ends: SQLite's write lock, PostgreSQL's table lock, InnoDB's lock on the
    empty table's gap (REPEATABLE READ; a held key instead would make InnoDB's two
    waiters deadlock when it is released)."""
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            dialect = conn.dialect.name
            if dialect == "mysql":
                conn = conn.execution_options(isolation_level="REPEATABLE READ")
            conn.exec_driver_sql({
                "sqlite": "BEGIN IMMEDIATE",
                "postgresql": "LOCK TABLE inbound_messages IN EXCLUSIVE MODE",
                "mysql": "SELECT id FROM inbound_messages FOR UPDATE",
            }[dialect])
            yield conn
            conn.rollback()
    finally:
        engine.dispose()


def _wait_until_both_wait(barrier: sa.Connection, processes: list[subprocess.Popen[bytes]],
                          database_url: str) -> None:
    """Until both processes wait at the start line (a server says so; for SQLite, both
    have the database open: their first transaction then waits for the write lock)."""
    waiting = {
        "postgresql": "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                      "AND query LIKE :insert",
        "mysql": "SELECT count(*) FROM information_schema.processlist "
                 "WHERE info LIKE :insert",
    }
    sqlite_file = str(Path(sa.make_url(database_url).database or "").resolve())
    observer = sa.create_engine(database_url)
    deadline = time.monotonic() + 30
    try:
        while time.monotonic() < deadline:
            for process in processes:
                if process.poll() is not None:
                    raise AssertionError(f"a fetch-mail process ended early: "
                                         f"{process.communicate()[1].decode()}")
            if barrier.dialect.name == "sqlite":
                if all(_has_open(p.pid, sqlite_file) for p in processes):
                    time.sleep(0.3)  # from opening it to waiting for the lock
                    return
            else:
                with observer.connect() as conn:
                    if conn.execute(sa.text(waiting[barrier.dialect.name]), {
                            "insert": "INSERT INTO inbound_messages %"}).scalar_one() >= 2:
                        return
            time.sleep(0.05)
    finally:
        observer.dispose()
    raise AssertionError("the fetch-mail processes never reached the start line")


def _has_open(pid: int, path: str) -> bool:
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.path.realpath(fd) == path for fd in fds.iterdir())
    except OSError:
        return False


def _count(engine: sa.Engine, table: sa.Table) -> int:
    with engine.connect() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())
