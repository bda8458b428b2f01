from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import JSON, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from sehat.core.db import Base, IdMixin, TimestampMixin


class Organization(IdMixin, TimestampMixin, Base):
    """A tenant: a hospital network or clinic group. Every tenant-owned row points here."""

    __tablename__ = "organizations"

    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(63), unique=True)
    active: Mapped[bool] = mapped_column(default=True)


class Facility(IdMixin, TimestampMixin, Base):
    """A clinic or hospital unit. Schedules at a facility are expressed in its IANA timezone."""

    __tablename__ = "facilities"
    __table_args__ = (UniqueConstraint("organization_id", "code"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    code: Mapped[str] = mapped_column(String(32))
    timezone: Mapped[str] = mapped_column(String(64))
    active: Mapped[bool] = mapped_column(default=True)
    # Weekly hours on the facility's own wall clock: [{"weekday": 0-6, "opens": "HH:MM", "closes": "HH:MM"}],
    # validated by tenancy.schemas.OpeningHours. NULL means unknown, which is not the same as [] (never open):
    # the after-hours rule leaves a facility with unknown hours alone.
    opening_hours: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON(none_as_null=True))


class Department(IdMixin, TimestampMixin, Base):
    __tablename__ = "departments"
    __table_args__ = (UniqueConstraint("organization_id", "facility_id", "code"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"), index=True)
    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    code: Mapped[str] = mapped_column(String(32))
    active: Mapped[bool] = mapped_column(default=True)
