"""Operations: ``status``, ``requeue``, ``suppression`` and the delivery log, through the
real command line against a real aiosmtpd server, on SQLite, PostgreSQL and MariaDB."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from contract_app import (
    add_event,
    cli_env,
    create_schema,
    deliveries,
    outbox_states,
    run_cli,
    seed_helpdesk,
    smtp_env,
    utcnow,
)
from itsm_notify.states import Channel
from itsm_notify.storage import schema
from smtp_server import SmtpSink

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"
PASSWORD = "s3cret-Pa55-do-not-log"
LOG_LINE = re.compile(r"event=(\d+) channel=email recipient=(\S+) outcome=(\w+) code=(\S+)")


def desk(database_url: str) -> tuple[Engine, dict[str, int]]:
    engine = create_schema(database_url)
    return engine, seed_helpdesk(engine)


def new_ticket_event(engine: Engine, ids: dict[str, int]) -> int:
    """A new ticket on ``vpn``: mails alice, bob and carol."""
    return add_event(engine, "ticket_created", ids["vpn"], None, {})


def email_states(engine: Engine, event_id: int) -> dict[str, tuple[str, int]]:
    return {r["recipient"]: (r["state"], r["attempts"]) for r in deliveries(engine)
            if r["event_id"] == event_id and r["channel"] == Channel.EMAIL}


# ------------------------------------------------------------------------- status


def test_status_counts_oldest_pending_age_and_failures_of_the_last_day(
        database_url: str, smtp_sink: SmtpSink) -> None:
    engine, ids = desk(database_url)
    env = smtp_env(database_url, smtp_sink)
    new_ticket_event(engine, ids)
    add_event(engine, "ticket_exploded", ids["vpn"], None, {})
    assert run_cli(["send-pending"], env).exit_code == 1  # one done, one failed
    old_failure = add_event(engine, "ticket_exploded", ids["vpn"], None, {})
    oldest = add_event(engine, "ticket_assigned", ids["laptop"], None, {"assignee_id": ids["bob"]})
    add_event(engine, "ticket_created", ids["laptop"], None, {})
    in_hand = add_event(engine, "ticket_created", ids["laptop"], None, {})
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(sa.update(schema.outbox).where(schema.outbox.c.id == old_failure).values(
            state="failed", processed_at=now - timedelta(days=2), last_error="old"))
        conn.execute(sa.update(schema.outbox).where(schema.outbox.c.id == oldest).values(
            created_at=now - timedelta(hours=1)))
        conn.execute(sa.update(schema.outbox).where(schema.outbox.c.id == in_hand).values(
            state="processing", locked_by="busy", locked_until=now + timedelta(minutes=5)))

    result = run_cli(["status", "--json"], cli_env(database_url))
    assert result.exit_code == 0, result.stderr
    status = json.loads(result.stdout)
    assert status["counts"] == {"pending": 2, "processing": 1, "done": 1, "failed": 2}
    assert 3600 <= status["oldest_pending_age_seconds"] < 3600 + 120
    assert status["failed_last_24h"] == 1

    table = run_cli(["status"], cli_env(database_url))
    assert table.exit_code == 0
    assert "oldest pending: 1.0 h" in table.stdout
    assert "failed in the last 24 h: 1 events" in table.stdout


# ------------------------------------------------------------------------ requeue


def test_requeue_asks_for_confirmation_and_refuses_without_a_terminal(
        sqlite_url: str) -> None:
    engine, ids = desk(sqlite_url)
    bad = add_event(engine, "ticket_exploded", ids["vpn"], None, {})
    env = cli_env(sqlite_url)
    assert run_cli(["send-pending"], env).exit_code == 1
    assert outbox_states(engine) == {bad: "failed"}

    for args in (["requeue", "--all"], ["requeue", str(bad)]):
        refused = run_cli(args, env)
        assert refused.exit_code == 2
        assert "--yes" in refused.stderr and "Traceback" not in refused.stderr
    nothing = run_cli(["requeue", "--yes"], env)
    assert nothing.exit_code == 2 and "--all" in nothing.stderr
    assert outbox_states(engine) == {bad: "failed"}


def test_requeue_by_id_then_all_retries_only_the_failed_recipients(
        database_url: str, smtp_sink: SmtpSink) -> None:
    engine, ids = desk(database_url)
    first = new_ticket_event(engine, ids)
    second = add_event(engine, "status_changed", ids["vpn"], None,
                       {"old_status": "open", "new_status": "in_progress"})
    smtp_sink.refuse(CAROL, 452, "4.2.2 Mailbox full")
    env = smtp_env(database_url, smtp_sink, ITSM_MAX_ATTEMPTS=1)
    assert run_cli(["send-pending"], env).exit_code == 1
    assert outbox_states(engine) == {first: "failed", second: "failed"}
    assert email_states(engine, first)[CAROL] == ("failed", 1)
    smtp_sink.accept(CAROL)  # the mailbox has room again

    by_id = run_cli(["requeue", str(first), "--yes"], env)
    assert by_id.exit_code == 0 and "Requeued 1 event." in by_id.stderr
    assert outbox_states(engine) == {first: "pending", second: "failed"}
    assert run_cli(["send-pending"], env).exit_code == 0
    assert [m.message["X-ITSM-Event"] for m in smtp_sink.messages_to(CAROL)] == \
        ["ticket_created"]
    assert email_states(engine, first) == {ALICE: ("sent", 1), BOB: ("sent", 1),
                                           CAROL: ("sent", 1)}

    everything = run_cli(["requeue", "--all", "--yes"], env)
    assert everything.exit_code == 0 and "Requeued 1 event." in everything.stderr
    assert run_cli(["send-pending"], env).exit_code == 0
    assert outbox_states(engine) == {first: "done", second: "done"}
    # alice and bob got each email once; carol got both on their retries.
    for address in (ALICE, BOB, CAROL):
        assert sorted(m.message["X-ITSM-Event"] for m in smtp_sink.messages_to(address)) \
            == ["status_changed", "ticket_created"], address


# -------------------------------------------------------------------- suppression


def test_suppression_add_list_remove(database_url: str, smtp_sink: SmtpSink) -> None:
    engine, ids = desk(database_url)
    env = smtp_env(database_url, smtp_sink)

    added = run_cli(["suppression", "add", "Carol@Example.COM", "--reason", "left the company"],
                    env)
    assert added.exit_code == 0 and "suppressed" in added.stderr
    again = run_cli(["suppression", "add", CAROL], env)
    assert again.exit_code == 0 and "already suppressed" in again.stderr
    listed = run_cli(["suppression", "list"], env)
    assert listed.exit_code == 0
    assert CAROL in listed.stdout and "left the company" in listed.stdout

    while_suppressed = new_ticket_event(engine, ids)
    assert run_cli(["send-pending"], env).exit_code == 0
    assert smtp_sink.messages_to(CAROL) == []
    assert email_states(engine, while_suppressed)[CAROL] == ("suppressed", 0)

    removed = run_cli(["suppression", "remove", CAROL], env)
    assert removed.exit_code == 0 and "removed" in removed.stderr
    assert CAROL not in run_cli(["suppression", "list"], env).stdout
    assert "was not on" in run_cli(["suppression", "remove", CAROL], env).stderr
    after = new_ticket_event(engine, ids)
    assert run_cli(["send-pending"], env).exit_code == 0
    assert len(smtp_sink.messages_to(CAROL)) == 1
    assert email_states(engine, after)[CAROL] == ("sent", 1)


def test_a_refused_address_comes_back_after_remove_and_requeue(
        database_url: str, smtp_sink: SmtpSink) -> None:
    engine, ids = desk(database_url)
    event = new_ticket_event(engine, ids)
    smtp_sink.refuse(CAROL, 550, "5.1.1 No such user", times=1)
    env = smtp_env(database_url, smtp_sink)
    assert run_cli(["send-pending"], env).exit_code == 1
    listed = run_cli(["suppression", "list"], env)
    assert CAROL in listed.stdout and "550" in listed.stdout

    assert run_cli(["suppression", "remove", CAROL], env).exit_code == 0
    assert run_cli(["requeue", "--all", "--yes"], env).exit_code == 0
    assert run_cli(["send-pending"], env).exit_code == 0
    assert outbox_states(engine) == {event: "done"}
    assert [len(smtp_sink.messages_to(a)) for a in (ALICE, BOB, CAROL)] == [1, 1, 1]


# ------------------------------------------------------------------- delivery log


@pytest.fixture
def auth_sink() -> SmtpSink:
    with SmtpSink(auth_credentials={"mailer": PASSWORD}, auth_require_tls=False) as sink:
        yield sink


def test_delivery_log_has_one_line_per_attempt_and_never_the_password(
        database_url: str, auth_sink: SmtpSink, tmp_path: Path) -> None:
    engine, ids = desk(database_url)
    event = new_ticket_event(engine, ids)
    auth_sink.refuse(CAROL, 451, "4.7.1 try later", times=1)
    auth_sink.refuse(BOB, 550, "5.1.1 No such user")
    log_file = tmp_path / "var" / "email.log"
    env = smtp_env(database_url, auth_sink, EMAIL_HOST_USER="mailer",
                   EMAIL_HOST_PASSWORD=PASSWORD, EMAIL_ALLOW_PLAINTEXT_AUTH="true",
                   ITSM_DELIVERY_LOG=log_file, ITSM_RETRY_BASE_SECONDS=0.01)

    outputs = []
    for _ in range(2):  # the 451 is retried at once (tiny backoff), in this run or the next
        result = run_cli(["send-pending"], env)
        outputs += [result.stdout, result.stderr]
    assert {m.auth_login for m in auth_sink.messages} == {"mailer"}
    assert outbox_states(engine) == {event: "failed"}  # bob's 550

    lines = log_file.read_text().splitlines()
    attempts = [LOG_LINE.search(line).groups() for line in lines]  # type: ignore[union-attr]
    assert sorted(attempts) == sorted([
        (str(event), ALICE, "sent", "250"), (str(event), BOB, "failed", "550"),
        (str(event), CAROL, "deferred", "451"), (str(event), CAROL, "sent", "250")])

    # A wrong password: the login is refused, the batch deferred, the password nowhere.
    auth_sink.reset()
    again = new_ticket_event(engine, ids)
    wrong = dict(env, EMAIL_HOST_PASSWORD=PASSWORD + "-wrong")
    refused = run_cli(["send-pending"], wrong)
    assert refused.exit_code == 2  # a configuration error
    assert "EMAIL_HOST_PASSWORD" in refused.stderr
    assert outbox_states(engine)[again] == "pending"
    outputs += [refused.stdout, refused.stderr]
    log_text = log_file.read_text()
    assert "535" in log_text
    for text in (log_text, *outputs):
        assert PASSWORD not in text
