"""Prometheus metrics: the queue, the deliveries and the mailbox, from the database.

``load_snapshot`` reads the numbers in one short read; ``render_metrics`` turns them
into the text exposition (for ``itsm-notify metrics`` and node_exporter's textfile
collector); ``serve_metrics`` serves ``/metrics`` on 127.0.0.1 for the scheduler, a new
snapshot per scrape. All with the official client library, on a private registry (the
global one would also carry this process's own metrics, and a second registration of
the same names would fail).

Labels are bounded: a channel, a state, an outcome or a command, each from a known
list, anything else counted as ``other``; never an address or a ticket id.

The delivery counters are totals of the ``notification_deliveries`` rows in each final
state, so they grow with every delivery and survive restarts. Two things make them
drop, which Prometheus reads as a counter reset: ``purge`` deleting old rows, and
``requeue`` turning failed deliveries back into deferred ones.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, generate_latest, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import SQLAlchemyError

from ..errors import ConfigError, DatabaseUnavailable
from ..states import FINAL_DELIVERY_STATES, Channel, DeliveryState, EventState, InboundOutcome
from ..storage import schema
from .serving import ServedInThread

logger = logging.getLogger("itsm_notify.metrics")

OTHER = "other"
#: delivery channels with a label of their own
CHANNELS = tuple(Channel)
#: channels whose series are always present, zero until used, so ratios have a divisor
ALWAYS_SHOWN_CHANNELS = (Channel.EMAIL, Channel.IN_APP)
DELIVERY_OUTCOMES = tuple(sorted(FINAL_DELIVERY_STATES))  # failed, held, sent, skipped, suppressed
WAITING_DELIVERY_STATES = (DeliveryState.PENDING, DeliveryState.DEFERRED)
#: the outcomes an inbound message is recorded with (inbound_messages.outcome)
INBOUND_OUTCOMES = tuple(InboundOutcome)
#: the commands whose last run duration is shown
COMMANDS = ("send-pending", "overdue-scan", "fetch-mail", "due-soon-scan", "send-summaries")


@dataclass(frozen=True)
class MetricsSnapshot:
    """The numbers one exposition shows, as plain values."""

    #: outbox events by state
    outbox_events: Mapping[str, int]
    #: seconds since the oldest pending event was written (None: nothing pending)
    oldest_pending_age_seconds: float | None
    #: seconds the longest-waiting event that is due (not waiting for a retry) has
    #: waited to be claimed: it grows only when no sender is draining the queue
    oldest_due_wait_seconds: float | None
    #: delivery records by (channel, state), the whole table
    deliveries: Mapping[tuple[str, str], int]
    suppressed_addresses: int
    #: inbound messages by outcome
    inbound_messages: Mapping[str, int] = field(default_factory=dict)
    #: the last run's duration in seconds by command (known only to a long-lived process)
    run_seconds: Mapping[str, float] = field(default_factory=dict)


def load_snapshot(engine: Engine, now: datetime, *,
                  run_seconds: Mapping[str, float] | None = None) -> MetricsSnapshot:
    """Read the numbers from the database at ``now`` (naive UTC)."""
    outbox, deliveries = schema.outbox, schema.deliveries
    with engine.connect() as conn:
        events = {state: count for state, count in conn.execute(
            select(outbox.c.state, func.count()).group_by(outbox.c.state))}
        oldest_written = conn.execute(
            select(func.min(outbox.c.created_at))
            .where(outbox.c.state == EventState.PENDING)).scalar()
        oldest_due = conn.execute(
            select(func.min(outbox.c.available_at))
            .where(outbox.c.state == EventState.PENDING, outbox.c.available_at <= now)).scalar()
        by_channel = {(channel, state): count for channel, state, count in conn.execute(
            select(deliveries.c.channel, deliveries.c.state, func.count())
            .group_by(deliveries.c.channel, deliveries.c.state))}
        suppressed = conn.execute(
            select(func.count()).select_from(schema.suppressions)).scalar_one()
        messages = schema.inbound_messages
        inbound = {outcome: count for outcome, count in conn.execute(
            select(messages.c.outcome, func.count()).group_by(messages.c.outcome))}
    return MetricsSnapshot(
        outbox_events=events,
        oldest_pending_age_seconds=_age(now, oldest_written),
        oldest_due_wait_seconds=_age(now, oldest_due),
        deliveries=by_channel,
        suppressed_addresses=suppressed,
        inbound_messages=inbound,
        run_seconds=dict(run_seconds or {}),
    )


def _age(now: datetime, since: datetime | None) -> float | None:
    return None if since is None else max(0.0, (now - since).total_seconds())


# ----------------------------------------------------------------------- exposition


def render_metrics(snapshot: MetricsSnapshot) -> bytes:
    """The Prometheus text exposition of ``snapshot``."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(lambda: snapshot))
    return generate_latest(registry)


class _Collector:
    """A custom collector (the client library's way to expose numbers read from
    elsewhere): each collection asks ``snapshot_fn`` for a new snapshot."""

    def __init__(self, snapshot_fn: Callable[[], MetricsSnapshot]) -> None:
        self._snapshot_fn = snapshot_fn

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("itsm_notify_database_up",
                               "1 when the metrics could be read from the database, else 0.")
        try:
            snapshot = self._snapshot_fn()
        except (SQLAlchemyError, DatabaseUnavailable) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            logger.warning("Metrics could not be read from the database (%s): check "
                           "DATABASE_URL and that the server is running.", reason)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from _families(snapshot)


def _families(snapshot: MetricsSnapshot) -> Iterator[Metric]:
    events = GaugeMetricFamily("itsm_notify_outbox_events",
                               "Outbox events by state.", labels=["state"])
    for state, count in _folded(snapshot.outbox_events, tuple(EventState)):
        events.add_metric([state], count)
    yield events

    yield GaugeMetricFamily(
        "itsm_notify_outbox_oldest_pending_age_seconds",
        "Seconds since the oldest pending outbox event was written; 0 when none is pending.",
        value=snapshot.oldest_pending_age_seconds or 0.0)
    yield GaugeMetricFamily(
        "itsm_notify_outbox_oldest_due_wait_seconds",
        "Seconds the longest-waiting due outbox event (not one waiting for a retry) has "
        "waited to be claimed; 0 when none is waiting. Grows when no sender runs.",
        value=snapshot.oldest_due_wait_seconds or 0.0)

    by_channel: dict[str, dict[str, int]] = {}
    for (channel, state), count in snapshot.deliveries.items():
        states = by_channel.setdefault(_fold(channel, CHANNELS), {})
        states[state] = states.get(state, 0) + count
    for channel in ALWAYS_SHOWN_CHANNELS:
        by_channel.setdefault(channel, {})
    totals = CounterMetricFamily(
        "itsm_notify_deliveries",
        "Deliveries that ended, by channel and outcome, over the delivery records kept.",
        labels=["channel", "outcome"])
    waiting = GaugeMetricFamily(
        "itsm_notify_deliveries_waiting",
        "Deliveries not yet ended (planned, or deferred for a retry), by channel and state.",
        labels=["channel", "state"])
    for channel in sorted(by_channel):
        states = by_channel[channel]
        final = {state: count for state, count in states.items()
                 if state not in WAITING_DELIVERY_STATES}
        for outcome, count in _folded(final, DELIVERY_OUTCOMES):
            totals.add_metric([channel, outcome], count)
        for state in WAITING_DELIVERY_STATES:
            waiting.add_metric([channel, state], states.get(state, 0))
    yield totals
    yield waiting

    yield GaugeMetricFamily("itsm_notify_suppressed_addresses",
                            "Addresses on the suppression list (never emailed).",
                            value=snapshot.suppressed_addresses)

    inbound = CounterMetricFamily("itsm_notify_inbound_messages",
                                  "Inbound messages recorded, by outcome.",
                                  labels=["outcome"])
    for outcome, count in _folded(snapshot.inbound_messages, INBOUND_OUTCOMES):
        inbound.add_metric([outcome], count)
    yield inbound

    if snapshot.run_seconds:
        runs = GaugeMetricFamily("itsm_notify_last_run_duration_seconds",
                                 "How long the last run of each command took.",
                                 labels=["command"])
        durations: dict[str, float] = {}
        for command, seconds in snapshot.run_seconds.items():
            folded = _fold(command, COMMANDS)
            durations[folded] = max(durations.get(folded, 0.0), seconds)
        for command in sorted(durations):
            runs.add_metric([command], durations[command])
        yield runs


def _fold(value: str, known: Iterable[str]) -> str:
    return value if value in known else OTHER


def _folded(counts: Mapping[str, int], known: tuple[str, ...]) -> list[tuple[str, int]]:
    """``counts`` with unknown keys summed under ``other`` and every known key present
    (0 when absent), in a stable order."""
    folded: Counter[str] = Counter(dict.fromkeys(known, 0))
    for key, count in counts.items():
        folded[_fold(key, known)] += count
    order = {key: index for index, key in enumerate((*known, OTHER))}
    return sorted(folded.items(), key=lambda item: order[item[0]])


# ------------------------------------------------------------------------- serving


class MetricsServer(ServedInThread):
    """A running ``/metrics`` endpoint on the loopback interface; ``stop`` ends it."""

    @property
    def url(self) -> str:
        host = self._server.server_address[0]  # what the socket is bound to
        return f"http://{host!s}:{self.port}/metrics"


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a scrape in progress never holds up the process's exit


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes come every few seconds: no access log."""


def serve_metrics(port: int, snapshot_fn: Callable[[], MetricsSnapshot]) -> MetricsServer:
    """Serve ``/metrics`` on 127.0.0.1:``port`` (0: any free port) from a thread, a
    snapshot from ``snapshot_fn`` per scrape. A database that cannot be read shows as
    ``itsm_notify_database_up 0``, not as an error page."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snapshot_fn))
    metrics_app = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/metrics":
            result: Iterable[bytes] = metrics_app(environ, start_response)
            return result
        start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
        return [b"Not found: the metrics are at /metrics.\n"]

    try:
        server = make_server("127.0.0.1", port, app, server_class=_ThreadingServer,
                             handler_class=_QuietHandler)
    except OSError as exc:
        raise ConfigError(f"Cannot serve metrics on 127.0.0.1:{port} ({exc.strerror or exc}): "
                          "choose a free port with --metrics-port.") from None
    return MetricsServer(server, "itsm-notify-metrics")
