"""Who may read the audit log: tenant staff whose roles grant ``audit.read``, for their own organization."""

from __future__ import annotations

from sehat.core.actor import Actor
from sehat.core.errors import Forbidden
from sehat.identity.permissions import AUDIT_READ


def ensure_can_read_audit_log(actor: Actor) -> None:
    # Checked again here, not only by the route: a service may be called from elsewhere (a job, the CLI).
    if actor.organization_id is None or not actor.has(AUDIT_READ):
        raise Forbidden("Your role may not read the audit log.", code="permission_denied")
