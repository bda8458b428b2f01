"""The OPD queue (issue 6): queues per facility, day and session with the rooms serving them, tokens with their
history, lobby display boards; the queue permissions; row-level security on every new table.

Revision ID: 0014
Revises: 0013
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import sehat.core.db
from sehat.migrations.shared import grant_permissions, revoke_permissions, wall_tenant_tables

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PERMISSIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "queue.read": ("Read queues, their tokens and metrics", ("org_admin", "front_office", "doctor", "nurse")),
    "queue.manage": ("Open the day's queues and their rooms", ("org_admin", "front_office")),
    "queue.issue": ("Issue and cancel tokens", ("org_admin", "front_office", "nurse")),
    "queue.serve": (
        "Call, start, complete, skip and recall tokens; pause, resume and report delays",
        ("org_admin", "doctor", "nurse"),
    ),
    "queue.transfer": ("Transfer a token to another queue", ("org_admin", "front_office", "doctor", "nurse")),
    "queue.read_own": ("Read one's own token: position and estimated time", ("patient",)),
    "board.manage": ("Enrol lobby display boards and their keys", ("org_admin",)),
}

TENANT_TABLES = ("queues", "queue_rooms", "queue_tokens", "queue_token_history", "display_boards")


def upgrade() -> None:
    op.create_table(
        "display_boards",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("facility_id", sa.Uuid(), nullable=False),
        sa.Column("department_id", sa.Uuid(), nullable=True),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("key_digest", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["department_id"], ["departments.id"], name=op.f("fk_display_boards_department_id_departments")
        ),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name=op.f("fk_display_boards_facility_id_facilities")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_display_boards_organization_id_organizations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_display_boards")),
    )
    op.create_index("ix_display_boards_facility", "display_boards", ["organization_id", "facility_id"], unique=False)
    op.create_table(
        "queues",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("facility_id", sa.Uuid(), nullable=False),
        sa.Column("department_id", sa.Uuid(), nullable=True),
        sa.Column("practitioner_id", sa.Uuid(), nullable=True),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("session", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("prefix", sa.String(length=8), nullable=False),
        sa.Column("default_minutes", sa.Integer(), nullable=False),
        sa.Column("last_number", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("paused_until", sehat.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("delayed_until", sehat.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["department_id"], ["departments.id"], name=op.f("fk_queues_department_id_departments")
        ),
        sa.ForeignKeyConstraint(["facility_id"], ["facilities.id"], name=op.f("fk_queues_facility_id_facilities")),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_queues_organization_id_organizations")
        ),
        sa.ForeignKeyConstraint(
            ["practitioner_id"], ["practitioners.id"], name=op.f("fk_queues_practitioner_id_practitioners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queues")),
    )
    op.create_index(
        "uq_queues_organization_id_facility_id_day_session_prefix",
        "queues",
        ["organization_id", "facility_id", "day", "session", "prefix"],
        unique=True,
    )
    op.create_table(
        "queue_rooms",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("queue_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=50), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_queue_rooms_organization_id_organizations")
        ),
        sa.ForeignKeyConstraint(["queue_id"], ["queues.id"], name=op.f("fk_queue_rooms_queue_id_queues")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_rooms")),
    )
    op.create_index(
        "uq_queue_rooms_organization_id_queue_id_name",
        "queue_rooms",
        ["organization_id", "queue_id", "name"],
        unique=True,
    )
    op.create_table(
        "queue_tokens",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("queue_id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=16), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("appointment_id", sa.Uuid(), nullable=True),
        sa.Column("transferred_from_id", sa.Uuid(), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("arrived_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("appointment_at", sehat.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("planned_seconds", sa.Integer(), nullable=False),
        sa.Column("room_id", sa.Uuid(), nullable=True),
        sa.Column("called_at", sehat.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("started_at", sehat.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("completed_at", sehat.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("changed_version", sa.Integer(), nullable=False),
        sa.Column("updated_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["appointment_id"], ["appointments.id"], name=op.f("fk_queue_tokens_appointment_id_appointments")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_queue_tokens_organization_id_organizations")
        ),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_queue_tokens_patient_id_patients")),
        sa.ForeignKeyConstraint(["queue_id"], ["queues.id"], name=op.f("fk_queue_tokens_queue_id_queues")),
        sa.ForeignKeyConstraint(["room_id"], ["queue_rooms.id"], name=op.f("fk_queue_tokens_room_id_queue_rooms")),
        sa.ForeignKeyConstraint(
            ["transferred_from_id"], ["queue_tokens.id"], name=op.f("fk_queue_tokens_transferred_from_id_queue_tokens")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_tokens")),
    )
    op.create_index(
        "ix_queue_tokens_queue_status", "queue_tokens", ["organization_id", "queue_id", "status"], unique=False
    )
    op.create_index(
        "ix_queue_tokens_queue_changed",
        "queue_tokens",
        ["organization_id", "queue_id", "changed_version"],
        unique=False,
    )
    op.create_index(
        "uq_queue_tokens_active_patient",
        "queue_tokens",
        ["organization_id", "queue_id", "patient_id"],
        unique=True,
        postgresql_where=sa.text("status IN ('waiting', 'called', 'in_consultation', 'skipped')"),
        sqlite_where=sa.text("status IN ('waiting', 'called', 'in_consultation', 'skipped')"),
    )
    op.create_index(
        "uq_queue_tokens_organization_id_queue_id_number",
        "queue_tokens",
        ["organization_id", "queue_id", "number"],
        unique=True,
    )
    op.create_table(
        "queue_token_history",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("token_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("action", sa.String(length=32), nullable=False),
        sa.Column("from_status", sa.String(length=16), nullable=True),
        sa.Column("to_status", sa.String(length=16), nullable=False),
        sa.Column("room_id", sa.Uuid(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_queue_token_history_organization_id_organizations")
        ),
        sa.ForeignKeyConstraint(
            ["token_id"], ["queue_tokens.id"], name=op.f("fk_queue_token_history_token_id_queue_tokens")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_queue_token_history")),
    )
    op.create_index(
        "uq_queue_token_history_token_version",
        "queue_token_history",
        ["organization_id", "token_id", "version"],
        unique=True,
    )
    grant_permissions(PERMISSIONS)
    wall_tenant_tables(TENANT_TABLES)


def downgrade() -> None:
    revoke_permissions(PERMISSIONS)
    op.drop_index("uq_queue_token_history_token_version", table_name="queue_token_history")
    op.drop_table("queue_token_history")
    op.drop_index("uq_queue_tokens_organization_id_queue_id_number", table_name="queue_tokens")
    op.drop_index(
        "uq_queue_tokens_active_patient",
        table_name="queue_tokens",
        postgresql_where=sa.text("status IN ('waiting', 'called', 'in_consultation', 'skipped')"),
        sqlite_where=sa.text("status IN ('waiting', 'called', 'in_consultation', 'skipped')"),
    )
    op.drop_index("ix_queue_tokens_queue_changed", table_name="queue_tokens")
    op.drop_index("ix_queue_tokens_queue_status", table_name="queue_tokens")
    op.drop_table("queue_tokens")
    op.drop_index("uq_queue_rooms_organization_id_queue_id_name", table_name="queue_rooms")
    op.drop_table("queue_rooms")
    op.drop_index("uq_queues_organization_id_facility_id_day_session_prefix", table_name="queues")
    op.drop_table("queues")
    op.drop_index("ix_display_boards_facility", table_name="display_boards")
    op.drop_table("display_boards")
