"""OPD queue tables: a queue per facility (and department or practitioner), day and session, the rooms that
serve it, its tokens with their history, and the lobby boards that show it.

The queue row is also the token counter: issuing a token is ``UPDATE queues SET last_number = last_number + 1
… RETURNING``, whose row lock orders issuers of one queue until they commit, so numbers are unique, never
reused and, because the number is taken in the issuing transaction, without gaps. Every change of a queue's
line bumps its ``version`` under the same lock: a server's in-memory copy of the line (``queue.live``) is
current exactly while its version equals the row's.
"""

from __future__ import annotations

import uuid
from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import ForeignKey, Index, Integer, LargeBinary, String, text
from sqlalchemy.orm import Mapped, mapped_column

from sehat.core.clock import utcnow
from sehat.core.db import Base, IdMixin


class TokenStatus(StrEnum):
    waiting = "waiting"
    called = "called"
    in_consultation = "in_consultation"
    completed = "completed"
    # Called and did not come: may be recalled into the line.
    skipped = "skipped"
    no_show = "no_show"
    transferred = "transferred"
    cancelled = "cancelled"


# A patient holds at most one token in these statuses per queue (a partial unique index).
ACTIVE_TOKEN_STATUSES: tuple[str, ...] = (
    TokenStatus.waiting,
    TokenStatus.called,
    TokenStatus.in_consultation,
    TokenStatus.skipped,
)
_ACTIVE_SQL = "status IN ('waiting', 'called', 'in_consultation', 'skipped')"


class TokenSource(StrEnum):
    appointment = "appointment"
    walk_in = "walk_in"
    emergency = "emergency"
    transfer = "transfer"


class Queue(IdMixin, Base):
    __tablename__ = "queues"
    __table_args__ = (
        Index(
            "uq_queues_organization_id_facility_id_day_session_prefix",
            "organization_id",
            "facility_id",
            "day",
            "session",
            "prefix",
            unique=True,
        ),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    department_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("departments.id"))
    practitioner_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("practitioners.id"))
    # The facility's local date, and a session of it ("morning", "evening").
    day: Mapped[date]
    session: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(100))
    prefix: Mapped[str] = mapped_column(String(8))
    # A walk-in's planned length, where no appointment type says one.
    default_minutes: Mapped[int] = mapped_column(Integer)
    last_number: Mapped[int] = mapped_column(Integer, default=0)
    version: Mapped[int] = mapped_column(Integer, default=1)
    paused: Mapped[bool] = mapped_column(default=False)
    paused_until: Mapped[datetime | None]
    delayed_until: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class QueueRoom(IdMixin, Base):
    """A consultation room or counter serving a queue: where a called token goes."""

    __tablename__ = "queue_rooms"
    __table_args__ = (
        Index("uq_queue_rooms_organization_id_queue_id_name", "organization_id", "queue_id", "name", unique=True),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    queue_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("queues.id"))
    name: Mapped[str] = mapped_column(String(50))


class QueueToken(IdMixin, Base):
    __tablename__ = "queue_tokens"
    __table_args__ = (
        Index("uq_queue_tokens_organization_id_queue_id_number", "organization_id", "queue_id", "number", unique=True),
        Index(
            "uq_queue_tokens_active_patient",
            "organization_id",
            "queue_id",
            "patient_id",
            unique=True,
            postgresql_where=text(_ACTIVE_SQL),
            sqlite_where=text(_ACTIVE_SQL),
        ),
        Index("ix_queue_tokens_queue_status", "organization_id", "queue_id", "status"),
        Index("ix_queue_tokens_queue_changed", "organization_id", "queue_id", "changed_version"),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    queue_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("queues.id"))
    number: Mapped[int] = mapped_column(Integer)
    label: Mapped[str] = mapped_column(String(16))
    patient_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("patients.id"))
    appointment_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("appointments.id"))
    # The token this one was transferred from, if any.
    transferred_from_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("queue_tokens.id"))
    source: Mapped[str] = mapped_column(String(16))
    priority: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    # When the patient joined the line; kept across a transfer.
    arrived_at: Mapped[datetime]
    appointment_at: Mapped[datetime | None]
    planned_seconds: Mapped[int] = mapped_column(Integer)
    room_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("queue_rooms.id"))
    called_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    version: Mapped[int] = mapped_column(Integer, default=1)
    # The queue's version at the token's last change: a server whose copy of the line is at version c reads
    # only the tokens changed after c to catch up (``queue.live``).
    changed_version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TokenHistory(IdMixin, Base):
    """One change of a token: kept for every transition, never updated. ``version`` is the token's version the
    change produced, so the history reads in order even when two changes share a timestamp."""

    __tablename__ = "queue_token_history"
    __table_args__ = (
        Index("uq_queue_token_history_token_version", "organization_id", "token_id", "version", unique=True),
    )

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    token_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("queue_tokens.id"))
    version: Mapped[int] = mapped_column(Integer)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    actor_id: Mapped[uuid.UUID | None]
    action: Mapped[str] = mapped_column(String(32))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    room_id: Mapped[uuid.UUID | None]


class DisplayBoard(IdMixin, Base):
    """A lobby screen: it shows the day's queues of its facility (of one department, if it names one). The
    device enrols with a display key, stored here only as its SHA-256, that opens this board and nothing else."""

    __tablename__ = "display_boards"
    __table_args__ = (Index("ix_display_boards_facility", "organization_id", "facility_id"),)

    organization_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("organizations.id"))
    facility_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("facilities.id"))
    department_id: Mapped[uuid.UUID | None] = mapped_column(ForeignKey("departments.id"))
    name: Mapped[str] = mapped_column(String(100))
    key_digest: Mapped[bytes] = mapped_column(LargeBinary(32))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
