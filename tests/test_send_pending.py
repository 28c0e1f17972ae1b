"""send-pending end to end: the real CLI, a real SMTP server, each of the three databases.

The help desk comes from ``helpdesk.seed_helpdesk``; events are written as a producer
writes them; ``itsm-notify send-pending`` runs through Typer's runner (and, where the
silence of a cron run matters, as a real subprocess); the aiosmtpd sink tells who
received what.
"""

from __future__ import annotations

import email
import json
import os
import re
import subprocess
import sys
from collections import Counter
from email import policy
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from contract_app import (
    add_event,
    add_ticket,
    app_notifications,
    cli_env,
    create_schema,
    deliveries,
    outbox_rows,
    outbox_states,
    run_cli,
    seed_helpdesk,
    smtp_env,
)
from itsm_notify.storage import schema
from smtp_server import ReceivedMessage, SmtpSink

pytestmark = pytest.mark.timeout(120)

SITE = "https://helpdesk.example.com"
VPN_TITLE = "VPN drops every 10 minutes"
LAPTOP_TITLE = "New laptop for onboarding"
SETTINGS = {
    "SITE_URL": SITE, "DEFAULT_FROM_EMAIL": "Help Desk <helpdesk@example.com>",
    "REPLY_TO_EMAIL": "support@example.com", "ADMINS": "Ops Team <ops@example.com>",
    "ITSM_INTERNAL_STATUSES": "triage", "ITSM_SMTP_CONNECTIONS": 1,
}


@pytest.fixture
def helpdesk(database_url: str) -> Any:
    """(engine, ids) of a seeded help desk on each database."""
    engine = create_schema(database_url)
    ids = seed_helpdesk(engine)
    yield engine, ids
    engine.dispose()


def addr(name: str) -> str:
    return f"{name}@example.com"


def received(sink: SmtpSink) -> Counter[tuple[str, str]]:
    """(envelope recipient, subject) of every accepted message, with multiplicity."""
    return Counter((rcpt, m.subject or "") for m in sink.messages for rcpt in m.rcpt_tos)


def text_and_html(msg: ReceivedMessage) -> tuple[str, str]:
    assert msg.message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in msg.message.iter_parts()] == ["text/plain",
                                                                        "text/html"]
    text = msg.message.get_body(preferencelist=("plain",))
    html = msg.message.get_body(preferencelist=("html",))
    assert text is not None and html is not None
    return text.get_content(), html.get_content()


def queue_every_event_type(engine: sa.Engine, ids: dict[str, int]) -> dict[str, int]:
    """One event of every kind (and both comment kinds); returns their ids by name."""
    vpn, laptop = ids["vpn"], ids["laptop"]
    return {
        "created_vpn": add_event(engine, "ticket_created", vpn, ids["alice"], {}),
        "created_laptop": add_event(engine, "ticket_created", laptop, None, None),
        "assigned_frank": add_event(engine, "ticket_assigned", vpn, ids["dave"],
                                    {"assignee_id": ids["frank"]}),
        "assigned_default": add_event(engine, "ticket_assigned", vpn, ids["dave"], None),
        "status_public": add_event(engine, "status_changed", vpn, ids["bob"],
                                   {"old_status": "open", "new_status": "in_progress"}),
        "status_internal": add_event(engine, "status_changed", vpn, ids["bob"],
                                     {"old_status": "in_progress", "new_status": "triage"}),
        "comment_public": add_event(engine, "comment_added", vpn, ids["erin"],
                                    {"comment_id": ids["c_erin"]}),
        "comment_internal": add_event(engine, "comment_added", vpn, ids["frank"],
                                      {"comment_id": ids["c_frank_internal"]}),
    }


SUBJECT_CREATED_VPN = f"New Ticket: {VPN_TITLE} (TKT-001)"
SUBJECT_CREATED_LAPTOP = f"New Ticket: {LAPTOP_TITLE} (TKT-002)"
SUBJECT_ASSIGNED = f"Ticket Assigned: {VPN_TITLE} (TKT-001)"
SUBJECT_COMMENT = f"New Comment on Ticket: {VPN_TITLE} (TKT-001)"
EXPECTED_EMAILS = Counter({
    # ticket_created by alice: assignee, team (bob, carol), ADMINS; not the actor,
    # not the manager (in-app only)
    (addr("bob"), SUBJECT_CREATED_VPN): 1, (addr("carol"), SUBJECT_CREATED_VPN): 1,
    ("ops@example.com", SUBJECT_CREATED_VPN): 1,
    # a system ticket_created: requester and ADMINS (no assignee, no project)
    (addr("alice"), SUBJECT_CREATED_LAPTOP): 1, ("ops@example.com", SUBJECT_CREATED_LAPTOP): 1,
    # ticket_assigned: the payload's assignee; then the ticket's own assignee
    (addr("frank"), SUBJECT_ASSIGNED): 1, (addr("bob"), SUBJECT_ASSIGNED): 1,
    # status_changed by bob to a public status: requester and team; to an internal
    # one: the team only
    (addr("alice"), f"Ticket Status Changed: {VPN_TITLE} → in_progress"): 1,
    (addr("carol"), f"Ticket Status Changed: {VPN_TITLE} → in_progress"): 1,
    (addr("carol"), f"Ticket Status Changed: {VPN_TITLE} → triage"): 1,
    # erin's public comment: requester, assignee (also a public commenter); not erin,
    # not frank or carol (internal notes only)
    (addr("alice"), SUBJECT_COMMENT): 1, (addr("bob"), SUBJECT_COMMENT): 1,
    # frank's internal comment: no email at all
})


def expected_in_app(ids: dict[str, int], events: dict[str, int]) -> Counter[tuple[int, int]]:
    """(user id, event's ticket id) of every in-app row the events should write."""
    rows = {
        "created_vpn": ["bob", "carol", "dave"],
        "created_laptop": ["alice", "dave"],
        "assigned_frank": ["frank"],
        "assigned_default": ["bob"],
        "status_public": ["alice", "carol"],
        "status_internal": ["carol"],
        "comment_public": ["alice", "bob"],
        "comment_internal": ["bob", "carol"],
    }
    assert set(rows) == set(events)
    return Counter((ids[user], ids["laptop"] if name == "created_laptop" else ids["vpn"])
                   for name, users in rows.items() for user in users)


# ------------------------------------------------------------------------- db init


def test_db_init_creates_every_table_and_is_idempotent(database_url: str) -> None:
    env = cli_env(database_url)
    first = run_cli(["db", "init"], env)
    assert first.exit_code == 0, first.stderr
    every = set(schema.metadata.tables) | set(schema.contract_metadata.tables)
    assert f"Created {len(every)} tables" in first.stderr
    second = run_cli(["db", "init"], env)
    assert second.exit_code == 0 and "already exist" in second.stderr
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as conn:
            assert every | {"itsm_notify_alembic_version"} <= \
                set(sa.inspect(conn).get_table_names())
    finally:
        engine.dispose()


# -------------------------------------------------------------- the whole pipeline


def test_send_pending_delivers_every_event_type(helpdesk: Any, database_url: str,
                                                smtp_sink: SmtpSink) -> None:
    engine, ids = helpdesk
    events = queue_every_event_type(engine, ids)
    env = smtp_env(database_url, smtp_sink, **SETTINGS)

    result = run_cli(["send-pending"], env)

    assert result.exit_code == 0, result.stderr
    # Who received what: one message per recipient, exactly the contract's table.
    assert received(smtp_sink) == EXPECTED_EMAILS
    assert all(len(m.rcpt_tos) == 1 for m in smtp_sink.messages)
    assert not smtp_sink.messages_to(addr("dave")), "managers are told in-app only"
    assert not smtp_sink.messages_to(addr("erin")), "the actor is not told"
    # One SMTP session for the whole run.
    assert smtp_sink.connection_count == 1
    assert {m.session_id for m in smtp_sink.messages} == {1}
    # Every event done, once.
    rows = outbox_rows(engine)
    assert {r["id"]: r["state"] for r in rows} == dict.fromkeys(events.values(), "done")
    # attempts counts claims in a row that did not finish: a finished event has none.
    assert all(r["attempts"] == 0 and r["last_error"] is None and r["processed_at"]
               and r["locked_by"] is None for r in rows)
    # In-app rows: one per user per event, relative links, managers included.
    notes = app_notifications(engine)
    assert Counter((n["user_id"], n["ticket_id"]) for n in notes) == expected_in_app(ids, events)
    assert all(n["url"] == f"/tickets/{n['ticket_id']}/" and n["read_at"] is None
               and n["title"] and n["body"] for n in notes)
    assert Counter(n["event_type"] for n in notes) == Counter(
        {"ticket_created": 5, "ticket_assigned": 2, "status_changed": 3, "comment_added": 4})
    assert ids["alice"] not in {n["user_id"] for n in notes
                                if n["event_type"] == "comment_added" and "internal" in
                                n["body"]}, "the requester never sees an internal note"
    # One delivery record per (event, channel, recipient).
    records = deliveries(engine)
    assert Counter(r["channel"] for r in records) == Counter(
        {"email": sum(EXPECTED_EMAILS.values()), "in_app": len(notes)})
    assert {r["state"] for r in records} == {"sent"}


@pytest.mark.parametrize("connections", [1, 3])
def test_smtp_sessions_are_reused_across_batches(helpdesk: Any, database_url: str,
                                                 smtp_sink: SmtpSink, connections: int) -> None:
    engine, ids = helpdesk
    queue_every_event_type(engine, ids)
    env = smtp_env(database_url, smtp_sink, **{**SETTINGS, "ITSM_BATCH_SIZE": 2,
                                                "ITSM_SMTP_CONNECTIONS": connections})

    assert run_cli(["send-pending"], env).exit_code == 0

    assert received(smtp_sink) == EXPECTED_EMAILS
    assert 1 <= smtp_sink.connection_count <= connections  # four batches, same sessions
    assert set(outbox_states(engine).values()) == {"done"}


def test_emails_carry_the_contract_headers_parts_and_links(
        helpdesk: Any, database_url: str, smtp_sink: SmtpSink) -> None:
    engine, ids = helpdesk
    queue_every_event_type(engine, ids)
    result = run_cli(["send-pending"], smtp_env(database_url, smtp_sink, **SETTINGS))
    assert result.exit_code == 0, result.stderr

    messages = smtp_sink.messages
    assert len(messages) == sum(EXPECTED_EMAILS.values())
    assert len({m.message["Message-ID"] for m in messages}) == len(messages)
    users = {addr(n): n for n in ("alice", "bob", "carol", "frank")}
    for msg in messages:
        headers = msg.message
        [rcpt] = msg.rcpt_tos
        assert msg.mail_from == "helpdesk@example.com"
        assert headers["From"] == "Help Desk <helpdesk@example.com>"
        assert headers["To"].addresses[0].addr_spec == rcpt
        assert headers["Reply-To"] == "support@example.com"
        assert headers["Date"] and headers["Auto-Submitted"] == "auto-generated"
        assert headers["Message-ID"].endswith("@example.com>")
        number = "TKT-002" if LAPTOP_TITLE in (msg.subject or "") else "TKT-001"
        ticket_id = ids["laptop"] if number == "TKT-002" else ids["vpn"]
        assert headers["X-ITSM-Ticket"] == number
        event = headers["X-ITSM-Event"]
        assert event in {"ticket_created", "ticket_assigned", "status_changed",
                         "comment_added"}
        thread = f"<itsm-notify.ticket-{ticket_id}@example.com>"
        assert headers["References"] == thread
        assert headers["In-Reply-To"] == (None if event == "ticket_created" else thread)
        text, html = text_and_html(msg)
        link = f"{SITE}/tickets/{ticket_id}/"
        assert link in text and f'href="{link}"' in html
        if rcpt in users:
            first = users[rcpt].capitalize()
            assert f"Hi {first}," in text and f"Hi {first}," in html
        else:
            assert "Hi Ops Team," in text
        for body in (text, html, msg.data.decode("ascii", "replace")):
            assert "SECRET-NOTE" not in body, "an internal comment leaked into an email"
    to_bob = {m.subject: m for m in smtp_sink.messages_to(addr("bob"))}
    assert str(to_bob[SUBJECT_CREATED_VPN].message["To"]) == "Bob Okafor <bob@example.com>"
    comment_text, _ = text_and_html(to_bob[SUBJECT_COMMENT])
    assert "Same here since 9am." in comment_text and "Erin Kowalski" in comment_text


def test_a_second_run_sends_nothing_and_exits_0(helpdesk: Any, database_url: str,
                                                smtp_sink: SmtpSink) -> None:
    engine, ids = helpdesk
    queue_every_event_type(engine, ids)
    env = smtp_env(database_url, smtp_sink, **SETTINGS)
    assert run_cli(["send-pending"], env).exit_code == 0
    count, notes = len(smtp_sink.messages), len(app_notifications(engine))

    again = run_cli(["send-pending"], env)

    assert again.exit_code == 0
    assert (again.stdout, again.stderr) == ("", "")
    assert len(smtp_sink.messages) == count and len(app_notifications(engine)) == notes
    assert smtp_sink.connection_count == 1, "an idle run does not even connect"


def test_limit_stops_after_n_events_in_id_order(helpdesk: Any, database_url: str,
                                                smtp_sink: SmtpSink) -> None:
    engine, ids = helpdesk
    events = [add_event(engine, "ticket_assigned", ids["vpn"], ids["dave"],
                        {"assignee_id": ids["frank"]}) for _ in range(5)]
    env = smtp_env(database_url, smtp_sink, **SETTINGS)

    assert run_cli(["send-pending", "--limit", "2"], env).exit_code == 0
    assert outbox_states(engine) == {**dict.fromkeys(events, "pending"),
                                     **dict.fromkeys(events[:2], "done")}
    assert len(smtp_sink.messages_to(addr("frank"))) == 2

    assert run_cli(["send-pending", "--limit", "10"], env).exit_code == 0
    assert set(outbox_states(engine).values()) == {"done"}
    assert len(smtp_sink.messages_to(addr("frank"))) == 5
    assert run_cli(["send-pending", "--limit", "0"], env).exit_code == 2


def test_dry_run_changes_nothing_and_names_recipients(helpdesk: Any, database_url: str,
                                                      smtp_sink: SmtpSink) -> None:
    engine, ids = helpdesk
    events = queue_every_event_type(engine, ids)
    bad = add_event(engine, "ticket_exploded", ids["vpn"], None, {})
    before = outbox_rows(engine)

    result = run_cli(["send-pending", "--dry-run"],
                     smtp_env(database_url, smtp_sink, **SETTINGS))

    assert result.exit_code == 0, result.stderr
    assert outbox_rows(engine) == before
    assert smtp_sink.messages == [] and smtp_sink.connection_count == 0
    assert app_notifications(engine) == [] and deliveries(engine) == []
    lines = planned_rows(result.stdout)
    for rcpt, subject in EXPECTED_EMAILS:
        assert any(f" email {rcpt} {subject!r}" in line for line in lines), (rcpt, subject)
    assert sum(" email " in line for line in lines) == sum(EXPECTED_EMAILS.values())
    assert any(f"event={events['created_vpn']} " in line and " in_app dave " in line
               for line in lines)
    assert not any(f"event={events['comment_internal']} " in line and " email " in line
                   for line in lines)
    assert any(f"event={bad} " in line and "would fail: unknown event type" in line
               for line in lines)


def test_malformed_events_fail_alone_and_the_run_exits_1(helpdesk: Any, database_url: str,
                                                         smtp_sink: SmtpSink) -> None:
    engine, ids = helpdesk

    def good() -> int:
        return add_event(engine, "ticket_assigned", ids["vpn"], ids["dave"],
                         {"assignee_id": ids["frank"]})

    goods = [good()]
    bad = {"not valid JSON": add_event(engine, "comment_added", ids["vpn"], None, "{oops")}
    goods.append(good())
    bad["unknown event type 'ticket_exploded'"] = add_event(engine, "ticket_exploded",
                                                            ids["vpn"], None, {})
    bad["ticket 999999 does not exist"] = add_event(engine, "ticket_created", 999999, None, {})
    goods.append(good())
    bad["comment 999999 does not exist"] = add_event(engine, "comment_added", ids["vpn"], None,
                                                     {"comment_id": 999999})
    bad[f"comment {ids['c_bob']} does not exist on ticket TKT-002"] = add_event(
        engine, "comment_added", ids["laptop"], None, {"comment_id": ids["c_bob"]})
    bad["payload must be a JSON object"] = add_event(engine, "ticket_created", ids["vpn"],
                                                     None, "[1, 2]")
    bad["payload needs 'new_status'"] = add_event(engine, "status_changed", ids["vpn"], None,
                                                  {"old_status": "open"})
    goods.append(good())

    result = run_cli(["send-pending"], smtp_env(database_url, smtp_sink, **SETTINGS))

    assert result.exit_code == 1
    assert "Traceback" not in result.stderr
    assert len(smtp_sink.messages_to(addr("frank"))) == len(goods)
    assert received(smtp_sink) == Counter({(addr("frank"), SUBJECT_ASSIGNED): len(goods)})
    rows = {r["id"]: r for r in outbox_rows(engine)}
    assert {i: rows[i]["state"] for i in goods} == dict.fromkeys(goods, "done")
    for reason, event_id in bad.items():
        assert rows[event_id]["state"] == "failed"
        assert reason in rows[event_id]["last_error"], rows[event_id]["last_error"]
    status = run_cli(["status", "--json"], cli_env(database_url))
    assert json.loads(status.stdout)["counts"]["failed"] == len(bad)
    # A failed event is not retried by the next run.
    again = run_cli(["send-pending"], smtp_env(database_url, smtp_sink, **SETTINGS))
    assert again.exit_code == 0 and len(smtp_sink.messages) == len(goods)


def test_debug_mode_redirects_every_email(helpdesk: Any, database_url: str,
                                          smtp_sink: SmtpSink) -> None:
    engine, ids = helpdesk
    add_event(engine, "ticket_created", ids["vpn"], ids["alice"], {})
    env = smtp_env(database_url, smtp_sink, **SETTINGS, DEBUG="true",
                   DEVELOPMENT_EMAIL="dev@example.com")

    assert run_cli(["send-pending"], env).exit_code == 0

    messages = smtp_sink.messages
    assert {rcpt for m in messages for rcpt in m.rcpt_tos} == {"dev@example.com"}
    assert {m.to for m in messages} == {"dev@example.com"}
    assert sorted(str(m.message["X-Original-To"]) for m in messages) == [
        "Bob Okafor <bob@example.com>", "Carol Nguyen <carol@example.com>",
        "Ops Team <ops@example.com>"]
    assert all(m.message["Cc"] is None and m.message["Bcc"] is None for m in messages)
    # In-app rows still go to the real users.
    assert {n["user_id"] for n in app_notifications(engine)} == {ids["bob"], ids["carol"],
                                                                 ids["dave"]}


def test_file_backend_writes_one_eml_per_message(helpdesk: Any, database_url: str,
                                                 tmp_path: Path) -> None:
    engine, ids = helpdesk
    add_event(engine, "ticket_created", ids["vpn"], ids["alice"], {})
    add_event(engine, "comment_added", ids["vpn"], ids["erin"], {"comment_id": ids["c_erin"]})
    env = cli_env(database_url, **SETTINGS, EMAIL_FILE_PATH=str(tmp_path / "mail"),
                  EMAIL_BACKEND="django.core.mail.backends.filebased.EmailBackend")

    assert run_cli(["send-pending"], env).exit_code == 0

    files = sorted((tmp_path / "mail").glob("*.eml"))
    assert len(files) == 5
    parsed = [email.message_from_bytes(f.read_bytes(), policy=policy.default) for f in files]
    got = Counter((m["To"].addresses[0].addr_spec, str(m["Subject"])) for m in parsed)
    assert got == Counter({(addr("bob"), SUBJECT_CREATED_VPN): 1,
                           (addr("carol"), SUBJECT_CREATED_VPN): 1,
                           ("ops@example.com", SUBJECT_CREATED_VPN): 1,
                           (addr("alice"), SUBJECT_COMMENT): 1,
                           (addr("bob"), SUBJECT_COMMENT): 1})
    assert all(m.get_content_type() == "multipart/alternative" for m in parsed)
    assert set(outbox_states(engine).values()) == {"done"}


# ---------------------------------------------------------------- database errors


@pytest.mark.parametrize("url", [
    "postgresql+psycopg://postgres:Sup3rSecretPw@127.0.0.1:1/x",
    "mysql+pymysql://root:Sup3rSecretPw@127.0.0.1:1/x",
])
@pytest.mark.parametrize("command", [["send-pending"], ["status", "--json"], ["db", "init"]])
def test_unreachable_database_exits_2_with_one_sentence(url: str, command: list[str]) -> None:
    result = run_cli(command, cli_env(url))
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("Error: Cannot use the database at ")
    assert "check DATABASE_URL" in lines[0]
    assert "Sup3rSecretPw" not in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_tables_exit_2_and_say_db_init(database_url: str) -> None:
    for command in (["send-pending"], ["status"], ["send-pending", "--dry-run"]):
        result = run_cli(command, cli_env(database_url))
        assert result.exit_code == 2, command
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "itsm-notify db init" in lines[0], result.stderr


def planned_rows(stdout: str) -> list[str]:
    """The rows of a non-terminal dry run, one per planned delivery, white space folded."""
    return [" ".join(row.split()) for row in re.split(r"\n(?=event=\d)", stdout.strip())]


def test_dry_run_without_a_terminal_prints_one_line_per_row(sqlite_url: str) -> None:
    engine = create_schema(sqlite_url)
    ids = seed_helpdesk(engine)
    add_event(engine, "ticket_created", ids["vpn"], ids["alice"], {})
    add_event(engine, "ticket_exploded", ids["vpn"], None, {})
    result = run_cli(["send-pending", "--dry-run"], cli_env(sqlite_url, **SETTINGS))
    engine.dispose()
    lines = result.stdout.splitlines()
    assert len(lines) == 7  # 3 emails, 3 in-app rows, 1 failure
    assert all(line.startswith("event=") for line in lines), result.stdout


def test_dry_run_shows_bracketed_ticket_text_as_typed(sqlite_url: str) -> None:
    engine = create_schema(sqlite_url)
    ids = seed_helpdesk(engine)
    ticket = add_ticket(engine, "TKT-009", "Printer [/oops] [bold]jam", ids["alice"],
                        assignee_id=ids["bob"])
    add_event(engine, "ticket_created", ticket, ids["alice"], {})
    engine.dispose()
    result = run_cli(["send-pending", "--dry-run"], cli_env(sqlite_url, **SETTINGS))
    assert result.exit_code == 0
    assert "New Ticket: Printer [/oops] [bold]jam (TKT-009)" in " ".join(result.stdout.split())


# ------------------------------------------------------------------- under cron


def _itsm_notify(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """The installed console script, as cron runs it: no TTY, plain environment."""
    script = Path(sys.executable).with_name("itsm-notify")
    return subprocess.run([str(script), *args], cwd=cwd, env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)


def test_under_cron_a_plain_log_line_then_silence(sqlite_url: str, smtp_sink: SmtpSink,
                                                  tmp_path: Path) -> None:
    engine = create_schema(sqlite_url)
    ids = seed_helpdesk(engine)
    add_event(engine, "ticket_assigned", ids["vpn"], ids["dave"], {"assignee_id": ids["frank"]})
    env = smtp_env(sqlite_url, smtp_sink, **SETTINGS)

    first = _itsm_notify(["send-pending"], env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout == ""
    [line] = first.stderr.splitlines()
    assert " INFO send-pending: 1 events: 1 done" in line and "\x1b[" not in line
    assert smtp_sink.wait_for(1)

    second = _itsm_notify(["send-pending"], env, tmp_path)
    assert (second.returncode, second.stdout, second.stderr) == (0, "", "")
    assert len(smtp_sink.messages) == 1
    engine.dispose()
