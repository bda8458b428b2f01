"""Which organization a transaction works for, told to PostgreSQL so that row-level security can enforce it.

Row-level security is the second tenant wall (the first is ``core.scoping``): each tenant table has a policy
that admits a row only when its ``organization_id`` equals the transaction's ``sehat.organization_id``
setting. The setting is made with ``set_config(..., is_local => true)``, the function form of ``SET LOCAL``,
so it ends with the transaction and a pooled connection never carries one tenant's setting into the next
request. A transaction that sets nothing sees no tenant rows at all.

Two scopes exist:

- **organization**: a signed-in member of one organization (``bind_actor``) or a job working for one;
- **platform**: sign-in and token refresh (the organization is not known until the account is found),
  platform administrators managing organizations and accounts, and the audit sealer and verifier. The
  platform scope opens the identity, tenancy and audit tables across organizations, and never the clinical
  tables (facilities, departments, patients, records, ...): their policies do not mention it.

On SQLite there is no row-level security; these calls record the scope and send nothing.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session, SessionTransaction

from sehat.core.actor import Actor, Role, SystemActor

ORGANIZATION_SETTING = "sehat.organization_id"
SCOPE_SETTING = "sehat.scope"
_INFO_KEY = "sehat.tenant_scope"
_APPLIED_KEY = "sehat.tenant_scope_applied"
_SET_SCOPE = text(
    f"SELECT set_config('{ORGANIZATION_SETTING}', :organization, true), set_config('{SCOPE_SETTING}', :scope, true)"
)

# The organization scope in asyncpg's syntax ($1: the organization's id as text), for a hot path working on the
# driver connection directly.
SET_ORGANIZATION_SCOPE = (
    f"SELECT set_config('{ORGANIZATION_SETTING}', $1, true), set_config('{SCOPE_SETTING}', 'organization', true)"
)


class Scope(StrEnum):
    organization = "organization"
    platform = "platform"


async def enter_organization(session: AsyncSession, organization_id: uuid.UUID) -> None:
    """Work for one organization until the session ends (every later transaction of it included)."""
    await _apply(session, (str(organization_id), Scope.organization.value))


async def enter_platform_scope(session: AsyncSession) -> None:
    """Work across organizations on identity, tenancy and audit tables only (see the module docstring)."""
    await _apply(session, ("", Scope.platform.value))


async def share_scope(source: AsyncSession, target: AsyncSession) -> None:
    """Give ``target`` the scope ``source`` works in (a side transaction of the same request)."""
    values = source.info.get(_INFO_KEY)
    if values is not None:
        await _apply(target, values)


async def bind_actor(session: AsyncSession, actor: Actor | SystemActor) -> None:
    """The scope an actor works in: its organization; a platform admin or a system job, the platform."""
    if isinstance(actor, Actor) and actor.organization_id is not None:
        await enter_organization(session, actor.organization_id)
    elif isinstance(actor, SystemActor) or Role.platform_admin in actor.roles:
        await enter_platform_scope(session)
    # Anyone else (no organization, not a platform admin) keeps the empty scope: no tenant rows.


def current_scope(session: AsyncSession) -> tuple[str, str] | None:
    value: tuple[str, str] | None = session.info.get(_INFO_KEY)
    return value


def has_begun(session: AsyncSession) -> bool:
    """Whether the session's database transaction is under way (it holds a connection)."""
    return _APPLIED_KEY in session.info


async def _apply(session: AsyncSession, values: tuple[str, str]) -> None:
    session.info[_INFO_KEY] = values
    if session.bind.dialect.name != "postgresql":  # type: ignore[union-attr]
        return
    # Before the transaction has begun this costs nothing: the after_begin hook below sets the scope as it
    # begins. Only a transaction already under way, with another scope, is told here.
    if _APPLIED_KEY in session.info and session.info[_APPLIED_KEY] != values:
        await session.execute(_SET_SCOPE, {"organization": values[0], "scope": values[1]})
        session.info[_APPLIED_KEY] = values


@event.listens_for(Session, "after_begin")
def _set_scope_on_begin(session: Session, transaction: SessionTransaction, connection: Any) -> None:
    if transaction.parent is not None and session.info.get(_APPLIED_KEY) == session.info.get(_INFO_KEY):
        return  # a savepoint inside a transaction already told: the setting holds until that one ends
    values = session.info.get(_INFO_KEY)
    session.info[_APPLIED_KEY] = values
    if values is None or connection.dialect.name != "postgresql":
        return
    connection.execute(_SET_SCOPE, {"organization": values[0], "scope": values[1]})


@event.listens_for(Session, "after_transaction_end")
def _forget_applied_scope(session: Session, transaction: SessionTransaction) -> None:
    # The setting ended with the database transaction; the next one is told again by after_begin.
    if transaction.parent is None:
        session.info.pop(_APPLIED_KEY, None)
