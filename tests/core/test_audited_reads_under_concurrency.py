"""A read request that records an audit entry after reading (as every read of patient data will) never fails
because other requests are writing at the same time.

On SQLite this is the hazard of a transaction that starts as a reader and must become a writer: under WAL,
if another writer committed in between, the upgrade fails at once ("database is locked") whatever the busy
timeout. Units of work therefore take the write lock when they begin (BEGIN IMMEDIATE).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import SystemActor
from sehat.core.audit import AuditEntry, AuditEvent, Outcome
from sehat.core.http import api_router, get_session
from sehat.core.tenant_scope import enter_platform_scope

Session = Annotated[AsyncSession, Depends(get_session)]
READERS = 40
WRITERS = 40


def _mount(api: Any) -> None:
    router = api_router(prefix="/concurrency")
    audit = api.app.state.audit

    @router.get("/read-then-audit")
    async def read_then_audit(session: Session) -> dict[str, int]:
        await enter_platform_scope(session)
        seen = await session.scalar(select(func.count()).select_from(AuditEvent))
        await asyncio.sleep(0)  # let a writer commit between the read and the audit write
        audit.record(session, SystemActor(name="reader"), AuditEntry(action="test.read", outcome=Outcome.success))
        await session.flush()
        return {"seen": int(seen or 0)}

    @router.post("/write")
    async def write(session: Session) -> dict[str, str]:
        await enter_platform_scope(session)
        audit.record(
            session,
            SystemActor(name="writer"),
            AuditEntry(action="test.write", outcome=Outcome.success, resource_id=uuid.uuid4().hex),
        )
        await session.flush()
        return {"ok": "yes"}

    api.app.include_router(router)


async def test_reads_that_audit_all_succeed_while_others_write(api: Any) -> None:
    _mount(api)
    calls = [api.client.get("/concurrency/read-then-audit") for _ in range(READERS)] + [
        api.client.post("/concurrency/write") for _ in range(WRITERS)
    ]
    responses = await asyncio.gather(*calls)
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200] * (READERS + WRITERS)
    async with api.unit_of_work() as session:
        recorded = await session.scalar(
            select(func.count()).select_from(AuditEvent).where(AuditEvent.action.in_(["test.read", "test.write"]))
        )
    assert recorded == READERS + WRITERS
