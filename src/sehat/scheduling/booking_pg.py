"""The booking hot path on PostgreSQL: the same decisions as ``service.book_appointment``, in three round trips
on the request's own asyncpg connection instead of a dozen ORM statements (DESIGN §8).

1. One read gathers everything the decision needs: the patient's status, the facility, whether the desk works
   there, the practitioner, the type and whether it is offered, and the practitioner's hours, leave, extra
   sessions and the facility's holidays around the time. Anything missing or refused hands over to the
   portable path, which names the problem exactly; so does a buffer, which needs its own check.
2. Holds that ran out around the time are expired, and the ordered advisory locks are taken.
3. Inside a savepoint, one statement inserts the appointment, its history row and its audit entry (the
   entry's INSERT travels as a data-modifying CTE). The exclusion constraints refuse an overlap right there.

The guarantee is unchanged: the constraints decide. Working time is computed by the same functions as on the
portable path (``service.assemble_working_time``, ``service.check_placement``).
"""

from __future__ import annotations

import asyncio
import random
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor, Audience
from sehat.core.audit import AuditEntry, AuditLog, Outcome
from sehat.core.db import driver_connection
from sehat.core.errors import Conflict
from sehat.patients.models import PatientStatus
from sehat.scheduling import availability, service
from sehat.scheduling.models import Appointment, AppointmentStatus
from sehat.scheduling.schemas import AppointmentCreate
from sehat.tenancy import policy as tenancy_policy
from sehat.tenancy.models import Facility

# $1 organization, $2 patient, $3 facility, $4 practitioner, $5 type, $6 user, $7/$8 the window, $9/$10 its days
_CONTEXT = """
SELECT
  (SELECT status FROM patients WHERE id = $2 AND organization_id = $1) AS patient_status,
  f.timezone, f.name, f.code,
  EXISTS (SELECT 1 FROM user_facilities WHERE user_id = $6 AND facility_id = $3) AS works_there,
  EXISTS (SELECT 1 FROM practitioners WHERE id = $4 AND organization_id = $1 AND active) AS practitioner_active,
  (SELECT duration_minutes FROM appointment_types WHERE id = $5 AND organization_id = $1 AND active) AS duration,
  (NOT EXISTS (SELECT 1 FROM practitioner_appointment_types WHERE practitioner_id = $4)
   OR EXISTS (SELECT 1 FROM practitioner_appointment_types WHERE practitioner_id = $4 AND appointment_type_id = $5))
    AS offered,
  (SELECT coalesce(json_agg(json_build_array(
      weekday, starts, ends, slot_minutes, buffer_minutes, valid_from, valid_until)), '[]')::text
     FROM availability_rules WHERE organization_id = $1 AND practitioner_id = $4 AND facility_id = $3) AS rules,
  (SELECT coalesce(json_agg(json_build_array(
      kind, extract(epoch FROM starts_at), extract(epoch FROM ends_at), facility_id)), '[]')::text
     FROM availability_exceptions
     WHERE organization_id = $1 AND practitioner_id = $4 AND starts_at < $8 AND ends_at > $7
       AND (facility_id IS NULL OR facility_id = $3)) AS exceptions,
  (SELECT coalesce(array_agg(day), '{}') FROM facility_holidays
     WHERE organization_id = $1 AND facility_id = $3 AND day BETWEEN $9 AND $10) AS holidays
FROM facilities f
WHERE f.id = $3 AND f.organization_id = $1
"""

# $1 organization, $2 practitioner, $3 patient, $4 start, $5 end, $6 now, $7 the advisory lock keys
_EXPIRE_AND_QUEUE = """
WITH expired AS (
  UPDATE appointments SET status = 'expired', updated_at = $6
  WHERE organization_id = $1 AND status = 'held' AND hold_expires_at <= $6
    AND (practitioner_id = $2 OR patient_id = $3) AND start_at < $5 AND end_at > $4
  RETURNING 1
)
SELECT (SELECT count(*) FROM expired), pg_advisory_xact_lock(k)
FROM (SELECT unnest($7::bigint[]) AS k ORDER BY 1) AS ordered
"""

# $1 id, $2 organization, $3 facility, $4 practitioner, $5 patient, $6 type, $7 start, $8 end, $9 status,
# $10 hold expiry, $11 now, $12 history id, $13 actor
_INSERT = """
WITH booked AS (
  INSERT INTO appointments (id, organization_id, facility_id, practitioner_id, patient_id, appointment_type_id,
                            start_at, end_at, status, hold_expires_at, version, created_at, updated_at)
  VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 1, $11, $11)
  RETURNING id
), history AS (
  INSERT INTO appointment_history (id, organization_id, appointment_id, at, actor_id, from_status, to_status,
                                   start_at, end_at)
  SELECT $12, $2, id, $11, $13, NULL, $9, $7, $8 FROM booked
)
SELECT id FROM booked
"""


@dataclass(frozen=True)
class _Hours:
    weekday: int
    starts: time
    ends: time
    slot_minutes: int
    buffer_minutes: int
    valid_from: date | None
    valid_until: date | None


@dataclass(frozen=True)
class _Exception:
    kind: str
    starts_at: datetime
    ends_at: datetime
    facility_id: uuid.UUID | None


def _hours(raw: str) -> list[_Hours]:
    return [
        _Hours(
            weekday,
            time.fromisoformat(starts),
            time.fromisoformat(ends),
            slot,
            buffer,
            date.fromisoformat(valid_from) if valid_from else None,
            date.fromisoformat(valid_until) if valid_until else None,
        )
        for weekday, starts, ends, slot, buffer, valid_from, valid_until in orjson.loads(raw)
    ]


def _exceptions(raw: str) -> list[_Exception]:
    utc = ZoneInfo("UTC")
    return [
        _Exception(
            kind,
            datetime.fromtimestamp(float(starts), utc),
            datetime.fromtimestamp(float(ends), utc),
            uuid.UUID(facility) if facility else None,
        )
        for kind, starts, ends, facility in orjson.loads(raw)
    ]


async def try_book(
    session: AsyncSession,
    audit_log: AuditLog,
    actor: Actor,
    request: AppointmentCreate,
    *,
    hold_for: timedelta | None,
    now: datetime,
) -> Appointment | None:
    """The booking, or a refusal, on the fast path; None hands the request to the portable path unchanged."""
    organization_id = actor.organization_id
    assert organization_id is not None
    if actor.audience is Audience.patient:
        return None  # a patient's own-record check lives in the portable path
    start = request.start.astimezone(ZoneInfo("UTC"))
    window = service.schedule_window(start, start + timedelta(days=1))
    driver = await session.run_sync(driver_connection)
    context = await driver.fetchrow(
        _CONTEXT,
        organization_id,
        request.patient_id,
        request.facility_id,
        request.practitioner_id,
        request.appointment_type_id,
        actor.user_id,
        window.start,
        window.end,
        (window.start - timedelta(days=1)).date(),
        (window.end + timedelta(days=1)).date(),
    )
    if (
        context is None
        or context["patient_status"] != PatientStatus.active
        or not (context["works_there"] or tenancy_policy.sees_every_facility(actor))
        or not context["practitioner_active"]
        or context["duration"] is None
        or not context["offered"]
    ):
        return None
    end = start + timedelta(minutes=context["duration"])
    if start <= now:
        raise Conflict("That time is in the past.", code="in_the_past")
    facility = Facility(
        id=request.facility_id,
        organization_id=organization_id,
        timezone=context["timezone"],
        name=context["name"],
        code=context["code"],
    )
    rules = _hours(context["rules"])
    holidays = [availability.local_day(facility.timezone, day) for day in context["holidays"]]
    working = service.assemble_working_time(
        rules, _exceptions(context["exceptions"]), holidays, facility, window.start, window.end
    )
    placed, buffer = service.check_placement(working, start, end)
    if buffer > timedelta(0):
        return None  # the buffer needs its own check after the locks: the portable path has it
    return await _insert(session, audit_log, actor, driver, request, placed, hold_for, now)


async def _insert(
    session: AsyncSession,
    audit_log: AuditLog,
    actor: Actor,
    driver: Any,
    request: AppointmentCreate,
    placed: availability.Interval,
    hold_for: timedelta | None,
    now: datetime,
) -> Appointment:
    organization_id = actor.organization_id
    assert organization_id is not None
    keys = sorted(
        {service.lock_key("practitioner", request.practitioner_id), service.lock_key("patient", request.patient_id)}
    )
    await driver.fetch(
        _EXPIRE_AND_QUEUE,
        organization_id,
        request.practitioner_id,
        request.patient_id,
        placed.start,
        placed.end,
        now,
        keys,
    )
    appointment = Appointment(
        id=uuid.uuid4(),
        organization_id=organization_id,
        facility_id=request.facility_id,
        practitioner_id=request.practitioner_id,
        patient_id=request.patient_id,
        appointment_type_id=request.appointment_type_id,
        start_at=placed.start,
        end_at=placed.end,
        status=(AppointmentStatus.held if hold_for else AppointmentStatus.booked).value,
        hold_expires_at=now + hold_for if hold_for else None,
        version=1,
        created_at=now,
        updated_at=now,
    )
    entry = AuditEntry(
        action=service.APPOINTMENT_HOLD if hold_for else service.APPOINTMENT_BOOK,
        outcome=Outcome.success,
        resource_type="appointment",
        resource_id=str(appointment.id),
        patient_id=appointment.patient_id,
        details={"facility_id": str(appointment.facility_id), "practitioner_id": str(appointment.practitioner_id)},
    )
    arguments = (
        appointment.id,
        organization_id,
        appointment.facility_id,
        appointment.practitioner_id,
        appointment.patient_id,
        appointment.appointment_type_id,
        appointment.start_at,
        appointment.end_at,
        appointment.status,
        appointment.hold_expires_at,
        now,
        uuid.uuid4(),
        actor.user_id,
    )
    for attempt in range(2):
        await driver.execute("SAVEPOINT booking")
        try:
            await audit_log.fetch_with_entry(session, actor, entry, _INSERT, *arguments)
        except asyncpg.exceptions.ExclusionViolationError as error:
            await driver.execute("ROLLBACK TO SAVEPOINT booking")
            raise service.overlap_conflict(str(error)) from None
        except asyncpg.exceptions.DeadlockDetectedError:
            # As on the portable path: step back, let the other booking finish, try once more.
            await driver.execute("ROLLBACK TO SAVEPOINT booking")
            if attempt == 1:
                raise Conflict(
                    "Someone else is booking that time right now; try again.", code="slot_contended"
                ) from None
            await asyncio.sleep(random.uniform(0.002, 0.02))  # noqa: S311 - jitter, not a secret
            continue
        await driver.execute("RELEASE SAVEPOINT booking")
        return appointment
    raise AssertionError("unreachable: the second attempt returns or raises")
