"""Upgrades in place (issue 13): Alembic migrations of the tool's own tables.

A database made by release 0.1 (tests/legacy_schema.py, frozen from that release) with
data in every table is upgraded in place on SQLite, PostgreSQL and MariaDB: nothing is
lost, and what was pending is sent. Every command stops with exit 2 when the schema is
behind (run db upgrade) or ahead (a newer release made it), writing nothing. The
migrations build exactly the schema the code declares, and never touch an
application's own ``alembic_version``.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

import legacy_schema
from contract_app import cli_env, create_schema, run_cli, smtp_env, utcnow
from itsm_notify.storage import migrations, schema
from itsm_notify.storage.database import make_engine
from smtp_server import SmtpSink

NOW = utcnow()


def _legacy_database(url: str) -> sa.Engine:
    """A database as release 0.1's ``db init`` made it, with a help desk's history:
    pending events (one half delivered, one recipient deferred), finished ones with
    delivery records, a suppression, an opt-out, overdue history, in-app rows."""
    engine = make_engine(url)
    legacy_schema.metadata.create_all(engine)
    old = NOW - timedelta(days=2)
    with engine.begin() as conn:
        def insert(table: str, rows: list[dict[str, object]]) -> None:
            for row in rows:  # rows of different columns: one statement each
                conn.execute(sa.insert(legacy_schema.metadata.tables[table]).values(row))

        insert("users", [
            {"id": 1, "username": "alice", "email": "alice@example.com", "first_name": "Alice"},
            {"id": 2, "username": "bob", "email": "bob@example.com", "first_name": "Bob"},
            {"id": 3, "username": "carol", "email": "carol@example.com", "first_name": "Carol"},
            {"id": 4, "username": "dave", "email": "dave@example.com", "first_name": "Dave"}])
        insert("tickets", [
            {"id": 1, "number": "TKT-1", "title": "VPN", "requester_id": 1, "assignee_id": 2,
             "created_at": old, "due_at": old},
            {"id": 2, "number": "TKT-2", "title": "Laptop", "requester_id": 3,
             "assignee_id": 4, "created_at": old}])
        insert("comments", [{"id": 1, "ticket_id": 1, "author_id": 2, "body": "Log?",
                             "created_at": old}])
        insert("notification_outbox", [
            {"id": 1, "event_type": "ticket_created", "ticket_id": 1, "payload": "{}",
             "state": "done", "attempts": 1, "created_at": old, "available_at": old,
             "processed_at": old},
            {"id": 2, "event_type": "comment_added", "ticket_id": 1, "actor_id": 2,
             "payload": '{"comment_id": 1}', "state": "pending", "attempts": 1,
             "created_at": old, "available_at": old},
            {"id": 3, "event_type": "ticket_created", "ticket_id": 2, "payload": "{}",
             "created_at": old, "available_at": old},
            {"id": 4, "event_type": "status_changed", "ticket_id": 1, "actor_id": 4,
             "payload": '{"old_status": "open", "new_status": "waiting"}', "created_at": old,
             "available_at": old}])
        delivery = {"channel": "email", "created_at": old, "updated_at": old}
        insert("notification_deliveries", [
            {**delivery, "event_id": 1, "recipient": "alice@example.com", "user_id": 1,
             "state": "sent", "attempts": 1, "message_id": "<m1a@example.com>", "sent_at": old},
            {**delivery, "event_id": 1, "recipient": "bob@example.com", "user_id": 2,
             "state": "sent", "attempts": 1, "message_id": "<m1b@example.com>", "sent_at": old},
            {**delivery, "event_id": 2, "recipient": "alice@example.com", "user_id": 1,
             "state": "deferred", "attempts": 1, "last_code": 451, "last_error": "451 later",
             "message_id": "<itsm-notify.2.x@example.com>", "next_attempt_at": old}])
        insert("email_suppressions", [{"address": "carol@example.com", "reason": "550 gone",
                                       "code": 550, "created_at": old}])
        insert("notification_preferences", [{"user_id": 4, "event_type": "ticket_created",
                                             "channel": "email", "enabled": False,
                                             "updated_at": old}])
        insert("overdue_alerts", [{"ticket_id": 1, "recipient": "bob@example.com",
                                   "due_at": old, "alerted_at": old}])
        insert("app_notifications", [{"user_id": 1, "ticket_id": 1,
                                      "event_type": "ticket_created", "title": "New",
                                      "body": "b", "url": "/tickets/1/", "created_at": old}])
    return engine


def _counts(engine: sa.Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {name: conn.execute(sa.select(sa.func.count()).select_from(
            legacy_schema.metadata.tables[name])).scalar_one()
            for name in legacy_schema.metadata.tables}


def test_a_release_0_1_database_is_upgraded_in_place_and_sends_what_was_pending(
        database_url: str, smtp_sink: SmtpSink) -> None:
    engine = _legacy_database(database_url)
    before = _counts(engine)
    env = smtp_env(database_url, smtp_sink)

    behind = run_cli(["send-pending"], env)
    assert behind.exit_code == 2
    assert behind.stderr.count("\n") == 1 and "itsm-notify db upgrade" in behind.stderr
    assert smtp_sink.messages == []

    upgraded = run_cli(["db", "upgrade"], env)
    assert upgraded.exit_code == 0, upgraded.stderr
    assert migrations.schema_state(engine).current
    assert "inbound_messages" in upgraded.stderr  # 0003: the record of inbound mail
    assert _counts(engine) == before  # nothing lost
    again = run_cli(["db", "upgrade"], env)
    assert again.exit_code == 0 and migrations.schema_state(engine).current

    sent = run_cli(["send-pending"], env)
    assert sent.exit_code == 0, sent.stderr
    received = sorted((m.rcpt_tos[0], m.subject) for m in smtp_sink.messages)
    assert received == [
        ("alice@example.com", "New Comment on Ticket: VPN (TKT-1)"),  # the deferred one
        ("alice@example.com", "Ticket Status Changed: VPN → waiting"),
        ("bob@example.com", "Ticket Status Changed: VPN → waiting"),
        # TKT-2 was created by carol (suppressed) for dave (opted out of ticket_created)
    ]
    with engine.connect() as conn:
        states = dict(conn.execute(sa.select(schema.outbox.c.id, schema.outbox.c.state)).all())
        retried = conn.execute(sa.select(schema.deliveries.c.attempts).where(
            schema.deliveries.c.event_id == 2, schema.deliveries.c.channel == "email")).scalar_one()
    assert states == {1: "done", 2: "done", 3: "done", 4: "done"}
    assert retried == 2  # the earlier attempt counts


def test_a_schema_ahead_of_this_release_stops_every_command_and_writes_nothing(
        database_url: str) -> None:
    engine = create_schema(database_url)
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.outbox).values(event_type="ticket_created", ticket_id=1))
        conn.exec_driver_sql(f"UPDATE {migrations.VERSION_TABLE} SET version_num = '9999'")
    env = cli_env(database_url, EMAIL_BACKEND="file")
    for command in (["send-pending"], ["status"], ["overdue-scan"], ["requeue", "--all", "-y"],
                    ["db", "upgrade"]):
        result = run_cli(command, env)
        assert result.exit_code == 2, command
        assert "newer itsm-notify" in result.stderr and result.stderr.count("\n") == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(schema.outbox.c.state)).scalar_one() == "pending"
        assert conn.execute(sa.select(sa.func.count()).select_from(
            schema.deliveries)).scalar_one() == 0
    assert not Path("sent-emails").exists()


def test_the_migrations_build_exactly_the_declared_schema(database_url: str) -> None:
    engine = make_engine(database_url)
    migrations.upgrade(engine)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        differences = compare_metadata(context, schema.metadata)
    # The comparison sees the application's tables as absent: only the tool's count.
    assert [d for d in differences if d[0] != "remove_table"] == []


def test_the_revision_list_is_the_scripts_chain() -> None:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    scripts = ScriptDirectory.from_config(config)
    chain = [s.revision for s in reversed(list(scripts.walk_revisions()))]
    assert tuple(chain) == migrations.REVISIONS
    assert scripts.get_current_head() == migrations.HEAD


def test_an_applications_own_alembic_version_and_views_are_left_alone(
        database_url: str) -> None:
    """The app's alembic_version is never touched; tables it exposes as views are not
    created again by db init."""
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)")
        conn.exec_driver_sql("INSERT INTO alembic_version VALUES ('app_head_42')")
        conn.exec_driver_sql("CREATE TABLE auth_user (id INTEGER PRIMARY KEY, "
                             "username VARCHAR(150), email VARCHAR(254))")
        conn.exec_driver_sql(
            "CREATE VIEW users AS SELECT id, username, email, '' AS first_name, "
            "'' AS last_name, 1 AS is_active, 0 AS is_manager, NULL AS locale FROM auth_user")
    result = run_cli(["db", "init"], cli_env(database_url))
    assert result.exit_code == 0, result.stderr
    assert "users" not in result.stderr.split(":", 1)[1]
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT version_num FROM alembic_version").all() == \
            [("app_head_42",)]
        assert "users" in sa.inspect(conn).get_view_names()
    status = run_cli(["status", "--json"], cli_env(database_url))
    assert status.exit_code == 0, status.stderr
