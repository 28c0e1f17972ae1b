"""Delivery frequencies per user, and the planning hook that holds an email for a user's
summary (engine/summaries.py has the whole story)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, and_, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ..compose.i18n import Language
from ..compose.render import Renderer, in_app_text
from ..config import Settings
from ..errors import ConfigError
from ..events.audience import EmailRecipient
from ..events.model import EventContext
from ..events.types import event_type
from ..states import Channel
from ..storage.database import among, in_lists
from ..storage.deliveries import load_opted_out
from ..storage.schema import schedules
from ..timing.business_hours import parse_time_zone
from ..timing.windows import Frequency, parse_frequency

log = logging.getLogger("itsm_notify")

DEFAULT_DAILY_HOUR = 8
SUMMARY_EVENT_TYPE = "summary"


@dataclass(frozen=True)
class Schedule:
    """A user's delivery frequency on one channel."""

    frequency: Frequency
    daily_hour: int = DEFAULT_DAILY_HOUR
    time_zone: str | None = None
    """An IANA name; None: ITSM_TIME_ZONE, else UTC."""


IMMEDIATE = Schedule(Frequency.IMMEDIATE)


def schedule_from_row(user_id: int, frequency: str | None, daily_hour: int | None,
                      time_zone: str | None) -> Schedule:
    """A row as the app may have written it: a frequency it cannot hold reads as
    immediate (with a warning), so nothing waits for a window that never closes."""
    if frequency is None:
        return IMMEDIATE
    try:
        parsed = parse_frequency(frequency)
    except ValueError as exc:
        log.warning("notification_schedules: user %s: %s; sending at once", user_id, exc)
        return IMMEDIATE
    hour = daily_hour if daily_hour is not None and 0 <= daily_hour <= 23 \
        else DEFAULT_DAILY_HOUR
    return Schedule(parsed, hour, (time_zone or "").strip() or None)


def load_schedules(conn: Connection, user_ids: Iterable[int],
                   channel: str = Channel.EMAIL) -> dict[int, Schedule]:
    """The schedules of ``user_ids`` on ``channel`` (users without a row are absent)."""
    found: dict[int, Schedule] = {}
    for ids in in_lists(user_ids):
        for row in conn.execute(select(schedules).where(
                schedules.c.channel == channel, among(conn, schedules.c.user_id, ids))):
            found[row.user_id] = schedule_from_row(row.user_id, row.frequency, row.daily_hour,
                                           row.time_zone)
    return found


def set_frequency(engine: Engine, user_id: int, frequency: Frequency, *, now: datetime,
                  daily_hour: int = DEFAULT_DAILY_HOUR, time_zone: str | None = None,
                  channel: str = Channel.EMAIL) -> None:
    """Set ``user_id``'s delivery frequency on ``channel`` (what the app may also write
    directly). ConfigError for an hour or a time zone that cannot be."""
    if not 0 <= daily_hour <= 23:
        raise ConfigError(f"The daily summary hour must be 0 to 23, got {daily_hour}: give "
                          "the hour of the user's day at which the summary goes out.")
    if time_zone:
        parse_time_zone(time_zone, "The schedule's time_zone")
    values = {"frequency": frequency.value, "daily_hour": daily_hour,
              "time_zone": time_zone or None, "updated_at": now}
    mine = and_(schedules.c.user_id == user_id, schedules.c.channel == channel)
    with engine.begin() as conn:
        if conn.execute(update(schedules).where(mine).values(values)).rowcount:
            return
        try:
            with conn.begin_nested():
                conn.execute(insert(schedules).values(user_id=user_id, channel=channel,
                                                      **values))
        except IntegrityError:  # written meanwhile by the app or another command
            conn.execute(update(schedules).where(mine).values(values))


# ------------------------------------------------------------------ holding


class SummaryHold:
    """send-pending's planning hook: which new email deliveries wait for a summary, and
    the item each becomes. Built per batch with the schedules of the users it mails."""

    def __init__(self, settings: Settings, schedules_by_user: Mapping[int, Schedule],
                 renderer: Renderer) -> None:
        self.schedules = schedules_by_user
        self.renderer = renderer
        self._texts: dict[tuple[int, Language], tuple[str, str, str]] = {}
        """An event's in-app text per language, made once for all its held readers."""
        self.bypass = {priority.lower() for priority in settings.summary_bypass_priorities}

    @classmethod
    def load(cls, conn: Connection, settings: Settings,
             recipients: Iterable[tuple[EventContext, Iterable[EmailRecipient]]],
             renderer: Renderer) -> SummaryHold:
        """The hold for a batch: one query for the schedules of the users its
        summarized events would mail (none when it has no such event), one more for
        those with a schedule who turned summary emails off (the unsubscribe link of a
        summary): they get each email at once, rather than nothing."""
        user_ids = {recipient.user_id for ctx, emails in recipients
                    if event_type(ctx.event.event_type).summarized
                    for recipient in emails if recipient.user_id is not None}
        if not user_ids:
            return cls(settings, {}, renderer)
        found = load_schedules(conn, user_ids)
        # no summaries for a user who unsubscribed from them: all at once
        for user_id in load_opted_out(conn, SUMMARY_EVENT_TYPE, found):
            found.pop(user_id, None)
        return cls(settings, found, renderer)

    def item(self, ctx: EventContext, recipient: EmailRecipient,
             now: datetime) -> dict[str, Any] | None:
        """The summary item this email becomes, or None when it is sent now."""
        schedule = self.schedules.get(recipient.user_id) if recipient.user_id else None
        if schedule is None or schedule.frequency is Frequency.IMMEDIATE:
            return None
        if not event_type(ctx.event.event_type).summarized:
            return None
        if ctx.comment is not None and ctx.comment.is_internal:
            return None  # never emailed, so never summarized either
        if {ctx.ticket.priority.strip().lower(), ctx.ticket.priority_label.strip().lower()} \
                & self.bypass:
            return None
        language = self.renderer.language_of(recipient)  # the summary's reader's
        key = (ctx.event.id, language)
        if key not in self._texts:
            self._texts[key] = in_app_text(ctx, self.renderer.subject(ctx, language),
                                           language)
        title, body, _ = self._texts[key]
        return {"user_id": recipient.user_id, "channel": Channel.EMAIL,
                "event_id": ctx.event.id, "ticket_id": ctx.ticket.id,
                "event_type": ctx.event.event_type, "title": title, "body": body,
                "event_at": ctx.event.created_at or now, "created_at": now,
                "summary_id": None}
