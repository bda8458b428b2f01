"""Each queue's line, rooms and estimates in memory, per server process, kept current by version.

The database is the source of truth; a ``LiveQueue`` is a copy that makes recomputing the estimates after every
event cheap (``queue.eta``). Every change of a queue bumps ``queues.version`` under the queue row's lock, so:

- an operation holding the lock ``take``s the copy: if its version is the one just before the row's, the copy
  is current and the operation updates it in step with the rows; if it is older (another server changed the
  queue), it catches up by reading only the tokens changed since its version (``queue_tokens.changed_version``);
  with no copy at all it is built from the rows. The lock keeps the rows still meanwhile;
- after the commit, ``keep`` puts it back under the new version. A transaction that rolls back never puts its
  copy back, so a half-applied change is never seen;
- a reader without the lock uses the copy when its version equals the row's, and otherwise builds one for
  itself, kept only when it was read in one snapshot (``snapshot=True``: the tokens and the version agree).

What leaves this module for boards and patients' own views is labels, rooms, statuses and times: never a
patient identifier.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.queue.eta import PACE_WINDOW, PriorityClass, QueueEstimator
from sehat.queue.models import Queue, QueueRoom, QueueToken, TokenStatus

# How many of the next tokens a board shows per queue.
BOARD_NEXT_TOKENS = 8


@dataclass(frozen=True)
class LineEntry:
    token_id: uuid.UUID
    label: str
    position: int
    estimated_call_at: float


def order_time(token: QueueToken) -> float:
    """A booked patient is ordered by appointment time, everyone else by arrival (kept across a transfer)."""
    if token.priority == "booked" and token.appointment_at is not None:
        return token.appointment_at.timestamp()
    return token.arrived_at.timestamp()


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


class LiveQueue:
    def __init__(self, queue: Queue, rooms: list[QueueRoom]) -> None:
        self.queue_id = queue.id
        self.name = queue.name
        self.prefix = queue.prefix
        self.rooms: dict[uuid.UUID, str] = {room.id: room.name for room in sorted(rooms, key=lambda r: r.name)}
        self.estimator = QueueEstimator(rooms=max(1, len(self.rooms)))
        self.labels: dict[uuid.UUID, str] = {}
        # Per room: the token called to it or being seen there, and which of the two.
        self.in_room: dict[uuid.UUID, tuple[uuid.UUID, str]] = {}
        self.paused_until: datetime | None = None
        self.delayed_until: datetime | None = None
        self.apply_queue_row(queue)

    # --- events, applied in step with the rows -----------------------------------------------------------

    def apply_queue_row(self, queue: Queue) -> None:
        """Pause and delay as the row says them."""
        if queue.paused:
            self.estimator.pause(queue.paused_until.timestamp() if queue.paused_until else None)
        else:
            self.estimator.resume()
        self.paused_until = queue.paused_until if queue.paused else None
        self.delayed_until = queue.delayed_until
        delayed = queue.delayed_until.timestamp() if queue.delayed_until else 0.0
        self.estimator.report_delay(delayed, 0.0)

    def join(self, token: QueueToken) -> None:
        self.labels[token.id] = token.label
        self.estimator.add_waiting(
            token.id, PriorityClass[token.priority], order_time(token), token.planned_seconds, tiebreak=token.number
        )

    def leave(self, token_id: uuid.UUID) -> None:
        self.estimator.remove_waiting(token_id)
        del self.labels[token_id]

    def call(self, token: QueueToken, room_id: uuid.UUID, at: datetime) -> None:
        self.estimator.remove_waiting(token.id)
        # The room is taken from the call: walking in is part of what a consultation costs the line.
        self.estimator.start_consultation(room_id, token.id, at.timestamp(), token.planned_seconds)
        self.in_room[room_id] = (token.id, TokenStatus.called)

    def start(self, room_id: uuid.UUID) -> None:
        token_id, _ = self.in_room[room_id]
        self.in_room[room_id] = (token_id, TokenStatus.in_consultation)

    def finish(self, room_id: uuid.UUID, at: datetime) -> None:
        token_id, _ = self.in_room.pop(room_id)
        self.estimator.finish_consultation(room_id, at.timestamp())
        self.labels.pop(token_id, None)

    def vacate(self, room_id: uuid.UUID) -> None:
        token_id, _ = self.in_room.pop(room_id)
        self.estimator.vacate(room_id)
        self.labels.pop(token_id, None)

    def occupy(self, token: QueueToken) -> None:
        """A token called to its room (or being seen there) as the rows say it."""
        assert token.room_id is not None and token.called_at is not None
        self.labels[token.id] = token.label
        self.estimator.start_consultation(token.room_id, token.id, token.called_at.timestamp(), token.planned_seconds)
        self.in_room[token.room_id] = (token.id, token.status)

    def absorb(self, changed: list[QueueToken]) -> None:
        """Bring tokens changed elsewhere (by another server) to their latest state, in the order of their last
        change. Everyone is taken out first, then put where they are now: a token's last change may come after
        another's that took its room (skipped, the room given to the next, then recalled)."""
        for token in changed:
            if self.estimator.is_waiting(token.id):
                self.leave(token.id)
            else:
                room_id = self.room_of(token.id)
                if room_id is not None:
                    self.vacate(room_id)
        for token in changed:
            if token.status == TokenStatus.waiting:
                self.join(token)
            elif token.status in (TokenStatus.called, TokenStatus.in_consultation):
                self.occupy(token)
            elif token.completed_at is not None and token.called_at is not None:
                seconds = (token.completed_at - token.called_at).total_seconds()
                self.estimator.remember_consultation(seconds, token.planned_seconds)

    # --- what follows from them --------------------------------------------------------------------------

    def next_token(self) -> uuid.UUID | None:
        token: Any = self.estimator.next_token()
        return token

    def room_of(self, token_id: uuid.UUID) -> uuid.UUID | None:
        for room_id, (held, _) in self.in_room.items():
            if held == token_id:
                return room_id
        return None

    def line(self, now: datetime, *, limit: int | None = None) -> list[LineEntry]:
        tokens = self.estimator.waiting()
        estimates = self.estimator.estimates(now.timestamp())
        count = len(tokens) if limit is None else min(limit, len(tokens))
        labels = self.labels
        return [
            LineEntry(tokens[index], labels[tokens[index]], index + 1, estimates[index])  # type: ignore[index]
            for index in range(count)
        ]

    def place_of(self, token_id: uuid.UUID, now: datetime) -> LineEntry | None:
        tokens = self.estimator.waiting()
        try:
            index = tokens.index(token_id)
        except ValueError:
            return None
        estimate = self.estimator.estimates(now.timestamp())[index]
        return LineEntry(token_id, self.labels[token_id], index + 1, estimate)

    def public_state(self, now: datetime) -> dict[str, Any]:
        """What a lobby board shows of this queue: rooms and their tokens, the next tokens with their estimated
        waits, and the queue's pause or delay. Labels only, never who holds them."""
        waiting = self.line(now, limit=BOARD_NEXT_TOKENS)
        return {
            "queue_id": str(self.queue_id),
            "name": self.name,
            "prefix": self.prefix,
            "paused": self.estimator.paused,
            "paused_until": self.paused_until.isoformat() if self.paused_until else None,
            "delayed_until": self.delayed_until.isoformat() if self.delayed_until else None,
            "rooms": [
                {
                    "room": name,
                    "token": self.labels.get(self.in_room[room_id][0]) if room_id in self.in_room else None,
                    "status": self.in_room[room_id][1] if room_id in self.in_room else None,
                }
                for room_id, name in self.rooms.items()
            ],
            "waiting_count": self.estimator.waiting_count,
            "next": [
                {
                    "token": entry.label,
                    "estimated_call_at": _iso(entry.estimated_call_at),
                    "wait_minutes": max(0, round((entry.estimated_call_at - now.timestamp()) / 60)),
                }
                for entry in waiting
            ],
        }


async def load(session: AsyncSession, queue: Queue) -> LiveQueue:
    """Build a queue's copy from its rows: rooms, the tokens waiting or in a room, and the last consultations
    for the pace."""
    rooms = list(
        await session.scalars(
            select(QueueRoom).where(QueueRoom.organization_id == queue.organization_id, QueueRoom.queue_id == queue.id)
        )
    )
    live = LiveQueue(queue, rooms)
    in_line = (TokenStatus.waiting, TokenStatus.called, TokenStatus.in_consultation)
    tokens = await session.scalars(
        select(QueueToken)
        .where(
            QueueToken.organization_id == queue.organization_id,
            QueueToken.queue_id == queue.id,
            QueueToken.status.in_(in_line),
        )
        .order_by(QueueToken.number)
    )
    for token in tokens:
        if token.status == TokenStatus.waiting:
            live.join(token)
        elif token.room_id is not None and token.called_at is not None:
            live.occupy(token)
    # Completed, or transferred from a consultation under way: both finished a consultation here.
    finished = await session.execute(
        select(QueueToken.called_at, QueueToken.completed_at, QueueToken.planned_seconds)
        .where(
            QueueToken.organization_id == queue.organization_id,
            QueueToken.queue_id == queue.id,
            QueueToken.completed_at.is_not(None),
        )
        .order_by(QueueToken.completed_at.desc())
        .limit(PACE_WINDOW)
    )
    for called_at, completed_at, planned in reversed(finished.all()):
        if called_at is not None and completed_at is not None:
            live.estimator.remember_consultation((completed_at - called_at).total_seconds(), planned)
    return live


async def catch_up(session: AsyncSession, live: LiveQueue, queue: Queue, since: int) -> None:
    """Bring a copy at version ``since`` to ``queue``'s: only the tokens changed after ``since`` are read.
    The caller sees every change up to the queue's version and none after (it holds the queue's lock, or reads
    one snapshot)."""
    changed = list(
        await session.scalars(
            select(QueueToken)
            .where(
                QueueToken.organization_id == queue.organization_id,
                QueueToken.queue_id == queue.id,
                QueueToken.changed_version > since,
                QueueToken.changed_version <= queue.version,
            )
            .order_by(QueueToken.changed_version)
        )
    )
    live.absorb(changed)
    live.apply_queue_row(queue)


class LiveQueues:
    """This process's copies, by queue id, each with the version it is current at."""

    def __init__(self) -> None:
        self._copies: dict[uuid.UUID, tuple[int, LiveQueue]] = {}

    async def _brought_to(self, session: AsyncSession, queue: Queue, version: int) -> LiveQueue:
        """The copy at ``version``, taken out of the cache (nobody else may use it meanwhile): the cached one
        caught up when it is older, a new one otherwise."""
        cached = self._copies.pop(queue.id, None)
        if cached is None or cached[0] > version:
            return await load(session, queue)
        live = cached[1]
        if cached[0] < version:
            # Another server changed the queue since (or this one, with a change that did not keep its copy).
            await catch_up(session, live, queue, since=cached[0])
        else:
            live.apply_queue_row(queue)
        return live

    async def take(self, session: AsyncSession, queue: Queue) -> LiveQueue:
        """For an operation holding the queue's lock, whose UPDATE already moved ``queue.version`` on by one: the
        copy as of the version before it."""
        return await self._brought_to(session, queue, queue.version - 1)

    def keep(self, queue_id: uuid.UUID, version: int, live: LiveQueue) -> None:
        """After the commit of ``version``. Callbacks of two commits may run out of order: the newer stays."""
        cached = self._copies.get(queue_id)
        if cached is None or cached[0] < version:
            self._copies[queue_id] = (version, live)

    async def current(self, session: AsyncSession, queue: Queue, *, snapshot: bool) -> LiveQueue:
        """For a reader: the copy at ``queue.version``. Read in one snapshot (``snapshot``), a stale copy is
        caught up and kept; otherwise the tokens read may be newer than the version, so a copy is built for
        this read alone."""
        cached = self._copies.get(queue.id)
        if cached is not None and cached[0] == queue.version:
            return cached[1]
        if not snapshot:
            return await load(session, queue)
        live = await self._brought_to(session, queue, queue.version)
        self.keep(queue.id, queue.version, live)
        return live
