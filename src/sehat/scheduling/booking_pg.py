"""The booking hot path on PostgreSQL: the same decisions as ``service.book_appointment`` in two statements on
the request's own asyncpg connection, instead of a dozen ORM statements (DESIGN §8).

1. One statement claims the idempotency key (if any), then takes the ordered advisory locks, then expires
   holds that ran out around the time (the same order as the portable path), and reads everything the
   decision needs: the patient's status, the facility,
   whether the desk works there, the practitioner, the type and whether it is offered, and the practitioner's
   hours, leave, extra sessions and the facility's holidays around the time.
2. One statement inserts the appointment, its history row and its audit entry (the entry's INSERT travels as
   a data-modifying CTE) and settles the idempotency key. The exclusion constraints refuse an overlap right
   there; the request then answers 409 and its transaction, claim included, rolls back.

Anything the hot path cannot name exactly (a missing or foreign id, an inactive patient, a type not offered,
a patient's own-record check, a buffer, which needs its own check after the locks) is handed to the portable
path, which answers it. Working time and placement are the same functions on both paths
(``service.assemble_working_time``, ``service.check_placement``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor, Audience
from sehat.core.audit import AuditLog
from sehat.core.db import driver_connection
from sehat.core.errors import Conflict
from sehat.patients.models import PatientStatus
from sehat.scheduling import availability, schedule_pg, service
from sehat.scheduling.models import Appointment, AppointmentStatus
from sehat.scheduling.schemas import AppointmentCreate
from sehat.tenancy import policy as tenancy_policy
from sehat.tenancy.models import Facility

# $1 organization, $2 patient, $3 facility, $4 practitioner, $5 type, $6 user, $7/$8 the window, $9/$10 its
# days, $11 now, $12 the advisory lock keys, $13 the idempotency key (or NULL), $14 the route, $15 the body hash
# Placeholders only are formatted in (no value ever is), so this is not string-built SQL.
_CONTEXT = f"""
WITH claim AS (
  INSERT INTO idempotency_records (organization_id, user_id, key, route, request_hash, status_code, response,
                                   created_at)
  SELECT $1, $6, $13, $14, $15, 0, '{{}}'::json, $11 WHERE $13::varchar IS NOT NULL
  ON CONFLICT DO NOTHING
  RETURNING 1
), queued AS (
  -- After the claim (a request waiting for another with the same key holds no lock meanwhile), before
  -- touching any row: the same order as the portable path, so the two cannot deadlock each other.
  SELECT count(pg_advisory_xact_lock(k)) AS locks FROM (SELECT unnest($12::bigint[]) AS k ORDER BY 1) AS ordered
  WHERE (SELECT count(*) FROM claim) >= 0
), expired AS (
  UPDATE appointments SET status = 'expired', updated_at = $11
  WHERE organization_id = $1 AND status = 'held' AND hold_expires_at <= $11
    AND (practitioner_id = $4 OR patient_id = $2) AND start_at < $8 AND end_at > $7
    AND (SELECT locks FROM queued) IS NOT NULL
  RETURNING 1
)
SELECT
  EXISTS (SELECT 1 FROM claim) AS claimed,
  (SELECT count(*) FROM expired) AS expired,
  (SELECT locks FROM queued) AS locks,
  (SELECT status FROM patients WHERE id = $2 AND organization_id = $1) AS patient_status,
  f.timezone, f.name, f.code,
  EXISTS (SELECT 1 FROM user_facilities WHERE user_id = $6 AND facility_id = $3) AS works_there,
  EXISTS (SELECT 1 FROM practitioners WHERE id = $4 AND organization_id = $1 AND active) AS practitioner_active,
  (SELECT duration_minutes FROM appointment_types WHERE id = $5 AND organization_id = $1 AND active) AS duration,
  (NOT EXISTS (SELECT 1 FROM practitioner_appointment_types WHERE practitioner_id = $4)
   OR EXISTS (SELECT 1 FROM practitioner_appointment_types WHERE practitioner_id = $4 AND appointment_type_id = $5))
    AS offered,
  {schedule_pg.schedule_columns("$1", "$4", "$3", "$7", "$8", "$9", "$10")}
FROM (SELECT 1) AS one
LEFT JOIN facilities f ON f.id = $3 AND f.organization_id = $1
"""  # noqa: S608

# $1 id, $2 organization, $3 facility, $4 practitioner, $5 patient, $6 type, $7 start, $8 end, $9 status,
# $10 hold expiry, $11 now, $12 history id, $13 actor, $14 the idempotency key (or NULL), $15 the answer
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
), settled AS (
  UPDATE idempotency_records SET status_code = 201, response = $15::text::json
  WHERE organization_id = $2 AND user_id = $13 AND key = $14::varchar AND EXISTS (SELECT 1 FROM booked)
)
SELECT id FROM booked
"""


@dataclass(frozen=True)
class Decision:
    """What the hot path did: booked (``appointment``), or handed over; ``claimed`` says whether it already
    claimed the idempotency key for this transaction (the portable path must not claim it again)."""

    appointment: Appointment | None
    claimed: bool
    # The booking as the API answers it (and as the idempotency key now replays it).
    answer: dict[str, Any] | None = None


async def try_book(
    session: AsyncSession,
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
        return Decision(None, claimed=False)  # a patient's own-record check lives in the portable path
    start = request.start.astimezone(ZoneInfo("UTC"))
    window = service.schedule_window(start, start + timedelta(days=1))
    keys = sorted(
        {service.lock_key("practitioner", request.practitioner_id), service.lock_key("patient", request.patient_id)}
    )
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
        now,
        keys,
        idempotency_key,
        service.BOOK_ROUTE,
        service.request_fingerprint(request),
    )
    claimed = bool(context["claimed"])
    if idempotency_key is not None and not claimed:
        return Decision(None, claimed=False)  # used before: the portable path replays or refuses it
    if (
        context["timezone"] is None
        or context["patient_status"] != PatientStatus.active
        or not (context["works_there"] or tenancy_policy.sees_every_facility(actor))
        or not context["practitioner_active"]
        or context["duration"] is None
        or not context["offered"]
    ):
        return Decision(None, claimed)
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
    holidays = [availability.local_day(facility.timezone, day) for day in context["holidays"]]
    working = service.assemble_working_time(
        schedule_pg.hours(context["rules"]),
        schedule_pg.exceptions(context["exceptions"]),
        holidays,
        facility,
        window.start,
        window.end,
    )
    placed, buffer = service.check_placement(working, start, end)
    if buffer > timedelta(0):
        return Decision(None, claimed)  # the buffer needs its own check after the locks: the portable path has it
    appointment, answer = await _insert(session, audit_log, actor, request, placed, hold_for, now, idempotency_key)
    return Decision(appointment, claimed, answer)


async def _insert(
    session: AsyncSession,
    audit_log: AuditLog,
    actor: Actor,
    request: AppointmentCreate,
    placed: availability.Interval,
    hold_for: timedelta | None,
    now: datetime,
    idempotency_key: str | None,
) -> tuple[Appointment, dict[str, Any]]:
    organization_id = actor.organization_id
    assert organization_id is not None
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
    entry = service.transition_entry(appointment, service.APPOINTMENT_HOLD if hold_for else service.APPOINTMENT_BOOK)
    answer = service.present(appointment).model_dump(mode="json")
    try:
        await audit_log.fetch_with_entry(
            session,
            actor,
            entry,
            _INSERT,
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
            idempotency_key,
            orjson.dumps(answer).decode(),
        )
    except asyncpg.exceptions.ExclusionViolationError as error:
        raise service.overlap_conflict(str(error)) from None
    except asyncpg.exceptions.DeadlockDetectedError:
        # The ordered advisory locks keep bookings through sehat from deadlocking each other; one that does
        # (against a writer that skipped them) is told to try again, and its transaction rolls back.
        raise Conflict("Someone else is booking that time right now; try again.", code="slot_contended") from None
    return appointment, answer
