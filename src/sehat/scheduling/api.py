"""Scheduling routes: thin, one service call each."""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from typing import Annotated, Any

import orjson
from fastapi import Depends, Header, Query, Request, Response, status
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.types import Send

from sehat.core.actor import Actor, Audience
from sehat.core.audit import AuditLog
from sehat.core.crypto import KeyRing
from sehat.core.db import SessionOnDemand
from sehat.core.errors import Problem
from sehat.core.http import (
    HotRoute,
    IfMatch,
    api_router,
    bearer_token,
    expected_version,
    get_audit_log,
    get_key_ring,
    get_session,
    serve_json,
)
from sehat.core.pagination import MAX_PAGE_SIZE, Page
from sehat.identity.deps import require
from sehat.identity.permissions import (
    APPOINTMENT_BOOK,
    APPOINTMENT_CHANGE,
    APPOINTMENT_MANAGE,
    APPOINTMENT_READ,
    SCHEDULE_MANAGE,
    SCHEDULE_READ,
    WAITLIST_MANAGE,
)
from sehat.scheduling import booking, changes, conflicts, service, waitlist
from sehat.scheduling.models import Appointment
from sehat.scheduling.schemas import (
    AbsenceCreate,
    AppointmentCancel,
    AppointmentCreate,
    AppointmentListQuery,
    AppointmentRead,
    AppointmentReschedule,
    AppointmentTypeCreate,
    AppointmentTypeRead,
    ExceptionRead,
    ExtraSessionCreate,
    HolidayCreate,
    HolidayRead,
    HoursRemoved,
    PractitionerCreate,
    PractitionerRead,
    SlotQuery,
    SlotRead,
    WaitlistCreate,
    WaitlistRead,
    WeeklyHoursCreate,
    WeeklyHoursRead,
)

API_PREFIX = "/api/v1"
BOOKING_PATH = f"{API_PREFIX}/appointments"
router = api_router(prefix=API_PREFIX, tags=["scheduling"])

Session = Annotated[AsyncSession, Depends(get_session)]
BOTH = (Audience.staff, Audience.patient)
Manager = Annotated[Actor, Depends(require(SCHEDULE_MANAGE))]
ScheduleReader = Annotated[Actor, Depends(require(SCHEDULE_READ, audiences=BOTH))]
_booking_guard = require(APPOINTMENT_BOOK, audiences=BOTH)
Booker = Annotated[Actor, Depends(_booking_guard)]
AppointmentReader = Annotated[Actor, Depends(require(APPOINTMENT_READ, audiences=BOTH))]
AppointmentChanger = Annotated[Actor, Depends(require(APPOINTMENT_CHANGE, audiences=BOTH))]
AppointmentManager = Annotated[Actor, Depends(require(APPOINTMENT_MANAGE))]
WaitlistManager = Annotated[Actor, Depends(require(WAITLIST_MANAGE, audiences=BOTH))]
Keys = Annotated[KeyRing, Depends(get_key_ring)]
_KEY_LENGTHS = (8, 128)
_KEY_CHARACTERS = re.compile(r"^[A-Za-z0-9_.:-]+$")
IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=_KEY_LENGTHS[0],
        max_length=_KEY_LENGTHS[1],
        pattern=_KEY_CHARACTERS.pattern,
        description="Retry safely",
    ),
]


Audit = Annotated[AuditLog, Depends(get_audit_log)]


async def _practitioner_read(session: AsyncSession, practitioner: object) -> PractitionerRead:
    return (await _practitioner_reads(session, [practitioner]))[0]


async def _practitioner_reads(session: AsyncSession, practitioners: list[Any]) -> list[PractitionerRead]:
    links = await service.links_of_practitioners(session, [practitioner.id for practitioner in practitioners])
    reads = []
    for practitioner in practitioners:
        read = PractitionerRead.model_validate(practitioner)
        linked = links[practitioner.id]
        read.facility_ids, read.department_ids = linked.facility_ids, linked.department_ids
        read.appointment_type_ids = linked.appointment_type_ids
        reads.append(read)
    return reads


@router.post("/practitioners", response_model=PractitionerRead, status_code=status.HTTP_201_CREATED)
async def create_practitioner(body: PractitionerCreate, actor: Manager, session: Session) -> PractitionerRead:
    return await _practitioner_read(session, await service.create_practitioner(session, actor, body))


@router.get("/practitioners", response_model=Page[PractitionerRead])
async def list_practitioners(
    actor: ScheduleReader,
    session: Session,
    facility_id: uuid.UUID | None = None,
    department_id: uuid.UUID | None = None,
    specialty: Annotated[str | None, Query(min_length=1, max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[PractitionerRead]:
    """Active practitioners, optionally of a facility, a department or a specialty."""
    rows, next_cursor = await service.list_practitioners(
        session,
        actor,
        facility_id=facility_id,
        department_id=department_id,
        specialty=specialty,
        limit=limit,
        cursor=cursor,
    )
    return Page[PractitionerRead](items=await _practitioner_reads(session, rows), next_cursor=next_cursor)


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


@router.post(BOOKING_PATH.removeprefix(API_PREFIX), response_model=AppointmentRead, status_code=status.HTTP_201_CREATED)
async def book_appointment(
    body: AppointmentCreate,
    actor: Booker,
    session: Session,
    audit: Audit,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    """Book, or 409 with a code (`slot_taken`, `patient_busy`, `outside_availability`, `in_the_past`). With an
    `Idempotency-Key`, a retry of the same body gets the first answer again."""
    status_code, content = await booking.book_idempotently(
        SessionOnDemand.already_open(session), audit, actor, body, idempotency_key
    )
    return JSONResponse(content, status_code=status_code)


def _is_idempotency_key(key: str) -> bool:
    """``IdempotencyKey``'s own rule, for the hot route, which reads the header itself."""
    return _KEY_LENGTHS[0] <= len(key) <= _KEY_LENGTHS[1] and _KEY_CHARACTERS.match(key) is not None


async def _serve_booking(request: Request, send: Send) -> bool:
    """``book_appointment`` without FastAPI's routing and dependency injection, for the request a busy network
    sends most: the same guard, body model and service call. Anything irregular (no bearer token, a refused
    token, a body that is not a valid ``AppointmentCreate`` in JSON, a malformed key) is left to the route."""
    token = bearer_token(request)
    key = request.headers.get("idempotency-key")
    content_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if token is None or content_type != "application/json" or (key is not None and not _is_idempotency_key(key)):
        return False
    try:
        actor = await _booking_guard.authenticate(request, token)
    except Problem:
        return False  # the route refuses it again, and audits the refusal
    try:
        body = AppointmentCreate.model_validate_json(await request.body())
    except ValidationError:
        return False
    audit: AuditLog = request.app.state.audit

    async def respond(sessions: SessionOnDemand) -> tuple[int, Any]:
        return await booking.book_idempotently(sessions, audit, actor, body, key)

    await serve_json(request, send, BOOKING_PATH, respond)
    return True


HOT_ROUTES = (HotRoute("POST", BOOKING_PATH, _serve_booking),)


@router.get("/slots", response_model=list[SlotRead])
async def find_slots(query: Annotated[SlotQuery, Query()], actor: ScheduleReader, session: Session) -> Response:
    """Free slots at a facility for an appointment type, `from` to `to` (at most 31 days): of one practitioner,
    or of every practitioner of a department or a specialty there."""
    slots = await service.find_free_slots(session, actor, query)
    # A month of slots is about a thousand items: serialized directly, in the shape `SlotRead` documents,
    # instead of being built and validated as models twice (it was a third of the search's time).
    names = {practitioner: str(practitioner) for practitioner in {slot.practitioner_id for slot in slots}}
    rows = [{"start": slot.start, "end": slot.end, "practitioner_id": names[slot.practitioner_id]} for slot in slots]
    return Response(orjson.dumps(rows, option=orjson.OPT_UTC_Z), media_type="application/json")


@router.post("/slot-holds", response_model=AppointmentRead, status_code=status.HTTP_201_CREATED)
async def hold_slot(
    body: AppointmentCreate, actor: Booker, session: Session, audit: Audit, request: Request
) -> AppointmentRead:
    """Reserve a slot for a few minutes (`SEHAT_SLOT_HOLD_MINUTES`) while the patient confirms or pays."""
    hold_for = timedelta(minutes=request.app.state.settings.slot_hold_minutes)
    return await booking.book(session, audit, actor, body, hold_for=hold_for)


@router.post("/slot-holds/{hold_id}/confirm", response_model=AppointmentRead)
async def confirm_hold(hold_id: uuid.UUID, actor: Booker, session: Session, audit: Audit) -> AppointmentRead:
    return service.present(await changes.confirm_hold(session, audit, actor, hold_id))


# --- schedule changes ----------------------------------------------------------------------------------


@router.delete("/practitioners/{practitioner_id}/availability/{rule_id}", response_model=HoursRemoved)
async def remove_weekly_hours(
    practitioner_id: uuid.UUID, rule_id: uuid.UUID, actor: Manager, session: Session, audit: Audit
) -> HoursRemoved:
    """Stop recurring hours. Future appointments left outside working time become `needs_reschedule`."""
    flagged = await conflicts.remove_weekly_hours(session, audit, actor, practitioner_id, rule_id)
    return HoursRemoved(needs_reschedule=flagged)


@router.post("/practitioners/{practitioner_id}/leave", response_model=ExceptionRead, status_code=201)
async def add_leave(
    practitioner_id: uuid.UUID, body: AbsenceCreate, actor: Manager, session: Session, audit: Audit
) -> ExceptionRead:
    """Leave at one facility, or everywhere. Appointments it covers become `needs_reschedule`, each with the
    next free slots of the same or an equivalent practitioner; none is cancelled."""
    leave, flagged = await conflicts.add_leave(session, audit, actor, practitioner_id, body)
    read = ExceptionRead.model_validate(leave)
    read.needs_reschedule = flagged
    return read


@router.post("/practitioners/{practitioner_id}/extra-sessions", response_model=ExceptionRead, status_code=201)
async def add_extra_session(
    practitioner_id: uuid.UUID, body: ExtraSessionCreate, actor: Manager, session: Session
) -> ExceptionRead:
    return ExceptionRead.model_validate(await conflicts.add_extra_session(session, actor, practitioner_id, body))


@router.get("/practitioners/{practitioner_id}/exceptions", response_model=list[ExceptionRead])
async def list_exceptions(practitioner_id: uuid.UUID, actor: ScheduleReader, session: Session) -> list[ExceptionRead]:
    """Current and future leave and extra sessions."""
    rows = await conflicts.list_exceptions(session, actor, practitioner_id)
    return [ExceptionRead.model_validate(row) for row in rows]


@router.post("/holidays", response_model=HolidayRead, status_code=201)
async def add_holiday(body: HolidayCreate, actor: Manager, session: Session, audit: Audit) -> HolidayRead:
    """Close a facility for a local day; that day's appointments become `needs_reschedule`."""
    holiday, flagged = await conflicts.add_holiday(session, audit, actor, body)
    read = HolidayRead.model_validate(holiday)
    read.needs_reschedule = flagged
    return read


# --- appointments ----------------------------------------------------------------------------------------


def _changed(response: Response, appointment: Appointment) -> AppointmentRead:
    """A changed appointment as answered, with its new version as the ETag for the next change's If-Match."""
    response.headers["ETag"] = f'"{appointment.version}"'
    return changes.present(appointment)


@router.get("/appointments", response_model=Page[AppointmentRead])
async def list_appointments(
    query: Annotated[AppointmentListQuery, Query()], actor: AppointmentReader, session: Session, audit: Audit
) -> Page[AppointmentRead]:
    """Appointments you may see (a patient: their own; staff: at their facilities), filtered."""
    items, cursor = await changes.list_appointments(session, audit, actor, query)
    return Page[AppointmentRead](items=items, next_cursor=cursor)


@router.get("/appointments/{appointment_id}", response_model=AppointmentRead)
async def get_appointment(
    appointment_id: uuid.UUID, actor: AppointmentReader, session: Session, audit: Audit, keys: Keys
) -> AppointmentRead:
    return await changes.read_appointment(session, audit, keys, actor, appointment_id)


@router.get("/appointments/{appointment_id}/reschedule-options", response_model=list[SlotRead])
async def reschedule_options(
    appointment_id: uuid.UUID, actor: AppointmentReader, session: Session, audit: Audit
) -> list[SlotRead]:
    """The next free slots for this appointment with its practitioner or an equivalent one."""
    return await conflicts.offers_for(session, audit, actor, appointment_id)


def _waitlist_hold(request: Request) -> timedelta:
    return timedelta(minutes=request.app.state.settings.waitlist_hold_minutes)


@router.post("/appointments/{appointment_id}/cancel", response_model=AppointmentRead)
async def cancel_appointment(
    appointment_id: uuid.UUID,
    body: AppointmentCancel,
    actor: AppointmentChanger,
    session: Session,
    audit: Audit,
    keys: Keys,
    request: Request,
    response: Response,
    if_match: IfMatch = None,
) -> AppointmentRead:
    """Cancel with a reason code (and optional text, sealed at rest). The time is free at once, and the first
    matching patient on the waitlist is offered it as a hold."""
    appointment = await changes.cancel(
        session,
        audit,
        keys,
        actor,
        appointment_id,
        body,
        expected_version=expected_version(if_match),
        waitlist_hold=_waitlist_hold(request),
    )
    return _changed(response, appointment)


@router.post("/appointments/{appointment_id}/reschedule", response_model=AppointmentRead)
async def reschedule_appointment(
    appointment_id: uuid.UUID,
    body: AppointmentReschedule,
    actor: AppointmentChanger,
    session: Session,
    audit: Audit,
    request: Request,
    response: Response,
    if_match: IfMatch = None,
) -> AppointmentRead:
    """Move to a new time, atomically: 409 (`slot_taken`, `patient_busy`, ...) leaves the old time booked."""
    appointment = await changes.reschedule(
        session,
        audit,
        actor,
        appointment_id,
        body,
        expected_version=expected_version(if_match),
        waitlist_hold=_waitlist_hold(request),
    )
    return _changed(response, appointment)


@router.post("/appointments/{appointment_id}/check-in", response_model=AppointmentRead)
async def check_in(
    appointment_id: uuid.UUID,
    actor: AppointmentManager,
    session: Session,
    audit: Audit,
    response: Response,
    if_match: IfMatch = None,
) -> AppointmentRead:
    """The patient arrived (from a few hours before the start until its end); the OPD queue takes over."""
    return await _mark(session, audit, actor, appointment_id, changes.CHECK_IN_MARK, response, if_match)


@router.post("/appointments/{appointment_id}/no-show", response_model=AppointmentRead)
async def mark_no_show(
    appointment_id: uuid.UUID,
    actor: AppointmentManager,
    session: Session,
    audit: Audit,
    response: Response,
    if_match: IfMatch = None,
) -> AppointmentRead:
    """The patient did not come; only once the appointment has begun."""
    return await _mark(session, audit, actor, appointment_id, changes.NO_SHOW_MARK, response, if_match)


async def _mark(
    session: AsyncSession,
    audit: AuditLog,
    actor: Actor,
    appointment_id: uuid.UUID,
    what: changes.Mark,
    response: Response,
    if_match: str | None,
) -> AppointmentRead:
    appointment = await changes.mark(
        session, audit, actor, appointment_id, what, expected_version=expected_version(if_match)
    )
    return _changed(response, appointment)


# --- waitlist ---------------------------------------------------------------------------------------------


@router.post("/waitlist", response_model=WaitlistRead, status_code=201)
async def join_waitlist(body: WaitlistCreate, actor: WaitlistManager, session: Session, audit: Audit) -> WaitlistRead:
    """Wait for a practitioner or a department between two dates; freed time is offered as a hold."""
    return WaitlistRead.model_validate(await waitlist.join(session, audit, actor, body))


@router.get("/waitlist", response_model=Page[WaitlistRead])
async def list_waitlist(
    actor: WaitlistManager,
    session: Session,
    audit: Audit,
    status: Annotated[str | None, Query(pattern=r"^(waiting|offered|booked|withdrawn)$")] = None,
    facility_id: uuid.UUID | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[WaitlistRead]:
    """First in line first."""
    rows, next_cursor = await waitlist.list_entries(
        session, audit, actor, status=status, facility_id=facility_id, limit=limit, cursor=cursor
    )
    return Page[WaitlistRead](items=[WaitlistRead.model_validate(row) for row in rows], next_cursor=next_cursor)


@router.delete("/waitlist/{entry_id}", response_model=WaitlistRead)
async def withdraw_from_waitlist(
    entry_id: uuid.UUID, actor: WaitlistManager, session: Session, audit: Audit
) -> WaitlistRead:
    """Leave the waitlist; a hold it was offered is released."""
    return WaitlistRead.model_validate(await waitlist.withdraw(session, audit, actor, entry_id))
