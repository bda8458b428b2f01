"""Patient inputs and outputs. Read models have every demographic field optional: a response carries only the
fields the caller's role may see (``policy.visible_fields``), and a field left out is absent, not null."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated

from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from sehat.core.clock import utcnow
from sehat.core.schemas import InputModel

Text100 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
Text200 = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
PhoneText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=32)]
EmailText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=254)]
# BCP 47 tags as clinics use them: "en", "ur-PK", "hi-Latn-IN".
LanguageTag = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$")
]


class Sex(StrEnum):
    """Administrative sex as registries record it; gender identity is a separate, free field."""

    female = "female"
    male = "male"
    intersex = "intersex"
    unknown = "unknown"


class NationalIdKind(StrEnum):
    aadhaar = "aadhaar"
    abha = "abha"
    cnic = "cnic"
    nhs_number = "nhs_number"
    nhi = "nhi"
    ssn = "ssn"
    passport = "passport"
    other = "other"


def _not_in_future(value: date) -> date:
    if value > utcnow().date():
        raise ValueError("birth date is in the future")
    if value.year < 1880:
        raise ValueError("birth date is implausibly early")
    return value


BirthDate = Annotated[date, AfterValidator(_not_in_future)]


class Address(InputModel):
    line1: Text200
    line2: Text200 | None = None
    city: Text100 | None = None
    district: Text100 | None = None
    state: Text100 | None = None
    postal_code: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=16)] | None = None
    country: Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z]{2}$")] | None = None


class NationalId(InputModel):
    kind: NationalIdKind
    value: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]


class EmergencyContact(InputModel):
    name: Text200
    relationship: Text100 | None = None
    phone: PhoneText


class PatientCreate(InputModel):
    registering_facility_id: uuid.UUID
    given_name: Text100
    family_name: Text100 | None = None
    birth_date: BirthDate
    sex: Sex
    gender: Text100 | None = None
    phone: PhoneText | None = None
    email: EmailText | None = None
    address: Address | None = None
    national_id: NationalId | None = None
    emergency_contact: EmergencyContact | None = None
    preferred_language: LanguageTag | None = None


class PatientUpdate(InputModel):
    """Fields to change; ``null`` clears an optional field. Status may move between active and deceased;
    merging and erasure have their own actions."""

    given_name: Text100 | None = None
    family_name: Text100 | None = None
    birth_date: BirthDate | None = None
    sex: Sex | None = None
    gender: Text100 | None = None
    phone: PhoneText | None = None
    email: EmailText | None = None
    address: Address | None = None
    national_id: NationalId | None = None
    emergency_contact: EmergencyContact | None = None
    preferred_language: LanguageTag | None = None
    status: Annotated[str, StringConstraints(pattern=r"^(active|deceased)$")] | None = None


# What a patient may correct in their own profile: contact details and language, not identity.
SELF_CORRECTABLE_FIELDS = frozenset({"phone", "email", "address", "emergency_contact", "preferred_language", "gender"})


class PatientMerge(InputModel):
    """Fold this (duplicate) record into ``survivor_id``."""

    survivor_id: uuid.UUID


class NationalIdRead(BaseModel):
    kind: str
    # Absent for roles that see only the last four characters.
    value: str | None = None
    last4: str


class AddressRead(BaseModel):
    line1: str
    line2: str | None = None
    city: str | None = None
    district: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None


class EmergencyContactRead(BaseModel):
    name: str
    relationship: str | None = None
    phone: str


class PatientRead(BaseModel):
    id: uuid.UUID
    status: str
    version: int
    registering_facility_id: uuid.UUID
    merged_into_id: uuid.UUID | None = None
    created_at: datetime
    updated_at: datetime
    legal_hold: bool = False
    erased_at: datetime | None = None
    mrn: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    birth_date: date | None = None
    sex: str | None = None
    gender: str | None = None
    phone: str | None = None
    email: str | None = None
    address: AddressRead | None = None
    national_id: NationalIdRead | None = None
    emergency_contact: EmergencyContactRead | None = None
    preferred_language: str | None = None


class PatientSummary(BaseModel):
    """A search or list hit: enough to tell patients apart at a desk, nothing more."""

    id: uuid.UUID
    status: str
    mrn: str | None = None
    given_name: str | None = None
    family_name: str | None = None
    birth_date: date | None = None
    registering_facility_id: uuid.UUID
    merged_into_id: uuid.UUID | None = None


class PatientSearch(BaseModel):
    """Exactly one search key (``name`` goes with ``birth_date``, ``national_id`` with its kind)."""

    phone: str | None = Field(default=None, max_length=32)
    email: str | None = Field(default=None, max_length=254)
    mrn: str | None = Field(default=None, max_length=64)
    national_id: str | None = Field(default=None, max_length=64)
    national_id_kind: NationalIdKind | None = None
    name: str | None = Field(default=None, max_length=201)
    birth_date: date | None = None
