"""Organizations, facilities and departments. Only the unit of work commits."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import Select, select
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor, SystemActor
from sehat.core.errors import Conflict, NotFound
from sehat.core.pagination import paginate
from sehat.core.scoping import scoped_select
from sehat.identity import service as identity_service
from sehat.identity.models import UserFacility
from sehat.identity.policy import ensure_can_manage_organizations
from sehat.identity.runtime import AuthRuntime
from sehat.tenancy import policy
from sehat.tenancy.models import Department, Facility, Organization
from sehat.tenancy.schemas import (
    DepartmentCreate,
    DepartmentUpdate,
    FacilityCreate,
    FacilityUpdate,
    OrganizationCreate,
    OrganizationUpdate,
    clock_minutes,
)


def _apply(target: Any, changes: dict[str, Any]) -> None:
    for field, value in changes.items():
        setattr(target, field, value)


# --- organizations (platform administrators) ----------------------------------------------------------------


async def create_organization(
    session: AsyncSession, actor: Actor | SystemActor, request: OrganizationCreate
) -> Organization:
    ensure_can_manage_organizations(actor)
    if await session.scalar(select(Organization.id).where(Organization.slug == request.slug)) is not None:
        raise Conflict("An organization with this slug already exists.", code="slug_taken")
    organization = Organization(id=uuid.uuid4(), name=request.name, slug=request.slug)
    session.add(organization)
    await session.flush()
    return organization


async def get_organization(session: AsyncSession, actor: Actor, organization_id: uuid.UUID) -> Organization:
    ensure_can_manage_organizations(actor)
    organization = await session.get(Organization, organization_id)
    if organization is None:
        raise NotFound("Organization not found.", code="organization_not_found")
    return organization


async def list_organizations(
    session: AsyncSession, actor: Actor, *, limit: int, cursor: str | None
) -> tuple[list[Organization], str | None]:
    ensure_can_manage_organizations(actor)
    return await paginate(session, select(Organization), Organization, limit=limit, cursor=cursor)


async def update_organization(
    session: AsyncSession, auth: AuthRuntime, actor: Actor, organization_id: uuid.UUID, request: OrganizationUpdate
) -> Organization:
    organization = await get_organization(session, actor, organization_id)
    suspending = request.active is False and organization.active
    _apply(organization, request.model_dump(exclude_unset=True, exclude_none=True))
    if suspending:
        # Suspension bites at once: every open session of the organization ends, and sign-in is refused.
        await identity_service.end_sessions_of_organization(
            session, auth, organization.id, reason="organization_suspended"
        )
    await session.flush()
    return organization


# --- facilities (organization administrators manage; staff read their own) --------------------------------


def facilities_worked_at(actor: Actor) -> Select[tuple[uuid.UUID]]:
    """The ids of the facilities a staff member works at, as a subquery for ``IN``."""
    return select(UserFacility.facility_id).where(UserFacility.user_id == actor.user_id)


async def works_at(session: AsyncSession, actor: Actor, facility_id: uuid.UUID) -> bool:
    """Whether a staff member is assigned to the facility (whatever their role lets them see beyond it)."""
    found = await session.scalar(facilities_worked_at(actor).where(UserFacility.facility_id == facility_id))
    return found is not None


def _visible_facilities(actor: Actor) -> Select[tuple[Facility]]:
    statement = scoped_select(Facility, actor)
    if not policy.sees_every_facility(actor):
        statement = statement.where(Facility.id.in_(facilities_worked_at(actor)))
    return statement


async def create_facility(session: AsyncSession, actor: Actor, request: FacilityCreate) -> Facility:
    assert actor.organization_id is not None  # the route's permission is only held by tenant staff
    if await session.scalar(
        scoped_select(Facility, actor).with_only_columns(Facility.id).where(Facility.code == request.code)
    ):
        raise Conflict("A facility with this code already exists.", code="facility_code_taken")
    facility = Facility(id=uuid.uuid4(), organization_id=actor.organization_id, **request.model_dump())
    session.add(facility)
    await session.flush()
    return facility


async def get_facility(session: AsyncSession, actor: Actor, facility_id: uuid.UUID) -> Facility:
    facility = await session.scalar(_visible_facilities(actor).where(Facility.id == facility_id))
    if facility is None:
        raise NotFound("Facility not found.", code="facility_not_found")
    return facility


async def list_facilities(
    session: AsyncSession, actor: Actor, *, limit: int, cursor: str | None
) -> tuple[list[Facility], str | None]:
    return await paginate(session, _visible_facilities(actor), Facility, limit=limit, cursor=cursor)


async def update_facility(
    session: AsyncSession, actor: Actor, facility_id: uuid.UUID, request: FacilityUpdate
) -> Facility:
    facility = await get_facility(session, actor, facility_id)
    changes = request.model_dump(exclude_unset=True, exclude_none=True)
    if "opening_hours" in request.model_fields_set:
        # Unlike the other fields, an explicit null means something here: the hours are no longer known.
        changes["opening_hours"] = request.model_dump(include={"opening_hours"})["opening_hours"]
    _apply(facility, changes)
    await session.flush()
    return facility


# --- opening hours -----------------------------------------------------------------------------------------


def is_open(opening_hours: Sequence[Mapping[str, Any]], timezone: str, instant_utc: datetime) -> bool:
    """Whether a facility with these weekly hours (the stored form of ``OpeningHours``) is open at an instant.

    The instant is read on the facility's own wall clock, which is how the hours are written: across a
    daylight-saving change "08:00" stays 08:00 local, one hour earlier or later in UTC. In the hour skipped in
    spring no instant falls, and the hour repeated in autumn is open (or closed) both times it happens."""
    if instant_utc.tzinfo is None:
        raise ValueError("instant_utc must carry a timezone")
    local = instant_utc.astimezone(ZoneInfo(timezone))
    # Whole minutes suffice: hours are given to the minute, and 19:59:59 is still before a 20:00 closing.
    minute = local.hour * 60 + local.minute
    weekday = local.weekday()
    return any(
        interval["weekday"] == weekday
        and clock_minutes(interval["opens"]) <= minute < clock_minutes(interval["closes"])
        for interval in opening_hours
    )


# --- departments -------------------------------------------------------------------------------------------


def _visible_departments(actor: Actor) -> Select[tuple[Department]]:
    return scoped_select(Department, actor).where(
        Department.facility_id.in_(_visible_facilities(actor).with_only_columns(Facility.id))
    )


async def create_department(session: AsyncSession, actor: Actor, request: DepartmentCreate) -> Department:
    facility = await get_facility(session, actor, request.facility_id)
    duplicate = await session.scalar(
        scoped_select(Department, actor)
        .with_only_columns(Department.id)
        .where(Department.facility_id == facility.id, Department.code == request.code)
    )
    if duplicate:
        raise Conflict("This facility already has a department with this code.", code="department_code_taken")
    department = Department(id=uuid.uuid4(), organization_id=facility.organization_id, **request.model_dump())
    session.add(department)
    await session.flush()
    return department


async def get_department(session: AsyncSession, actor: Actor, department_id: uuid.UUID) -> Department:
    department = await session.scalar(_visible_departments(actor).where(Department.id == department_id))
    if department is None:
        raise NotFound("Department not found.", code="department_not_found")
    return department


async def list_departments(
    session: AsyncSession, actor: Actor, *, facility_id: uuid.UUID | None, limit: int, cursor: str | None
) -> tuple[list[Department], str | None]:
    statement = _visible_departments(actor)
    if facility_id is not None:
        statement = statement.where(Department.facility_id == facility_id)
    return await paginate(session, statement, Department, limit=limit, cursor=cursor)


async def update_department(
    session: AsyncSession, actor: Actor, department_id: uuid.UUID, request: DepartmentUpdate
) -> Department:
    department = await get_department(session, actor, department_id)
    _apply(department, request.model_dump(exclude_unset=True, exclude_none=True))
    await session.flush()
    return department
