"""What happens to an appointment after it is booked: reading and listing it, rescheduling (atomically: the new
time is taken and the old one freed in one UPDATE, or nothing changes), cancelling with a reason, marking a
no-show and checking in. Each change locks the row, checks that the transition is allowed, and keeps a history
row and an audit entry. Only the unit of work commits.

Staff act at the facilities they work at (organization administrators everywhere); a patient may read, cancel
and reschedule their own appointments, not check in or mark a no-show.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor, Audience
from sehat.core.audit import AuditEntry, AuditLog, Outcome
from sehat.core.clock import utcnow
from sehat.core.crypto import KeyRing, associated_data
from sehat.core.errors import Conflict, NotFound, PreconditionFailed
from sehat.core.pagination import paginate
from sehat.core.scoping import scoped_select
from sehat.patients import service as patients_service
from sehat.scheduling import policy, service, waitlist
from sehat.scheduling.models import Appointment, AppointmentStatus
from sehat.scheduling.schemas import (
    AppointmentCancel,
    AppointmentListQuery,
    AppointmentRead,
    AppointmentReschedule,
)
from sehat.tenancy import policy as tenancy_policy
from sehat.tenancy import service as tenancy_service
from sehat.tenancy.models import Facility

READ = "appointment.read"
LIST = "appointment.list"
CANCEL = "appointment.cancel"
RESCHEDULE = "appointment.reschedule"
NO_SHOW = "appointment.no_show"
CHECK_IN = "appointment.check_in"
CONFIRM = service.APPOINTMENT_CONFIRM

Status = AppointmentStatus
# Which statuses each change may start from; anything else is 409 ``invalid_transition``.
_CANCELLABLE = frozenset({Status.held, Status.booked, Status.checked_in, Status.needs_reschedule})
_RESCHEDULABLE = frozenset({Status.booked, Status.needs_reschedule})
_MAY_NOT_SHOW = frozenset({Status.booked, Status.needs_reschedule})
_MAY_CHECK_IN = frozenset({Status.booked})
# A patient is checked in on the day of their appointment, not the evening before.
CHECK_IN_OPENS = timedelta(hours=4)


def reason_place(appointment: Appointment) -> bytes:
    return associated_data("appointments", "reason_sealed", appointment.id, appointment.organization_id)


async def _is_own(session: AsyncSession, actor: Actor, appointment: Appointment) -> bool:
    return await patients_service.own_patient_id(session, actor) == appointment.patient_id


async def visible_appointment(
    session: AsyncSession, actor: Actor, appointment_id: uuid.UUID, *, for_update: bool = False
) -> Appointment:
    """The appointment, if the caller may see it: a patient their own, staff those at their facilities. Locked
    for the rest of the transaction with ``for_update``, so two changes of one appointment take turns."""
    policy.ensure_can_read_appointments(actor)
    statement = scoped_select(Appointment, actor).where(Appointment.id == appointment_id)
    if for_update:
        statement = statement.with_for_update().execution_options(populate_existing=True)
    appointment = await session.scalar(statement)
    if appointment is None:
        raise NotFound("Appointment not found.", code="appointment_not_found")
    try:
        if actor.audience is Audience.patient:
            if not await _is_own(session, actor, appointment):
                raise NotFound("Appointment not found.", code="appointment_not_found")
        else:
            await service.ensure_staff_works_at(session, actor, appointment.facility_id)
    except NotFound:
        raise NotFound("Appointment not found.", code="appointment_not_found") from None
    return appointment


def present(appointment: Appointment, *, key_ring: KeyRing | None = None) -> AppointmentRead:
    """The appointment as the API shows it; with ``key_ring``, the cancellation reason opened too."""
    read = service.present(appointment)
    if key_ring is not None and appointment.reason_sealed is not None:
        read.cancellation_reason = key_ring.open(appointment.reason_sealed, reason_place(appointment)).decode()
    return read


def _may_read_reason(actor: Actor) -> bool:
    return actor.audience is Audience.patient or policy.may_manage_appointments(actor)


def read_entry(action: str, appointment: Appointment) -> AuditEntry:
    return AuditEntry(
        action=action,
        outcome=Outcome.success,
        resource_type="appointment",
        resource_id=str(appointment.id),
        patient_id=appointment.patient_id,
        details={"facility_id": str(appointment.facility_id)},
    )


async def read_appointment(
    session: AsyncSession, audit_log: AuditLog, key_ring: KeyRing, actor: Actor, appointment_id: uuid.UUID
) -> AppointmentRead:
    appointment = await visible_appointment(session, actor, appointment_id)
    audit_log.record(session, actor, read_entry(READ, appointment))
    return present(appointment, key_ring=key_ring if _may_read_reason(actor) else None)


async def list_appointments(
    session: AsyncSession, audit_log: AuditLog, actor: Actor, query: AppointmentListQuery
) -> tuple[list[AppointmentRead], str | None]:
    """Appointments the caller may see, filtered, oldest booking first; each one listed is audited."""
    policy.ensure_can_read_appointments(actor)
    statement = scoped_select(Appointment, actor)
    if actor.audience is Audience.patient:
        statement = statement.where(Appointment.patient_id == await patients_service.own_patient_id(session, actor))
    elif not tenancy_policy.sees_every_facility(actor):
        statement = statement.where(Appointment.facility_id.in_(tenancy_service.facilities_worked_at(actor)))
    for column, wanted in (
        (Appointment.practitioner_id, query.practitioner_id),
        (Appointment.patient_id, query.patient_id),
        (Appointment.facility_id, query.facility_id),
        (Appointment.status, query.status),
    ):
        if wanted is not None:
            statement = statement.where(column == wanted)
    if query.starts_from is not None:
        statement = statement.where(Appointment.end_at > query.starts_from)
    if query.ends_before is not None:
        statement = statement.where(Appointment.start_at < query.ends_before)
    rows, cursor = await paginate(session, statement, Appointment, limit=query.limit, cursor=query.cursor)
    await audit_log.record_many(session, actor, [read_entry(LIST, appointment) for appointment in rows])
    return [present(appointment) for appointment in rows], cursor


async def _changeable(
    session: AsyncSession,
    actor: Actor,
    appointment_id: uuid.UUID,
    allowed: frozenset[AppointmentStatus],
    *,
    patients_may: bool,
    expected_version: int | None,
) -> Appointment:
    if patients_may:
        policy.ensure_can_change_appointments(actor)
    else:
        policy.ensure_can_manage_appointments(actor)
    appointment = await visible_appointment(session, actor, appointment_id, for_update=True)
    if expected_version is not None and expected_version != appointment.version:
        raise PreconditionFailed("The appointment changed since you read it; read it again.", code="version_mismatch")
    if appointment.status not in allowed:
        raise Conflict(
            f"An appointment that is {appointment.status} cannot be changed that way.",
            code="invalid_transition",
            extra={"status": appointment.status},
        )
    return appointment


def _bump(appointment: Appointment, status: AppointmentStatus, now: datetime) -> str:
    previous = appointment.status
    appointment.status = status.value
    appointment.version += 1
    appointment.updated_at = now
    return previous


async def cancel(
    session: AsyncSession,
    audit_log: AuditLog,
    key_ring: KeyRing,
    actor: Actor,
    appointment_id: uuid.UUID,
    request: AppointmentCancel,
    *,
    expected_version: int | None = None,
    waitlist_hold: timedelta,
) -> Appointment:
    """Cancel, freeing the time at once; the first matching patient on the waitlist is offered it as a hold."""
    appointment = await _changeable(
        session, actor, appointment_id, _CANCELLABLE, patients_may=True, expected_version=expected_version
    )
    now = utcnow()
    previous = _bump(appointment, Status.cancelled, now)
    appointment.hold_expires_at = None
    appointment.cancellation_code = request.code.value
    if request.reason is not None:
        appointment.reason_sealed = key_ring.seal(request.reason.encode(), reason_place(appointment))
    service.record_transition(
        session, audit_log, actor, appointment, previous, CANCEL, now, {"code": request.code.value}
    )
    await session.flush()
    if previous != Status.held:  # a released hold was never anyone's appointment: nobody waits behind it
        freed = waitlist.FreedTime(appointment.practitioner_id, appointment.start_at, appointment.end_at)
        await waitlist.offer_freed_time(
            session, audit_log, actor, appointment.facility_id, freed, hold_for=waitlist_hold, now=now
        )
    return appointment


async def reschedule(
    session: AsyncSession,
    audit_log: AuditLog,
    actor: Actor,
    appointment_id: uuid.UUID,
    request: AppointmentReschedule,
    *,
    expected_version: int | None = None,
    waitlist_hold: timedelta,
) -> Appointment:
    """Move the appointment to a new time (and, optionally, an equivalent practitioner or another type) in one
    UPDATE of its row: the constraints see the new time taken and the old freed together, so either both
    happen or, with 409, neither."""
    appointment = await _changeable(
        session, actor, appointment_id, _RESCHEDULABLE, patients_may=True, expected_version=expected_version
    )
    facility = await session.scalar(scoped_select(Facility, actor).where(Facility.id == appointment.facility_id))
    assert facility is not None
    practitioner = await service.bookable_practitioner(
        session, actor, request.practitioner_id or appointment.practitioner_id
    )
    if practitioner.id != appointment.practitioner_id and not await _works_at(session, practitioner.id, facility):
        raise NotFound("Practitioner not found.", code="practitioner_not_found")
    appointment_type = await service.offered_type(
        session, actor, practitioner, request.appointment_type_id or appointment.appointment_type_id
    )
    now = utcnow()
    time, buffer = await service.place_in_schedule(
        session, practitioner, facility, appointment_type, request.start, now
    )
    freed = waitlist.FreedTime(appointment.practitioner_id, appointment.start_at, appointment.end_at)
    previous, version = appointment.status, appointment.version + 1

    def move() -> None:
        # Plain assignments, no reads: a retried attempt follows a savepoint rollback that expired the row.
        appointment.practitioner_id = practitioner.id
        appointment.appointment_type_id = appointment_type.id
        appointment.start_at, appointment.end_at = time.start, time.end
        appointment.status = Status.booked.value
        appointment.version = version
        appointment.updated_at = now

    claim = service.Claim(
        appointment.id, appointment.organization_id, practitioner.id, appointment.patient_id, time.start, time.end
    )
    await service.occupy(session, claim, buffer=buffer, now=now, apply=move)
    await session.refresh(appointment)
    service.record_transition(
        session,
        audit_log,
        actor,
        appointment,
        previous,
        RESCHEDULE,
        now,
        {"from_start": freed.start.isoformat(), "from_practitioner_id": str(freed.practitioner_id)},
    )
    await session.flush()
    await waitlist.offer_freed_time(
        session, audit_log, actor, appointment.facility_id, freed, hold_for=waitlist_hold, now=now
    )
    return appointment


async def _works_at(session: AsyncSession, practitioner_id: uuid.UUID, facility: Facility) -> bool:
    found = await session.scalar(
        select(service.PractitionerFacility.facility_id).where(
            service.PractitionerFacility.practitioner_id == practitioner_id,
            service.PractitionerFacility.facility_id == facility.id,
        )
    )
    return found is not None


@dataclass(frozen=True)
class Mark:
    """A change staff record about a visit: from which statuses, to which, audited as what, and when."""

    allowed: frozenset[AppointmentStatus]
    to_status: AppointmentStatus
    action: str
    check_time: Callable[[Appointment, datetime], None]


def _begun(appointment: Appointment, now: datetime) -> None:
    # Before the start the patient may still arrive.
    if now < appointment.start_at:
        raise Conflict("The appointment has not begun yet.", code="too_early")


def _on_the_day(appointment: Appointment, now: datetime) -> None:
    if now < appointment.start_at - CHECK_IN_OPENS:
        opens = (appointment.start_at - CHECK_IN_OPENS).astimezone(ZoneInfo("UTC")).isoformat()
        raise Conflict(f"Check-in opens at {opens}.", code="too_early")
    if now >= appointment.end_at:
        raise Conflict("The appointment is over; book a new one or register a walk-in.", code="too_late")


# The patient did not come: only once the appointment has begun.
NO_SHOW_MARK = Mark(_MAY_NOT_SHOW, Status.no_show, NO_SHOW, _begun)
# The patient arrived, from a few hours before the start until the end: from here the OPD queue takes over.
CHECK_IN_MARK = Mark(_MAY_CHECK_IN, Status.checked_in, CHECK_IN, _on_the_day)


async def mark(
    session: AsyncSession,
    audit_log: AuditLog,
    actor: Actor,
    appointment_id: uuid.UUID,
    what: Mark,
    *,
    expected_version: int | None = None,
) -> Appointment:
    appointment = await _changeable(
        session, actor, appointment_id, what.allowed, patients_may=False, expected_version=expected_version
    )
    now = utcnow()
    what.check_time(appointment, now)
    previous = _bump(appointment, what.to_status, now)
    service.record_transition(session, audit_log, actor, appointment, previous, what.action, now)
    await session.flush()
    return appointment


async def confirm_hold(session: AsyncSession, audit_log: AuditLog, actor: Actor, hold_id: uuid.UUID) -> Appointment:
    """Turn a live hold into a booking. Its time is already the hold's (the constraints saw to that), so a
    confirmation cannot collide; a hold that ran out is refused with 409 ``hold_expired``."""
    policy.ensure_can_book(actor)
    hold = await visible_appointment(session, actor, hold_id, for_update=True)
    now = utcnow()
    if hold.status != Status.held:
        raise Conflict("This is not a hold.", code="not_a_hold")
    if hold.hold_expires_at is None or hold.hold_expires_at <= now:
        raise Conflict("The hold ran out; search for a slot again.", code="hold_expired")
    previous = _bump(hold, Status.booked, now)
    hold.hold_expires_at = None
    service.record_transition(session, audit_log, actor, hold, previous, CONFIRM, now)
    await waitlist.mark_booked(session, hold, now)
    await session.flush()
    return hold
