"""Scheduling inputs and outputs. Times are RFC 3339 with an offset (a naive time is refused), stored in UTC;
weekly hours are wall-clock times of the facility's own timezone."""

from __future__ import annotations

import uuid
from datetime import date, datetime, time, timedelta
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


class PractitionerRead(OutputModel):
    id: uuid.UUID
    user_id: uuid.UUID
    display_name: str
    specialty: str
    languages: list[str]
    active: bool
    facility_ids: list[uuid.UUID] = Field(default_factory=list)
    department_ids: list[uuid.UUID] = Field(default_factory=list)


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


MAX_SEARCH_DAYS = 31


class SlotQuery(BaseModel):
    """Free slots of one practitioner at one facility, for one appointment type, within [from, to)."""

    model_config = ConfigDict(populate_by_name=True)

    practitioner_id: uuid.UUID
    facility_id: uuid.UUID
    appointment_type_id: uuid.UUID
    starts_from: AwareDatetime = Field(alias="from")
    ends_before: AwareDatetime = Field(alias="to")

    @model_validator(mode="after")
    def _bounded(self) -> SlotQuery:
        if self.ends_before <= self.starts_from:
            raise ValueError("to must be after from")
        if self.ends_before - self.starts_from > timedelta(days=MAX_SEARCH_DAYS):
            raise ValueError(f"a search covers at most {MAX_SEARCH_DAYS} days")
        return self


class SlotRead(BaseModel):
    start: datetime
    end: datetime
