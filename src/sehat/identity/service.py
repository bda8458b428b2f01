"""Sign-in, sessions, second factor and staff accounts. Services never commit: the unit of work does."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import timedelta

import structlog
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor, Audience, Role, SystemActor, TokenScope
from sehat.core.audit import AuditEntry, Outcome
from sehat.core.clock import utcnow
from sehat.core.crypto import associated_data
from sehat.core.errors import Conflict, InvalidInput, NotFound, Problem, Unauthenticated
from sehat.core.pagination import paginate
from sehat.core.scoping import scoped_select
from sehat.core.tenant_scope import enter_platform_scope
from sehat.identity import mfa, policy, repository
from sehat.identity.models import AuthSession, RefreshToken, User, UserFacility
from sehat.identity.runtime import AuthRuntime
from sehat.identity.schemas import (
    MeRead,
    MfaEnrollment,
    OrgAdminCreate,
    SignInForm,
    TokenPair,
    UserCreate,
    UserRead,
    UserUpdate,
)
from sehat.tenancy.models import Facility, Organization

log = structlog.get_logger(__name__)

_BAD_CREDENTIALS = "Invalid username or password."


def normalize_email(value: str) -> str:
    return value.strip().lower()


def _hash_refresh_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _mfa_context(user_id: uuid.UUID) -> bytes:
    return associated_data("users", "mfa_secret_sealed", user_id)


def _audience_for(roles: Iterable[str]) -> Audience:
    return Audience.patient if Role.patient.value in roles else Audience.staff


# --- sign-in and sessions ---------------------------------------------------------------------------------


@dataclass
class _SignInAttempt:
    """What is known about a sign-in attempt so far, for its audit entry."""

    account: str
    user: User | None = None


async def sign_in(session: AsyncSession, auth: AuthRuntime, form: SignInForm, client_address: str) -> TokenPair:
    """Every attempt is audited: success in the new session's transaction, a refusal in its own (kept even
    though the request fails). The typed e-mail is recorded only as a keyed pseudonym."""
    email = normalize_email(form.username)
    attempt = _SignInAttempt(account=auth.audit.pseudonym(email))
    # Whose account this is, and so which organization, is what sign-in finds out.
    await enter_platform_scope(session)
    try:
        return await _sign_in(session, auth, form, email, client_address, attempt)
    except Problem as refusal:
        user = attempt.user
        auth.audit.record(
            session,
            None,
            AuditEntry(
                action="auth.sign_in",
                outcome=Outcome.denied if refusal.status == 429 else Outcome.failure,
                resource_type="user" if user else None,
                resource_id=str(user.id) if user else None,
                details={"reason": refusal.code, "account": attempt.account},
            ),
            organization_id=user.organization_id if user else None,
            client_address=client_address,
        )
        refusal.keep_changes = True
        raise


async def _sign_in(
    session: AsyncSession, auth: AuthRuntime, form: SignInForm, email: str, client_address: str, attempt: _SignInAttempt
) -> TokenPair:
    await auth.throttle.check(email, client_address)
    user = await session.scalar(select(User).where(User.email == email))
    attempt.user = user
    # The password is checked (against a decoy hash for unknown accounts) before anything else is decided,
    # so every failure below costs the same time and returns the same answer.
    password_ok = await auth.passwords.verify(user.password_hash if user else None, form.password)
    if user is None or not user.active or not password_ok:
        await auth.throttle.record_failure(email, client_address)
        raise Unauthenticated(_BAD_CREDENTIALS, code="invalid_credentials")
    if user.organization_id is not None and not await session.scalar(
        select(Organization.active).where(Organization.id == user.organization_id)
    ):
        # A suspended organization's people get the same answer as a wrong password: nothing to probe.
        raise Unauthenticated(_BAD_CREDENTIALS, code="invalid_credentials")

    if user.mfa_enabled:
        if not form.otp:
            raise Unauthenticated("This account needs a one-time code (otp).", code="otp_required")
        if not await _consume_one_time_code(session, auth, user, form.otp):
            await auth.throttle.record_failure(email, client_address)
            raise Unauthenticated("The one-time code is not valid or was already used.", code="invalid_otp")

    if auth.passwords.needs_rehash(user.password_hash):
        user.password_hash = await auth.passwords.hash_async(form.password)
        user.password_changed_at = utcnow()
    user.last_login_at = utcnow()
    audience = _audience_for(user.roles)
    enrolment_only = audience is Audience.staff and auth.settings.staff_mfa_required and not user.mfa_enabled
    scope = TokenScope.mfa_enrollment if enrolment_only else TokenScope.full
    log.info("sign_in_succeeded", user_id=str(user.id), scope=scope.value)
    auth.audit.record(
        session,
        None,
        AuditEntry(
            action="auth.sign_in",
            outcome=Outcome.success,
            resource_type="user",
            resource_id=str(user.id),
            details={"scope": scope.value, "account": attempt.account},
        ),
        organization_id=user.organization_id,
        client_address=client_address,
        user_id=user.id,
        roles=user.roles,
    )
    return await _open_session(session, auth, user, scope)


async def _open_session(session: AsyncSession, auth: AuthRuntime, user: User, scope: TokenScope) -> TokenPair:
    now = utcnow()
    auth_session = AuthSession(
        id=uuid.uuid4(),
        user_id=user.id,
        organization_id=user.organization_id,
        audience=_audience_for(user.roles).value,
        scope=scope.value,
        created_at=now,
        expires_at=now + timedelta(seconds=auth.settings.session_absolute_timeout_seconds),
    )
    session.add(auth_session)
    return await _issue_pair(session, auth, user, auth_session)


async def _issue_pair(session: AsyncSession, auth: AuthRuntime, user: User, auth_session: AuthSession) -> TokenPair:
    now = utcnow()
    refresh_plain = secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            session_id=auth_session.id,
            token_hash=_hash_refresh_token(refresh_plain),
            created_at=now,
            expires_at=min(
                now + timedelta(seconds=auth.settings.refresh_idle_timeout_seconds), auth_session.expires_at
            ),
        )
    )
    access = auth.tokens.issue(
        user_id=user.id,
        organization_id=user.organization_id,
        roles=list(user.roles),
        audience=Audience(auth_session.audience),
        session_id=auth_session.id,
        scope=TokenScope(auth_session.scope),
        not_after=auth_session.expires_at,
    )
    return TokenPair(
        access_token=access.token,
        refresh_token=refresh_plain,
        expires_in=access.expires_in,
        scope=TokenScope(auth_session.scope),
    )


async def refresh(session: AsyncSession, auth: AuthRuntime, refresh_token: str) -> TokenPair:
    """Spend a refresh token for a new pair. A spent token presented again revokes the whole session."""
    now = utcnow()
    # The token is all the caller shows; its session tells the organization.
    await enter_platform_scope(session)
    row = await session.execute(
        select(RefreshToken, AuthSession)
        .join(AuthSession, AuthSession.id == RefreshToken.session_id)
        .where(RefreshToken.token_hash == _hash_refresh_token(refresh_token))
    )
    found = row.first()
    if found is None:
        raise Unauthenticated("The refresh token is not valid.", code="invalid_refresh_token")
    token, auth_session = found
    if auth_session.revoked_at is not None:
        raise Unauthenticated("The session has ended.", code="session_revoked")
    if token.used_at is not None:
        await _revoke_family(session, auth, auth_session)
    if token.expires_at <= now or auth_session.expires_at <= now:
        raise Unauthenticated("The session has expired; sign in again.", code="session_expired")
    spent = await session.execute(
        update(RefreshToken)
        .where(RefreshToken.id == token.id, RefreshToken.used_at.is_(None))
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if spent.rowcount != 1:  # type: ignore[attr-defined]
        # A concurrent refresh spent it first: two holders of one token means it leaked.
        await _revoke_family(session, auth, auth_session)
    user = await session.get(User, auth_session.user_id)
    if user is None or not user.active:
        raise Unauthenticated("The account is disabled.", code="account_disabled")
    return await _issue_pair(session, auth, user, auth_session)


async def _revoke_family(session: AsyncSession, auth: AuthRuntime, auth_session: AuthSession) -> None:
    await _revoke_sessions(session, auth, [auth_session], reason="refresh_token_reuse")
    log.warning("refresh_token_reuse_detected", session_id=str(auth_session.id), user_id=str(auth_session.user_id))
    auth.audit.record(
        session,
        None,
        AuditEntry(
            action="auth.refresh_token_reuse",
            outcome=Outcome.denied,
            resource_type="session",
            resource_id=str(auth_session.id),
            details={"family_revoked": True},
        ),
        organization_id=auth_session.organization_id,
        user_id=auth_session.user_id,
    )
    raise Unauthenticated(
        "This refresh token was already used; the session has been ended.",
        code="refresh_token_reused",
        keep_changes=True,
    )


async def _revoke_sessions(
    session: AsyncSession, auth: AuthRuntime, sessions: Iterable[AuthSession], *, reason: str
) -> None:
    now = utcnow()
    for auth_session in sessions:
        if auth_session.revoked_at is None:
            auth_session.revoked_at = now
            auth_session.revoked_reason = reason
        # Deny first, record second: if the store write fails the request fails and nothing is half-done.
        await auth.revoked.revoke(auth_session.id, auth.settings.access_token_ttl_seconds)


async def end_sessions_of_organization(
    session: AsyncSession, auth: AuthRuntime, organization_id: uuid.UUID, *, reason: str
) -> None:
    open_sessions = (
        await session.scalars(
            select(AuthSession).where(AuthSession.organization_id == organization_id, AuthSession.revoked_at.is_(None))
        )
    ).all()
    await _revoke_sessions(session, auth, open_sessions, reason=reason)


async def sign_out(session: AsyncSession, auth: AuthRuntime, actor: Actor) -> None:
    auth_session = await session.get(AuthSession, actor.session_id)
    if auth_session is not None:
        await _revoke_sessions(session, auth, [auth_session], reason="logout")
    auth.audit.record(
        session,
        actor,
        AuditEntry(
            action="auth.sign_out", outcome=Outcome.success, resource_type="session", resource_id=str(actor.session_id)
        ),
    )


async def seed_revocations(session: AsyncSession, auth: AuthRuntime) -> int:
    """Reload recently revoked sessions into this server's memory, so a restart never revives a logged-out
    token. Local only: the database is the record, and every server re-reads it."""
    ttl = auth.settings.access_token_ttl_seconds
    now = utcnow()
    rows = (
        await session.execute(
            select(AuthSession.id, AuthSession.revoked_at).where(AuthSession.revoked_at > now - timedelta(seconds=ttl))
        )
    ).all()
    for session_id, revoked_at in rows:
        remaining = ttl - int((now - revoked_at).total_seconds())
        await auth.revoked.remember(session_id, max(1, remaining))
    return len(rows)


# --- second factor -----------------------------------------------------------------------------------------


async def _consume_one_time_code(session: AsyncSession, auth: AuthRuntime, user: User, code: str) -> bool:
    if user.mfa_secret_sealed is None:
        return False
    secret = auth.key_ring.open(user.mfa_secret_sealed, _mfa_context(user.id)).decode()
    step = mfa.matching_step(secret, code)
    if step is None:
        return False
    # Conditional update: of two requests racing with the same code, exactly one moves the step forward.
    result = await session.execute(
        update(User)
        .where(User.id == user.id)
        .where((User.mfa_last_step.is_(None)) | (User.mfa_last_step < step))
        .values(mfa_last_step=step)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


async def enroll_mfa(session: AsyncSession, auth: AuthRuntime, actor: Actor) -> MfaEnrollment:
    user = await _load_self(session, actor)
    if user.mfa_enabled:
        raise Conflict("A second factor is already active for this account.", code="mfa_already_enabled")
    secret = mfa.new_secret()
    user.mfa_secret_sealed = auth.key_ring.seal(secret.encode(), _mfa_context(user.id))
    user.mfa_last_step = None
    return MfaEnrollment(secret=secret, otpauth_uri=mfa.provisioning_uri(secret, user.email))


async def confirm_mfa(session: AsyncSession, auth: AuthRuntime, actor: Actor, code: str) -> TokenPair:
    """Turn the enrolled factor on and exchange the enrolment-only session for a full one."""
    user = await _load_self(session, actor)
    if user.mfa_enabled:
        raise Conflict("A second factor is already active for this account.", code="mfa_already_enabled")
    if user.mfa_secret_sealed is None:
        raise Conflict("Start enrolment first (POST /api/v1/auth/mfa/enroll).", code="mfa_not_enrolled")
    if not await _consume_one_time_code(session, auth, user, code):
        raise InvalidInput(
            "The one-time code is not valid.",
            code="invalid_otp",
            extra={"errors": [{"field": "otp", "message": "code does not match", "type": "invalid_otp"}]},
        )
    user.mfa_enabled = True
    current = await session.get(AuthSession, actor.session_id)
    if current is not None:
        await _revoke_sessions(session, auth, [current], reason="mfa_enrolled")
    return await _open_session(session, auth, user, TokenScope.full)


# --- profiles and staff accounts ---------------------------------------------------------------------------


async def _load_self(session: AsyncSession, actor: Actor) -> User:
    user = await session.get(User, actor.user_id)
    if user is None or not user.active:
        raise Unauthenticated("The account is disabled.", code="account_disabled")
    return user


async def _facility_ids(session: AsyncSession, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, list[uuid.UUID]]:
    memberships: dict[uuid.UUID, list[uuid.UUID]] = {user_id: [] for user_id in user_ids}
    if user_ids:
        rows = await session.execute(
            select(UserFacility.user_id, UserFacility.facility_id)
            .where(UserFacility.user_id.in_(user_ids))
            .order_by(UserFacility.facility_id)
        )
        for user_id, facility_id in rows:
            memberships[user_id].append(facility_id)
    return memberships


async def read_me(session: AsyncSession, actor: Actor) -> MeRead:
    profile = await repository.load_profile(session, actor.user_id)
    if profile is None or not profile.active:
        raise Unauthenticated("The account is disabled.", code="account_disabled")
    return MeRead(
        id=profile.id,
        email=profile.email,
        full_name=profile.full_name,
        organization_id=profile.organization_id,
        roles=[Role(role) for role in profile.roles],
        facility_ids=profile.facility_ids,
        mfa_enabled=profile.mfa_enabled,
        scope=actor.scope,
        permissions=sorted(actor.permissions),
    )


def _to_read(user: User, facility_ids: list[uuid.UUID]) -> UserRead:
    return UserRead(
        id=user.id,
        organization_id=user.organization_id,
        email=user.email,
        full_name=user.full_name,
        roles=[Role(role) for role in user.roles],
        facility_ids=facility_ids,
        mfa_enabled=user.mfa_enabled,
        active=user.active,
        created_at=user.created_at,
    )


async def _validated_facilities(session: AsyncSession, actor: Actor, facility_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    wanted = list(dict.fromkeys(facility_ids))
    if not wanted:
        return []
    found = set(
        (
            await session.scalars(
                scoped_select(Facility, actor).with_only_columns(Facility.id).where(Facility.id.in_(wanted))
            )
        ).all()
    )
    if len(found) != len(wanted):
        # Another tenant's facility and a facility that does not exist look the same from here.
        raise NotFound("One or more facilities were not found.", code="facility_not_found")
    return wanted


async def _add_user(session: AsyncSession, user: User) -> None:
    """Insert an account whose e-mail must be unique across all organizations. Row-level security hides other
    organizations' accounts from the check, so the unique constraint decides, inside a savepoint so that
    the refusal leaves the rest of the transaction usable."""
    try:
        async with session.begin_nested():
            session.add(user)
            await session.flush()
    except IntegrityError as exc:
        if "email" in str(exc.orig).lower():
            raise Conflict("An account with this e-mail address already exists.", code="email_taken") from None
        raise


def _check_password(auth: AuthRuntime, password: str) -> None:
    problem = auth.passwords.problems_with(password)
    if problem:
        raise InvalidInput(
            f"The password {problem}.",
            code="weak_password",
            extra={"errors": [{"field": "password", "message": problem, "type": "password_policy"}]},
        )


async def create_user(session: AsyncSession, auth: AuthRuntime, actor: Actor, request: UserCreate) -> UserRead:
    policy.ensure_can_manage_users(actor)
    _check_password(auth, request.password)
    facility_ids = await _validated_facilities(session, actor, request.facility_ids)
    user = User(
        id=uuid.uuid4(),
        organization_id=actor.organization_id,
        email=request.email,
        full_name=request.full_name,
        roles=sorted(set(request.roles)),
        password_hash=await auth.passwords.hash_async(request.password),
    )
    await _add_user(session, user)
    session.add_all(
        UserFacility(user_id=user.id, facility_id=facility_id, organization_id=user.organization_id)
        for facility_id in facility_ids
    )
    await session.flush()
    return _to_read(user, facility_ids)


async def create_org_admin(
    session: AsyncSession,
    auth: AuthRuntime,
    actor: Actor | SystemActor,
    organization_id: uuid.UUID,
    request: OrgAdminCreate,
) -> UserRead:
    policy.ensure_can_manage_organizations(actor)
    if await session.get(Organization, organization_id) is None:
        raise NotFound("Organization not found.", code="organization_not_found")
    _check_password(auth, request.password)
    user = User(
        id=uuid.uuid4(),
        organization_id=organization_id,
        email=request.email,
        full_name=request.full_name,
        roles=[Role.org_admin.value],
        password_hash=await auth.passwords.hash_async(request.password),
    )
    await _add_user(session, user)
    return _to_read(user, [])


async def create_platform_admin(
    session: AsyncSession, auth: AuthRuntime, actor: SystemActor, email: str, full_name: str, password: str
) -> UserRead:
    """Only the command line creates platform administrators: no route can mint one."""
    _check_password(auth, password)
    email = normalize_email(email)
    user = User(
        id=uuid.uuid4(),
        organization_id=None,
        email=email,
        full_name=full_name,
        roles=[Role.platform_admin.value],
        password_hash=await auth.passwords.hash_async(password),
    )
    await _add_user(session, user)
    log.info("platform_admin_created", user_id=str(user.id), by=actor.name)
    return _to_read(user, [])


# Patient accounts carry this instead of a name: the patient's name lives only in the vault, encrypted.
PATIENT_ACCOUNT_NAME = "Patient"


async def create_patient_account(
    session: AsyncSession,
    auth: AuthRuntime,
    organization_id: uuid.UUID,
    email: str,
    password: str,
    *,
    patient_id: uuid.UUID | None,
) -> User:
    """A patient's sign-in account (role ``patient``), linked to their record or, for a self-registration
    waiting to be matched, not yet. The patient domain decides who may open one; this only stores it."""
    _check_password(auth, password)
    user = User(
        id=uuid.uuid4(),
        organization_id=organization_id,
        email=normalize_email(email),
        full_name=PATIENT_ACCOUNT_NAME,
        roles=[Role.patient.value],
        password_hash=await auth.passwords.hash_async(password),
        patient_id=patient_id,
    )
    await _add_user(session, user)
    return user


async def _get_scoped_user(session: AsyncSession, actor: Actor, user_id: uuid.UUID) -> User:
    user = await session.scalar(scoped_select(User, actor).where(User.id == user_id))  # type: ignore[type-var]
    if user is None:
        raise NotFound("User not found.", code="user_not_found")
    return user


async def get_user(session: AsyncSession, actor: Actor, user_id: uuid.UUID) -> UserRead:
    policy.ensure_can_read_users(actor)
    user = await _get_scoped_user(session, actor, user_id)
    return _to_read(user, (await _facility_ids(session, [user.id]))[user.id])


async def list_users(
    session: AsyncSession, actor: Actor, *, limit: int, cursor: str | None
) -> tuple[list[UserRead], str | None]:
    policy.ensure_can_read_users(actor)
    users, next_cursor = await paginate(session, scoped_select(User, actor), User, limit=limit, cursor=cursor)  # type: ignore[type-var]
    facilities = await _facility_ids(session, [user.id for user in users])
    return [_to_read(user, facilities[user.id]) for user in users], next_cursor


async def update_user(
    session: AsyncSession, auth: AuthRuntime, actor: Actor, user_id: uuid.UUID, request: UserUpdate
) -> UserRead:
    policy.ensure_can_manage_users(actor)
    user = await _get_scoped_user(session, actor, user_id)
    if request.full_name is not None:
        user.full_name = request.full_name
    roles_changed = request.roles is not None and sorted(set(request.roles)) != sorted(user.roles)
    if request.roles is not None:
        user.roles = sorted(set(request.roles))
    if request.facility_ids is not None:
        facility_ids = await _validated_facilities(session, actor, request.facility_ids)
        await session.execute(delete(UserFacility).where(UserFacility.user_id == user.id))
        session.add_all(
            UserFacility(user_id=user.id, facility_id=facility_id, organization_id=user.organization_id)
            for facility_id in facility_ids
        )
    disabling = request.active is False and user.active
    if disabling and user.id == actor.user_id:
        raise Conflict("You cannot disable your own account.", code="cannot_disable_self")
    if request.active is not None:
        user.active = request.active
    if disabling or roles_changed:
        # Tokens carry roles; ending the sessions makes a disabled account or a narrowed role bite at once.
        open_sessions = (
            await session.scalars(
                select(AuthSession).where(AuthSession.user_id == user.id, AuthSession.revoked_at.is_(None))
            )
        ).all()
        await _revoke_sessions(
            session, auth, open_sessions, reason="account_disabled" if disabling else "roles_changed"
        )
    await session.flush()
    return _to_read(user, (await _facility_ids(session, [user.id]))[user.id])
