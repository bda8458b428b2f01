"""Hot-path reads for identity, one database round trip each.

On PostgreSQL they run as a single statement on a pooled asyncpg connection, outside any transaction, so
the read costs one round trip and none of SQLAlchemy's per-statement CPU. Row-level security still
applies: the statement calls a function (``sehat_profile``, migration 0008) that sets the request's tenant
scope for that statement alone and then reads. SQLite takes the portable ORM path. Both return the same
thing and are tested against each other.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import orjson
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.db import driver_connection
from sehat.core.tenant_scope import current_scope, has_begun
from sehat.identity.models import User, UserFacility


@dataclass(frozen=True, slots=True)
class Profile:
    id: uuid.UUID
    email: str
    full_name: str
    organization_id: uuid.UUID | None
    roles: list[str]
    facility_ids: list[uuid.UUID]
    mfa_enabled: bool
    active: bool


_PROFILE_SQL = "SELECT * FROM sehat_profile($1, $2, $3)"


async def load_profile(session: AsyncSession, user_id: uuid.UUID) -> Profile | None:
    if session.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
        return await load_profile_postgresql(session, user_id)
    return await load_profile_portable(session, user_id)


async def load_profile_postgresql(session: AsyncSession, user_id: uuid.UUID) -> Profile | None:
    organization, scope = current_scope(session) or ("", "")
    if has_begun(session):
        driver = await session.run_sync(driver_connection)
        row = await driver.fetchrow(_PROFILE_SQL, user_id, organization, scope)
    else:
        # Not the session's own connection: taking it would begin a transaction, and with it the scope
        # statement, neither of which this read needs. The scope comes from the session all the same.
        async with session.bind.connect() as connection:  # type: ignore[union-attr]
            raw = await connection.get_raw_connection()
            row = await raw.driver_connection.fetchrow(_PROFILE_SQL, user_id, organization, scope)  # type: ignore[union-attr]
    if row is None:
        return None
    roles = row["roles"]
    return Profile(
        id=row["id"],
        email=row["email"],
        full_name=row["full_name"],
        organization_id=row["organization_id"],
        roles=orjson.loads(roles) if isinstance(roles, str) else list(roles),
        facility_ids=list(row["facility_ids"]),
        mfa_enabled=row["mfa_enabled"],
        active=row["active"],
    )


async def load_profile_portable(session: AsyncSession, user_id: uuid.UUID) -> Profile | None:
    user = await session.get(User, user_id)
    if user is None:
        return None
    facility_ids = list(
        (
            await session.scalars(
                select(UserFacility.facility_id)
                .where(UserFacility.user_id == user_id)
                .order_by(UserFacility.facility_id)
            )
        ).all()
    )
    return Profile(
        id=user.id,
        email=user.email,
        full_name=user.full_name,
        organization_id=user.organization_id,
        roles=list(user.roles),
        facility_ids=facility_ids,
        mfa_enabled=user.mfa_enabled,
        active=user.active,
    )
