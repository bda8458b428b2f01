from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from sehat.core.actor import Role, TokenScope
from sehat.core.schemas import Email, InputModel, Name, OutputModel, Password

OneTimeCode = Annotated[str, StringConstraints(strip_whitespace=True, pattern=r"^\d{6}$")]


class SignInForm(InputModel):
    """OAuth2 resource-owner password form, plus ``otp`` for accounts with a second factor."""

    username: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=320)]
    password: Password
    otp: Annotated[str, StringConstraints(strip_whitespace=True, max_length=12)] | None = None
    grant_type: Literal["password"] | None = None
    scope: Annotated[str, StringConstraints(max_length=200)] | None = None
    client_id: Annotated[str, StringConstraints(max_length=200)] | None = None


class TokenPair(OutputModel):
    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int
    scope: TokenScope


class RefreshRequest(InputModel):
    refresh_token: Annotated[str, StringConstraints(min_length=16, max_length=256)]


class MfaEnrollment(OutputModel):
    secret: str
    otpauth_uri: str


class MfaConfirm(InputModel):
    otp: OneTimeCode


class MeRead(OutputModel):
    id: uuid.UUID
    email: str
    full_name: str
    organization_id: uuid.UUID | None
    roles: list[Role]
    facility_ids: list[uuid.UUID]
    mfa_enabled: bool
    scope: TokenScope
    permissions: list[str]


StaffRole = Literal["org_admin", "front_office", "doctor", "nurse", "billing", "auditor"]


class UserCreate(InputModel):
    email: Email
    full_name: Name
    roles: list[StaffRole] = Field(min_length=1, max_length=6)
    facility_ids: list[uuid.UUID] = Field(default_factory=list, max_length=200)
    password: Password


class UserUpdate(InputModel):
    full_name: Name | None = None
    roles: list[StaffRole] | None = Field(default=None, min_length=1, max_length=6)
    facility_ids: list[uuid.UUID] | None = Field(default=None, max_length=200)
    active: bool | None = None


class OrgAdminCreate(InputModel):
    email: Email
    full_name: Name
    password: Password


class UserRead(OutputModel):
    id: uuid.UUID
    organization_id: uuid.UUID | None
    email: str
    full_name: str
    roles: list[Role]
    facility_ids: list[uuid.UUID]
    mfa_enabled: bool
    active: bool
    created_at: datetime
