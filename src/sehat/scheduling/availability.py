"""Free appointment time, computed: weekly hours, one-off sessions and leave in; working intervals and free slots
out. Pure functions over frozen dataclasses: no database, no I/O, no clock (the caller passes ``not_before``).

Weekly hours are written on the facility's wall clock (DESIGN §3), so "09:00" stays 09:00 local across a
daylight-saving change and moves by an hour in UTC. Each boundary of a session becomes *the first instant at
which the wall clock reads that time or later*. For an ordinary time that is the one instant it names; the two
daylight-saving cases follow from the same rule:

- a time repeated when clocks go back (01:30 on 25 October 2026 in London) is its first occurrence, the
  ``fold=0`` reading; a session 01:00-02:00 that day therefore lasts two hours (the clock reads 01:xx twice), and
  a session 01:15-01:45 only the first 30 minutes;
- a time skipped when clocks go forward (02:30 on 8 March 2026 in New York) is the moment the clock jumps over
  it (03:00 EDT, 07:00 UTC): a session 02:30-04:00 starts at 03:00 and lasts one hour, and a session lying wholly
  in the skipped hour has no working time at all. This is the same reading as ``tenancy.service.is_open``
  ("in the hour skipped in spring no instant falls"). We chose it over ``zoneinfo``'s own ``fold=0`` reading,
  which would move a skipped time forward by the gap (02:30 to 03:30): that mapping is not monotonic, so a
  session 02:30-03:15 would end before it starts, while a session 02:15-02:45 that day would turn into working
  time 03:15-03:45 that nobody scheduled.

The mapping is monotonic, so a session never ends before it starts; one swallowed by the gap is dropped.
Sessions do not cross midnight (``ends`` is after ``starts`` on the same day): a night session is two rows.

Slots sit on a grid anchored at the start of each working stretch (working time merged, so 09:00-13:00 plus a
one-off 13:00-14:00 is one stretch with one grid; leave that splits a stretch restarts the grid where work resumes)
and step by the granularity. ``working_intervals`` clips to the range it is asked for, and clipping mid-session
moves that stretch's start and so its grid: compute working time over whole local days (``covering_local_days``)
and narrow the search with ``not_before`` and the end instead.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

ZERO = timedelta(0)
ONE_DAY = timedelta(days=1)
MIDNIGHT = time(0)

# Internally a stretch of time is a (start, end) pair of UTC datetimes: cheaper to sort and compare than objects.
_Pair = tuple[datetime, datetime]


def _utc(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must carry a timezone offset (a naive datetime names no instant)")
    # Everything is compared in UTC: two datetimes sharing a ZoneInfo compare by wall clock, fold ignored.
    return value if value.tzinfo is UTC else value.astimezone(UTC)


@dataclass(frozen=True, slots=True, order=True)
class Interval:
    """A half-open stretch of time ``[start, end)``, stored in UTC. Aware datetimes in any zone are accepted and
    converted; naive ones and empty or reversed intervals are refused with ``ValueError``."""

    start: datetime
    end: datetime

    def __post_init__(self) -> None:
        start, end = _utc(self.start, "start"), _utc(self.end, "end")
        if end <= start:
            raise ValueError("an interval must end after it starts")
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)


def stored_interval(start: datetime, end: datetime) -> Interval:
    """An ``Interval`` from a stored row: the database hands back UTC instants, and its check constraint keeps
    ``end`` after ``start``, so the validation a month of bookings would repeat is skipped."""
    return _interval(start, end)


def _interval(start: datetime, end: datetime) -> Interval:
    """An ``Interval`` from values already checked (UTC, ordered): skips validation on the hot path."""
    interval = object.__new__(Interval)
    object.__setattr__(interval, "start", start)
    object.__setattr__(interval, "end", end)
    return interval


@dataclass(frozen=True, slots=True)
class WeeklyHours:
    """One recurring session of a practitioner at a facility, on the facility's wall clock: every ``weekday``
    (0 is Monday, 6 is Sunday) from ``starts`` (inclusive) to ``ends`` (exclusive), on local dates from
    ``valid_from`` to ``valid_until`` (both inclusive; None is unbounded). A day with a break is two sessions
    (09:00-13:00 and 14:00-17:00). ``ends`` is after ``starts``: no session crosses midnight."""

    weekday: int
    starts: time
    ends: time
    valid_from: date | None = None
    valid_until: date | None = None

    def __post_init__(self) -> None:
        if isinstance(self.weekday, bool) or not isinstance(self.weekday, int) or not 0 <= self.weekday <= 6:
            raise ValueError("weekday must be 0 (Monday) to 6 (Sunday)")
        if self.starts.tzinfo is not None or self.ends.tzinfo is not None:
            raise ValueError("weekly hours are wall-clock times of the facility, without tzinfo")
        if self.ends <= self.starts:
            raise ValueError("ends must be after starts (a session past midnight is two sessions)")
        if isinstance(self.valid_from, datetime) or isinstance(self.valid_until, datetime):
            raise ValueError("valid_from and valid_until are local dates, not datetimes")
        if self.valid_from and self.valid_until and self.valid_until < self.valid_from:
            raise ValueError("valid_until is before valid_from")

    def applies_on(self, day: date) -> bool:
        return (
            day.weekday() == self.weekday
            and (self.valid_from is None or self.valid_from <= day)
            and (self.valid_until is None or day <= self.valid_until)
        )


def _zone(timezone: str) -> ZoneInfo:
    try:
        return ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError) as error:
        raise ValueError(f"unknown IANA timezone: {timezone!r}") from error


def _first_instant_at(zone: ZoneInfo, day: date, clock: time) -> datetime:
    """The first instant (UTC) at which the wall clock in ``zone`` reads ``clock`` on ``day``, or later."""
    wall = datetime.combine(day, clock)
    # fold=0: a repeated time reads with the offset from before the change, which is its first occurrence.
    instant = wall.replace(tzinfo=zone).astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return instant
    # ``wall`` does not exist: the clock jumps over it. fold=0 read it with the offset from before the jump and
    # so landed after the jump; fold=1 with the offset from after it and landed before. The jump lies between;
    # tz database transitions fall on whole seconds, so bisecting on seconds finds it exactly (about 12 steps,
    # on one or two days a year).
    before = int(wall.replace(tzinfo=zone, fold=1).astimezone(UTC).timestamp())  # reads earlier than ``wall``
    after = int(instant.timestamp()) + 1  # reads later than ``wall``
    while after - before > 1:
        middle = (before + after) // 2
        if datetime.fromtimestamp(middle, zone).replace(tzinfo=None) >= wall:
            after = middle
        else:
            before = middle
    return datetime.fromtimestamp(after, UTC)


def local_day(timezone: str, day: date) -> Interval:
    """The local calendar ``day`` at ``timezone`` as UTC instants (23 or 25 hours long on a daylight-saving
    change): the form a whole-day holiday or leave takes."""
    zone = _zone(timezone)
    return _interval(_first_instant_at(zone, day, MIDNIGHT), _first_instant_at(zone, day + ONE_DAY, MIDNIGHT))


def covering_local_days(timezone: str, start: datetime, end: datetime) -> Interval:
    """``[start, end)`` widened to whole local days at ``timezone``, so that ``working_intervals`` over it cuts
    no session short and every slot grid keeps its anchor."""
    zone = _zone(timezone)
    start, end = _utc(start, "start"), _utc(end, "end")
    if end <= start:
        raise ValueError("end must be after start")
    first = _first_instant_at(zone, start.astimezone(zone).date(), MIDNIGHT)
    last_local = end.astimezone(zone)
    last = local_day(timezone, last_local.date())
    # An end exactly at local midnight already is a day boundary.
    stop = end if last.start == end else last.end
    return _interval(min(first, start), max(stop, end))


def _merged(pairs: Iterable[_Pair]) -> list[_Pair]:
    """Sorted, with overlapping and touching stretches joined."""
    result: list[_Pair] = []
    for start, end in sorted(pairs):
        if result and start <= result[-1][1]:
            if end > result[-1][1]:
                result[-1] = (result[-1][0], end)
        else:
            result.append((start, end))
    return result


def _without(stretches: list[_Pair], holes: list[_Pair]) -> list[_Pair]:
    """Merged ``stretches`` minus merged ``holes``, in one sweep over both."""
    result: list[_Pair] = []
    first_hole = 0
    for start, end in stretches:
        while first_hole < len(holes) and holes[first_hole][1] <= start:
            first_hole += 1
        cursor = start
        index = first_hole
        while index < len(holes) and holes[index][0] < end:
            hole_start, hole_end = holes[index]
            if hole_start > cursor:
                result.append((cursor, hole_start))
            cursor = max(cursor, hole_end)
            index += 1
        if cursor < end:
            result.append((cursor, end))
    return result


def working_intervals(
    hours: Sequence[WeeklyHours],
    timezone: str,
    start: datetime,
    end: datetime,
    extra: Sequence[Interval] = (),
    leave: Sequence[Interval] = (),
) -> list[Interval]:
    """The UTC intervals within ``[start, end)`` in which the practitioner works: each local day's weekly hours
    (read as the module docstring says), plus the one-off ``extra`` sessions, minus ``leave`` (which also wins
    over extra sessions); sorted, with overlapping and touching intervals merged."""
    zone = _zone(timezone)
    start, end = _utc(start, "start"), _utc(end, "end")
    if end < start:
        raise ValueError("end must not be before start")
    by_weekday: dict[int, list[WeeklyHours]] = {}
    for session in hours:
        by_weekday.setdefault(session.weekday, []).append(session)
    pairs: list[_Pair] = []
    # One local day either side: the local date of an instant near midnight on a change day can mislead.
    day = start.astimezone(zone).date() - ONE_DAY
    last_day = end.astimezone(zone).date() + ONE_DAY
    while day <= last_day:
        for session in by_weekday.get(day.weekday(), ()):
            if session.applies_on(day):
                session_start = _first_instant_at(zone, day, session.starts)
                session_end = _first_instant_at(zone, day, session.ends)
                if session_start < session_end:  # else wholly inside a skipped hour
                    pairs.append((session_start, session_end))
        day += ONE_DAY
    pairs.extend((interval.start, interval.end) for interval in extra)
    clipped = (
        (max(pair_start, start), min(pair_end, end))
        for pair_start, pair_end in pairs
        if pair_start < end and pair_end > start
    )
    working = _without(_merged(clipped), _merged((interval.start, interval.end) for interval in leave))
    return [_interval(pair_start, pair_end) for pair_start, pair_end in working]


def _steps_to_reach(distance: timedelta, step: timedelta) -> int:
    """How many steps of ``step`` it takes to cover ``distance`` (ceiling division; 0 for no distance)."""
    return -(-distance // step)


def _check_lengths(duration: timedelta, granularity: timedelta) -> None:
    if duration <= ZERO:
        raise ValueError("duration must be positive")
    if granularity <= ZERO:
        raise ValueError("granularity must be positive")


def free_slots(
    working: Sequence[Interval],
    busy: Sequence[Interval],
    *,
    duration: timedelta,
    granularity: timedelta,
    buffer: timedelta,
    not_before: datetime,
) -> list[Interval]:
    """Every slot of ``duration`` that starts on the grid (anchored at the start of each merged working stretch,
    stepping by ``granularity``) at or after ``not_before``, lies wholly in working time, and keeps ``buffer``
    clear of every busy interval (appointments, holds) on both sides. The edges of working time need no buffer.

    One sort of each input, then a single sweep: a collision jumps straight past the busy interval, so the cost
    is proportional to working stretches + busy intervals + slots returned."""
    _check_lengths(duration, granularity)
    if buffer < ZERO:
        raise ValueError("buffer must not be negative")
    not_before = _utc(not_before, "not_before")
    stretches = _merged((interval.start, interval.end) for interval in working)
    blocked = _merged((interval.start - buffer, interval.end + buffer) for interval in busy)
    count = len(blocked)
    slots: list[Interval] = []
    next_block = 0  # only moves forward: candidate starts only grow, across stretches too
    for anchor, stop in stretches:
        candidate = anchor
        if not_before > anchor:
            candidate = anchor + _steps_to_reach(not_before - anchor, granularity) * granularity
        last_start = stop - duration
        while candidate <= last_start:
            while next_block < count and blocked[next_block][1] <= candidate:
                next_block += 1
            candidate_end = candidate + duration
            if next_block < count and blocked[next_block][0] < candidate_end:
                # Every start from here to the block's end collides with it: jump to the first grid point after.
                candidate = anchor + _steps_to_reach(blocked[next_block][1] - anchor, granularity) * granularity
                continue
            slots.append(_interval(candidate, candidate_end))
            candidate += granularity
    return slots


def stretch_containing(working: Sequence[Interval], start: datetime, end: datetime) -> Interval | None:
    """The merged working stretch that holds all of ``[start, end)``, or None if some of it is not working time."""
    start, end = _utc(start, "start"), _utc(end, "end")
    stretches = _merged((interval.start, interval.end) for interval in working)
    index = bisect_right(stretches, (start, datetime.max.replace(tzinfo=UTC))) - 1
    if index < 0:
        return None
    stretch_start, stretch_end = stretches[index]
    return _interval(stretch_start, stretch_end) if start < end <= stretch_end else None


def is_on_grid(anchor: datetime, start: datetime, granularity: timedelta) -> bool:
    """Whether ``start`` is a whole number of ``granularity`` steps at or after ``anchor``."""
    if granularity <= ZERO:
        raise ValueError("granularity must be positive")
    offset = _utc(start, "start") - _utc(anchor, "anchor")
    return offset >= ZERO and offset % granularity == ZERO


class Placement(StrEnum):
    """Where a requested slot stands on an empty calendar."""

    offered = "offered"
    # Not wholly inside one working stretch (outside the hours, on leave, across a break).
    outside = "outside"
    # Inside working time, but not on that stretch's grid.
    off_grid = "off_grid"


def placement(working: Sequence[Interval], start: datetime, duration: timedelta, granularity: timedelta) -> Placement:
    """Whether ``free_slots`` would offer ``[start, start + duration)`` on an empty calendar, and if not, why.
    Collisions with other bookings and the buffer are the booking transaction's to check."""
    _check_lengths(duration, granularity)
    stretch = stretch_containing(working, start, start + duration)
    if stretch is None:
        return Placement.outside
    return Placement.offered if is_on_grid(stretch.start, start, granularity) else Placement.off_grid


def slot_is_offered(working: Sequence[Interval], start: datetime, duration: timedelta, granularity: timedelta) -> bool:
    """Whether ``free_slots`` would offer ``[start, start + duration)`` on an empty calendar: it lies wholly in
    one working stretch and on that stretch's grid."""
    return placement(working, start, duration, granularity) is Placement.offered
