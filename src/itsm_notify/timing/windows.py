"""Delivery windows: when a user who asked for summaries gets the next one.

A user's frequency is ``immediate`` (no window: every notification at once),
``hourly`` or ``daily`` at an hour of their own time zone. Events for a user on a
schedule are collected; when the window they fell in has closed, one summary covers
them. Each window has a ``key``, a short string that is the same for everyone who
computes it, so a UNIQUE (user, channel, key) constraint lets exactly one of several
racing schedulers create the summary.

* Hourly windows are whole UTC hours. They partition time whatever the clocks do; in
  a zone offset by a half hour (India, Newfoundland) a summary comes at half past.
* Daily windows run from one local ``daily_hour:00`` to the next: 23 or 25 hours long
  across a change of the clocks. On the day the clocks skip that hour, the window turns
  at the moment of the change; on the day they repeat it, at its first showing.

Times: ``now`` is naive UTC or aware; a Window's instants are naive UTC, as stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from enum import StrEnum

from .wall_clock import as_utc, first_showing


class Frequency(StrEnum):
    IMMEDIATE = "immediate"
    HOURLY = "hourly"
    DAILY = "daily"


def parse_frequency(text: str) -> Frequency:
    """A frequency as a preference row or a setting holds it (case and spaces ignored)."""
    try:
        return Frequency(text.strip().lower())
    except ValueError:
        raise ValueError(f"the delivery frequency {text!r} is not one of immediate, hourly "
                         "or daily: choose one of them.") from None


@dataclass(frozen=True)
class Window:
    """[start_utc, end_utc) in naive UTC, and the key that names it in the database."""

    start_utc: datetime
    end_utc: datetime
    key: str


_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)


def current_window(frequency: Frequency, now: datetime, tz: tzinfo,
                   daily_hour: int = 8) -> Window:
    """The window of ``frequency`` that ``now`` lies in (``tz`` and ``daily_hour``
    matter for daily windows only)."""
    moment = as_utc(now)
    if frequency is Frequency.HOURLY:
        start = moment.replace(minute=0, second=0, microsecond=0)
        return _window(frequency, start, start + _HOUR)
    if frequency is Frequency.DAILY:
        if not 0 <= daily_hour <= 23:
            raise ValueError(f"a daily summary hour must be 0 to 23, got {daily_hour}")
        day = moment.astimezone(tz).date()
        # The turn of a local date is normally the window's start; step when the clocks
        # put the instant on the other side of it.
        while _daily_turn(day, daily_hour, tz) > moment:
            day -= _DAY
        while _daily_turn(day + _DAY, daily_hour, tz) <= moment:
            day += _DAY
        return _window(frequency, _daily_turn(day, daily_hour, tz),
                       _daily_turn(day + _DAY, daily_hour, tz))
    raise ValueError("immediate delivery has no window: send at once instead")


def closed_windows(frequency: Frequency, since: datetime, now: datetime, tz: tzinfo,
                   daily_hour: int = 8) -> list[Window]:
    """The windows of ``frequency`` that hold some instant from ``since`` on and have
    closed by ``now`` (end <= now), oldest first. ``since`` bounds the work: give the
    time of the oldest event still waiting for a summary."""
    windows = []
    window = current_window(frequency, since, tz, daily_hour)
    end = as_utc(now).replace(tzinfo=None)
    while window.end_utc <= end:
        windows.append(window)
        window = current_window(frequency, window.end_utc, tz, daily_hour)
    return windows


def _daily_turn(day: date, hour: int, tz: tzinfo) -> datetime:
    """The instant (aware UTC) the clock in ``tz`` first shows ``hour``:00 on ``day``."""
    return first_showing(datetime.combine(day, time(hour)), tz)


def _window(frequency: Frequency, start: datetime, end: datetime) -> Window:
    start_utc, end_utc = start.replace(tzinfo=None), end.replace(tzinfo=None)
    key = f"{frequency.value}:{start_utc:%Y%m%dT%H%M%S}Z/{end_utc:%Y%m%dT%H%M%S}Z"
    return Window(start_utc=start_utc, end_utc=end_utc, key=key)
