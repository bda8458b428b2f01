from __future__ import annotations

import uuid
import zoneinfo
from datetime import datetime
from functools import cache
from itertools import pairwise
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints, ValidationInfo, field_validator

from sehat.core.schemas import Code, InputModel, Name, OutputModel, Slug


@cache
def _known_timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def _valid_timezone(value: str) -> str:
    # A closed list, not ZoneInfo(value): that would also accept odd file paths under the tz database.
    if value not in _known_timezones():
        raise ValueError("unknown IANA timezone (for example Asia/Karachi or Europe/London)")
    return value


Timezone = Annotated[str, AfterValidator(_valid_timezone)]

# Enough for a split day (morning, afternoon, evening clinic and a late slot); more is a data-entry mistake.
MAX_INTERVALS_PER_DAY = 4


def clock_minutes(value: str) -> int:
    """Minutes since local midnight of a validated "HH:MM" (``24:00`` is the end of the day, 1440)."""
    hours, minutes = value.split(":")
    return int(hours) * 60 + int(minutes)


class OpeningInterval(InputModel):
    """One stretch a facility is open on one weekday, on its own wall clock: from ``opens`` (inclusive) to
    ``closes`` (exclusive). A stretch past midnight is two intervals: ``22:00``-``24:00`` and ``00:00``-``06:00``
    on the next day."""

    weekday: Annotated[int, Field(strict=True, ge=0, le=6, description="0 is Monday, 6 is Sunday")]
    opens: Annotated[str, StringConstraints(pattern=r"^([01][0-9]|2[0-3]):[0-5][0-9]$")]
    closes: Annotated[str, StringConstraints(pattern=r"^(([01][0-9]|2[0-3]):[0-5][0-9]|24:00)$")]

    @field_validator("closes")
    @classmethod
    def _after_opening(cls, value: str, info: ValidationInfo) -> str:
        opens = info.data.get("opens")
        if opens is not None and clock_minutes(value) <= clock_minutes(opens):
            raise ValueError("must be later than 'opens'")
        return value


def _valid_week(intervals: list[OpeningInterval]) -> list[OpeningInterval]:
    """No day holds overlapping or too many intervals; the week comes back in (weekday, opens) order, so the
    stored form is the same however the client ordered it."""
    ordered = sorted(intervals, key=lambda interval: (interval.weekday, clock_minutes(interval.opens)))
    for weekday in range(7):
        day = [interval for interval in ordered if interval.weekday == weekday]
        if len(day) > MAX_INTERVALS_PER_DAY:
            raise ValueError(f"at most {MAX_INTERVALS_PER_DAY} intervals per weekday")
        # Touching intervals (08:00-12:00, 12:00-16:00) are allowed: closing is exclusive.
        if any(clock_minutes(later.opens) < clock_minutes(earlier.closes) for earlier, later in pairwise(day)):
            raise ValueError("intervals on the same weekday overlap")
    return ordered


OpeningHours = Annotated[
    list[OpeningInterval], Field(max_length=7 * MAX_INTERVALS_PER_DAY), AfterValidator(_valid_week)
]


class OpeningIntervalRead(OutputModel):
    weekday: int
    opens: str
    closes: str


class OrganizationCreate(InputModel):
    name: Name
    slug: Slug


class OrganizationUpdate(InputModel):
    name: Name | None = None
    active: bool | None = None


class OrganizationRead(OutputModel):
    id: uuid.UUID
    name: str
    slug: str
    active: bool
    created_at: datetime


class FacilityCreate(InputModel):
    name: Name
    code: Code
    timezone: Timezone
    # Omitted or null: unknown. An empty list: never open.
    opening_hours: OpeningHours | None = None


class FacilityUpdate(InputModel):
    name: Name | None = None
    timezone: Timezone | None = None
    active: bool | None = None
    # Replaces the whole week; an explicit null makes the hours unknown again.
    opening_hours: OpeningHours | None = None


class FacilityRead(OutputModel):
    id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    code: str
    timezone: str
    active: bool
    opening_hours: list[OpeningIntervalRead] | None
    created_at: datetime


class DepartmentCreate(InputModel):
    facility_id: uuid.UUID
    name: Name
    code: Code


class DepartmentUpdate(InputModel):
    name: Name | None = None
    active: bool | None = None


class DepartmentRead(OutputModel):
    id: uuid.UUID
    organization_id: uuid.UUID
    facility_id: uuid.UUID
    name: str
    code: str
    active: bool
    created_at: datetime
