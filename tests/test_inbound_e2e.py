"""Inbound mail end to end (issue 15), on SQLite, PostgreSQL and MariaDB: what the tool
sent comes back (a reply, a bounce, a complaint, an out-of-office) through ``receive``
(an MTA pipe) and ``fetch-mail`` (a real Dovecot), and becomes a comment that tells the
others, a failed delivery and a suppression, or nothing at all; new mail opens a ticket;
hostile mail is recorded, never a traceback; ``inbound list`` and ``reprocess``."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import sqlalchemy as sa
import trustme
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

import inbound_mail as mail
from contract_app import (
    add_event,
    add_member,
    add_user,
    cli_env,
    create_schema,
    outbox_rows,
    run_cli,
    seed_helpdesk,
    smtp_env,
)
from imap_server import Dovecot, dovecot_missing
from itsm_notify.cli import app
from itsm_notify.compose.render import address_digest
from itsm_notify.config import Settings, load_settings
from itsm_notify.errors import ConfigError
from itsm_notify.inbound import handle as handle_module
from itsm_notify.inbound.handle import InboundHandler
from itsm_notify.inbound.handling import Outcome
from itsm_notify.inbound.tokens import read_reply_address, read_verp_address
from itsm_notify.ops.scheduler import FETCH_JOB, NotifyScheduler
from itsm_notify.states import InboundOutcome
from itsm_notify.storage import schema
from itsm_notify.storage.database import make_engine
from smtp_server import ReceivedMessage, SmtpSink

pytestmark = pytest.mark.timeout(120)

SECRET = "inbound-e2e-secret"
SETTINGS = {
    "SITE_URL": "https://desk.example", "DEFAULT_FROM_EMAIL": "Help Desk <helpdesk@desk.example>",
    "REPLY_TO_EMAIL": "IT Help Desk <support@desk.example>", "SECRET_KEY": SECRET,
    "ITSM_BOUNCE_ADDRESS": "bounces@desk.example",
    "ITSM_INBOUND_TRUSTED_AUTHSERV_IDS": "mx.desk.example", "ITSM_SMTP_CONNECTIONS": 1,
}
ALICE = "Alice Lopez <alice@example.com>"
VPN_SUBJECT = "New Comment on Ticket: VPN drops every 10 minutes (TKT-001)"


@dataclass
class Desk:
    """A seeded help desk that has sent its first emails to a real SMTP server."""

    engine: sa.Engine
    ids: dict[str, int]
    env: dict[str, str]
    sink: SmtpSink

    def settings(self, **more: str) -> Settings:
        return load_settings(environ={**self.env, **more}, dotenv_path=None)

    def handler(self, **more: str) -> InboundHandler:
        return InboundHandler(self.settings(**more), self.engine)

    def handle(self, raw: bytes, **more: str) -> dict[str, Any]:
        """Handle ``raw`` and return its record."""
        result = self.handler(**more).handle(raw)
        assert result.final, result.reason
        return self.records()[-1]

    def receive(self, raw: bytes, **more: str) -> Result:
        return CliRunner().invoke(app, ["receive"], input=raw, env={**self.env, **more},
                                  catch_exceptions=False)

    def send_pending(self) -> None:
        self.sink.clear()
        result = run_cli(["send-pending"], self.env)
        assert result.exit_code == 0, result.stderr

    def sent_to(self, address: str) -> ReceivedMessage:
        found = self.sink.messages_to(address)
        assert len(found) == 1, (address, self.sink.messages)
        return found[0]

    def records(self) -> list[dict[str, Any]]:
        table = schema.inbound_messages
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(sa.select(table).order_by(table.c.id))]

    def comments(self, ticket: str = "vpn") -> list[dict[str, Any]]:
        table = schema.comments
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(
                sa.select(table).where(table.c.ticket_id == self.ids[ticket])
                .order_by(table.c.id))]

    def delivery(self, address: str) -> dict[str, Any]:
        table = schema.deliveries
        with self.engine.connect() as conn:
            return dict(conn.execute(sa.select(table).where(
                table.c.recipient == address, table.c.channel == "email")).one()._mapping)

    def suppressed(self) -> set[str]:
        with self.engine.connect() as conn:
            return set(conn.execute(sa.select(schema.suppressions.c.address)).scalars())


@pytest.fixture
def desk(database_url: str, smtp_sink: SmtpSink) -> Iterator[Desk]:
    """alice (requester) and erin (public commenter) were told of bob's comment on the
    VPN ticket; carol was told the laptop ticket is hers."""
    engine = create_schema(database_url)
    ids = seed_helpdesk(engine)
    add_event(engine, "comment_added", ids["vpn"], ids["bob"], {"comment_id": ids["c_bob"]})
    add_event(engine, "ticket_assigned", ids["laptop"], ids["dave"],
              {"assignee_id": ids["carol"]})
    desk = Desk(engine, ids, smtp_env(database_url, smtp_sink, **SETTINGS), smtp_sink)
    desk.send_pending()
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages) == \
        ["alice@example.com", "carol@example.com", "erin@example.com"]
    yield desk
    engine.dispose()


# ------------------------------------------------------------------ replies


def test_a_reply_through_receive_becomes_a_comment_that_tells_the_others_once(
        desk: Desk) -> None:
    to_alice = desk.sent_to("alice@example.com")
    # what the tool sent: a return path signed for this delivery, a reply address for alice
    verp = read_verp_address(SECRET, "bounces@desk.example", to_alice.mail_from)
    assert verp is not None and verp.recipient_digest == address_digest("alice@example.com")
    target = read_reply_address(SECRET, "support@desk.example", mail.reply_address(to_alice))
    assert target is not None and (target.ticket_id, target.user_id) == \
        (desk.ids["vpn"], desk.ids["alice"])
    before = len(desk.comments())

    reply = mail.gmail_reply(to_alice, ALICE, "Thanks, the new client fixed it.\nIt holds now.")
    result = desk.receive(reply)
    assert result.exit_code == 0, result.stderr

    comments = desk.comments()
    assert len(comments) == before + 1
    comment = comments[-1]
    assert comment["body"] == "Thanks, the new client fixed it.\nIt holds now."
    assert comment["author_id"] == desk.ids["alice"] and not comment["is_internal"]
    record = desk.records()[-1]
    assert record["outcome"] == InboundOutcome.COMMENT and record["raw"] is None
    assert "in-reply-to" in record["reason"] and "wrote:" in record["cut_text"]
    event = outbox_rows(desk.engine)[-1]
    assert (event["event_type"], event["actor_id"], json.loads(event["payload"])) == \
        ("comment_added", desk.ids["alice"], {"comment_id": comment["id"]})

    # the MTA delivers it again (it never saw our exit status): handled once
    again = desk.receive(reply)
    assert again.exit_code == 0 and len(desk.comments()) == before + 1
    assert len(desk.records()) == 1

    desk.send_pending()
    told = sorted(m.rcpt_tos[0] for m in desk.sink.messages)
    assert told == ["bob@example.com", "erin@example.com"]  # not alice, its author
    assert "the new client fixed it" in mail.plain_text(desk.sent_to("bob@example.com"))


def test_replies_are_matched_by_signed_reply_address_and_by_subject_tag(desk: Desk) -> None:
    to_alice = desk.sent_to("alice@example.com")
    by_address = desk.handle(mail.outlook_reply(to_alice, ALICE, "Still broken here."))
    assert by_address["outcome"] == InboundOutcome.COMMENT, by_address["reason"]
    assert "reply-address" in by_address["reason"]
    assert desk.comments()[-1]["body"] == "Still broken here."

    # no In-Reply-To, no signed address: the tracking tag in the subject
    by_subject = desk.handle(mail.plain_mail(
        "Erin Kowalski <erin@example.com>", "support@desk.example", f"Re: {VPN_SUBJECT}",
        "Mine too, since the update.\n\n-- \nErin, 3rd floor"))
    assert by_subject["outcome"] == InboundOutcome.COMMENT, by_subject["reason"]
    assert "subject" in by_subject["reason"]
    assert desk.comments()[-1]["body"] == "Mine too, since the update."
    assert desk.comments()[-1]["author_id"] == desk.ids["erin"]
    assert "Erin, 3rd floor" in by_subject["cut_text"]

    # HTML only, from a team member: read as text, the quoted block cut
    html_only = mail.plain_mail(
        "Carol Nguyen <carol@example.com>", "support@desk.example", f"AW: {VPN_SUBJECT}",
        "<html><body><p>Raised the <b>idle timeout</b> to 1 h.</p>"
        "<blockquote>Could you send the VPN client log?</blockquote></body></html>",
        content_type="text/html")
    by_html = desk.handle(html_only)
    assert by_html["outcome"] == InboundOutcome.COMMENT, by_html["reason"]
    assert desk.comments()[-1]["body"] == "Raised the idle timeout to 1 h."
    assert "VPN client log" in by_html["cut_text"]


def test_the_same_reply_handled_by_two_processes_at_once_is_one_comment(desk: Desk) -> None:
    reply = mail.gmail_reply(desk.sent_to("alice@example.com"), ALICE, "Both at once?")
    comments = len(desk.comments())
    handlers = [desk.handler(), desk.handler()]
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda h: h.handle(reply), handlers))
    assert sorted(r.outcome for r in results) == [Outcome.ALREADY_SEEN, Outcome.HANDLED]
    assert len(desk.comments()) == comments + 1 and len(desk.records()) == 1


def test_only_people_on_the_ticket_may_comment_and_machines_never_do(desk: Desk) -> None:
    to_alice = desk.sent_to("alice@example.com")
    comments, events = len(desk.comments()), len(outbox_rows(desk.engine))

    out_of_office = desk.handle(mail.exchange_out_of_office(to_alice, ALICE))
    assert out_of_office["outcome"] == InboundOutcome.AUTO_REPLY
    assert out_of_office["raw"] is not None  # kept, to be read
    own = desk.handle(to_alice.data)  # our own email came back
    assert own["outcome"] == InboundOutcome.OWN_MAIL

    forged = desk.handle(mail.gmail_reply(
        to_alice, "Bob Okafor <bob@example.com>", "Closing this, all fine.",
        extra_headers=("Authentication-Results: mx.desk.example; spf=fail "
                       "smtp.mailfrom=evil.example; dmarc=fail header.from=example.com",)))
    assert forged["outcome"] == InboundOutcome.REFUSED and "DMARC" in forged["reason"]

    outsider = desk.handle(mail.gmail_reply(to_alice, "Frank Meyer <frank@example.com>",
                                            "I can fix this."))
    assert outsider["outcome"] == InboundOutcome.REFUSED
    assert "frank (frank@example.com) is not on the ticket" in outsider["reason"]
    stranger = desk.handle(mail.gmail_reply(to_alice, "Mallory <mallory@evil.example>",
                                            "Click here."),
                           ITSM_INBOUND_UNKNOWN_REPLY="quarantine")
    assert stranger["outcome"] == InboundOutcome.QUARANTINED and stranger["raw"] is not None

    assert len(desk.comments()) == comments
    assert len(outbox_rows(desk.engine)) == events  # nothing was answered or announced


# ------------------------------------------------------------------ reports


def test_delivery_reports_fail_the_delivery_and_suppress_only_when_they_name_it(
        desk: Desk) -> None:
    to_alice, to_erin = desk.sent_to("alice@example.com"), desk.sent_to("erin@example.com")
    to_carol = desk.sent_to("carol@example.com")

    delayed = desk.handle(mail.postfix_dsn(to_alice.mail_from, "alice@example.com", "4.4.1",
                                           to_alice.message["Message-ID"],
                                           "Connection timed out"))
    assert delayed["outcome"] == InboundOutcome.DELAY
    assert desk.delivery("alice@example.com")["state"] == "sent" and not desk.suppressed()

    by_verp = desk.handle(mail.postfix_dsn(
        to_alice.mail_from, "alice@example.com", "5.1.1", to_alice.message["Message-ID"],
        "550 5.1.1 <alice@example.com>: Recipient address rejected: User unknown"))
    assert by_verp["outcome"] == InboundOutcome.BOUNCE and "VERP" in by_verp["reason"]
    alice = desk.delivery("alice@example.com")
    assert alice["state"] == "failed" and "5.1.1" in alice["last_error"]
    assert alice["last_code"] == 550

    # a forged report: erin's Message-ID, someone else as the failed recipient
    forged = desk.handle(mail.postfix_dsn("bounces@desk.example", "mallory@evil.example",
                                          "5.1.1", to_erin.message["Message-ID"], "550 gone"))
    assert forged["outcome"] == InboundOutcome.UNMATCHED
    assert desk.delivery("erin@example.com")["state"] == "sent"

    by_message_id = desk.handle(mail.postfix_dsn(
        "bounces@desk.example", "erin@example.com", "5.2.2", to_erin.message["Message-ID"],
        "552 5.2.2 mailbox full"))
    assert by_message_id["outcome"] == InboundOutcome.BOUNCE
    assert "Message-ID" in by_message_id["reason"]
    assert desk.delivery("erin@example.com")["state"] == "failed"

    complaint = desk.handle(mail.arf_complaint(to_carol.mail_from, "carol@example.com",
                                               to_carol.message["Message-ID"]))
    assert complaint["outcome"] == InboundOutcome.COMPLAINT
    assert desk.delivery("carol@example.com")["state"] == "sent"  # it was delivered
    assert desk.suppressed() == {"alice@example.com", "erin@example.com", "carol@example.com"}


# ------------------------------------------------------------------ new mail


def test_new_mail_to_the_help_desk_opens_a_ticket(desk: Desk) -> None:
    new = desk.handle(mail.plain_mail("Zoe Quinn <Zoe.Quinn@NewCorp.example>",
                                      "IT Help Desk <support@desk.example>",
                                      "Printer on floor 3 is jammed", "It says PC LOAD LETTER."))
    assert new["outcome"] == InboundOutcome.TICKET, new["reason"]
    with desk.engine.connect() as conn:
        ticket = conn.execute(sa.select(schema.tickets)
                              .where(schema.tickets.c.id == new["ticket_id"])).one()
        zoe = conn.execute(sa.select(schema.users)
                           .where(schema.users.c.id == ticket.requester_id)).one()
    assert ticket.number == f"TKT-{ticket.id:03d}" and ticket.title == \
        "Printer on floor 3 is jammed"
    assert ticket.description == "It says PC LOAD LETTER." and ticket.status == "open"
    assert (zoe.username, zoe.email, zoe.first_name, zoe.last_name) == \
        ("Zoe.Quinn", "Zoe.Quinn@newcorp.example", "Zoe", "Quinn")
    event = outbox_rows(desk.engine)[-1]
    assert (event["event_type"], event["ticket_id"], event["actor_id"]) == \
        ("ticket_created", ticket.id, zoe.id)

    known = desk.handle(mail.plain_mail(ALICE, "support@desk.example", "Monitor flickers",
                                        "Since Monday."))
    assert known["outcome"] == InboundOutcome.TICKET
    refused = desk.handle(mail.plain_mail("x@stranger.example", "support@desk.example", "Hi",
                                          "Hello"), ITSM_INBOUND_UNKNOWN_SENDER="refuse")
    assert refused["outcome"] == InboundOutcome.REFUSED and refused["raw"] is not None
    fallback = desk.handle(mail.plain_mail("y@stranger.example", "support@desk.example",
                                           "Help", "Please."),
                           ITSM_INBOUND_UNKNOWN_SENDER="fallback:dave")
    elsewhere = desk.handle(mail.plain_mail(ALICE, "someone@else.example", "Lunch?", "12:30"))
    assert elsewhere["outcome"] == InboundOutcome.IGNORED
    with desk.engine.connect() as conn:
        requesters = dict(conn.execute(sa.select(schema.tickets.c.id,
                                                 schema.tickets.c.requester_id)).all())
    assert requesters[known["ticket_id"]] == desk.ids["alice"]
    assert requesters[fallback["ticket_id"]] == desk.ids["dave"]
    assert len(requesters) == 5  # two seeded, three opened by mail


# ------------------------------------------------------------------ hostile input


def test_hostile_messages_are_recorded_never_a_traceback(desk: Desk) -> None:
    head = "From: Zoe <zoe@newcorp.example>\r\nTo: support@desk.example\r\n"
    big = (f"{head}Subject: Scan\r\nMIME-Version: 1.0\r\n"
           'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
           "Content-Type: text/plain\r\n\r\nThe scan is attached.\r\n--b\r\n"
           "Content-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n"
           ).encode() + b"QUJD" * (30 * 1024 * 1024 // 4) + b"\r\n--b--\r\n"
    bomb = (f"{head}Subject: Bomb\r\n".encode() + b"".join(
        f'Content-Type: multipart/mixed; boundary="{n}"\r\n\r\n--{n}\r\n'.encode()
        for n in range(2000)) + b"Content-Type: text/plain\r\n\r\nboom\r\n")
    injected = (f"{head}Subject: =?utf-8?q?Printer=0D=0ABcc:_all@desk.example?=\r\n"
                "\r\nHelp\r\n").encode()
    garbage = bytes(range(256)) * 40

    results = [desk.receive(raw) for raw in (big, bomb, injected, garbage)]
    too_big = desk.receive(big.replace(b"Subject: Scan", b"Subject: Scan 2"),
                           ITSM_INBOUND_MAX_BYTES=str(10 * 1024 * 1024))
    for result in (*results, too_big):
        assert result.exit_code == 0, result.stderr
        assert "Traceback" not in result.stderr
    records = desk.records()
    assert [r["outcome"] for r in records] == [
        InboundOutcome.TICKET, InboundOutcome.TICKET, InboundOutcome.TICKET,
        InboundOutcome.IGNORED, InboundOutcome.REJECTED]
    assert records[0]["raw"] is None and records[0]["size"] > 30 * 1024 * 1024
    assert "too large" in records[4]["reason"] and len(records[4]["raw"]) < 1024
    with desk.engine.connect() as conn:
        titles = list(conn.execute(sa.select(schema.tickets.c.title)
                                   .where(schema.tickets.c.id == records[2]["ticket_id"]))
                      .scalars())
    assert titles == ["Printer Bcc: all@desk.example"]  # one harmless line
    assert records[3]["raw"] is not None  # the garbage is kept, to be looked at


_HEADER_TEXT = st.text(st.characters(codec="utf-8"), max_size=80)


@hypothesis.settings(max_examples=60, deadline=None,
                     suppress_health_check=[hypothesis.HealthCheck.function_scoped_fixture])
@hypothesis.given(from_=_HEADER_TEXT, subject=_HEADER_TEXT, extra=_HEADER_TEXT,
                  body=st.binary(max_size=400))
def test_any_message_is_recorded_with_an_outcome_and_never_raises(
        sqlite_url: str, from_: str, subject: str, extra: str, body: bytes) -> None:
    engine = _fuzz_engine(sqlite_url)
    handler = InboundHandler(load_settings(environ=cli_env(sqlite_url, **SETTINGS),
                                           dotenv_path=None), engine)
    raw = (f"From: {from_}\r\nTo: support@desk.example\r\nSubject: {subject}\r\n"
           f"In-Reply-To: {extra}\r\n\r\n").encode("utf-8", "surrogateescape") + body
    result = handler.handle(raw)
    assert result.final, result.reason
    with engine.connect() as conn:
        outcome, title = conn.execute(
            sa.select(schema.inbound_messages.c.outcome, schema.tickets.c.title)
            .outerjoin(schema.tickets,
                       schema.tickets.c.id == schema.inbound_messages.c.ticket_id)
            .order_by(schema.inbound_messages.c.id.desc()).limit(1)).one()
    assert outcome in set(InboundOutcome)
    assert title is None or (title.isprintable() and "\n" not in title)


_FUZZ_ENGINES: dict[str, sa.Engine] = {}


def _fuzz_engine(url: str) -> sa.Engine:
    """One seeded SQLite database for all of a property test's examples."""
    if url not in _FUZZ_ENGINES:
        _FUZZ_ENGINES[url] = create_schema(url)
        seed_helpdesk(_FUZZ_ENGINES[url])
    return _FUZZ_ENGINES[url]


# ------------------------------------------------------------------ operations


def test_a_refused_reply_is_listed_and_re_processed_once_its_sender_may_write(
        desk: Desk, monkeypatch: pytest.MonkeyPatch) -> None:
    to_alice = desk.sent_to("alice@example.com")
    refused = desk.handle(mail.gmail_reply(to_alice, "Zoe <zoe@example.com>", "Me too."))
    assert refused["outcome"] == InboundOutcome.REFUSED

    listed = run_cli(["inbound", "list", "--outcome", "refused", "--json"], desk.env)
    assert listed.exit_code == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["id"], row["raw_kept"], row["from_address"]) == \
        (refused["id"], True, "zoe@example.com")
    shown = run_cli(["inbound", "list"], desk.env)
    assert shown.exit_code == 0 and "refused" in shown.stdout

    add_member(desk.engine, desk.ids["network"], add_user(desk.engine, "zoe"))
    again = run_cli(["inbound", "reprocess", str(refused["id"])], desk.env)
    assert again.exit_code == 0, again.stderr
    assert desk.comments()[-1]["body"] == "Me too."
    record = desk.records()[-1]
    assert record["outcome"] == InboundOutcome.COMMENT and record["raw"] is None
    assert record["updated_at"] is not None
    twice = run_cli(["inbound", "reprocess", str(refused["id"])], desk.env)
    assert twice.exit_code == 1 and "acted on already" in twice.stderr

    # a failure halfway rolls everything back; the message is kept with its reason
    def broken(*args: object, **kwargs: object) -> int:
        raise RuntimeError("the outbox is full")

    monkeypatch.setattr(handle_module, "write_event", broken)
    comments = len(desk.comments())
    failed = desk.handle(mail.gmail_reply(to_alice, ALICE, "Any news?"))
    assert failed["outcome"] == InboundOutcome.REJECTED
    assert "the outbox is full" in failed["reason"] and failed["raw"] is not None
    assert len(desk.comments()) == comments
    monkeypatch.undo()
    assert run_cli(["inbound", "reprocess", str(failed["id"])], desk.env).exit_code == 0
    assert desk.comments()[-1]["body"] == "Any news?"

    status = run_cli(["status", "--json"], desk.env)
    counts = json.loads(status.stdout)["inbound"]
    assert counts["comment"] == 2 and counts["refused"] == 0 and set(counts) == \
        set(InboundOutcome)
    assert "inbound_messages" in run_cli(["status"], desk.env).stdout


# ------------------------------------------------------------------ IMAP and Maildir


@pytest.fixture(scope="module")
def dovecot(trust_ca: trustme.CA) -> Iterator[Dovecot]:
    if reason := dovecot_missing():
        pytest.skip(reason)
    with Dovecot(trust_ca) as server:
        yield server


def test_fetch_mail_over_imap_handles_each_message_once(
        desk: Desk, dovecot: Dovecot, ca_bundle_path: Path) -> None:
    account = dovecot.add_user()
    env = {**desk.env, "ITSM_INBOUND_URL": account.url(),
           "ITSM_INBOUND_PASSWORD": account.password,
           "ITSM_INBOUND_SSL_CAFILE": str(ca_bundle_path)}
    to_alice, to_erin = desk.sent_to("alice@example.com"), desk.sent_to("erin@example.com")
    reply = mail.gmail_reply(to_alice, ALICE, "Works since the restart.")
    account.append(reply, mail.exchange_out_of_office(to_alice, ALICE),
                   mail.postfix_dsn(to_erin.mail_from, "erin@example.com", "5.1.1",
                                    to_erin.message["Message-ID"], "550 5.1.1 unknown"))
    comments = len(desk.comments())

    fetched = run_cli(["fetch-mail"], env)
    assert fetched.exit_code == 0, fetched.stderr
    assert account.messages() == [] and len(account.messages("itsm-done")) == 3
    assert sorted(r["outcome"] for r in desk.records()) == sorted(
        [InboundOutcome.COMMENT, InboundOutcome.AUTO_REPLY, InboundOutcome.BOUNCE])
    assert desk.comments()[-1]["body"] == "Works since the restart."
    assert desk.delivery("erin@example.com")["state"] == "failed"

    account.append(reply)  # fetched again (a crash before the move, a second copy)
    assert run_cli(["fetch-mail"], env).exit_code == 0
    assert len(desk.comments()) == comments + 1 and len(desk.records()) == 3
    # recorded moments ago: left for the run that recorded it to move (intake.py)
    assert len(account.messages()) == 1


def test_the_scheduler_fetches_a_maildir(sqlite_url: str, tmp_path: Path) -> None:
    engine = create_schema(sqlite_url)
    seed_helpdesk(engine)
    maildir = tmp_path / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "new" / "1.eml").write_bytes(mail.plain_mail(
        ALICE, "support@desk.example", "Keyboard", "Keys stick."))
    settings = load_settings(environ={**cli_env(sqlite_url, **SETTINGS),
                                      "ITSM_INBOUND_URL": f"maildir:{maildir}"},
                             dotenv_path=None)
    scheduler = NotifyScheduler(settings, engine)
    assert FETCH_JOB in [job.name for job in scheduler.jobs()]
    scheduler.fetch_job()
    assert list((maildir / "new").iterdir()) == []
    with engine.connect() as conn:
        assert conn.execute(sa.select(schema.inbound_messages.c.outcome)).scalar_one() == \
            InboundOutcome.TICKET


# ------------------------------------------------------------------ exit statuses


def test_receive_exits_75_when_the_database_is_down_and_2_when_misconfigured(
        sqlite_url: str) -> None:
    message = mail.plain_mail(ALICE, "support@desk.example", "Hi", "Hello")
    runner = CliRunner()
    down = runner.invoke(app, ["receive"], input=message,
                         env=cli_env("sqlite:////nonexistent-folder/itsm.db"))
    assert down.exit_code == 75 and "The MTA will retry" in down.stderr
    # down while handling (after the command's own check): left for the next run
    gone = "sqlite:////nonexistent-folder/itsm.db"
    handler = InboundHandler(load_settings(environ=cli_env(gone), dotenv_path=None),
                             make_engine(gone))
    result = handler.handle(message)
    assert result.outcome is Outcome.TEMPORARY_FAILURE and result.outage and not result.final
    create_schema(sqlite_url)
    wrong = runner.invoke(app, ["receive"], input=message,
                          env=cli_env(sqlite_url, ITSM_INBOUND_UNKNOWN_REPLY="ignore"))
    assert wrong.exit_code == 2 and "ITSM_INBOUND_UNKNOWN_REPLY" in wrong.stderr
    # a mapping file's schema can be read, not written: no comments, no tickets
    with pytest.raises(ConfigError, match="only into the contract, django-helpdesk and "
                                          "django-spire sources"):
        InboundHandler(load_settings(environ=cli_env(sqlite_url, ITSM_SOURCE="desk.toml"),
                                     dotenv_path=None), make_engine(sqlite_url))
    no_mailbox = run_cli(["fetch-mail"], cli_env(sqlite_url))
    assert no_mailbox.exit_code == 2 and re.search(r"ITSM_INBOUND_URL is not set.*set it",
                                                   no_mailbox.stderr.replace("\n", " "))
