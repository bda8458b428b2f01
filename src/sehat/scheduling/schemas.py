"""Scheduling inputs and outputs. Times are RFC 3339 with an offset (a naive time is refused), stored in UTC;
weekly hours are wall-clock times of the facility's own timezone."""

from __future__ import annotations

import uuid
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from sehat.core.schemas import Code, InputModel, Name, OutputModel

LanguageTag = Annotated[
    str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8}){0,3}$")
]


class PractitionerCreate(InputModel):
    user_id: uuid.UUID
    display_name: Name
    specialty: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)]
    languages: list[LanguageTag] = Field(default_factory=list, max_length=20)
    facility_ids: list[uuid.UUID] = Field(min_length=1, max_length=50)
    department_ids: list[uuid.UUID] = Field(default_factory=list, max_length=50)
    appointment_type_ids: list[uuid.UUID] = Field(
        default_factory=list, max_length=50, description="The types they offer; none listed means every type"
    )


class PractitionerRead(OutputModel):
    id: uuid.UUID
    user_id: uuid.UUID
    display_name: str
    specialty: str
    languages: list[str]
    active: bool
    facility_ids: list[uuid.UUID] = Field(default_factory=list)
    department_ids: list[uuid.UUID] = Field(default_factory=list)
    appointment_type_ids: list[uuid.UUID] = Field(default_factory=list)


class AppointmentTypeCreate(InputModel):
    name: Name
    code: Code
    duration_minutes: int = Field(ge=5, le=480)
    price_minor: int | None = Field(default=None, ge=0)
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] | None = None


class AppointmentTypeRead(OutputModel):
    id: uuid.UUID
    name: str
    code: str
    duration_minutes: int
    price_minor: int | None
    currency: str | None
    active: bool


class WeeklyHoursCreate(InputModel):
    facility_id: uuid.UUID
    weekday: int = Field(ge=0, le=6, description="0 = Monday")
    starts: time
    ends: time
    slot_minutes: int = Field(ge=5, le=240, description="The slot grid")
    buffer_minutes: int = Field(default=0, ge=0, le=120)
    valid_from: date | None = None
    valid_until: date | None = None

    @model_validator(mode="after")
    def _ordered(self) -> WeeklyHoursCreate:
        if self.ends <= self.starts:
            raise ValueError("ends must be after starts (sessions do not cross midnight)")
        if self.starts.tzinfo is not None or self.ends.tzinfo is not None:
            raise ValueError("weekly hours are wall-clock times of the facility, without an offset")
        if self.valid_from and self.valid_until and self.valid_until < self.valid_from:
            raise ValueError("valid_until is before valid_from")
        return self


class WeeklyHoursRead(OutputModel):
    id: uuid.UUID
    practitioner_id: uuid.UUID
    facility_id: uuid.UUID
    weekday: int
    starts: time
    ends: time
    slot_minutes: int
    buffer_minutes: int
    valid_from: date | None
    valid_until: date | None


class AppointmentCreate(InputModel):
    patient_id: uuid.UUID
    practitioner_id: uuid.UUID
    facility_id: uuid.UUID
    appointment_type_id: uuid.UUID
    start: AwareDatetime


class AppointmentRead(OutputModel):
    id: uuid.UUID
    patient_id: uuid.UUID
    practitioner_id: uuid.UUID
    facility_id: uuid.UUID
    appointment_type_id: uuid.UUID
    start: datetime
    end: datetime
    status: str
    hold_expires_at: datetime | None
    version: int
    cancellation_code: str | None = None
    # Only for staff who manage appointments and for the patient: it may describe the patient's condition.
    cancellation_reason: str | None = None


MAX_SEARCH_DAYS = 31


class SlotQuery(BaseModel):
    """Free slots at one facility for one appointment type within [from, to), of one practitioner or of every
    practitioner of a department or a specialty there."""

    model_config = ConfigDict(populate_by_name=True)

    practitioner_id: uuid.UUID | None = None
    department_id: uuid.UUID | None = None
    specialty: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64)] | None = None
    facility_id: uuid.UUID
    appointment_type_id: uuid.UUID
    starts_from: AwareDatetime = Field(alias="from")
    ends_before: AwareDatetime = Field(alias="to")

    @model_validator(mode="after")
    def _bounded(self) -> SlotQuery:
        chosen = [name for name in ("practitioner_id", "department_id", "specialty") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of practitioner_id, department_id and specialty")
        if self.ends_before <= self.starts_from:
            raise ValueError("to must be after from")
        if self.ends_before - self.starts_from > timedelta(days=MAX_SEARCH_DAYS):
            raise ValueError(f"a search covers at most {MAX_SEARCH_DAYS} days")
        return self


class SlotRead(BaseModel):
    start: datetime
    end: datetime
    practitioner_id: uuid.UUID


class CancellationCode(StrEnum):
    patient_request = "patient_request"
    practitioner_unavailable = "practitioner_unavailable"
    facility_closed = "facility_closed"
    booked_in_error = "booked_in_error"
    other = "other"


class AppointmentCancel(InputModel):
    code: CancellationCode
    # Free text may name a condition ("admitted for chest pain"): it is sealed at rest.
    reason: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=500)] | None = None


class AppointmentReschedule(InputModel):
    """A new start; optionally another practitioner (an equivalent one offered) or appointment type."""

    start: AwareDatetime
    practitioner_id: uuid.UUID | None = None
    appointment_type_id: uuid.UUID | None = None


class AppointmentListQuery(BaseModel):
    practitioner_id: uuid.UUID | None = None
    patient_id: uuid.UUID | None = None
    facility_id: uuid.UUID | None = None
    status: Annotated[str, StringConstraints(pattern=r"^[a-z_]{1,20}$")] | None = None
    starts_from: AwareDatetime | None = Field(default=None, alias="from")
    ends_before: AwareDatetime | None = Field(default=None, alias="to")
    limit: int = Field(default=50, ge=1, le=100)
    cursor: Annotated[str, StringConstraints(max_length=512)] | None = None

    model_config = ConfigDict(populate_by_name=True)


MAX_ABSENCE_DAYS = 366


class AbsenceCreate(InputModel):
    """Leave (or an extra session) from ``starts`` to ``ends``; without a facility, leave covers them everywhere."""

    starts: AwareDatetime
    ends: AwareDatetime
    facility_id: uuid.UUID | None = None
    reason: Annotated[str, StringConstraints(strip_whitespace=True, max_length=200)] | None = None

    @model_validator(mode="after")
    def _ordered(self) -> AbsenceCreate:
        if self.ends <= self.starts:
            raise ValueError("ends must be after starts")
        if self.ends - self.starts > timedelta(days=MAX_ABSENCE_DAYS):
            raise ValueError(f"one entry covers at most {MAX_ABSENCE_DAYS} days")
        return self


class ExtraSessionCreate(AbsenceCreate):
    facility_id: uuid.UUID  # type: ignore[assignment]  # an extra session happens somewhere


class RescheduleOffer(BaseModel):
    appointment_id: uuid.UUID
    offers: list[SlotRead]


class ExceptionRead(OutputModel):
    id: uuid.UUID
    practitioner_id: uuid.UUID
    facility_id: uuid.UUID | None
    kind: str
    starts: datetime = Field(validation_alias="starts_at")
    ends: datetime = Field(validation_alias="ends_at")
    reason: str | None
    # Appointments the change left outside working time, now ``needs_reschedule``, with the next free slots.
    needs_reschedule: list[RescheduleOffer] = Field(default_factory=list)


class HolidayCreate(InputModel):
    facility_id: uuid.UUID
    day: date
    name: Name


class HolidayRead(OutputModel):
    id: uuid.UUID
    facility_id: uuid.UUID
    day: date
    name: str
    needs_reschedule: list[RescheduleOffer] = Field(default_factory=list)


class HoursRemoved(BaseModel):
    needs_reschedule: list[RescheduleOffer]


class WaitlistCreate(InputModel):
    """Wait for one practitioner, or for anyone in a department, at a facility between two local dates."""

    patient_id: uuid.UUID
    facility_id: uuid.UUID
    practitioner_id: uuid.UUID | None = None
    department_id: uuid.UUID | None = None
    appointment_type_id: uuid.UUID
    from_date: date
    to_date: date

    @model_validator(mode="after")
    def _one_target(self) -> WaitlistCreate:
        if (self.practitioner_id is None) == (self.department_id is None):
            raise ValueError("give exactly one of practitioner_id and department_id")
        if self.to_date < self.from_date:
            raise ValueError("to_date is before from_date")
        if (self.to_date - self.from_date).days > 180:
            raise ValueError("a waitlist entry covers at most 180 days")
        return self


class WaitlistRead(OutputModel):
    id: uuid.UUID
    patient_id: uuid.UUID
    facility_id: uuid.UUID
    practitioner_id: uuid.UUID | None
    department_id: uuid.UUID | None
    appointment_type_id: uuid.UUID
    from_date: date
    to_date: date
    status: str
    hold_id: uuid.UUID | None
    created_at: datetime
