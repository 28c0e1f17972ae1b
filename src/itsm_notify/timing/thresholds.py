"""Due-soon thresholds: when a ticket's due date is near enough to warn its agent.

``ITSM_DUE_SOON="4h, 80%"`` holds two kinds of threshold:

* a lead time (``30m``, ``4h``, ``1d``, ``1h30m``): warn that long before the due date;
  with business hours it is working time (``1d`` is then refused: 24 working hours is
  not what anyone means by a day, so write the working hours, e.g. ``9h``);
* a share (``80%``): warn when that share of the (working) time from the ticket's
  creation to its due date has passed.

Each warning is identified by ``(threshold text, due date)``: the engine sends it at
most once per ticket under that key, and a due date that moves makes a new key, which
re-arms the warning. Outside business hours nothing is sent unless the ticket is
critical (``may_send_now``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol

from ..errors import ConfigError
from .business_hours import BusinessCalendar
from .wall_clock import as_utc

SETTING = "ITSM_DUE_SOON"

# Bounded (no lead time of centuries); the hours' seven digits hold the canonical
# spelling of the longest lead the three allow (99999d999999h99999999m is 5,066,641h).
_LEAD = re.compile(r"(?:(\d{1,5})d)?(?:(\d{1,7})h)?(?:(\d{1,8})m)?", re.ASCII)
_SHARE = re.compile(r"(\d+(?:\.\d+)?)\s*%", re.ASCII)


@dataclass(frozen=True)
class Threshold:
    """One due-soon threshold: exactly one of ``lead`` and ``share`` is set. ``text`` is
    its canonical spelling (``4h``, ``1h30m``, ``80%``), part of the warning's key."""

    text: str
    lead: timedelta | None = None
    share: Decimal | None = None  # in (0, 1)

    def __post_init__(self) -> None:
        if (self.lead is None) == (self.share is None):
            raise ValueError("a threshold is either a lead time or a share, not both or none")


@dataclass(frozen=True)
class ThresholdHit:
    """A threshold a ticket has crossed: since ``moment``, and until ``due_at``."""

    threshold: Threshold
    moment: datetime
    due_at: datetime

    @property
    def key(self) -> tuple[str, datetime]:
        """What the engine remembers a sent warning by: (threshold text, due date)."""
        return self.threshold.text, self.due_at


class HasDueDate(Protocol):
    """What a warning needs of a ticket (the engine's Ticket has both)."""

    @property
    def created_at(self) -> datetime | None: ...

    @property
    def due_at(self) -> datetime | None: ...


def parse_thresholds(text: str, *, business_hours: bool) -> tuple[Threshold, ...]:
    """The thresholds in ITSM_DUE_SOON (comma-separated), without duplicates, in the
    order given; an empty text means no due-soon warnings."""
    thresholds: dict[str, Threshold] = {}
    for item in (part.strip() for part in text.split(",")):
        if item:
            threshold = _parse_threshold(item, business_hours=business_hours)
            thresholds.setdefault(threshold.text, threshold)
    return tuple(thresholds.values())


def _parse_threshold(item: str, *, business_hours: bool) -> Threshold:
    compact = re.sub(r"\s+", "", item.lower())
    if share_match := _SHARE.fullmatch(compact):
        percent = Decimal(share_match[1])
        if not 0 < percent < 100:
            raise ConfigError(f"{SETTING} has {item!r}: a share must be more than 0% and less "
                              "than 100% of the time from creation to due, e.g. '80%'.")
        return Threshold(text=f"{percent.normalize():f}%", share=percent / 100)
    lead_match = _LEAD.fullmatch(compact)
    if lead_match is None or not any(lead_match.groups()):
        raise ConfigError(f"{SETTING} has {item!r}, which is neither a lead time nor a share: "
                          "write e.g. '4h, 80%' (a time in d, h and m before the due date, or "
                          "a percentage of the time from creation to due).")
    days, hours, minutes = (int(group or 0) for group in lead_match.groups())
    if days and business_hours:
        raise ConfigError(f"{SETTING} has {item!r}, but with business hours a lead time is "
                          "counted in working time and a day of it is ambiguous: write the "
                          "working hours instead, e.g. '9h'.")
    lead = timedelta(days=days, hours=hours, minutes=minutes)
    if not lead:
        raise ConfigError(f"{SETTING} has {item!r}, a lead time of nothing: give a time "
                          "before the due date, e.g. '4h' or '30m'.")
    return Threshold(text=_lead_text(lead), lead=lead)


def _lead_text(lead: timedelta) -> str:
    """The canonical spelling, in hours and minutes: 90m and 1h30m are the same
    threshold, and so are 1d and 24h."""
    hours, minutes = divmod(int(lead.total_seconds()) // 60, 60)
    return "".join(f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m")) if value)


def warning_moment(created_at: datetime | None, due_at: datetime, threshold: Threshold,
                   calendar: BusinessCalendar) -> datetime | None:
    """When ``threshold`` is crossed for a ticket created at ``created_at`` and due at
    ``due_at`` (same kind as ``due_at``: naive UTC or aware), or None when it cannot be
    (a share of a ticket whose creation time is unknown).

    A share's moment is the latest instant from which ``1 - share`` of the working
    time remains; a ticket with no working time before its due date (created after it,
    or on a closed weekend) reaches it only at the due date, when it is overdue instead.
    """
    if threshold.lead is not None:
        return calendar.subtract_working_time(due_at, threshold.lead)
    if created_at is None or threshold.share is None:
        return None
    total = max(timedelta(), calendar.working_time_between(created_at, due_at))
    remaining_microseconds = int(_microseconds(total) * (1 - threshold.share))
    return calendar.subtract_working_time(due_at, timedelta(microseconds=remaining_microseconds))


def _microseconds(amount: timedelta) -> int:
    return (amount.days * 86_400 + amount.seconds) * 1_000_000 + amount.microseconds


def due_warnings(ticket: HasDueDate, now: datetime, thresholds: tuple[Threshold, ...],
                 calendar: BusinessCalendar, *, critical: bool) -> list[ThresholdHit]:
    """The thresholds ``ticket`` has crossed by ``now`` while not yet due, earliest
    first, or none when a warning may not be sent now (outside business hours, for a
    ticket that is not critical). The engine drops those whose key it has already sent
    for this ticket; whether the ticket is open at all is the engine's check."""
    due_at = ticket.due_at
    if due_at is None or not may_send_now(now, calendar, critical=critical):
        return []
    instant = as_utc(now)
    if instant >= as_utc(due_at):
        return []
    hits = []
    for threshold in thresholds:
        moment = warning_moment(ticket.created_at, due_at, threshold, calendar)
        if moment is not None and as_utc(moment) <= instant:
            hits.append(ThresholdHit(threshold=threshold, moment=moment, due_at=due_at))
    return sorted(hits, key=lambda hit: as_utc(hit.moment))


def may_send_now(now: datetime, calendar: BusinessCalendar, *, critical: bool) -> bool:
    """Whether a due-soon warning may go out at ``now``: in working time, or for a
    critical ticket at any time."""
    return critical or calendar.is_open(now)
