"""Break-glass grants and access alerts, with their permissions: doctors may break the glass; organization
administrators and auditors read alerts.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import sehat.core.db

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PERMISSIONS = {
    "break_glass.use": (
        "Open one patient's record in an emergency, with a stated reason, for a limited time",
        ("doctor",),
    ),
    "alert.read": ("Read the access alerts of one's own organization", ("auditor", "org_admin")),
}

_permissions = sa.table("permissions", sa.column("name", sa.String), sa.column("description", sa.String))
_role_permissions = sa.table("role_permissions", sa.column("role", sa.String), sa.column("permission", sa.String))


def upgrade() -> None:
    op.create_table(
        "break_glass_grants",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("reason_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("granted_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_break_glass_grants_organization_id_organizations")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_break_glass_grants_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_break_glass_grants")),
    )
    op.create_index(
        "ix_break_glass_grants_lookup",
        "break_glass_grants",
        ["organization_id", "user_id", "patient_id", "expires_at"],
        unique=False,
    )
    op.create_table(
        "alerts",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("patient_id", sa.Uuid(), nullable=True),
        sa.Column("audit_event_id", sa.BigInteger(), nullable=True),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("created_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_alerts_organization_id_organizations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
    )
    op.create_index("ix_alerts_organization_id_created_at", "alerts", ["organization_id", "created_at"], unique=False)
    op.bulk_insert(_permissions, [{"name": name, "description": text} for name, (text, _) in PERMISSIONS.items()])
    op.bulk_insert(
        _role_permissions,
        [{"role": role, "permission": name} for name, (_, roles) in PERMISSIONS.items() for role in roles],
    )


def downgrade() -> None:
    for name in PERMISSIONS:
        op.execute(sa.delete(_role_permissions).where(_role_permissions.c.permission == name))
        op.execute(sa.delete(_permissions).where(_permissions.c.name == name))
    op.drop_index("ix_alerts_organization_id_created_at", table_name="alerts")
    op.drop_table("alerts")
    op.drop_index("ix_break_glass_grants_lookup", table_name="break_glass_grants")
    op.drop_table("break_glass_grants")
