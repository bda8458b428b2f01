"""Patient accounts: staff invite a patient to open one (a one-time link), or a patient signs up on their own
and front office matches the sign-up to their record. Only the unit of work commits.

Accepting an invitation and signing up are public: nobody is signed in yet. Both are throttled by client
address with the sign-in throttle, and neither ever looks across organizations for a patient: an invitation
token names its organization (``<organization id hex>.<secret>``), a sign-up names it by slug, and the work
then runs in that organization's scope, as row-level security expects.

The account itself carries no name (see ``identity.service.create_patient_account``); what a person typed when
signing up is sealed under the key ring until front office has matched it, since there is no record and so
no data key yet.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any, NoReturn

import orjson
import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor
from sehat.core.audit import AuditEntry, AuditLog, Outcome
from sehat.core.blind_index import IndexKind
from sehat.core.clock import utcnow
from sehat.core.crypto import DecryptionError, associated_data
from sehat.core.errors import Conflict, Forbidden, InternalError, InvalidInput, NotFound, TooManyRequests
from sehat.core.pagination import paginate
from sehat.core.scoping import scoped_select
from sehat.core.tenant_scope import enter_organization, enter_platform_scope
from sehat.identity import service as identity_service
from sehat.identity.models import User
from sehat.identity.permissions import PATIENT_INVITE
from sehat.identity.runtime import AuthRuntime
from sehat.patients import service as patient_service
from sehat.patients.account_schemas import (
    InvitationAccept,
    MatchedOn,
    RegistrationCandidate,
    RegistrationCreate,
    RegistrationMatch,
    RegistrationRead,
    RegistrationStatus,
)
from sehat.patients.models import Patient, PatientInvitation, PatientRegistration, PatientStatus
from sehat.patients.vault import PatientVault
from sehat.tenancy.models import Organization

log = structlog.get_logger(__name__)

PATIENT_INVITE_ACTION = "patient.invite"
ACCOUNT_OPEN = "patient.account.open"
REGISTRATION_CREATE = "patient.registration.create"
REGISTRATION_LIST = "patient.registration.list"
REGISTRATION_MATCH = "patient.registration.match"
REGISTRATION_REJECT = "patient.registration.reject"
# How a suggested record is recorded as read in the audit log (``patient.read`` with ``via``).
REVIEW_VIA = "registration_review"

# The invitation link's path in the patient portal; the token follows in the fragment.
INVITATION_PATH = "/portal/invitation"
_TOKEN_PATTERN = re.compile(r"^([0-9a-f]{32})\.[A-Za-z0-9_-]{43}$")
_INVALID_INVITATION = (
    "This invitation link is not valid (it may have expired or been used); ask the clinic for a new one."
)
# Separate throttle keys per purpose and address; the address-wide budget is shared with sign-in failures.
_INVITATION_ATTEMPTS = "patient-invitation"
_REGISTRATION_ATTEMPTS = "patient-registration"
_MATCHED_ON: dict[IndexKind, MatchedOn] = {IndexKind.PHONE: "phone", IndexKind.NAME_DOB: "name_and_birth_date"}


@dataclass
class IssuedInvitation:
    invitation: PatientInvitation
    token: str
    url: str


@dataclass
class RegistrationCandidateView:
    candidate: patient_service.Candidate
    matched_on: list[MatchedOn]
    has_account: bool


@dataclass
class RegistrationView:
    registration: PatientRegistration
    email: str
    details: dict[str, Any]
    candidates: list[RegistrationCandidateView] = field(default_factory=list)


# --- shared ------------------------------------------------------------------------------------------------


def _ensure_can_invite(actor: Actor) -> None:
    # Checked again here, not only by the route: a service may be called from elsewhere (a job, the CLI).
    if actor.organization_id is None or not actor.has(PATIENT_INVITE):
        raise Forbidden("Your role may not manage patient accounts.", code="permission_denied")


def _field_error(name: str, message: str, *, code: str = "invalid_input", keep_changes: bool = False) -> InvalidInput:
    return InvalidInput(
        "The request has invalid fields.",
        code=code,
        extra={"errors": [{"field": name, "message": message, "type": "value_error"}]},
        keep_changes=keep_changes,
    )


async def _ensure_no_account(session: AsyncSession, organization_id: uuid.UUID, patient_id: uuid.UUID) -> None:
    # By organization id rather than through an actor: accepting an invitation has none. Row-level security
    # holds the query to the same organization on PostgreSQL.
    linked = await session.scalar(
        select(User.id).where(User.organization_id == organization_id, User.patient_id == patient_id)
    )
    if linked is not None:
        raise Conflict("This patient already has an online account.", code="patient_has_account")


async def _expire_open_invitations(session: AsyncSession, organization_id: uuid.UUID, patient_id: uuid.UUID) -> int:
    now = utcnow()
    result = await session.execute(
        update(PatientInvitation)
        .where(
            PatientInvitation.organization_id == organization_id,
            PatientInvitation.patient_id == patient_id,
            PatientInvitation.accepted_at.is_(None),
            PatientInvitation.expires_at > now,
        )
        .values(expires_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


async def _check_throttle(auth: AuthRuntime, purpose: str, client_address: str) -> None:
    try:
        await auth.throttle.check(f"{purpose}|{client_address}", client_address)
    except TooManyRequests as refusal:
        raise TooManyRequests(
            "Too many attempts from your address; wait before trying again.",
            code="too_many_attempts",
            retry_after=int(refusal.headers.get("Retry-After", "1")),
        ) from None


async def _count_attempt(auth: AuthRuntime, purpose: str, client_address: str) -> None:
    await auth.throttle.record_failure(f"{purpose}|{client_address}", client_address)


# --- invitations -------------------------------------------------------------------------------------------


def _token_hash(token: str) -> bytes:
    # SHA-256 suffices: the secret is 256 random bits, not a password anyone could guess.
    return hashlib.sha256(token.encode()).digest()


def _token_organization(token: str) -> uuid.UUID | None:
    match = _TOKEN_PATTERN.match(token)
    return uuid.UUID(hex=match.group(1)) if match else None


async def invite_patient(
    session: AsyncSession,
    audit_log: AuditLog,
    actor: Actor,
    patient_id: uuid.UUID,
    *,
    valid_for: timedelta,
    link_base: str,
) -> IssuedInvitation:
    """A one-time link for a patient to open their account; it supersedes any earlier link not used yet."""
    _ensure_can_invite(actor)
    organization_id = actor.organization_id
    assert organization_id is not None
    patient = await patient_service.load_for_account(session, actor, patient_id)
    await _ensure_no_account(session, organization_id, patient.id)
    superseded = await _expire_open_invitations(session, organization_id, patient.id)
    token = f"{organization_id.hex}.{secrets.token_urlsafe(32)}"
    now = utcnow()
    invitation = PatientInvitation(
        id=uuid.uuid4(),
        organization_id=organization_id,
        patient_id=patient.id,
        token_hash=_token_hash(token),
        created_by_id=actor.user_id,
        created_at=now,
        expires_at=now + valid_for,
    )
    session.add(invitation)
    audit_log.record(
        session,
        actor,
        AuditEntry(
            action=PATIENT_INVITE_ACTION,
            outcome=Outcome.success,
            resource_type="patient_invitation",
            resource_id=str(invitation.id),
            patient_id=patient.id,
            details={"facility_id": str(patient.registering_facility_id), "superseded": superseded},
        ),
    )
    await session.flush()
    return IssuedInvitation(invitation, token, f"{link_base.rstrip('/')}{INVITATION_PATH}#token={token}")


async def _refuse_invitation(
    session: AsyncSession, auth: AuthRuntime, invitation: PatientInvitation | None, client_address: str
) -> NoReturn:
    """Unknown, malformed, expired, superseded and used tokens get one answer, and each counts against the
    address. The attempt is audited (kept although the request fails), under the patient when the token was
    theirs, so they and the clinic see that an old link was tried."""
    await _count_attempt(auth, _INVITATION_ATTEMPTS, client_address)
    if invitation is None:
        # An entry of no organization: only the platform scope may read it back, as INSERT ... RETURNING does.
        await enter_platform_scope(session)
    auth.audit.record(
        session,
        None,
        AuditEntry(
            action=ACCOUNT_OPEN,
            outcome=Outcome.failure,
            resource_type="patient_invitation" if invitation else None,
            resource_id=str(invitation.id) if invitation else None,
            patient_id=invitation.patient_id if invitation else None,
            details={"reason": "invalid_invitation"},
        ),
        organization_id=invitation.organization_id if invitation else None,
        client_address=client_address,
    )
    raise _field_error("token", _INVALID_INVITATION, code="invalid_invitation", keep_changes=True)


async def accept_invitation(
    session: AsyncSession, auth: AuthRuntime, request: InvitationAccept, client_address: str
) -> User:
    """Open the invited patient's account, linked to their record. The patient then signs in as usual."""
    await _check_throttle(auth, _INVITATION_ATTEMPTS, client_address)
    organization_id = _token_organization(request.token)
    if organization_id is None:
        await _refuse_invitation(session, auth, None, client_address)
    # The token names its organization, so the lookup never crosses the tenant wall.
    await enter_organization(session, organization_id)
    found = (
        await session.execute(
            select(PatientInvitation, Patient.status)
            .join(Patient, Patient.id == PatientInvitation.patient_id)
            .join(Organization, Organization.id == PatientInvitation.organization_id)
            .where(
                PatientInvitation.organization_id == organization_id,
                PatientInvitation.token_hash == _token_hash(request.token),
                Organization.active,
            )
        )
    ).first()
    now = utcnow()
    if found is None:
        await _refuse_invitation(session, auth, None, client_address)
    invitation, patient_status = found
    if invitation.accepted_at is not None or invitation.expires_at <= now or patient_status != PatientStatus.active:
        await _refuse_invitation(session, auth, invitation, client_address)
    await _ensure_no_account(session, organization_id, invitation.patient_id)
    user = await identity_service.create_patient_account(
        session, auth, organization_id, request.email, request.password, patient_id=invitation.patient_id
    )
    # Conditional: of two requests racing with one token, exactly one spends it (the other rolls back).
    spent = await session.execute(
        update(PatientInvitation)
        .where(
            PatientInvitation.id == invitation.id,
            PatientInvitation.accepted_at.is_(None),
            PatientInvitation.expires_at > now,
        )
        .values(accepted_at=now, user_id=user.id)
        .execution_options(synchronize_session=False)
    )
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        raise _field_error("token", _INVALID_INVITATION, code="invalid_invitation")
    auth.audit.record(
        session,
        None,
        AuditEntry(
            action=ACCOUNT_OPEN,
            outcome=Outcome.success,
            resource_type="user",
            resource_id=str(user.id),
            patient_id=invitation.patient_id,
            details={"invitation_id": str(invitation.id)},
        ),
        organization_id=organization_id,
        client_address=client_address,
        user_id=user.id,
        roles=user.roles,
    )
    log.info("patient_account_opened", user_id=str(user.id))
    return user


# --- self-registration -------------------------------------------------------------------------------------


def _details_place(registration_id: uuid.UUID, organization_id: uuid.UUID) -> bytes:
    return associated_data("patient_registrations", "details_sealed", registration_id, organization_id)


async def register_self(
    session: AsyncSession, auth: AuthRuntime, vault: PatientVault, request: RegistrationCreate, client_address: str
) -> PatientRegistration:
    """An account not linked to any record yet, and a pending registration holding what the person typed."""
    await _check_throttle(auth, _REGISTRATION_ATTEMPTS, client_address)
    phone = patient_service.normalize_contact(vault, {"phone": request.phone})["phone"]
    # Every attempt from here counts, successful or not: each creates an account or tells whether an e-mail
    # address is taken, and neither may be done in bulk.
    await _count_attempt(auth, _REGISTRATION_ATTEMPTS, client_address)
    # The organization is known by its slug only: found in the platform scope, then worked in as its own.
    await enter_platform_scope(session)
    organization_id = await session.scalar(
        select(Organization.id).where(Organization.slug == request.organization, Organization.active)
    )
    if organization_id is None:
        raise _field_error("organization", "no organization by this name takes registrations")
    await enter_organization(session, organization_id)
    user = await identity_service.create_patient_account(
        session, auth, organization_id, request.email, request.password, patient_id=None
    )
    details = {
        "given_name": request.given_name,
        "family_name": request.family_name,
        "birth_date": request.birth_date.isoformat(),
        "phone": phone,
    }
    registration_id = uuid.uuid4()
    registration = PatientRegistration(
        id=registration_id,
        organization_id=organization_id,
        user_id=user.id,
        details_sealed=vault.key_ring.seal(orjson.dumps(details), _details_place(registration_id, organization_id)),
        status=RegistrationStatus.pending.value,
        created_at=utcnow(),
    )
    session.add(registration)
    auth.audit.record(
        session,
        None,
        AuditEntry(
            action=REGISTRATION_CREATE,
            outcome=Outcome.success,
            resource_type="patient_registration",
            resource_id=str(registration_id),
        ),
        organization_id=organization_id,
        client_address=client_address,
        user_id=user.id,
        roles=user.roles,
    )
    await session.flush()
    return registration


def _open_details(vault: PatientVault, registration: PatientRegistration) -> dict[str, Any]:
    try:
        raw = vault.key_ring.open(
            registration.details_sealed, _details_place(registration.id, registration.organization_id)
        )
    except DecryptionError:
        # Never garbage, never a partial list: the whole read fails, and the log names the row.
        log.error("registration_details_unreadable", registration_id=str(registration.id))
        raise InternalError("Something went wrong on our side; it has been logged.") from None
    details: dict[str, Any] = orjson.loads(raw)
    details["birth_date"] = date.fromisoformat(details["birth_date"])
    return details


async def list_pending_registrations(
    session: AsyncSession,
    vault: PatientVault,
    audit_log: AuditLog,
    actor: Actor,
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[RegistrationView], str | None]:
    """Sign-ups waiting for front office, oldest first, each with the records its phone number, or its name
    and birth date, match exactly (found through the blind indexes; each suggested record read is audited)."""
    _ensure_can_invite(actor)
    statement = scoped_select(PatientRegistration, actor).where(
        PatientRegistration.status == RegistrationStatus.pending.value
    )
    registrations, next_cursor = await paginate(session, statement, PatientRegistration, limit=limit, cursor=cursor)
    audit_log.record(
        session,
        actor,
        AuditEntry(
            action=REGISTRATION_LIST,
            outcome=Outcome.success,
            resource_type="patient_registration",
            details={"count": len(registrations), "continued": cursor is not None},
        ),
    )
    if not registrations:
        return [], next_cursor
    emails = dict(
        (
            await session.execute(
                scoped_select(User, actor)
                .with_only_columns(User.id, User.email)
                .where(User.id.in_([registration.user_id for registration in registrations]))
            )
        ).all()
    )
    views = [
        RegistrationView(registration, emails[registration.user_id], _open_details(vault, registration))
        for registration in registrations
    ]
    found = await patient_service.find_candidates(
        session, vault, audit_log, actor, [view.details for view in views], via=REVIEW_VIA
    )
    candidate_ids = {candidate.view.patient.id for candidates in found for candidate in candidates}
    with_account: set[uuid.UUID] = set()
    if candidate_ids:
        with_account = set(
            (
                await session.scalars(
                    scoped_select(User, actor)
                    .with_only_columns(User.patient_id)
                    .where(User.patient_id.in_(candidate_ids))
                )
            ).all()
        )
    for view, candidates in zip(views, found, strict=True):
        view.candidates = [
            RegistrationCandidateView(
                candidate,
                [_MATCHED_ON[kind] for kind in candidate.matched_on],
                candidate.view.patient.id in with_account,
            )
            for candidate in candidates
        ]
    return views, next_cursor


def present_registration(view: RegistrationView) -> RegistrationRead:
    return RegistrationRead(
        id=view.registration.id,
        status=RegistrationStatus(view.registration.status),
        created_at=view.registration.created_at,
        email=view.email,
        **view.details,
        candidates=[
            RegistrationCandidate(
                patient=patient_service.summarize(found.candidate.view),
                matched_on=found.matched_on,
                has_account=found.has_account,
            )
            for found in view.candidates
        ],
    )


async def _load_registration(session: AsyncSession, actor: Actor, registration_id: uuid.UUID) -> PatientRegistration:
    registration = await session.scalar(
        scoped_select(PatientRegistration, actor).where(PatientRegistration.id == registration_id)
    )
    if registration is None:
        raise NotFound("Registration not found.", code="registration_not_found")
    if registration.status != RegistrationStatus.pending:
        raise Conflict("This registration was already decided.", code="registration_decided")
    return registration


async def _decide(
    session: AsyncSession, actor: Actor, registration: PatientRegistration, status: RegistrationStatus, **values: Any
) -> None:
    # Conditional: of two desks deciding one registration at once, exactly one does.
    decided = await session.execute(
        update(PatientRegistration)
        .where(
            PatientRegistration.id == registration.id,
            PatientRegistration.organization_id == registration.organization_id,
            PatientRegistration.status == RegistrationStatus.pending.value,
        )
        .values(status=status.value, decided_at=utcnow(), decided_by_id=actor.user_id, **values)
    )
    if decided.rowcount != 1:  # type: ignore[attr-defined]
        raise Conflict("This registration was already decided.", code="registration_decided")


async def match_registration(
    session: AsyncSession, audit_log: AuditLog, actor: Actor, registration_id: uuid.UUID, request: RegistrationMatch
) -> PatientRegistration:
    """Link the account of a sign-up to the patient's record; open invitations for that patient lapse."""
    _ensure_can_invite(actor)
    registration = await _load_registration(session, actor, registration_id)
    try:
        patient = await patient_service.load_for_account(session, actor, request.patient_id)
    except NotFound:
        raise _field_error("patient_id", "no patient with this id") from None
    await _ensure_no_account(session, registration.organization_id, patient.id)
    await _decide(session, actor, registration, RegistrationStatus.matched, matched_patient_id=patient.id)
    # The unique (organization, patient) index on users settles a race with another link to the same record.
    await session.execute(
        update(User)
        .where(User.organization_id == registration.organization_id, User.id == registration.user_id)
        .values(patient_id=patient.id)
        .execution_options(synchronize_session=False)
    )
    superseded = await _expire_open_invitations(session, registration.organization_id, patient.id)
    audit_log.record(
        session,
        actor,
        AuditEntry(
            action=REGISTRATION_MATCH,
            outcome=Outcome.success,
            resource_type="patient_registration",
            resource_id=str(registration.id),
            patient_id=patient.id,
            details={
                "facility_id": str(patient.registering_facility_id),
                "user_id": str(registration.user_id),
                "invitations_superseded": superseded,
            },
        ),
    )
    await session.flush()
    return registration


async def reject_registration(
    session: AsyncSession, audit_log: AuditLog, actor: Actor, registration_id: uuid.UUID
) -> PatientRegistration:
    """Turn a sign-up down (no record matches, or it is not genuine): its account is disabled, so no unlinked
    account with working credentials lingers."""
    _ensure_can_invite(actor)
    registration = await _load_registration(session, actor, registration_id)
    await _decide(session, actor, registration, RegistrationStatus.rejected)
    await session.execute(
        update(User)
        .where(User.organization_id == registration.organization_id, User.id == registration.user_id)
        .values(active=False)
        .execution_options(synchronize_session=False)
    )
    audit_log.record(
        session,
        actor,
        AuditEntry(
            action=REGISTRATION_REJECT,
            outcome=Outcome.success,
            resource_type="patient_registration",
            resource_id=str(registration.id),
            details={"user_id": str(registration.user_id)},
        ),
    )
    await session.flush()
    return registration
