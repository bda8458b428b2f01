"""Waiting-time estimates of one queue (``queue.eta``): the order tokens are called in, and how each event moves
every waiting token's expected call time. Times are seconds; the clock is whatever ``now`` the test passes."""

from __future__ import annotations

import pytest

from sehat.queue.eta import OVERRUN_FLOOR, PACE_WINDOW, PriorityClass, QueueEstimator

MINUTE = 60.0
NOW = 1_800_000_000.0  # a fixed instant; every time below is relative to it


def line(*tokens: tuple[str, PriorityClass, float], rooms: int = 1, planned: float = 10 * MINUTE) -> QueueEstimator:
    estimator = QueueEstimator(rooms=rooms)
    for token, priority, order_minutes in tokens:
        estimator.add_waiting(token, priority, NOW + order_minutes * MINUTE, planned)
    return estimator


def minutes_from_now(estimates: list[float], now: float = NOW) -> list[float]:
    return [round((estimate - now) / MINUTE, 6) for estimate in estimates]


def test_emergency_then_priority_then_booked_by_appointment_time_then_walk_ins_by_arrival() -> None:
    estimator = line(
        ("walk-in early", PriorityClass.walk_in, -30),
        ("booked 10:20", PriorityClass.booked, 20),
        ("elderly", PriorityClass.priority, 5),
        ("booked 10:00", PriorityClass.booked, 0),
        ("walk-in late", PriorityClass.walk_in, -10),
        ("emergency", PriorityClass.emergency, 10),
    )
    assert estimator.waiting() == [
        "emergency",
        "elderly",
        "booked 10:00",
        "booked 10:20",
        "walk-in early",
        "walk-in late",
    ]
    assert estimator.next_token() == "emergency"


def test_a_transferred_token_keeps_its_arrival_time_and_goes_ahead_of_later_arrivals() -> None:
    estimator = line(("arrived 09:40", PriorityClass.walk_in, -20), ("arrived 09:50", PriorityClass.walk_in, -10))
    estimator.add_waiting("transferred, arrived 09:45", PriorityClass.walk_in, NOW - 15 * MINUTE, 10 * MINUTE)
    assert estimator.waiting() == ["arrived 09:40", "transferred, arrived 09:45", "arrived 09:50"]


def test_the_same_arrival_time_is_called_in_the_order_added() -> None:
    estimator = line(("first", PriorityClass.walk_in, 0), ("second", PriorityClass.walk_in, 0))
    estimator.remove_waiting("first")
    estimator.add_waiting("first", PriorityClass.walk_in, NOW, 10 * MINUTE)
    assert estimator.waiting() == ["second", "first"]


def test_with_one_room_each_token_waits_for_the_consultation_under_way_and_everyone_ahead() -> None:
    estimator = line(*[(f"GM-{n}", PriorityClass.walk_in, n) for n in range(1, 5)])
    estimator.start_consultation("room 1", "GM-0", NOW - 4 * MINUTE, 10 * MINUTE)
    assert minutes_from_now(estimator.estimates(NOW)) == [6, 16, 26, 36]


def test_calling_the_next_token_moves_everyone_up() -> None:
    estimator = line(*[(f"GM-{n}", PriorityClass.walk_in, n) for n in range(1, 4)])
    assert minutes_from_now(estimator.estimates(NOW)) == [0, 10, 20]
    called = estimator.next_token()
    estimator.remove_waiting(called)
    estimator.start_consultation("room 1", called, NOW, 10 * MINUTE)
    assert estimator.waiting() == ["GM-2", "GM-3"]
    assert minutes_from_now(estimator.estimates(NOW)) == [10, 20]


def test_a_reported_delay_pushes_every_estimate_back_until_it_has_passed() -> None:
    estimator = line(*[(f"GM-{n}", PriorityClass.walk_in, n) for n in range(1, 4)])
    before = estimator.estimates(NOW)
    estimator.report_delay(NOW, 20 * MINUTE)
    assert minutes_from_now(estimator.estimates(NOW)) == [20, 30, 40]
    assert all(after > earlier for after, earlier in zip(estimator.estimates(NOW), before, strict=True))
    # Half an hour later the delay is over: estimates count from the clock again.
    later = NOW + 30 * MINUTE
    assert minutes_from_now(estimator.estimates(later), later) == [0, 10, 20]


def test_a_consultation_that_runs_long_keeps_pushing_the_estimates_back_as_the_clock_moves() -> None:
    estimator = line(("GM-2", PriorityClass.walk_in, 1))
    estimator.start_consultation("room 1", "GM-1", NOW, 10 * MINUTE)
    on_time = estimator.estimates(NOW + 5 * MINUTE)[0]
    assert on_time == NOW + 10 * MINUTE
    running_long = [NOW + minutes * MINUTE for minutes in (12, 15, 20)]
    estimates = [estimator.estimates(moment)[0] for moment in running_long]
    # Past its expected end the consultation is still expected to need a share of its length.
    assert estimates == [moment + OVERRUN_FLOOR * 10 * MINUTE for moment in running_long]
    assert estimates == sorted(estimates) and estimates[0] > on_time


def test_the_pace_of_recent_consultations_stretches_the_planned_lengths_ahead() -> None:
    estimator = line(*[(f"GM-{n}", PriorityClass.walk_in, n) for n in range(10, 13)])
    clock = NOW
    for number in range(3):
        estimator.start_consultation("room 1", f"seen-{number}", clock, 10 * MINUTE)
        clock += 15 * MINUTE
        assert estimator.finish_consultation("room 1", clock) == 15 * MINUTE
    assert estimator.pace == 1.5
    assert minutes_from_now(estimator.estimates(clock), clock) == [0, 15, 30]


def test_the_pace_is_a_median_of_the_last_consultations_only() -> None:
    estimator = QueueEstimator()
    clock = NOW
    lengths = [60.0] * 5 + [10.0] * PACE_WINDOW  # five very long ones, then a full window of short ones
    for number, minutes in enumerate(lengths):
        estimator.start_consultation("room 1", number, clock, 10 * MINUTE)
        clock += minutes * MINUTE
        estimator.finish_consultation("room 1", clock)
    assert estimator.pace == 1.0
    estimator.start_consultation("room 1", "outlier", clock, 10 * MINUTE)
    estimator.finish_consultation("room 1", clock + 300 * MINUTE)
    assert estimator.pace == 1.0  # one outlier does not move a median


def test_a_paused_queue_calls_nobody_and_counts_from_the_announced_end_of_the_pause() -> None:
    estimator = line(("GM-1", PriorityClass.walk_in, 0), ("GM-2", PriorityClass.walk_in, 1))
    estimator.pause(until=NOW + 15 * MINUTE)
    assert estimator.next_token() is None
    assert minutes_from_now(estimator.estimates(NOW)) == [15, 25]
    estimator.resume()
    assert estimator.next_token() == "GM-1"
    assert minutes_from_now(estimator.estimates(NOW)) == [0, 10]


def test_a_pause_without_an_announced_end_lets_the_estimates_drift_with_the_clock() -> None:
    estimator = line(("GM-1", PriorityClass.walk_in, 0))
    estimator.pause()
    later = NOW + 40 * MINUTE
    assert estimator.estimates(later) == [later]


def test_two_rooms_share_the_work_ahead_of_each_token_an_estimate_not_a_timetable() -> None:
    # Work over servers: with both rooms free the second token is estimated at half a consultation, not 0.
    estimator = line(*[(f"GM-{n}", PriorityClass.walk_in, n) for n in range(1, 5)], rooms=2)
    assert minutes_from_now(estimator.estimates(NOW)) == [0, 5, 10, 15]
    estimator.start_consultation("room 1", "GM-0", NOW, 10 * MINUTE)
    estimator.start_consultation("room 2", "GM-00", NOW, 10 * MINUTE)
    with pytest.raises(ValueError):
        estimator.start_consultation("room 3", "GM-000", NOW, 10 * MINUTE)
    assert minutes_from_now(estimator.estimates(NOW)) == [10, 15, 20, 25]


def test_a_token_cannot_wait_twice_in_one_queue() -> None:
    estimator = line(("GM-1", PriorityClass.walk_in, 0))
    with pytest.raises(ValueError):
        estimator.add_waiting("GM-1", PriorityClass.emergency, NOW, 10 * MINUTE)
    assert estimator.waiting() == ["GM-1"]
