"""From a local wall-clock time to an instant, across daylight-saving changes.

A wall-clock time names zero instants (skipped when the clocks go forward), one, or
two (repeated when they go back). Schedules ask two questions of it, and each has one
answer in every case:

* when does the clock first show ``wall`` or later? (an opening, a window's start):
  a skipped time is the moment of the change; a repeated time is its first showing;
* when does the clock last run up to ``wall``? (a closing): a skipped time is the
  moment of the change; a repeated time is its second showing, unless the clocks were
  set back to exactly ``wall``, when the clock reached it from below only once.

So "08:00-17:00" is 9 hours on every day, and "00:00-24:00" is 23 or 25 hours on the
days of the changes: the time the clock really spends inside the interval.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, tzinfo

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_TICK = timedelta(microseconds=1)


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime; a naive one is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def like(instant: datetime, template: datetime) -> datetime:
    """The aware UTC ``instant`` as naive UTC when ``template`` is naive, else as is."""
    return instant.replace(tzinfo=None) if template.tzinfo is None else instant


def first_showing(wall: datetime, zone: tzinfo) -> datetime:
    """The first instant (aware UTC) at which the clock in ``zone`` shows the naive local
    time ``wall`` or later."""
    early, late = wall.replace(tzinfo=zone, fold=0), wall.replace(tzinfo=zone, fold=1)
    before, after = early.utcoffset(), late.utcoffset()
    if before is None or after is None or before >= after:  # unique, or repeated: first
        return early.astimezone(UTC)
    return _change_in_gap(wall, zone, before, after)


def last_reaching(wall: datetime, zone: tzinfo) -> datetime:
    """The last instant (aware UTC) at which the clock in ``zone`` runs up to the naive
    local time ``wall``: the end of the last stretch during which it shows less."""
    early, late = wall.replace(tzinfo=zone, fold=0), wall.replace(tzinfo=zone, fold=1)
    before, after = early.utcoffset(), late.utcoffset()
    if before is None or after is None or before == after:
        return early.astimezone(UTC)
    if before < after:  # skipped
        return _change_in_gap(wall, zone, before, after)
    second = late.astimezone(UTC)
    set_back_to_wall = (second - _TICK).astimezone(zone).utcoffset() == before
    return early.astimezone(UTC) if set_back_to_wall else second


def _change_in_gap(wall: datetime, zone: tzinfo, before: timedelta,
                   after: timedelta) -> datetime:
    """The instant the clocks went forward over the skipped local time ``wall``.

    It lies between ``wall`` read with the offset after the change and with the one
    before; zone changes fall on whole seconds (TZif stores them so), so a bisection on
    whole seconds finds it exactly."""
    low = math.floor(((wall - after).replace(tzinfo=UTC) - _EPOCH).total_seconds())
    high = math.ceil(((wall - before).replace(tzinfo=UTC) - _EPOCH).total_seconds())
    while high - low > 1:
        middle = (low + high) // 2
        if (_EPOCH + timedelta(seconds=middle)).astimezone(zone).utcoffset() == before:
            low = middle
        else:
            high = middle
    return _EPOCH + timedelta(seconds=high)
