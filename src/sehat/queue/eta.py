"""Waiting-time estimates for one OPD queue, kept in memory and recomputed on every event (issue 6).

The database stays the source of truth; a server rebuilds this from it on start. What it holds:

- **Who waits, in the order they will be called**: emergency, then priority (elderly, pregnant, disabled),
  then booked, then walk-in. Booked patients are ordered by appointment time, the others by arrival; a token
  transferred from another queue keeps its arrival time. Ties go to whoever was added first.
- **Who is being seen**: per room, the token in consultation, since when, and its planned length.
- **The pace**: a rolling median of how long consultations took against what was planned for them (the
  appointment type's duration), over the last ``PACE_WINDOW`` consultations. Before any has finished the
  pace is 1: the plan is the estimate. A practitioner who takes 30 minutes for a planned 20 has a pace of
  1.5, and every planned length ahead is stretched by it.
- **Pauses and delays**: while the queue is paused nobody is called, so estimates start from the announced
  end of the pause (or from now, and drift with the clock, when none was announced); a reported delay
  ("running 20 minutes late") means nobody is called before it runs out.

The estimate of the k-th waiting token is the moment the rooms get through the work ahead of it: the
remaining time of each consultation under way (never less than ``OVERRUN_FLOOR`` of its stretched length, so
a consultation that runs long keeps pushing everyone back as the clock moves), plus the stretched planned
length of every token ahead, divided among the rooms serving the queue. With one room this is exact for the
plan; with several it is the usual work-over-servers approximation.

Times are seconds since the epoch, as floats: a recomputation turns 500 waiting tokens into 500 estimates
with two passes in C (``itertools.accumulate`` and a comprehension), and the callers format only the few they
show (a board's next tokens, a patient's own).
"""

from __future__ import annotations

import bisect
import itertools
import statistics
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass
from enum import IntEnum

PACE_WINDOW = 20
# A consultation past its expected length is still expected to need this share of it.
OVERRUN_FLOOR = 0.2


class PriorityClass(IntEnum):
    """The order classes are called in: a lower value first."""

    emergency = 0
    priority = 1
    booked = 2
    walk_in = 3


@dataclass(frozen=True)
class Consultation:
    token: Hashable
    started_at: float
    planned_seconds: float


class QueueEstimator:
    """One queue's waiting line, rooms, pace, pauses and delays, and the estimates that follow from them."""

    def __init__(self, *, rooms: int = 1) -> None:
        if rooms < 1:
            raise ValueError("a queue is served by at least one room")
        self._rooms = rooms
        # The waiting line as three parallel lists in call order: sort keys, tokens, planned lengths.
        self._keys: list[tuple[int, float, int]] = []
        self._tokens: list[Hashable] = []
        self._planned: list[float] = []
        self._key_of: dict[Hashable, tuple[int, float, int]] = {}
        self._added = itertools.count()
        self._in_consultation: dict[Hashable, Consultation] = {}  # by room
        self._ratios: deque[float] = deque(maxlen=PACE_WINDOW)
        self._pace = 1.0
        self._paused_until: float | None = None
        self._paused = False
        self._delayed_until = 0.0

    # --- the line --------------------------------------------------------------------------------------

    def add_waiting(
        self,
        token: Hashable,
        priority: PriorityClass,
        order_time: float,
        planned_seconds: float,
        *,
        tiebreak: int | None = None,
    ) -> None:
        """Put ``token`` in line: ``order_time`` is the appointment's start for a booked token, otherwise
        the arrival (kept across a transfer). Equal times go by ``tiebreak`` (a token's number, so that a copy
        rebuilt from the database orders them alike), or else by who was added first."""
        if token in self._key_of:
            raise ValueError("the token is already waiting")
        key = (int(priority), order_time, next(self._added) if tiebreak is None else tiebreak)
        position = bisect.bisect(self._keys, key)
        self._keys.insert(position, key)
        self._tokens.insert(position, token)
        self._planned.insert(position, planned_seconds)
        self._key_of[token] = key

    def remove_waiting(self, token: Hashable) -> None:
        """Out of the line: called, skipped, cancelled or transferred away."""
        key = self._key_of.pop(token)
        position = bisect.bisect_left(self._keys, key)
        del self._keys[position], self._tokens[position], self._planned[position]

    def is_waiting(self, token: Hashable) -> bool:
        return token in self._key_of

    def next_token(self) -> Hashable | None:
        """Who the policy calls next, if anyone may be called: nobody while the queue is paused."""
        if self._paused or not self._tokens:
            return None
        return self._tokens[0]

    def waiting(self) -> list[Hashable]:
        return list(self._tokens)

    @property
    def waiting_count(self) -> int:
        return len(self._tokens)

    # --- the rooms and the pace -----------------------------------------------------------------------

    def start_consultation(self, room: Hashable, token: Hashable, at: float, planned_seconds: float) -> None:
        if room in self._in_consultation:
            raise ValueError("the room already has a consultation under way")
        if len(self._in_consultation) >= self._rooms:
            raise ValueError("every room serving the queue is busy")
        self._in_consultation[room] = Consultation(token, at, planned_seconds)

    def finish_consultation(self, room: Hashable, at: float) -> float:
        """End the room's consultation; its length against its plan joins the pace. Returns the length."""
        consultation = self._in_consultation.pop(room)
        length = max(0.0, at - consultation.started_at)
        self.remember_consultation(length, consultation.planned_seconds)
        return length

    def vacate(self, room: Hashable) -> None:
        """The room's patient did not come (skipped): the room is free and the pace learns nothing."""
        del self._in_consultation[room]

    def remember_consultation(self, length_seconds: float, planned_seconds: float) -> None:
        """A finished consultation joins the pace: also how a rebuild from the database replays the last ones."""
        if planned_seconds > 0:
            self._ratios.append(length_seconds / planned_seconds)
            self._pace = statistics.median(self._ratios)

    def in_consultation(self, room: Hashable) -> Hashable | None:
        """The token the room is seeing, if any."""
        consultation = self._in_consultation.get(room)
        return consultation.token if consultation is not None else None

    @property
    def pace(self) -> float:
        return self._pace

    # --- pauses and delays ----------------------------------------------------------------------------

    def pause(self, until: float | None = None) -> None:
        self._paused, self._paused_until = True, until

    def resume(self) -> None:
        self._paused, self._paused_until = False, None

    @property
    def paused(self) -> bool:
        return self._paused

    def report_delay(self, at: float, delay_seconds: float) -> None:
        """ "Running ``delay_seconds`` late", as of ``at``: nobody is called before it has passed. A new report
        replaces the last one."""
        self._delayed_until = at + max(0.0, delay_seconds)

    # --- the estimates --------------------------------------------------------------------------------

    def estimates(self, now: float) -> list[float]:
        """The expected call time of every waiting token, in call order (``waiting()``'s order)."""
        start = now
        if self._paused:
            start = max(start, self._paused_until or now)
        start = max(start, self._delayed_until)
        pace = self._pace
        floor = OVERRUN_FLOOR * pace
        under_way = 0.0
        for consultation in self._in_consultation.values():
            expected = consultation.planned_seconds * pace
            # The part of the consultation still to come after ``start``: a pause or a delay runs meanwhile.
            remaining = consultation.started_at + expected - start
            under_way += max(remaining, consultation.planned_seconds * floor)
        share = pace / self._rooms
        base = start + under_way / self._rooms
        # The k-th token waits for the work of the k tokens ahead of it.
        ahead = itertools.accumulate(self._planned, initial=0.0)
        return [base + work * share for work in itertools.islice(ahead, len(self._planned))]
