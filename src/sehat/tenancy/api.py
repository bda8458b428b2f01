from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Query, status
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor
from sehat.core.http import api_router, get_session
from sehat.core.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page
from sehat.identity.deps import get_auth, require
from sehat.identity.permissions import FACILITY_MANAGE, FACILITY_READ, ORGANIZATION_MANAGE
from sehat.identity.runtime import AuthRuntime
from sehat.tenancy import service
from sehat.tenancy.schemas import (
    DepartmentCreate,
    DepartmentRead,
    DepartmentUpdate,
    FacilityCreate,
    FacilityRead,
    FacilityUpdate,
    OrganizationCreate,
    OrganizationRead,
    OrganizationUpdate,
)

router = api_router(prefix="/api/v1")

Session = Annotated[AsyncSession, Depends(get_session)]
Auth = Annotated[AuthRuntime, Depends(get_auth)]
PlatformAdmin = Annotated[Actor, Depends(require(ORGANIZATION_MANAGE))]
Manager = Annotated[Actor, Depends(require(FACILITY_MANAGE))]
Reader = Annotated[Actor, Depends(require(FACILITY_READ))]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]
Cursor = Annotated[str | None, Query(max_length=512)]


@router.post(
    "/organizations", response_model=OrganizationRead, status_code=status.HTTP_201_CREATED, tags=["organizations"]
)
async def create_organization(body: OrganizationCreate, actor: PlatformAdmin, session: Session) -> OrganizationRead:
    return OrganizationRead.model_validate(await service.create_organization(session, actor, body))


@router.get("/organizations", response_model=Page[OrganizationRead], tags=["organizations"])
async def list_organizations(
    actor: PlatformAdmin, session: Session, limit: Limit = DEFAULT_PAGE_SIZE, cursor: Cursor = None
) -> Page[OrganizationRead]:
    rows, next_cursor = await service.list_organizations(session, actor, limit=limit, cursor=cursor)
    return Page[OrganizationRead](items=[OrganizationRead.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/organizations/{organization_id}", response_model=OrganizationRead, tags=["organizations"])
async def get_organization(organization_id: uuid.UUID, actor: PlatformAdmin, session: Session) -> OrganizationRead:
    return OrganizationRead.model_validate(await service.get_organization(session, actor, organization_id))


@router.patch("/organizations/{organization_id}", response_model=OrganizationRead, tags=["organizations"])
async def update_organization(
    organization_id: uuid.UUID, body: OrganizationUpdate, actor: PlatformAdmin, session: Session, auth: Auth
) -> OrganizationRead:
    """Rename, or suspend (`active: false`): a suspended organization's sessions end and sign-in is refused."""
    organization = await service.update_organization(session, auth, actor, organization_id, body)
    return OrganizationRead.model_validate(organization)


@router.post("/facilities", response_model=FacilityRead, status_code=status.HTTP_201_CREATED, tags=["facilities"])
async def create_facility(body: FacilityCreate, actor: Manager, session: Session) -> FacilityRead:
    return FacilityRead.model_validate(await service.create_facility(session, actor, body))


@router.get("/facilities", response_model=Page[FacilityRead], tags=["facilities"])
async def list_facilities(
    actor: Reader, session: Session, limit: Limit = DEFAULT_PAGE_SIZE, cursor: Cursor = None
) -> Page[FacilityRead]:
    rows, next_cursor = await service.list_facilities(session, actor, limit=limit, cursor=cursor)
    return Page[FacilityRead](items=[FacilityRead.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/facilities/{facility_id}", response_model=FacilityRead, tags=["facilities"])
async def get_facility(facility_id: uuid.UUID, actor: Reader, session: Session) -> FacilityRead:
    return FacilityRead.model_validate(await service.get_facility(session, actor, facility_id))


@router.patch("/facilities/{facility_id}", response_model=FacilityRead, tags=["facilities"])
async def update_facility(
    facility_id: uuid.UUID, body: FacilityUpdate, actor: Manager, session: Session
) -> FacilityRead:
    return FacilityRead.model_validate(await service.update_facility(session, actor, facility_id, body))


@router.post("/departments", response_model=DepartmentRead, status_code=status.HTTP_201_CREATED, tags=["departments"])
async def create_department(body: DepartmentCreate, actor: Manager, session: Session) -> DepartmentRead:
    return DepartmentRead.model_validate(await service.create_department(session, actor, body))


@router.get("/departments", response_model=Page[DepartmentRead], tags=["departments"])
async def list_departments(
    actor: Reader,
    session: Session,
    facility_id: uuid.UUID | None = None,
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> Page[DepartmentRead]:
    rows, next_cursor = await service.list_departments(
        session, actor, facility_id=facility_id, limit=limit, cursor=cursor
    )
    return Page[DepartmentRead](items=[DepartmentRead.model_validate(r) for r in rows], next_cursor=next_cursor)


@router.get("/departments/{department_id}", response_model=DepartmentRead, tags=["departments"])
async def get_department(department_id: uuid.UUID, actor: Reader, session: Session) -> DepartmentRead:
    return DepartmentRead.model_validate(await service.get_department(session, actor, department_id))


@router.patch("/departments/{department_id}", response_model=DepartmentRead, tags=["departments"])
async def update_department(
    department_id: uuid.UUID, body: DepartmentUpdate, actor: Manager, session: Session
) -> DepartmentRead:
    return DepartmentRead.model_validate(await service.update_department(session, actor, department_id, body))
