"""Prometheus metrics: read from a real database (SQLite, PostgreSQL, MariaDB), parsed
with the Prometheus client's own parser, and served over HTTP on loopback."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine

from contract_app import add_event, create_schema, run_cli, seed_helpdesk
from itsm_notify.errors import ConfigError
from itsm_notify.ops.metrics import (
    MetricsSnapshot,
    load_snapshot,
    render_metrics,
    serve_metrics,
)
from itsm_notify.states import (
    FINAL_DELIVERY_STATES,
    Channel,
    DeliveryState,
    EventState,
    InboundOutcome,
)
from itsm_notify.storage import database, outbox, schema

NOW = datetime(2026, 5, 4, 12, 0)


def samples(exposition: bytes | str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, by name and sorted labels, via the client's parser."""
    text = exposition.decode() if isinstance(exposition, bytes) else exposition
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


def value(parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str,
          **labels: str) -> float:
    return parsed[(name, tuple(sorted(labels.items())))]


def add_outbox_row(engine: Engine, state: str, created_at: datetime,
                   available_at: datetime | None = None) -> int:
    with engine.begin() as conn:
        return int(conn.execute(sa.insert(schema.outbox).values(
            event_type="ticket_created", ticket_id=None, actor_id=None, payload="{}",
            state=state, created_at=created_at,
            available_at=available_at or created_at)).inserted_primary_key[0])


def add_delivery(engine: Engine, event_id: int, channel: str, recipient: str,
                 state: str) -> None:
    with engine.begin() as conn:
        conn.execute(sa.insert(schema.deliveries).values(
            event_id=event_id, channel=channel, recipient=recipient, state=state))


def delivery_counts(engine: Engine) -> Counter[tuple[str, str]]:
    with engine.connect() as conn:
        return Counter({(channel, state): count for channel, state, count in conn.execute(
            sa.select(schema.deliveries.c.channel, schema.deliveries.c.state, sa.func.count())
            .group_by(schema.deliveries.c.channel, schema.deliveries.c.state))})


def test_metrics_match_the_database(database_url: str, tmp_path: Path) -> None:
    engine = create_schema(database_url)
    try:
        ids = seed_helpdesk(engine)
        # real deliveries: send-pending writes them (file backend)
        add_event(engine, "ticket_created", ids["vpn"], ids["alice"], {})
        add_event(engine, "comment_added", ids["vpn"], ids["bob"], {"comment_id": ids["c_bob"]})
        result = run_cli(["send-pending"], {"DATABASE_URL": database_url,
                                            "EMAIL_BACKEND": "file",
                                            "EMAIL_FILE_PATH": str(tmp_path / "mail")})
        assert result.exit_code == 0, result.output
        # and the states a quiet run does not produce
        failed_event = add_outbox_row(engine, EventState.FAILED, NOW - timedelta(hours=3))
        add_delivery(engine, failed_event, Channel.EMAIL, "gone@example.com", EventState.FAILED)
        add_delivery(engine, failed_event, Channel.EMAIL, "later@example.com",
                     DeliveryState.DEFERRED)
        add_delivery(engine, failed_event, Channel.EMAIL, "bounced@example.com",
                     DeliveryState.SUPPRESSED)
        add_delivery(engine, failed_event, "carrier-pigeon", "coop-7", DeliveryState.SENT)
        # pending: one written 40 minutes ago and due since 30; one waiting for a retry
        add_outbox_row(engine, EventState.PENDING, NOW - timedelta(minutes=40),
                       NOW - timedelta(minutes=30))
        add_outbox_row(engine, EventState.PENDING, NOW - timedelta(minutes=90),
                       NOW + timedelta(minutes=10))
        add_outbox_row(engine, EventState.PROCESSING, NOW - timedelta(minutes=1))
        with engine.begin() as conn:
            conn.execute(sa.insert(schema.suppressions).values(address="bounced@example.com",
                                                           reason="550 no such user"))

        parsed = samples(render_metrics(load_snapshot(engine, NOW)))
        status = outbox.outbox_status(engine, now=NOW)  # what `status --json` reports

        assert value(parsed, "itsm_notify_database_up") == 1
        for state, count in status["counts"].items():
            assert value(parsed, "itsm_notify_outbox_events", state=state) == count
        assert status["counts"] == {"pending": 2, "processing": 1, "done": 2, "failed": 1}
        assert value(parsed, "itsm_notify_outbox_oldest_pending_age_seconds") == \
            status["oldest_pending_age_seconds"] == 90 * 60
        assert value(parsed, "itsm_notify_outbox_oldest_due_wait_seconds") == 30 * 60
        assert value(parsed, "itsm_notify_suppressed_addresses") == 1

        counts = delivery_counts(engine)
        assert counts[(Channel.EMAIL, DeliveryState.SENT)] >= 4
        assert counts[(Channel.IN_APP, DeliveryState.SENT)] >= 4
        for channel in (Channel.EMAIL, Channel.IN_APP):
            for outcome in FINAL_DELIVERY_STATES:
                assert value(parsed, "itsm_notify_deliveries_total", channel=channel,
                             outcome=outcome) == counts[(channel, outcome)]
            assert value(parsed, "itsm_notify_deliveries_waiting", channel=channel,
                         state=DeliveryState.DEFERRED) == counts[(channel, DeliveryState.DEFERRED)]
        assert value(parsed, "itsm_notify_deliveries_total", channel=Channel.EMAIL,
                     outcome=EventState.FAILED) == 1
        # an unknown channel is counted as "other"; no address or recipient is a label
        assert value(parsed, "itsm_notify_deliveries_total", channel="other", outcome="sent") == 1
        text = render_metrics(load_snapshot(engine, NOW)).decode()
        assert "example.com" not in text and "pigeon" not in text and "coop-7" not in text
        # no inbound mail yet: every outcome's series is there, at zero
        assert {dict(labels)["outcome"] for name, labels in parsed
                if name == "itsm_notify_inbound_messages_total"} == set(InboundOutcome)
        assert value(parsed, "itsm_notify_inbound_messages_total", outcome="comment") == 0
    finally:
        engine.dispose()


def test_inbound_messages_and_a_queue_waiting_for_a_retry(database_url: str) -> None:
    engine = create_schema(database_url)
    try:
        # the only pending event waits for its retry: old, but not stuck
        add_outbox_row(engine, EventState.PENDING, NOW - timedelta(minutes=90),
                       NOW + timedelta(minutes=10))
        with engine.begin() as conn:
            conn.execute(sa.insert(schema.inbound_messages), [
                {"message_key": f"{n:064x}", "received_at": NOW, "source": "stdin",
                 "size": 1, "outcome": outcome}
                for n, outcome in enumerate(("comment", "comment", "rejected", "novel"))])
        parsed = samples(render_metrics(load_snapshot(engine, NOW)))
        assert value(parsed, "itsm_notify_inbound_messages_total", outcome="comment") == 2
        assert value(parsed, "itsm_notify_inbound_messages_total", outcome="rejected") == 1
        assert value(parsed, "itsm_notify_inbound_messages_total", outcome="ignored") == 0
        assert value(parsed, "itsm_notify_inbound_messages_total", outcome="other") == 1
        assert value(parsed, "itsm_notify_outbox_oldest_pending_age_seconds") == 90 * 60
        assert value(parsed, "itsm_notify_outbox_oldest_due_wait_seconds") == 0
    finally:
        engine.dispose()


def test_labels_stay_bounded() -> None:
    """Thousands of channels, states and commands make a handful of series."""
    snapshot = MetricsSnapshot(
        outbox_events={"pending": 1, **{f"state-{n}": 1 for n in range(500)}},
        oldest_pending_age_seconds=5.0, oldest_due_wait_seconds=None,
        deliveries={(f"channel-{n}", f"state-{n}"): 1 for n in range(1000)}
        | {(Channel.EMAIL, DeliveryState.SENT): 7},
        suppressed_addresses=0,
        inbound_messages={f"outcome-{n}": 2 for n in range(100)},
        run_seconds={"send-pending": 1.5, **{f"cmd-{n}": float(n) for n in range(50)}})
    parsed = samples(render_metrics(snapshot))
    assert len(parsed) < 60
    assert value(parsed, "itsm_notify_outbox_events", state="other") == 500
    assert value(parsed, "itsm_notify_deliveries_total", channel="other", outcome="other") == 1000
    assert value(parsed, "itsm_notify_deliveries_total", channel="email", outcome="sent") == 7
    assert value(parsed, "itsm_notify_inbound_messages_total", outcome="other") == 200
    assert value(parsed, "itsm_notify_last_run_duration_seconds", command="send-pending") == 1.5
    assert value(parsed, "itsm_notify_last_run_duration_seconds", command="other") == 49


# ------------------------------------------------------------------------- serving


def fetch(url: str, method: str = "GET") -> tuple[int, str]:
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_serve_metrics_on_loopback(sqlite_url: str) -> None:
    engine = create_schema(sqlite_url)
    scrapes = []

    def snapshot() -> MetricsSnapshot:
        scrapes.append(1)
        return load_snapshot(engine, NOW, run_seconds={"send-pending": 0.25})

    try:
        with serve_metrics(0, snapshot) as server:
            assert server.url.startswith("http://127.0.0.1:")
            status, body = fetch(server.url)
            assert status == 200
            parsed = samples(body)
            assert value(parsed, "itsm_notify_outbox_events", state="pending") == 0
            assert value(parsed, "itsm_notify_last_run_duration_seconds",
                         command="send-pending") == 0.25
            add_outbox_row(engine, EventState.PENDING, NOW - timedelta(seconds=30))
            # a new snapshot per scrape
            assert value(samples(fetch(server.url)[1]), "itsm_notify_outbox_events",
                         state="pending") == 1
            assert len(scrapes) == 2
            assert fetch(server.url.replace("/metrics", "/"))[0] == 404
            assert fetch(server.url, method="POST")[0] == 405
            port = server.port
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=2):
            pass  # stopped: nothing listens any more
    finally:
        engine.dispose()


def test_an_unreadable_database_shows_as_down_not_as_an_error(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    engine = database.make_engine(f"sqlite:///{tmp_path}/no/such/folder/itsm.db")
    with serve_metrics(0, lambda: load_snapshot(engine, NOW)) as server:
        status, body = fetch(server.url)
    assert status == 200
    assert samples(body) == {("itsm_notify_database_up", ()): 0}
    assert "Metrics could not be read from the database" in caplog.text
    assert "Traceback" not in caplog.text


def test_a_port_in_use_is_one_sentence() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match=rf"^Cannot serve metrics on 127.0.0.1:{port} "
                                              r"\(.+\): choose a free port"):
            serve_metrics(port, lambda: pytest.fail("never scraped"))
