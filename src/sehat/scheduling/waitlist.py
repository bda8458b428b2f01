"""The waitlist: a patient waits for a practitioner, or for anyone in a department, at a facility between two
local dates. When a cancellation or a reschedule frees time, the first patient in line for it is given a hold
on a slot inside the freed time at once (for ``SEHAT_WAITLIST_HOLD_MINUTES``), and a ``waitlist.hold_offered``
event goes to the outbox for the notifications to tell them. Confirming the hold books it; if it runs out, the
time is free for anyone again.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core import events
from sehat.core.actor import Actor, Audience, SystemActor
from sehat.core.audit import AuditEntry, AuditLog, Outcome
from sehat.core.clock import utcnow
from sehat.core.errors import Conflict, InvalidInput, NotFound
from sehat.core.pagination import paginate
from sehat.core.scoping import scoped_select
from sehat.patients import service as patients_service
from sehat.patients.models import Patient, PatientStatus
from sehat.scheduling import availability, policy, service
from sehat.scheduling.models import (
    Appointment,
    AppointmentStatus,
    AppointmentType,
    PractitionerDepartment,
    WaitlistEntry,
    WaitlistStatus,
)
from sehat.scheduling.schemas import WaitlistCreate
from sehat.tenancy import policy as tenancy_policy
from sehat.tenancy import service as tenancy_service
from sehat.tenancy.models import Facility

JOIN = "waitlist.join"
WITHDRAW = "waitlist.withdraw"
HOLD_OFFERED = "waitlist.hold_offered"
# How many people in line are tried for one freed stretch before giving up (each may be busy at that time).
_CANDIDATES = 20


def _entry_audit(action: str, entry: WaitlistEntry, **details: str) -> AuditEntry:
    return AuditEntry(
        action=action,
        outcome=Outcome.success,
        resource_type="waitlist_entry",
        resource_id=str(entry.id),
        patient_id=entry.patient_id,
        details={"facility_id": str(entry.facility_id), **details},
    )


async def join(session: AsyncSession, audit_log: AuditLog, actor: Actor, request: WaitlistCreate) -> WaitlistEntry:
    policy.ensure_can_manage_waitlist(actor)
    assert actor.organization_id is not None
    patient = await service.bookable_patient(session, actor, request.patient_id)
    facility = await service.visible_facility(session, actor, request.facility_id)
    await service.ensure_staff_works_at(session, actor, facility.id)
    if request.practitioner_id is not None:
        practitioner = await service.bookable_practitioner(session, actor, request.practitioner_id)
        if facility.id not in (await service.practitioner_links(session, practitioner.id)).facility_ids:
            raise NotFound("Practitioner not found.", code="practitioner_not_found")
        await service.offered_type(session, actor, practitioner, request.appointment_type_id)
    else:
        assert request.department_id is not None  # the schema requires one of the two
        await service.visible_department(session, actor, request.department_id)
        await service.active_type(session, actor, request.appointment_type_id)
    today = utcnow().astimezone(ZoneInfo(facility.timezone)).date()
    if request.to_date < today:
        raise InvalidInput(
            "The dates are in the past.",
            code="dates_in_the_past",
            extra={"errors": [{"field": "to_date", "message": "before today at the facility"}]},
        )
    already = await session.scalar(
        scoped_select(WaitlistEntry, actor)
        .with_only_columns(WaitlistEntry.id)
        .where(
            WaitlistEntry.patient_id == patient.id,
            WaitlistEntry.facility_id == facility.id,
            WaitlistEntry.status.in_((WaitlistStatus.waiting, WaitlistStatus.offered)),
            WaitlistEntry.practitioner_id == request.practitioner_id
            if request.practitioner_id
            else WaitlistEntry.department_id == request.department_id,
        )
    )
    if already is not None:
        raise Conflict("The patient is already waiting for this.", code="already_waiting")
    now = utcnow()
    entry = WaitlistEntry(
        id=uuid.uuid4(),
        organization_id=actor.organization_id,
        created_by=actor.user_id,
        status=WaitlistStatus.waiting.value,
        created_at=now,
        updated_at=now,
        **request.model_dump(),
    )
    session.add(entry)
    audit_log.record(session, actor, _entry_audit(JOIN, entry))
    await session.flush()
    return entry


async def _visible_entries(session: AsyncSession, actor: Actor) -> Select[tuple[WaitlistEntry]]:
    statement = scoped_select(WaitlistEntry, actor)
    if actor.audience is Audience.patient:
        return statement.where(WaitlistEntry.patient_id == await patients_service.own_patient_id(session, actor))
    if not tenancy_policy.sees_every_facility(actor):
        return statement.where(WaitlistEntry.facility_id.in_(tenancy_service.facilities_worked_at(actor)))
    return statement


async def list_entries(
    session: AsyncSession,
    audit_log: AuditLog,
    actor: Actor,
    *,
    status: str | None,
    facility_id: uuid.UUID | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[WaitlistEntry], str | None]:
    """Entries the caller may see, first in line first."""
    policy.ensure_can_manage_waitlist(actor)
    statement = await _visible_entries(session, actor)
    if status is not None:
        statement = statement.where(WaitlistEntry.status == status)
    if facility_id is not None:
        statement = statement.where(WaitlistEntry.facility_id == facility_id)
    rows, next_cursor = await paginate(session, statement, WaitlistEntry, limit=limit, cursor=cursor)
    await audit_log.record_many(session, actor, [_entry_audit("waitlist.list", entry) for entry in rows])
    return rows, next_cursor


async def withdraw(session: AsyncSession, audit_log: AuditLog, actor: Actor, entry_id: uuid.UUID) -> WaitlistEntry:
    """Leave the waitlist. A hold it was offered is released, so the time is free for others."""
    policy.ensure_can_manage_waitlist(actor)
    statement = await _visible_entries(session, actor)
    entry = await session.scalar(statement.where(WaitlistEntry.id == entry_id).with_for_update())
    if entry is None:
        raise NotFound("Waitlist entry not found.", code="waitlist_entry_not_found")
    if entry.status not in (WaitlistStatus.waiting, WaitlistStatus.offered):
        raise Conflict(f"The entry is already {entry.status}.", code="invalid_transition")
    now = utcnow()
    if entry.hold_id is not None:
        hold = await session.scalar(select(Appointment).where(Appointment.id == entry.hold_id).with_for_update())
        if hold is not None and hold.status == AppointmentStatus.held:
            hold.status = AppointmentStatus.expired.value
            hold.hold_expires_at = None
            hold.version += 1
            hold.updated_at = now
            service.record_transition(
                session, audit_log, actor, hold, AppointmentStatus.held.value, "appointment.release_hold", now
            )
    entry.status = WaitlistStatus.withdrawn.value
    entry.updated_at = now
    audit_log.record(session, actor, _entry_audit(WITHDRAW, entry))
    await session.flush()
    return entry


async def mark_booked(session: AsyncSession, hold: Appointment, now: datetime) -> None:
    """A waitlist hold was confirmed: the patient's entry is done."""
    entry = await session.scalar(
        select(WaitlistEntry).where(
            WaitlistEntry.organization_id == hold.organization_id, WaitlistEntry.hold_id == hold.id
        )
    )
    if entry is not None:
        entry.status = WaitlistStatus.booked.value
        entry.updated_at = now


@dataclass(frozen=True)
class FreedTime:
    practitioner_id: uuid.UUID
    start: datetime
    end: datetime


async def offer_freed_time(
    session: AsyncSession,
    audit_log: AuditLog,
    actor: Actor,
    facility_id: uuid.UUID,
    freed: FreedTime,
    *,
    hold_for: timedelta,
    now: datetime | None = None,
) -> Appointment | None:
    """Give the first patient in line for this practitioner (or their department) on that day a hold on a free
    slot of their appointment type inside the freed time; None when nobody waiting fits."""
    now = now or utcnow()
    if freed.end <= now:
        return None
    facility = await session.get(Facility, facility_id)
    assert facility is not None
    organization_id = facility.organization_id
    day = max(freed.start, now).astimezone(ZoneInfo(facility.timezone)).date()
    departments = select(PractitionerDepartment.department_id).where(
        PractitionerDepartment.practitioner_id == freed.practitioner_id
    )
    # Locked in line order: two cancellations at once cannot both hand time to the same person, and a person
    # whose entry another transaction just changed is re-checked against the status when the lock is granted.
    candidates = (
        await session.scalars(
            select(WaitlistEntry)
            .where(
                WaitlistEntry.organization_id == organization_id,
                WaitlistEntry.facility_id == facility.id,
                WaitlistEntry.status == WaitlistStatus.waiting,
                WaitlistEntry.from_date <= day,
                WaitlistEntry.to_date >= day,
                or_(
                    WaitlistEntry.practitioner_id == freed.practitioner_id,
                    WaitlistEntry.department_id.in_(departments),
                ),
            )
            .order_by(WaitlistEntry.created_at, WaitlistEntry.id)
            .limit(_CANDIDATES)
            .with_for_update()
        )
    ).all()
    system = SystemActor(name="waitlist", request_id=actor.request_id)
    for entry in candidates:
        hold = await _hold_for(session, audit_log, system, actor, entry, facility, freed, hold_for, now)
        if hold is None:
            continue
        entry.status = WaitlistStatus.offered.value
        entry.hold_id = hold.id
        entry.updated_at = now
        events.emit(
            session,
            organization_id,
            HOLD_OFFERED,
            {
                "waitlist_entry_id": str(entry.id),
                "appointment_id": str(hold.id),
                "patient_id": str(hold.patient_id),
                "practitioner_id": str(hold.practitioner_id),
                "facility_id": str(facility.id),
                "start": hold.start_at.isoformat(),
                "end": hold.end_at.isoformat(),
                "hold_expires_at": hold.hold_expires_at.isoformat() if hold.hold_expires_at else None,
            },
        )
        await session.flush()
        return hold
    return None


async def _hold_for(
    session: AsyncSession,
    audit_log: AuditLog,
    system: SystemActor,
    cause: Actor,
    entry: WaitlistEntry,
    facility: Facility,
    freed: FreedTime,
    hold_for: timedelta,
    now: datetime,
) -> Appointment | None:
    """A hold for the entry's patient on the first slot of their type that lies in the freed time, or None."""
    patient = await session.get(Patient, entry.patient_id)
    if patient is None or patient.status != PatientStatus.active:
        return None
    appointment_type = await session.get(AppointmentType, entry.appointment_type_id)
    if appointment_type is None or not appointment_type.active:
        return None
    if not await service.type_is_offered(session, freed.practitioner_id, appointment_type.id):
        return None
    duration = timedelta(minutes=appointment_type.duration_minutes)
    # A slot may begin before the freed time if the time before it was free already: it must only overlap it.
    slots = await service.open_slots(
        session, freed.practitioner_id, facility, duration, freed.start - duration, freed.end + duration, now
    )
    zone = ZoneInfo(facility.timezone)
    working = await service.working_time(session, freed.practitioner_id, facility, freed.start, freed.end)
    buffer = working.buffer if working else timedelta(0)
    fitting = [
        slot
        for slot in slots
        if slot.start < freed.end
        and slot.end > freed.start
        and entry.from_date <= slot.start.astimezone(zone).date() <= entry.to_date
    ]
    # The freed start itself first, then later ones inside it, then those reaching back into earlier free time.
    fitting.sort(key=lambda slot: (slot.start < freed.start, slot.start))
    for slot in fitting:
        try:
            return await service.take_time(
                session,
                audit_log,
                system,
                patient_id=entry.patient_id,
                practitioner_id=freed.practitioner_id,
                facility=facility,
                appointment_type_id=appointment_type.id,
                time=availability.Interval(slot.start, slot.end),
                buffer=buffer,
                now=now,
                hold_for=hold_for,
                details={"waitlist_entry_id": str(entry.id), "caused_by": str(cause.user_id)},
            )
        except Conflict:
            return None  # the patient is busy then (or someone else took it): the next person in line
    return None
