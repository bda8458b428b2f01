"""The OPD queue's operations: opening a day's queue, issuing tokens (walk-ins and checked-in appointments),
calling the next one, starting, completing, skipping, recalling, cancelling and transferring tokens, pausing,
resuming and reporting a delay. Each operation is permission-checked, audited, recorded in the token's history,
and refused with a 404 or 409 problem code that leaves everything as it was.

Every operation on a queue first takes the queue row's lock with ``UPDATE … SET version = version + 1
RETURNING``: operations on one queue take turns (an issue also takes the next number in that statement), and
the version tells this server whether its in-memory copy of the line is current (``queue.live``). After the
commit the copy is kept under the new version and the queue's boards get their new state (``queue.boards``).
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor
from sehat.core.audit import AuditEntry, AuditLog, Outcome
from sehat.core.clock import utcnow
from sehat.core.db import after_commit
from sehat.core.errors import Conflict, NotFound, Problem
from sehat.core.scoping import scoped_select
from sehat.patients import service as patients_service
from sehat.queue import policy
from sehat.queue.live import LiveQueue, LiveQueues
from sehat.queue.models import ACTIVE_TOKEN_STATUSES, Queue, QueueRoom, QueueToken, TokenHistory, TokenSource
from sehat.queue.models import TokenStatus as Status
from sehat.queue.schemas import (
    Delay,
    OwnTokenRead,
    Pause,
    Priority,
    QueueCreate,
    QueueMetrics,
    QueueRead,
    RoomRead,
    TokenCreate,
    TokenRead,
    Transfer,
)
from sehat.scheduling import changes as appointment_changes
from sehat.scheduling import service as scheduling_service
from sehat.scheduling.models import AppointmentStatus
from sehat.tenancy import policy as tenancy_policy
from sehat.tenancy import service as tenancy_service
from sehat.tenancy.models import Facility

ISSUE = "queue.token.issue"
CALL = "queue.token.call"
START = "queue.token.start"
COMPLETE = "queue.token.complete"
SKIP = "queue.token.skip"
RECALL = "queue.token.recall"
CANCEL = "queue.token.cancel"
NO_SHOW = "queue.token.no_show"
TRANSFER = "queue.token.transfer"
READ = "queue.token.read"
LIST = "queue.token.list"
OPEN = "queue.open"
PAUSE = "queue.pause"
RESUME = "queue.resume"
DELAY = "queue.delay"

MAX_TOKEN_PAGE = 100


@dataclass
class QueueRuntime:
    """What the queue keeps per server process: the in-memory copies, and who tells boards after a commit."""

    live: LiveQueues
    audit_log: AuditLog
    # (organization id, facility id, department id) -> publish the boards showing that place's queues.
    announce: Callable[[uuid.UUID, uuid.UUID, uuid.UUID | None], Awaitable[None]] | None = None


# --- reading ---------------------------------------------------------------------------------------------


def _queue_read(queue: Queue, rooms: Sequence[QueueRoom]) -> QueueRead:
    read = QueueRead.model_validate(queue)
    read.rooms = [RoomRead.model_validate(room) for room in sorted(rooms, key=lambda room: room.name)]
    return read


async def _rooms(session: AsyncSession, queue: Queue) -> list[QueueRoom]:
    return list(
        await session.scalars(
            select(QueueRoom).where(QueueRoom.organization_id == queue.organization_id, QueueRoom.queue_id == queue.id)
        )
    )


async def _visible_queue(session: AsyncSession, actor: Actor, queue_id: uuid.UUID) -> Queue:
    queue = await session.scalar(scoped_select(Queue, actor).where(Queue.id == queue_id))
    if queue is None:
        raise NotFound("Queue not found.", code="queue_not_found")
    await _ensure_works_at(session, actor, queue, "Queue not found.", "queue_not_found")
    return queue


async def _ensure_works_at(session: AsyncSession, actor: Actor, queue: Queue, message: str, code: str) -> None:
    try:
        await scheduling_service.ensure_staff_works_at(session, actor, queue.facility_id)
    except NotFound:
        raise NotFound(message, code=code) from None


async def get_queue(session: AsyncSession, actor: Actor, queue_id: uuid.UUID) -> QueueRead:
    policy.ensure_can_read(actor)
    queue = await _visible_queue(session, actor, queue_id)
    return _queue_read(queue, await _rooms(session, queue))


async def list_queues(
    session: AsyncSession, actor: Actor, facility_id: uuid.UUID, day: date | None = None
) -> list[QueueRead]:
    """A facility's queues of one day (the facility's today when no day is given)."""
    policy.ensure_can_read(actor)
    facility = await scheduling_service.visible_facility(session, actor, facility_id)
    await scheduling_service.ensure_staff_works_at(session, actor, facility.id)
    wanted = day or utcnow().astimezone(ZoneInfo(facility.timezone)).date()
    queues = list(
        await session.scalars(
            scoped_select(Queue, actor)
            .where(Queue.facility_id == facility.id, Queue.day == wanted)
            .order_by(Queue.session, Queue.prefix)
        )
    )
    rooms = await session.scalars(
        scoped_select(QueueRoom, actor).where(QueueRoom.queue_id.in_([queue.id for queue in queues]))
    )
    by_queue: dict[uuid.UUID, list[QueueRoom]] = {}
    for room in rooms:
        by_queue.setdefault(room.queue_id, []).append(room)
    return [_queue_read(queue, by_queue.get(queue.id, [])) for queue in queues]


def _token_read(token: QueueToken, live: LiveQueue | None = None, now: datetime | None = None) -> TokenRead:
    read = TokenRead.model_validate(token)
    if live is not None and token.status == Status.waiting:
        place = live.place_of(token.id, now or utcnow())
        if place is not None:
            read.position = place.position
            read.estimated_call_at = datetime.fromtimestamp(place.estimated_call_at, tz=ZoneInfo("UTC"))
    return read


def _token_entry(action: str, token: QueueToken, **details: Any) -> AuditEntry:
    return AuditEntry(
        action=action,
        outcome=Outcome.success,
        resource_type="queue_token",
        resource_id=str(token.id),
        patient_id=token.patient_id,
        details={"queue_id": str(token.queue_id), **{key: str(value) for key, value in details.items()}},
    )


async def _reader_copy(session: AsyncSession, runtime: QueueRuntime, queue: Queue) -> LiveQueue:
    # SQLite serializes every transaction, reads included, so what it read is one snapshot.
    snapshot = session.bind.dialect.name == "sqlite"  # type: ignore[union-attr]
    return await runtime.live.current(session, queue, snapshot=snapshot)


async def list_tokens(
    session: AsyncSession,
    runtime: QueueRuntime,
    actor: Actor,
    queue_id: uuid.UUID,
    *,
    status: Status | None = None,
    limit: int = 50,
    cursor: str | None = None,
) -> tuple[list[TokenRead], str | None]:
    """A queue's tokens by number; waiting ones with their place and estimated call time. Each listed token
    is audited: it says who came to the clinic today."""
    policy.ensure_can_read(actor)
    queue = await _visible_queue(session, actor, queue_id)
    statement = scoped_select(QueueToken, actor).where(QueueToken.queue_id == queue.id)
    if status is not None:
        statement = statement.where(QueueToken.status == status)
    if cursor is not None:
        if not cursor.isdigit():
            raise NotFound("The page cursor is not valid.", code="invalid_cursor")
        statement = statement.where(QueueToken.number > int(cursor))
    rows = list(await session.scalars(statement.order_by(QueueToken.number).limit(limit + 1)))
    next_cursor = str(rows[limit - 1].number) if len(rows) > limit else None
    rows = rows[:limit]
    live = await _reader_copy(session, runtime, queue)
    now = utcnow()
    reads = [_token_read(token, live, now) for token in rows]
    await runtime.audit_log.record_many(session, actor, [_token_entry(LIST, token) for token in rows])
    return reads, next_cursor


async def _visible_token(session: AsyncSession, actor: Actor, token_id: uuid.UUID) -> QueueToken:
    token = await session.scalar(scoped_select(QueueToken, actor).where(QueueToken.id == token_id))
    if token is None:
        raise NotFound("Token not found.", code="token_not_found")
    return token


async def get_token(session: AsyncSession, runtime: QueueRuntime, actor: Actor, token_id: uuid.UUID) -> TokenRead:
    policy.ensure_can_read(actor)
    token = await _visible_token(session, actor, token_id)
    queue = await _visible_queue_of_token(session, actor, token)
    runtime.audit_log.record(session, actor, _token_entry(READ, token))
    return _token_read(token, await _reader_copy(session, runtime, queue))


async def _visible_queue_of_token(session: AsyncSession, actor: Actor, token: QueueToken) -> Queue:
    try:
        return await _visible_queue(session, actor, token.queue_id)
    except NotFound:
        raise NotFound("Token not found.", code="token_not_found") from None


async def own_tokens(session: AsyncSession, runtime: QueueRuntime, actor: Actor) -> list[OwnTokenRead]:
    """A patient's tokens still in a line, with their place and estimated call time: their own view."""
    policy.ensure_can_read_own(actor)
    patient_id = await patients_service.own_patient_id(session, actor)
    rows = (
        await session.execute(
            scoped_select(QueueToken, actor)
            .add_columns(Queue)
            .join(Queue, Queue.id == QueueToken.queue_id)
            .where(QueueToken.patient_id == patient_id, QueueToken.status.in_(ACTIVE_TOKEN_STATUSES))
            .order_by(QueueToken.arrived_at)
        )
    ).all()
    now = utcnow()
    reads = []
    for token, queue in rows:
        live = await _reader_copy(session, runtime, queue)
        place = live.place_of(token.id, now)
        room_id = live.room_of(token.id)
        reads.append(
            OwnTokenRead(
                id=token.id,
                queue_id=queue.id,
                queue_name=queue.name,
                label=token.label,
                status=token.status,
                room=live.rooms.get(room_id) if room_id is not None else None,
                position=place.position if place else None,
                estimated_call_at=datetime.fromtimestamp(place.estimated_call_at, tz=ZoneInfo("UTC"))
                if place
                else None,
            )
        )
    await runtime.audit_log.record_many(session, actor, [_token_entry(READ, token) for token, _ in rows])
    return reads


async def metrics(session: AsyncSession, actor: Actor, queue_id: uuid.UUID) -> QueueMetrics:
    """Waiting count, longest wait so far, and the average consultation (call to completion) of the queue."""
    policy.ensure_can_read(actor)
    queue = await _visible_queue(session, actor, queue_id)
    now = utcnow()
    waiting, first_arrival = (
        await session.execute(
            select(func.count(), func.min(QueueToken.arrived_at)).where(
                QueueToken.organization_id == queue.organization_id,
                QueueToken.queue_id == queue.id,
                QueueToken.status == Status.waiting,
            )
        )
    ).one()
    finished = (
        await session.execute(
            select(QueueToken.called_at, QueueToken.completed_at).where(
                QueueToken.organization_id == queue.organization_id,
                QueueToken.queue_id == queue.id,
                QueueToken.status == Status.completed,
            )
        )
    ).all()
    lengths = [(done - called).total_seconds() for called, done in finished if called and done]
    return QueueMetrics(
        queue_id=queue.id,
        waiting=waiting,
        longest_wait_seconds=max(0.0, (now - first_arrival).total_seconds()) if first_arrival else 0.0,
        completed=len(lengths),
        average_consultation_seconds=sum(lengths) / len(lengths) if lengths else None,
        practitioner_id=queue.practitioner_id,
    )


# --- opening a queue -------------------------------------------------------------------------------------


async def open_queue(session: AsyncSession, runtime: QueueRuntime, actor: Actor, request: QueueCreate) -> QueueRead:
    policy.ensure_can_manage(actor)
    facility = await scheduling_service.visible_facility(session, actor, request.facility_id)
    await scheduling_service.ensure_staff_works_at(session, actor, facility.id)
    if request.department_id is not None:
        await scheduling_service.visible_department(session, actor, request.department_id, at_facility=facility.id)
    if request.practitioner_id is not None:
        await scheduling_service.bookable_practitioner(session, actor, request.practitioner_id)
    taken = await session.scalar(
        scoped_select(Queue, actor)
        .with_only_columns(Queue.id)
        .where(
            Queue.facility_id == facility.id,
            Queue.day == request.day,
            Queue.session == request.session,
            Queue.prefix == request.prefix,
        )
    )
    if taken is not None:
        raise Conflict("This facility already has a queue with this prefix that session.", code="queue_exists")
    assert actor.organization_id is not None
    queue = Queue(
        organization_id=actor.organization_id,
        facility_id=facility.id,
        department_id=request.department_id,
        practitioner_id=request.practitioner_id,
        day=request.day,
        session=request.session,
        name=request.name,
        prefix=request.prefix,
        default_minutes=request.default_minutes,
        last_number=0,
        version=1,
        paused=False,
    )
    session.add(queue)
    await session.flush()
    rooms = [QueueRoom(organization_id=queue.organization_id, queue_id=queue.id, name=name) for name in request.rooms]
    session.add_all(rooms)
    runtime.audit_log.record(
        session,
        actor,
        AuditEntry(action=OPEN, outcome=Outcome.success, resource_type="queue", resource_id=str(queue.id)),
    )
    await session.flush()
    _announce_after_commit(session, runtime, queue, None)
    return _queue_read(queue, rooms)


# --- taking turns on a queue -----------------------------------------------------------------------------


async def _locked_queue(
    session: AsyncSession, actor: Actor, queue_id: uuid.UUID, *, take_number: bool = False, not_found: str = "queue"
) -> Queue:
    """The queue, locked for the rest of the transaction, its version moved on (and its counter, for an issue)."""
    values: dict[str, Any] = {"version": Queue.version + 1}
    if take_number:
        values["last_number"] = Queue.last_number + 1
    statement = update(Queue).where(Queue.id == queue_id, Queue.organization_id == actor.organization_id)
    if not tenancy_policy.sees_every_facility(actor):
        # The caller's facilities checked in the same statement: no second round trip while holding the lock.
        statement = statement.where(Queue.facility_id.in_(tenancy_service.facilities_worked_at(actor)))
    statement = (
        statement.values(**values).returning(Queue).execution_options(populate_existing=True, synchronize_session=False)
    )
    queue = (await session.scalars(statement)).one_or_none()
    if queue is None:
        raise NotFound(f"{not_found.title()} not found.", code=f"{not_found}_not_found")
    return queue


def _announce_after_commit(session: AsyncSession, runtime: QueueRuntime, queue: Queue, live: LiveQueue | None) -> None:
    queue_id, version = queue.id, queue.version
    place = (queue.organization_id, queue.facility_id, queue.department_id)

    async def announce() -> None:
        if live is not None:
            runtime.live.keep(queue_id, version, live)
        if runtime.announce is not None:
            await runtime.announce(*place)

    after_commit(session, announce)


def _refuse(runtime: QueueRuntime, queue: Queue, live: LiveQueue, problem: Problem) -> Problem:
    """A refusal before anything changed: the copy is still current at the version before this transaction's
    bump (which the rollback undoes), so it goes back rather than being rebuilt next time."""
    runtime.live.keep(queue.id, queue.version - 1, live)
    return problem


def _history(session: AsyncSession, actor: Actor, token: QueueToken, action: str, previous: str | None) -> None:
    session.add(
        TokenHistory(
            organization_id=token.organization_id,
            token_id=token.id,
            version=token.version,
            at=token.updated_at,
            actor_id=actor.user_id,
            action=action,
            from_status=previous,
            to_status=token.status,
            room_id=token.room_id,
        )
    )


def _move(token: QueueToken, status: Status, now: datetime, queue: Queue) -> str:
    """The token's new status, its version moved on, and the queue version it changed at."""
    previous = token.status
    token.status = status
    token.version += 1
    token.changed_version = queue.version
    token.updated_at = now
    return previous


async def _active_token_of(session: AsyncSession, queue: Queue, patient_id: uuid.UUID) -> uuid.UUID | None:
    return await session.scalar(
        select(QueueToken.id).where(
            QueueToken.organization_id == queue.organization_id,
            QueueToken.queue_id == queue.id,
            QueueToken.patient_id == patient_id,
            QueueToken.status.in_(ACTIVE_TOKEN_STATUSES),
        )
    )


def _label(queue: Queue, number: int) -> str:
    return f"{queue.prefix}-{number:03d}"


# --- issuing ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Origin:
    patient_id: uuid.UUID
    appointment_id: uuid.UUID | None
    appointment_at: datetime | None
    planned_seconds: int
    source: TokenSource
    priority: Priority


async def _origin(session: AsyncSession, actor: Actor, queue: Queue, request: TokenCreate) -> _Origin:
    if request.appointment_id is None:
        assert request.patient_id is not None
        patient = await scheduling_service.bookable_patient(session, actor, request.patient_id)
        priority = request.priority or Priority.walk_in
        source = TokenSource.emergency if priority is Priority.emergency else TokenSource.walk_in
        return _Origin(patient.id, None, None, queue.default_minutes * 60, source, priority)
    appointment = await appointment_changes.visible_appointment(session, actor, request.appointment_id)
    if appointment.status != AppointmentStatus.checked_in:
        raise Conflict("Check the appointment in before issuing its token.", code="appointment_not_checked_in")
    facility = await session.get_one(Facility, appointment.facility_id)
    local_day = appointment.start_at.astimezone(ZoneInfo(facility.timezone)).date()
    if appointment.facility_id != queue.facility_id or local_day != queue.day:
        raise Conflict("The appointment is not at this queue's facility on its day.", code="wrong_queue")
    if queue.practitioner_id is not None and appointment.practitioner_id != queue.practitioner_id:
        raise Conflict("The appointment is with another practitioner.", code="wrong_queue")
    planned = int((appointment.end_at - appointment.start_at).total_seconds())
    return _Origin(
        appointment.patient_id,
        appointment.id,
        appointment.start_at,
        planned,
        TokenSource.appointment,
        request.priority or Priority.booked,
    )


def _new_token(
    queue: Queue, origin: _Origin, *, arrived_at: datetime, now: datetime, transferred_from_id: uuid.UUID | None = None
) -> QueueToken:
    """A waiting token with the number the queue's locked row just gave out (``last_number``), changed at the
    queue's new version."""
    return QueueToken(
        id=uuid.uuid4(),
        organization_id=queue.organization_id,
        queue_id=queue.id,
        number=queue.last_number,
        label=_label(queue, queue.last_number),
        patient_id=origin.patient_id,
        appointment_id=origin.appointment_id,
        transferred_from_id=transferred_from_id,
        source=origin.source,
        priority=origin.priority,
        status=Status.waiting,
        arrived_at=arrived_at,
        appointment_at=origin.appointment_at,
        planned_seconds=origin.planned_seconds,
        version=1,
        changed_version=queue.version,
        updated_at=now,
    )


async def issue_token(
    session: AsyncSession, runtime: QueueRuntime, actor: Actor, queue_id: uuid.UUID, request: TokenCreate
) -> TokenRead:
    """The next number of the queue for a walk-in or a checked-in appointment. The number comes from the queue
    row in the issuing transaction: unique, never reused, and no gaps (a refused issue rolls its number back)."""
    policy.ensure_can_issue(actor)
    queue = await _locked_queue(session, actor, queue_id, take_number=True)
    origin = await _origin(session, actor, queue, request)
    if await _active_token_of(session, queue, origin.patient_id) is not None:
        raise Conflict("The patient already holds a token in this queue.", code="token_already_active")
    live = await runtime.live.take(session, queue)
    now = utcnow()
    token = _new_token(queue, origin, arrived_at=now, now=now)
    session.add(token)
    _history(session, actor, token, ISSUE, None)
    runtime.audit_log.record(session, actor, _token_entry(ISSUE, token, source=token.source))
    live.join(token)
    await session.flush()
    _announce_after_commit(session, runtime, queue, live)
    return _token_read(token, live, now)


# --- working the line ------------------------------------------------------------------------------------


async def call_next(
    session: AsyncSession, runtime: QueueRuntime, actor: Actor, queue_id: uuid.UUID, room_id: uuid.UUID
) -> TokenRead:
    """Call whoever the policy puts first to ``room_id``: 409 ``queue_paused``, ``queue_empty`` or
    ``room_busy`` otherwise."""
    policy.ensure_can_serve(actor)
    queue = await _locked_queue(session, actor, queue_id)
    live = await runtime.live.take(session, queue)
    if room_id not in live.rooms:
        raise _refuse(runtime, queue, live, NotFound("Room not found.", code="room_not_found"))
    if queue.paused:
        raise _refuse(runtime, queue, live, Conflict("The queue is paused.", code="queue_paused"))
    if room_id in live.in_room:
        raise _refuse(runtime, queue, live, Conflict("Finish or skip the room's token first.", code="room_busy"))
    token_id = live.next_token()
    if token_id is None:
        raise _refuse(runtime, queue, live, Conflict("Nobody is waiting.", code="queue_empty"))
    token = await session.get_one(QueueToken, token_id, populate_existing=True)
    now = utcnow()
    previous = _move(token, Status.called, now, queue)
    token.room_id, token.called_at = room_id, now
    _history(session, actor, token, CALL, previous)
    runtime.audit_log.record(session, actor, _token_entry(CALL, token, room_id=room_id))
    live.call(token, room_id, now)
    await session.flush()
    _announce_after_commit(session, runtime, queue, live)
    return _token_read(token)


async def _locked_token(
    session: AsyncSession, runtime: QueueRuntime, actor: Actor, token_id: uuid.UUID
) -> tuple[QueueToken, Queue, LiveQueue]:
    found = await _visible_token(session, actor, token_id)
    queue = await _locked_queue(session, actor, found.queue_id, not_found="token")
    # Read again under the queue's lock: every change of a token happens under it.
    token = await session.get_one(QueueToken, token_id, populate_existing=True)
    return token, queue, await runtime.live.take(session, queue)


def _ensure_status(
    runtime: QueueRuntime, queue: Queue, live: LiveQueue, token: QueueToken, allowed: frozenset[Status], doing: str
) -> None:
    if token.status not in allowed:
        # A step that needs the token called, asked of one still waiting, says so by name.
        needs_call = Status.called in allowed and Status.waiting not in allowed
        code = "token_not_called" if token.status == Status.waiting and needs_call else "invalid_transition"
        problem = Conflict(f"A {token.status} token cannot be {doing}.", code=code)
        raise _refuse(runtime, queue, live, problem)


@dataclass(frozen=True)
class TokenStep:
    """A step of a token's life taken from a room or the desk: from which statuses, to which, audited as what,
    who may take it, and what it does to the rows and the in-memory line."""

    allowed: frozenset[Status]
    to: Status
    action: str
    doing: str
    apply: Callable[[QueueToken, LiveQueue, datetime], None]
    ensure_allowed: Callable[[Actor], None] = policy.ensure_can_serve


async def take_step(
    session: AsyncSession, runtime: QueueRuntime, actor: Actor, token_id: uuid.UUID, step: TokenStep
) -> TokenRead:
    step.ensure_allowed(actor)
    token, queue, live = await _locked_token(session, runtime, actor, token_id)
    _ensure_status(runtime, queue, live, token, step.allowed, step.doing)
    now = utcnow()
    step.apply(token, live, now)
    previous = _move(token, step.to, now, queue)
    _history(session, actor, token, step.action, previous)
    runtime.audit_log.record(session, actor, _token_entry(step.action, token))
    await session.flush()
    _announce_after_commit(session, runtime, queue, live)
    return _token_read(token, live, now)


def _start(token: QueueToken, live: LiveQueue, now: datetime) -> None:
    assert token.room_id is not None
    token.started_at = now
    live.start(token.room_id)


def _complete(token: QueueToken, live: LiveQueue, now: datetime) -> None:
    assert token.room_id is not None
    token.completed_at = now
    live.finish(token.room_id, now)


def _skip(token: QueueToken, live: LiveQueue, now: datetime) -> None:
    assert token.room_id is not None
    live.vacate(token.room_id)
    token.room_id = None


def _recall(token: QueueToken, live: LiveQueue, now: datetime) -> None:
    token.called_at = None
    live.join(token)


def _no_change(token: QueueToken, live: LiveQueue, now: datetime) -> None:
    return None


def _cancel(token: QueueToken, live: LiveQueue, now: datetime) -> None:
    if token.status == Status.waiting:
        live.leave(token.id)


START_STEP = TokenStep(frozenset({Status.called}), Status.in_consultation, START, "started", _start)
# From a call or a consultation under way; a token never called is 409 ``token_not_called``.
COMPLETE_STEP = TokenStep(
    frozenset({Status.called, Status.in_consultation}), Status.completed, COMPLETE, "completed", _complete
)
# A called patient who did not come: the room is free, and the token may be recalled.
SKIP_STEP = TokenStep(frozenset({Status.called}), Status.skipped, SKIP, "skipped", _skip)
# A skipped patient who turned up: back in the line in the place their class and arrival give them.
RECALL_STEP = TokenStep(frozenset({Status.skipped}), Status.waiting, RECALL, "recalled", _recall)
# Skipped and never came back: closed as a no-show (the room already let them go).
NO_SHOW_STEP = TokenStep(frozenset({Status.skipped}), Status.no_show, NO_SHOW, "marked a no-show", _no_change)
# The patient left before being seen: the desk records it.
CANCEL_STEP = TokenStep(
    frozenset({Status.waiting, Status.skipped}),
    Status.cancelled,
    CANCEL,
    "cancelled",
    _cancel,
    ensure_allowed=policy.ensure_can_issue,
)


async def transfer_token(
    session: AsyncSession, runtime: QueueRuntime, actor: Actor, token_id: uuid.UUID, request: Transfer
) -> TokenRead:
    """Move a patient to another queue (another department, another doctor). The new token keeps the arrival
    time, the appointment time and, unless told otherwise, the priority class, so the patient does not start
    at the back; the old one ends as ``transferred``. A queue at a facility the caller does not work at is 404."""
    policy.ensure_can_transfer(actor)
    found = await _visible_token(session, actor, token_id)
    if found.queue_id == request.queue_id:
        raise Conflict("The token is already in this queue.", code="same_queue")
    # Two queues locked in one order everywhere, so two transfers in opposite directions cannot deadlock.
    locked: dict[uuid.UUID, Queue] = {}
    for queue_id in sorted((found.queue_id, request.queue_id)):
        kind = "token" if queue_id == found.queue_id else "queue"
        locked[queue_id] = await _locked_queue(session, actor, queue_id, take_number=kind == "queue", not_found=kind)
    source_queue, target_queue = locked[found.queue_id], locked[request.queue_id]
    token = await session.get_one(QueueToken, token_id, populate_existing=True)
    source_live = await runtime.live.take(session, source_queue)
    movable = frozenset({Status.waiting, Status.called, Status.in_consultation, Status.skipped})
    _ensure_status(runtime, source_queue, source_live, token, movable, "transferred")
    if await _active_token_of(session, target_queue, token.patient_id) is not None:
        problem = Conflict("The patient already holds a token in that queue.", code="token_already_active")
        raise _refuse(runtime, source_queue, source_live, problem)
    target_live = await runtime.live.take(session, target_queue)
    now = utcnow()
    if token.status == Status.waiting:
        source_live.leave(token.id)
    elif token.status == Status.called and token.room_id is not None:
        source_live.vacate(token.room_id)
    elif token.status == Status.in_consultation and token.room_id is not None:
        token.completed_at = now
        source_live.finish(token.room_id, now)
    previous = _move(token, Status.transferred, now, source_queue)
    _history(session, actor, token, TRANSFER, previous)
    planned = token.planned_seconds if token.appointment_id else target_queue.default_minutes * 60
    origin = _Origin(
        token.patient_id,
        token.appointment_id,
        token.appointment_at,
        planned,
        TokenSource.transfer,
        request.priority or Priority(token.priority),
    )
    moved = _new_token(target_queue, origin, arrived_at=token.arrived_at, now=now, transferred_from_id=token.id)
    session.add(moved)
    _history(session, actor, moved, TRANSFER, None)
    runtime.audit_log.record(session, actor, _token_entry(TRANSFER, token, to_token=moved.id, to_queue=moved.queue_id))
    target_live.join(moved)
    await session.flush()
    _announce_after_commit(session, runtime, source_queue, source_live)
    _announce_after_commit(session, runtime, target_queue, target_live)
    return _token_read(moved, target_live, now)


# --- the queue as a whole ---------------------------------------------------------------------------------


def _queue_entry(action: str, queue: Queue, **details: Any) -> AuditEntry:
    return AuditEntry(
        action=action,
        outcome=Outcome.success,
        resource_type="queue",
        resource_id=str(queue.id),
        details={key: str(value) for key, value in details.items()},
    )


async def _change_queue(
    session: AsyncSession,
    runtime: QueueRuntime,
    actor: Actor,
    queue_id: uuid.UUID,
    action: str,
    apply: Callable[[Queue, datetime], None],
) -> QueueRead:
    policy.ensure_can_serve(actor)
    queue = await _locked_queue(session, actor, queue_id)
    live = await runtime.live.take(session, queue)
    apply(queue, utcnow())
    live.apply_queue_row(queue)
    runtime.audit_log.record(session, actor, _queue_entry(action, queue))
    await session.flush()
    _announce_after_commit(session, runtime, queue, live)
    return _queue_read(queue, await _rooms(session, queue))


async def pause_queue(
    session: AsyncSession, runtime: QueueRuntime, actor: Actor, queue_id: uuid.UUID, request: Pause
) -> QueueRead:
    """Nobody is called until the queue resumes (a break); estimates count from ``until`` when it is given."""

    def pause(queue: Queue, now: datetime) -> None:
        if request.until is not None and request.until <= now:
            raise Conflict("The pause would end in the past.", code="pause_in_the_past")
        queue.paused, queue.paused_until = True, request.until

    return await _change_queue(session, runtime, actor, queue_id, PAUSE, pause)


async def resume_queue(session: AsyncSession, runtime: QueueRuntime, actor: Actor, queue_id: uuid.UUID) -> QueueRead:
    def resume(queue: Queue, now: datetime) -> None:
        queue.paused, queue.paused_until = False, None

    return await _change_queue(session, runtime, actor, queue_id, RESUME, resume)


async def report_delay(
    session: AsyncSession, runtime: QueueRuntime, actor: Actor, queue_id: uuid.UUID, request: Delay
) -> QueueRead:
    """ "Running 20 minutes late": nobody is expected to be called before then. 0 minutes withdraws it."""

    def delay(queue: Queue, now: datetime) -> None:
        queue.delayed_until = now + timedelta(minutes=request.minutes) if request.minutes else None

    return await _change_queue(session, runtime, actor, queue_id, DELAY, delay)
