"""Scheduling routes: thin, one service call each."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Header, Query, Request, status
from fastapi.responses import JSONResponse
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor, Audience
from sehat.core.audit import AuditLog
from sehat.core.http import api_router, get_audit_log, get_session
from sehat.identity.deps import require
from sehat.identity.permissions import APPOINTMENT_BOOK, APPOINTMENT_READ, SCHEDULE_MANAGE, SCHEDULE_READ
from sehat.scheduling import service
from sehat.scheduling.schemas import (
    AppointmentCreate,
    AppointmentRead,
    AppointmentTypeCreate,
    AppointmentTypeRead,
    PractitionerCreate,
    PractitionerRead,
    SlotQuery,
    SlotRead,
    WeeklyHoursCreate,
    WeeklyHoursRead,
)

router = api_router(prefix="/api/v1", tags=["scheduling"])

Session = Annotated[AsyncSession, Depends(get_session)]
BOTH = (Audience.staff, Audience.patient)
Manager = Annotated[Actor, Depends(require(SCHEDULE_MANAGE))]
ScheduleReader = Annotated[Actor, Depends(require(SCHEDULE_READ, audiences=BOTH))]
Booker = Annotated[Actor, Depends(require(APPOINTMENT_BOOK, audiences=BOTH))]
AppointmentReader = Annotated[Actor, Depends(require(APPOINTMENT_READ, audiences=BOTH))]
IdempotencyKey = Annotated[
    str | None, Header(min_length=8, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$", description="Retry safely")
]


Audit = Annotated[AuditLog, Depends(get_audit_log)]


async def _practitioner_read(session: AsyncSession, practitioner: object) -> PractitionerRead:
    read = PractitionerRead.model_validate(practitioner)
    read.facility_ids, read.department_ids = await service.practitioner_links(session, read.id)
    return read


@router.post("/practitioners", response_model=PractitionerRead, status_code=status.HTTP_201_CREATED)
async def create_practitioner(body: PractitionerCreate, actor: Manager, session: Session) -> PractitionerRead:
    return await _practitioner_read(session, await service.create_practitioner(session, actor, body))


@router.get("/practitioners/{practitioner_id}", response_model=PractitionerRead)
async def get_practitioner(practitioner_id: uuid.UUID, actor: ScheduleReader, session: Session) -> PractitionerRead:
    return await _practitioner_read(session, await service.get_practitioner(session, actor, practitioner_id))


@router.post(
    "/practitioners/{practitioner_id}/availability",
    response_model=WeeklyHoursRead,
    status_code=status.HTTP_201_CREATED,
)
async def add_weekly_hours(
    practitioner_id: uuid.UUID, body: WeeklyHoursCreate, actor: Manager, session: Session
) -> WeeklyHoursRead:
    """Recurring hours on the facility's wall clock; several on one weekday leave breaks between them."""
    return WeeklyHoursRead.model_validate(await service.add_weekly_hours(session, actor, practitioner_id, body))


@router.get("/practitioners/{practitioner_id}/availability", response_model=list[WeeklyHoursRead])
async def list_weekly_hours(
    practitioner_id: uuid.UUID, actor: ScheduleReader, session: Session
) -> list[WeeklyHoursRead]:
    rules = await service.list_weekly_hours(session, actor, practitioner_id)
    return [WeeklyHoursRead.model_validate(rule) for rule in rules]


@router.post("/appointment-types", response_model=AppointmentTypeRead, status_code=status.HTTP_201_CREATED)
async def create_appointment_type(body: AppointmentTypeCreate, actor: Manager, session: Session) -> AppointmentTypeRead:
    return AppointmentTypeRead.model_validate(await service.create_appointment_type(session, actor, body))


@router.get("/appointment-types", response_model=list[AppointmentTypeRead])
async def list_appointment_types(actor: ScheduleReader, session: Session) -> list[AppointmentTypeRead]:
    return [AppointmentTypeRead.model_validate(t) for t in await service.list_appointment_types(session, actor)]


@router.post("/appointments", response_model=AppointmentRead, status_code=status.HTTP_201_CREATED)
async def book_appointment(
    body: AppointmentCreate,
    actor: Booker,
    session: Session,
    audit: Audit,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Book, or 409 with a code (`slot_taken`, `patient_busy`, `outside_availability`, `in_the_past`). With an
    `Idempotency-Key`, a retry of the same body gets the first answer again."""
    status_code, content = await service.book_idempotently(session, audit, actor, body, idempotency_key)
    return JSONResponse(content, status_code=status_code)


@router.get("/appointments/{appointment_id}", response_model=AppointmentRead)
async def get_appointment(appointment_id: uuid.UUID, actor: AppointmentReader, session: Session) -> AppointmentRead:
    return service.present(await service.get_appointment(session, actor, appointment_id))


@router.get("/slots", response_model=list[SlotRead])
async def find_slots(query: Annotated[SlotQuery, Query()], actor: ScheduleReader, session: Session) -> list[SlotRead]:
    """Free slots of a practitioner at a facility for an appointment type, `from` to `to` (at most 31 days)."""
    return [SlotRead(start=slot.start, end=slot.end) for slot in await service.find_free_slots(session, actor, query)]


@router.post("/slot-holds", response_model=AppointmentRead, status_code=status.HTTP_201_CREATED)
async def hold_slot(
    body: AppointmentCreate, actor: Booker, session: Session, audit: Audit, request: Request
) -> AppointmentRead:
    """Reserve a slot for a few minutes (`SEHAT_SLOT_HOLD_MINUTES`) while the patient confirms or pays."""
    hold_for = timedelta(minutes=request.app.state.settings.slot_hold_minutes)
    return service.present(await service.book_appointment(session, audit, actor, body, hold_for=hold_for))


@router.post("/slot-holds/{hold_id}/confirm", response_model=AppointmentRead)
async def confirm_hold(hold_id: uuid.UUID, actor: Booker, session: Session, audit: Audit) -> AppointmentRead:
    return service.present(await service.confirm_hold(session, audit, actor, hold_id))
