"""Inputs and outputs of patient accounts: invitations, accepting one, self-registration and its review."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel

from sehat.core.schemas import Email, InputModel, OutputModel, Password, Slug
from sehat.patients.schemas import BirthDate, PatientSummary, PhoneText, Text100


class InvitationRead(OutputModel):
    """A new invitation. ``token`` and ``url`` are shown this once: only the token's hash is kept."""

    id: uuid.UUID
    expires_at: datetime
    token: str
    # The link to hand to the patient; the token travels in the fragment, which browsers never send to a server.
    url: str


class InvitationAccept(InputModel):
    # Any text: a malformed token gets the same answer as an unknown, expired or used one.
    token: str
    email: Email
    password: Password


class PatientAccountRead(OutputModel):
    user_id: uuid.UUID
    email: str


class RegistrationCreate(InputModel):
    """A patient signing up on their own; front office matches them to their record later."""

    organization: Slug
    email: Email
    password: Password
    given_name: Text100
    family_name: Text100 | None = None
    birth_date: BirthDate
    phone: PhoneText


class RegistrationStatus(StrEnum):
    pending = "pending"
    matched = "matched"
    rejected = "rejected"


class RegistrationAccepted(OutputModel):
    id: uuid.UUID
    status: Literal[RegistrationStatus.pending]


# Which blind index found a candidate: the phone number, or the name together with the birth date.
MatchedOn = Literal["phone", "name_and_birth_date"]


class RegistrationCandidate(BaseModel):
    """A patient record that may be the person who signed up."""

    patient: PatientSummary
    matched_on: list[MatchedOn]
    # A record that already has an account cannot be matched (409); shown so the desk need not try.
    has_account: bool


class RegistrationRead(BaseModel):
    """A pending registration as front office reviews it: what the person typed, and records that match."""

    id: uuid.UUID
    status: RegistrationStatus
    created_at: datetime
    email: str
    given_name: str
    family_name: str | None = None
    birth_date: date
    phone: str
    candidates: list[RegistrationCandidate]


class RegistrationMatch(InputModel):
    patient_id: uuid.UUID


class RegistrationDecisionRead(OutputModel):
    id: uuid.UUID
    status: RegistrationStatus
    matched_patient_id: uuid.UUID | None = None
    decided_at: datetime | None = None
