"""Permissions as data: the permission catalogue and each role's grants, seeded with the defaults.

The grants below are written out here rather than imported: a migration must insert the same rows on
every run, whatever the application code says later. Later changes to the grants are new migrations (or
rows written by an administrator), never edits to this list.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PERMISSIONS: dict[str, str] = {
    "self.session": "Manage one's own session and second factor, and read one's own profile",
    "organization.manage": "Create, read, rename and suspend organizations, and create their administrators",
    "facility.read": "Read the facilities and departments of one's organization that one may see",
    "facility.manage": "Create and change the facilities and departments of one's organization",
    "user.read": "Read the staff accounts of one's organization",
    "user.manage": "Create staff accounts and change their names, roles, facilities and active state",
}

_STAFF_COMMON = ("self.session", "facility.read")

DEFAULT_GRANTS: dict[str, tuple[str, ...]] = {
    # Platform administrators run tenants; they hold no permission over any tenant's people or data.
    "platform_admin": ("self.session", "organization.manage"),
    "org_admin": (*_STAFF_COMMON, "facility.manage", "user.read", "user.manage"),
    "front_office": _STAFF_COMMON,
    "doctor": _STAFF_COMMON,
    "nurse": _STAFF_COMMON,
    "billing": _STAFF_COMMON,
    "auditor": (*_STAFF_COMMON, "user.read"),
    "patient": ("self.session",),
}


def upgrade() -> None:
    permissions = op.create_table(
        "permissions",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("description", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_permissions")),
    )
    role_permissions = op.create_table(
        "role_permissions",
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("permission", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["permission"], ["permissions.name"], name=op.f("fk_role_permissions_permission_permissions")
        ),
        sa.PrimaryKeyConstraint("role", "permission", name=op.f("pk_role_permissions")),
    )
    op.bulk_insert(permissions, [{"name": name, "description": text} for name, text in PERMISSIONS.items()])
    op.bulk_insert(
        role_permissions,
        [
            {"role": role, "permission": permission}
            for role, granted in DEFAULT_GRANTS.items()
            for permission in granted
        ],
    )


def downgrade() -> None:
    op.drop_table("role_permissions")
    op.drop_table("permissions")
