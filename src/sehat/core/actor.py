"""Who is acting: every service call takes one, so policy and audit never depend on a web request object."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum


class Role(StrEnum):
    platform_admin = "platform_admin"
    org_admin = "org_admin"
    front_office = "front_office"
    doctor = "doctor"
    nurse = "nurse"
    billing = "billing"
    auditor = "auditor"
    patient = "patient"


STAFF_ROLES: frozenset[Role] = frozenset(Role) - {Role.patient}


class Audience(StrEnum):
    staff = "sehat-staff"
    patient = "sehat-patient"


class TokenScope(StrEnum):
    full = "full"
    # Staff who have not enrolled a second factor yet may do nothing but enrol.
    mfa_enrollment = "mfa_enroll"


@dataclass(frozen=True, slots=True)
class Actor:
    user_id: uuid.UUID
    organization_id: uuid.UUID | None
    roles: frozenset[Role]
    audience: Audience
    session_id: uuid.UUID
    token_id: str
    scope: TokenScope = TokenScope.full
    permissions: frozenset[str] = field(default_factory=frozenset)
    client_address: str | None = None
    request_id: str | None = None

    @property
    def is_staff(self) -> bool:
        return self.audience is Audience.staff

    def has(self, permission: str) -> bool:
        return permission in self.permissions


@dataclass(frozen=True, slots=True)
class SystemActor:
    """The CLI and background jobs: acts with full authority, is named in audit entries as 'system'."""

    name: str = "system"
    client_address: str | None = None
    request_id: str | None = None
