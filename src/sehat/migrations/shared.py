"""Steps several migrations take: granting permissions to roles, and walling tenant tables with row-level
security. Kept here so that every migration does them the same way; a change to these functions must keep
what already-applied migrations did."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import sqlalchemy as sa
from alembic import op

# The organization the transaction works for (core.tenant_scope sets it); empty means none.
CURRENT_ORGANIZATION = "NULLIF(current_setting('sehat.organization_id', true), '')::uuid"

# name -> (description, roles granted it)
Permissions = Mapping[str, tuple[str, tuple[str, ...]]]

_permissions = sa.table("permissions", sa.column("name", sa.String), sa.column("description", sa.String))
_role_permissions = sa.table("role_permissions", sa.column("role", sa.String), sa.column("permission", sa.String))


def grant_permissions(permissions: Permissions) -> None:
    op.bulk_insert(_permissions, [{"name": name, "description": text} for name, (text, _) in permissions.items()])
    op.bulk_insert(
        _role_permissions,
        [{"role": role, "permission": name} for name, (_, roles) in permissions.items() for role in roles],
    )


def revoke_permissions(permissions: Permissions) -> None:
    names = list(permissions)
    op.execute(sa.delete(_role_permissions).where(_role_permissions.c.permission.in_(names)))
    op.execute(sa.delete(_permissions).where(_permissions.c.name.in_(names)))


def wall_tenant_tables(tables: Iterable[str]) -> None:
    """On PostgreSQL, admit a row of each table only to a transaction working for the row's organization (the
    table owner included); SQLite has no row-level security."""
    if op.get_bind().dialect.name != "postgresql":
        return
    own = f"organization_id = {CURRENT_ORGANIZATION}"
    for table in tables:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY tenant_wall ON {table} USING ({own}) WITH CHECK ({own})")
