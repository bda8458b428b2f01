from __future__ import annotations

import uuid
import zoneinfo
from datetime import datetime
from functools import cache
from typing import Annotated

from pydantic import AfterValidator

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


class FacilityUpdate(InputModel):
    name: Name | None = None
    timezone: Timezone | None = None
    active: bool | None = None


class FacilityRead(OutputModel):
    id: uuid.UUID
    organization_id: uuid.UUID
    name: str
    code: str
    timezone: str
    active: bool
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
