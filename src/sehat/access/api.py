from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Query, Request, status
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.access import break_glass, service
from sehat.access.schemas import (
    AccessLogEntryRead,
    AccessLogQuery,
    AlertRead,
    AuditEventQuery,
    AuditEventRead,
    BreakGlassCreate,
    BreakGlassRead,
    PatientAccessLogEntryRead,
    PatientAccessLogQuery,
)
from sehat.core.actor import Actor, Audience
from sehat.core.audit import AuditLog
from sehat.core.http import api_router, get_audit_log, get_session
from sehat.core.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page
from sehat.identity.deps import require
from sehat.identity.permissions import ALERT_READ, AUDIT_READ, AUDIT_READ_OWN, BREAK_GLASS_USE

router = api_router(prefix="/api/v1")

Session = Annotated[AsyncSession, Depends(get_session)]
Auditor = Annotated[Actor, Depends(require(AUDIT_READ))]
EmergencyUser = Annotated[Actor, Depends(require(BREAK_GLASS_USE))]
AlertReader = Annotated[Actor, Depends(require(ALERT_READ))]
# Patient tokens only: staff read the log through /audit-events, with the permissions that route asks for.
PatientSelf = Annotated[Actor, Depends(require(AUDIT_READ_OWN, audiences=(Audience.patient,)))]


@router.get("/audit-events", response_model=Page[AuditEventRead], tags=["audit"])
async def list_audit_events(
    query: Annotated[AuditEventQuery, Query()],
    actor: Auditor,
    session: Session,
    audit_log: Annotated[AuditLog, Depends(get_audit_log)],
) -> Page[AuditEventRead]:
    """Your organization's audit entries, newest first: filter by `patient_id`, `actor_id`, `action`,
    `outcome` and a time window `from` (inclusive) to `to` (exclusive), RFC 3339 with an offset. Follow
    `next_cursor` for older entries. This read is itself recorded as an `audit.read` entry."""
    rows, next_cursor = await service.list_audit_events(session, audit_log, actor, query)
    return Page[AuditEventRead](items=[AuditEventRead.model_validate(row) for row in rows], next_cursor=next_cursor)


@router.post("/break-glass", response_model=BreakGlassRead, status_code=status.HTTP_201_CREATED, tags=["access"])
async def open_break_glass(
    request: Request,
    body: BreakGlassCreate,
    actor: EmergencyUser,
    session: Session,
    audit_log: Annotated[AuditLog, Depends(get_audit_log)],
) -> BreakGlassRead:
    """Emergency access to one patient outside your facilities, with a reason. It expires by itself
    (`SEHAT_BREAK_GLASS_MINUTES`), is audited as emergency access and raises an alert."""
    grant = await break_glass.open_break_glass(
        session,
        audit_log,
        request.app.state.auth.key_ring,
        actor,
        body,
        minutes=request.app.state.settings.break_glass_minutes,
    )
    return BreakGlassRead.model_validate(grant)


@router.get("/break-glass", response_model=list[BreakGlassRead], tags=["access"])
async def my_active_break_glass(actor: EmergencyUser, session: Session) -> list[BreakGlassRead]:
    """Your emergency grants that have not expired yet."""
    return [BreakGlassRead.model_validate(grant) for grant in await break_glass.active_grants(session, actor)]


@router.get("/alerts", response_model=Page[AlertRead], tags=["access"])
async def list_alerts(
    actor: AlertReader,
    session: Session,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[AlertRead]:
    """Your organization's access alerts (every break-glass, and the anomaly rules), oldest first."""
    rows, next_cursor = await break_glass.list_alerts(session, actor, limit=limit, cursor=cursor)
    return Page[AlertRead](items=[AlertRead.model_validate(row) for row in rows], next_cursor=next_cursor)


@router.get("/me/access-log", response_model=Page[AccessLogEntryRead], tags=["audit"])
async def my_access_log(
    query: Annotated[AccessLogQuery, Query()],
    actor: PatientSelf,
    session: Session,
    audit_log: Annotated[AuditLog, Depends(get_audit_log)],
) -> Page[AccessLogEntryRead]:
    """Who accessed your record, newest first: when, what (including attempts that were refused), and the
    name and role of the staff member, or "sehat (automatic)". Narrow it with `from` (inclusive) and `to`
    (exclusive), RFC 3339 with an offset; follow `next_cursor` for older entries. Empty until your account
    is linked to your patient record."""
    items, next_cursor = await service.list_own_access_log(session, audit_log, actor, query)
    return Page[AccessLogEntryRead](items=items, next_cursor=next_cursor)


@router.get("/patients/{patient_id}/access-log", response_model=Page[PatientAccessLogEntryRead], tags=["audit"])
async def patient_access_log(
    patient_id: uuid.UUID,
    query: Annotated[PatientAccessLogQuery, Query()],
    actor: Auditor,
    session: Session,
    audit_log: Annotated[AuditLog, Depends(get_audit_log)],
) -> Page[PatientAccessLogEntryRead]:
    """Who accessed this patient's record, newest first: when, what in plain words (refused and failed
    attempts included), the person's name, roles and id, or "sehat (automatic)". Narrow it with `from`
    (inclusive) and `to` (exclusive); follow `next_cursor` for older entries. This read is itself recorded
    (`audit.read_patient_log`), and the patient sees it in their own log."""
    items, next_cursor = await service.list_patient_access_log(session, audit_log, actor, patient_id, query)
    return Page[PatientAccessLogEntryRead](items=items, next_cursor=next_cursor)
