"""Break-glass: a doctor opens one patient outside their facilities, for a limited time, with a reason.

Every use is audited as emergency access and raises an alert. Domains that guard patient data ask
``has_emergency_access`` before refusing a read outside the caller's facilities.
"""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncSession

from sehat.access import policy
from sehat.access.models import Alert, BreakGlassGrant
from sehat.access.schemas import BreakGlassCreate
from sehat.core.actor import Actor
from sehat.core.audit import AuditEntry, AuditLog, Outcome
from sehat.core.clock import utcnow
from sehat.core.crypto import KeyRing, associated_data
from sehat.core.pagination import paginate
from sehat.core.scoping import scoped_select

BREAK_GLASS_ACTION = "access.break_glass"


async def open_break_glass(
    session: AsyncSession,
    audit_log: AuditLog,
    key_ring: KeyRing,
    actor: Actor,
    request: BreakGlassCreate,
    *,
    minutes: int,
) -> BreakGlassGrant:
    policy.ensure_can_break_glass(actor)
    assert actor.organization_id is not None  # checked by the policy
    now = utcnow()
    grant_id = uuid.uuid4()
    grant = BreakGlassGrant(
        id=grant_id,
        organization_id=actor.organization_id,
        user_id=actor.user_id,
        patient_id=request.patient_id,
        reason_sealed=key_ring.seal(
            request.reason.encode(),
            associated_data("break_glass_grants", "reason_sealed", grant_id, actor.organization_id),
        ),
        granted_at=now,
        expires_at=now + timedelta(minutes=minutes),
    )
    session.add(grant)
    event = audit_log.record(
        session,
        actor,
        AuditEntry(
            action=BREAK_GLASS_ACTION,
            outcome=Outcome.success,
            resource_type="break_glass_grant",
            resource_id=str(grant_id),
            patient_id=request.patient_id,
            details={"minutes": minutes, "expires_at": grant.expires_at.isoformat()},
        ),
    )
    await session.flush()
    # Every break-glass is an alert in itself: the one access rule that needs no threshold.
    session.add(
        Alert(
            organization_id=actor.organization_id,
            kind="break_glass",
            severity="warning",
            actor_id=actor.user_id,
            patient_id=request.patient_id,
            audit_event_id=event.id,
            details={"grant_id": str(grant_id), "minutes": minutes},
            created_at=now,
        )
    )
    await session.flush()
    return grant


async def has_emergency_access(session: AsyncSession, actor: Actor, patient_id: uuid.UUID) -> bool:
    """Whether the actor holds an unexpired break-glass grant for exactly this patient."""
    grant = await session.scalar(
        scoped_select(BreakGlassGrant, actor)
        .with_only_columns(BreakGlassGrant.id)
        .where(
            BreakGlassGrant.user_id == actor.user_id,
            BreakGlassGrant.patient_id == patient_id,
            BreakGlassGrant.expires_at > utcnow(),
        )
        .limit(1)
    )
    return grant is not None


async def list_alerts(
    session: AsyncSession, actor: Actor, *, limit: int, cursor: str | None
) -> tuple[list[Alert], str | None]:
    policy.ensure_can_read_alerts(actor)
    return await paginate(session, scoped_select(Alert, actor), Alert, limit=limit, cursor=cursor)


async def active_grants(session: AsyncSession, actor: Actor) -> list[BreakGlassGrant]:
    """The caller's own grants that have not expired yet."""
    statement = (
        scoped_select(BreakGlassGrant, actor)
        .where(BreakGlassGrant.user_id == actor.user_id, BreakGlassGrant.expires_at > utcnow())
        .order_by(BreakGlassGrant.expires_at)
    )
    return list((await session.scalars(statement)).all())
