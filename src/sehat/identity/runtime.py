"""The identity machinery one server process holds: built once at start-up, shared by every request."""

from __future__ import annotations

from dataclasses import dataclass

from sehat.core.audit import AuditLog
from sehat.core.crypto import KeyRing
from sehat.identity.passwords import Passwords
from sehat.identity.permissions import PermissionTable
from sehat.identity.revocation import RevokedSessions
from sehat.identity.throttle import LoginThrottle
from sehat.identity.tokens import AccessTokens, SigningKeys
from sehat.settings import Settings


@dataclass
class AuthRuntime:
    settings: Settings
    key_ring: KeyRing
    passwords: Passwords
    signing_keys: SigningKeys
    tokens: AccessTokens
    revoked: RevokedSessions
    throttle: LoginThrottle
    audit: AuditLog
    permissions: PermissionTable
