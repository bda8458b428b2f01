"""Domain events through a transactional outbox (DESIGN §1): a service emits an event by adding a row in the
transaction of the change it describes, so a rolled-back change leaves no event and a committed one cannot lose
it. A relay in ``sehat worker`` carries unpublished rows to the broker (the notifications issue adds it).

Payloads carry ids, times and codes only: no name, phone or clinical text, because brokers and their consumers
sit outside the patient vault.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from sehat.core.clock import utcnow
from sehat.core.db import Base, IdMixin


class OutboxEvent(IdMixin, Base):
    __tablename__ = "outbox_events"
    __table_args__ = (Index("ix_outbox_events_unpublished", "published_at", "created_at"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    kind: Mapped[str] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    published_at: Mapped[datetime | None]


def emit(session: AsyncSession, organization_id: uuid.UUID, kind: str, payload: dict[str, Any]) -> OutboxEvent:
    """Record ``kind`` with its JSON-ready ``payload`` in the session's transaction."""
    event = OutboxEvent(
        id=uuid.uuid4(), organization_id=organization_id, kind=kind, payload=payload, created_at=utcnow()
    )
    session.add(event)
    return event
