"""Scheduling changes (issue 5): which appointment types a practitioner offers, facility holidays, the
cancellation code of an appointment, an index of holds (expired before every booking), the waitlist in its final shape (it was never written before, so it is
re-created), and the transactional outbox that carries domain events to the worker.

Revision ID: 0012
Revises: 0011
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import sehat.core.db
from sehat.migrations.shared import grant_permissions, revoke_permissions, wall_tenant_tables

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_TENANT_TABLES = ("practitioner_appointment_types", "facility_holidays", "waitlist_entries", "outbox_events")
PERMISSIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "appointment.change": (
        "Cancel and reschedule appointments (a patient: their own)",
        ("org_admin", "front_office", "nurse", "patient"),
    ),
}


def _organization_fk(table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        ["organization_id"], ["organizations.id"], name=op.f(f"fk_{table}_organization_id_organizations")
    )


def upgrade() -> None:
    op.create_table(
        "practitioner_appointment_types",
        sa.Column("practitioner_id", sa.Uuid(), nullable=False),
        sa.Column("appointment_type_id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["appointment_type_id"],
            ["appointment_types.id"],
            name=op.f("fk_practitioner_appointment_types_appointment_type_id_appointment_types"),
        ),
        _organization_fk("practitioner_appointment_types"),
        sa.ForeignKeyConstraint(
            ["practitioner_id"],
            ["practitioners.id"],
            name=op.f("fk_practitioner_appointment_types_practitioner_id_practitioners"),
        ),
        sa.PrimaryKeyConstraint(
            "practitioner_id", "appointment_type_id", name=op.f("pk_practitioner_appointment_types")
        ),
    )
    op.create_table(
        "facility_holidays",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("facility_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("created_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name=op.f("fk_facility_holidays_facility_id_facilities")
        ),
        _organization_fk("facility_holidays"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_facility_holidays")),
    )
    op.create_index(
        "uq_facility_holidays_organization_id_facility_id_day",
        "facility_holidays",
        ["organization_id", "facility_id", "day"],
        unique=True,
    )
    op.add_column("appointments", sa.Column("cancellation_code", sa.String(length=32), nullable=True))
    op.create_index(
        "ix_appointments_held",
        "appointments",
        ["organization_id", "hold_expires_at"],
        unique=False,
        postgresql_where=sa.text("status = 'held'"),
        sqlite_where=sa.text("status = 'held'"),
    )
    op.drop_index("ix_waitlist_entries_open", table_name="waitlist_entries")
    op.drop_table("waitlist_entries")
    op.create_table(
        "waitlist_entries",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("facility_id", sa.Uuid(), nullable=False),
        sa.Column("practitioner_id", sa.Uuid(), nullable=True),
        sa.Column("department_id", sa.Uuid(), nullable=True),
        sa.Column("appointment_type_id", sa.Uuid(), nullable=False),
        sa.Column("from_date", sa.Date(), nullable=False),
        sa.Column("to_date", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("hold_id", sa.Uuid(), nullable=True),
        sa.Column("created_by", sa.Uuid(), nullable=True),
        sa.Column("created_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.CheckConstraint(
            "(practitioner_id IS NULL) <> (department_id IS NULL)",
            name=op.f("ck_waitlist_entries_one_target"),
        ),
        sa.CheckConstraint("to_date >= from_date", name=op.f("ck_waitlist_entries_date_order")),
        sa.ForeignKeyConstraint(
            ["appointment_type_id"],
            ["appointment_types.id"],
            name=op.f("fk_waitlist_entries_appointment_type_id_appointment_types"),
        ),
        sa.ForeignKeyConstraint(
            ["department_id"], ["departments.id"], name=op.f("fk_waitlist_entries_department_id_departments")
        ),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name=op.f("fk_waitlist_entries_facility_id_facilities")
        ),
        sa.ForeignKeyConstraint(
            ["hold_id"], ["appointments.id"], name=op.f("fk_waitlist_entries_hold_id_appointments")
        ),
        _organization_fk("waitlist_entries"),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_waitlist_entries_patient_id_patients")),
        sa.ForeignKeyConstraint(
            ["practitioner_id"], ["practitioners.id"], name=op.f("fk_waitlist_entries_practitioner_id_practitioners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waitlist_entries")),
    )
    op.create_index(
        "ix_waitlist_entries_waiting",
        "waitlist_entries",
        ["organization_id", "facility_id", "status", "created_at"],
        unique=False,
    )
    op.create_table(
        "outbox_events",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("created_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("published_at", sehat.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        _organization_fk("outbox_events"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox_events")),
    )
    op.create_index("ix_outbox_events_unpublished", "outbox_events", ["published_at", "created_at"], unique=False)
    grant_permissions(PERMISSIONS)
    wall_tenant_tables(NEW_TENANT_TABLES)


def downgrade() -> None:
    revoke_permissions(PERMISSIONS)
    op.drop_index("ix_outbox_events_unpublished", table_name="outbox_events")
    op.drop_table("outbox_events")
    op.drop_index("ix_waitlist_entries_waiting", table_name="waitlist_entries")
    op.drop_table("waitlist_entries")
    op.create_table(
        "waitlist_entries",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("practitioner_id", sa.Uuid(), nullable=True),
        sa.Column("department_id", sa.Uuid(), nullable=True),
        sa.Column("appointment_type_id", sa.Uuid(), nullable=False),
        sa.Column("from_date", sa.Date(), nullable=False),
        sa.Column("to_date", sa.Date(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("hold_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waitlist_entries")),
    )
    op.create_index(
        "ix_waitlist_entries_open", "waitlist_entries", ["organization_id", "status", "created_at"], unique=False
    )
    wall_tenant_tables(["waitlist_entries"])
    op.drop_index(
        "ix_appointments_held",
        table_name="appointments",
        postgresql_where=sa.text("status = 'held'"),
        sqlite_where=sa.text("status = 'held'"),
    )
    op.drop_column("appointments", "cancellation_code")
    op.drop_index("uq_facility_holidays_organization_id_facility_id_day", table_name="facility_holidays")
    op.drop_table("facility_holidays")
    op.drop_table("practitioner_appointment_types")
