"""The idle run (issue 13): ``send-pending`` with nothing due answers from the driver
alone, and its answer is the full path's (a claim would take nothing), on SQLite,
PostgreSQL and MariaDB, whatever the outbox holds."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from contract_app import create_schema, utcnow
from itsm_notify.ops.idle import nothing_due
from itsm_notify.storage import migrations, schema
from itsm_notify.storage.outbox import peek_events

STATES = st.lists(st.tuples(st.sampled_from(["pending", "processing", "done", "failed"]),
                            st.integers(-3, 3), st.integers(-3, 3)), max_size=4)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=STATES)
def test_the_quick_answer_is_the_claims(database_url: str, rows: list[tuple[str, int, int]]
                                        ) -> None:
    """``nothing_due`` is True exactly when a claim now would take nothing."""
    engine = _engine(database_url)
    now = utcnow()
    with engine.begin() as conn:
        conn.execute(sa.delete(schema.outbox))
        for state, available, lease in rows:
            conn.execute(sa.insert(schema.outbox).values(
                event_type="ticket_created", ticket_id=1, state=state,
                available_at=now + timedelta(minutes=available),
                locked_until=now + timedelta(minutes=lease) if state == "processing" else None))
    assert nothing_due(database_url, now) == (peek_events(engine, limit=1, now=now) == [])


_ENGINES: dict[str, sa.Engine] = {}


def _engine(url: str) -> sa.Engine:
    if url not in _ENGINES:  # one schema per database for all the examples
        _ENGINES[url] = create_schema(url)
    return _ENGINES[url]


def test_a_schema_behind_or_a_bad_url_is_left_to_the_full_path(database_url: str) -> None:
    engine = create_schema(database_url)
    assert nothing_due(database_url)
    with engine.begin() as conn:
        conn.exec_driver_sql(f"UPDATE {migrations.VERSION_TABLE} SET version_num = '0001'")
    assert not nothing_due(database_url)  # the full path says: run db upgrade
    assert not nothing_due(database_url.replace("/test", "/no_such_database"))
    assert not nothing_due("sqlite:///no/such/file.db")
    assert not nothing_due("oracle://scott@tiger/db")


def test_an_idle_cron_run_imports_neither_sqlalchemy_nor_the_cli(tmp_path: Path,
                                                                 sqlite_url: str) -> None:
    create_schema(sqlite_url)
    probe = ("import sys; sys.argv = ['itsm-notify', 'send-pending']; "
             "from itsm_notify.entry import main; main(); "
             "print(sorted(m for m in ('sqlalchemy', 'typer', 'jinja2', 'itsm_notify.cli') "
             "if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ITSM_", "EMAIL_"))}
    run = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True,
                         text=True, env={**env, "DATABASE_URL": sqlite_url}, timeout=60)
    assert run.returncode == 0 and run.stderr == ""
    assert run.stdout.strip() == "[]"
