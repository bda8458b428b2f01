from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AwareDatetime, Field, StringConstraints, ValidationInfo, field_validator

from sehat.core.audit import Outcome
from sehat.core.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE
from sehat.core.schemas import InputModel, OutputModel

# Action names are dotted lower-case identifiers (auth.sign_in, audit.read). Holding the filter to that shape
# keeps free text, which might be a name or a phone number, out of the audit entry that records the filter.
ActionName = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[a-z][a-z0-9_.-]*$")]


class TimeWindowQuery(InputModel):
    """A page of audit entries in a time window: unknown parameters are refused, so a misspelt filter never
    silently widens the answer. Times are RFC 3339 with an offset; the window is ``from <= t < to``."""

    occurred_from: AwareDatetime | None = Field(default=None, alias="from")
    occurred_to: AwareDatetime | None = Field(default=None, alias="to")
    limit: int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE)
    cursor: Annotated[str, StringConstraints(max_length=512)] | None = None

    @field_validator("occurred_from", "occurred_to")
    @classmethod
    def _in_utc(cls, value: datetime | None) -> datetime | None:
        if value is None:
            return None
        try:
            return value.astimezone(UTC)
        except OverflowError:
            # 0001-01-01T00:00+05:00 exists as written but not in UTC: refuse it here rather than fail later.
            raise ValueError("time is outside the supported range") from None

    @field_validator("occurred_to")
    @classmethod
    def _after_from(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("occurred_from")
        if value is not None and start is not None and value <= start:
            raise ValueError("must be later than 'from'")
        return value

    def filters_used(self) -> dict[str, Any]:
        """The filters as given (JSON values, by their query names), without paging: ids and codes only."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"limit", "cursor"})


class AuditEventQuery(TimeWindowQuery):
    """The query string of ``GET /audit-events``."""

    patient_id: uuid.UUID | None = None
    actor_id: uuid.UUID | None = None
    action: ActionName | None = None
    outcome: Outcome | None = None


class AccessLogQuery(TimeWindowQuery):
    """The query string of ``GET /me/access-log``: the time window and paging only. The patient is the
    caller's own, never a parameter, so no value in the query can point the read at someone else."""


class PatientAccessLogQuery(TimeWindowQuery):
    """The query string of ``GET /patients/{patient_id}/access-log``: the time window and paging only; the
    patient is named by the path."""


class AccessLogEntryRead(OutputModel):
    """One access to a patient's record as the patient sees it: when, what, by whom, and whether it was
    allowed. Addresses, request ids, entry ids and details stay with the auditors."""

    occurred_at: datetime
    action: str
    # A patient-friendly wording of the action, such as "viewed your record"; refusals say so.
    description: str
    # The staff member's full name, "sehat (automatic)" for the system's own jobs, "you" for the caller.
    actor_name: str
    # The roles held at the time of the access, which may differ from the person's roles today.
    actor_roles: list[str]
    outcome: Outcome


class PatientAccessLogEntryRead(AccessLogEntryRead):
    """One access to a patient's record as the organization's auditors see it: worded for staff ("viewed the
    patient's record"), with the acting person's id to follow them through ``/audit-events``."""

    actor_id: uuid.UUID | None


class AuditEventRead(OutputModel):
    """One audit entry as auditors see it. The MAC stays in the database: it proves integrity to
    ``sehat audit verify`` and is of no use to a reader."""

    id: int
    occurred_at: datetime
    actor_type: str
    actor_id: uuid.UUID | None
    actor_roles: list[str]
    action: str
    resource_type: str | None
    resource_id: str | None
    patient_id: uuid.UUID | None
    outcome: str
    client_address: str | None
    request_id: str | None
    details: dict[str, Any]


class BreakGlassCreate(InputModel):
    """Emergency access to one patient. The reason is required and kept sealed; it is shown to no one but
    the auditors who review the grant (issue 4 gives them a way to read it)."""

    patient_id: uuid.UUID
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=10, max_length=500)]


class BreakGlassRead(OutputModel):
    id: uuid.UUID
    patient_id: uuid.UUID
    granted_at: datetime
    expires_at: datetime


class AlertRead(OutputModel):
    id: uuid.UUID
    kind: str
    severity: str
    actor_id: uuid.UUID | None
    patient_id: uuid.UUID | None
    audit_event_id: int | None
    details: dict[str, Any]
    created_at: datetime
