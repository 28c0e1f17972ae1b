"""Hostile names, addresses, titles and payloads (issue 12), checked on the bytes the SMTP
server receives.

* Property tests generate RFC 2047 look-alikes (odd charsets, ``q`` and ``b``, nested and
  adjacent words), every control character and separator, in every field that reaches a
  header (title, number, status, first and last name, the address itself), send each
  message through the real SMTP test server, on the fast path (``compose``) and the
  email package's plain path (``build_message``), and parse what the server received:
  the header names and the To address are exactly the intended ones, nothing a reader
  decodes holds a control character or a line break, no bare CR or LF crossed the wire.
* The adversarial review's reproductions, through send-pending, overdue digests and
  test-email, on SQLite, PostgreSQL and MariaDB.
* Poison payloads between good events: the good ones are delivered in the same run.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterator
from datetime import datetime, timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser, Parser
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from contract_app import (
    add_event,
    add_ticket,
    add_user,
    create_schema,
    deliveries,
    outbox_rows,
    run_cli,
    smtp_env,
    utcnow,
)
from itsm_notify.channels.base import Outgoing, deliver_all
from itsm_notify.channels.smtp import SmtpTransport, bare_line_break
from itsm_notify.compose.headers import SMTP_POLICY, SMTPUTF8_POLICY, header_address, needs_smtputf8
from itsm_notify.compose.render import Renderer, message_id, thread_id
from itsm_notify.config import Settings, load_settings
from itsm_notify.engine.overdue import overdue_scan
from itsm_notify.engine.sender import send_pending
from itsm_notify.errors import UnsafeHeader
from itsm_notify.events.addresses import address_problem
from itsm_notify.events.model import Comment, EventContext, OutboxEvent, Project, Ticket, User
from itsm_notify.events.types import resolve
from itsm_notify.states import DeliveryState
from smtp_server import ReceivedMessage, SmtpSink

# ------------------------------------------------------------------ hostile text

#: Encoded-word look-alikes that Python's parser (or another reader) decodes, each
#: meant to smuggle CR LF, NUL or ESC into a header once decoded.
LOOKALIKES = [
    "=?utf-8?q?=0D=0ABcc:_x@evil.com?=",
    "=? x?q?=0D=0ABcc=3A_evil=40evil.com?=",        # a charset holding a space
    "=?UTF-8?B?DQpCY2M6IHhAZXZpbC5jb20=?=",           # base64 of "\r\nBcc: x@evil.com"
    "=?utf-8*en?Q?=00=1B=0D=0A?=",                   # a language tag, NUL and ESC
    "=?iso-8859-1?q?=0D.=0D=0A?=",                   # CR . CR LF: SMTP smuggling
    "=?utf-8?q?a?==?utf-8?q?=0D=0A?=",               # adjacent words
    "=?utf-8?q?=3D=3Futf-8=3Fq=3F=0D=0A=3F=3D?=",    # a word decoding to a word
    "x=?utf-8?q?=0A?=y",                             # inside an atom
    "=?x?b?AA==?=",
]
#: Pieces of an encoded-word look-alike, so hypothesis assembles new ones.
EW_PIECES = ["=?", "?=", "?q?", "?Q?", "?b?", "?B?", "utf-8", " x", "=0D", "=0A", "=00", "_",
             "DQo=", "Bcc:", "@evil.com"]
CONTROLS = [chr(c) for c in [*range(0, 32), 127, *range(0x80, 0xA0)]] + \
    ["\u2028", "\u2029", "\u200b", "\ufeff", "\u202e"]


def hostile_text(max_pieces: int = 6) -> st.SearchStrategy[str]:
    piece = st.one_of(st.text(max_size=6), st.sampled_from(LOOKALIKES),
                      st.sampled_from(EW_PIECES), st.sampled_from(CONTROLS),
                      st.sampled_from(["\r\nBcc: x@evil.com", "\r\n\r\nbody", "\r.\r\n",
                                       "<", ">", '"', ",", ":", ";", "\\"]))
    return st.lists(piece, max_size=max_pieces).map("".join)


#: Local parts Django's EmailValidator accepts that read as encoded words, plain ones,
#: and quoted ones (with spaces, or a control character that cannot be made safe).
hostile_local_parts = st.one_of(
    st.sampled_from(["=?utf-8?q?=0D=0ABcc=3A_x=40evil.com?=",
                     "=?UTF-8?B?DQpCY2M6IHhAZXZpbC5jb20=?=", "a=?utf-8?q?=0A?=b",
                     '"=? x?q?=0D=0ABcc:_x@evil.com?="', '"john doe"', "o'brien+tag",
                     '"bell\x07"', "plain", "zoë"]),
    st.lists(st.sampled_from(["=?", "?=", "utf-8", "q", "=0D=0A", "_", "a", "."]),
             min_size=1, max_size=6).map("".join))


def reads_unsafe(text: str) -> bool:
    return any(unicodedata.category(ch) in {"Cc", "Cf", "Zl", "Zp", "Cs", "Co", "Cn"}
               for ch in text)


# ----------------------------------------------------------------- the checks


def check_received(received: ReceivedMessage, *, intended: set[str], local: str,
                   domain: str) -> None:
    """What a reader of the received bytes sees is exactly what was meant."""
    data = received.data
    assert not bare_line_break(data), "a bare CR or LF crossed the wire"
    message = parse(data)
    assert isinstance(message, EmailMessage)
    names = [name.lower() for name in message]
    assert len(names) == len(set(names)), f"a header repeats: {names}"
    assert set(names) == intended, f"{set(names) ^ intended}"
    for name in names:
        assert not reads_unsafe(str(message[name])), f"{name} reads {str(message[name])!r}"
    to = message["To"].addresses
    assert [(a.username, a.domain) for a in to] == [(local, domain)]
    assert not any(reads_unsafe(a.display_name) for a in to)
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]


def parse(data: bytes) -> EmailMessage:
    """The message as a reader parses it (8-bit headers as UTF-8: SMTPUTF8)."""
    if data.isascii():
        parsed = BytesParser(policy=policy.default).parsebytes(data)
    else:
        parsed = Parser(policy=policy.default).parsestr(data.decode("utf-8"))
    assert isinstance(parsed, EmailMessage)
    return parsed


def unquoted(local: str) -> str:
    if len(local) >= 2 and local[0] == local[-1] == '"':
        return local[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return local


SETTINGS = load_settings({"site_url": "https://desk.example.com", "secret_key": "s3cret",
                          "default_from_email": "Desk <desk@example.com>"},
                         environ={}, dotenv_path=None)
REDIRECTED = load_settings({"site_url": "https://desk.example.com", "debug": True,
                            "development_email": "dev@example.com",
                            "default_from_email": "Desk <desk@example.com>"},
                           environ={}, dotenv_path=None)
RENDERERS = {False: Renderer(SETTINGS), True: Renderer(REDIRECTED)}
EXPECTED = {"subject", "from", "to", "date", "message-id", "references", "in-reply-to",
            "auto-submitted", "x-auto-response-suppress", "x-itsm-ticket", "x-itsm-event",
            "mime-version", "content-type"}


@pytest.fixture(scope="module")
def module_sink() -> Iterator[SmtpSink]:
    with SmtpSink() as sink:
        yield sink


@pytest.fixture(scope="module")
def transport(module_sink: SmtpSink) -> Iterator[SmtpTransport]:
    settings = load_settings({"email_backend": "smtp", "email_host": module_sink.host,
                              "email_port": module_sink.port, "smtp_connections": 1},
                             environ={}, dotenv_path=None)
    sender = SmtpTransport(settings)
    yield sender
    sender.close()


def _context(title: str, number: str, status: str, first: str, last: str,
             address: str) -> EventContext:
    users = {1: User(1, "req", address, first, last), 2: User(2, "actor", "actor@desk.test")}
    ticket = Ticket(id=7, number=number, title=title, description="d", status="open",
                    priority="high", requester_id=1, assignee_id=None, project_id=None,
                    due_at=None, created_at=datetime(2026, 1, 1))
    return EventContext(event=OutboxEvent(1, "status_changed", 7, 2, None),
                        payload={"old_status": "open", "new_status": status},
                        ticket=ticket, users=users, manager_ids=())


@pytest.mark.parametrize("settings", [SETTINGS, REDIRECTED], ids=["direct", "debug-redirect"])
@hsettings(max_examples=100, deadline=None,
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(title=hostile_text(), number=hostile_text(3), status=hostile_text(3),
       first=hostile_text(3), last=hostile_text(), local=hostile_local_parts)
def test_no_field_can_add_a_header_or_smuggle_a_line_break(
        settings: Settings, transport: SmtpTransport, module_sink: SmtpSink, title: str,
        number: str, status: str, first: str, last: str, local: str) -> None:
    address = f"{local}@example.com"
    if address_problem(address):
        return  # not an address at all: never mailed (tests/test_safety_e2e.py)
    renderer = RENDERERS[settings.debug]
    ctx = _context(title, number or "N", status or "s", first, last, address)
    [recipient] = resolve(ctx, settings).email
    intended = EXPECTED | ({"x-original-to"} if settings.redirect_to else set())
    fields = {"event_type_name": "status_changed", "ticket_number": ctx.ticket.number,
              "msg_id": message_id(1, recipient.key, settings.from_domain),
              "thread": thread_id(7, settings.from_domain)}
    rendered = renderer.render_event(ctx, recipient)
    try:
        fast = renderer.compose(rendered, recipient, **fields)
    except UnsafeHeader:  # only an address that cannot be written safely is refused
        assert reads_unsafe(unquoted(local))
        with pytest.raises(UnsafeHeader):
            header_address(recipient.name, address)
        return
    rcpt = settings.redirect_to or address
    plain = renderer.build_message(rendered, recipient, **fields).as_bytes(
        policy=SMTPUTF8_POLICY if needs_smtputf8("desk@example.com", rcpt) else SMTP_POLICY)
    module_sink.clear()
    outcomes = deliver_all(transport, [
        Outgoing(key=path, sender="desk@example.com", rcpt=rcpt, data=data)
        for path, data in (("fast", fast), ("plain", plain))])
    assert [o.status for o in outcomes] == [DeliveryState.SENT, DeliveryState.SENT], outcomes
    received = module_sink.messages
    assert len(received) == 2
    to_local, to_domain = ("dev", "example.com") if settings.redirect_to else \
        (unquoted(local), "example.com")
    for message in received:
        check_received(message, intended=intended, local=to_local, domain=to_domain)
        if settings.redirect_to:
            original = message.message["X-Original-To"]
            assert not reads_unsafe(str(original))


def test_a_message_with_a_bare_cr_is_never_sent(module_sink: SmtpSink,
                                                 transport: SmtpTransport) -> None:
    module_sink.clear()
    smuggling = (b"Subject: a\r\nTo: b@example.com\r\n\r\nhello\r.\r\nMAIL FROM:<ceo@x>\r\n"
                 b"RCPT TO:<victim@x>\r\nDATA\r\nforged\r\n")
    [outcome] = deliver_all(transport, [Outgoing("k", "desk@example.com", "b@example.com",
                                                 smuggling)])
    assert outcome.status == "failed" and "bare CR or LF" in outcome.detail
    assert module_sink.messages == []


# ------------------------------------------------- the reproductions, end to end

HOSTILE_LAST = "=? x?q?=0D=0ABcc:_evil@evil.com?= =?utf-8?q?=00=1B?="
HOSTILE_LOCAL = "=?utf-8?q?=0D=0ABcc=3A_x=40evil.com?="
HOSTILE_TITLE = "VPN =?utf-8?q?=0D=0ABcc:_x@evil.com?= down =?utf-8?q?=0D.=0D=0A?="


def _assert_clean(received: list[ReceivedMessage]) -> None:
    assert received
    for message in received:
        assert not bare_line_break(message.data)
        parsed = parse(message.data)
        names = {name.lower() for name in parsed}
        assert "bcc" not in names
        assert parsed.get_content_type() == "multipart/alternative"
        for name in names:
            assert not reads_unsafe(str(parsed[name])), (name, str(parsed[name]))
        [to] = parsed["To"].addresses
        assert f"{to.username}@{to.domain}".lower() in \
            {r.lower() for r in message.rcpt_tos} | {HOSTILE_LOCAL.lower() + "@example.com"}


def test_hostile_names_addresses_and_titles_end_to_end(database_url: str,
                                                        smtp_sink: SmtpSink) -> None:
    """Reproductions 1, 2, 4 (send-pending), then the overdue digest and test-email."""
    engine = create_schema(database_url)
    eve = add_user(engine, "eve", "eve@example.com", first_name="Eve", last_name=HOSTILE_LAST)
    mallory = add_user(engine, "mallory", f"{HOSTILE_LOCAL}@example.com", first_name="M")
    agent = add_user(engine, "agent", "agent@example.com", first_name="Agent",
                     last_name=HOSTILE_LAST)
    first = add_ticket(engine, "TKT-1", HOSTILE_TITLE, eve, assignee_id=mallory,
                       due_at=utcnow() - timedelta(days=1))
    second = add_ticket(engine, "TKT-2", "Printer", mallory, assignee_id=agent,
                        due_at=utcnow() - timedelta(days=1))
    for ticket in (first, second):
        add_event(engine, "ticket_created", ticket, None, {})
    add_event(engine, "status_changed", first, None,
              {"old_status": "open", "new_status": "=?utf-8?q?=0D=0AX-Evil:_1?="})
    settings = load_settings(environ=smtp_env(database_url, smtp_sink), dotenv_path=None)
    report = send_pending(settings, engine=engine)
    # Every recipient of the hostile ticket got its email: the title degraded, it did
    # not silence the ticket (reproduction 4).
    assert report.emails_failed == 0 and report.events_failed == 0, report.summary()
    assert {d["state"] for d in deliveries(engine)} == {"sent"}
    assert report.emails_sent == 6
    _assert_clean(smtp_sink.messages)
    subjects = {m.subject for m in smtp_sink.messages}
    assert any("VPN" in (s or "") and "down" in (s or "") for s in subjects)

    smtp_sink.clear()
    digests = overdue_scan(settings, engine=engine)
    assert digests.digests_sent == 2, digests.summary()
    _assert_clean(smtp_sink.messages)

    smtp_sink.clear()
    result = run_cli(["test-email", f"{HOSTILE_LOCAL}@example.com"],
                     smtp_env(database_url, smtp_sink))
    assert result.exit_code == 0, result.output
    _assert_clean(smtp_sink.messages)


def test_a_huge_title_makes_a_bounded_email(database_url: str, smtp_sink: SmtpSink) -> None:
    """Reproduction 7: a multi-megabyte title (and name) no longer makes an email of that
    size: every text field is bounded when it is loaded."""
    engine = create_schema(database_url)
    widen = {"postgresql": "ALTER TABLE {t} ALTER COLUMN {c} TYPE TEXT",
             "mysql": "ALTER TABLE {t} MODIFY {c} LONGTEXT NOT NULL"}.get(engine.dialect.name)
    if widen:  # an app's columns may be TEXT; the contract's are VARCHAR
        with engine.begin() as conn:
            for table, column in (("tickets", "title"), ("users", "last_name")):
                conn.exec_driver_sql(widen.format(t=table, c=column))
    alice = add_user(engine, "alice", first_name="Alice", last_name="L" * 1_000_000)
    ticket = add_ticket(engine, "TKT-1", "Disk full " * 500_000, alice, assignee_id=alice)
    add_event(engine, "ticket_created", ticket, None, {})
    settings = load_settings(environ=smtp_env(database_url, smtp_sink, ADMINS="ops@example.com"),
                             dotenv_path=None)
    report = send_pending(settings, engine=engine)
    assert report.emails_sent == 2, report.summary()
    assert all(len(m.data) < 100_000 for m in smtp_sink.messages)


# ---------------------------------------------------------------- poison payloads

POISON: list[tuple[str, str]] = [
    ("comment_added", '{"comment_id": ' + "[" * 20_000 + "]" * 20_000 + "}"),  # RecursionError
    ("comment_added", json.dumps({"comment_id": 10**40})),       # too large for any driver
    ("ticket_assigned", json.dumps({"assignee_id": 2**63})),
    ("ticket_assigned", json.dumps({"assignee_id": -5})),
    ("comment_added", json.dumps({"comment_id": "12"})),
    ("status_changed", json.dumps({"new_status": {"nested": [1, 2]}})),
    ("status_changed", json.dumps([1, 2, 3])),
    ("ticket_created", '"' + "x" * 60_000 + '"'),
    ("ticket_created", "{not json"),
    ("no_such_type" + "!" * 50, "{}"),
]


def _insert_invalid_utf8(engine: sa.Engine, ticket: int) -> tuple[int, int]:
    """SQLite keeps whatever bytes are written into a TEXT column: a payload whose key is
    not UTF-8 (read with a replacement character: delivered) and an event type that is
    not (failed). Returns their ids."""
    ids = []
    with engine.begin() as conn:
        for kind, payload in (("'ticket_created'", "CAST(x'7b22ff223a20317d' AS TEXT)"),
                              ("CAST(x'ff74696b' AS TEXT)", "'{}'")):
            ids.append(conn.exec_driver_sql(
                "INSERT INTO notification_outbox (event_type, ticket_id, actor_id, payload) "
                f"VALUES ({kind}, {ticket}, NULL, {payload})").lastrowid)
    return ids[0], ids[1]


def test_poison_payloads_fail_alone_and_the_rest_is_delivered(database_url: str,
                                                             smtp_sink: SmtpSink) -> None:
    engine = create_schema(database_url)
    alice = add_user(engine, "alice", first_name="Alice")
    bob = add_user(engine, "bob", first_name="Bob")
    ticket = add_ticket(engine, "TKT-1", "VPN", alice, assignee_id=bob)
    good: list[int] = []
    poison: list[int] = []
    for kind, payload in POISON:
        good.append(add_event(engine, "ticket_created", ticket, None, {}))
        poison.append(add_event(engine, kind, ticket, None, payload))
    if engine.dialect.name == "sqlite":
        readable, unreadable = _insert_invalid_utf8(engine, ticket)
        good.append(readable)
        poison.append(unreadable)
        bad_ticket = add_ticket(engine, "TKT-2", "Odd", alice)
        with engine.begin() as conn:  # a ticket whose due date is not a date
            conn.exec_driver_sql(f"UPDATE tickets SET due_at = 'not a date' WHERE id = "
                                 f"{bad_ticket}")
        poison.append(add_event(engine, "ticket_created", bad_ticket, None, {}))
    good.append(add_event(engine, "ticket_created", ticket, None, {}))
    result = run_cli(["send-pending"], smtp_env(database_url, smtp_sink, ITSM_BATCH_SIZE=50))
    assert "Traceback" not in result.output
    assert result.exit_code == 1  # events failed: cron notices
    rows = {row["id"]: row for row in outbox_rows(engine)}
    assert {rows[i]["state"] for i in good} == {"done"}
    assert all(rows[i]["state"] == "failed" and rows[i]["last_error"] for i in rows
               if i not in good), [(i, rows[i]["state"]) for i in rows if i not in good]
    assert all(len(rows[i]["last_error"] or "") < 1000 for i in rows)
    assert len(smtp_sink.messages) == 2 * len(good)  # requester and assignee, each event


def test_a_value_the_database_refuses_fails_that_event_alone(
        database_url: str, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fault while storing one event's plan (a value the driver cannot store) fails
    that event; its batch neighbours are planned, stored and delivered."""
    from itsm_notify.engine import sender as sender_module

    engine = create_schema(database_url)
    alice = add_user(engine, "alice", first_name="Alice")
    ticket = add_ticket(engine, "TKT-1", "VPN", alice)
    events = [add_event(engine, "ticket_created", ticket, None, {}) for _ in range(3)]
    real = sender_module.write_plan

    def refusing(conn: sa.Connection, rows: list[dict[str, Any]],
                 notifications: list[dict[str, Any]], write_in_app: Any = None,
                 summary_items: Any = ()) -> None:
        if any(row["event_id"] == events[1] for row in rows):
            raise sa.exc.DataError("INSERT", {}, ValueError("value out of range"))
        real(conn, rows, notifications, write_in_app, summary_items)

    monkeypatch.setattr(sender_module, "write_plan", refusing)
    settings = load_settings(environ=smtp_env(database_url, smtp_sink), dotenv_path=None)
    report = send_pending(settings, engine=engine)
    states = {row["id"]: row for row in outbox_rows(engine)}
    assert [states[e]["state"] for e in events] == ["done", "failed", "done"]
    assert "could not be stored" in states[events[1]]["last_error"]
    assert report.emails_sent == 2


def test_a_comment_with_an_unknown_author_shape_is_shown_as_text(sqlite_url: str,
                                                                  smtp_sink: SmtpSink) -> None:
    """Real data shapes are not errors: a number where text was expected, bytes."""
    engine = create_schema(sqlite_url)
    alice = add_user(engine, "alice", first_name="Alice")
    ticket = add_ticket(engine, "TKT-1", "x", alice)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE tickets SET title = 12345, status = x'6f70656e' "
                             f"WHERE id = {ticket}")
    add_event(engine, "ticket_created", ticket, None, {})
    settings = load_settings(environ=smtp_env(sqlite_url, smtp_sink), dotenv_path=None)
    report = send_pending(settings, engine=engine)
    assert report.emails_sent == 1, report.summary()
    assert smtp_sink.messages[0].subject == "New Ticket: 12345 (TKT-1)"


def test_in_app_text_of_a_hostile_event_is_bounded() -> None:
    ctx = EventContext(
        event=OutboxEvent(1, "comment_added", 7, 1, None), payload={"comment_id": 9},
        ticket=Ticket(7, "T-7", "t" * 10_000, "", "open", "high", 1, None, None, None, None),
        users={1: User(1, "u", "u@example.com")}, project=Project(1, "P"),
        comment=Comment(9, 7, 1, "b" * 100_000, False, None), manager_ids=())
    from itsm_notify.compose.i18n import Languages
    from itsm_notify.compose.render import in_app_text

    title, body, _ = in_app_text(ctx, "s" * 10_000, Languages().get())
    assert len(title) <= 500 and len(body) <= 400
