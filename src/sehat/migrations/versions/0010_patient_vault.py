"""The patient vault (issue 4): patients with encrypted demographics, their wrapped data keys, blind-index
search entries and the organization index keys, MRN counters, consents, invitations and self-registrations;
the patient permissions; and row-level security on every new table (each admits its own organization only).

Grants are written out rather than imported, like 0002: a migration inserts the same rows whatever the code
says later.

Revision ID: 0010
Revises: 0009
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import sehat.core.db
from sehat.migrations.shared import grant_permissions, revoke_permissions, wall_tenant_tables

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


PERMISSIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "patient.read": (
        "Find patients and read their demographics, masked by role",
        ("org_admin", "front_office", "doctor", "nurse", "billing"),
    ),
    "patient.read_all_facilities": (
        "Read patients registered at any facility of the organization, not only one's own facilities",
        ("org_admin", "front_office", "billing"),
    ),
    "patient.write": ("Register patients and correct their demographics", ("org_admin", "front_office")),
    "patient.merge": ("Merge a duplicate patient record into another", ("org_admin",)),
    "patient.invite": (
        "Invite a patient to open an account, and match self-registered patients to their records",
        ("org_admin", "front_office"),
    ),
    "patient.export": ("Export everything held on a patient (GDPR Art. 15 and 20)", ("org_admin", "patient")),
    "patient.erase": ("Erase a patient by destroying their data key (GDPR Art. 17)", ("org_admin",)),
    "patient.legal_hold": ("Place or lift a legal hold, which refuses erasure", ("org_admin",)),
    "patient.self": ("Read and correct one's own patient profile", ("patient",)),
    "consent.read": (
        "Read a patient's consents",
        ("org_admin", "front_office", "doctor", "nurse", "patient"),
    ),
    "consent.write": ("Record a consent granted or withdrawn", ("org_admin", "front_office", "patient")),
}

# Each admits only the organization the transaction works for (see 0008).
TENANT_TABLES = (
    "patients",
    "patient_keys",
    "organization_index_keys",
    "patient_search_index",
    "patient_mrn_counters",
    "patient_consents",
    "patient_invitations",
    "patient_registrations",
)

# Lightweight table stubs: a migration must not depend on the application's models, which change later.


def upgrade() -> None:
    op.create_table(
        "organization_index_keys",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("kek_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("rewrapped_at", sehat.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_organization_index_keys_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("organization_id", name=op.f("pk_organization_index_keys")),
    )
    op.create_table(
        "patient_mrn_counters",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("last_value", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_patient_mrn_counters_organization_id_organizations"),
        ),
        sa.PrimaryKeyConstraint("organization_id", name=op.f("pk_patient_mrn_counters")),
    )
    op.create_table(
        "patients",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("registering_facility_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("merged_into_id", sa.Uuid(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("legal_hold_since", sehat.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("legal_hold_reason_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("erased_at", sehat.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("mrn", sa.LargeBinary(), nullable=True),
        sa.Column("given_name", sa.LargeBinary(), nullable=True),
        sa.Column("family_name", sa.LargeBinary(), nullable=True),
        sa.Column("birth_date", sa.LargeBinary(), nullable=True),
        sa.Column("sex", sa.LargeBinary(), nullable=True),
        sa.Column("gender", sa.LargeBinary(), nullable=True),
        sa.Column("phone", sa.LargeBinary(), nullable=True),
        sa.Column("email", sa.LargeBinary(), nullable=True),
        sa.Column("address", sa.LargeBinary(), nullable=True),
        sa.Column("national_id", sa.LargeBinary(), nullable=True),
        sa.Column("emergency_contact", sa.LargeBinary(), nullable=True),
        sa.Column("preferred_language", sa.LargeBinary(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(["merged_into_id"], ["patients.id"], name=op.f("fk_patients_merged_into_id_patients")),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_patients_organization_id_organizations")
        ),
        sa.ForeignKeyConstraint(
            ["registering_facility_id"], ["facilities.id"], name=op.f("fk_patients_registering_facility_id_facilities")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patients")),
    )
    op.create_index("ix_patients_organization_id_id", "patients", ["organization_id", "id"], unique=False)
    op.create_table(
        "patient_consents",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.Column("recorded_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("recorded_by_id", sa.Uuid(), nullable=True),
        sa.Column("evidence_kind", sa.String(length=16), nullable=False),
        sa.Column("evidence", sa.LargeBinary(), nullable=False),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_patient_consents_organization_id_organizations")
        ),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_patient_consents_patient_id_patients")),
        sa.ForeignKeyConstraint(
            ["recorded_by_id"], ["users.id"], name=op.f("fk_patient_consents_recorded_by_id_users")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient_consents")),
    )
    op.create_index(
        "ix_patient_consents_current",
        "patient_consents",
        ["organization_id", "patient_id", "kind", "recorded_at"],
        unique=False,
    )
    op.create_table(
        "patient_invitations",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_by_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("accepted_at", sehat.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["created_by_id"], ["users.id"], name=op.f("fk_patient_invitations_created_by_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_patient_invitations_organization_id_organizations")
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_patient_invitations_patient_id_patients")
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_patient_invitations_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient_invitations")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_patient_invitations_token_hash")),
    )
    op.create_table(
        "patient_keys",
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("kek_id", sa.String(length=32), nullable=False),
        sa.Column("created_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("rewrapped_at", sehat.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["organization_id"], ["organizations.id"], name=op.f("fk_patient_keys_organization_id_organizations")
        ),
        sa.ForeignKeyConstraint(["patient_id"], ["patients.id"], name=op.f("fk_patient_keys_patient_id_patients")),
        sa.PrimaryKeyConstraint("patient_id", name=op.f("pk_patient_keys")),
    )
    op.create_index(
        "ix_patient_keys_organization_id_kek_id", "patient_keys", ["organization_id", "kek_id"], unique=False
    )
    op.create_table(
        "patient_registrations",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("details_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("matched_patient_id", sa.Uuid(), nullable=True),
        sa.Column("created_at", sehat.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("decided_at", sehat.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("decided_by_id", sa.Uuid(), nullable=True),
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["decided_by_id"], ["users.id"], name=op.f("fk_patient_registrations_decided_by_id_users")
        ),
        sa.ForeignKeyConstraint(
            ["matched_patient_id"], ["patients.id"], name=op.f("fk_patient_registrations_matched_patient_id_patients")
        ),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_patient_registrations_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_patient_registrations_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient_registrations")),
        sa.UniqueConstraint("user_id", name=op.f("uq_patient_registrations_user_id")),
    )
    op.create_index(
        "ix_patient_registrations_organization_id_status",
        "patient_registrations",
        ["organization_id", "status"],
        unique=False,
    )
    op.create_table(
        "patient_search_index",
        sa.Column("organization_id", sa.Uuid(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("digest", sa.LargeBinary(length=16), nullable=False),
        sa.Column("patient_id", sa.Uuid(), nullable=False),
        sa.ForeignKeyConstraint(
            ["organization_id"],
            ["organizations.id"],
            name=op.f("fk_patient_search_index_organization_id_organizations"),
        ),
        sa.ForeignKeyConstraint(
            ["patient_id"], ["patients.id"], name=op.f("fk_patient_search_index_patient_id_patients")
        ),
        sa.PrimaryKeyConstraint(
            "organization_id", "kind", "digest", "patient_id", name=op.f("pk_patient_search_index")
        ),
    )
    op.create_index("ix_patient_search_index_patient_id", "patient_search_index", ["patient_id"], unique=False)
    op.create_index(
        "uq_patient_search_index_mrn",
        "patient_search_index",
        ["organization_id", "digest"],
        unique=True,
        postgresql_where=sa.text("kind = 'mrn'"),
        sqlite_where=sa.text("kind = 'mrn'"),
    )
    grant_permissions(PERMISSIONS)
    wall_tenant_tables(TENANT_TABLES)


def downgrade() -> None:
    revoke_permissions(PERMISSIONS)
    op.drop_index(
        "uq_patient_search_index_mrn",
        table_name="patient_search_index",
        postgresql_where=sa.text("kind = 'mrn'"),
        sqlite_where=sa.text("kind = 'mrn'"),
    )
    op.drop_index("ix_patient_search_index_patient_id", table_name="patient_search_index")
    op.drop_table("patient_search_index")
    op.drop_index("ix_patient_registrations_organization_id_status", table_name="patient_registrations")
    op.drop_table("patient_registrations")
    op.drop_index("ix_patient_keys_organization_id_kek_id", table_name="patient_keys")
    op.drop_table("patient_keys")
    op.drop_table("patient_invitations")
    op.drop_index("ix_patient_consents_current", table_name="patient_consents")
    op.drop_table("patient_consents")
    op.drop_index("ix_patients_organization_id_id", table_name="patients")
    op.drop_table("patients")
    op.drop_table("patient_mrn_counters")
    op.drop_table("organization_index_keys")
