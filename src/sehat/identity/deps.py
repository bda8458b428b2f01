"""Authentication and permission checks for routes: ``Depends(require(permission))``.

Checking a request costs no database round trip: the token's signature is verified with an in-memory key
(and remembered until it expires), revocation is looked up in memory or Redis by session id, and the roles'
permissions come from the in-memory copy of the role to permission table.
"""

from __future__ import annotations

from collections.abc import Collection

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from sehat.core.actor import Actor, Audience, TokenScope
from sehat.core.errors import Forbidden, Unauthenticated
from sehat.core.http import SCOPE_ACTOR, SCOPE_PROTECTED, SCOPE_REQUEST_ID, SCOPE_SESSION
from sehat.core.tenant_scope import bind_actor
from sehat.identity.permissions import SELF_SERVICE
from sehat.identity.runtime import AuthRuntime
from sehat.identity.tokens import AccessClaims, InvalidToken, UnknownSigningKey

_bearer = HTTPBearer(auto_error=False, description="Access token from POST /api/v1/auth/token")
_INVALID = "The access token is missing, invalid or expired."


async def get_auth(request: Request) -> AuthRuntime:
    return request.app.state.auth


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def _verify(request: Request, auth: AuthRuntime, token: str) -> AccessClaims:
    try:
        return auth.tokens.verify(token)
    except UnknownSigningKey:
        # Another server may have rotated the signing key moments ago; look once, rate-limited.
        if not auth.signing_keys.may_reload_for_unknown_kid():
            raise
        async with request.app.state.database.unit_of_work() as session:
            await auth.signing_keys.load(session)
        return auth.tokens.verify(token)


class Require:
    """A route's declared permission. The deny-by-default test finds these on every protected route."""

    def __init__(
        self,
        permission: str,
        *,
        audiences: Collection[Audience] = (Audience.staff,),
        allow_enrolment_scope: bool = False,
    ) -> None:
        self.permission = permission
        self.audiences = frozenset(audiences)
        self.allow_enrolment_scope = allow_enrolment_scope

    async def __call__(
        self, request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
    ) -> Actor:
        return await self.authenticate(request, credentials.credentials if credentials is not None else None)

    async def authenticate(self, request: Request, token: str | None) -> Actor:
        """The actor the bearer ``token`` stands for, allowed this permission, or the refusal (401 or 403). Also
        what a route served outside FastAPI's dependency injection calls (``core.http.HotRoutes``)."""
        request.scope[SCOPE_PROTECTED] = True
        if token is None:
            raise Unauthenticated(_INVALID, code="invalid_token")
        auth: AuthRuntime = request.app.state.auth
        try:
            claims = await _verify(request, auth, token)
        except InvalidToken as exc:
            raise Unauthenticated(_INVALID, code="invalid_token") from exc
        if claims.audience not in self.audiences:
            raise Unauthenticated("This token is not valid for this endpoint.", code="wrong_audience")
        if await auth.revoked.is_revoked(claims.session_id):
            raise Unauthenticated("The session has ended; sign in again.", code="session_revoked")
        permissions = auth.permissions.for_roles(claims.roles)
        # Known from here on, so that a refusal below is audited with who was refused.
        actor = Actor(
            user_id=claims.user_id,
            organization_id=claims.organization_id,
            roles=claims.roles,
            audience=claims.audience,
            session_id=claims.session_id,
            token_id=claims.token_id,
            scope=claims.scope,
            permissions=permissions,
            client_address=client_address(request),
            request_id=request.scope.get(SCOPE_REQUEST_ID),
        )
        request.scope[SCOPE_ACTOR] = actor
        if claims.scope is TokenScope.mfa_enrollment and not self.allow_enrolment_scope:
            raise Forbidden(
                "Enrol a second factor first (POST /api/v1/auth/mfa/enroll).", code="mfa_enrollment_required"
            )
        if self.permission not in permissions:
            raise Forbidden("Your role does not allow this action.", code="permission_denied")
        session = request.scope.get(SCOPE_SESSION)
        if session is not None:
            # The request's session was opened before this check; later it is bound as it opens.
            await bind_actor(session, actor)
        return actor


def require(permission: str, **options: object) -> Require:
    return Require(permission, **options)  # type: ignore[arg-type]


# Any signed-in person, staff or patient, acting on their own session, even before enrolling a factor.
require_self = Require(SELF_SERVICE, audiences=(Audience.staff, Audience.patient), allow_enrolment_scope=True)
