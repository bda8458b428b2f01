"""The booking hot path on PostgreSQL: the same decisions as ``service.book_appointment``, in one round trip
once the practitioner's working time around the day is known to this process (DESIGN §8).

1. Working time, the type's duration and whether the practitioner offers it come from a copy kept in memory,
   tagged with the organization's schedule epoch it was read at (migration 0013: triggers move the epoch on
   every change to hours, leave, holidays, practitioners, types and facilities). A copy is read, in one
   statement inside a scoped transaction, the first time a practitioner's week is booked here.
2. Placement is decided in Python (``service.check_placement``, the portable path's own function).
3. One call of ``sehat_book_appointment``, outside an explicit transaction (the statement is its own), sets
   the tenant scope, claims the idempotency key (with the answer), takes the ordered advisory locks, checks
   that the epoch is still the copy's (else the copy is read again and the booking retried), checks the
   patient and the desk's facility, expires holds that ran out, and inserts the appointment, its history row
   and its audit entry. The exclusion constraints refuse an overlap right there; the statement's
   transaction, claim included, then rolls back and the request answers 409.

Anything the hot path cannot name exactly (a missing or foreign id, an inactive patient, a type not offered, a
patient's own-record check, a buffer, which needs its own check after the locks) is handed to the portable
path, which answers it, with nothing left behind by the hot path.
"""

from __future__ import annotations

import contextlib
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from sehat.core.actor import Actor, Audience
from sehat.core.audit import AuditLog
from sehat.core.errors import Conflict, InvalidInput
from sehat.core.tenant_scope import SET_ORGANIZATION_SCOPE
from sehat.scheduling import availability, schedule_pg, service
from sehat.scheduling.schemas import AppointmentCreate, AppointmentRead
from sehat.tenancy import policy as tenancy_policy
from sehat.tenancy.models import Facility

# $1 organization, $2 practitioner, $3 facility, $4 type, $5/$6 the window (a key), $7/$8 its days. One statement, so
# the epoch and everything it vouches for come from one snapshot. Placeholders only are formatted in.
_SCHEDULE = f"""
SELECT
  coalesce((SELECT epoch FROM schedule_epochs WHERE organization_id = $1), 0) AS epoch,
  f.timezone,
  EXISTS (SELECT 1 FROM practitioners WHERE id = $2 AND organization_id = $1 AND active) AS practitioner_active,
  (SELECT duration_minutes FROM appointment_types WHERE id = $4 AND organization_id = $1 AND active) AS duration,
  (NOT EXISTS (SELECT 1 FROM practitioner_appointment_types WHERE practitioner_id = $2)
   OR EXISTS (SELECT 1 FROM practitioner_appointment_types WHERE practitioner_id = $2 AND appointment_type_id = $4))
    AS offered,
  {schedule_pg.schedule_columns("$1", "$2", "$3", "$5", "$6", "$7", "$8")}
FROM (SELECT 1) AS one
LEFT JOIN facilities f ON f.id = $3 AND f.organization_id = $1
"""  # noqa: S608

_BOOK = "SELECT sehat_book_appointment(" + ", ".join(f"${number}" for number in range(1, 22)) + ")"
_STALE = "SH001"
_HAND_OVER = "SH002"
# Copies of working time kept per process; each is a week's intervals, and the oldest unused go first.
_CACHED_SCHEDULES = 4_096
# Where the weeks a copy covers start: any fixed day does; every process must use the same one only so that
# their copies cover the same weeks.
_WEEKS_FROM = datetime(2000, 1, 3, tzinfo=UTC)


@dataclass(frozen=True)
class Decision:
    """What the hot path did: booked (``booked``, and ``answer``, the same as the API's JSON, which the
    idempotency key now replays), or handed over, having written nothing."""

    booked: AppointmentRead | None
    answer: dict[str, Any] | None = None


@dataclass(frozen=True)
class _Schedule:
    """What decides a booking of one type with one practitioner at one facility within a window, as of
    ``epoch``; ``bookable`` is False when one of them is missing or inactive, or the type is not offered."""

    epoch: int
    bookable: bool
    duration: timedelta
    working: service.WorkingTime | None


_ScheduleKey = tuple[uuid.UUID, uuid.UUID, uuid.UUID, uuid.UUID, datetime, datetime]


class _Schedules:
    def __init__(self, size: int) -> None:
        self._size = size
        self._copies: OrderedDict[_ScheduleKey, _Schedule] = OrderedDict()

    def get(self, key: _ScheduleKey) -> _Schedule | None:
        copy = self._copies.get(key)
        if copy is not None:
            self._copies.move_to_end(key)
        return copy

    def put(self, key: _ScheduleKey, copy: _Schedule) -> None:
        self._copies[key] = copy
        self._copies.move_to_end(key)
        while len(self._copies) > self._size:
            self._copies.popitem(last=False)

    def forget(self, key: _ScheduleKey) -> None:
        self._copies.pop(key, None)


_schedules = _Schedules(_CACHED_SCHEDULES)


async def try_book(
    engine: AsyncEngine,
    audit_log: AuditLog,
    actor: Actor,
    request: AppointmentCreate,
    *,
    hold_for: timedelta | None,
    now: datetime,
    idempotency_key: str | None = None,
) -> Decision:
    """The booking, or a refusal, on the fast path; a decision without an appointment hands over."""
    organization_id = actor.organization_id
    assert organization_id is not None
    if actor.audience is Audience.patient:
        return Decision(None)  # a patient's own-record check lives in the portable path
    start = request.start.astimezone(UTC)
    window = _window_around(start)
    key = (
        organization_id,
        request.practitioner_id,
        request.facility_id,
        request.appointment_type_id,
        window.start,
        window.end,
    )
    async with _connection_outside_transactions(engine) as driver:
        for _ in range(2):  # a second time only when the copy turned out stale
            schedule = _schedules.get(key)
            fresh = schedule is None
            if schedule is None:
                schedule = await _read_schedule(driver, key)
            if not schedule.bookable:
                return Decision(None)
            end = start + schedule.duration
            if start <= now:
                raise Conflict("That time is in the past.", code="in_the_past")
            if end + timedelta(days=1) > window.end:
                return Decision(None)  # longer than the copy's window reaches: the portable path reads its own
            try:
                placed, buffer = service.check_placement(schedule.working, start, end)
            except (Conflict, InvalidInput):
                if fresh:
                    raise
                # A copy may say yes (the epoch check then vouches for it), not no: refuse on a fresh read.
                _schedules.forget(key)
                continue
            if buffer > timedelta(0):
                return Decision(None)  # the buffer needs its own check after the locks: the portable path has it
            try:
                return await _write(driver, audit_log, actor, request, placed, hold_for, now, idempotency_key, schedule)
            except asyncpg.PostgresError as error:
                if error.sqlstate == _STALE:
                    _schedules.forget(key)
                    continue
                if error.sqlstate == _HAND_OVER:
                    return Decision(None)
                raise
    return Decision(None)  # the schedule kept changing: the portable path decides under its own locks


def _window_around(start: datetime) -> availability.Interval:
    """The window a copy covers: a day either side of the week of UTC days ``start`` falls in
    (``service.schedule_window`` of that week), so that a desk booking its way through a practitioner's week
    reads the schedule once, not once a day."""
    day = start.replace(hour=0, minute=0, second=0, microsecond=0)
    first = day - timedelta(days=(day - _WEEKS_FROM).days % 7)
    return service.schedule_window(first, first + timedelta(days=7))


@contextlib.asynccontextmanager
async def _connection_outside_transactions(engine: AsyncEngine) -> AsyncIterator[Any]:
    """A pooled asyncpg connection on which no transaction is open: each statement is its own transaction unless
    the caller opens one. Checked out of the engine's pool without a SQLAlchemy ``Connection`` around it (a third
    of the checkout's cost); the pool's reset on return sends nothing when no transaction is open."""
    pooled = await engine.raw_connection()
    try:
        yield pooled.driver_connection
    finally:
        # Back to the pool in a greenlet, as SQLAlchemy's own async connections return theirs.
        await greenlet_spawn(pooled.close)


async def _read_schedule(driver: Any, key: _ScheduleKey) -> _Schedule:
    """The copy ``key`` names, read in one statement in a scoped transaction, and kept."""
    organization_id, _, facility_id, _, window_start, window_end = key
    async with driver.transaction():
        await driver.execute(SET_ORGANIZATION_SCOPE, str(organization_id))
        row = await driver.fetchrow(
            _SCHEDULE,
            *key,
            (window_start - timedelta(days=1)).date(),
            (window_end + timedelta(days=1)).date(),
        )
    bookable = bool(
        row["timezone"] is not None and row["practitioner_active"] and row["duration"] is not None and row["offered"]
    )
    working = None
    if bookable:
        facility = Facility(id=facility_id, organization_id=organization_id, timezone=row["timezone"])
        working = service.assemble_working_time(
            schedule_pg.hours(row["rules"]),
            schedule_pg.exceptions(row["exceptions"]),
            [availability.local_day(facility.timezone, day) for day in row["holidays"]],
            facility,
            window_start,
            window_end,
        )
    copy = _Schedule(
        epoch=row["epoch"],
        bookable=bookable,
        duration=timedelta(minutes=row["duration"] or 0),
        working=working,
    )
    _schedules.put(key, copy)
    return copy


async def _write(
    driver: Any,
    audit_log: AuditLog,
    actor: Actor,
    request: AppointmentCreate,
    placed: availability.Interval,
    hold_for: timedelta | None,
    now: datetime,
    idempotency_key: str | None,
    schedule: _Schedule,
) -> Decision:
    organization_id = actor.organization_id
    assert organization_id is not None
    # Built as the API answers it, not as a mapped object: nothing here goes through the ORM.
    status, hold_expires_at = service.opening_status(now, hold_for)
    booked = AppointmentRead(
        id=uuid.uuid4(),
        patient_id=request.patient_id,
        practitioner_id=request.practitioner_id,
        facility_id=request.facility_id,
        appointment_type_id=request.appointment_type_id,
        start=placed.start,
        end=placed.end,
        status=status,
        hold_expires_at=hold_expires_at,
        version=1,
    )
    entry = service.transition_entry(booked, service.APPOINTMENT_HOLD if hold_for else service.APPOINTMENT_BOOK)
    answer = booked.model_dump(mode="json")
    locks = [
        service.lock_key("practitioner", request.practitioner_id),
        service.lock_key("patient", request.patient_id),
    ]
    try:
        outcome = await driver.fetchval(
            _BOOK,
            organization_id,
            actor.user_id,
            tenancy_policy.sees_every_facility(actor),
            schedule.epoch,
            locks,
            idempotency_key,
            service.BOOK_ROUTE,
            service.request_fingerprint(request) if idempotency_key is not None else None,
            orjson.dumps(answer).decode() if idempotency_key is not None else None,
            booked.id,
            booked.facility_id,
            booked.practitioner_id,
            booked.patient_id,
            booked.appointment_type_id,
            booked.start,
            booked.end,
            booked.status,
            booked.hold_expires_at,
            now,
            uuid.uuid4(),
            audit_log.row_json(actor, entry),
        )
    except asyncpg.exceptions.ExclusionViolationError as error:
        raise service.overlap_conflict(str(error)) from None
    except asyncpg.exceptions.DeadlockDetectedError:
        # The ordered advisory locks keep bookings through sehat from deadlocking each other; one that does
        # (against a writer that skipped them) is told to try again, and its transaction rolls back.
        raise Conflict("Someone else is booking that time right now; try again.", code="slot_contended") from None
    if outcome != "booked":
        return Decision(None)  # the key was used before: the portable path replays or refuses it
    return Decision(booked, answer)
