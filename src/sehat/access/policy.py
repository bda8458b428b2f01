"""Who may read the audit log: tenant staff whose roles grant ``audit.read``, for their own organization."""

from __future__ import annotations

from sehat.core.actor import Actor
from sehat.core.errors import Forbidden
from sehat.identity.permissions import ALERT_READ, AUDIT_READ, BREAK_GLASS_USE


def ensure_can_read_audit_log(actor: Actor) -> None:
    # Checked again here, not only by the route: a service may be called from elsewhere (a job, the CLI).
    if actor.organization_id is None or not actor.has(AUDIT_READ):
        raise Forbidden("Your role may not read the audit log.", code="permission_denied")


def ensure_can_break_glass(actor: Actor) -> None:
    if actor.organization_id is None or not actor.has(BREAK_GLASS_USE):
        raise Forbidden("Your role may not use emergency access.", code="permission_denied")


def ensure_can_read_alerts(actor: Actor) -> None:
    if actor.organization_id is None or not actor.has(ALERT_READ):
        raise Forbidden("Your role may not read access alerts.", code="permission_denied")
