"""Two schedulers and a cron run racing on the same summary windows, on PostgreSQL and
MariaDB: real ``itsm-notify`` processes, a real SMTP server, exactly one summary per
(user, window), made so by the database's UNIQUE constraint, not by luck.

The processes are made to race for real: the test holds an uncommitted summary row for
the first user's window, so all three block on it after reading the same waiting
users; once all three wait, the test rolls back and they go through the same users in
lockstep (novu #2569 and #1633 are this race, lost)."""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa

from contract_app import add_ticket, add_user, create_schema, smtp_env, utcnow
from itsm_notify.config import load_settings
from itsm_notify.engine.schedules import set_frequency
from itsm_notify.engine.sender import send_pending
from itsm_notify.storage import schema
from itsm_notify.timing.windows import Frequency, closed_windows
from smtp_server import SmtpSink
from tool_process import ToolProcess, wait_until

pytestmark = pytest.mark.slow

AGENTS = 20
RUN_LINE = re.compile(r"send-summaries: (\d+) users with updates waiting; (\d+) summaries "
                      r"\((\d+) updates\).*?; (\d+) made by another run")


@pytest.fixture
def processes() -> Iterator[Callable[[list[str], dict[str, str], Path], ToolProcess]]:
    started: list[ToolProcess] = []

    def start(args: list[str], env: dict[str, str], folder: Path) -> ToolProcess:
        started.append(ToolProcess(args, env, folder))
        return started[-1]

    yield start
    for process in started:
        process.close()



def blocked_inserts(engine: sa.Engine) -> int:
    """Sessions of this database waiting to insert a summary row."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            query = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                     "AND wait_event_type = 'Lock' "
                     "AND query LIKE 'INSERT INTO notification_summaries%%'")
        else:
            query = ("SELECT COUNT(*) FROM information_schema.PROCESSLIST "
                     "WHERE DB = DATABASE() AND STATE = 'Update' "
                     "AND INFO LIKE 'INSERT INTO notification_summaries%%'")
        return int(conn.exec_driver_sql(query).scalar_one())


def test_two_schedulers_and_a_cron_run_make_exactly_one_summary_per_window(
        database_url: str, smtp_sink: SmtpSink, tmp_path: Path,
        processes: Callable[[list[str], dict[str, str], Path], ToolProcess]) -> None:
    if database_url.startswith("sqlite"):
        pytest.skip("SQLite's writers take turns (BEGIN IMMEDIATE): the race is a server's")
    engine = create_schema(database_url)
    now = utcnow()
    if now.minute == 59 and now.second > 45:  # the window must not turn during the test
        time.sleep(16)
        now = utcnow()
    held_at = now - timedelta(hours=2)
    alice = add_user(engine, "alice", first_name="Alice")
    agents = [add_user(engine, f"agent{n}", first_name=f"Agent{n}") for n in range(AGENTS)]
    with engine.begin() as conn:
        for agent in agents:
            ticket = add_ticket(engine, f"TKT-{agent}", f"Ticket of agent {agent}", alice,
                                assignee_id=agent)
            conn.execute(sa.insert(schema.outbox), [
                {"event_type": "ticket_assigned", "ticket_id": ticket, "actor_id": alice,
                 "payload": f'{{"assignee_id": {agent}}}', "created_at": held_at,
                 "available_at": held_at},
                {"event_type": "status_changed", "ticket_id": ticket, "actor_id": alice,
                 "payload": '{"new_status": "waiting"}', "created_at": held_at,
                 "available_at": held_at}])
    for agent in agents:
        set_frequency(engine, agent, Frequency.HOURLY, now=held_at)
    env = smtp_env(database_url, smtp_sink, ITSM_SEND_INTERVAL_SECONDS=1,
                   ITSM_OVERDUE_CRON="0 0 1 1 *", ITSM_SMTP_CONNECTIONS=1)
    settings = load_settings(environ=env, dotenv_path=None)
    held = send_pending(settings, engine=engine, clock=lambda: held_at)
    assert (held.emails_held, smtp_sink.messages) == (2 * AGENTS, [])
    window = closed_windows(Frequency.HOURLY, held_at, now, ZoneInfo("UTC"))[-1]

    with engine.connect() as blocker:
        hold = blocker.begin()
        blocker.execute(sa.insert(schema.summaries).values(
            user_id=agents[0], channel="email", window_key=window.key, created_at=now))
        runs = [processes(["scheduler"], env, tmp_path / "scheduler-1"),
                processes(["scheduler"], env, tmp_path / "scheduler-2"),
                processes(["send-summaries"], env, tmp_path / "cron")]
        all_waiting = wait_until(lambda: blocked_inserts(engine) >= 3, timeout=30.0,
                                every=0.25)
        hold.rollback()
    assert all_waiting, [run.stderr for run in runs]

    assert smtp_sink.wait_for(AGENTS, timeout=30), [run.stderr for run in runs]
    cron = runs[2]
    assert cron.proc.wait(timeout=30) == 0, cron.stderr
    for scheduler in runs[:2]:
        assert wait_until(lambda s=scheduler: "send-summaries: " in s.stderr,
                          timeout=30.0), scheduler.stderr
        scheduler.proc.send_signal(signal.SIGTERM)
        assert scheduler.proc.wait(timeout=15) == 0, scheduler.stderr
    time.sleep(0.5)  # anything sent twice would have arrived by now

    logs = [run.stderr for run in runs]
    assert all("Traceback" not in log for log in logs), logs
    # A run that made nothing is silent (cron mails only news): the cron line may be.
    lines = [match for log in logs for match in RUN_LINE.finditer(log)]
    assert sum(int(m.group(2)) for m in lines) == AGENTS, logs
    # All three read the same 20 users before racing: each summary was tried by every
    # run, made by one, and found made by the others.
    assert sum(int(m.group(4)) for m in lines) >= AGENTS, logs

    received = Counter(m.rcpt_tos[0] for m in smtp_sink.messages)
    assert received == {f"agent{n}@example.com": 1 for n in range(AGENTS)}
    assert {m.subject for m in smtp_sink.messages} == {"Hourly summary: 2 updates on 1 ticket"}
    with engine.connect() as conn:
        summaries = conn.execute(sa.select(schema.summaries.c.user_id,
                                           schema.summaries.c.window_key,
                                           schema.summaries.c.item_count,
                                           schema.summaries.c.event_id)).all()
        open_items = conn.execute(sa.select(sa.func.count()).select_from(schema.summary_items)
                                  .where(schema.summary_items.c.summary_id.is_(None))
                                  ).scalar_one()
        states = Counter(conn.execute(sa.select(schema.outbox.c.state).where(
            schema.outbox.c.event_type == "summary")).scalars())
    assert sorted(s.user_id for s in summaries) == sorted(agents)
    assert {(s.window_key, s.item_count) for s in summaries} == {(window.key, 2)}
    assert all(s.event_id is not None for s in summaries)
    assert open_items == 0
    assert states == {"done": AGENTS}
