"""Fewer indexes on audit_events, whose every append pays for each one: the action index goes (action is
always filtered within an organization's entries, which the (organization_id, id) index already narrows),
and the (organization_id, occurred_at) B-tree becomes a BRIN index on occurred_at on PostgreSQL (entries are
appended in time order, which is what BRIN summarises cheaply).

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_audit_events_action", table_name="audit_events")
    op.drop_index("ix_audit_events_organization_id_occurred_at", table_name="audit_events")
    op.create_index("ix_audit_events_occurred_at", "audit_events", ["occurred_at"], postgresql_using="brin")


def downgrade() -> None:
    op.drop_index("ix_audit_events_occurred_at", table_name="audit_events")
    op.create_index("ix_audit_events_organization_id_occurred_at", "audit_events", ["organization_id", "occurred_at"])
    op.create_index("ix_audit_events_action", "audit_events", ["action"])
