"""Changes to a schedule that booked appointments may fall outside of: leave, facility holidays, weekly hours
removed. Nothing is cancelled behind anyone's back: each booked appointment the change leaves outside working
time becomes ``needs_reschedule`` (it keeps its time until front office or the patient moves it), gets a history
row and an audit entry, and an ``appointment.needs_reschedule`` event with the next free slots of the same or an
equivalent practitioner (same specialty, same facility, offering the same type) goes to the outbox. A live hold
in such time is released instead: it was never an appointment.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core import events
from sehat.core.actor import Actor
from sehat.core.audit import AuditLog
from sehat.core.clock import utcnow
from sehat.core.errors import Conflict, InvalidInput, NotFound
from sehat.core.scoping import scoped_select
from sehat.scheduling import availability, changes, policy, service
from sehat.scheduling.models import (
    Appointment,
    AppointmentStatus,
    AppointmentType,
    AvailabilityException,
    ExceptionKind,
    FacilityHoliday,
    Practitioner,
    WeeklyHoursRule,
)
from sehat.scheduling.schemas import AbsenceCreate, HolidayCreate, RescheduleOffer, SlotRead
from sehat.tenancy.models import Facility

FLAG = "appointment.needs_reschedule"
RELEASE_HOLD = "appointment.release_hold"
NEEDS_RESCHEDULE_EVENT = "appointment.needs_reschedule"
# How many next free slots are offered for each flagged appointment, and how far ahead they are looked for.
OFFERS = 5
OFFER_HORIZON = timedelta(days=28)


async def _practitioner_at(
    session: AsyncSession, actor: Actor, practitioner_id: uuid.UUID, facility_id: uuid.UUID | None
) -> Practitioner:
    policy.ensure_can_manage_schedules(actor)
    practitioner = await service.get_practitioner(session, actor, practitioner_id)
    if (
        facility_id is not None
        and facility_id not in (await service.practitioner_links(session, practitioner.id)).facility_ids
    ):
        raise InvalidInput(
            "The practitioner does not work at this facility.",
            code="facility_not_of_practitioner",
            extra={"errors": [{"field": "facility_id", "message": "not one of the practitioner's facilities"}]},
        )
    return practitioner


async def add_leave(
    session: AsyncSession, audit_log: AuditLog, actor: Actor, practitioner_id: uuid.UUID, request: AbsenceCreate
) -> tuple[AvailabilityException, list[RescheduleOffer]]:
    """Leave at one facility, or everywhere without one; the appointments it covers are flagged."""
    practitioner = await _practitioner_at(session, actor, practitioner_id, request.facility_id)
    leave = _exception(practitioner, ExceptionKind.leave, request)
    session.add(leave)
    await session.flush()
    flagged = await flag_conflicts(
        session,
        audit_log,
        actor,
        practitioner.organization_id,
        start=request.starts,
        end=request.ends,
        practitioner_id=practitioner.id,
        facility_id=request.facility_id,
    )
    return leave, flagged


async def add_extra_session(
    session: AsyncSession, actor: Actor, practitioner_id: uuid.UUID, request: AbsenceCreate
) -> AvailabilityException:
    """A one-off session beyond the weekly hours (a Saturday clinic); it can only add bookable time."""
    practitioner = await _practitioner_at(session, actor, practitioner_id, request.facility_id)
    session_time = _exception(practitioner, ExceptionKind.extra, request)
    session.add(session_time)
    await session.flush()
    return session_time


def _exception(practitioner: Practitioner, kind: ExceptionKind, request: AbsenceCreate) -> AvailabilityException:
    return AvailabilityException(
        id=uuid.uuid4(),
        organization_id=practitioner.organization_id,
        practitioner_id=practitioner.id,
        facility_id=request.facility_id,
        kind=kind.value,
        starts_at=request.starts,
        ends_at=request.ends,
        reason=request.reason,
    )


async def list_exceptions(
    session: AsyncSession, actor: Actor, practitioner_id: uuid.UUID
) -> list[AvailabilityException]:
    practitioner = await service.get_practitioner(session, actor, practitioner_id)
    statement = (
        scoped_select(AvailabilityException, actor)
        .where(AvailabilityException.practitioner_id == practitioner.id, AvailabilityException.ends_at > utcnow())
        .order_by(AvailabilityException.starts_at)
    )
    return list((await session.scalars(statement)).all())


async def remove_weekly_hours(
    session: AsyncSession, audit_log: AuditLog, actor: Actor, practitioner_id: uuid.UUID, rule_id: uuid.UUID
) -> list[RescheduleOffer]:
    """Stop a recurring session; future appointments that were in it are flagged."""
    practitioner = await _practitioner_at(session, actor, practitioner_id, None)
    rule = await session.scalar(
        scoped_select(WeeklyHoursRule, actor).where(
            WeeklyHoursRule.id == rule_id, WeeklyHoursRule.practitioner_id == practitioner.id
        )
    )
    if rule is None:
        raise NotFound("Weekly hours not found.", code="weekly_hours_not_found")
    facility_id = rule.facility_id
    await session.delete(rule)
    await session.flush()
    return await flag_conflicts(
        session,
        audit_log,
        actor,
        practitioner.organization_id,
        start=utcnow(),
        end=None,
        practitioner_id=practitioner.id,
        facility_id=facility_id,
    )


async def add_holiday(
    session: AsyncSession, audit_log: AuditLog, actor: Actor, request: HolidayCreate
) -> tuple[FacilityHoliday, list[RescheduleOffer]]:
    """Close a facility for a local day: nobody works there, and every appointment that day is flagged."""
    policy.ensure_can_manage_schedules(actor)
    facility = await service.visible_facility(session, actor, request.facility_id)
    holiday = FacilityHoliday(
        id=uuid.uuid4(),
        organization_id=facility.organization_id,
        facility_id=facility.id,
        day=request.day,
        name=request.name,
    )
    try:
        async with session.begin_nested():
            session.add(holiday)
            await session.flush()
    except IntegrityError:
        raise Conflict("The facility is already closed that day.", code="holiday_exists") from None
    day = availability.local_day(facility.timezone, request.day)
    flagged = await flag_conflicts(
        session, audit_log, actor, facility.organization_id, start=day.start, end=day.end, facility_id=facility.id
    )
    return holiday, flagged


async def flag_conflicts(
    session: AsyncSession,
    audit_log: AuditLog,
    actor: Actor,
    organization_id: uuid.UUID,
    *,
    start: datetime,
    end: datetime | None,
    practitioner_id: uuid.UUID | None = None,
    facility_id: uuid.UUID | None = None,
) -> list[RescheduleOffer]:
    """Flag the future active appointments within [start, end) that are no longer in working time."""
    now = utcnow()
    statement = (
        select(Appointment)
        .where(
            Appointment.organization_id == organization_id,
            Appointment.status.in_((AppointmentStatus.held, AppointmentStatus.booked, AppointmentStatus.checked_in)),
            Appointment.end_at > max(start, now),
        )
        .order_by(Appointment.start_at, Appointment.id)
        .with_for_update()
    )
    if end is not None:
        statement = statement.where(Appointment.start_at < end)
    if practitioner_id is not None:
        statement = statement.where(Appointment.practitioner_id == practitioner_id)
    if facility_id is not None:
        statement = statement.where(Appointment.facility_id == facility_id)
    appointments = (await session.scalars(statement)).all()
    by_schedule: dict[tuple[uuid.UUID, uuid.UUID], list[Appointment]] = defaultdict(list)
    for appointment in appointments:
        by_schedule[(appointment.practitioner_id, appointment.facility_id)].append(appointment)
    flagged: list[RescheduleOffer] = []
    for (practitioner, facility_key), group in by_schedule.items():
        facility = await session.get(Facility, facility_key)
        assert facility is not None
        working = await service.working_time(
            session, practitioner, facility, group[0].start_at - timedelta(days=1), group[-1].end_at + timedelta(days=1)
        )
        intervals = working.intervals if working else []
        for appointment in group:
            if availability.stretch_containing(intervals, appointment.start_at, appointment.end_at) is not None:
                continue
            flagged += await _flag(session, audit_log, actor, appointment, facility, now)
    await session.flush()
    return flagged


async def _flag(
    session: AsyncSession,
    audit_log: AuditLog,
    actor: Actor,
    appointment: Appointment,
    facility: Facility,
    now: datetime,
) -> list[RescheduleOffer]:
    previous = appointment.status
    appointment.version += 1
    appointment.updated_at = now
    if previous == AppointmentStatus.held:
        appointment.status = AppointmentStatus.expired.value
        appointment.hold_expires_at = None
        service.record_transition(session, audit_log, actor, appointment, previous, RELEASE_HOLD, now)
        return []
    appointment.status = AppointmentStatus.needs_reschedule.value
    service.record_transition(session, audit_log, actor, appointment, previous, FLAG, now)
    offers = await reschedule_offers(session, actor, appointment, facility, now)
    events.emit(
        session,
        appointment.organization_id,
        NEEDS_RESCHEDULE_EVENT,
        {
            "appointment_id": str(appointment.id),
            "patient_id": str(appointment.patient_id),
            "practitioner_id": str(appointment.practitioner_id),
            "facility_id": str(appointment.facility_id),
            "start": appointment.start_at.isoformat(),
            "offers": [offer.model_dump(mode="json") for offer in offers],
        },
    )
    return [RescheduleOffer(appointment_id=appointment.id, offers=offers)]


async def reschedule_offers(
    session: AsyncSession, actor: Actor, appointment: Appointment, facility: Facility, now: datetime
) -> list[SlotRead]:
    """The next free slots for this appointment's type at its facility, with its practitioner or an equivalent
    one, earliest first."""
    appointment_type = await session.get(AppointmentType, appointment.appointment_type_id)
    practitioner = await session.get(Practitioner, appointment.practitioner_id)
    assert appointment_type is not None and practitioner is not None
    equivalents = await service.practitioners_at(
        session, actor, facility.id, specialty=practitioner.specialty, appointment_type_id=appointment_type.id
    )
    candidates = [practitioner] + [other for other in equivalents if other.id != practitioner.id]
    duration = timedelta(minutes=appointment_type.duration_minutes)
    slots: list[service.Slot] = []
    for candidate in candidates:
        found = await service.open_slots(session, candidate.id, facility, duration, now, now + OFFER_HORIZON, now)
        slots += found[:OFFERS]
    slots.sort(key=lambda slot: (slot.start, slot.practitioner_id != practitioner.id))
    return [SlotRead(start=slot.start, end=slot.end, practitioner_id=slot.practitioner_id) for slot in slots[:OFFERS]]


async def offers_for(
    session: AsyncSession, audit_log: AuditLog, actor: Actor, appointment_id: uuid.UUID
) -> list[SlotRead]:
    """The next free slots for an appointment the caller may see; looking at it is audited like any read."""
    appointment = await changes.visible_appointment(session, actor, appointment_id)
    audit_log.record(session, actor, changes.read_entry(changes.READ, appointment))
    facility = await session.get(Facility, appointment.facility_id)
    assert facility is not None
    return await reschedule_offers(session, actor, appointment, facility, utcnow())
