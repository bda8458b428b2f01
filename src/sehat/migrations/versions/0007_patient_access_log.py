"""Patient accounts linked to a patient record (users.patient_id), and the permission for a patient to read
who accessed their own record (GET /api/v1/me/access-log), granted to patients.

The grant is written out rather than imported, like 0002: a migration inserts the same rows whatever the
code says later.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PERMISSION = "audit.read_own"
DESCRIPTION = "Read who accessed one's own patient record, when, in which role and with which outcome"
GRANTED_TO = ("patient",)

_LINKED = sa.text("patient_id IS NOT NULL")
_INDEX = "ix_users_organization_id_patient_id"

# Lightweight table stubs: a migration must not depend on the application's models, which change later.
_permissions = sa.table("permissions", sa.column("name", sa.String), sa.column("description", sa.String))
_role_permissions = sa.table("role_permissions", sa.column("role", sa.String), sa.column("permission", sa.String))


def upgrade() -> None:
    # Nullable with no default: adding it rewrites no rows on either backend.
    op.add_column("users", sa.Column("patient_id", sa.Uuid(), nullable=True))
    op.create_index(
        _INDEX,
        "users",
        ["organization_id", "patient_id"],
        unique=True,
        postgresql_where=_LINKED,
        sqlite_where=_LINKED,
    )
    op.bulk_insert(_permissions, [{"name": PERMISSION, "description": DESCRIPTION}])
    op.bulk_insert(_role_permissions, [{"role": role, "permission": PERMISSION} for role in GRANTED_TO])


def downgrade() -> None:
    # Every grant of the permission goes, including any an administrator added since: the foreign key
    # from role_permissions would otherwise keep the permission from being removed.
    op.execute(sa.delete(_role_permissions).where(_role_permissions.c.permission == PERMISSION))
    op.execute(sa.delete(_permissions).where(_permissions.c.name == PERMISSION))
    op.drop_index(_INDEX, table_name="users")
    # SQLite (3.35 and later) drops a column in place once no index names it; no table copy is needed.
    op.drop_column("users", "patient_id")
