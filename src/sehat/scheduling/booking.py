"""Booking's entry points: the PostgreSQL hot path when it can decide, the portable path otherwise, and the
idempotency key around both."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from sehat.core.actor import Actor
from sehat.core.audit import AuditLog
from sehat.core.clock import utcnow
from sehat.core.db import SessionOnDemand
from sehat.scheduling import booking_pg, policy, service
from sehat.scheduling.schemas import AppointmentCreate, AppointmentRead


async def book(
    session: AsyncSession,
    audit_log: AuditLog,
    actor: Actor,
    request: AppointmentCreate,
    *,
    hold_for: timedelta | None = None,
) -> AppointmentRead:
    """Book (or, with ``hold_for``, hold) one appointment, or refuse with 409 and write nothing."""
    policy.ensure_can_book(actor)
    engine: AsyncEngine = session.bind  # type: ignore[assignment]
    if _is_postgresql(engine):
        decided = await booking_pg.try_book(engine, audit_log, actor, request, hold_for=hold_for, now=utcnow())
        if decided.booked is not None:
            return decided.booked
    return service.present(await service.book_appointment(session, audit_log, actor, request, hold_for=hold_for))


async def book_idempotently(
    sessions: SessionOnDemand, audit_log: AuditLog, actor: Actor, request: AppointmentCreate, key: str | None
) -> tuple[int, dict[str, Any]]:
    """``book`` behind an optional idempotency key: the status and body to answer. The hot path claims and
    settles the key inside its own one statement, on a driver connection of its own, and the session is opened
    only when the portable path answers; there the key is claimed first and settled last."""
    policy.ensure_can_book(actor)
    if _is_postgresql(sessions.engine):
        decided = await booking_pg.try_book(
            sessions.engine, audit_log, actor, request, hold_for=None, now=utcnow(), idempotency_key=key
        )
        if decided.answer is not None:
            return 201, decided.answer
    session = await sessions.open()
    if key is not None:
        fingerprint = service.request_fingerprint(request)
        replay = await service.claim_idempotency_key(session, actor, key, service.BOOK_ROUTE, fingerprint)
        if replay is not None:
            return replay.status_code, replay.body
    content = service.present(await service.book_appointment(session, audit_log, actor, request)).model_dump(
        mode="json"
    )
    if key is not None:
        await service.settle_idempotency_key(session, actor, key, 201, content)
    return 201, content


def _is_postgresql(engine: AsyncEngine) -> bool:
    return engine.dialect.name == "postgresql"
