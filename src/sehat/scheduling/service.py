"""Practitioners, appointment types, weekly hours, and booking that can never double-book. Only the unit of
work commits.

The guarantee is the database's: on PostgreSQL the exclusion constraints of migration 0011 refuse an
overlapping active appointment of the same practitioner or the same patient, whatever the application
believed when it checked; on SQLite the write transaction (``BEGIN IMMEDIATE``) serializes every booking, and
the check and the insert happen inside it. No application lock is trusted for correctness.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import random
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, NamedTuple, Protocol
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import Select, and_, bindparam, or_, select, text, true, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor, Audience, SystemActor
from sehat.core.audit import AuditEntry, AuditLog, Outcome
from sehat.core.clock import utcnow
from sehat.core.db import insert_ignoring_conflicts
from sehat.core.errors import Conflict, InvalidInput, NotFound
from sehat.core.pagination import paginate
from sehat.core.scoping import scoped_select
from sehat.identity.models import User, UserFacility
from sehat.patients import service as patients_service
from sehat.patients.models import Patient, PatientStatus
from sehat.scheduling import availability, policy, schedule_pg
from sehat.scheduling.models import (
    ACTIVE_STATUSES,
    Appointment,
    AppointmentHistory,
    AppointmentStatus,
    AppointmentType,
    AvailabilityException,
    ExceptionKind,
    FacilityHoliday,
    IdempotencyRecord,
    Practitioner,
    PractitionerAppointmentType,
    PractitionerDepartment,
    PractitionerFacility,
    WeeklyHoursRule,
)
from sehat.scheduling.schemas import (
    AppointmentCreate,
    AppointmentRead,
    AppointmentTypeCreate,
    PractitionerCreate,
    SlotQuery,
    WeeklyHoursCreate,
)
from sehat.tenancy import policy as tenancy_policy
from sehat.tenancy import service as tenancy_service
from sehat.tenancy.models import Department, Facility

APPOINTMENT_BOOK = "appointment.book"
APPOINTMENT_HOLD = "appointment.hold"
APPOINTMENT_CONFIRM = "appointment.confirm_hold"
BOOK_ROUTE = "POST /api/v1/appointments"


# --- practitioners, appointment types, hours -------------------------------------------------------------


async def visible_facility(session: AsyncSession, actor: Actor, facility_id: uuid.UUID) -> Facility:
    facility = await session.scalar(scoped_select(Facility, actor).where(Facility.id == facility_id))
    if facility is None:
        raise NotFound("Facility not found.", code="facility_not_found")
    return facility


async def visible_department(
    session: AsyncSession, actor: Actor, department_id: uuid.UUID, *, at_facility: uuid.UUID | None = None
) -> Department:
    """The department, if the caller's organization has it (and, with ``at_facility``, if it is that
    facility's): otherwise 404."""
    department = await session.scalar(scoped_select(Department, actor).where(Department.id == department_id))
    if department is None or (at_facility is not None and department.facility_id != at_facility):
        raise NotFound("Department not found.", code="department_not_found")
    return department


async def active_type(
    session: AsyncSession, actor: Actor, appointment_type_id: uuid.UUID, *, only_active: bool = True
) -> AppointmentType:
    statement = scoped_select(AppointmentType, actor).where(AppointmentType.id == appointment_type_id)
    appointment_type = await session.scalar(statement.where(AppointmentType.active) if only_active else statement)
    if appointment_type is None:
        raise NotFound("Appointment type not found.", code="appointment_type_not_found")
    return appointment_type


async def create_practitioner(session: AsyncSession, actor: Actor, request: PractitionerCreate) -> Practitioner:
    policy.ensure_can_manage_schedules(actor)
    assert actor.organization_id is not None
    user = await session.scalar(scoped_select(User, actor).where(User.id == request.user_id))
    if user is None:
        raise NotFound("User not found.", code="user_not_found")
    for facility_id in request.facility_ids:
        await visible_facility(session, actor, facility_id)
    for department_id in request.department_ids:
        await visible_department(session, actor, department_id)
    for type_id in request.appointment_type_ids:
        await active_type(session, actor, type_id, only_active=False)
    existing = await session.scalar(scoped_select(Practitioner, actor).where(Practitioner.user_id == user.id))
    if existing is not None:
        raise Conflict("This user already has a practice profile.", code="practitioner_exists")
    practitioner = Practitioner(
        id=uuid.uuid4(),
        organization_id=actor.organization_id,
        user_id=user.id,
        display_name=request.display_name,
        specialty=request.specialty,
        languages=request.languages,
    )
    session.add(practitioner)
    links = (
        [PractitionerFacility(facility_id=facility_id) for facility_id in set(request.facility_ids)]
        + [PractitionerDepartment(department_id=department_id) for department_id in set(request.department_ids)]
        + [PractitionerAppointmentType(appointment_type_id=type_id) for type_id in set(request.appointment_type_ids)]
    )
    for link in links:
        link.practitioner_id = practitioner.id
        link.organization_id = actor.organization_id
    session.add_all(links)
    await session.flush()
    return practitioner


async def get_practitioner(session: AsyncSession, actor: Actor, practitioner_id: uuid.UUID) -> Practitioner:
    policy.ensure_can_read_schedules(actor)
    practitioner = await session.scalar(scoped_select(Practitioner, actor).where(Practitioner.id == practitioner_id))
    if practitioner is None:
        raise NotFound("Practitioner not found.", code="practitioner_not_found")
    return practitioner


@dataclass(frozen=True)
class PractitionerLinks:
    facility_ids: list[uuid.UUID]
    department_ids: list[uuid.UUID]
    appointment_type_ids: list[uuid.UUID]


async def practitioner_links(session: AsyncSession, practitioner_id: uuid.UUID) -> PractitionerLinks:
    return (await links_of_practitioners(session, [practitioner_id]))[practitioner_id]


async def links_of_practitioners(
    session: AsyncSession, practitioner_ids: Sequence[uuid.UUID]
) -> dict[uuid.UUID, PractitionerLinks]:
    """Facilities, departments and offered types of several practitioners, in three queries."""

    async def grouped(owner: Any, column: Any) -> dict[uuid.UUID, list[uuid.UUID]]:
        found: dict[uuid.UUID, list[uuid.UUID]] = {practitioner_id: [] for practitioner_id in practitioner_ids}
        rows = await session.execute(select(owner, column).where(owner.in_(practitioner_ids)))
        for practitioner_id, linked in rows:
            found[practitioner_id].append(linked)
        return {practitioner_id: sorted(linked) for practitioner_id, linked in found.items()}

    facilities = await grouped(PractitionerFacility.practitioner_id, PractitionerFacility.facility_id)
    departments = await grouped(PractitionerDepartment.practitioner_id, PractitionerDepartment.department_id)
    types = await grouped(PractitionerAppointmentType.practitioner_id, PractitionerAppointmentType.appointment_type_id)
    return {
        practitioner_id: PractitionerLinks(
            facilities[practitioner_id], departments[practitioner_id], types[practitioner_id]
        )
        for practitioner_id in practitioner_ids
    }


async def list_practitioners(
    session: AsyncSession,
    actor: Actor,
    *,
    facility_id: uuid.UUID | None = None,
    department_id: uuid.UUID | None = None,
    specialty: str | None = None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Practitioner], str | None]:
    """Active practitioners, optionally of a facility, a department or a specialty, oldest profile first."""
    policy.ensure_can_read_schedules(actor)
    statement = scoped_select(Practitioner, actor).where(Practitioner.active)
    if facility_id is not None:
        at_facility = select(PractitionerFacility.practitioner_id).where(
            PractitionerFacility.facility_id == facility_id
        )
        statement = statement.where(Practitioner.id.in_(at_facility))
    if department_id is not None:
        in_department = select(PractitionerDepartment.practitioner_id).where(
            PractitionerDepartment.department_id == department_id
        )
        statement = statement.where(Practitioner.id.in_(in_department))
    if specialty is not None:
        statement = statement.where(Practitioner.specialty == specialty)
    return await paginate(session, statement, Practitioner, limit=limit, cursor=cursor)


async def create_appointment_type(
    session: AsyncSession, actor: Actor, request: AppointmentTypeCreate
) -> AppointmentType:
    policy.ensure_can_manage_schedules(actor)
    assert actor.organization_id is not None
    taken = await session.scalar(
        scoped_select(AppointmentType, actor)
        .with_only_columns(AppointmentType.id)
        .where(AppointmentType.code == request.code)
    )
    if taken is not None:
        raise Conflict("An appointment type with this code exists.", code="appointment_type_code_taken")
    appointment_type = AppointmentType(id=uuid.uuid4(), organization_id=actor.organization_id, **request.model_dump())
    session.add(appointment_type)
    await session.flush()
    return appointment_type


async def list_appointment_types(session: AsyncSession, actor: Actor) -> list[AppointmentType]:
    policy.ensure_can_read_schedules(actor)
    return list((await session.scalars(scoped_select(AppointmentType, actor).order_by(AppointmentType.name))).all())


async def add_weekly_hours(
    session: AsyncSession, actor: Actor, practitioner_id: uuid.UUID, request: WeeklyHoursCreate
) -> WeeklyHoursRule:
    policy.ensure_can_manage_schedules(actor)
    practitioner = await get_practitioner(session, actor, practitioner_id)
    if request.facility_id not in (await practitioner_links(session, practitioner.id)).facility_ids:
        raise InvalidInput(
            "The practitioner does not work at this facility.",
            code="facility_not_of_practitioner",
            extra={"errors": [{"field": "facility_id", "message": "not one of the practitioner's facilities"}]},
        )
    rule = WeeklyHoursRule(
        id=uuid.uuid4(),
        organization_id=practitioner.organization_id,
        practitioner_id=practitioner.id,
        **request.model_dump(),
    )
    session.add(rule)
    await session.flush()
    return rule


async def list_weekly_hours(session: AsyncSession, actor: Actor, practitioner_id: uuid.UUID) -> list[WeeklyHoursRule]:
    practitioner = await get_practitioner(session, actor, practitioner_id)
    statement = (
        scoped_select(WeeklyHoursRule, actor)
        .where(WeeklyHoursRule.practitioner_id == practitioner.id)
        .order_by(WeeklyHoursRule.weekday, WeeklyHoursRule.starts)
    )
    return list((await session.scalars(statement)).all())


# --- working time ---------------------------------------------------------------------------------------

# The slot grid where a practitioner has only extra sessions at a facility and no weekly hours to take it from.
DEFAULT_GRANULARITY = timedelta(minutes=10)


@dataclass(frozen=True)
class WorkingTime:
    intervals: list[availability.Interval]
    granularity: timedelta
    buffer: timedelta


async def working_time(
    session: AsyncSession, practitioner_id: uuid.UUID, facility: Facility, start: datetime, end: datetime
) -> WorkingTime | None:
    """The practitioner's working intervals at a facility within [start, end): weekly hours and extra sessions,
    minus leave and the facility's holidays, with the slot grid of their hours there; None when they have
    neither hours nor extra sessions there."""
    organization_id = facility.organization_id
    rules = (
        await session.scalars(
            select(WeeklyHoursRule).where(
                WeeklyHoursRule.organization_id == organization_id,
                WeeklyHoursRule.practitioner_id == practitioner_id,
                WeeklyHoursRule.facility_id == facility.id,
            )
        )
    ).all()
    exceptions = (
        await session.scalars(
            select(AvailabilityException).where(
                AvailabilityException.organization_id == organization_id,
                AvailabilityException.practitioner_id == practitioner_id,
                AvailabilityException.starts_at < end,
                AvailabilityException.ends_at > start,
                or_(AvailabilityException.facility_id.is_(None), AvailabilityException.facility_id == facility.id),
            )
        )
    ).all()
    holidays = await _holidays(session, facility, start, end)
    return assemble_working_time(rules, exceptions, holidays, facility, start, end)


class HoursLike(Protocol):
    weekday: int
    starts: Any
    ends: Any
    slot_minutes: int
    buffer_minutes: int
    valid_from: date | None
    valid_until: date | None


class ExceptionLike(Protocol):
    kind: str
    starts_at: datetime
    ends_at: datetime
    facility_id: uuid.UUID | None


def assemble_working_time(
    rules: Sequence[HoursLike],
    exceptions: Sequence[ExceptionLike],
    holidays: Sequence[availability.Interval],
    facility: Facility,
    start: datetime,
    end: datetime,
) -> WorkingTime | None:
    """Working time from the rows that make it, however they were read."""
    extra = [
        availability.Interval(e.starts_at, e.ends_at)
        for e in exceptions
        if e.kind == ExceptionKind.extra and e.facility_id == facility.id
    ]
    if not rules and not extra:
        return None
    leave = [availability.Interval(e.starts_at, e.ends_at) for e in exceptions if e.kind == ExceptionKind.leave]
    hours = [
        availability.WeeklyHours(
            weekday=rule.weekday,
            starts=rule.starts,
            ends=rule.ends,
            valid_from=rule.valid_from,
            valid_until=rule.valid_until,
        )
        for rule in rules
    ]
    intervals = availability.working_intervals(
        hours, facility.timezone, start, end, extra=extra, leave=[*leave, *holidays]
    )
    # One grid per practitioner and facility: the finest of their rules there.
    granularity = timedelta(minutes=min(rule.slot_minutes for rule in rules)) if rules else DEFAULT_GRANULARITY
    buffer = timedelta(minutes=max((rule.buffer_minutes for rule in rules), default=0))
    return WorkingTime(intervals, granularity, buffer)


def _holiday_days(facility: Facility, start: datetime, end: datetime) -> tuple[date, date]:
    """The local days whose closures can touch [start, end), with a day's margin each side."""
    zone = ZoneInfo(facility.timezone)
    return start.astimezone(zone).date() - timedelta(days=1), end.astimezone(zone).date() + timedelta(days=1)


async def _holidays(
    session: AsyncSession, facility: Facility, start: datetime, end: datetime
) -> list[availability.Interval]:
    """The facility's closed days that touch [start, end), as UTC intervals of its local days."""
    first, last = _holiday_days(facility, start, end)
    days = await session.scalars(
        select(FacilityHoliday.day).where(
            FacilityHoliday.organization_id == facility.organization_id,
            FacilityHoliday.facility_id == facility.id,
            FacilityHoliday.day >= first,
            FacilityHoliday.day <= last,
        )
    )
    return [availability.local_day(facility.timezone, day) for day in days]


# --- booking ----------------------------------------------------------------------------------------------


def request_fingerprint(body: AppointmentCreate) -> bytes:
    """What "the same body" means for an idempotency key: the fields, canonically serialized."""
    return hashlib.sha256(orjson.dumps(body.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS)).digest()


@dataclass(frozen=True)
class Replay:
    """A stored answer to send again for a repeated idempotency key."""

    status_code: int
    body: dict[str, Any]


async def claim_idempotency_key(
    session: AsyncSession, actor: Actor, key: str, route: str, fingerprint: bytes
) -> Replay | None:
    """Claim ``key`` for this request, or return the answer already given for it.

    The claim is a row inserted in this request's transaction. A concurrent request with the same key waits
    on it (the primary key's uniqueness) until this one commits, and then replays its answer; if this one
    rolls back, the claim vanishes with the work, and nothing replays a failure as success."""
    assert actor.organization_id is not None
    identity = {"organization_id": actor.organization_id, "user_id": actor.user_id, "key": key}
    claimed = await insert_ignoring_conflicts(
        session,
        IdempotencyRecord,
        {**identity, "route": route, "request_hash": fingerprint, "status_code": 0, "response": {}},
        ["organization_id", "user_id", "key"],
    )
    if claimed:
        return None  # ours: nobody used this key before
    record = await session.get(IdempotencyRecord, (actor.organization_id, actor.user_id, key), populate_existing=True)
    assert record is not None
    if record.route != route or record.request_hash != fingerprint:
        raise InvalidInput("This Idempotency-Key was used with another request.", code="idempotency_key_reused")
    if record.status_code == 0:  # defensive: a claim is settled in the very transaction that made it
        raise Conflict("A request with this Idempotency-Key is still in progress.", code="idempotency_key_in_use")
    return Replay(record.status_code, record.response)


async def settle_idempotency_key(
    session: AsyncSession, actor: Actor, key: str, status_code: int, body: dict[str, Any]
) -> None:
    await session.execute(
        update(IdempotencyRecord)
        .where(
            IdempotencyRecord.organization_id == actor.organization_id,
            IdempotencyRecord.user_id == actor.user_id,
            IdempotencyRecord.key == key,
        )
        .values(status_code=status_code, response=body)
        .execution_options(synchronize_session=False)
    )


async def bookable_patient(session: AsyncSession, actor: Actor, patient_id: uuid.UUID) -> Patient:
    is_patient = actor.audience is Audience.patient
    if is_patient and await patients_service.own_patient_id(session, actor) != patient_id:
        raise NotFound("Patient not found.", code="patient_not_found")
    patient = await session.scalar(scoped_select(Patient, actor).where(Patient.id == patient_id))
    if patient is None:
        raise NotFound("Patient not found.", code="patient_not_found")
    if patient.status not in (PatientStatus.active,):
        raise Conflict(f"A {patient.status} patient cannot be booked.", code=f"patient_{patient.status}")
    return patient


async def ensure_staff_works_at(session: AsyncSession, actor: Actor, facility_id: uuid.UUID) -> None:
    """Front office and nurses act at their own facilities; organization administrators anywhere. A facility
    they do not work at is, to them, not found."""
    if actor.audience is Audience.patient or tenancy_policy.sees_every_facility(actor):
        return
    if not await tenancy_service.works_at(session, actor, facility_id):
        raise NotFound("Facility not found.", code="facility_not_found")


async def bookable_practitioner(session: AsyncSession, actor: Actor, practitioner_id: uuid.UUID) -> Practitioner:
    practitioner = await session.scalar(
        scoped_select(Practitioner, actor).where(Practitioner.id == practitioner_id, Practitioner.active)
    )
    if practitioner is None:
        raise NotFound("Practitioner not found.", code="practitioner_not_found")
    return practitioner


async def offered_type(
    session: AsyncSession, actor: Actor, practitioner: Practitioner, appointment_type_id: uuid.UUID
) -> AppointmentType:
    """The active appointment type, if the practitioner offers it (one who lists none offers every type)."""
    appointment_type = await active_type(session, actor, appointment_type_id)
    if not await type_is_offered(session, practitioner.id, appointment_type.id):
        raise InvalidInput(
            "The practitioner does not offer this appointment type.",
            code="appointment_type_not_offered",
            extra={"errors": [{"field": "appointment_type_id", "message": "not offered by this practitioner"}]},
        )
    return appointment_type


async def type_is_offered(session: AsyncSession, practitioner_id: uuid.UUID, appointment_type_id: uuid.UUID) -> bool:
    offered = (
        await session.scalars(
            select(PractitionerAppointmentType.appointment_type_id).where(
                PractitionerAppointmentType.practitioner_id == practitioner_id
            )
        )
    ).all()
    return not offered or appointment_type_id in offered


async def place_in_schedule(
    session: AsyncSession,
    practitioner: Practitioner,
    facility: Facility,
    appointment_type: AppointmentType,
    requested_start: datetime,
    now: datetime,
) -> tuple[availability.Interval, timedelta]:
    """The time ``[start, end)`` an appointment would take and the practitioner's buffer there, if the time is
    bookable on an empty calendar: in the future, in working time, on the grid. Collisions are the caller's."""
    start = requested_start.astimezone(ZoneInfo("UTC"))
    end = start + timedelta(minutes=appointment_type.duration_minutes)
    if start <= now:
        raise Conflict("That time is in the past.", code="in_the_past")
    window = schedule_window(start, end)
    working = await working_time(session, practitioner.id, facility, window.start, window.end)
    return check_placement(working, start, end)


def schedule_window(start: datetime, end: datetime) -> availability.Interval:
    """The stretch whose working time decides whether [start, end) is bookable: a day either side, so that a
    session reaching over midnight UTC is seen whole."""
    return availability.Interval(start - timedelta(days=1), end + timedelta(days=1))


def check_placement(
    working: WorkingTime | None, start: datetime, end: datetime
) -> tuple[availability.Interval, timedelta]:
    """[start, end) and the buffer, if the time lies in one working stretch and on its grid; else the refusal."""
    outside = availability.Placement.outside
    if (
        working is None
        or (where := availability.placement(working.intervals, start, end - start, working.granularity)) is outside
    ):
        raise Conflict("The practitioner does not offer that time at this facility.", code="outside_availability")
    if where is availability.Placement.off_grid:
        minutes = int(working.granularity.total_seconds() // 60)
        raise InvalidInput(
            f"Appointments start on the practitioner's {minutes}-minute grid.",
            code="not_on_slot_grid",
            extra={"errors": [{"field": "start", "message": f"not on the {minutes}-minute slot grid"}]},
        )
    return availability.Interval(start, end), working.buffer


@functools.cache
def _parties_query() -> Select[Any]:
    """Facility, active practitioner, active type and whether the practitioner offers the type, in one row, or
    no row when one of them is missing: three lookups by primary key side by side (a product of single rows, on
    purpose), for the paths that almost always find all of them. Built once, with parameters
    (``organization_id``, ``facility_id``, ``practitioner_id``, ``type_id``): building it took a millisecond."""
    organization_id, practitioner_id, type_id = (
        bindparam("organization_id"),
        bindparam("practitioner_id"),
        bindparam("type_id"),
    )
    lists_types = select(PractitionerAppointmentType.practitioner_id).where(
        PractitionerAppointmentType.practitioner_id == practitioner_id
    )
    lists_this_type = lists_types.where(PractitionerAppointmentType.appointment_type_id == type_id)
    return (
        select(Facility, Practitioner, AppointmentType, ~lists_types.exists() | lists_this_type.exists())
        .select_from(Facility)
        .join(Practitioner, true())
        .join(AppointmentType, true())
        .where(
            Facility.id == bindparam("facility_id"),
            Facility.organization_id == organization_id,
            Practitioner.id == practitioner_id,
            Practitioner.organization_id == organization_id,
            Practitioner.active,
            AppointmentType.id == type_id,
            AppointmentType.organization_id == organization_id,
            AppointmentType.active,
        )
    )


def _parties(
    organization_id: uuid.UUID | None, facility_id: uuid.UUID, practitioner_id: uuid.UUID, type_id: uuid.UUID
) -> dict[str, Any]:
    return {
        "organization_id": organization_id,
        "facility_id": facility_id,
        "practitioner_id": practitioner_id,
        "type_id": type_id,
    }


async def _booking_parties(
    session: AsyncSession, actor: Actor, request: AppointmentCreate
) -> tuple[Patient, Facility, Practitioner, AppointmentType]:
    """The patient, facility, practitioner and type a booking names, each checked as its own lookup would:
    in one query when all is well, otherwise one by one, so that each refusal names what is wrong."""
    if (
        actor.audience is Audience.patient
        and await patients_service.own_patient_id(session, actor) != request.patient_id
    ):
        raise NotFound("Patient not found.", code="patient_not_found")
    works_there = (
        tenancy_service.facilities_worked_at(actor).where(UserFacility.facility_id == request.facility_id).exists()
    )
    statement = (
        _parties_query()
        .add_columns(Patient, works_there)
        .join(Patient, true())
        .where(
            Patient.id == request.patient_id,
            Patient.organization_id == actor.organization_id,
            Patient.status == PatientStatus.active,
        )
    )
    parties = _parties(actor.organization_id, request.facility_id, request.practitioner_id, request.appointment_type_id)
    found = (await session.execute(statement, parties)).first()
    staff_may_skip_check = actor.audience is Audience.patient or tenancy_policy.sees_every_facility(actor)
    if found is not None and found[3] and (found[5] or staff_may_skip_check):
        return found[4], found[0], found[1], found[2]
    patient = await bookable_patient(session, actor, request.patient_id)
    facility = await visible_facility(session, actor, request.facility_id)
    await ensure_staff_works_at(session, actor, facility.id)
    practitioner = await bookable_practitioner(session, actor, request.practitioner_id)
    appointment_type = await offered_type(session, actor, practitioner, request.appointment_type_id)
    return patient, facility, practitioner, appointment_type


async def book_appointment(
    session: AsyncSession,
    audit_log: AuditLog,
    actor: Actor,
    request: AppointmentCreate,
    *,
    hold_for: timedelta | None = None,
) -> Appointment:
    """Book one appointment, or refuse with 409 and write nothing. With ``hold_for``, reserve the time as a
    hold instead: it blocks everyone else exactly like a booking until it is confirmed or runs out."""
    policy.ensure_can_book(actor)
    patient, facility, practitioner, appointment_type = await _booking_parties(session, actor, request)
    now = utcnow()
    time, buffer = await place_in_schedule(session, practitioner, facility, appointment_type, request.start, now)
    return await take_time(
        session,
        audit_log,
        actor,
        patient_id=patient.id,
        practitioner_id=practitioner.id,
        facility=facility,
        appointment_type_id=appointment_type.id,
        time=time,
        buffer=buffer,
        now=now,
        hold_for=hold_for,
    )


async def take_time(
    session: AsyncSession,
    audit_log: AuditLog,
    actor: Actor | SystemActor,
    *,
    patient_id: uuid.UUID,
    practitioner_id: uuid.UUID,
    facility: Facility,
    appointment_type_id: uuid.UUID,
    time: availability.Interval,
    buffer: timedelta,
    now: datetime,
    hold_for: timedelta | None = None,
    details: dict[str, Any] | None = None,
) -> Appointment:
    """Insert a booking (or, with ``hold_for``, a hold) of a time already checked against the schedule, or
    refuse with 409 and write nothing."""
    appointment = new_appointment(
        facility.organization_id,
        facility.id,
        practitioner_id,
        patient_id,
        appointment_type_id,
        time,
        now=now,
        hold_for=hold_for,
    )
    claim = Claim(appointment.id, facility.organization_id, practitioner_id, patient_id, time.start, time.end)
    await occupy(session, claim, buffer=buffer, now=now, apply=lambda: session.add(appointment))
    action = APPOINTMENT_HOLD if hold_for else APPOINTMENT_BOOK
    record_transition(session, audit_log, actor, appointment, None, action, now, details)
    await session.flush()
    return appointment


def new_appointment(
    organization_id: uuid.UUID,
    facility_id: uuid.UUID,
    practitioner_id: uuid.UUID,
    patient_id: uuid.UUID,
    appointment_type_id: uuid.UUID,
    time: availability.Interval,
    *,
    now: datetime,
    hold_for: timedelta | None,
) -> Appointment:
    """A booking (or, with ``hold_for``, a hold) of ``time``, not yet written."""
    status, hold_expires_at = opening_status(now, hold_for)
    return Appointment(
        id=uuid.uuid4(),
        organization_id=organization_id,
        facility_id=facility_id,
        practitioner_id=practitioner_id,
        patient_id=patient_id,
        appointment_type_id=appointment_type_id,
        start_at=time.start,
        end_at=time.end,
        status=status,
        hold_expires_at=hold_expires_at,
        version=1,
        created_at=now,
        updated_at=now,
    )


def opening_status(now: datetime, hold_for: timedelta | None) -> tuple[str, datetime | None]:
    """A new appointment's status and hold expiry, on both booking paths: booked, or held until ``now + hold_for``."""
    if hold_for:
        return AppointmentStatus.held.value, now + hold_for
    return AppointmentStatus.booked.value, None


@dataclass(frozen=True)
class Claim:
    """The time an appointment is to take, for whom and with whom."""

    appointment_id: uuid.UUID
    organization_id: uuid.UUID
    practitioner_id: uuid.UUID
    patient_id: uuid.UUID
    start: datetime
    end: datetime


async def occupy(
    session: AsyncSession, claim: Claim, *, buffer: timedelta, now: datetime, apply: Callable[[], None]
) -> None:
    """Give the appointment the claimed time (``apply`` adds it, or sets its new time), or refuse with 409 and
    change nothing."""
    organization_id = claim.organization_id
    start, end = claim.start, claim.end
    is_postgresql = session.bind.dialect.name == "postgresql"  # type: ignore[union-attr]
    if is_postgresql:
        await _queue_behind_competing_bookings(session, claim.practitioner_id, claim.patient_id)
    # Holds that ran out stop occupying their time before anyone checks it (the constraint knows no clock).
    await session.execute(
        update(Appointment)
        .where(
            Appointment.organization_id == organization_id,
            Appointment.status == AppointmentStatus.held,
            Appointment.hold_expires_at <= now,
            or_(
                Appointment.practitioner_id == claim.practitioner_id,
                Appointment.patient_id == claim.patient_id,
            ),
            Appointment.start_at < end + buffer,
            Appointment.end_at > start - buffer,
        )
        .values(status=AppointmentStatus.expired.value, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    # On SQLite this transaction holds the database's write lock from its first statement, so nothing can slip
    # in between this check and the write below. On PostgreSQL the constraints refuse overlaps themselves; only
    # a buffer, which no constraint knows, needs the check (after the locks above, so it sees the last booking).
    if not is_postgresql or buffer > timedelta(0):
        await _refuse_overlaps(session, claim, buffer)
    await _guarded_write(session, apply, is_postgresql=is_postgresql)


# Every booking takes two of these; the same practitioners and patients come back all day.
@functools.lru_cache(maxsize=65_536)
def lock_key(kind: str, value: uuid.UUID) -> int:
    return int.from_bytes(hashlib.sha256(f"sehat/booking/{kind}/{value}".encode()).digest()[:8], "big", signed=True)


async def _queue_behind_competing_bookings(
    session: AsyncSession, practitioner_id: uuid.UUID, patient_id: uuid.UUID
) -> None:
    """Order, not correctness: bookings of the same practitioner or patient take transaction-scoped advisory
    locks in one global order, so they queue instead of inserting at once and deadlocking on each other's
    pending rows (each such deadlock costs a second of PostgreSQL's deadlock_timeout). The exclusion
    constraints remain the guarantee; a booking that bypassed these locks would still be refused."""
    keys = sorted({lock_key("practitioner", practitioner_id), lock_key("patient", patient_id)})
    await session.execute(
        text(
            "SELECT pg_advisory_xact_lock(k) FROM (SELECT unnest(CAST(:keys AS bigint[])) AS k ORDER BY k) AS ordered"
        ),
        {"keys": keys},
    )


# Two bookings that overlap each other both insert their row, and each then waits for the other's transaction
# to decide (an overlap is symmetric): PostgreSQL breaks that cycle by aborting one of them. The victim steps
# back (its savepoint), lets the other finish and tries once more; a second abort answers 409
# `slot_contended` (someone else is booking that time right now), never a 500 and never a double booking.
_DEADLOCK = "40P01"


async def _guarded_write(session: AsyncSession, apply: Callable[[], None], *, is_postgresql: bool) -> None:
    """Apply and flush the change; on PostgreSQL the exclusion constraints refuse an overlap right here."""
    if not is_postgresql:
        apply()
        await session.flush()
        return
    for attempt in range(2):
        try:
            async with session.begin_nested():
                # Again on a retry: the savepoint's rollback undid the change in the session too.
                apply()
                await session.flush()
            return
        except IntegrityError as exc:
            raise overlap_conflict(str(exc.orig)) from None
        except DBAPIError as exc:
            if getattr(exc.orig, "sqlstate", None) != _DEADLOCK:
                raise
            if attempt == 1:
                raise Conflict(
                    "Someone else is booking that time right now; try again.", code="slot_contended"
                ) from None
            await asyncio.sleep(random.uniform(0.002, 0.02))  # noqa: S311 - jitter, not a secret


def record_transition(
    session: AsyncSession,
    audit_log: AuditLog,
    actor: Actor | SystemActor,
    appointment: Appointment,
    from_status: str | None,
    action: str,
    now: datetime,
    details: dict[str, Any] | None = None,
) -> None:
    """Every change of an appointment leaves a history row and an audit entry, in its own transaction."""
    session.add(
        AppointmentHistory(
            organization_id=appointment.organization_id,
            appointment_id=appointment.id,
            at=now,
            actor_id=actor.user_id if isinstance(actor, Actor) else None,
            from_status=from_status,
            to_status=appointment.status,
            start_at=appointment.start_at,
            end_at=appointment.end_at,
        )
    )
    audit_log.record(
        session, actor, transition_entry(appointment, action, details), organization_id=appointment.organization_id
    )


def transition_entry(
    appointment: Appointment | AppointmentRead, action: str, details: dict[str, Any] | None = None
) -> AuditEntry:
    """The audit entry of one change of an appointment."""
    return AuditEntry(
        action=action,
        outcome=Outcome.success,
        resource_type="appointment",
        resource_id=str(appointment.id),
        patient_id=appointment.patient_id,
        details={
            "facility_id": str(appointment.facility_id),
            "practitioner_id": str(appointment.practitioner_id),
            **(details or {}),
        },
    )


def overlap_conflict(message: str) -> Conflict:
    if "no_overlap_per_patient" in message:
        return Conflict("The patient has another appointment at that time.", code="patient_busy")
    return Conflict("That time is already taken.", code="slot_taken")


async def _refuse_overlaps(session: AsyncSession, claim: Claim, buffer: timedelta) -> None:
    """409 if another active appointment of the practitioner (with the buffer around it) or of the patient
    overlaps the claimed time."""
    same_practitioner = and_(
        Appointment.practitioner_id == claim.practitioner_id,
        Appointment.start_at < claim.end + buffer,
        Appointment.end_at > claim.start - buffer,
    )
    same_patient = and_(
        Appointment.patient_id == claim.patient_id, Appointment.start_at < claim.end, Appointment.end_at > claim.start
    )
    clash = (
        await session.execute(
            select(Appointment.practitioner_id)
            .where(
                Appointment.organization_id == claim.organization_id,
                Appointment.status.in_(ACTIVE_STATUSES),
                Appointment.id != claim.appointment_id,
                or_(same_practitioner, same_patient),
            )
            .limit(1)
        )
    ).first()
    if clash is not None:
        raise overlap_conflict(
            "no_overlap_per_practitioner" if clash[0] == claim.practitioner_id else "no_overlap_per_patient"
        )


def present(appointment: Appointment) -> AppointmentRead:
    return AppointmentRead(
        id=appointment.id,
        patient_id=appointment.patient_id,
        practitioner_id=appointment.practitioner_id,
        facility_id=appointment.facility_id,
        appointment_type_id=appointment.appointment_type_id,
        start=appointment.start_at,
        end=appointment.end_at,
        status=appointment.status,
        hold_expires_at=appointment.hold_expires_at,
        version=appointment.version,
        cancellation_code=appointment.cancellation_code,
    )


# --- slot search ----------------------------------------------------------------------------------------


class Slot(NamedTuple):
    """A free slot; a tuple, because a month of them is built on every search."""

    practitioner_id: uuid.UUID
    start: datetime
    end: datetime


async def open_slots(
    session: AsyncSession,
    practitioner_id: uuid.UUID,
    facility: Facility,
    duration: timedelta,
    starts_from: datetime,
    ends_before: datetime,
    now: datetime,
) -> list[Slot]:
    """Free slots of ``duration`` for one practitioner at a facility within [starts_from, ends_before):
    availability minus appointments and live holds (with the buffer), on their grid, none before ``now``."""
    # Whole local days, so that every session keeps its own start as the anchor of its slot grid.
    days = availability.covering_local_days(facility.timezone, starts_from, ends_before)
    if session.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
        # The same inputs in one statement instead of four: a month's search is a hot path.
        first_day, last_day = _holiday_days(facility, days.start, days.end)
        schedule = await schedule_pg.read_schedule(
            session, facility.organization_id, practitioner_id, facility.id, days, first_day, last_day, now
        )
        holidays = [availability.local_day(facility.timezone, day) for day in schedule.holiday_days]
        working = assemble_working_time(schedule.rules, schedule.exceptions, holidays, facility, days.start, days.end)
        busy = schedule.busy
    else:
        working = await working_time(session, practitioner_id, facility, days.start, days.end)
        busy = await _busy(session, practitioner_id, facility, days, now)
    if working is None:
        return []
    slots = availability.free_slots(
        working.intervals,
        busy,
        duration=duration,
        granularity=working.granularity,
        buffer=working.buffer,
        not_before=max(starts_from, now),
    )
    return [Slot(practitioner_id, slot.start, slot.end) for slot in slots if slot.end <= ends_before]


async def _busy(
    session: AsyncSession, practitioner_id: uuid.UUID, facility: Facility, days: availability.Interval, now: datetime
) -> list[availability.Interval]:
    """The practitioner's taken time within ``days``: active appointments and holds that have not run out."""
    rows = await session.execute(
        select(Appointment.start_at, Appointment.end_at).where(
            Appointment.organization_id == facility.organization_id,
            Appointment.practitioner_id == practitioner_id,
            Appointment.status.in_(ACTIVE_STATUSES),
            or_(Appointment.status != AppointmentStatus.held, Appointment.hold_expires_at > now),
            Appointment.start_at < days.end,
            Appointment.end_at > days.start,
        )
    )
    return [availability.stored_interval(start, end) for start, end in rows]


async def practitioners_at(
    session: AsyncSession,
    actor: Actor,
    facility_id: uuid.UUID,
    *,
    department_id: uuid.UUID | None = None,
    specialty: str | None = None,
    appointment_type_id: uuid.UUID | None = None,
) -> list[Practitioner]:
    """Active practitioners working at a facility, of a department or a specialty, who offer the type."""
    statement = (
        scoped_select(Practitioner, actor)
        .join(PractitionerFacility, PractitionerFacility.practitioner_id == Practitioner.id)
        .where(Practitioner.active, PractitionerFacility.facility_id == facility_id)
        .order_by(Practitioner.display_name, Practitioner.id)
    )
    if department_id is not None:
        statement = statement.join(
            PractitionerDepartment, PractitionerDepartment.practitioner_id == Practitioner.id
        ).where(PractitionerDepartment.department_id == department_id)
    if specialty is not None:
        statement = statement.where(Practitioner.specialty == specialty)
    if appointment_type_id is not None:
        offers_some = select(PractitionerAppointmentType.practitioner_id).where(
            PractitionerAppointmentType.practitioner_id == Practitioner.id
        )
        offers_this = offers_some.where(PractitionerAppointmentType.appointment_type_id == appointment_type_id)
        statement = statement.where(or_(~offers_some.exists(), offers_this.exists()))
    return list((await session.scalars(statement)).all())


async def find_free_slots(session: AsyncSession, actor: Actor, query: SlotQuery) -> list[Slot]:
    """Free slots at a facility for an appointment type within [from, to): of one practitioner, or of every
    practitioner of a department or specialty there who offers the type, in time order."""
    policy.ensure_can_read_schedules(actor)
    if query.practitioner_id is not None:
        parties = _parties(actor.organization_id, query.facility_id, query.practitioner_id, query.appointment_type_id)
        found = (await session.execute(_parties_query(), parties)).first()
        if found is not None and found[3]:
            facility, practitioner, appointment_type = found[0], found[1], found[2]
        else:
            facility = await visible_facility(session, actor, query.facility_id)
            practitioner = await bookable_practitioner(session, actor, query.practitioner_id)
            appointment_type = await offered_type(session, actor, practitioner, query.appointment_type_id)
        practitioners = [practitioner]
    else:
        facility = await visible_facility(session, actor, query.facility_id)
        if query.department_id is not None:
            await visible_department(session, actor, query.department_id)
        appointment_type = await active_type(session, actor, query.appointment_type_id)
        practitioners = await practitioners_at(
            session,
            actor,
            facility.id,
            department_id=query.department_id,
            specialty=query.specialty,
            appointment_type_id=appointment_type.id,
        )
    duration = timedelta(minutes=appointment_type.duration_minutes)
    now = utcnow()
    slots: list[Slot] = []
    for practitioner in practitioners:
        slots += await open_slots(
            session, practitioner.id, facility, duration, query.starts_from, query.ends_before, now
        )
    if len(practitioners) == 1:
        return slots  # already in time order
    # UUIDs order as their text does; comparing them skips formatting a thousand of them.
    return sorted(slots, key=lambda slot: (slot.start, slot.practitioner_id))
