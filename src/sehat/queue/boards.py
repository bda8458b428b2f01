"""Lobby display boards: enrolment with a display key, the state a board shows, and telling boards after a
change.

A board shows the day's queues of its facility (of its department, if it names one): per queue the token in
each room, the next tokens and their estimated waits, and whether the queue is paused or running late. Labels
such as ``GM-014`` only: never a name, a phone number or any other identifier of a patient.

**Display keys.** A screen has no user account; it holds a display key, shown once at enrolment and stored
only as its SHA-256. The key names its organization (``sdk_<organization>_<secret>``) so that the socket can
look the board up inside that organization's tenant scope; the secret decides. A display key is not a bearer
token: every API route refuses it, and it opens one board's socket and nothing else.

**Publishing.** After a queue's change commits, ``BoardAnnouncer`` rebuilds the state of every board showing
that queue, in one snapshot of the database (each queue from this server's in-memory copy when its version is
current), and publishes it on ``board:<id>``. The state's generation is the day and the sum of the queues'
versions: versions only grow, so of two servers racing to publish a board, the one that read later has the
larger generation, and the broadcaster drops the older (``core.realtime``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor
from sehat.core.audit import AuditEntry, AuditLog, Outcome
from sehat.core.clock import utcnow
from sehat.core.db import Database
from sehat.core.errors import NotFound
from sehat.core.realtime import Broadcaster
from sehat.core.scoping import scoped_select
from sehat.core.tenant_scope import enter_organization
from sehat.queue import policy
from sehat.queue.live import LiveQueues
from sehat.queue.models import DisplayBoard, Queue
from sehat.queue.schemas import BoardCreate, BoardRead
from sehat.scheduling import service as scheduling_service
from sehat.tenancy.models import Facility

ENROL = "board.enrol"
REKEY = "board.rekey"
_KEY_PREFIX = "sdk"
# Versions of one day's queues stay far below this; the day is the more significant part. The product stays
# below 2**53, which Redis's Lua compares exactly (its numbers are doubles).
_GENERATIONS_PER_DAY = 10**9


def board_channel(board_id: uuid.UUID) -> str:
    return f"board:{board_id}"


def new_display_key(organization_id: uuid.UUID) -> str:
    return f"{_KEY_PREFIX}_{organization_id.hex}_{secrets.token_urlsafe(32)}"


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def organization_of_key(key: str) -> uuid.UUID | None:
    prefix, _, rest = key.partition("_")
    organization, _, secret = rest.partition("_")
    if prefix != _KEY_PREFIX or len(secret) < 32 or len(key) > 200:
        return None
    try:
        return uuid.UUID(hex=organization)
    except ValueError:
        return None


async def enrol_board(
    session: AsyncSession, audit_log: AuditLog, actor: Actor, request: BoardCreate
) -> tuple[DisplayBoard, str]:
    """A new board and its display key (returned once)."""
    policy.ensure_can_manage_boards(actor)
    facility = await scheduling_service.visible_facility(session, actor, request.facility_id)
    if request.department_id is not None:
        await scheduling_service.visible_department(session, actor, request.department_id, at_facility=facility.id)
    assert actor.organization_id is not None
    key = new_display_key(actor.organization_id)
    board = DisplayBoard(
        organization_id=actor.organization_id,
        facility_id=facility.id,
        department_id=request.department_id,
        name=request.name,
        key_digest=key_digest(key),
        created_at=utcnow(),
    )
    session.add(board)
    await session.flush()
    audit_log.record(
        session,
        actor,
        AuditEntry(action=ENROL, outcome=Outcome.success, resource_type="display_board", resource_id=str(board.id)),
    )
    return board, key


async def replace_key(
    session: AsyncSession, audit_log: AuditLog, actor: Actor, board_id: uuid.UUID
) -> tuple[DisplayBoard, str]:
    """A new display key for a board (a screen was lost or replaced): the old key opens nothing from now on."""
    policy.ensure_can_manage_boards(actor)
    board = await session.scalar(scoped_select(DisplayBoard, actor).where(DisplayBoard.id == board_id))
    if board is None:
        raise NotFound("Board not found.", code="board_not_found")
    assert actor.organization_id is not None
    key = new_display_key(actor.organization_id)
    board.key_digest = key_digest(key)
    audit_log.record(
        session,
        actor,
        AuditEntry(action=REKEY, outcome=Outcome.success, resource_type="display_board", resource_id=str(board.id)),
    )
    await session.flush()
    return board, key


async def list_boards(session: AsyncSession, actor: Actor) -> list[BoardRead]:
    policy.ensure_can_manage_boards(actor)
    boards = await session.scalars(scoped_select(DisplayBoard, actor).order_by(DisplayBoard.created_at))
    return [BoardRead.model_validate(board) for board in boards]


async def _facility_today(session: AsyncSession, facility_id: uuid.UUID, now: datetime) -> date:
    timezone = await session.scalar(select(Facility.timezone).where(Facility.id == facility_id))
    return now.astimezone(ZoneInfo(timezone or "UTC")).date()


async def board_state(
    session: AsyncSession, live: LiveQueues, board: DisplayBoard, *, snapshot: bool
) -> tuple[int, dict[str, Any]]:
    """The board's state now and its generation. ``snapshot``: the session reads one snapshot, so the
    copies built here may be kept for later operations."""
    now = utcnow()
    day = await _facility_today(session, board.facility_id, now)
    statement = select(Queue).where(
        Queue.organization_id == board.organization_id, Queue.facility_id == board.facility_id, Queue.day == day
    )
    if board.department_id is not None:
        statement = statement.where(Queue.department_id == board.department_id)
    queues = list(await session.scalars(statement.order_by(Queue.session, Queue.prefix)))
    shown = [(await live.current(session, queue, snapshot=True)).public_state(now) for queue in queues]
    generation = day.toordinal() * _GENERATIONS_PER_DAY + sum(queue.version for queue in queues)
    return generation, {"board": board.name, "day": day.isoformat(), "at": now.isoformat(), "queues": shown}


class BoardAnnouncer:
    """Publishes boards' states after commits, and opens boards for display keys."""

    def __init__(self, database: Database, live: LiveQueues, broadcaster: Broadcaster) -> None:
        self._database = database
        self._live = live
        self._broadcaster = broadcaster

    async def announce(
        self, organization_id: uuid.UUID, facility_id: uuid.UUID, department_id: uuid.UUID | None
    ) -> None:
        """Publish every board showing queues of this facility (and department)."""
        async with self._database.snapshot(organization_id) as session:
            shows_department = DisplayBoard.department_id.is_(None)
            if department_id is not None:
                shows_department = or_(shows_department, DisplayBoard.department_id == department_id)
            boards = list(
                await session.scalars(
                    select(DisplayBoard).where(
                        DisplayBoard.organization_id == organization_id,
                        DisplayBoard.facility_id == facility_id,
                        shows_department,
                    )
                )
            )
            states = [(board.id, await board_state(session, self._live, board, snapshot=True)) for board in boards]
        for board_id, (generation, state) in states:
            await self._broadcaster.publish(board_channel(board_id), state, generation=generation)

    async def open_board(self, board_id: uuid.UUID, key: str) -> DisplayBoard | None:
        """The board this key opens, if it is ``board_id``'s own key; None for any other key."""
        organization_id = organization_of_key(key)
        if organization_id is None:
            return None
        async with self._database.unit_of_work() as session:
            await enter_organization(session, organization_id)
            board = await session.scalar(
                select(DisplayBoard).where(DisplayBoard.organization_id == organization_id, DisplayBoard.id == board_id)
            )
        if board is None or not hmac.compare_digest(board.key_digest, key_digest(key)):
            return None
        return board

    async def ensure_published(self, board: DisplayBoard) -> None:
        """A board nobody has published yet (or whose state expired) gets its state now."""
        if await self._broadcaster.current(board_channel(board.id)) is not None:
            return
        async with self._database.snapshot(board.organization_id) as session:
            generation, state = await board_state(session, self._live, board, snapshot=True)
        await self._broadcaster.publish(board_channel(board.id), state, generation=generation)
