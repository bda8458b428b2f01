from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Form, Query, Request, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor
from sehat.core.http import api_router, get_session
from sehat.core.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page
from sehat.identity import service
from sehat.identity.deps import client_address, get_auth, require, require_self
from sehat.identity.permissions import ORGANIZATION_MANAGE, USER_MANAGE, USER_READ
from sehat.identity.runtime import AuthRuntime
from sehat.identity.schemas import (
    MeRead,
    MfaConfirm,
    MfaEnrollment,
    OrgAdminCreate,
    RefreshRequest,
    SignInForm,
    TokenPair,
    UserCreate,
    UserRead,
    UserUpdate,
)

router = api_router(prefix="/api/v1")

Session = Annotated[AsyncSession, Depends(get_session)]
Auth = Annotated[AuthRuntime, Depends(get_auth)]
Self = Annotated[Actor, Depends(require_self)]


@router.post("/auth/token", response_model=TokenPair, tags=["auth"])
async def sign_in(request: Request, form: Annotated[SignInForm, Form()], session: Session, auth: Auth) -> TokenPair:
    """Sign in with e-mail and password (and `otp` once a second factor is on)."""
    return await service.sign_in(session, auth, form, client_address(request))


@router.post("/auth/refresh", response_model=TokenPair, tags=["auth"])
async def refresh(body: RefreshRequest, session: Session, auth: Auth) -> TokenPair:
    """Exchange a refresh token for a new pair; the old refresh token is spent."""
    return await service.refresh(session, auth, body.refresh_token)


@router.post("/auth/logout", status_code=status.HTTP_204_NO_CONTENT, tags=["auth"])
async def logout(actor: Self, session: Session, auth: Auth) -> Response:
    """End this session now: its access and refresh tokens stop working."""
    await service.sign_out(session, auth, actor)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/auth/mfa/enroll", response_model=MfaEnrollment, tags=["auth"])
async def enroll_mfa(actor: Self, session: Session, auth: Auth) -> MfaEnrollment:
    """Start TOTP enrolment: add the returned secret to an authenticator app, then confirm with a code."""
    return await service.enroll_mfa(session, auth, actor)


@router.post("/auth/mfa/confirm", response_model=TokenPair, tags=["auth"])
async def confirm_mfa(body: MfaConfirm, actor: Self, session: Session, auth: Auth) -> TokenPair:
    """Turn the second factor on; returns a full session in place of the enrolment-only one."""
    return await service.confirm_mfa(session, auth, actor, body.otp)


@router.get("/me", response_model=MeRead, tags=["auth"])
async def me(actor: Self, session: Session) -> MeRead:
    return await service.read_me(session, actor)


@router.post("/users", response_model=UserRead, status_code=status.HTTP_201_CREATED, tags=["users"])
async def create_user(
    body: UserCreate, actor: Annotated[Actor, Depends(require(USER_MANAGE))], session: Session, auth: Auth
) -> UserRead:
    """Create a staff account in the caller's organization."""
    return await service.create_user(session, auth, actor, body)


@router.get("/users", response_model=Page[UserRead], tags=["users"])
async def list_users(
    actor: Annotated[Actor, Depends(require(USER_READ))],
    session: Session,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[UserRead]:
    items, next_cursor = await service.list_users(session, actor, limit=limit, cursor=cursor)
    return Page[UserRead](items=items, next_cursor=next_cursor)


@router.get("/users/{user_id}", response_model=UserRead, tags=["users"])
async def get_user(
    user_id: uuid.UUID, actor: Annotated[Actor, Depends(require(USER_READ))], session: Session
) -> UserRead:
    return await service.get_user(session, actor, user_id)


@router.patch("/users/{user_id}", response_model=UserRead, tags=["users"])
async def update_user(
    user_id: uuid.UUID,
    body: UserUpdate,
    actor: Annotated[Actor, Depends(require(USER_MANAGE))],
    session: Session,
    auth: Auth,
) -> UserRead:
    """Change name, roles, facilities or active state; disabling or re-roling ends the user's sessions."""
    return await service.update_user(session, auth, actor, user_id, body)


@router.post(
    "/organizations/{organization_id}/admins",
    response_model=UserRead,
    status_code=status.HTTP_201_CREATED,
    tags=["organizations"],
)
async def create_org_admin(
    organization_id: uuid.UUID,
    body: OrgAdminCreate,
    actor: Annotated[Actor, Depends(require(ORGANIZATION_MANAGE))],
    session: Session,
    auth: Auth,
) -> UserRead:
    """Create an organization administrator (platform administrators only)."""
    return await service.create_org_admin(session, auth, actor, organization_id, body)
