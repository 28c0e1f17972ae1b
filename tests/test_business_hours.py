"""The business-hours calendar: configuration, working-time arithmetic across weekends,
holidays and the days the clocks change (Europe/Berlin and America/New_York), and
properties checked by hypothesis against a minute-by-minute count."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from itsm_notify.errors import ConfigError
from itsm_notify.timing.business_hours import (
    ALWAYS_OPEN,
    BusinessCalendar,
    OpenHours,
    load_calendar,
    parse_holidays,
    parse_week,
)

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
H = timedelta(hours=1)

# 2026: Berlin goes forward on Sun 29 March at 01:00 UTC and back on Sun 25 October at
# 01:00 UTC; New York goes forward on Sun 8 March at 07:00 UTC and back on Sun 1
# November at 06:00 UTC.
CHANGE_DAYS = {
    "Europe/Berlin": (date(2026, 3, 29), date(2026, 10, 25)),
    "America/New_York": (date(2026, 3, 8), date(2026, 11, 1)),
}


def calendar(hours: str, zone: str = "Europe/Berlin", holidays: str = "") -> BusinessCalendar:
    return load_calendar(business_hours=hours, time_zone=zone, holidays=holidays)


def utc(*args: int) -> datetime:
    """A naive UTC datetime, as the database stores them."""
    return datetime(*args)


def local(zone: ZoneInfo, *args: int, fold: int = 0) -> datetime:
    return datetime(*args, tzinfo=zone, fold=fold)


# -------------------------------------------------------------------- configuration


def test_parse_week_simple_and_rich() -> None:
    week = parse_week("mon-fri 08:00-17:00")
    assert week[:5] == ((OpenHours(480, 1020),),) * 5 and week[5:] == ((), ())

    week = parse_week("Mon-Thu 08:00-12:00, 13:00-17:00; fri 08:00-14:00;sat 9:00-12:00")
    assert [str(h) for h in week[0]] == ["08:00-12:00", "13:00-17:00"]
    assert week[3] == week[0]
    assert [str(h) for h in week[4]] == ["08:00-14:00"]
    assert [str(h) for h in week[5]] == ["09:00-12:00"]
    assert week[6] == ()


def test_parse_week_lists_wrapping_ranges_full_names_and_24_00() -> None:
    week = parse_week("fri-mon 00:00-24:00; wednesday, tue 10:00-11:00")
    assert [bool(hours) for hours in week] == [True, True, True, False, True, True, True]
    assert str(week[6][0]) == "00:00-24:00"
    # a day named twice gets both clauses' ranges, sorted
    week = parse_week("mon 13:00-17:00; mon-fri 08:00-12:00")
    assert [str(h) for h in week[0]] == ["08:00-12:00", "13:00-17:00"]


@pytest.mark.parametrize(("text", "words"), [
    ("mon-fri 22:00-06:00", "cannot cross midnight"),
    ("mon-fri 08:00-17:00, 16:00-18:00", "overlapping hours on mon"),
    ("mon-fry 08:00-17:00", "unknown day 'fry'"),
    ("mon-fri 8-17", "not a range HH:MM-HH:MM"),
    ("08:00-17:00", "not days followed by"),
    ("mon-fri 08:00-25:00", "not a time of day"),
    ("mon-fri 08:60-17:00", "not a time of day"),
    ("mon 24:00-24:00", "not a time of day"),
    (" ; ", "opens no hours at all"),
])
def test_parse_week_errors_name_the_setting_and_the_fix(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_week(text)
    message = str(caught.value)
    assert message.startswith("ITSM_BUSINESS_HOURS ") and words in message
    assert message.count(": ") >= 1 and message.endswith(".") and "\n" not in message


def test_holidays_inline_and_from_a_file(tmp_path: Path) -> None:
    assert parse_holidays("2026-12-25, 2026-12-26") == {date(2026, 12, 25), date(2026, 12, 26)}
    path = tmp_path / "holidays.txt"
    path.write_text("# Berlin 2026\n2026-01-01 New Year\n\n2026-12-25  # Christmas\n"
                    "2026-12-26, 2026-12-31\n", encoding="utf-8")
    loaded = load_calendar(business_hours="mon-fri 08:00-17:00", holidays=str(path))
    assert loaded.holidays == {date(2026, 1, 1), date(2026, 12, 25), date(2026, 12, 26),
                               date(2026, 12, 31)}


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"holidays": "2026-02-30"}, "ITSM_HOLIDAYS has '2026-02-30', which is not a date"),
    ({"holidays": "./missing.txt"}, "ITSM_HOLIDAYS names the file ./missing.txt"),
    ({"time_zone": "Europe/Berln"}, "ITSM_BUSINESS_TIME_ZONE names an unknown time zone"),
    ({"time_zone": "America"}, "ITSM_BUSINESS_TIME_ZONE names an unknown time zone"),
    ({"default_time_zone": "Mars/Olympus"}, "ITSM_TIME_ZONE names an unknown time zone"),
])
def test_load_calendar_errors(kwargs: dict[str, str], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        load_calendar(business_hours="mon-fri 08:00-17:00", **kwargs)


def test_time_zone_defaults_and_always_open() -> None:
    assert load_calendar(business_hours="mon 08:00-09:00").time_zone.key == "UTC"
    assert load_calendar(business_hours="mon 08:00-09:00",
                         default_time_zone="Europe/Paris").time_zone.key == "Europe/Paris"
    assert load_calendar(business_hours="mon 08:00-09:00", time_zone="Asia/Tokyo",
                         default_time_zone="Europe/Paris").time_zone.key == "Asia/Tokyo"
    assert load_calendar(business_hours=None) is ALWAYS_OPEN
    assert load_calendar(business_hours="  ", time_zone="Europe/Berlin") is ALWAYS_OPEN
    with pytest.raises(ConfigError, match="ITSM_HOLIDAYS is set but ITSM_BUSINESS_HOURS is not"):
        load_calendar(business_hours="", holidays="2026-12-25")


def test_calendar_refuses_a_malformed_week() -> None:
    with pytest.raises(ValueError, match="7 days"):
        BusinessCalendar(week=((),) * 6)
    with pytest.raises(ValueError, match="needs some open hours"):
        BusinessCalendar(week=((),) * 7)
    with pytest.raises(ValueError, match="overlap"):
        BusinessCalendar(week=((OpenHours(0, 60), OpenHours(30, 90)),) + ((),) * 6)
    with pytest.raises(ValueError, match="start < end"):
        OpenHours(600, 600)


# ------------------------------------------------------------------ plain arithmetic


def test_always_open_is_wall_clock_time() -> None:
    a, b = utc(2026, 3, 28, 23), utc(2026, 3, 29, 5)
    assert ALWAYS_OPEN.always_open and ALWAYS_OPEN.is_open(a)
    assert ALWAYS_OPEN.working_time_between(a, b) == 6 * H
    assert ALWAYS_OPEN.working_time_between(b, a) == -6 * H
    assert ALWAYS_OPEN.subtract_working_time(b, 6 * H) == a
    assert ALWAYS_OPEN.next_open(a) == a


def test_weekend_holiday_and_lunch_break() -> None:
    cal = calendar("mon-fri 08:00-12:00,13:00-17:00", "UTC", "2026-04-03")  # Good Friday
    thursday_noon = utc(2026, 4, 2, 12, 30)
    assert not cal.is_open(thursday_noon)
    assert not cal.is_open(utc(2026, 4, 3, 10))  # the holiday
    assert cal.is_open(utc(2026, 4, 2, 16, 59)) and not cal.is_open(utc(2026, 4, 2, 17))
    # Thursday 16:00 to Monday 09:00: Thursday's last hour and Monday's first
    assert cal.working_time_between(utc(2026, 4, 2, 16), utc(2026, 4, 6, 9)) == 2 * H
    assert cal.subtract_working_time(utc(2026, 4, 6, 9), 2 * H) == utc(2026, 4, 2, 16)
    assert cal.next_open(thursday_noon) == utc(2026, 4, 2, 13)
    assert cal.next_open(utc(2026, 4, 2, 17)) == utc(2026, 4, 6, 8)


def test_subtract_gives_the_latest_instant() -> None:
    cal = calendar("mon-fri 08:00-17:00", "UTC")
    monday_noon = utc(2026, 4, 13, 12)
    # 4 working hours before Monday 12:00 is Monday 08:00, not Friday 17:00
    assert cal.subtract_working_time(monday_noon, 4 * H) == utc(2026, 4, 13, 8)
    assert cal.subtract_working_time(monday_noon, 5 * H) == utc(2026, 4, 10, 16)
    # nothing to subtract: the moment itself, even in closed time
    saturday = utc(2026, 4, 11, 10)
    assert cal.subtract_working_time(saturday, timedelta()) == saturday
    with pytest.raises(ValueError, match="cannot be negative"):
        cal.subtract_working_time(saturday, -H)


def test_aware_and_naive_datetimes() -> None:
    cal = calendar("mon-fri 08:00-17:00", "Europe/Berlin")
    naive = utc(2026, 4, 13, 6)  # 08:00 in Berlin (CEST)
    aware = local(NEW_YORK, 2026, 4, 13, 2)  # the same instant
    assert cal.is_open(naive) and cal.is_open(aware)
    assert not cal.is_open(naive - timedelta(microseconds=1))
    before = cal.subtract_working_time(aware, H)
    assert before.tzinfo is UTC and before == datetime(2026, 4, 10, 14, tzinfo=UTC)
    assert cal.subtract_working_time(naive, H).tzinfo is None
    assert cal.next_open(utc(2026, 4, 11, 12)) == utc(2026, 4, 13, 6)
    assert cal.next_open(aware - H) == datetime(2026, 4, 13, 6, tzinfo=UTC)
    assert cal.working_time_between(naive, aware + 2 * H) == 2 * H


# ---------------------------------------------------------- the days the clocks change


@pytest.mark.parametrize("zone", sorted(CHANGE_DAYS))
def test_an_office_day_is_nine_hours_on_the_change_days(zone: str) -> None:
    cal = calendar("mon-sun 08:00-17:00", zone)
    for day in CHANGE_DAYS[zone]:
        start = datetime.combine(day, datetime.min.time(), tzinfo=ZoneInfo(zone))
        assert cal.working_time_between(start, start + timedelta(days=1)) == 9 * H
        assert cal.is_open(start.replace(hour=8)) and not cal.is_open(start.replace(hour=17))


@pytest.mark.parametrize(("zone", "hours"), [("Europe/Berlin", (23, 25)),
                                             ("America/New_York", (23, 25))])
def test_a_whole_day_is_23_or_25_hours(zone: str, hours: tuple[int, int]) -> None:
    for day, length in zip(CHANGE_DAYS[zone], hours, strict=True):
        cal = calendar(f"{day:%a} 00:00-24:00", zone)
        week = datetime.combine(day - timedelta(days=3), datetime.min.time(), tzinfo=UTC)
        assert cal.working_time_between(week, week + timedelta(days=7)) == length * H


def test_berlin_night_hours_across_the_changes() -> None:
    cal = calendar("sun 01:00-04:00", "Europe/Berlin")
    # spring: 01:00 CET (00:00 UTC) to 04:00 CEST (02:00 UTC), the skipped hour missing
    assert cal.working_time_between(utc(2026, 3, 28), utc(2026, 3, 30)) == 2 * H
    assert not cal.is_open(utc(2026, 3, 29, 2))
    # autumn: 01:00 CEST (23:00 UTC Saturday) to 04:00 CET (03:00 UTC), the repeated
    # hour twice
    assert cal.working_time_between(utc(2026, 10, 24), utc(2026, 10, 26)) == 4 * H
    assert cal.is_open(utc(2026, 10, 24, 23)) and cal.is_open(utc(2026, 10, 25, 2, 59))


def test_hours_that_begin_or_end_in_the_skipped_hour() -> None:
    # New York skips 02:00-03:00 on 8 March: hours from 02:30 open when the clock jumps
    cal = calendar("sun 02:30-05:00", "America/New_York")
    assert cal.next_open(utc(2026, 3, 8)) == utc(2026, 3, 8, 7)
    assert cal.working_time_between(utc(2026, 3, 8), utc(2026, 3, 9)) == 2 * H
    # hours wholly inside the skipped hour cover nothing that day, and are normal a week on
    cal = calendar("sun 02:10-02:50, 06:00-07:00", "America/New_York")
    assert cal.working_time_between(utc(2026, 3, 8), utc(2026, 3, 9)) == H
    assert cal.working_time_between(utc(2026, 3, 15), utc(2026, 3, 16)) == H + 40 * timedelta(
        minutes=1)
    # an end in the skipped hour closes when the clock jumps
    cal = calendar("sun 00:00-02:30", "America/New_York")
    assert cal.working_time_between(utc(2026, 3, 8), utc(2026, 3, 9)) == 2 * H


def test_hours_that_touch_the_repeated_hour() -> None:
    # New York repeats 01:00-02:00 on 1 November (02:00 EDT is set back to 01:00 EST).
    before = calendar("sun 00:00-01:00", "America/New_York")
    after = calendar("sun 01:00-02:00", "America/New_York")
    both = calendar("sun 00:00-02:00", "America/New_York")
    day = (utc(2026, 11, 1), utc(2026, 11, 2))
    # The clock ran up to 01:00 once (it was set back *to* 01:00), so 00:00-01:00 is one
    # hour; 01:00-02:00 is shown twice, two hours; together the three hours the clock
    # really spent before 02:00.
    assert before.working_time_between(*day) == H
    assert after.working_time_between(*day) == 2 * H
    assert both.working_time_between(*day) == 3 * H
    assert after.is_open(utc(2026, 11, 1, 5)) and after.is_open(utc(2026, 11, 1, 6, 30))
    assert not before.is_open(utc(2026, 11, 1, 5))
    # hours ending inside the repeated hour last until its second showing
    cal = calendar("sun 01:30-03:00", "America/New_York")
    assert cal.working_time_between(*day) == 2.5 * H
    assert cal.next_open(utc(2026, 11, 1)) == utc(2026, 11, 1, 5, 30)  # the first 01:30
    # ranges meeting at a repeated time: the first runs to its second showing, the
    # second opens at its first; the hour they share counts once, not twice
    split = calendar("sun 00:00-01:30,01:30-03:00", "America/New_York")
    assert split.working_time_between(*day) == 4 * H
    assert split.subtract_working_time(day[1], 4 * H) == utc(2026, 11, 1, 4)


def test_subtract_across_a_change_and_a_weekend() -> None:
    cal = calendar("mon-fri 08:00-17:00", "Europe/Berlin")
    # due Monday 30 March 10:00 CEST (08:00 UTC): 4 working hours back is Friday
    # 27 March 15:00 CET (14:00 UTC)
    due = utc(2026, 3, 30, 8)
    assert cal.subtract_working_time(due, 4 * H) == utc(2026, 3, 27, 14)
    assert cal.working_time_between(utc(2026, 3, 27, 14), due) == 4 * H


# ------------------------------------------------------------------------ properties

ZONES = ["Europe/Berlin", "America/New_York", "UTC", "Asia/Kolkata", "Australia/Lord_Howe"]
SCHEDULES = [
    "mon-fri 08:00-17:00",
    "mon-thu 08:00-12:00,13:00-17:00; fri 08:00-14:00",
    "mon-sun 00:00-03:00,22:00-24:00",
    "sun 00:00-24:00",
    "sat-sun 01:00-04:00",
    "mon-sun 02:00-03:00",
]
HOLIDAY_SETS = ["", "2026-03-27, 2026-03-30, 2026-10-26", "2026-03-29, 2026-11-01"]
calendars = st.builds(calendar, st.sampled_from(SCHEDULES), st.sampled_from(ZONES),
                      st.sampled_from(HOLIDAY_SETS))
# moments within a week of the changes (and ordinary weeks), to the second
anchors = st.sampled_from([utc(2026, 3, 8), utc(2026, 3, 29), utc(2026, 4, 5),
                           utc(2026, 10, 25), utc(2026, 11, 1), utc(2026, 7, 15)])
moments = st.builds(lambda anchor, seconds: anchor + timedelta(seconds=seconds), anchors,
                    st.integers(-5 * 86_400, 5 * 86_400))
amounts = st.builds(lambda seconds: timedelta(seconds=seconds), st.integers(0, 60 * 3600))
fast = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@fast
@given(calendars, moments, amounts)
def test_subtract_then_count_gives_the_amount_back(cal: BusinessCalendar, moment: datetime,
                                                    amount: timedelta) -> None:
    before = cal.subtract_working_time(moment, amount)
    assert before <= moment
    assert cal.working_time_between(before, moment) == amount
    if amount:  # the latest such instant: working time at once after it
        assert cal.is_open(before)


@fast
@given(calendars, moments, amounts, amounts)
def test_subtract_is_monotonic(cal: BusinessCalendar, moment: datetime, first: timedelta,
                               second: timedelta) -> None:
    small, large = sorted((first, second))
    assert cal.subtract_working_time(moment, large) <= cal.subtract_working_time(moment, small)
    later = moment + small
    assert cal.subtract_working_time(later, large) >= cal.subtract_working_time(moment, large)


@fast
@given(calendars, moments, st.lists(st.integers(0, 3 * 86_400), min_size=2, max_size=2))
def test_working_time_adds_up(cal: BusinessCalendar, start: datetime,
                              steps: list[int]) -> None:
    middle = start + timedelta(seconds=steps[0])
    end = middle + timedelta(seconds=steps[1])
    first, rest = cal.working_time_between(start, middle), cal.working_time_between(middle, end)
    assert timedelta() <= first <= middle - start
    assert cal.working_time_between(start, end) == first + rest
    assert cal.working_time_between(end, start) == -(first + rest)


@fast
@given(calendars, moments)
def test_is_open_and_next_open_agree_with_working_time(cal: BusinessCalendar,
                                                       moment: datetime) -> None:
    tick = timedelta(microseconds=1)
    assert cal.is_open(moment) == (cal.working_time_between(moment, moment + tick) == tick)
    opens = cal.next_open(moment)
    assert cal.is_open(opens) and cal.working_time_between(moment, opens) == timedelta()
    assert (opens == moment) == cal.is_open(moment)


def _minutes_open(cal: BusinessCalendar, start: datetime, minutes: int) -> int:
    """The oracle: a minute is working time when the local clock at its start shows a
    time in that date's hours (exact for these whole-hour schedules in these zones,
    whose changes fall on whole minutes and never inside a schedule's bounds)."""
    count = 0
    for step in range(minutes):
        wall = (start + timedelta(minutes=step)).replace(tzinfo=UTC).astimezone(cal.time_zone)
        minute = wall.hour * 60 + wall.minute
        if wall.date() not in cal.holidays and any(
                hours.start <= minute < hours.end for hours in cal.week[wall.weekday()]):
            count += 1
    return count


@settings(max_examples=40, deadline=None)
@given(calendars, anchors, st.integers(-3 * 1440, 1440), st.integers(0, 3 * 1440))
def test_working_time_matches_a_minute_by_minute_count(cal: BusinessCalendar, anchor: datetime,
                                                       offset: int, minutes: int) -> None:
    start = anchor + timedelta(minutes=offset)
    expected = _minutes_open(cal, start, minutes)
    assert cal.working_time_between(start, start + timedelta(minutes=minutes)) == timedelta(
        minutes=expected)


# ---------------------------------------------------------------------- hostile input

setting_text = st.text(alphabet=st.sampled_from([*"monfriTuesatd0123456789:-,; %hm#\n\t.", "２",
                                                 "٣", "²", "\x00", "é"]), max_size=60)


@settings(max_examples=300, deadline=None)
@given(setting_text, setting_text)
def test_any_setting_text_gives_a_calendar_or_one_sentence(hours: str, holidays: str) -> None:
    try:
        cal = load_calendar(business_hours=hours, holidays=holidays if holidays[:1].isdigit()
                            else "")
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(("ITSM_BUSINESS_HOURS ", "ITSM_HOLIDAYS "))
        assert "\n" not in message and message.endswith(".")
    else:
        assert cal.always_open or any(cal.week)


def test_a_long_hostile_value_is_refused_at_once() -> None:
    with pytest.raises(ConfigError, match="not days followed by"):
        parse_week("m" + " " * 200_000 + "x")
    with pytest.raises(ConfigError, match="not a date"):
        parse_holidays("2026-01-0" + "1" * 100_000)


def test_a_bad_date_in_the_holidays_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "holidays.txt"
    path.write_text("2026-12-25\n2026-12-32 a typo\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=rf"^The holidays file {path} \(ITSM_HOLIDAYS\) has "
                                          r"'2026-12-32', which is not a date: write one"):
        load_calendar(business_hours="mon-fri 08:00-17:00", holidays=str(path))


def test_results_are_naive_utc_or_aware_utc() -> None:
    cal = calendar("mon-fri 08:00-17:00", "Europe/Berlin")
    open_moment = local(NEW_YORK, 2026, 4, 14, 5)  # Tuesday 11:00 in Berlin
    for result in (cal.subtract_working_time(open_moment, timedelta()),
                   cal.next_open(open_moment),
                   ALWAYS_OPEN.next_open(open_moment),
                   ALWAYS_OPEN.subtract_working_time(open_moment, H)):
        assert result.tzinfo is UTC
    assert cal.next_open(open_moment) == open_moment
    assert cal.next_open(utc(2026, 4, 14, 9)).tzinfo is None
