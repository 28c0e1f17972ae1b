"""Due-soon thresholds: parsing ITSM_DUE_SOON, when each threshold is crossed (in
working time, across a change of the clocks), and which warnings a scan may send now."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from itsm_notify.errors import ConfigError
from itsm_notify.timing.business_hours import ALWAYS_OPEN, BusinessCalendar, load_calendar
from itsm_notify.timing.thresholds import (
    Threshold,
    due_warnings,
    may_send_now,
    parse_thresholds,
    warning_moment,
)

H = timedelta(hours=1)


@dataclass(frozen=True)
class Ticket:
    created_at: datetime | None
    due_at: datetime | None


def utc(*args: int) -> datetime:
    return datetime(*args)


def office(zone: str = "UTC") -> BusinessCalendar:
    return load_calendar(business_hours="mon-fri 08:00-17:00", time_zone=zone)


# -------------------------------------------------------------------------- parsing


def test_parse_lead_times_and_shares() -> None:
    four_hours, eighty = parse_thresholds("4h, 80%", business_hours=True)
    assert four_hours == Threshold(text="4h", lead=4 * H)
    assert eighty == Threshold(text="80%", share=Decimal("0.8"))
    # one spelling per threshold, so the key is stable whatever the setting says
    assert [t.text for t in parse_thresholds("90m, 1H30M, 1h 30m, 87.50 %, 2d",
                                             business_hours=False)] == ["1h30m", "87.5%", "48h"]
    assert parse_thresholds("1d2h", business_hours=False)[0].lead == timedelta(hours=26)
    assert parse_thresholds(" , ", business_hours=True) == ()
    with pytest.raises(ValueError, match="either a lead time or a share"):
        Threshold(text="4h")


@pytest.mark.parametrize(("text", "words"), [
    ("0%", "more than 0% and less than 100%"),
    ("100%", "more than 0% and less than 100%"),
    ("4 hours", "neither a lead time nor a share"),
    ("h", "neither a lead time nor a share"),
    ("0h", "a lead time of nothing"),
    ("1d", "a day of it is ambiguous"),
])
def test_parse_errors_name_the_setting_and_the_fix(text: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_thresholds(f"4h, {text}", business_hours=True)
    message = str(caught.value)
    assert message.startswith(f"ITSM_DUE_SOON has {text!r}") and words in message
    assert message.endswith(".") and "\n" not in message


# ------------------------------------------------------------------- warning moments


def test_lead_time_in_wall_clock_and_working_time() -> None:
    four_hours, = parse_thresholds("4h", business_hours=True)
    due = utc(2026, 4, 13, 10)  # a Monday
    assert warning_moment(None, due, four_hours, ALWAYS_OPEN) == utc(2026, 4, 13, 6)
    # two working hours on Monday morning, two on Friday afternoon
    assert warning_moment(None, due, four_hours, office()) == utc(2026, 4, 10, 15)


def test_share_of_the_working_time_from_creation_to_due() -> None:
    eighty, = parse_thresholds("80%", business_hours=True)
    created, due = utc(2026, 4, 13, 8), utc(2026, 4, 15, 17)  # Monday to Wednesday: 27 h
    # 20 % of 27 working hours (5 h 24 min) before Wednesday 17:00
    assert warning_moment(created, due, eighty, office()) == utc(2026, 4, 15, 11, 36)
    # wall-clock: 20 % of 57 hours before due
    assert warning_moment(created, due, eighty, ALWAYS_OPEN) == due - 0.2 * 57 * H
    # unknown creation: no share can be taken of it
    assert warning_moment(None, due, eighty, office()) is None
    # no working time before due (created on Saturday, due on Sunday; or created after
    # the due date): reached only at the due date itself
    assert warning_moment(utc(2026, 4, 11, 9), utc(2026, 4, 12, 9), eighty,
                          office()) == utc(2026, 4, 12, 9)
    assert warning_moment(due + H, due, eighty, office()) == due


def test_thresholds_across_the_change_of_the_clocks() -> None:
    four_hours, half = parse_thresholds("4h, 50%", business_hours=True)
    berlin = office("Europe/Berlin")
    # created Friday 27 March 08:00 CET (07:00 UTC), due Monday 30 March 17:00 CEST
    # (15:00 UTC): 9 + 9 working hours although the clocks went forward on Sunday
    created, due = utc(2026, 3, 27, 7), utc(2026, 3, 30, 15)
    assert berlin.working_time_between(created, due) == 18 * H
    # half of it remains from Monday 08:00 CEST (06:00 UTC)
    assert warning_moment(created, due, half, berlin) == utc(2026, 3, 30, 6)
    assert warning_moment(created, due, four_hours, berlin) == utc(2026, 3, 30, 11)
    # New York: due Monday 9 March 10:00 EDT (14:00 UTC); two working hours on Monday,
    # two on Friday 6 March until 17:00 EST: from 15:00 EST (20:00 UTC)
    new_york = office("America/New_York")
    assert warning_moment(None, utc(2026, 3, 9, 14), four_hours, new_york) == utc(2026, 3, 6, 20)
    # aware in, aware out
    aware_due = datetime(2026, 3, 9, 14, tzinfo=UTC)
    assert warning_moment(None, aware_due, four_hours, new_york) == datetime(
        2026, 3, 6, 20, tzinfo=UTC)


# ---------------------------------------------------------------------- what to send

THRESHOLDS = parse_thresholds("4h, 50%", business_hours=True)
# Monday 08:00 to Wednesday 17:00, 27 working hours: 50 % is crossed on Tuesday 12:30,
# 4h before due on Wednesday 13:00.
TICKET = Ticket(created_at=utc(2026, 4, 13, 8), due_at=utc(2026, 4, 15, 17))


def crossed(now: datetime, *, critical: bool = False, ticket: Ticket = TICKET,
            calendar: BusinessCalendar | None = None) -> list[str]:
    hits = due_warnings(ticket, now, THRESHOLDS, calendar or office(), critical=critical)
    return [hit.threshold.text for hit in hits]


def test_thresholds_cross_in_order_and_stop_at_the_due_date() -> None:
    assert crossed(utc(2026, 4, 14, 12, 29)) == []
    assert crossed(utc(2026, 4, 14, 12, 30)) == ["50%"]
    assert crossed(utc(2026, 4, 15, 13)) == ["50%", "4h"]
    assert crossed(utc(2026, 4, 15, 16, 59)) == ["50%", "4h"]
    assert crossed(utc(2026, 4, 15, 17)) == []  # overdue now: overdue-scan's business
    assert crossed(utc(2026, 4, 15, 17), critical=True) == []
    hit = due_warnings(TICKET, utc(2026, 4, 15, 13), THRESHOLDS, office(), critical=False)[1]
    assert (hit.moment, hit.due_at, hit.key) == (utc(2026, 4, 15, 13), TICKET.due_at,
                                                 ("4h", TICKET.due_at))


def test_nothing_outside_business_hours_unless_critical() -> None:
    tuesday_evening = utc(2026, 4, 14, 20)
    assert not may_send_now(tuesday_evening, office(), critical=False)
    assert may_send_now(tuesday_evening, office(), critical=True)
    assert may_send_now(tuesday_evening, ALWAYS_OPEN, critical=False)
    assert crossed(tuesday_evening) == []
    assert crossed(tuesday_evening, critical=True) == ["50%"]
    # the next scan in business hours still finds it (crossed, not yet due)
    assert crossed(utc(2026, 4, 15, 8)) == ["50%"]


def test_a_ticket_without_a_due_date_or_created_after_it() -> None:
    assert crossed(utc(2026, 4, 14, 12), ticket=Ticket(utc(2026, 4, 13, 8), None)) == []
    # created on Saturday for Sunday: no working time; the lead time falls on Friday,
    # before creation, so it is crossed at once, and a critical ticket hears of it now
    weekend = Ticket(created_at=utc(2026, 4, 11, 9), due_at=utc(2026, 4, 12, 9))
    assert crossed(utc(2026, 4, 11, 10), ticket=weekend) == []
    assert crossed(utc(2026, 4, 11, 10), ticket=weekend, critical=True) == ["4h"]


def test_a_due_date_moved_back_and_forth_rearms_the_warning() -> None:
    """What the engine does with the keys: remember, per ticket and threshold, the due
    date last warned about; warn when a crossed threshold's key is not remembered."""
    remembered: dict[str, datetime] = {}
    sent: list[tuple[str, datetime]] = []

    def scan(ticket: Ticket, now: datetime) -> None:
        for hit in due_warnings(ticket, now, THRESHOLDS, ALWAYS_OPEN, critical=False):
            text, due_at = hit.key
            if remembered.get(text) != due_at:
                remembered[text] = due_at
                sent.append(hit.key)

    first_due, later_due = utc(2026, 4, 15, 17), utc(2026, 4, 16, 17)
    created = utc(2026, 4, 13, 8)
    scan(Ticket(created, first_due), utc(2026, 4, 15, 14))
    scan(Ticket(created, first_due), utc(2026, 4, 15, 14, 5))  # the next scan: nothing new
    assert sent == [("50%", first_due), ("4h", first_due)]
    # moved a day later: 4h is not crossed any more, 50 % is, for the new date
    scan(Ticket(created, later_due), utc(2026, 4, 15, 14, 10))
    assert sent[2:] == [("50%", later_due)]
    # moved back: both are crossed again for a date they were last warned about...
    scan(Ticket(created, first_due), utc(2026, 4, 15, 14, 15))
    # ...50 % was warned about for the later date since, so it is re-armed; 4h was not
    assert sent[3:] == [("50%", first_due)]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from([*"0123456789dhm%., \t", "٣", "²", "x"]),
               max_size=40), st.booleans())
def test_any_due_soon_text_gives_thresholds_or_one_sentence(text: str, hours: bool) -> None:
    try:
        thresholds = parse_thresholds(text, business_hours=hours)
    except ConfigError as exc:
        assert str(exc).startswith("ITSM_DUE_SOON has ") and "\n" not in str(exc)
    else:
        for threshold in thresholds:
            assert parse_thresholds(threshold.text, business_hours=hours) == (threshold,)


@pytest.mark.parametrize("text", ["50000d", "99999d999999h99999999m"])
def test_the_longest_lead_times_read_back_as_themselves(text: str) -> None:
    # found by the property test above: 50000d is 1200000h, once one digit too many
    [threshold] = parse_thresholds(text, business_hours=False)
    assert parse_thresholds(threshold.text, business_hours=False) == (threshold,)


def test_a_huge_lead_time_is_refused() -> None:
    with pytest.raises(ConfigError, match="neither a lead time nor a share"):
        parse_thresholds("9" * 40 + "d", business_hours=False)
