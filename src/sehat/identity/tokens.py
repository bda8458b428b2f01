"""Access tokens: EdDSA-signed JWTs with a ``kid``, verified without a database round trip.

Signing keys live in the database (private halves sealed under the master key ring) so every app server
signs and verifies with the same set. Each server keeps them in memory and reloads them periodically and
whenever a token names a key it has not seen. A rotated-out key keeps verifying for one token lifetime
(plus one reload interval), so tokens it signed stay valid until they expire and not a moment longer.
"""

from __future__ import annotations

import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from sqlalchemy import or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Audience, Role, TokenScope
from sehat.core.clock import utcnow
from sehat.core.crypto import KeyRing, associated_data
from sehat.identity.models import SigningKey
from sehat.settings import Settings

ALGORITHM = "EdDSA"
_REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]
_UNKNOWN_KID_RELOAD_SECONDS = 5.0
_VERIFIED_CACHE_LIMIT = 20_000


class InvalidToken(Exception):
    """The token is not acceptable. Deliberately carries no reason that could guide an attacker."""


class UnknownSigningKey(InvalidToken):
    """The token names a key this server has not loaded; a reload may find it."""


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: uuid.UUID
    organization_id: uuid.UUID | None
    roles: frozenset[Role]
    audience: Audience
    session_id: uuid.UUID
    token_id: str
    scope: TokenScope
    expires_at: float


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_in: int


def _seal_context(kid: str) -> bytes:
    return associated_data("signing_keys", "private_key_sealed", kid)


class SigningKeys:
    """The in-memory view of the signing key table, for one server process."""

    def __init__(self, key_ring: KeyRing, settings: Settings) -> None:
        self._key_ring = key_ring
        self._grace = timedelta(seconds=settings.access_token_ttl_seconds + settings.signing_key_refresh_seconds)
        self.current_kid: str | None = None
        self._private: Ed25519PrivateKey | None = None
        self._public: dict[str, Ed25519PublicKey] = {}
        self.loaded_at = 0.0
        self._last_unknown_reload = 0.0

    async def load(self, session: AsyncSession) -> None:
        cutoff = utcnow() - self._grace
        rows = (
            await session.scalars(
                select(SigningKey)
                .where(or_(SigningKey.superseded_at.is_(None), SigningKey.superseded_at > cutoff))
                .order_by(SigningKey.created_at.desc(), SigningKey.kid.desc())
            )
        ).all()
        public = {row.kid: Ed25519PublicKey.from_public_bytes(row.public_key) for row in rows}
        current = next((row for row in rows if row.superseded_at is None), None)
        if current is not None:
            raw = self._key_ring.open(current.private_key_sealed, _seal_context(current.kid))
            self._private = Ed25519PrivateKey.from_private_bytes(raw)
            self.current_kid = current.kid
        self._public = public
        self.loaded_at = time.monotonic()

    async def ensure_current(self, session: AsyncSession) -> None:
        """Create the first signing key on a fresh database; a no-op once one exists."""
        await self.load(session)
        if self.current_kid is None:
            await self.add_key(session)

    async def add_key(self, session: AsyncSession) -> str:
        """Add a new signing key and make it current; the previous one keeps verifying for a grace period."""
        now = utcnow()
        kid = f"{now:%Y%m%d}-{secrets.token_hex(4)}"
        private = Ed25519PrivateKey.generate()
        private_raw = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        await session.execute(update(SigningKey).where(SigningKey.superseded_at.is_(None)).values(superseded_at=now))
        session.add(
            SigningKey(
                kid=kid,
                public_key=private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw),
                private_key_sealed=self._key_ring.seal(private_raw, _seal_context(kid)),
                created_at=now,
            )
        )
        await session.flush()
        await self.load(session)
        return kid

    def public_key(self, kid: str) -> Ed25519PublicKey:
        key = self._public.get(kid)
        if key is None:
            raise UnknownSigningKey()
        return key

    def may_reload_for_unknown_kid(self) -> bool:
        now = time.monotonic()
        if now - self._last_unknown_reload < _UNKNOWN_KID_RELOAD_SECONDS:
            return False
        self._last_unknown_reload = now
        return True

    def signer(self) -> tuple[str, Ed25519PrivateKey]:
        if self.current_kid is None or self._private is None:
            raise RuntimeError("no signing key loaded; the app's start-up creates one")
        return self.current_kid, self._private


class AccessTokens:
    def __init__(self, keys: SigningKeys, settings: Settings) -> None:
        self.keys = keys
        self.issuer = settings.token_issuer
        self.ttl = settings.access_token_ttl_seconds
        self._verified: dict[str, AccessClaims] = {}

    def issue(
        self,
        *,
        user_id: uuid.UUID,
        organization_id: uuid.UUID | None,
        roles: list[str],
        audience: Audience,
        session_id: uuid.UUID,
        scope: TokenScope,
        not_after: datetime,
    ) -> IssuedToken:
        now = utcnow()
        issued_at = int(now.timestamp())
        expires_at = min(issued_at + self.ttl, int(not_after.timestamp()))
        kid, private_key = self.keys.signer()
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "aud": audience.value,
            "sub": str(user_id),
            "org": str(organization_id) if organization_id else None,
            "roles": sorted(roles),
            "sid": str(session_id),
            "scope": scope.value,
            "iat": issued_at,
            "nbf": issued_at,
            "exp": expires_at,
            "jti": secrets.token_urlsafe(16),
        }
        token = jwt.encode(payload, private_key, algorithm=ALGORITHM, headers={"kid": kid})
        return IssuedToken(token=token, expires_in=max(0, expires_at - issued_at))

    def verify(self, token: str) -> AccessClaims:
        cached = self._verified.get(token)
        if cached is not None:
            # A verified signature stays verified; only the clock can invalidate it (revocation is checked
            # by the caller on every request).
            if cached.expires_at > time.time():
                return cached
            del self._verified[token]
        claims = self._verify_signature_and_claims(token)
        if len(self._verified) >= _VERIFIED_CACHE_LIMIT:
            self._verified.clear()
        self._verified[token] = claims
        return claims

    def _verify_signature_and_claims(self, token: str) -> AccessClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise InvalidToken() from exc
        kid = header.get("kid")
        # The algorithm is fixed by us, never read from the token; embedded or remote keys are not honoured.
        if header.get("alg") != ALGORITHM or not isinstance(kid, str) or {"jwk", "jku", "x5u", "x5c"} & header.keys():
            raise InvalidToken()
        public_key = self.keys.public_key(kid)
        try:
            payload = jwt.decode(
                token,
                public_key,
                algorithms=[ALGORITHM],
                audience=[Audience.staff.value, Audience.patient.value],
                issuer=self.issuer,
                options={"require": _REQUIRED_CLAIMS},
            )
            roles = frozenset(Role(role) for role in payload.get("roles", ()))
            organization = payload.get("org")
            return AccessClaims(
                user_id=uuid.UUID(payload["sub"]),
                organization_id=uuid.UUID(organization) if organization else None,
                roles=roles,
                audience=Audience(payload["aud"]),
                session_id=uuid.UUID(payload["sid"]),
                token_id=str(payload["jti"]),
                scope=TokenScope(payload.get("scope", TokenScope.full.value)),
                expires_at=float(payload["exp"]),
            )
        except (jwt.InvalidTokenError, KeyError, ValueError, TypeError) as exc:
            raise InvalidToken() from exc
