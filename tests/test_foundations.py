"""Foundations (issue 13): recipients that never depend on the batch, addresses Django
accepts, real data shapes, a crash counter, and faults injected at every stage.

On SQLite, PostgreSQL and MariaDB, against the real SMTP test server.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import Connection, Engine

from contract_app import (
    add_comment,
    add_event,
    add_ticket,
    add_user,
    app_notifications,
    cli_env,
    create_schema,
    deliveries,
    outbox_rows,
    run_cli,
    seed_helpdesk,
    smtp_env,
    utcnow,
)
from delivery_support import worker_env
from itsm_notify.channels.base import Outgoing
from itsm_notify.config import Settings, load_settings
from itsm_notify.engine import sender as sender_module
from itsm_notify.engine.sender import load_batch, send_pending
from itsm_notify.events.model import EventContext
from itsm_notify.events.types import EVENT_TYPES
from itsm_notify.source import load_source
from itsm_notify.storage import deliveries as delivery_store
from itsm_notify.storage import schema
from itsm_notify.storage.database import IDS_PER_LIST, in_lists, reads
from itsm_notify.storage.outbox import claim_events
from smtp_server import SmtpSink

ADMINS = "Ops <ops@example.com>, Root <root@localhost>"


def settings_for(url: str, sink: SmtpSink, **extra: Any) -> Settings:
    return load_settings(environ=smtp_env(url, sink, ADMINS=ADMINS, **extra), dotenv_path=None)


# -------------------------------------------- recipients never depend on the batch


def _one_event_of_each_type(engine: Engine, ids: dict[str, int]) -> dict[str, int]:
    """One outbox event of every type in EVENT_TYPES (the README's example included)."""
    ops = add_user(engine, "ops", "ops@example.com", first_name="Olga")  # an admin's account
    overdue = add_ticket(engine, "TKT-9", "Late", ids["alice"], assignee_id=ids["bob"],
                         due_at=utcnow() - timedelta(days=1))
    payloads: dict[str, tuple[int, int | None, dict[str, Any]]] = {
        "ticket_created": (ids["vpn"], ids["alice"], {}),
        "ticket_assigned": (ids["vpn"], ids["dave"], {"assignee_id": ids["carol"]}),
        "status_changed": (ids["vpn"], ids["bob"], {"old_status": "open", "new_status": "x"}),
        "comment_added": (ids["vpn"], ids["bob"], {"comment_id": ids["c_bob"]}),
        "overdue": (overdue, None, {"recipient": {"user_id": ops},
                                    "ticket_ids": [overdue], "total": 1}),
        "due_soon": (ids["vpn"], None, {"recipient": {"address": "ops@example.com"},
                                        "ticket_ids": [ids["vpn"]], "thresholds": ["4h"],
                                        "total": 1}),
        "summary": (ids["vpn"], None, {"recipient": {"user_id": ids["bob"]}, "kind": "daily",
                                       "items": [{"ticket_id": ids["vpn"], "text": "x",
                                                  "event_type": "status_changed",
                                                  "at": "2026-06-01T09:00:00"}], "total": 1}),
    }
    assert set(payloads) == set(EVENT_TYPES), "a new event type needs its case here"
    return {kind: add_event(engine, kind, ticket, actor, payload)
            for kind, (ticket, actor, payload) in payloads.items()}


def _recipients(engine: Engine, settings: Settings, event_ids: list[int]) -> dict[int, Any]:
    with engine.connect() as conn:
        events = claim_events(conn, worker_id="t", limit=100,
                              now=utcnow() + timedelta(seconds=1),
                              lease=timedelta(seconds=0))  # a lease of 0: free again at once
        chosen = [e for e in events if e.id in event_ids]
        with reads(conn):
            loaded = load_batch(load_source(settings), conn, chosen)
    result = {}
    for event, ctx in loaded:
        assert isinstance(ctx, EventContext), ctx
        recipients = load_source(settings).resolve(ctx)
        result[event.id] = (sorted(r.address for r in recipients.email),
                            sorted(recipients.in_app))
    return result


def test_an_events_recipients_never_depend_on_what_else_is_in_its_batch(
        database_url: str, smtp_sink: SmtpSink) -> None:
    """Measured bug of 0.1: an ADMINS address was mapped to its account only when a
    ticket_created was in the same batch. Every event type, alone and together."""
    engine = create_schema(database_url)
    ids = seed_helpdesk(engine)
    events = _one_event_of_each_type(engine, ids)
    settings = settings_for(database_url, smtp_sink)
    together = _recipients(engine, settings, list(events.values()))
    for kind, event_id in events.items():
        alone = _recipients(engine, settings, [event_id])
        assert alone == {event_id: together[event_id]}, kind
    # The admin with an account is that user (in-app too) in every batch.
    ops = next(u["id"] for u in _users(engine) if u["username"] == "ops")
    assert ops in together[events["ticket_created"]][1]
    assert together[events["overdue"]] == (["ops@example.com"], [])
    assert together[events["due_soon"]] == (["ops@example.com"], [])
    assert together[events["summary"]] == (["bob@example.com"], [])


def test_the_admins_account_is_theirs_in_every_batch_of_a_run(
        database_url: str, smtp_sink: SmtpSink) -> None:
    """The ADMINS' accounts are looked up once per run (finding users by address reads
    the whole users table): every batch still has them, one event per batch here."""
    engine = create_schema(database_url)
    ops = add_user(engine, "ops", "Ops@Example.com", first_name="Olga")
    alice = add_user(engine, "alice", "alice@example.com")
    for number in ("TKT-1", "TKT-2", "TKT-3"):
        add_event(engine, "ticket_created", add_ticket(engine, number, "VPN", alice), None, {})
    env = smtp_env(database_url, smtp_sink, ADMINS="Ops <ops@example.com>",
                   ITSM_BATCH_SIZE="1")
    result = run_cli(["send-pending"], env)
    assert result.exit_code == 0, result.stderr
    to_ops = [m for m in smtp_sink.messages if m.rcpt_tos[0].lower() == "ops@example.com"]
    assert len(to_ops) == 3
    assert all("Hi Olga," in m.message.get_body(preferencelist=("plain",)).get_content()
               for m in to_ops)  # greeted as the user
    assert sorted(n["ticket_id"] for n in app_notifications(engine)
                  if n["user_id"] == ops) == sorted(t for t in _ticket_ids(engine))


def test_ids_past_one_in_list_are_read_in_several(database_url: str) -> None:
    """Queries that take any number of ids read them IDS_PER_LIST at a time
    (``in_lists``): every list's rows come back, whatever the order and repeats."""
    engine = create_schema(database_url)
    count = 2 * IDS_PER_LIST + 1
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.preferences), [
            {"user_id": i, "event_type": "status_changed", "channel": "email",
             "enabled": i % 3 != 0, "updated_at": utcnow()} for i in range(1, count + 1)])
        wanted = [*range(count, 0, -1), 1, 2]
        assert [len(ids) for ids in in_lists(wanted)] == [IDS_PER_LIST, IDS_PER_LIST, 1]
        assert delivery_store.load_opted_out(conn, "status_changed", wanted) == \
            {i for i in range(1, count + 1) if i % 3 == 0}


def test_a_batchs_reads_share_one_transaction_that_outlives_a_failed_read(
        database_url: str) -> None:
    """``reads``: a batch's reads on one connection; a read that fails (aborting the
    transaction, on PostgreSQL) is rolled back and the next read works; a writer on
    another connection is not kept waiting meanwhile (SQLite: begun DEFERRED, not
    IMMEDIATE); nothing is left open on leaving."""
    engine = create_schema(database_url)
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.suppressions), [
            {"address": "gone@example.com", "reason": "bounced", "created_at": utcnow()}])

    def another_writer_gets_sqlites_lock() -> bool:
        writer = engine.raw_connection()
        try:
            writer.driver_connection.execute("PRAGMA busy_timeout = 200")
            writer.driver_connection.execute("BEGIN IMMEDIATE")
            writer.driver_connection.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError:  # database is locked
            return False
        finally:
            writer.close()

    with engine.connect() as conn:
        with reads(conn):
            assert delivery_store.suppressed_among(conn, ["Gone@example.com", "x@y.z"]) == \
                {"gone@example.com"}
            with pytest.raises(sa.exc.DBAPIError):
                conn.execute(sa.text("SELECT no_such_column FROM notification_outbox"))
            conn.rollback()
            assert delivery_store.load_deliveries(conn, [1, 2]) == {}
            if engine.dialect.name == "sqlite":
                assert another_writer_gets_sqlites_lock()
            else:  # the servers' readers never hold writers up
                with engine.begin() as other:
                    other.execute(sa.delete(schema.suppressions))
        assert not conn.in_transaction()
        with conn.begin():  # a write on the same connection afterwards: IMMEDIATE again
            if engine.dialect.name == "sqlite":
                assert not another_writer_gets_sqlites_lock()
            conn.execute(sa.delete(schema.suppressions))


def _ticket_ids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(sa.select(schema.tickets.c.id)).scalars())


def _users(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(sa.select(schema.users))]


# ------------------------------------------------------------- the address rule


def test_every_address_django_accepts_is_mailed_and_the_rest_is_counted(
        database_url: str, smtp_sink: SmtpSink, caplog: pytest.LogCaptureFixture) -> None:
    """Internal and special-use domains are addresses (help desks store what Django
    validated); only what is not an address at all is skipped, counted and logged."""
    engine = create_schema(database_url)
    internal = ["ops@corp.local", "desk@example.test", "it@helpdesk.home.arpa",
                "root@localhost"]
    requester = add_user(engine, "requester", internal[0])
    watchers = [add_user(engine, f"w{i}", address) for i, address in enumerate(internal[1:])]
    broken = add_user(engine, "broken", "not an address")
    ticket = add_ticket(engine, "TKT-1", "VPN", requester, assignee_id=broken)
    project = None
    with engine.begin() as conn:
        project = conn.execute(sa.insert(schema.projects).values(
            name="Ops", notify_team=True)).inserted_primary_key[0]
        conn.execute(sa.insert(schema.project_members),
                     [{"project_id": project, "user_id": w} for w in watchers])
        conn.execute(sa.update(schema.tickets).where(schema.tickets.c.id == ticket)
                     .values(project_id=project))
    add_event(engine, "ticket_created", ticket, None, {})
    env = smtp_env(database_url, smtp_sink, ADMINS="Root <root@localhost>")
    result = run_cli(["send-pending"], env)
    assert result.exit_code == 0, result.stderr
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages) == sorted(internal)
    skipped = [d for d in deliveries(engine) if d["state"] == "skipped"]
    assert [d["recipient"] for d in skipped] == ["not an address"]
    status = json.loads(run_cli(["status", "--json"], env).stdout)
    assert status["skipped_recipients_last_24h"] == 1
    assert "not an address is skipped" in caplog.text


def test_a_comment_with_no_author_is_delivered(database_url: str, smtp_sink: SmtpSink) -> None:
    """Email intake writes public comments with no author: the others are told; nobody
    is the actor."""
    engine = create_schema(database_url)
    ids = seed_helpdesk(engine)
    orphan = add_comment(engine, ids["vpn"], None, "Sent by email")  # type: ignore[arg-type]
    event = add_event(engine, "comment_added", ids["vpn"], None, {"comment_id": orphan})
    report = send_pending(settings_for(database_url, smtp_sink), engine=engine)
    assert report.events_failed == 0, report.summary()
    assert [r["state"] for r in outbox_rows(engine) if r["id"] == event] == ["done"]
    bodies = [m.message.get_body(preferencelist=("plain",)) for m in smtp_sink.messages]
    assert bodies and all("Someone" in b.get_content() for b in bodies if b is not None)


# --------------------------------------------------------- faults at every stage


@pytest.mark.parametrize("stage", ["load", "read", "plan", "render", "send", "record"])
def test_a_fault_at_any_stage_fails_that_event_alone(
        database_url: str, smtp_sink: SmtpSink, monkeypatch: pytest.MonkeyPatch,
        stage: str) -> None:
    """One event's bad data raising anywhere between claim and record: that event ends
    failed (or, at send, deferred) with a readable reason; its neighbours are sent in the
    same run. ``read``: the database refuses a statement of the event's reads, which on
    PostgreSQL aborts the batch's read transaction that its neighbours' reads share."""
    engine = create_schema(database_url)
    ids = seed_helpdesk(engine)
    events = [add_event(engine, "ticket_assigned", ids["vpn"], None,
                        {"assignee_id": ids[name]}) for name in ("bob", "carol", "erin")]
    poison = events[1]  # carol's
    boom = ValueError("injected fault")

    if stage == "load":
        from itsm_notify.source import Source
        real_load = Source.load_contexts

        def load(self: Source, conn: Connection, batch: Any) -> Any:
            if any(e.id == poison for e, _ in batch):
                raise boom
            return real_load(self, conn, batch)
        monkeypatch.setattr(Source, "load_contexts", load)
    elif stage == "read":
        from itsm_notify.source import Source
        real_load = Source.load_contexts

        def refused(self: Source, conn: Connection, batch: Any) -> Any:
            if any(e.id == poison for e, _ in batch):
                table = conn.dialect.identifier_preparer.quote("injected fault")
                conn.execute(sa.text(f"SELECT 1 FROM {table}"))  # no such table
            return real_load(self, conn, batch)
        monkeypatch.setattr(Source, "load_contexts", refused)
    elif stage == "plan":
        from itsm_notify.source import Source
        real_resolve = Source.resolve

        def plan(self: Source, ctx: EventContext) -> Any:
            if ctx.event.id == poison:
                raise boom
            return real_resolve(self, ctx)
        monkeypatch.setattr(Source, "resolve", plan)
    elif stage == "render":
        real_render = sender_module.Renderer.render_event

        def render(self: Any, ctx: EventContext, *args: Any, **kwargs: Any) -> Any:
            if ctx.event.id == poison:
                raise boom
            return real_render(self, ctx, *args, **kwargs)
        monkeypatch.setattr(sender_module.Renderer, "render_event", render)
    elif stage == "send":
        from itsm_notify.channels.smtp import SmtpSession
        real_send = SmtpSession.send

        def send(self: Any, out: Outgoing, delivery: Any) -> Any:
            if out.key[0] == poison:
                raise boom
            return real_send(self, out, delivery)
        monkeypatch.setattr(SmtpSession, "send", send)
    else:
        real_record = delivery_store.record_outcomes

        def record(engine: Engine, rows: Any, refused: Any, now: Any, **kwargs: Any) -> Any:
            if any(row["event_id"] == poison for row in rows):
                raise sa.exc.DataError("UPDATE", {}, ValueError("value out of range"))
            return real_record(engine, rows, refused, now, **kwargs)
        monkeypatch.setattr(sender_module, "record_outcomes", record)

    report = send_pending(settings_for(database_url, smtp_sink), engine=engine)
    states = {row["id"]: row for row in outbox_rows(engine)}
    assert [states[e]["state"] for e in (events[0], events[2])] == ["done", "done"]
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages
                  if m.rcpt_tos[0] != "carol@example.com") == \
        ["bob@example.com", "erin@example.com"]
    expected = "pending" if stage == "send" else "failed"  # a send fault is retried
    assert states[poison]["state"] == expected, states[poison]
    assert "injected fault" in states[poison]["last_error"] or \
        "could not be stored" in states[poison]["last_error"]
    assert report.events_handled == 3


# ------------------------------------------------------------- the crash counter

CRASHING_WORKER = textwrap.dedent("""
    import os, sys
    from itsm_notify.engine import sender
    real = sender.Renderer.render_event
    def render(self, ctx, *args, **kwargs):
        if ctx.event.id == int(os.environ["CRASH_ON"]):
            os._exit(9)  # the process dies with the event in hand
        return real(self, ctx, *args, **kwargs)
    sender.Renderer.render_event = render
    from itsm_notify.cli import main
    sys.argv = ["itsm-notify", "send-pending"]
    main()
""")


def test_an_event_that_crashes_its_worker_ends_failed_after_max_claims(
        database_url: str, smtp_sink: SmtpSink, tmp_path: Path) -> None:
    """A payload that takes the process down is claimed again once the lease runs out;
    after ITSM_MAX_CLAIMS claims that never finished it ends failed, and the queue goes
    on. The events claimed with it were not done either time: they are delivered once."""
    engine = create_schema(database_url)
    ids = seed_helpdesk(engine)
    events = [add_event(engine, "ticket_assigned", ids["vpn"], None,
                        {"assignee_id": ids[name]}) for name in ("bob", "carol", "erin")]
    env = worker_env(smtp_env(database_url, smtp_sink, ITSM_MAX_CLAIMS=2,
                              ITSM_LEASE_SECONDS=1, ITSM_BATCH_SIZE=1,
                              CRASH_ON=events[1]))
    codes = []
    for _ in range(4):
        run = subprocess.run([sys.executable, "-c", CRASHING_WORKER], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=60)
        assert "Traceback" not in run.stderr
        codes.append(run.returncode)
        time.sleep(1.1)  # the lease of the killed worker runs out
    assert codes[:2] == [9, 9]  # killed twice with the event in hand
    rows = {row["id"]: row for row in outbox_rows(engine)}
    assert rows[events[1]]["state"] == "failed"
    assert "claimed 2 times in a row and never finished" in rows[events[1]]["last_error"]
    assert [rows[e]["state"] for e in (events[0], events[2])] == ["done", "done"]
    assert sorted(m.rcpt_tos[0] for m in smtp_sink.messages) == \
        ["bob@example.com", "erin@example.com"]


def test_a_wrong_password_is_a_configuration_error_and_leaves_the_batch(
        database_url: str, tmp_path: Path, server_tls_context: Any,
        ca_bundle_path: Path) -> None:
    """Login refused at connect time: exit 2 with the fix, no retry used, the events
    still due."""
    with SmtpSink(auth_credentials={"mailer": "right"}, tls_context=server_tls_context,
                  require_starttls=True) as sink:
        engine = create_schema(database_url)
        ids = seed_helpdesk(engine)
        event = add_event(engine, "ticket_created", ids["vpn"], None, {})
        env = smtp_env(database_url, sink, EMAIL_HOST_USER="mailer", EMAIL_HOST_PASSWORD="no",
                       EMAIL_USE_TLS="true", EMAIL_SSL_CAFILE=str(ca_bundle_path))
        result = run_cli(["send-pending"], env)
    assert result.exit_code == 2
    assert "refused the login" in result.stderr and "EMAIL_HOST_PASSWORD" in result.stderr
    row = next(r for r in outbox_rows(engine) if r["id"] == event)
    assert row["state"] == "pending" and row["available_at"] <= utcnow()
    assert {d["attempts"] for d in deliveries(engine) if d["channel"] == "email"} == {0}


def test_a_tls_mismatch_is_a_configuration_error(database_url: str,
                                                 server_tls_context: Any) -> None:
    """EMAIL_USE_SSL against a STARTTLS port: the handshake fails; exit 2 naming the
    settings, not a retry every minute."""
    with SmtpSink(tls_context=server_tls_context) as sink:
        engine = create_schema(database_url)
        ids = seed_helpdesk(engine)
        add_event(engine, "ticket_created", ids["vpn"], None, {})
        result = run_cli(["send-pending"], smtp_env(database_url, sink, EMAIL_USE_SSL="true"))
    assert result.exit_code == 2, result.stderr
    assert "EMAIL_USE_SSL" in result.stderr and "Traceback" not in result.stderr


def test_status_json_has_the_contract_keys(database_url: str) -> None:
    create_schema(database_url)
    status = json.loads(run_cli(["status", "--json"], cli_env(database_url)).stdout)
    assert set(status["counts"]) == {"pending", "processing", "done", "failed"}
    assert {"oldest_pending_age_seconds", "failed_last_24h", "suppressed_addresses",
            "skipped_recipients_last_24h"} <= set(status)
