"""Permission to read one's organization's audit log (GET /api/v1/audit-events), granted to auditors and
organization administrators.

Written out rather than imported, like 0002: a migration inserts the same rows whatever the code says later.

Revision ID: 0004
Revises: 0003
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PERMISSION = "audit.read"
DESCRIPTION = "Read the audit log of one's own organization: who accessed what, when, and with which outcome"
GRANTED_TO = ("auditor", "org_admin")

# Lightweight table stubs: a migration must not depend on the application's models, which change later.
_permissions = sa.table("permissions", sa.column("name", sa.String), sa.column("description", sa.String))
_role_permissions = sa.table("role_permissions", sa.column("role", sa.String), sa.column("permission", sa.String))


def upgrade() -> None:
    op.bulk_insert(_permissions, [{"name": PERMISSION, "description": DESCRIPTION}])
    op.bulk_insert(_role_permissions, [{"role": role, "permission": PERMISSION} for role in GRANTED_TO])


def downgrade() -> None:
    # Every grant of the permission goes, including any an administrator added since: the foreign key
    # from role_permissions would otherwise keep the permission from being removed.
    op.execute(sa.delete(_role_permissions).where(_role_permissions.c.permission == PERMISSION))
    op.execute(sa.delete(_permissions).where(_permissions.c.name == PERMISSION))
