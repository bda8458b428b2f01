"""Who may do what with accounts. Route dependencies check the permission; these check the object."""

from __future__ import annotations

from sehat.core.actor import Actor, SystemActor
from sehat.core.errors import Forbidden
from sehat.identity.permissions import ORGANIZATION_MANAGE, USER_MANAGE, USER_READ


def _in_a_tenant_with(actor: Actor, permission: str) -> bool:
    return actor.organization_id is not None and actor.has(permission)


def ensure_can_manage_users(actor: Actor) -> None:
    if not _in_a_tenant_with(actor, USER_MANAGE):
        raise Forbidden("Your role may not manage user accounts.", code="permission_denied")


def ensure_can_read_users(actor: Actor) -> None:
    if not _in_a_tenant_with(actor, USER_READ):
        raise Forbidden("Your role may not read user accounts.", code="permission_denied")


def ensure_can_manage_organizations(actor: Actor | SystemActor) -> None:
    if isinstance(actor, SystemActor):
        return
    if not actor.has(ORGANIZATION_MANAGE):
        raise Forbidden("Only platform administrators manage organizations.", code="permission_denied")
