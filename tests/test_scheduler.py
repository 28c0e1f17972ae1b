"""``itsm-notify scheduler``: a real process, a real SMTP server, SIGTERM.

The cron line takes a leading seconds field (six fields), so the overdue scan can run
every second here instead of once a minute.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from contract_app import (
    add_event,
    add_ticket,
    add_user,
    create_schema,
    outbox_states,
    run_cli,
    smtp_env,
    utcnow,
)
from itsm_notify.errors import ConfigError
from itsm_notify.ops.scheduler import overdue_trigger
from smtp_server import SmtpSink
from tool_process import ToolProcess, wait_until


@pytest.fixture
def start_scheduler(tmp_path: Path) -> Iterator[Callable[[dict[str, str]], ToolProcess]]:
    started: list[ToolProcess] = []

    def start(env: dict[str, str]) -> ToolProcess:
        process = ToolProcess(["scheduler"], env, tmp_path)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()



def test_both_jobs_deliver_and_sigterm_exits_cleanly(
        sqlite_url: str, smtp_sink: SmtpSink,
        start_scheduler: Callable[[dict[str, str]], ToolProcess]) -> None:
    engine = create_schema(sqlite_url)
    alice, bob = add_user(engine, "alice"), add_user(engine, "bob")
    vpn = add_ticket(engine, "TKT-001", "VPN drops", alice, assignee_id=bob,
                     due_at=utcnow() + timedelta(days=2))
    add_ticket(engine, "TKT-002", "Printer jam", alice, assignee_id=bob,
               due_at=utcnow() - timedelta(days=3))
    add_event(engine, "ticket_assigned", vpn, alice, {"assignee_id": bob})
    process = start_scheduler(smtp_env(sqlite_url, smtp_sink, ITSM_SEND_INTERVAL_SECONDS=1,
                                       ITSM_OVERDUE_CRON="* * * * * *"))

    assert smtp_sink.wait_for(2, timeout=20), process.stderr
    assert sorted(m.subject or "" for m in smtp_sink.messages) == [
        "Overdue Ticket: Printer jam (TKT-002)", "Ticket Assigned: VPN drops (TKT-001)"]
    # send-pending keeps running: an event written now is delivered within seconds.
    add_event(engine, "status_changed", vpn, alice,
              {"old_status": "open", "new_status": "in_progress"})
    assert smtp_sink.wait_for(3, timeout=10), process.stderr
    # The overdue scan runs every second, yet the re-alert window holds: one digest.
    assert wait_until(lambda: process.stderr.count("overdue-scan: ") >= 3), process.stderr
    assert [m.subject for m in smtp_sink.messages].count(
        "Overdue Ticket: Printer jam (TKT-002)") == 1

    code, took = process.stop()

    assert code == 0
    assert took < 5
    log = process.stderr
    assert "Scheduled send-pending every 1 s; next run 20" in log
    assert "Scheduled overdue-scan on cron '* * * * * *'; next run 20" in log
    # Two events, delivered by one run or two (a run still draining takes the second);
    # the digest is an event too, sent by the scan or, should it claim it first, by a
    # send-pending run.
    done = [int(n) for n in re.findall(r"send-pending: \d+ events: (\d+) done", log)]
    assert sum(done) in (2, 3), log
    assert "overdue-scan: 1 overdue tickets; 1 digests" in log
    assert "scheduler stopped" in log
    assert "Traceback" not in log
    assert "apscheduler" not in log.lower()  # one line per run, ours
    assert set(outbox_states(engine).values()) == {"done"}
    assert len(smtp_sink.messages) == 3


def test_sigterm_finishes_the_batch_in_hand_then_exits(
        sqlite_url: str, smtp_sink: SmtpSink,
        start_scheduler: Callable[[dict[str, str]], ToolProcess]) -> None:
    engine = create_schema(sqlite_url)
    alice, bob = add_user(engine, "alice"), add_user(engine, "bob")
    vpn = add_ticket(engine, "TKT-001", "VPN drops", alice, assignee_id=bob)
    for _ in range(30):
        add_event(engine, "ticket_assigned", vpn, alice, {"assignee_id": bob})
    smtp_sink.latency = 0.15  # one batch of 5 takes ~0.75 s
    process = start_scheduler(smtp_env(sqlite_url, smtp_sink, ITSM_BATCH_SIZE=5,
                                       ITSM_SMTP_CONNECTIONS=1, ITSM_SEND_INTERVAL_SECONDS=60,
                                       ITSM_OVERDUE_CRON="0 0 1 1 *"))
    assert smtp_sink.wait_for(1, timeout=20), process.stderr

    code, took = process.stop()

    assert code == 0
    assert took < 5
    states = list(outbox_states(engine).values())
    done = states.count("done")
    assert "processing" not in states  # the batch in hand was finished and recorded
    assert 5 <= done < 30 and done % 5 == 0, states  # stopped between batches
    assert states.count("pending") == 30 - done
    assert len(smtp_sink.messages) == done  # every done event delivered, nothing more
    assert "send-pending: stopped after the batch in hand" in process.stderr


# ------------------------------------------------------------------ the cron line


def _next_fire(expression: str, after: datetime) -> datetime:
    trigger = overdue_trigger(expression)
    moment = after.replace(tzinfo=trigger.timezone)
    fire = trigger.get_next_fire_time(None, moment)
    assert fire is not None
    return fire.replace(tzinfo=None)


SUNDAY_NOON = datetime(2026, 3, 8, 12, 0, 1)  # just past noon: noon itself is gone


@pytest.mark.parametrize(("expression", "expected"), [
    ("0 * * * *", datetime(2026, 3, 8, 13, 0)),
    ("30 8 * * 1-5", datetime(2026, 3, 9, 8, 30)),    # crontab: Monday to Friday
    ("0 9 * * 6", datetime(2026, 3, 14, 9, 0)),       # Saturday
    ("0 13 * * 0", datetime(2026, 3, 8, 13, 0)),      # 0 is Sunday, as in crontab
    ("0 11 * * 7", datetime(2026, 3, 15, 11, 0)),     # so is 7
    ("0 9 * * */2", datetime(2026, 3, 10, 9, 0)),     # Sun, Tue, Thu, Sat
    ("0 9 * * mon-fri", datetime(2026, 3, 9, 9, 0)),
    ("*/10 * * * * *", datetime(2026, 3, 8, 12, 0, 10)),  # six fields: seconds first
])
def test_cron_lines_read_as_crontab_does(expression: str, expected: datetime) -> None:
    assert SUNDAY_NOON.weekday() == 6
    assert _next_fire(expression, SUNDAY_NOON) == expected


@pytest.mark.parametrize("expression", ["every hour", "61 * * * *", "* * *", "0 9 * * 8",
                                        "0 9 * * 5-2"])
def test_bad_cron_lines_are_config_errors(expression: str) -> None:
    with pytest.raises(ConfigError, match=r"ITSM_OVERDUE_CRON .* is not a valid cron expression"):
        overdue_trigger(expression)


@pytest.mark.parametrize(("setting", "value", "named"), [
    ("ITSM_OVERDUE_CRON", "every hour", "ITSM_OVERDUE_CRON"),
    ("ITSM_SEND_INTERVAL_SECONDS", "0", "ITSM_SEND_INTERVAL_SECONDS"),
])
def test_scheduler_refuses_bad_schedules(sqlite_url: str, setting: str, value: str,
                                         named: str) -> None:
    create_schema(sqlite_url)
    result = run_cli(["scheduler"], {"DATABASE_URL": sqlite_url, setting: value})
    assert result.exit_code == 2
    assert named in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
