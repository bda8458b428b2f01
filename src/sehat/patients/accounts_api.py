"""Patient account routes: staff invite and review sign-ups; accepting an invitation and signing up are public
(listed in ``sehat.app.PUBLIC_ROUTES``)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Query, Request, status
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor
from sehat.core.audit import AuditLog
from sehat.core.http import api_router, get_audit_log, get_session
from sehat.core.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page
from sehat.identity.deps import client_address, get_auth, require
from sehat.identity.permissions import PATIENT_INVITE
from sehat.identity.runtime import AuthRuntime
from sehat.patients import accounts
from sehat.patients.account_schemas import (
    InvitationAccept,
    InvitationRead,
    PatientAccountRead,
    RegistrationAccepted,
    RegistrationCreate,
    RegistrationDecisionRead,
    RegistrationMatch,
    RegistrationRead,
    RegistrationStatus,
)
from sehat.patients.api import get_vault
from sehat.patients.vault import PatientVault

router = api_router(prefix="/api/v1", tags=["patient accounts"])

Session = Annotated[AsyncSession, Depends(get_session)]
Auth = Annotated[AuthRuntime, Depends(get_auth)]
Vault = Annotated[PatientVault, Depends(get_vault)]
Audit = Annotated[AuditLog, Depends(get_audit_log)]
Inviter = Annotated[Actor, Depends(require(PATIENT_INVITE))]


@router.post("/patients/{patient_id}/invitations", response_model=InvitationRead, status_code=status.HTTP_201_CREATED)
async def invite_patient(
    request: Request, patient_id: uuid.UUID, actor: Inviter, session: Session, audit: Audit
) -> InvitationRead:
    """A one-time link for the patient to open their account, valid `SEHAT_PATIENT_INVITATION_HOURS`. The token
    is shown only now; a new invitation makes earlier unused ones stop working. 409 if the patient has an
    account already."""
    settings = request.app.state.settings
    issued = await accounts.invite_patient(
        session,
        audit,
        actor,
        patient_id,
        valid_for=timedelta(hours=settings.patient_invitation_hours),
        link_base=settings.public_base_url,
    )
    return InvitationRead(
        id=issued.invitation.id, expires_at=issued.invitation.expires_at, token=issued.token, url=issued.url
    )


@router.post("/patient-accounts", response_model=PatientAccountRead, status_code=status.HTTP_201_CREATED)
async def accept_invitation(
    request: Request, body: InvitationAccept, session: Session, auth: Auth
) -> PatientAccountRead:
    """Open your account with the invitation the clinic gave you, choosing your e-mail address and password;
    then sign in at `/api/v1/auth/token`. A token that is unknown, expired or used gets 422 `invalid_invitation`."""
    user = await accounts.accept_invitation(session, auth, body, client_address(request))
    return PatientAccountRead(user_id=user.id, email=user.email)


@router.post("/patient-registrations", response_model=RegistrationAccepted, status_code=status.HTTP_202_ACCEPTED)
async def register_self(
    request: Request, body: RegistrationCreate, session: Session, auth: Auth, vault: Vault
) -> RegistrationAccepted:
    """Sign up with a clinic (its `organization` slug). You can sign in at once; your record becomes visible
    once the front desk has matched you to it."""
    registration = await accounts.register_self(session, auth, vault, body, client_address(request))
    return RegistrationAccepted(id=registration.id, status=RegistrationStatus.pending)


@router.get("/patient-registrations/pending", response_model=Page[RegistrationRead])
async def list_pending_registrations(
    actor: Inviter,
    session: Session,
    vault: Vault,
    audit: Audit,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = DEFAULT_PAGE_SIZE,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> Page[RegistrationRead]:
    """Sign-ups waiting to be matched, oldest first, with the records whose phone number, or name and birth
    date, match exactly."""
    views, next_cursor = await accounts.list_pending_registrations(
        session, vault, audit, actor, limit=limit, cursor=cursor
    )
    return Page[RegistrationRead](
        items=[accounts.present_registration(view) for view in views], next_cursor=next_cursor
    )


@router.post("/patient-registrations/{registration_id}/match", response_model=RegistrationDecisionRead)
async def match_registration(
    registration_id: uuid.UUID, body: RegistrationMatch, actor: Inviter, session: Session, audit: Audit
) -> RegistrationDecisionRead:
    """Link the sign-up's account to this patient's record. 409 if the record already has an account or the
    registration was decided."""
    registration = await accounts.match_registration(session, audit, actor, registration_id, body)
    return RegistrationDecisionRead.model_validate(registration)


@router.post("/patient-registrations/{registration_id}/reject", response_model=RegistrationDecisionRead)
async def reject_registration(
    registration_id: uuid.UUID, actor: Inviter, session: Session, audit: Audit
) -> RegistrationDecisionRead:
    """Turn the sign-up down; its account is disabled."""
    registration = await accounts.reject_registration(session, audit, actor, registration_id)
    return RegistrationDecisionRead.model_validate(registration)
