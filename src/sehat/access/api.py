from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.access import service
from sehat.access.schemas import AuditEventQuery, AuditEventRead
from sehat.core.actor import Actor
from sehat.core.audit import AuditLog
from sehat.core.http import api_router, get_session
from sehat.core.pagination import Page
from sehat.identity.deps import require
from sehat.identity.permissions import AUDIT_READ

router = api_router(prefix="/api/v1")

Session = Annotated[AsyncSession, Depends(get_session)]
Auditor = Annotated[Actor, Depends(require(AUDIT_READ))]


async def get_audit_log(request: Request) -> AuditLog:
    return request.app.state.audit


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
