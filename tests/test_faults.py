"""Faults: SMTP deferrals and refusals, dropped connections, a server that is down, bad
events, rate ceilings, and a worker whose lease ran out. Nothing is lost, nothing is
sent twice, a bad event never blocks the good ones.

Each test runs ``send_pending`` in-process with a pinned clock where time matters,
against a real aiosmtpd server, on SQLite, PostgreSQL and MariaDB.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Engine

from contract_app import (
    add_event,
    create_schema,
    deliveries,
    outbox_rows,
    run_cli,
    seed_helpdesk,
    smtp_env,
    utcnow,
)
from delivery_support import ADMIN, duplicates, received, seed_bulk, start_workers
from itsm_notify.compose.render import message_id
from itsm_notify.config import Settings, load_settings
from itsm_notify.engine import sender
from itsm_notify.engine.sender import RunReport, send_pending
from itsm_notify.states import Channel
from itsm_notify.storage import database, schema
from itsm_notify.storage import outbox as outbox_queue
from itsm_notify.storage.deliveries import record_outcomes
from smtp_server import SmtpSink

ALICE, BOB, CAROL = "alice@example.com", "bob@example.com", "carol@example.com"


def settings_for(url: str, sink: SmtpSink, **extra: Any) -> Settings:
    return load_settings(environ=smtp_env(url, sink, **extra), dotenv_path=None)


def run_at(settings: Settings, engine: Engine, moment: datetime, **kwargs: Any) -> RunReport:
    return send_pending(settings, engine=engine, clock=lambda: moment, **kwargs)


def email_rows(engine: Engine, event_id: int) -> dict[str, dict[str, Any]]:
    """recipient → its email delivery row, for one event."""
    return {row["recipient"]: row for row in deliveries(engine)
            if row["event_id"] == event_id and row["channel"] == Channel.EMAIL}


def event_row(engine: Engine, event_id: int) -> dict[str, Any]:
    return next(row for row in outbox_rows(engine) if row["id"] == event_id)


def in_app_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(schema.app_notifications)
                            ).scalar_one()


@pytest.fixture
def desk(database_url: str) -> tuple[Engine, dict[str, int]]:
    """The small help desk of helpdesk.py; a new ticket on ``vpn`` mails alice (the
    requester), bob (the assignee) and carol (bob's team mate)."""
    engine = create_schema(database_url)
    return engine, seed_helpdesk(engine)


# ------------------------------------------------------------------ 4xx: deferred


def test_451_defers_one_recipient_and_the_retry_reuses_its_message_id(
        database_url: str, smtp_sink: SmtpSink, desk: tuple[Engine, dict[str, int]]) -> None:
    engine, ids = desk
    event = add_event(engine, "ticket_created", ids["vpn"], None, {})
    smtp_sink.refuse(CAROL, 451, "4.7.1 Greylisted, try again later", times=1)
    settings = settings_for(database_url, smtp_sink)
    t0 = utcnow()

    first = run_at(settings, engine, t0)
    assert first.exit_code == 1
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages) == [ALICE, BOB]
    carol = email_rows(engine, event)[CAROL]
    assert (carol["state"], carol["attempts"], carol["last_code"]) == ("deferred", 1, 451)
    row = event_row(engine, event)
    assert row["state"] == "pending"
    assert t0 + timedelta(seconds=29) <= row["available_at"] <= t0 + timedelta(seconds=61)
    assert row["available_at"] == carol["next_attempt_at"]
    assert "451" in row["last_error"]
    notifications = in_app_count(engine)

    # Not yet due: nothing happens.
    assert run_at(settings, engine, t0 + timedelta(seconds=10)).events_handled == 0
    # Due: only carol is retried, with the Message-ID her delivery was planned with.
    second = run_at(settings, engine, t0 + timedelta(hours=2))
    assert second.exit_code == 0
    counts = received(smtp_sink)
    assert duplicates(counts) == 0 and len(counts) == 3
    (retried,) = smtp_sink.messages_to(CAROL)
    assert retried.message["Message-ID"] == carol["message_id"] == \
        message_id(event, CAROL, "localhost")
    assert event_row(engine, event)["state"] == "done"
    assert {r["state"] for r in email_rows(engine, event).values()} == {"sent"}
    assert in_app_count(engine) == notifications  # in-app rows are written once


def test_exhausting_max_attempts_fails_the_delivery_and_the_event(
        database_url: str, smtp_sink: SmtpSink, desk: tuple[Engine, dict[str, int]]) -> None:
    engine, ids = desk
    event = add_event(engine, "ticket_created", ids["vpn"], None, {})
    smtp_sink.refuse(CAROL, 452, "4.2.2 Mailbox full")
    settings = settings_for(database_url, smtp_sink, ITSM_MAX_ATTEMPTS=3)
    t0 = utcnow()

    for hour in range(3):
        run_at(settings, engine, t0 + timedelta(hours=hour))
    carol = email_rows(engine, event)[CAROL]
    assert (carol["state"], carol["attempts"], carol["last_code"]) == ("failed", 3, 452)
    row = event_row(engine, event)
    assert row["state"] == "failed"
    assert CAROL in row["last_error"] and "gave up after 3 attempts" in row["last_error"]
    assert len(smtp_sink.messages_to(ALICE)) == len(smtp_sink.messages_to(BOB)) == 1
    # Failed is final: later runs leave it alone.
    assert run_at(settings, engine, t0 + timedelta(days=1)).events_handled == 0


def test_available_at_is_the_one_retry_clock(
        database_url: str, smtp_sink: SmtpSink, desk: tuple[Engine, dict[str, int]]) -> None:
    """A deferred event waits for its available_at; setting it to now (an operator, the
    app, or requeue --deferred) gets the retry now: no per-recipient clock overrides it,
    so the claim never ends with nothing sent."""
    engine, ids = desk
    event = add_event(engine, "ticket_created", ids["vpn"], None, {})
    smtp_sink.refuse(ALICE, 451, "4.7.1 try later", times=1)
    smtp_sink.refuse(CAROL, 451, "4.7.1 try later", times=1)
    settings = settings_for(database_url, smtp_sink)
    t0 = utcnow()
    first = run_at(settings, engine, t0)
    assert first.emails_deferred == 2
    row = event_row(engine, event)
    assert row["state"] == "pending" and row["available_at"] > t0

    early = run_at(settings, engine, t0 + timedelta(seconds=1))  # its backoff runs
    assert early.events_handled == 0 and smtp_sink.messages_to(ALICE) == []

    with engine.begin() as conn:  # an operator makes it due now
        conn.execute(sa.update(schema.outbox).where(schema.outbox.c.id == event)
                     .values(available_at=t0 + timedelta(seconds=2)))
    now = run_at(settings, engine, t0 + timedelta(seconds=2))
    assert now.emails_sent == 2 and now.exit_code == 0
    assert len(smtp_sink.messages_to(ALICE)) == len(smtp_sink.messages_to(CAROL)) == 1
    assert event_row(engine, event)["state"] == "done"
    assert duplicates(received(smtp_sink)) == 0


def test_requeue_deferred_makes_every_deferred_event_due_now(
        database_url: str, smtp_sink: SmtpSink, desk: tuple[Engine, dict[str, int]]) -> None:
    engine, ids = desk
    events = [add_event(engine, "ticket_created", ids["vpn"], None, {}) for _ in range(2)]
    smtp_sink.refuse(ALICE, 451, "4.7.1 try later", times=2)
    env = smtp_env(database_url, smtp_sink, ITSM_RETRY_BASE_SECONDS=3600)
    assert run_cli(["send-pending"], env).exit_code == 1
    assert run_cli(["send-pending"], env).output == ""  # waiting an hour: nothing due
    requeued = run_cli(["requeue", "--deferred", "--yes"], env)
    assert requeued.exit_code == 0 and "Requeued 2 events" in requeued.stderr
    assert run_cli(["send-pending"], env).exit_code == 0
    assert [event_row(engine, e)["state"] for e in events] == ["done", "done"]
    assert len(smtp_sink.messages_to(ALICE)) == 2


# ------------------------------------------------------------- 5xx: failed at once


def test_550_fails_one_recipient_suppresses_it_and_the_others_proceed(
        database_url: str, smtp_sink: SmtpSink, desk: tuple[Engine, dict[str, int]]) -> None:
    engine, ids = desk
    event = add_event(engine, "ticket_created", ids["vpn"], None, {})
    smtp_sink.refuse(CAROL, 550, "5.1.1 No such user", times=1)
    settings = settings_for(database_url, smtp_sink)

    report = send_pending(settings, engine=engine)
    assert report.exit_code == 1
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages) == [ALICE, BOB]
    row = event_row(engine, event)
    assert row["state"] == "failed"
    assert CAROL in row["last_error"] and "550" in row["last_error"]
    carol = email_rows(engine, event)[CAROL]
    assert (carol["state"], carol["attempts"], carol["last_code"]) == ("failed", 1, 550)
    with engine.connect() as conn:
        suppressed = conn.execute(sa.select(schema.suppressions)).all()
    assert [(s.address, s.code) for s in suppressed] == [(CAROL, 550)]

    # The next event to carol does not contact the server for her (the sink would now
    # accept her: the refusal was for one attempt only).
    later = add_event(engine, "status_changed", ids["vpn"], None,
                      {"old_status": "open", "new_status": "in_progress"})
    assert send_pending(settings, engine=engine).exit_code == 0
    assert smtp_sink.messages_to(CAROL) == []
    assert email_rows(engine, later)[CAROL]["state"] == "suppressed"
    assert event_row(engine, later)["state"] == "done"
    assert len(smtp_sink.messages_to(ALICE)) == 2


# ------------------------------------------------------------ connection failures


def test_connection_dropped_mid_batch_is_reopened_once(
        database_url: str, smtp_sink: SmtpSink) -> None:
    engine = create_schema(database_url)
    bulk = seed_bulk(engine, 6)
    smtp_sink.drop_after(4)
    settings = settings_for(database_url, smtp_sink, ADMINS=ADMIN, ITSM_SMTP_CONNECTIONS=1)

    report = send_pending(settings, engine=engine)
    assert report.exit_code == 0, report.summary()
    assert smtp_sink.drops == 1
    assert smtp_sink.connection_count == 2
    counts = received(smtp_sink)
    assert set(counts) == bulk.expected_emails and duplicates(counts) == 0
    assert {r["state"] for r in outbox_rows(engine)} == {"done"}


def test_server_down_defers_the_batch_exits_1_and_up_again_delivers_once(
        database_url: str, smtp_sink: SmtpSink) -> None:
    engine = create_schema(database_url)
    bulk = seed_bulk(engine, 6)
    env = smtp_env(database_url, smtp_sink, ADMINS=ADMIN, ITSM_BATCH_SIZE=2,
                   ITSM_RETRY_BASE_SECONDS=0.01, ITSM_MAX_ATTEMPTS=1)
    smtp_sink.stop()

    down = run_cli(["send-pending"], env=env)
    assert down.exit_code == 1
    assert "cannot reach the SMTP server" in down.stderr
    rows = outbox_rows(engine)
    assert {r["state"] for r in rows} == {"pending"}  # retryable, none failed
    # The run stopped after the first batch instead of walking the whole backlog.
    assert {r["event_id"] for r in deliveries(engine)} == {r["id"] for r in rows[:2]}
    # A message that never reached a server does not use up an attempt (max is 1 here).
    assert {(r["state"], r["attempts"]) for r in deliveries(engine)
            if r["channel"] == Channel.EMAIL} == {("deferred", 0)}

    smtp_sink.start()
    time.sleep(0.05)  # the backoff of 0.01 s runs out
    up = run_cli(["send-pending"], env=env)
    assert up.exit_code == 0, up.stderr
    counts = received(smtp_sink)
    assert set(counts) == bulk.expected_emails and duplicates(counts) == 0
    assert {r["state"] for r in outbox_rows(engine)} == {"done"}


# ------------------------------------------------------------------- bad events


def test_malformed_events_fail_alone_and_the_good_ones_are_delivered(
        database_url: str, smtp_sink: SmtpSink, desk: tuple[Engine, dict[str, int]]) -> None:
    engine, ids = desk
    good_first = add_event(engine, "ticket_created", ids["vpn"], None, {})
    bad = {
        add_event(engine, "comment_added", ids["vpn"], ids["bob"], "{not json"):
            "payload is not valid JSON",
        add_event(engine, "ticket_exploded", ids["vpn"], None, {}): "unknown event type",
        add_event(engine, "comment_added", ids["vpn"], ids["bob"], {"comment_id": 99999}):
            "comment 99999 does not exist",
        add_event(engine, "ticket_created", 99999, None, {}): "ticket 99999 does not exist",
        add_event(engine, "status_changed", ids["vpn"], None, json.dumps([1, 2])):
            "payload must be a JSON object",
    }
    good_last = add_event(engine, "ticket_assigned", ids["laptop"], ids["alice"],
                          {"assignee_id": ids["carol"]})
    settings = settings_for(database_url, smtp_sink)

    report = send_pending(settings, engine=engine)
    assert report.exit_code == 1
    assert (report.events_done, report.events_failed) == (2, len(bad))
    rows = {r["id"]: r for r in outbox_rows(engine)}
    assert rows[good_first]["state"] == rows[good_last]["state"] == "done"
    for event_id, reason in bad.items():
        assert rows[event_id]["state"] == "failed"
        assert reason in rows[event_id]["last_error"]
    assert len(smtp_sink.messages_to(ALICE)) == 1  # the new ticket
    assert len(smtp_sink.messages_to(CAROL)) == 2  # the new ticket and her assignment


# ------------------------------------------------------------------- rate ceiling


def test_rate_per_second_spaces_the_messages(sqlite_url: str, smtp_sink: SmtpSink) -> None:
    engine = create_schema(sqlite_url)
    bulk = seed_bulk(engine, 4)
    assert len(bulk.expected_emails) == 10
    settings = settings_for(sqlite_url, smtp_sink, ADMINS=ADMIN, ITSM_RATE_PER_SECOND=20)

    started = time.monotonic()
    report = send_pending(settings, engine=engine)
    elapsed = time.monotonic() - started
    assert report.emails_sent == 10
    assert elapsed >= 0.44  # nine gaps of 1/20 s
    accepted = sorted(m.received_at for m in smtp_sink.messages)
    assert accepted[-1] - accepted[0] >= 0.3  # spread out, not one burst after a wait


def test_rate_per_hour_caps_runs_and_the_rest_waits_without_using_attempts(
        database_url: str, smtp_sink: SmtpSink) -> None:
    engine = create_schema(database_url)
    bulk = seed_bulk(engine, 6)  # 15 emails
    settings = settings_for(database_url, smtp_sink, ADMINS=ADMIN, ITSM_RATE_PER_HOUR=4,
                            ITSM_BATCH_SIZE=2)  # the first batch holds 5 emails
    t0 = utcnow()

    run_at(settings, engine, t0)
    assert len(smtp_sink.messages) == 4
    rows = outbox_rows(engine)
    assert {r["state"] for r in rows} == {"done", "pending"}
    assert [r["attempts"] for r in rows if r["state"] == "pending"][-2:] == [0, 0]  # unclaimed
    waiting = [r for r in deliveries(engine) if r["channel"] == Channel.EMAIL
               and r["state"] != "sent"]
    assert waiting and {r["attempts"] for r in waiting} == {0}

    # Later in the same hour: the four already sent still count.
    assert run_at(settings, engine, t0 + timedelta(minutes=30)).events_handled == 0
    assert len(smtp_sink.messages) == 4
    # Hours later, four more per run, until all went out once.
    for hour in (2, 4, 6):
        run_at(settings, engine, t0 + timedelta(hours=hour))
    counts = received(smtp_sink)
    assert set(counts) == bulk.expected_emails and duplicates(counts) == 0
    assert {r["state"] for r in outbox_rows(engine)} == {"done"}
    assert {r["attempts"] for r in deliveries(engine) if r["channel"] == Channel.EMAIL} == {1}


# ---------------------------------------------------------- leases and takeovers


def test_a_live_worker_renews_its_lease_so_nobody_takes_its_batch(
        database_url: str, smtp_sink: SmtpSink, tmp_path: Path) -> None:
    engine = create_schema(database_url)
    bulk = seed_bulk(engine, 8)  # 20 emails in one batch
    env = smtp_env(database_url, smtp_sink, ADMINS=ADMIN, ITSM_SMTP_CONNECTIONS=1,
                   ITSM_LEASE_SECONDS=2)
    smtp_sink.latency = 0.15  # the batch takes about 3 s, longer than the lease
    (slow,) = start_workers(1, env, tmp_path)
    assert smtp_sink.wait_for(16, timeout=30)  # well past the first lease

    intruder = send_pending(load_settings(environ=env, dotenv_path=None), engine=engine)
    assert intruder.events_handled == 0
    slow.communicate(timeout=30)
    assert slow.returncode == 0
    counts = received(smtp_sink)
    assert set(counts) == bulk.expected_emails and duplicates(counts) == 0


def test_a_worker_whose_lease_ran_out_cannot_undo_the_new_owners_work(
        database_url: str, smtp_sink: SmtpSink, desk: tuple[Engine, dict[str, int]]) -> None:
    engine, ids = desk
    event = add_event(engine, "ticket_created", ids["vpn"], None, {})
    t0 = utcnow()
    with engine.connect() as conn:
        (claimed,) = outbox_queue.claim_events(conn, worker_id="stalled", limit=10, now=t0,
                                               lease=timedelta(seconds=1))
    assert claimed.id == event

    # The lease runs out; another worker takes the event over and delivers it.
    report = run_at(settings_for(database_url, smtp_sink), engine, t0 + timedelta(seconds=5))
    assert report.events_done == 1 and len(smtp_sink.messages) == 3

    # The stalled worker wakes up: its late answers and its verdict change nothing.
    late = {"event_id": event, "channel": "email", "recipient": CAROL, "state": "deferred",
            "attempts": 1, "last_code": 451, "last_error": "451 late", "next_attempt_at": t0,
            "provider_message_id": None, "sent_at": None, "updated_at": t0}
    record_outcomes(engine, [late], [], t0)
    changed = outbox_queue.finish_events(
        engine, [outbox_queue.EventOutcome(event, "pending", "late")], worker_id="stalled", now=t0)
    assert changed == 0
    assert email_rows(engine, event)[CAROL]["state"] == "sent"
    assert event_row(engine, event)["state"] == "done"


def test_many_rows_are_updated_in_one_statement_each_with_its_own_values(
        database_url: str) -> None:
    """database.RowUpdate: one statement per run (an executemany; on MariaDB, whose driver
    sends those a row at a time, one UPDATE joined to a derived table of the rows), each
    row its own values, NULLs kept, rows the condition excludes untouched; the same
    object again on other rows."""
    engine = create_schema(database_url)
    t0 = utcnow().replace(microsecond=123456)
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.deliveries), [
            {"event_id": event, "channel": "email", "recipient": f"u{event}@example.com",
             "state": "sent" if event == 3 else "pending", "attempts": 0}
            for event in (1, 2, 3, 4, 5)])
    statements: list[tuple[str, bool]] = []  # (statement, sent as an executemany)
    sa.event.listen(engine, "before_cursor_execute",
                    lambda *args: statements.append((args[2], args[5])))
    answers = [
        {"event_id": 1, "recipient": "u1@example.com", "state": "sent", "last_code": 250,
         "last_error": None, "sent_at": t0},
        {"event_id": 2, "recipient": "u2@example.com", "state": "deferred", "last_code": None,
         "last_error": "451 it's \"busy\"; try later", "sent_at": None},
        {"event_id": 3, "recipient": "u3@example.com", "state": "deferred", "last_code": 451,
         "last_error": "late", "sent_at": None},  # final already: the condition keeps it
        {"event_id": 9, "recipient": "nobody@example.com", "state": "sent", "last_code": 250,
         "last_error": None, "sent_at": t0},  # no such row
    ]
    update = database.RowUpdate(schema.deliveries, keys=["event_id", "recipient"],
                          columns=["state", "last_code", "last_error", "sent_at"],
                          where=[schema.deliveries.c.state == sa.bindparam("from_state")])
    with engine.begin() as conn:
        changed = update.run(conn, answers, from_state="pending")
    with engine.begin() as conn:
        again = update.run(conn, [{**answers[0], "event_id": 5, "recipient": "u5@example.com",
                                   "last_code": 251}], from_state="pending")
    assert (changed, again) == (2, 1)
    updates = [(s, many) for s, many in statements if s.lstrip().upper().startswith("UPDATE")]
    assert len(updates) == 2
    if engine.dialect.name in ("mysql", "mariadb"):  # PyMySQL sends an executemany row by row
        assert not any(many for _, many in updates)
    with engine.connect() as conn:
        rows = {r.event_id: r for r in conn.execute(sa.select(schema.deliveries))}
    assert (rows[1].state, rows[1].last_code, rows[1].last_error, rows[1].sent_at) == \
        ("sent", 250, None, t0)
    assert (rows[2].state, rows[2].last_code, rows[2].last_error, rows[2].sent_at) == \
        ("deferred", None, "451 it's \"busy\"; try later", None)
    assert (rows[3].state, rows[3].last_error) == ("sent", None)
    assert (rows[4].state, rows[4].last_code) == ("pending", None)
    assert (rows[5].state, rows[5].last_code, rows[5].sent_at) == ("sent", 251, t0)
    engine.dispose()


def test_a_plan_that_collides_with_another_workers_hands_the_events_back_unsent(
        database_url: str, smtp_sink: SmtpSink, desk: tuple[Engine, dict[str, int]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    engine, ids = desk
    event = add_event(engine, "ticket_created", ids["vpn"], None, {})
    smtp_sink.refuse(CAROL, 451, "4.7.1 try later", times=1)
    settings = settings_for(database_url, smtp_sink)
    t0 = utcnow()
    run_at(settings, engine, t0)
    assert len(smtp_sink.messages) == 2

    # A stale read: the delivery rows another worker wrote meanwhile are not seen, so
    # this worker's plan collides with them.
    monkeypatch.setattr(sender, "load_deliveries", lambda conn, event_ids: {})
    collided = run_at(settings, engine, t0 + timedelta(hours=2))
    assert (collided.events_retrying, collided.emails_sent) == (1, 0)
    row = event_row(engine, event)
    assert (row["state"], row["locked_by"]) == ("pending", None)  # not stuck in processing
    assert row["available_at"] > t0 + timedelta(hours=2)  # not at once: it would collide
    assert len(smtp_sink.messages) == 2

    monkeypatch.undo()
    assert run_at(settings, engine, t0 + timedelta(hours=3)).events_done == 1
    counts = received(smtp_sink)
    assert len(counts) == 3 and duplicates(counts) == 0
