from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, CheckConstraint, ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.orm import Mapped, mapped_column

from sehat.core.clock import utcnow
from sehat.core.db import Base, IdMixin


class BreakGlassGrant(IdMixin, Base):
    """Emergency access by one user to one patient outside their facilities, until it expires."""

    __tablename__ = "break_glass_grants"
    __table_args__ = (Index("ix_break_glass_grants_lookup", "organization_id", "user_id", "patient_id", "expires_at"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id"))
    # A foreign key to the patient registry arrives with it (issue 4).
    patient_id: Mapped[uuid.UUID]
    # The stated reason may describe the emergency, so it is sealed like patient data.
    reason_sealed: Mapped[bytes] = mapped_column(LargeBinary)
    granted_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]


class Alert(IdMixin, Base):
    """Something an administrator or auditor should look at: raised by access rules over the audit stream."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_organization_id_created_at", "organization_id", "created_at"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    kind: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[uuid.UUID | None]
    patient_id: Mapped[uuid.UUID | None]
    audit_event_id: Mapped[int | None] = mapped_column(BigInteger)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AnomalyCursor(Base):
    """How far the anomaly rules have read the sealed audit chain (access/anomaly.py). One row, id 1, created
    by the first evaluation; written only by the one evaluator holding the lock."""

    __tablename__ = "anomaly_cursor"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    # The chain index of the last entry evaluated: chain order, unlike entry ids, never leaves a gap behind
    # that a late-committing transaction fills afterwards.
    last_chain_index: Mapped[int] = mapped_column(BigInteger)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
