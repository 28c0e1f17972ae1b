"""Metrics where operators read them: ``itsm-notify metrics`` (text for node_exporter's
textfile collector) and ``itsm-notify scheduler --metrics-port N`` (a real process,
scraped over HTTP while it sends, with the duration of each job's last run), parsed by
the Prometheus client's own parser and checked against the database."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from contract_app import add_event, cli_env, create_schema, run_cli, seed_helpdesk, smtp_env
from itsm_notify.storage import schema
from smtp_server import SmtpSink
from tool_process import wait_until

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def database_counts(engine: sa.Engine) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """Outbox events by state, and deliveries by (channel, state)."""
    with engine.connect() as conn:
        events = dict(conn.execute(sa.select(schema.outbox.c.state, sa.func.count())
                                   .group_by(schema.outbox.c.state)).all())
        deliveries = {(c, s): n for c, s, n in conn.execute(
            sa.select(schema.deliveries.c.channel, schema.deliveries.c.state, sa.func.count())
            .group_by(schema.deliveries.c.channel, schema.deliveries.c.state))}
    return events, deliveries


def assert_matches_database(parsed: Samples, engine: sa.Engine) -> None:
    events, deliveries = database_counts(engine)
    for state in ("pending", "processing", "done", "failed"):
        assert parsed[("itsm_notify_outbox_events", (("state", state),))] == \
            events.get(state, 0)
    for (channel, state), count in deliveries.items():
        assert parsed[("itsm_notify_deliveries_total",
                       (("channel", channel), ("outcome", state)))] == count


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])



def test_the_scheduler_serves_metrics_while_it_runs(sqlite_url: str, smtp_sink: SmtpSink,
                                                   tmp_path: Path) -> None:
    engine = create_schema(sqlite_url)
    ids = seed_helpdesk(engine)
    add_event(engine, "ticket_created", ids["vpn"], ids["alice"], {})
    port = free_port()
    stderr = tmp_path / "stderr.txt"
    env = {**os.environ, **smtp_env(sqlite_url, smtp_sink, ITSM_SEND_INTERVAL_SECONDS=1,
                                     ITSM_OVERDUE_CRON="0 0 1 1 *", ITSM_DUE_SOON="4h",
                                     ITSM_DUE_SOON_CRON="* * * * * *")}
    with stderr.open("wb") as errors:
        process = subprocess.Popen(
            [sys.executable, "-m", "itsm_notify", "scheduler", "--metrics-port", str(port)],
            env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=errors)
        try:
            url = f"http://127.0.0.1:{port}/metrics"
            assert wait_until(lambda: f"Serving metrics on {url}." in stderr.read_text(),
                              timeout=20.0), \
                stderr.read_text()
            assert smtp_sink.wait_for(2), stderr.read_text()  # bob and carol
            assert "Scheduled due-soon-scan on cron '* * * * * *'" in stderr.read_text()
            assert wait_until(lambda: all(f"{job}: " in stderr.read_text() for job in (
                "send-pending", "send-summaries", "due-soon-scan")), timeout=20.0), \
                stderr.read_text()
            with urllib.request.urlopen(url, timeout=10) as response:
                parsed = samples(response.read().decode())
            assert parsed[("itsm_notify_database_up", ())] == 1
            assert_matches_database(parsed, engine)
            assert parsed[("itsm_notify_deliveries_total",
                           (("channel", "email"), ("outcome", "sent")))] == 2
            durations = {labels[0][1]: value for (name, labels), value in parsed.items()
                         if name == "itsm_notify_last_run_duration_seconds"}
            assert set(durations) >= {"send-pending", "send-summaries", "due-soon-scan"}
            assert all(0 <= seconds < 30 for seconds in durations.values())

            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert "Traceback" not in stderr.read_text()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
        pass  # stopped with the scheduler


def test_the_metrics_command(database_url: str, tmp_path: Path) -> None:
    engine = create_schema(database_url)
    ids = seed_helpdesk(engine)
    add_event(engine, "comment_added", ids["vpn"], ids["bob"], {"comment_id": ids["c_bob"]})
    env = cli_env(database_url, EMAIL_BACKEND="file", EMAIL_FILE_PATH=str(tmp_path / "mail"))
    assert run_cli(["send-pending"], env).exit_code == 0
    add_event(engine, "ticket_created", ids["laptop"], ids["alice"], {})  # left pending

    result = run_cli(["metrics"], env)

    assert result.exit_code == 0, result.stderr
    assert result.stderr == ""
    parsed = samples(result.stdout)
    assert_matches_database(parsed, engine)
    assert parsed[("itsm_notify_outbox_events", (("state", "pending"),))] == 1
    assert "example.com" not in result.stdout  # no address is ever a label


def test_the_metrics_command_on_a_database_it_cannot_read(tmp_path: Path) -> None:
    result = run_cli(["metrics"], cli_env(f"sqlite:///{tmp_path}/no/such/folder/itsm.db"))
    assert result.exit_code == 2
    assert result.stdout == ""  # the textfile collector keeps the last good file
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_metrics_port_in_use_stops_the_scheduler_before_it_starts(sqlite_url: str) -> None:
    create_schema(sqlite_url)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(["scheduler", "--metrics-port", str(port)], cli_env(sqlite_url))
    assert result.exit_code == 2
    assert f"Cannot serve metrics on 127.0.0.1:{port}" in result.stderr
    assert "--metrics-port" in result.stderr and "Scheduled" not in result.stderr


def test_a_bad_due_soon_cron_line_stops_the_scheduler(sqlite_url: str) -> None:
    create_schema(sqlite_url)
    result = run_cli(["scheduler"], cli_env(sqlite_url, ITSM_DUE_SOON="4h",
                                            ITSM_DUE_SOON_CRON="every five minutes"))
    assert result.exit_code == 2
    assert "ITSM_DUE_SOON_CRON 'every five minutes' is not a valid cron" in result.stderr
