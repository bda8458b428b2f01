"""Availability as pure functions: weekly hours on the facility's wall clock become UTC working intervals
(daylight-saving changes of 2026 included), and free slots are cut from them on a grid, around bookings."""

from __future__ import annotations

import random
from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from sehat.scheduling.availability import (
    Interval,
    Placement,
    WeeklyHours,
    covering_local_days,
    free_slots,
    is_on_grid,
    local_day,
    placement,
    slot_is_offered,
    stretch_containing,
    working_intervals,
)

MINUTE = timedelta(minutes=1)
ZERO = timedelta(0)
MONDAY, TUESDAY, WEDNESDAY, THURSDAY, FRIDAY, SATURDAY, SUNDAY = range(7)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def at(day: date, clock: str) -> datetime:
    """``HH:MM`` UTC on ``day``."""
    hours, minutes = clock.split(":")
    return datetime.combine(day, time(int(hours), int(minutes)), tzinfo=UTC)


def span(day: date, starts: str, ends: str) -> Interval:
    """A UTC interval on ``day`` (``ends`` on the next day when it is earlier than ``starts``)."""
    end = at(day, ends)
    return Interval(at(day, starts), end if end > at(day, starts) else end + timedelta(days=1))


def clock(value: str) -> time:
    hours, minutes = value.split(":")
    return time(int(hours), int(minutes))


def sessions_on(timezone: str, day: date, *sessions: tuple[str, str]) -> list[Interval]:
    """Working time from weekly hours valid on ``day`` only, over a UTC window two days wider than it."""
    hours = [
        WeeklyHours(day.weekday(), clock(starts), clock(ends), valid_from=day, valid_until=day)
        for starts, ends in sessions
    ]
    window_start = datetime.combine(day, time(0), tzinfo=UTC) - timedelta(days=1)
    return working_intervals(hours, timezone, window_start, window_start + timedelta(days=3))


def slot_starts(slots: Sequence[Interval]) -> list[str]:
    return [slot.start.strftime("%H:%M") for slot in slots]


def slots(working: Sequence[Interval], busy: Sequence[Interval] = (), **options: object) -> list[Interval]:
    settings: dict = {
        "duration": timedelta(minutes=20),
        "granularity": timedelta(minutes=10),
        "buffer": ZERO,
        "not_before": utc(2000, 1, 1),
    }
    settings.update(options)
    return free_slots(working, busy, **settings)


# --- daylight saving: the wall clock decides -------------------------------------------------------------------

# 2026 changes. Europe/London: forward at 01:00 UTC on Sunday 29 March (GMT to BST), back at 01:00 UTC on Sunday
# 25 October. America/New_York: forward at 07:00 UTC on Sunday 8 March (EST to EDT), back at 06:00 UTC on Sunday
# 1 November. Asia/Kolkata: UTC+05:30 all year.
NINE_TO_FIVE_IN_UTC = [
    # (zone, local date, UTC start, UTC end)
    ("Asia/Kolkata", date(2026, 3, 6), "03:30", "11:30"),  # Friday before New York's spring change
    ("Asia/Kolkata", date(2026, 3, 9), "03:30", "11:30"),
    ("Asia/Kolkata", date(2026, 3, 27), "03:30", "11:30"),  # Friday before London's spring change
    ("Asia/Kolkata", date(2026, 3, 30), "03:30", "11:30"),
    ("Asia/Kolkata", date(2026, 10, 23), "03:30", "11:30"),
    ("Asia/Kolkata", date(2026, 10, 26), "03:30", "11:30"),
    ("Asia/Kolkata", date(2026, 10, 30), "03:30", "11:30"),
    ("Asia/Kolkata", date(2026, 11, 2), "03:30", "11:30"),
    ("Europe/London", date(2026, 3, 27), "09:00", "17:00"),  # Friday, GMT
    ("Europe/London", date(2026, 3, 29), "08:00", "16:00"),  # the Sunday itself, after the change
    ("Europe/London", date(2026, 3, 30), "08:00", "16:00"),  # Monday, BST
    ("Europe/London", date(2026, 10, 23), "08:00", "16:00"),  # Friday, BST
    ("Europe/London", date(2026, 10, 25), "09:00", "17:00"),
    ("Europe/London", date(2026, 10, 26), "09:00", "17:00"),  # Monday, GMT
    ("America/New_York", date(2026, 3, 6), "14:00", "22:00"),  # Friday, EST
    ("America/New_York", date(2026, 3, 8), "13:00", "21:00"),
    ("America/New_York", date(2026, 3, 9), "13:00", "21:00"),  # Monday, EDT
    ("America/New_York", date(2026, 10, 30), "13:00", "21:00"),  # Friday, EDT
    ("America/New_York", date(2026, 11, 1), "14:00", "22:00"),
    ("America/New_York", date(2026, 11, 2), "14:00", "22:00"),  # Monday, EST
]


@pytest.mark.parametrize(
    ("timezone", "day", "utc_start", "utc_end"),
    NINE_TO_FIVE_IN_UTC,
    ids=[f"{zone}-{day}" for zone, day, _, _ in NINE_TO_FIVE_IN_UTC],
)
def test_nine_to_five_local_gives_the_right_utc_instants_around_both_2026_changes(
    timezone: str, day: date, utc_start: str, utc_end: str
) -> None:
    assert sessions_on(timezone, day, ("09:00", "17:00")) == [span(day, utc_start, utc_end)]


def test_a_week_computed_in_one_call_changes_offset_on_the_day_of_the_change() -> None:
    weekdays = [WeeklyHours(day, time(9), time(17)) for day in range(7)]
    working = working_intervals(weekdays, "Europe/London", utc(2026, 3, 27), utc(2026, 3, 31))
    assert working == [
        span(date(2026, 3, 27), "09:00", "17:00"),
        span(date(2026, 3, 28), "09:00", "17:00"),
        span(date(2026, 3, 29), "08:00", "16:00"),
        span(date(2026, 3, 30), "08:00", "16:00"),
    ]


SPRING = {"Europe/London": date(2026, 3, 29), "America/New_York": date(2026, 3, 8)}
AUTUMN = {"Europe/London": date(2026, 10, 25), "America/New_York": date(2026, 11, 1)}


def test_london_spring_a_session_across_the_skipped_hour_is_an_hour_shorter() -> None:
    day = SPRING["Europe/London"]
    # 00:30 GMT until 03:00 BST: the clock jumps from 01:00 to 02:00, so 1.5 hours of work.
    assert sessions_on("Europe/London", day, ("00:30", "03:00")) == [span(day, "00:30", "02:00")]


def test_london_spring_a_start_inside_the_skipped_hour_begins_when_the_clock_jumps_past_it() -> None:
    day = SPRING["Europe/London"]
    # 01:30 never shows on the clock that day; work begins at the jump, 02:00 BST (01:00 UTC).
    assert sessions_on("Europe/London", day, ("01:30", "03:00")) == [span(day, "01:00", "02:00")]


def test_london_spring_a_session_wholly_inside_the_skipped_hour_has_no_working_time() -> None:
    assert sessions_on("Europe/London", SPRING["Europe/London"], ("01:15", "01:45")) == []


def test_new_york_spring_a_session_across_the_skipped_hour_is_an_hour_shorter() -> None:
    day = SPRING["America/New_York"]
    # 01:00 EST (06:00 UTC) until 03:00 EDT (07:00 UTC): one hour, not two.
    assert sessions_on("America/New_York", day, ("01:00", "03:00")) == [span(day, "06:00", "07:00")]


def test_new_york_spring_a_skipped_start_moves_to_the_jump_not_forward_by_the_gap() -> None:
    day = SPRING["America/New_York"]
    # 02:30 does not exist; work starts at 03:00 EDT (07:00 UTC). Moving it forward by the gap (to 03:30) would
    # make 02:30-03:15 end before it starts.
    assert sessions_on("America/New_York", day, ("02:30", "04:00")) == [span(day, "07:00", "08:00")]
    assert sessions_on("America/New_York", day, ("02:30", "03:15")) == [span(day, "07:00", "07:15")]
    assert sessions_on("America/New_York", day, ("02:10", "02:50")) == []


def test_london_autumn_a_session_over_the_repeated_hour_covers_both_passes_of_the_clock() -> None:
    day = AUTUMN["Europe/London"]
    # From the first 01:00 (BST, 00:00 UTC) to 02:00 GMT (02:00 UTC): the clock reads 01:xx twice, two hours.
    assert sessions_on("Europe/London", day, ("01:00", "02:00")) == [span(day, "00:00", "02:00")]


def test_london_autumn_a_repeated_time_is_its_first_occurrence() -> None:
    day = AUTUMN["Europe/London"]
    assert sessions_on("Europe/London", day, ("01:15", "01:45")) == [span(day, "00:15", "00:45")]
    # Ending at a repeated time ends at its first occurrence: 00:00 BST (23:00 UTC the day before) to 01:30 BST.
    assert sessions_on("Europe/London", day, ("00:00", "01:30")) == [
        Interval(utc(2026, 10, 24, 23), utc(2026, 10, 25, 0, 30))
    ]


def test_new_york_autumn_the_repeated_hour_counts_once_inside_and_twice_across() -> None:
    day = AUTUMN["America/New_York"]
    assert sessions_on("America/New_York", day, ("01:00", "02:00")) == [span(day, "05:00", "07:00")]
    assert sessions_on("America/New_York", day, ("01:30", "01:45")) == [span(day, "05:30", "05:45")]
    assert sessions_on("America/New_York", day, ("00:30", "01:30")) == [span(day, "04:30", "05:30")]


def test_slots_in_the_repeated_hour_follow_elapsed_time_not_the_clock() -> None:
    working = sessions_on("America/New_York", AUTUMN["America/New_York"], ("01:00", "02:00"))
    offered = slots(working, duration=timedelta(minutes=30), granularity=timedelta(minutes=30))
    assert slot_starts(offered) == ["05:00", "05:30", "06:00", "06:30"]  # 01:00, 01:30 EDT, 01:00, 01:30 EST


CHANGE_DAYS = [
    ("Europe/London", date(2026, 3, 29)),
    ("Europe/London", date(2026, 10, 25)),
    ("America/New_York", date(2026, 3, 8)),
    ("America/New_York", date(2026, 11, 1)),
    ("America/Havana", date(2026, 3, 8)),  # forward at midnight: 00:00 never shows
    ("America/Havana", date(2026, 11, 1)),  # back at 01:00 to 00:00
    ("America/Santiago", date(2026, 4, 4)),  # back at midnight: 23:00-24:00 on the 4th happens twice
    ("America/Santiago", date(2026, 9, 6)),
    ("Australia/Lord_Howe", date(2026, 4, 5)),  # half-hour changes
    ("Australia/Lord_Howe", date(2026, 10, 4)),
]
HALF_HOURS = [time(hour, minute) for hour in (0, 1, 2, 3, 22, 23) for minute in (0, 30)]


@pytest.mark.parametrize(("timezone", "day"), CHANGE_DAYS, ids=[f"{zone}-{day}" for zone, day in CHANGE_DAYS])
def test_every_session_boundary_is_the_first_instant_the_wall_clock_reads_it_or_later(timezone: str, day: date) -> None:
    zone = ZoneInfo(timezone)
    first_minute = datetime.combine(day, time(0), tzinfo=UTC) - timedelta(days=1)
    walls = [(first_minute + index * MINUTE).astimezone(zone).replace(tzinfo=None) for index in range(3 * 24 * 60)]

    def first_reading(clock: time) -> datetime:
        wanted = datetime.combine(day, clock)
        return first_minute + next(index for index, wall in enumerate(walls) if wall >= wanted) * MINUTE

    for starts in HALF_HOURS:
        for ends in (clock for clock in HALF_HOURS if clock > starts):
            expected_start, expected_end = first_reading(starts), first_reading(ends)
            expected = [Interval(expected_start, expected_end)] if expected_start < expected_end else []
            assert sessions_on(timezone, day, (starts.strftime("%H:%M"), ends.strftime("%H:%M"))) == expected, (
                starts,
                ends,
            )


@pytest.mark.parametrize(
    ("timezone", "day", "hours"),
    [
        ("Asia/Kolkata", date(2026, 3, 29), 24),
        ("Europe/London", date(2026, 3, 29), 23),
        ("Europe/London", date(2026, 10, 25), 25),
        ("America/New_York", date(2026, 3, 8), 23),
        ("America/New_York", date(2026, 11, 1), 25),
    ],
)
def test_a_local_day_is_23_or_25_hours_long_on_a_change(timezone: str, day: date, hours: int) -> None:
    whole = local_day(timezone, day)
    assert whole.end - whole.start == timedelta(hours=hours)
    assert whole.start.astimezone(ZoneInfo(timezone)).replace(tzinfo=None) == datetime.combine(day, time(0))


# --- weekly hours, extra sessions, leave, validity -------------------------------------------------------------

KOLKATA = "Asia/Kolkata"
A_MONDAY = date(2026, 3, 9)


def test_a_break_splits_the_day_into_two_intervals() -> None:
    working = sessions_on(KOLKATA, A_MONDAY, ("09:00", "13:00"), ("14:00", "17:00"))
    assert working == [span(A_MONDAY, "03:30", "07:30"), span(A_MONDAY, "08:30", "11:30")]


def test_overlapping_and_touching_hours_merge_into_one_interval() -> None:
    assert sessions_on(KOLKATA, A_MONDAY, ("11:00", "13:00"), ("09:00", "12:00"), ("13:00", "14:00")) == [
        span(A_MONDAY, "03:30", "08:30")
    ]


def test_no_hours_on_a_weekday_means_no_working_time() -> None:
    mondays_only = [WeeklyHours(MONDAY, time(9), time(17))]
    assert working_intervals(mondays_only, "UTC", utc(2026, 3, 10), utc(2026, 3, 16)) == []


def test_hours_apply_only_between_valid_from_and_valid_until_inclusive() -> None:
    every_day = [
        WeeklyHours(day, time(9), time(10), valid_from=date(2026, 3, 11), valid_until=date(2026, 3, 12))
        for day in range(7)
    ]
    working = working_intervals(every_day, "UTC", utc(2026, 3, 9), utc(2026, 3, 16))
    assert [interval.start.date() for interval in working] == [date(2026, 3, 11), date(2026, 3, 12)]


def test_new_hours_take_over_from_their_valid_from_date() -> None:
    hours = [
        WeeklyHours(MONDAY, time(9), time(17), valid_until=date(2026, 3, 15)),
        WeeklyHours(MONDAY, time(10), time(14), valid_from=date(2026, 3, 16)),
    ]
    assert working_intervals(hours, "UTC", utc(2026, 3, 9), utc(2026, 3, 24)) == [
        span(date(2026, 3, 9), "09:00", "17:00"),
        span(date(2026, 3, 16), "10:00", "14:00"),
        span(date(2026, 3, 23), "10:00", "14:00"),
    ]


def test_validity_dates_are_local_dates() -> None:
    # Tuesday 10 March 00:30 in Kolkata is Monday 9 March 19:00 UTC: the rule valid on the 10th applies.
    hours = [WeeklyHours(TUESDAY, time(0, 30), time(1), valid_from=date(2026, 3, 10), valid_until=date(2026, 3, 10))]
    assert working_intervals(hours, KOLKATA, utc(2026, 3, 8), utc(2026, 3, 12)) == [
        Interval(utc(2026, 3, 9, 19), utc(2026, 3, 9, 19, 30))
    ]


def test_an_extra_session_adds_working_time_on_a_day_without_hours() -> None:
    saturday = date(2026, 3, 14)
    extra = [span(saturday, "10:00", "12:00")]
    working = working_intervals(
        [WeeklyHours(MONDAY, time(9), time(17))], "UTC", utc(2026, 3, 14), utc(2026, 3, 15), extra
    )
    assert working == extra


def test_an_extra_session_touching_regular_hours_extends_them_into_one_stretch() -> None:
    hours = [WeeklyHours(MONDAY, time(9), time(12))]
    extra = [span(A_MONDAY, "12:00", "13:00")]
    working = working_intervals(hours, "UTC", utc(2026, 3, 9), utc(2026, 3, 10), extra=extra)
    assert working == [span(A_MONDAY, "09:00", "13:00")]
    # One stretch, one grid: 11:50 (a 20-minute slot across the old 12:00 edge) is offered.
    assert "11:50" in slot_starts(slots(working))


def test_leave_removes_part_of_a_day_across_the_break() -> None:
    hours = [WeeklyHours(MONDAY, time(9), time(13)), WeeklyHours(MONDAY, time(14), time(17))]
    leave = [span(A_MONDAY, "11:00", "15:00")]
    working = working_intervals(hours, "UTC", utc(2026, 3, 9), utc(2026, 3, 10), leave=leave)
    assert working == [span(A_MONDAY, "09:00", "11:00"), span(A_MONDAY, "15:00", "17:00")]


def test_a_whole_local_day_of_leave_is_a_holiday_even_on_a_23_hour_day() -> None:
    hours = [WeeklyHours(day, time(0, 30), time(23, 30)) for day in range(7)]
    holiday = local_day("Europe/London", date(2026, 3, 29))
    working = working_intervals(hours, "Europe/London", utc(2026, 3, 28), utc(2026, 3, 30, 23), leave=[holiday])
    # Saturday 00:30-23:30 GMT, nothing on Sunday, Monday 00:30-23:30 BST.
    assert working == [span(date(2026, 3, 28), "00:30", "23:30"), span(date(2026, 3, 29), "23:30", "22:30")]


def test_leave_also_cancels_extra_sessions() -> None:
    saturday = date(2026, 3, 14)
    extra = [span(saturday, "09:00", "12:00")]
    leave = [span(saturday, "08:00", "10:00"), span(saturday, "11:00", "11:30")]
    working = working_intervals([], "UTC", utc(2026, 3, 14), utc(2026, 3, 15), extra=extra, leave=leave)
    assert working == [span(saturday, "10:00", "11:00"), span(saturday, "11:30", "12:00")]


def test_working_time_is_clipped_to_the_requested_range() -> None:
    hours = [WeeklyHours(MONDAY, time(9), time(17))]
    extra = [Interval(utc(2026, 3, 8, 22), utc(2026, 3, 9, 2))]
    working = working_intervals(hours, "UTC", utc(2026, 3, 9), utc(2026, 3, 9, 12), extra=extra)
    assert working == [span(A_MONDAY, "00:00", "02:00"), span(A_MONDAY, "09:00", "12:00")]
    assert working_intervals(hours, "UTC", utc(2026, 3, 9, 10), utc(2026, 3, 9, 10)) == []


# --- free slots ---------------------------------------------------------------------------------------------

NINE_TO_TEN = [span(A_MONDAY, "09:00", "10:00")]


def test_slots_step_by_the_granularity_and_must_end_within_working_time() -> None:
    offered = slots(NINE_TO_TEN, duration=timedelta(minutes=20), granularity=timedelta(minutes=15))
    assert slot_starts(offered) == ["09:00", "09:15", "09:30"]  # 09:45 would end at 10:05
    assert all(slot.end - slot.start == timedelta(minutes=20) for slot in offered)


def test_a_slot_never_spans_a_break() -> None:
    working = [span(A_MONDAY, "09:00", "10:00"), span(A_MONDAY, "10:30", "11:30")]
    offered = slots(working, duration=timedelta(minutes=30), granularity=timedelta(minutes=30))
    assert slot_starts(offered) == ["09:00", "09:30", "10:30", "11:00"]


def test_the_grid_is_anchored_at_the_start_of_each_working_stretch() -> None:
    working = [span(A_MONDAY, "09:00", "10:00"), span(A_MONDAY, "14:10", "15:10")]
    offered = slots(working, duration=timedelta(minutes=30), granularity=timedelta(minutes=30))
    assert slot_starts(offered) == ["09:00", "09:30", "14:10", "14:40"]


def test_a_busy_interval_blocks_overlapping_slots_and_the_grid_resumes_after_it() -> None:
    busy = [span(A_MONDAY, "09:05", "09:25")]
    offered = slots(NINE_TO_TEN, busy, duration=timedelta(minutes=15), granularity=timedelta(minutes=15))
    assert slot_starts(offered) == ["09:30", "09:45"]  # 09:00 overlaps, 09:15 overlaps, no 09:25


def test_a_slot_may_touch_a_busy_interval_without_a_buffer() -> None:
    busy = [span(A_MONDAY, "09:20", "09:40")]
    assert slot_starts(slots(NINE_TO_TEN, busy)) == ["09:00", "09:40"]


def test_a_buffer_keeps_slots_clear_of_bookings_on_both_sides_but_not_of_working_edges() -> None:
    working = [span(A_MONDAY, "09:00", "11:00")]
    busy = [span(A_MONDAY, "10:00", "10:20")]
    offered = slots(working, busy, buffer=timedelta(minutes=10))
    # Blocked 09:50-10:30; 09:00 (the working edge) needs no buffer, and 10:40 ends at 11:00, the other edge.
    assert slot_starts(offered) == ["09:00", "09:10", "09:20", "09:30", "10:30", "10:40"]


def test_not_before_drops_earlier_slots_and_rounds_up_to_the_grid() -> None:
    offered = slots(NINE_TO_TEN, granularity=timedelta(minutes=15), not_before=at(A_MONDAY, "09:07"))
    assert slot_starts(offered) == ["09:15", "09:30"]
    offered = slots(NINE_TO_TEN, granularity=timedelta(minutes=15), not_before=at(A_MONDAY, "09:30"))
    assert slot_starts(offered) == ["09:30"]


def test_unsorted_overlapping_busy_intervals_and_busy_time_outside_working_time() -> None:
    working = [span(A_MONDAY, "09:00", "10:00"), span(A_MONDAY, "14:00", "15:00")]
    busy = [
        span(A_MONDAY, "14:25", "14:40"),
        span(A_MONDAY, "12:00", "13:00"),
        span(A_MONDAY, "09:00", "09:30"),
        span(A_MONDAY, "09:20", "09:45"),
        span(A_MONDAY, "14:00", "14:10"),
    ]
    offered = slots(working, busy, duration=timedelta(minutes=15), granularity=timedelta(minutes=5))
    assert slot_starts(offered) == ["09:45", "14:10", "14:40", "14:45"]


def test_no_working_time_means_no_slots_and_unsorted_working_time_is_sorted() -> None:
    assert slots([]) == []
    working = [span(A_MONDAY, "14:00", "14:20"), span(A_MONDAY, "09:00", "09:20")]
    assert slot_starts(slots(working)) == ["09:00", "14:00"]


def test_searching_from_mid_session_keeps_the_grid_when_working_time_covers_whole_local_days() -> None:
    hours = [WeeklyHours(MONDAY, time(9), time(13))]
    search_from, search_to = utc(2026, 3, 9, 4, 7), utc(2026, 3, 9, 7)  # 09:37 to 12:30 in Kolkata
    options = {"duration": timedelta(minutes=30), "granularity": timedelta(minutes=30), "not_before": search_from}
    whole_days = covering_local_days(KOLKATA, search_from, search_to)
    assert whole_days == local_day(KOLKATA, A_MONDAY)
    working = working_intervals(hours, KOLKATA, whole_days.start, whole_days.end)
    found = [slot for slot in slots(working, **options) if slot.end <= search_to]
    assert slot_starts(found) == ["04:30", "05:00", "05:30", "06:00", "06:30"]  # 10:00 to 12:00 local
    # Clipping working time at the search start instead would move the grid to 09:37 local.
    clipped = working_intervals(hours, KOLKATA, search_from, search_to)
    assert slot_starts(slots(clipped, **options))[0] == "04:07"


# --- validating a requested booking ----------------------------------------------------------------------------


def test_a_start_on_the_grid_inside_working_time_is_offered() -> None:
    working = [span(A_MONDAY, "09:00", "13:00"), span(A_MONDAY, "14:00", "17:00")]
    twenty, ten = timedelta(minutes=20), timedelta(minutes=10)
    assert slot_is_offered(working, at(A_MONDAY, "09:00"), twenty, ten)
    assert slot_is_offered(working, at(A_MONDAY, "12:40"), twenty, ten)  # ends exactly at 13:00
    assert slot_is_offered(working, at(A_MONDAY, "14:00"), twenty, ten)
    assert not slot_is_offered(working, at(A_MONDAY, "09:05"), twenty, ten)  # off the grid
    assert not slot_is_offered(working, at(A_MONDAY, "12:50"), twenty, ten)  # runs into the break
    assert not slot_is_offered(working, at(A_MONDAY, "08:50"), twenty, ten)  # starts before work
    assert not slot_is_offered(working, at(A_MONDAY, "16:50"), twenty, ten)  # runs past the end
    assert not slot_is_offered(working, at(A_MONDAY, "18:00"), twenty, ten)
    assert not slot_is_offered([], at(A_MONDAY, "09:00"), twenty, ten)


def test_a_slot_across_touching_working_intervals_is_offered_as_one_stretch() -> None:
    working = [span(A_MONDAY, "10:00", "11:00"), span(A_MONDAY, "09:00", "10:00")]
    assert slot_is_offered(working, at(A_MONDAY, "09:50"), timedelta(minutes=20), timedelta(minutes=10))
    assert stretch_containing(working, at(A_MONDAY, "09:50"), at(A_MONDAY, "10:10")) == span(A_MONDAY, "09:00", "11:00")


def test_the_offer_check_accepts_any_offset_for_the_same_instant() -> None:
    kolkata_time = datetime(2026, 3, 9, 14, 30, tzinfo=ZoneInfo(KOLKATA))  # 09:00 UTC
    assert slot_is_offered(NINE_TO_TEN, kolkata_time, timedelta(minutes=30), timedelta(minutes=30))


def test_is_on_grid_counts_whole_steps_from_the_anchor() -> None:
    anchor = at(A_MONDAY, "09:00")
    assert is_on_grid(anchor, at(A_MONDAY, "09:45"), timedelta(minutes=15))
    assert not is_on_grid(anchor, at(A_MONDAY, "09:40"), timedelta(minutes=15))
    assert not is_on_grid(anchor, at(A_MONDAY, "08:45"), timedelta(minutes=15))


# --- bad input -----------------------------------------------------------------------------------------------

NAIVE = datetime(2026, 3, 9, 9, 0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: Interval(NAIVE, utc(2026, 3, 9, 10)),
        lambda: Interval(utc(2026, 3, 9, 9), NAIVE + timedelta(hours=1)),
        lambda: working_intervals([], "UTC", NAIVE, utc(2026, 3, 10)),
        lambda: working_intervals([], "UTC", utc(2026, 3, 9), NAIVE + timedelta(days=1)),
        lambda: slots(NINE_TO_TEN, not_before=NAIVE),
        lambda: slot_is_offered(NINE_TO_TEN, NAIVE, timedelta(minutes=10), timedelta(minutes=10)),
        lambda: covering_local_days("UTC", NAIVE, utc(2026, 3, 10)),
    ],
    ids=["interval-start", "interval-end", "range-start", "range-end", "not-before", "booking-start", "covering"],
)
def test_naive_datetimes_are_refused(call) -> None:
    with pytest.raises(ValueError, match="timezone offset"):
        call()


def test_an_interval_is_stored_in_utc_and_must_not_be_empty() -> None:
    interval = Interval(datetime(2026, 3, 9, 14, 30, tzinfo=ZoneInfo(KOLKATA)), utc(2026, 3, 9, 10))
    assert interval.start == utc(2026, 3, 9, 9) and interval.start.tzinfo is UTC
    with pytest.raises(ValueError, match="end after it starts"):
        Interval(utc(2026, 3, 9, 9), utc(2026, 3, 9, 9))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ((7, time(9), time(10)), "weekday"),
        ((True, time(9), time(10)), "weekday"),
        ((0, time(10), time(9)), "after starts"),
        ((0, time(9), time(9)), "after starts"),
        ((0, time(22), time(0)), "after starts"),  # no session crosses midnight
        ((0, time(9, tzinfo=UTC), time(10)), "without tzinfo"),
        ((0, time(9), time(10), date(2026, 3, 9), date(2026, 3, 8)), "before valid_from"),
        ((0, time(9), time(10), utc(2026, 3, 9)), "local dates"),
    ],
)
def test_invalid_weekly_hours_are_refused(arguments: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        WeeklyHours(*arguments)


def test_an_unknown_timezone_or_a_reversed_range_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown IANA timezone"):
        working_intervals([], "Mars/Olympus_Mons", utc(2026, 3, 9), utc(2026, 3, 10))
    with pytest.raises(ValueError, match="before start"):
        working_intervals([], "UTC", utc(2026, 3, 10), utc(2026, 3, 9))


@pytest.mark.parametrize(
    "options",
    [{"duration": ZERO}, {"granularity": ZERO}, {"granularity": -MINUTE}, {"buffer": -MINUTE}],
)
def test_slot_lengths_must_be_positive_and_the_buffer_not_negative(options: dict) -> None:
    with pytest.raises(ValueError):
        slots(NINE_TO_TEN, **options)


# --- against an independent reference ----------------------------------------------------------------------


def test_31_days_of_a_weekday_clinic_with_two_bookings_a_day_gives_the_counted_number_of_slots() -> None:
    # Kolkata, Monday to Friday 09:00-13:00 and 14:00-17:00; every working day booked 10:00-10:30 and
    # 15:00-15:15. 20-minute slots on a 10-minute grid. Morning: 23 starts (09:00-12:40) less 4 that overlap
    # the booking (09:50-10:20): 19. Afternoon: 17 starts (14:00-16:40) less 3 (14:50-15:10): 14. March 2026
    # has 22 weekdays: 22 x 33 = 726.
    hours = [WeeklyHours(day, time(9), time(13)) for day in range(5)]
    hours += [WeeklyHours(day, time(14), time(17)) for day in range(5)]
    start, end = datetime(2026, 3, 1, tzinfo=ZoneInfo(KOLKATA)), datetime(2026, 4, 1, tzinfo=ZoneInfo(KOLKATA))
    working = working_intervals(hours, KOLKATA, start, end)
    assert len(working) == 44
    busy = []
    for morning, afternoon in zip(working[::2], working[1::2], strict=True):
        busy.append(Interval(morning.start + timedelta(hours=1), morning.start + timedelta(hours=1, minutes=30)))
        busy.append(Interval(afternoon.start + timedelta(hours=1), afternoon.start + timedelta(hours=1, minutes=15)))
    assert len(slots(working, busy, not_before=start)) == 726


def reference_slots(
    hours: Sequence[WeeklyHours],
    timezone: str,
    start: datetime,
    end: datetime,
    busy: Sequence[Interval],
    *,
    duration: int,
    granularity: int,
    buffer: int,
    not_before: datetime,
) -> list[Interval]:
    """Minute by minute, sharing no code with the module: a minute is working when the facility's wall clock
    then reads within a session (true for hours that avoid the daylight-saving hours); a slot start is a whole
    number of granularity steps from the first minute of its run of working minutes."""
    zone = ZoneInfo(timezone)
    minutes = int((end - start) / MINUTE)
    instants = [start + index * MINUTE for index in range(minutes)]
    working = []
    for instant in instants:
        local = instant.astimezone(zone)
        working.append(
            any(rule.weekday == local.weekday() and rule.starts <= local.time() < rule.ends for rule in hours)
        )
    blocked = [False] * minutes
    for interval in busy:
        first = int((interval.start - start) / MINUTE) - buffer
        last = int((interval.end - start) / MINUTE) + buffer
        for index in range(max(first, 0), min(last, minutes)):
            blocked[index] = True
    found = []
    anchor = None
    for index in range(minutes):
        if not working[index]:
            anchor = None
            continue
        if anchor is None:
            anchor = index
        window = range(index, index + duration)
        if (
            (index - anchor) % granularity == 0
            and instants[index] >= not_before
            and index + duration <= minutes
            and all(working[minute] and not blocked[minute] for minute in window)
        ):
            found.append(Interval(instants[index], instants[index] + duration * MINUTE))
    return found


def random_bookings(rng: random.Random, working: Sequence[Interval], count: int) -> list[Interval]:
    bookings = []
    for _ in range(count):
        stretch = rng.choice(working)
        offset = rng.randrange(-30, int((stretch.end - stretch.start) / MINUTE) + 30)
        start = stretch.start + offset * MINUTE
        bookings.append(Interval(start, start + rng.randrange(5, 45) * MINUTE))
    return bookings


def test_31_days_with_400_bookings_match_a_minute_by_minute_reference() -> None:
    # London across its spring change (29 March): Monday to Saturday 08:00-13:00 and 14:00-18:30.
    hours = [WeeklyHours(day, time(8), time(13)) for day in range(6)]
    hours += [WeeklyHours(day, time(14), time(18, 30)) for day in range(6)]
    start, end = utc(2026, 3, 1), utc(2026, 4, 1)
    working = working_intervals(hours, "Europe/London", start, end)
    rng = random.Random(2026)
    busy = random_bookings(rng, working, 400)
    not_before = utc(2026, 3, 3, 11, 7)
    options = {"duration": 20, "granularity": 10, "buffer": 5, "not_before": not_before}
    expected = reference_slots(hours, "Europe/London", start, end, busy, **options)
    found = free_slots(
        working,
        busy,
        duration=timedelta(minutes=20),
        granularity=timedelta(minutes=10),
        buffer=timedelta(minutes=5),
        not_before=not_before,
    )
    assert len(found) == len(expected) > 300
    assert found == expected
    assert all(slot_is_offered(working, slot.start, slot.end - slot.start, timedelta(minutes=10)) for slot in found)


@pytest.mark.parametrize("seed", range(12))
def test_random_small_calendars_match_the_minute_by_minute_reference(seed: int) -> None:
    rng = random.Random(seed)
    timezone = rng.choice(["Asia/Kolkata", "Europe/London", "America/New_York", "UTC"])
    hours = []
    for day in range(7):
        minute = rng.randrange(6 * 60, 10 * 60)
        for _ in range(rng.randrange(0, 3)):
            length = rng.randrange(15, 4 * 60)
            if minute + length >= 23 * 60:
                break
            hours.append(
                WeeklyHours(day, time(minute // 60, minute % 60), time((minute + length) // 60, (minute + length) % 60))
            )
            minute += length + rng.randrange(0, 90)
    start = utc(2026, rng.choice([1, 3, 6, 10, 11]), rng.randrange(1, 25), rng.randrange(0, 24))
    end = start + timedelta(days=rng.randrange(1, 4))
    working = working_intervals(hours, timezone, start, end)
    busy = random_bookings(rng, working, rng.randrange(0, 25)) if working else []
    duration, granularity, buffer = rng.randrange(5, 50), rng.randrange(1, 40), rng.randrange(0, 15)
    not_before = start + rng.randrange(0, 24 * 60) * MINUTE
    options = {"duration": duration, "granularity": granularity, "buffer": buffer, "not_before": not_before}
    expected = reference_slots(hours, timezone, start, end, busy, **options)
    found = free_slots(
        working,
        busy,
        duration=duration * MINUTE,
        granularity=granularity * MINUTE,
        buffer=buffer * MINUTE,
        not_before=not_before,
    )
    assert found == expected
    for slot in found:
        assert slot_is_offered(working, slot.start, duration * MINUTE, granularity * MINUTE)
        if granularity > 1:
            assert not slot_is_offered(working, slot.start + MINUTE, duration * MINUTE, granularity * MINUTE)


def test_placement_names_why_a_slot_is_not_offered() -> None:
    day = [Interval(utc(2026, 5, 4, 9), utc(2026, 5, 4, 12))]
    ten = 10 * MINUTE
    assert placement(day, utc(2026, 5, 4, 9, 30), 2 * ten, ten) is Placement.offered
    assert placement(day, utc(2026, 5, 4, 9, 35), 2 * ten, ten) is Placement.off_grid
    assert placement(day, utc(2026, 5, 4, 11, 50), 2 * ten, ten) is Placement.outside
    assert placement([], utc(2026, 5, 4, 9, 30), 2 * ten, ten) is Placement.outside
