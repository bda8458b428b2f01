"""Inputs and outputs of a patient's rights: consents, the export (GDPR Art. 15 and 20), legal holds and
erasure (Art. 17)."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated

from pydantic import BaseModel, StringConstraints, ValidationInfo, field_validator

from sehat.core.schemas import InputModel
from sehat.patients.schemas import PatientRead


class ConsentKind(StrEnum):
    treatment = "treatment"
    data_sharing = "data_sharing"
    sms = "sms"
    email = "email"
    research = "research"


class EvidenceKind(StrEnum):
    # A drawn signature, as an image: a data URL or bare base64.
    signature = "signature"
    # The wording of the box the patient ticked, as shown to them.
    checkbox = "checkbox"


# A signature pad's PNG is tens of kilobytes; 200 KB of base64 leaves room without letting anyone park files here.
SIGNATURE_MAX_CHARS = 200_000
CHECKBOX_MAX_CHARS = 2_000
_DATA_URL = re.compile(r"^data:image/(png|jpeg|webp|svg\+xml);base64,", re.IGNORECASE)


def _is_base64(text: str) -> bool:
    try:
        base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


class ConsentCreate(InputModel):
    kind: ConsentKind
    granted: bool
    evidence_kind: EvidenceKind
    evidence: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=SIGNATURE_MAX_CHARS)]

    @field_validator("evidence")
    @classmethod
    def _evidence_fits_its_kind(cls, value: str, info: ValidationInfo) -> str:
        kind = info.data.get("evidence_kind")
        if kind is EvidenceKind.checkbox and len(value) > CHECKBOX_MAX_CHARS:
            raise ValueError(f"checkbox wording is at most {CHECKBOX_MAX_CHARS} characters")
        if kind is EvidenceKind.signature and not _is_base64(_DATA_URL.sub("", value, count=1)):
            # Never echo the value: a signature is personal data.
            raise ValueError("a signature must be an image as a data URL or base64")
        return value


class ConsentState(BaseModel):
    """The latest decision of one kind: what notifications and sharing check."""

    granted: bool
    recorded_at: datetime
    recorded_by_id: uuid.UUID | None = None


class ConsentRead(BaseModel):
    id: uuid.UUID
    patient_id: uuid.UUID
    kind: ConsentKind
    granted: bool
    recorded_at: datetime
    recorded_by_id: uuid.UUID | None = None
    evidence_kind: EvidenceKind
    # Null once the patient is erased: the decision stays (it was lawful to act on it), its evidence does not.
    evidence: str | None = None


class ConsentsRead(BaseModel):
    current: dict[ConsentKind, ConsentState]
    history: list[ConsentRead]


class LegalHoldPlace(InputModel):
    # May name a case or a court: sealed, and never written to the audit log or the logs.
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)]


class LegalHoldRead(BaseModel):
    patient_id: uuid.UUID
    legal_hold: bool
    legal_hold_since: datetime | None = None


class ErasureReason(StrEnum):
    patient_request = "patient_request"
    consent_withdrawn = "consent_withdrawn"
    unlawful_processing = "unlawful_processing"
    legal_obligation = "legal_obligation"
    other = "other"


class PatientErase(InputModel):
    reason: ErasureReason
    # A ticket id, kept in the audit entry; its shape keeps free text (which might name the patient) out.
    reference: Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9-]{1,64}$")] | None = None


class InvitationExport(BaseModel):
    """An invitation without its token (only a hash is stored, and even that stays here)."""

    id: uuid.UUID
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None = None
    status: str


class AccountExport(BaseModel):
    email: str
    created_at: datetime
    active: bool


class AccessExport(BaseModel):
    occurred_at: datetime
    actor_name: str
    actor_roles: list[str]
    action: str
    description: str
    outcome: str


class PatientExport(BaseModel):
    """Everything held on one patient, in full: what a patient receives under GDPR Art. 15 and 20."""

    exported_at: datetime
    patient: PatientRead
    merged_from_ids: list[uuid.UUID]
    legal_hold_since: datetime | None = None
    consents: list[ConsentRead]
    invitations: list[InvitationExport]
    accounts: list[AccountExport]
    accesses: list[AccessExport]


class ErasureLedgerEntry(BaseModel):
    """One line of the erasure ledger: ids and a time, no personal data, so it may live beside the backups."""

    organization_id: uuid.UUID
    patient_id: uuid.UUID
    erased_at: datetime
