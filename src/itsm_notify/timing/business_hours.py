"""Business hours: a weekly schedule of open hours, holidays and a time zone.

A moment is *working time* when the calendar's local clock shows a time inside one of
the open hours of that local date's weekday, and the date is not a holiday. The
arithmetic works on the real instants those hours cover (``wall_clock`` says how a
wall-clock time becomes an instant on the days the clocks change), so "4 working hours
before due" is 4 hours of real time spent inside open hours, whatever the clocks did.

Open hours that cross midnight (``22:00-06:00``) are refused: a holiday closes a
calendar date, and a range across two dates would leave open which date's holiday
closes it. Write such hours as two ranges, ``fri 22:00-24:00; sat 00:00-06:00``.

Datetimes at the interface: a naive datetime is UTC (as the database stores it), an
aware one may be in any zone; every result is of the same kind as the argument it came
from (naive UTC in, naive UTC out; aware in, aware UTC out).

Configuration (strings as the settings hold them, see ``load_calendar``):
``ITSM_BUSINESS_HOURS="mon-thu 08:00-12:00,13:00-17:00; fri 08:00-14:00"``,
``ITSM_BUSINESS_TIME_ZONE`` (default ``ITSM_TIME_ZONE``, then UTC) and
``ITSM_HOLIDAYS`` (ISO dates separated by commas, or the path of a file of them). With
no business hours set, every moment is working time.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ConfigError
from .wall_clock import as_utc, first_showing, last_reaching, like

MINUTES_PER_DAY = 24 * 60
WEEKDAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_FULL_WEEKDAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday",
                       "sunday")

Span = tuple[datetime, datetime]  # [start, end) as aware UTC datetimes


@dataclass(frozen=True, order=True)
class OpenHours:
    """One range of open hours in a day: minutes after local midnight, ``end`` up to
    24:00 (1440) and after ``start``."""

    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start < self.end <= MINUTES_PER_DAY:
            raise ValueError(f"open hours must satisfy 00:00 <= start < end <= 24:00, "
                             f"got {self.start} and {self.end} minutes")

    def __str__(self) -> str:
        return f"{_hhmm(self.start)}-{_hhmm(self.end)}"


ROUND_THE_CLOCK = (OpenHours(0, MINUTES_PER_DAY),)


@dataclass(frozen=True)
class BusinessCalendar:
    """When work happens. ``week`` holds each weekday's open hours, Monday first,
    sorted and not overlapping; ``holidays`` are local dates on which nothing is open."""

    week: tuple[tuple[OpenHours, ...], ...]
    time_zone: ZoneInfo = field(default_factory=lambda: ZoneInfo("UTC"))
    holidays: frozenset[date] = frozenset()

    def __post_init__(self) -> None:
        if len(self.week) != 7:
            raise ValueError("a week has 7 days of open hours, Monday first")
        for hours in self.week:
            for earlier, later in pairwise(hours):
                if later.start < earlier.end:
                    raise ValueError(f"open hours {earlier} and {later} overlap or are "
                                     "out of order")
        if not any(self.week):
            raise ValueError("a business calendar needs some open hours")

    @property
    def always_open(self) -> bool:
        """True when every moment is working time (no business hours configured)."""
        return all(hours == ROUND_THE_CLOCK for hours in self.week) and not self.holidays

    def is_open(self, at: datetime) -> bool:
        """Whether ``at`` is working time."""
        if self.always_open:
            return True
        moment = as_utc(at)
        today = moment.astimezone(self.time_zone).date()
        return any(start <= moment < end
                   for day in (today - _DAY, today, today + _DAY)
                   for start, end in _open_spans(self, day))

    def working_time_between(self, a: datetime, b: datetime) -> timedelta:
        """The working time from ``a`` to ``b``; negative when ``b`` is before ``a``."""
        start, end = as_utc(a), as_utc(b)
        if end < start:
            return -self.working_time_between(b, a)
        if self.always_open:
            return end - start
        total = timedelta()
        for span_start, span_end in self._spans_forward(self._local_date(start) - _DAY):
            if span_start >= end:
                return total
            total += max(timedelta(), min(span_end, end) - max(span_start, start))
        raise AssertionError("unreachable: the spans go on forever")

    def subtract_working_time(self, moment: datetime, amount: timedelta) -> datetime:
        """The latest instant that lies ``amount`` of working time before ``moment``.

        "Latest" matters when that instant falls on the edge of closed time: 4 working
        hours before Monday 12:00 (open from 08:00) is Monday 08:00, not Friday 17:00.
        """
        if amount < timedelta():
            raise ValueError("the working time to subtract cannot be negative")
        end = as_utc(moment)
        if self.always_open or amount == timedelta():
            return like(end - amount, moment)
        remaining = amount
        for span_start, span_end in self._spans_backward(self._local_date(end) + _DAY):
            if span_start >= end:
                continue
            available = min(span_end, end) - span_start
            if available >= remaining:
                return like(min(span_end, end) - remaining, moment)
            remaining -= available
        raise AssertionError("unreachable: the spans go on forever")

    def next_open(self, at: datetime) -> datetime:
        """``at`` when it is working time, else the moment working time next begins."""
        moment = as_utc(at)
        if self.always_open:
            return like(moment, at)
        for span_start, span_end in self._spans_forward(self._local_date(moment) - _DAY):
            if span_end > moment:
                return like(max(span_start, moment), at)
        raise AssertionError("unreachable: the spans go on forever")

    # ----------------------------------------------------------------- the spans

    def _local_date(self, moment: datetime) -> date:
        return moment.astimezone(self.time_zone).date()

    def _spans_forward(self, day: date) -> Iterator[Span]:
        """The open spans of ``day`` and every later date, in order and disjoint: around
        a change of the clocks two may overlap, and the later one is cut to begin where
        the earlier ends."""
        covered_until: datetime | None = None
        while True:
            for start, end in _open_spans(self, day):
                if covered_until is not None:
                    start = max(start, covered_until)
                if start < end:
                    yield start, end
                    covered_until = end
            day += _DAY

    def _spans_backward(self, day: date) -> Iterator[Span]:
        """The open spans of ``day`` and every earlier date, latest first and disjoint."""
        covered_from: datetime | None = None
        while True:
            for start, end in reversed(_open_spans(self, day)):
                if covered_from is not None:
                    end = min(end, covered_from)
                if start < end:
                    yield start, end
                    covered_from = start
            day -= _DAY


_DAY = timedelta(days=1)

#: an always-open calendar: without business hours, time is plain wall-clock time
ALWAYS_OPEN = BusinessCalendar(week=(ROUND_THE_CLOCK,) * 7)


@lru_cache(maxsize=4096)
def _open_spans(calendar: BusinessCalendar, day: date) -> tuple[Span, ...]:
    """The instants ``day``'s open hours cover, as [start, end) spans in aware UTC."""
    if day in calendar.holidays:
        return ()
    midnight = datetime.combine(day, time())
    spans = []
    for hours in calendar.week[day.weekday()]:
        start = first_showing(midnight + timedelta(minutes=hours.start), calendar.time_zone)
        end = last_reaching(midnight + timedelta(minutes=hours.end), calendar.time_zone)
        if start < end:  # hours wholly inside a skipped hour cover no instant
            spans.append((start, end))
    return tuple(spans)


# --------------------------------------------------------------------- configuration

HOURS_SETTING = "ITSM_BUSINESS_HOURS"
TIME_ZONE_SETTING = "ITSM_BUSINESS_TIME_ZONE"
DEFAULT_TIME_ZONE_SETTING = "ITSM_TIME_ZONE"
HOLIDAYS_SETTING = "ITSM_HOLIDAYS"

_DAYS = re.compile(r"[A-Za-z][A-Za-z,\-\s]*", re.ASCII)
_FIRST_DIGIT = re.compile(r"[0-9]", re.ASCII)
_RANGE = re.compile(r"(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})", re.ASCII)
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)
_EXAMPLE = "e.g. 'mon-fri 08:00-17:00' or 'mon-thu 08:00-12:00,13:00-17:00; fri 08:00-14:00'"


def parse_week(text: str) -> tuple[tuple[OpenHours, ...], ...]:
    """The weekly schedule in ITSM_BUSINESS_HOURS: clauses separated by ``;``, each a
    set of days (``mon-fri``, ``sat``, ``mon,wed,fri``; ranges may wrap, ``fri-mon``)
    and comma-separated ``HH:MM-HH:MM`` ranges. Days not named are closed; a day named
    in two clauses gets the ranges of both."""
    days: list[list[OpenHours]] = [[] for _ in range(7)]
    for clause in (part.strip() for part in text.split(";")):
        if not clause:
            continue
        # the days, then from the first digit on the ranges (no regex backtracking)
        digit = _FIRST_DIGIT.search(clause)
        days_text, hours_text = (clause[:digit.start()], clause[digit.start():]) if digit \
            else (clause, "")
        if not hours_text or not days_text[-1:].isspace() or not _DAYS.fullmatch(days_text):
            raise ConfigError(f"{HOURS_SETTING} has {clause!r}, which is not days followed by "
                              f"HH:MM-HH:MM ranges: write it {_EXAMPLE}.")
        ranges = [_parse_range(item.strip()) for item in hours_text.split(",")]
        for weekday in _parse_days(days_text):
            days[weekday].extend(ranges)
    for weekday, hours in enumerate(days):
        hours.sort()
        for earlier, later in pairwise(hours):
            if later.start < earlier.end:
                raise ConfigError(f"{HOURS_SETTING} has overlapping hours on "
                                  f"{WEEKDAY_NAMES[weekday]} ({earlier} and {later}): "
                                  "join them into one range or make them meet end to start.")
    if not any(days):
        raise ConfigError(f"{HOURS_SETTING} opens no hours at all: give at least one range, "
                          f"{_EXAMPLE}, or leave it empty for round-the-clock time.")
    return tuple(tuple(hours) for hours in days)


def _parse_days(text: str) -> list[int]:
    weekdays: list[int] = []
    for item in (part.strip() for part in text.split(",")):
        first, dash, last = (end.strip() for end in item.partition("-"))
        start = _weekday(first)
        stop = _weekday(last) if dash else start
        weekdays.extend((start + offset) % 7 for offset in range((stop - start) % 7 + 1))
    return weekdays


def _weekday(name: str) -> int:
    lowered = name.lower()
    for names in (WEEKDAY_NAMES, _FULL_WEEKDAY_NAMES):
        if lowered in names:
            return names.index(lowered)
    raise ConfigError(f"{HOURS_SETTING} names an unknown day {name!r}: use mon, tue, wed, thu, "
                      "fri, sat or sun, or a range of them such as mon-fri.")


def _parse_range(text: str) -> OpenHours:
    match = _RANGE.fullmatch(text)
    if match is None:
        raise ConfigError(f"{HOURS_SETTING} has {text!r}, which is not a range HH:MM-HH:MM: "
                          f"write it {_EXAMPLE}.")
    start_hour, start_minute, end_hour, end_minute = (int(group) for group in match.groups())
    start, end = start_hour * 60 + start_minute, end_hour * 60 + end_minute
    if start_minute > 59 or end_minute > 59 or start >= MINUTES_PER_DAY \
            or end > MINUTES_PER_DAY:
        raise ConfigError(f"{HOURS_SETTING} has {text!r}, which is not a time of day: use "
                          "00:00 to 23:59 for a start and up to 24:00 for an end.")
    if end <= start:
        raise ConfigError(f"{HOURS_SETTING} has {text!r}, which ends before it starts (open "
                          "hours cannot cross midnight): split it at midnight, e.g. "
                          "'fri 22:00-24:00; sat 00:00-06:00'.")
    return OpenHours(start, end)


def parse_holidays(text: str, *, file: str | None = None) -> frozenset[date]:
    """Dates in ISO form, separated by commas or lines; ``#`` starts a comment, and
    anything after a date on its line (its name) is ignored. ``file`` names the file the
    text came from, for the error."""
    holidays = set()
    for line in text.splitlines():
        for item in line.partition("#")[0].split(","):
            words = item.split()
            if words:
                holidays.add(_parse_date(words[0], file))
    return frozenset(holidays)


def _parse_date(text: str, file: str | None) -> date:
    if _ISO_DATE.fullmatch(text):
        try:
            return date.fromisoformat(text)
        except ValueError:
            pass
    if file is None:
        raise ConfigError(f"{HOLIDAYS_SETTING} has {text!r}, which is not a date: write ISO "
                          "dates (YYYY-MM-DD) separated by commas, or the path of a file of "
                          "them (starting with ./ when its name starts with a digit).")
    raise ConfigError(f"The holidays file {file} ({HOLIDAYS_SETTING}) has {text!r}, which is "
                      "not a date: write one ISO date (YYYY-MM-DD) per line, a name after it "
                      "if you like, and # before a comment.")


def parse_time_zone(name: str, setting: str = TIME_ZONE_SETTING) -> ZoneInfo:
    """The IANA time zone ``name``; ``setting`` is named in the error."""
    try:
        return ZoneInfo(name.strip())
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError(f"{setting} names an unknown time zone {name!r}: use an IANA name "
                          "such as Europe/Berlin, America/New_York or UTC.") from None


def load_calendar(*, business_hours: str | None, time_zone: str | None = None,
                  default_time_zone: str | None = None,
                  holidays: str | None = None) -> BusinessCalendar:
    """The calendar the settings describe, or ALWAYS_OPEN when no hours are set.

    ``holidays`` that does not start with a digit is the path of a file of dates (read
    here). Errors are ConfigError, one sentence naming the setting and the fix."""
    if not (business_hours or "").strip():
        if (holidays or "").strip():
            raise ConfigError(f"{HOLIDAYS_SETTING} is set but {HOURS_SETTING} is not: set the "
                              f"business hours, {_EXAMPLE}, or remove {HOLIDAYS_SETTING}.")
        return ALWAYS_OPEN
    week = parse_week(business_hours or "")
    if (time_zone or "").strip():
        zone = parse_time_zone(time_zone or "", TIME_ZONE_SETTING)
    elif (default_time_zone or "").strip():
        zone = parse_time_zone(default_time_zone or "", DEFAULT_TIME_ZONE_SETTING)
    else:
        zone = ZoneInfo("UTC")
    return BusinessCalendar(week=week, time_zone=zone,
                            holidays=_load_holidays((holidays or "").strip()))


def _load_holidays(value: str) -> frozenset[date]:
    if not value or value[0] in "0123456789":
        return parse_holidays(value)
    path = Path(value).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(f"{HOLIDAYS_SETTING} names the file {value}, which cannot be read "
                          f"({reason}): give a readable text file with one ISO date per line, "
                          "or the dates themselves separated by commas.") from None
    return parse_holidays(text, file=value)


def _hhmm(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}"

