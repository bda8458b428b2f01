"""The patient vault's tables. Every identifying value is a ciphertext (``LargeBinary``) under the patient's own
data key; what stays in clear is what the system itself needs to run: ids, organization, registering facility,
status, versions and times.

``patient_keys`` holds the wrapped data keys apart from the patients, so erasure is a DELETE in one small
table whose backups operators can treat specially (docs/operations.md, "Erasure and backups").
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Index, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from sehat.core.clock import utcnow
from sehat.core.db import Base, IdMixin

PATIENTS_TABLE = "patients"


class PatientStatus(StrEnum):
    active = "active"
    deceased = "deceased"
    # Duplicate registration folded into another record; ``merged_into_id`` names the survivor.
    merged = "merged"
    # Crypto-shredded: the data key is gone, only a pseudonymous shell remains for what references it.
    erased = "erased"


# The encrypted columns of ``patients``, in the order the export lists them.
ENCRYPTED_FIELDS: tuple[str, ...] = (
    "mrn",
    "given_name",
    "family_name",
    "birth_date",
    "sex",
    "gender",
    "phone",
    "email",
    "address",
    "national_id",
    "emergency_contact",
    "preferred_language",
)


class Patient(IdMixin, Base):
    __tablename__ = PATIENTS_TABLE
    __table_args__ = (Index("ix_patients_organization_id_id", "organization_id", "id"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    registering_facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    status: Mapped[str] = mapped_column(String(16), default=PatientStatus.active.value)
    merged_into_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("patients.id"))
    version: Mapped[int] = mapped_column(default=1)
    legal_hold_since: Mapped[datetime | None]
    # The stated reason may name a case or a court; sealed under the key ring, not the patient's key, so that
    # it outlives an erasure that the hold was lifted for.
    legal_hold_reason_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    erased_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    # Every UPDATE carries "WHERE version = <the version read>": a concurrent change makes it fail (412).
    __mapper_args__ = {"version_id_col": version}

    mrn: Mapped[bytes | None] = mapped_column(LargeBinary)
    given_name: Mapped[bytes | None] = mapped_column(LargeBinary)
    family_name: Mapped[bytes | None] = mapped_column(LargeBinary)
    birth_date: Mapped[bytes | None] = mapped_column(LargeBinary)
    sex: Mapped[bytes | None] = mapped_column(LargeBinary)
    gender: Mapped[bytes | None] = mapped_column(LargeBinary)
    phone: Mapped[bytes | None] = mapped_column(LargeBinary)
    email: Mapped[bytes | None] = mapped_column(LargeBinary)
    address: Mapped[bytes | None] = mapped_column(LargeBinary)
    national_id: Mapped[bytes | None] = mapped_column(LargeBinary)
    emergency_contact: Mapped[bytes | None] = mapped_column(LargeBinary)
    preferred_language: Mapped[bytes | None] = mapped_column(LargeBinary)


class PatientKey(Base):
    """A patient's data key, wrapped by a key-encryption key of the master ring. Deleted by erasure."""

    __tablename__ = "patient_keys"
    __table_args__ = (Index("ix_patient_keys_organization_id_kek_id", "organization_id", "kek_id"),)

    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), primary_key=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    # The master key id the wrapped key names (readable without any key): rotation's to-do list.
    kek_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    rewrapped_at: Mapped[datetime | None]


class OrganizationIndexKey(Base):
    """The organization's blind-index key: random, used for nothing else, stored wrapped like a data key so
    that rotating the master key re-wraps it instead of recomputing every index."""

    __tablename__ = "organization_index_keys"

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    kek_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    rewrapped_at: Mapped[datetime | None]


_MRN_KIND = text("kind = 'mrn'")


class PatientSearchEntry(Base):
    """One blind index value of one patient: exact-match search without decrypting anyone."""

    __tablename__ = "patient_search_index"
    __table_args__ = (
        Index("ix_patient_search_index_patient_id", "patient_id"),
        # An MRN names one patient, ever: the counter never repeats, and this holds even against a bug.
        Index(
            "uq_patient_search_index_mrn",
            "organization_id",
            "digest",
            unique=True,
            postgresql_where=_MRN_KIND,
            sqlite_where=_MRN_KIND,
        ),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), primary_key=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(16), primary_key=True)
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"), primary_key=True)


class MrnCounter(Base):
    """The last medical record number issued in an organization: ``UPDATE … RETURNING``, never ``count()+1``."""

    __tablename__ = "patient_mrn_counters"

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), primary_key=True)
    last_value: Mapped[int] = mapped_column(BigInteger)


class PatientConsent(IdMixin, Base):
    """One decision: consent of a kind granted or withdrawn. The latest per kind is the current state."""

    __tablename__ = "patient_consents"
    __table_args__ = (Index("ix_patient_consents_current", "organization_id", "patient_id", "kind", "recorded_at"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"))
    kind: Mapped[str] = mapped_column(String(32))
    granted: Mapped[bool]
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
    # A staff member, or the patient's own account.
    recorded_by_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    evidence_kind: Mapped[str] = mapped_column(String(16))
    # The signature or the checkbox text, under the patient's data key: erased with the patient.
    evidence: Mapped[bytes] = mapped_column(LargeBinary)


class PatientInvitation(IdMixin, Base):
    """A one-time link for a patient to open their account. Only the token's hash is stored."""

    __tablename__ = "patient_invitations"

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"))
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    created_by_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    accepted_at: Mapped[datetime | None]
    user_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))


class PatientRegistration(IdMixin, Base):
    """A patient who signed up on their own, waiting for front office to match them to a record."""

    __tablename__ = "patient_registrations"
    __table_args__ = (Index("ix_patient_registrations_organization_id_status", "organization_id", "status"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), unique=True)
    # What the patient typed (name, birth date, phone), sealed under the key ring: no record, no data key yet.
    details_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    matched_patient_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("patients.id"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    decided_at: Mapped[datetime | None]
    decided_by_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("users.id"))
