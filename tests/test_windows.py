"""Delivery windows for summaries: hourly and daily at a local hour, across the changes
of the clocks, with a key that names each window the same way for every scheduler."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from itsm_notify.timing.windows import (
    Frequency,
    Window,
    closed_windows,
    current_window,
    parse_frequency,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
H = timedelta(hours=1)


def utc(*args: int) -> datetime:
    return datetime(*args)


def test_parse_frequency() -> None:
    assert parse_frequency(" Daily ") is Frequency.DAILY
    assert parse_frequency("immediate") is Frequency.IMMEDIATE
    with pytest.raises(ValueError, match="'weekly' is not one of immediate, hourly or daily"):
        parse_frequency("weekly")


def test_hourly_windows_are_utc_hours() -> None:
    window = current_window(Frequency.HOURLY, utc(2026, 3, 29, 1, 59, 59), BERLIN)
    assert window == Window(utc(2026, 3, 29, 1), utc(2026, 3, 29, 2),
                            "hourly:20260329T010000Z/20260329T020000Z")
    # the same instant, aware and in another zone: the same window
    aware = datetime(2026, 3, 29, 3, 30, tzinfo=BERLIN)  # 01:30 UTC
    assert current_window(Frequency.HOURLY, aware, NEW_YORK) == window


def test_daily_windows_in_berlin_are_23_and_25_hours_around_the_changes() -> None:
    lengths = {}
    for now in (utc(2026, 3, 28, 12), utc(2026, 3, 29, 12), utc(2026, 10, 24, 12),
                utc(2026, 10, 25, 12)):
        window = current_window(Frequency.DAILY, now, BERLIN, 8)
        assert window.start_utc <= now < window.end_utc
        lengths[now.date().isoformat()] = window.end_utc - window.start_utc
    assert lengths == {"2026-03-28": 23 * H, "2026-03-29": 24 * H,
                       "2026-10-24": 25 * H, "2026-10-25": 24 * H}
    # Saturday 08:00 CET to Sunday 08:00 CEST
    assert current_window(Frequency.DAILY, utc(2026, 3, 28, 12), BERLIN, 8).key == \
        "daily:20260328T070000Z/20260329T060000Z"
    # before 08:00 local the window began yesterday morning
    early = current_window(Frequency.DAILY, utc(2026, 3, 30, 5, 59), BERLIN, 8)
    assert (early.start_utc, early.end_utc) == (utc(2026, 3, 29, 6), utc(2026, 3, 30, 6))


def test_a_daily_hour_the_clocks_skip_or_repeat() -> None:
    # 02:00 does not exist in Berlin on 29 March: the window turns when the clock jumps
    spring = current_window(Frequency.DAILY, utc(2026, 3, 29, 12), BERLIN, 2)
    assert (spring.start_utc, spring.end_utc) == (utc(2026, 3, 29, 1), utc(2026, 3, 30, 0))
    # 01:00 happens twice in New York on 1 November: the window turns at the first
    autumn = current_window(Frequency.DAILY, utc(2026, 11, 1, 5, 30), NEW_YORK, 1)
    assert (autumn.start_utc, autumn.end_utc) == (utc(2026, 11, 1, 5), utc(2026, 11, 2, 6))
    assert autumn.end_utc - autumn.start_utc == 25 * H


def test_closed_windows() -> None:
    since, now = utc(2026, 3, 27, 9), utc(2026, 3, 30, 6)
    windows = closed_windows(Frequency.DAILY, since, now, BERLIN, 8)
    assert [(w.start_utc, w.end_utc) for w in windows] == [
        (utc(2026, 3, 27, 7), utc(2026, 3, 28, 7)),
        (utc(2026, 3, 28, 7), utc(2026, 3, 29, 6)),
        (utc(2026, 3, 29, 6), utc(2026, 3, 30, 6)),  # closed at this very moment
    ]
    assert closed_windows(Frequency.DAILY, since, utc(2026, 3, 28, 6, 59), BERLIN, 8) == []
    hourly = closed_windows(Frequency.HOURLY, utc(2026, 1, 1, 10, 30), utc(2026, 1, 1, 12, 59),
                            BERLIN)
    assert [w.key for w in hourly] == ["hourly:20260101T100000Z/20260101T110000Z",
                                       "hourly:20260101T110000Z/20260101T120000Z"]


def test_no_window_for_immediate_and_a_bad_hour() -> None:
    with pytest.raises(ValueError, match="immediate delivery has no window"):
        current_window(Frequency.IMMEDIATE, utc(2026, 1, 1), BERLIN)
    with pytest.raises(ValueError, match="0 to 23"):
        current_window(Frequency.DAILY, utc(2026, 1, 1), BERLIN, 24)


def test_a_changed_zone_or_hour_names_a_different_window() -> None:
    """The key names the instants, so two schedulers agree on it, and a user who
    changes their settings mid-window gets a new window, not a clash with the old."""
    now = utc(2026, 6, 1, 12)
    keys = {current_window(Frequency.DAILY, now, zone, hour).key
            for zone, hour in ((BERLIN, 8), (BERLIN, 9), (NEW_YORK, 8))}
    assert len(keys) == 3
    assert current_window(Frequency.DAILY, now, ZoneInfo("Europe/London"), 7).key == \
        current_window(Frequency.DAILY, now, BERLIN, 8).key  # the same instants


ZONES = [BERLIN, NEW_YORK, ZoneInfo("Australia/Lord_Howe"), ZoneInfo("Asia/Kolkata"),
         ZoneInfo("UTC")]
moments = st.datetimes(min_value=datetime(2026, 1, 1), max_value=datetime(2027, 12, 31))


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([Frequency.HOURLY, Frequency.DAILY]), moments, st.sampled_from(ZONES),
       st.integers(0, 23))
def test_windows_tile_time(frequency: Frequency, now: datetime, zone: ZoneInfo,
                           hour: int) -> None:
    window = current_window(frequency, now, zone, hour)
    assert window.start_utc <= now < window.end_utc
    # every instant of the window names it the same way, and the next one follows on
    assert current_window(frequency, window.start_utc, zone, hour) == window
    assert current_window(frequency, window.end_utc - timedelta(microseconds=1), zone,
                          hour) == window
    assert current_window(frequency, window.end_utc, zone, hour).start_utc == window.end_utc
    assert current_window(frequency, now.replace(tzinfo=UTC), zone, hour) == window
    length = window.end_utc - window.start_utc
    if frequency is Frequency.HOURLY:
        assert length == H
    else:
        assert 23 * H <= length <= 25 * H
        local_start = window.start_utc.replace(tzinfo=UTC).astimezone(zone)
        # it turns at the hour, or at the change of the clocks that skipped the hour
        assert (local_start.hour, local_start.minute) == (hour, 0) or (
            local_start.utcoffset() != (local_start - H).utcoffset())
