"""Scheduling (issue 5): practitioners, appointment types, weekly hours and exceptions, appointments with their
history, idempotency records and the waitlist; the scheduling permissions; row-level security on every new
table; and, on PostgreSQL, the two exclusion constraints that make double booking impossible.

Revision ID: 0011
Revises: 0010
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import sehat.core.db
from sehat.migrations.shared import grant_permissions, revoke_permissions, wall_tenant_tables

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


PERMISSIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "schedule.read": (
        "Read practitioners, appointment types, hours and free slots",
        ("org_admin", "front_office", "doctor", "nurse", "patient"),
    ),
    "schedule.manage": ("Manage practitioners, appointment types, hours and leave", ("org_admin",)),
    "appointment.read": (
        "Read appointments (a patient: their own)",
        ("org_admin", "front_office", "doctor", "nurse", "patient"),
    ),
    "appointment.book": (
        "Book and hold appointments (a patient: for themselves)",
        ("org_admin", "front_office", "patient"),
    ),
    "appointment.manage": (
        "Cancel, reschedule, check in and mark no-shows",
        ("org_admin", "front_office", "nurse"),
    ),
    "waitlist.manage": ("Put patients on the waitlist", ("org_admin", "front_office", "patient")),
}

TENANT_TABLES = (
    "practitioners",
    "practitioner_facilities",
    "practitioner_departments",
    "appointment_types",
    "availability_rules",
    "availability_exceptions",
    "appointments",
    "appointment_history",
    "idempotency_records",
    "waitlist_entries",
)
# Must equal sehat.scheduling.models.ACTIVE_STATUSES: the statuses that occupy their time.
_ACTIVE = "status IN ('held', 'booked', 'checked_in', 'needs_reschedule')"


def upgrade() -> None:
    op.create_table(
        "appointment_types",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("duration_minutes", sa.Integer(), nullable=False),
        sa.Column("price_minor", sa.Integer(), nullable=True),
        sa.Column("currency", sa.String(length=3), nullable=True),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_appointment_types_organization_id_organizations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_appointment_types")),
    )
    op.create_index(
        "uq_appointment_types_organization_id_code", "appointment_types", ["organization_id", "code"], unique=True
    )
    op.create_table(
        "idempotency_records",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("key", sa.String(length=128), nullable=False),
        sa.Column("route", sa.String(length=128), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=False),
        sa.Column("response", sa.JSON(), nullable=False),
        sa.Column("created_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_idempotency_records_organization_id_organizations")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_idempotency_records_user_id_users")),
        sa.PrimaryKeyConstraint("organization_id", "user_id", "key", name=op.f("pk_idempotency_records")),
    )
    op.create_table(
        "practitioners",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("display_name", sa.String(length=200), nullable=False),
        sa.Column("specialty", sa.String(length=64), nullable=False),
        sa.Column("languages", sa.JSON(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("created_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_practitioners_organization_id_organizations")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_practitioners_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_practitioners")),
    )
    op.create_index(
        "uq_practitioners_organization_id_user_id", "practitioners", ["organization_id", "user_id"], unique=True
    )
    op.create_table(
        "appointments",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("facility_id", sa.Uuid(), nullable=False),
        sa.Column("practitioner_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("appointment_type_id", sa.Uuid(), nullable=False),
        sa.Column("start_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("end_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("hold_expires_at", sehat.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reason_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["appointment_type_id"],
            ["appointment_types.id"],
            name=op.f("fk_appointments_appointment_type_id_appointment_types"),
        ),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name=op.f("fk_appointments_facility_id_facilities")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_appointments_organization_id_organizations")
        ),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_appointments_patient_id_patients")),
        sa.ForeignKeyConstraint(
            ["practitioner_id"], ["practitioners.id"], name=op.f("fk_appointments_practitioner_id_practitioners")
        ),
        sa.CheckConstraint("end_at > start_at", name=op.f("ck_appointments_time_order")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_appointments")),
    )
    op.create_index(
        "ix_appointments_patient_start", "appointments", ["organization_id", "patient_id", "start_at"], unique=False
    )
    op.create_index(
        "ix_appointments_practitioner_start",
        "appointments",
        ["organization_id", "practitioner_id", "start_at"],
        unique=False,
    )
    op.create_table(
        "availability_exceptions",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("practitioner_id", sa.Uuid(), nullable=False),
        sa.Column("facility_id", sa.Uuid(), nullable=True),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("starts_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ends_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.String(length=200), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name=op.f("fk_availability_exceptions_facility_id_facilities")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_availability_exceptions_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["practitioner_id"],
            ["practitioners.id"],
            name=op.f("fk_availability_exceptions_practitioner_id_practitioners"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_availability_exceptions")),
    )
    op.create_index(
        "ix_availability_exceptions_practitioner",
        "availability_exceptions",
        ["organization_id", "practitioner_id", "starts_at"],
        unique=False,
    )
    op.create_table(
        "availability_rules",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("practitioner_id", sa.Uuid(), nullable=False),
        sa.Column("facility_id", sa.Uuid(), nullable=False),
        sa.Column("weekday", sa.Integer(), nullable=False),
        sa.Column("starts", sa.Time(), nullable=False),
        sa.Column("ends", sa.Time(), nullable=False),
        sa.Column("slot_minutes", sa.Integer(), nullable=False),
        sa.Column("buffer_minutes", sa.Integer(), nullable=False),
        sa.Column("valid_from", sa.Date(), nullable=True),
        sa.Column("valid_until", sa.Date(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name=op.f("fk_availability_rules_facility_id_facilities")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_availability_rules_organization_id_organizations")
        ),
        sa.ForeignKeyConstraint(
            ["practitioner_id"], ["practitioners.id"], name=op.f("fk_availability_rules_practitioner_id_practitioners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_availability_rules")),
    )
    op.create_index(
        "ix_availability_rules_practitioner", "availability_rules", ["organization_id", "practitioner_id"], unique=False
    )
    op.create_table(
        "practitioner_departments",
        sa.Column("practitioner_id", sa.Uuid(), nullable=False),
        sa.Column("department_id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["department_id"], ["departments.id"], name=op.f("fk_practitioner_departments_department_id_departments")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_practitioner_departments_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["practitioner_id"],
            ["practitioners.id"],
            name=op.f("fk_practitioner_departments_practitioner_id_practitioners"),
        ),
        sa.PrimaryKeyConstraint("practitioner_id", "department_id", name=op.f("pk_practitioner_departments")),
    )
    op.create_table(
        "practitioner_facilities",
        sa.Column("practitioner_id", sa.Uuid(), nullable=False),
        sa.Column("facility_id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["facility_id"], ["facilities.id"], name=op.f("fk_practitioner_facilities_facility_id_facilities")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_practitioner_facilities_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["practitioner_id"],
            ["practitioners.id"],
            name=op.f("fk_practitioner_facilities_practitioner_id_practitioners"),
        ),
        sa.PrimaryKeyConstraint("practitioner_id", "facility_id", name=op.f("pk_practitioner_facilities")),
    )
    op.create_table(
        "appointment_history",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("appointment_id", sa.Uuid(), nullable=False),
        sa.Column("at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("actor_id", sa.Uuid(), nullable=True),
        sa.Column("from_status", sa.String(length=20), nullable=True),
        sa.Column("to_status", sa.String(length=20), nullable=False),
        sa.Column("start_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("end_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["appointment_id"], ["appointments.id"], name=op.f("fk_appointment_history_appointment_id_appointments")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_appointment_history_organization_id_organizations")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_appointment_history")),
    )
    op.create_index(
        "ix_appointment_history_appointment",
        "appointment_history",
        ["organization_id", "appointment_id", "at"],
        unique=False,
    )
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
        sa.ForeignKeyConstraint(
            ["appointment_type_id"],
            ["appointment_types.id"],
            name=op.f("fk_waitlist_entries_appointment_type_id_appointment_types"),
        ),
        sa.ForeignKeyConstraint(
            ["department_id"], ["departments.id"], name=op.f("fk_waitlist_entries_department_id_departments")
        ),
        sa.ForeignKeyConstraint(
            ["hold_id"], ["appointments.id"], name=op.f("fk_waitlist_entries_hold_id_appointments")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_waitlist_entries_organization_id_organizations")
        ),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_waitlist_entries_patient_id_patients")),
        sa.ForeignKeyConstraint(
            ["practitioner_id"], ["practitioners.id"], name=op.f("fk_waitlist_entries_practitioner_id_practitioners")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_waitlist_entries")),
    )
    op.create_index(
        "ix_waitlist_entries_open", "waitlist_entries", ["organization_id", "status", "created_at"], unique=False
    )
    grant_permissions(PERMISSIONS)
    if op.get_bind().dialect.name != "postgresql":
        return
    # The guarantee itself: no two active appointments of one practitioner, or of one patient, overlap.
    # Half-open ranges, so back-to-back appointments (10:00-10:20, 10:20-10:40) do not conflict.
    op.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
    for name, column in (("no_overlap_per_practitioner", "practitioner_id"), ("no_overlap_per_patient", "patient_id")):
        op.execute(
            f"ALTER TABLE appointments ADD CONSTRAINT {name} EXCLUDE USING gist "
            f"(organization_id WITH =, {column} WITH =, tstzrange(start_at, end_at, '[)') WITH &&) WHERE ({_ACTIVE})"
        )
    wall_tenant_tables(TENANT_TABLES)


def downgrade() -> None:
    revoke_permissions(PERMISSIONS)
    op.drop_index("ix_waitlist_entries_open", table_name="waitlist_entries")
    op.drop_table("waitlist_entries")
    op.drop_index("ix_appointment_history_appointment", table_name="appointment_history")
    op.drop_table("appointment_history")
    op.drop_table("practitioner_facilities")
    op.drop_table("practitioner_departments")
    op.drop_index("ix_availability_rules_practitioner", table_name="availability_rules")
    op.drop_table("availability_rules")
    op.drop_index("ix_availability_exceptions_practitioner", table_name="availability_exceptions")
    op.drop_table("availability_exceptions")
    op.drop_index("ix_appointments_practitioner_start", table_name="appointments")
    op.drop_index("ix_appointments_patient_start", table_name="appointments")
    op.drop_table("appointments")
    op.drop_index("uq_practitioners_organization_id_user_id", table_name="practitioners")
    op.drop_table("practitioners")
    op.drop_table("idempotency_records")
    op.drop_index("uq_appointment_types_organization_id_code", table_name="appointment_types")
    op.drop_table("appointment_types")
