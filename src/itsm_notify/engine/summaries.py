"""Summaries instead of one email per change: delivery frequencies, the events held for
them, and send-summaries.

A user's delivery frequency (``notification_schedules``, per channel; no row: immediate)
is ``immediate``, ``hourly`` or ``daily`` at an hour of their time zone; the windows and
their keys are timing/windows.py's.

* **Holding** (send-pending's planning calls ``SummaryHold``): an email to a user on
  hourly or daily is not sent. Its delivery row is written ``held`` (a final state: the
  event is done once its other deliveries are) and, in the same transaction, the event
  becomes an item of that user's next summary (``notification_summary_items``, UNIQUE
  (user, channel, event)) with the in-app text the user would have read. Never held:
  internal comments (never emailed at all), the tool's own digests and warnings (only
  event types marked ``summarized`` are), and tickets whose priority is in
  ``ITSM_SUMMARY_BYPASS_PRIORITIES`` (default critical).
* **Summarizing** (``send_summaries``, every minute from the scheduler or cron): each
  user with open items gets one summary for the newest window of their frequency that
  has closed since the oldest of those items was collected. The summary is a row of
  ``notification_summaries`` whose UNIQUE (user, channel, window key) lets exactly one
  of several racing runs (two schedulers and a cron line) make it; in the same
  transaction that run claims the user's open items collected before the window ended
  and writes one ``summary`` outbox event, which then goes the one delivery path.
* **Back to immediate**: what was collected goes out at the next run, as a summary keyed
  ``flush:<the newest item's id>`` (the same key for every run that sees those items).

An item collected after its window's summary was made (a clock behind, a sender slower
than the window) goes into the next summary: nothing is lost, nothing is sent twice. A
user who changes frequency, hour or zone mid-window gets the windows of the new
setting, whose keys differ from the old ones.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from zoneinfo import ZoneInfo

from sqlalchemy import Engine, and_, func, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, IntegrityError

from ..channels.base import Transport
from ..config import Settings
from ..events.types import MAX_LISTED
from ..states import Channel, EventState
from ..storage.database import (
    among,
    database_errors,
    describe_exception,
    make_engine,
    raise_if_database_down,
    utcnow,
)
from ..storage.schema import outbox, schedules, summaries, summary_items
from ..timing.business_hours import parse_time_zone
from ..timing.windows import Frequency, closed_windows
from .schedules import SUMMARY_EVENT_TYPE, Schedule, schedule_from_row
from .sender import RunReport, Sender

log = logging.getLogger("itsm_notify")

MAKE_ATTEMPTS = 3


# ------------------------------------------------------------------ planning


@dataclass(frozen=True)
class Waiting:
    """A user's open items on one channel, and their schedule."""

    user_id: int
    channel: str
    oldest: datetime
    """When the oldest open item was collected (naive UTC)."""
    newest_item: int
    items: int
    schedule: Schedule


@dataclass(frozen=True)
class DueSummary:
    """A summary to make now: its key, and the items it claims (collected before
    ``until``, or up to item ``up_to_item`` for a flush)."""

    user_id: int
    channel: str
    key: str
    kind: str
    until: datetime | None = None
    up_to_item: int | None = None


def zone_of(schedule: Schedule, default: tzinfo) -> tzinfo:
    """The schedule's time zone; ``default`` when it names none (or one that does not
    exist: the app may have written anything)."""
    if schedule.time_zone is None:
        return default
    try:
        return ZoneInfo(schedule.time_zone)
    except (ValueError, OSError):
        log.warning("notification_schedules names an unknown time zone %r; using %s",
                    schedule.time_zone, default)
        return default


def due_summaries(waiting: Iterable[Waiting], now: datetime,
                  default_zone: tzinfo) -> list[DueSummary]:
    """The summaries due at ``now`` (pure): for each user on hourly or daily, the newest
    window that has closed since their oldest open item, if any; for each user back on
    immediate, a flush of everything collected."""
    due = []
    for user in waiting:
        schedule = user.schedule
        if schedule.frequency is Frequency.IMMEDIATE:
            due.append(DueSummary(user.user_id, user.channel, f"flush:{user.newest_item}",
                                  "flush", up_to_item=user.newest_item))
            continue
        windows = closed_windows(schedule.frequency, user.oldest, now,
                                 zone_of(schedule, default_zone), schedule.daily_hour)
        if windows:
            window = windows[-1]
            due.append(DueSummary(user.user_id, user.channel, window.key,
                                  schedule.frequency.value, until=window.end_utc))
    return due


def load_waiting(conn: Connection) -> list[Waiting]:
    """Every user with open items, with their schedule (one query)."""
    items = summary_items
    query = (
        select(items.c.user_id, items.c.channel, func.min(items.c.created_at).label("oldest"),
               func.max(items.c.id).label("newest"), func.count().label("open_items"),
               schedules.c.frequency, schedules.c.daily_hour, schedules.c.time_zone)
        .select_from(items.outerjoin(schedules, and_(schedules.c.user_id == items.c.user_id,
                                                     schedules.c.channel == items.c.channel)))
        .where(items.c.summary_id.is_(None))
        .group_by(items.c.user_id, items.c.channel, schedules.c.frequency,
                  schedules.c.daily_hour, schedules.c.time_zone)
        .order_by(items.c.user_id, items.c.channel))
    return [Waiting(row.user_id, row.channel, _naive_utc(row.oldest), int(row.newest),
                    int(row.open_items), schedule_from_row(
                        row.user_id, row.frequency, row.daily_hour, row.time_zone))
            for row in conn.execute(query)]


def _naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None) if moment.tzinfo else moment


# ------------------------------------------------------------------ making one


def make_summary(engine: Engine, due: DueSummary, now: datetime) -> tuple[int, int] | None:
    """In one transaction: create the summary row (None when another run made it: the
    UNIQUE constraint decides), claim its items and write its ``summary`` outbox event.
    Returns (event id, items claimed), or None when there is nothing to send."""
    with engine.connect() as conn, conn.begin() as transaction:
        try:
            key = conn.execute(insert(summaries).values(
                user_id=due.user_id, channel=due.channel, window_key=due.key, item_count=0,
                created_at=now)).inserted_primary_key
        except IntegrityError:
            transaction.rollback()
            return None
        assert key is not None
        summary_id = int(key[0])
        unclaimed = and_(summary_items.c.user_id == due.user_id,
                         summary_items.c.channel == due.channel,
                         summary_items.c.summary_id.is_(None))
        span = summary_items.c.created_at < due.until if due.until is not None \
            else summary_items.c.id <= due.up_to_item
        claimed = conn.execute(update(summary_items).where(unclaimed, span)
                               .values(summary_id=summary_id)).rowcount or 0
        if not claimed:
            return None  # another run's later summary took them: this row stays empty
        listed = conn.execute(
            select(summary_items.c.ticket_id, summary_items.c.event_type,
                   summary_items.c.event_at, summary_items.c.body)
            .where(summary_items.c.summary_id == summary_id)
            .order_by(summary_items.c.event_at.desc(), summary_items.c.id.desc())
            .limit(MAX_LISTED)).all()
        payload = {"recipient": {"user_id": due.user_id}, "kind": due.kind, "total": claimed,
                   "items": [{"ticket_id": row.ticket_id, "event_type": row.event_type,
                              "at": _naive_utc(row.event_at).isoformat(), "text": row.body}
                             for row in listed]}
        event = conn.execute(insert(outbox).values(
            event_type=SUMMARY_EVENT_TYPE, ticket_id=listed[0].ticket_id, actor_id=None,
            payload=json.dumps(payload, ensure_ascii=False), created_at=now,
            available_at=now, state=EventState.PENDING, attempts=0)).inserted_primary_key
        assert event is not None
        event_id = int(event[0])
        conn.execute(update(summaries).where(summaries.c.id == summary_id)
                     .values(item_count=claimed, event_id=event_id))
        return event_id, claimed


# ------------------------------------------------------------------ the run


@dataclass
class SummaryReport:
    users_waiting: int = 0
    summaries_made: int = 0
    items_summarized: int = 0
    made_elsewhere: int = 0
    """Summaries due that another run (a scheduler, a cron line) made first."""
    problems: list[str] = field(default_factory=list)
    delivery: RunReport = field(default_factory=RunReport)

    @property
    def exit_code(self) -> int:
        return max(self.delivery.exit_code, 1 if self.problems else 0)

    def summary(self) -> str:
        return (f"{self.users_waiting} users with updates waiting; {self.summaries_made} "
                f"summaries ({self.items_summarized} updates): {self.delivery.emails_sent} "
                f"sent, {self.delivery.emails_deferred} deferred, {self.delivery.emails_failed}"
                f" failed; {self.made_elsewhere} made by another run")


def default_zone(settings: Settings) -> tzinfo:
    return parse_time_zone(settings.time_zone, "ITSM_TIME_ZONE") if settings.time_zone \
        else ZoneInfo("UTC")


class SummaryRun:
    """One run of send-summaries: make the summaries due, then send them."""

    def __init__(self, settings: Settings, engine: Engine, *, now: datetime,
                 transport: Transport | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.now = _naive_utc(now)
        self.transport = transport

    def run(self) -> SummaryReport:
        report = SummaryReport()
        with self.engine.connect() as conn:
            waiting = load_waiting(conn)
        report.users_waiting = len(waiting)
        ids = []
        for due in due_summaries(waiting, self.now, default_zone(self.settings)):
            try:
                made = self._make(due)
            except DBAPIError as exc:
                report.problems.append(f"the summary {due.key} of user {due.user_id} was left "
                                       f"for the next run ({describe_exception(exc)})")
                continue
            if made is None:
                report.made_elsewhere += 1
                continue
            ids.append(made[0])
            report.summaries_made += 1
            report.items_summarized += made[1]
        if ids:
            sender = Sender(self.settings, self.engine, transport=self.transport,
                            clock=lambda: self.now)
            report.delivery = sender.run(only=ids)
        return report

    def _make(self, due: DueSummary) -> tuple[int, int] | None:
        """``make_summary``, tried again after a deadlock: racing inserts of one key can
        deadlock on MariaDB, and the run chosen as the victim then finds the summary
        made by the other (or makes it). DBAPIError when it keeps failing."""
        attempt = 1
        while True:
            try:
                return make_summary(self.engine, due, self.now)
            except DBAPIError:
                raise_if_database_down(self.engine)
                if attempt == MAKE_ATTEMPTS:
                    raise
                attempt += 1


def send_summaries(settings: Settings, *, engine: Engine | None = None,
                   transport: Transport | None = None,
                   now: datetime | None = None) -> SummaryReport:
    """Make and send the summaries due at ``now`` (default: the current time)."""
    engine = engine or make_engine(settings.database_url)
    with database_errors(settings.database_url):
        return SummaryRun(settings, engine, now=now or utcnow(), transport=transport).run()


def open_items(conn: Connection, user_ids: Sequence[int],
               channel: str = Channel.EMAIL) -> dict[int, int]:
    """How many items wait for a summary, by user (for the preference command)."""
    return {row.user_id: int(row.waiting) for row in conn.execute(
        select(summary_items.c.user_id, func.count().label("waiting"))
        .where(summary_items.c.channel == channel, summary_items.c.summary_id.is_(None),
               among(conn, summary_items.c.user_id, list(user_ids)))
        .group_by(summary_items.c.user_id))}
