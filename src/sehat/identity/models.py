from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from sehat.core.clock import utcnow
from sehat.core.db import Base, IdMixin, TimestampMixin


class User(IdMixin, TimestampMixin, Base):
    """A person who signs in: staff of one organization, a patient, or a platform administrator."""

    __tablename__ = "users"
    __table_args__ = (
        # One sign-in account per patient record within an organization. Partial, because staff accounts
        # (most rows) hold no patient, and each backend would otherwise index their nulls for nothing.
        Index(
            "ix_users_organization_id_patient_id",
            "organization_id",
            "patient_id",
            unique=True,
            postgresql_where=text("patient_id IS NOT NULL"),
            sqlite_where=text("patient_id IS NOT NULL"),
        ),
    )

    # Null only for platform administrators, who belong to no tenant.
    organization_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("organizations.id"), index=True)
    # Stored trimmed and lower-cased, so the unique constraint is case-insensitive on every backend.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    full_name: Mapped[str] = mapped_column(String(200))
    roles: Mapped[list[str]] = mapped_column(JSON)
    password_hash: Mapped[str] = mapped_column(String(255))
    password_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    mfa_secret_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    mfa_enabled: Mapped[bool] = mapped_column(default=False)
    # The last TOTP time step accepted: a code for this step or an earlier one is never accepted again.
    mfa_last_step: Mapped[int | None] = mapped_column(BigInteger)
    active: Mapped[bool] = mapped_column(default=True)
    last_login_at: Mapped[datetime | None]
    # The patient record a patient account signs in for; null for staff and for a patient account not linked
    # yet. A foreign key to the registry arrives with it (issue 4), which also fills this in.
    patient_id: Mapped[uuid.UUID | None]


class UserFacility(Base):
    __tablename__ = "user_facilities"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"), primary_key=True, index=True)
    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), index=True)


class AuthSession(IdMixin, Base):
    """One sign-in. Its refresh tokens form a family: reuse of a spent one revokes the whole session."""

    __tablename__ = "auth_sessions"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"), index=True)
    organization_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("organizations.id"), index=True)
    audience: Mapped[str] = mapped_column(String(32))
    scope: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None] = mapped_column(index=True)
    revoked_reason: Mapped[str | None] = mapped_column(String(64))


class RefreshToken(IdMixin, Base):
    __tablename__ = "refresh_tokens"

    session_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("auth_sessions.id", ondelete="CASCADE"), index=True)
    # SHA-256 of a 256-bit random token: a fast hash suffices because the token is not guessable.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]


class SigningKey(TimestampMixin, Base):
    """Ed25519 keys for access tokens; the private half is sealed under the master key ring."""

    __tablename__ = "signing_keys"

    kid: Mapped[str] = mapped_column(String(32), primary_key=True)
    algorithm: Mapped[str] = mapped_column(String(16), default="EdDSA")
    public_key: Mapped[bytes] = mapped_column(LargeBinary)
    private_key_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    superseded_at: Mapped[datetime | None]


class Permission(Base):
    """A named right that routes and policies check, such as ``facility.read``. Platform-wide: every
    organization shares the same catalogue, so no ``organization_id``."""

    __tablename__ = "permissions"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(String(200))


class RolePermission(Base):
    """One grant: holders of ``role`` have ``permission``. Servers keep the whole table in memory."""

    __tablename__ = "role_permissions"

    # A plain string rather than an enum type: a row for a role this server does not know yet (written by a
    # newer release during a rolling deploy) is skipped by the loader instead of failing it.
    role: Mapped[str] = mapped_column(String(32), primary_key=True)
    permission: Mapped[str] = mapped_column(String(64), ForeignKey("permissions.name"), primary_key=True)
