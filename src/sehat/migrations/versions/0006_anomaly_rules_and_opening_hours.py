"""Facility opening hours (for the after-hours rule) and the anomaly rules' cursor over the sealed audit chain.

The cursor's one row is not inserted here: the evaluator creates it on its first run, so a database whose
tables were emptied (the test harness, a restore of the schema alone) needs nothing re-seeded.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import sehat.core.db

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no default: every existing facility's hours are unknown until an administrator enters them.
    op.add_column("facilities", sa.Column("opening_hours", sa.JSON(none_as_null=True), nullable=True))
    op.create_table(
        "anomaly_cursor",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("last_chain_index", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_anomaly_cursor_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_anomaly_cursor")),
    )


def downgrade() -> None:
    op.drop_table("anomaly_cursor")
    op.drop_column("facilities", "opening_hours")
