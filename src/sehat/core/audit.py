"""The audit log: every access to patient data, every denial and every sign-in, append-only and tamper-evident.

How tampering is caught, even by someone who can edit the database as its superuser:

- **Each entry carries a MAC** (HMAC-SHA256 over its canonical content) under a key derived from the master
  key ring, which is not in the database. An edited entry, or one inserted by hand, has no valid MAC.
- **Entries are sealed into a chain** by a background sealer: seal *n* records which entry is *n*-th and
  ``chain_hash[n] = HMAC(chain key, chain_hash[n-1] || mac of entry n)``. A deleted entry leaves a hole or a
  seal without its entry; swapped or reordered entries break the chain at the first position they moved.
- **Checkpoints** (chain index and hash, signed with Ed25519) are appended to a file outside the database,
  so cutting off the end of the chain (or truncating the tables) is caught against the last checkpoint.

Appending is a plain INSERT with no shared row to lock, so audited requests never wait on each other; only
the sealer, a single background task guarded by an advisory lock, orders entries. It seals entries a few
seconds old, so a transaction that is still open when its later neighbour commits is sealed later, not lost:
the chain's order is the order of sealing, recorded by the seals themselves.

On PostgreSQL triggers refuse UPDATE, DELETE and TRUNCATE on both tables; on SQLite, UPDATE and DELETE.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

import orjson
from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, LargeBinary, String
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Mapped, mapped_column

from sehat.core.actor import Actor, SystemActor
from sehat.core.clock import utcnow
from sehat.core.crypto import KeyRing
from sehat.core.db import Base, driver_connection

MAC_PURPOSE = "audit-entry-mac"
PSEUDONYM_PURPOSE = "audit-pseudonym"
CHAIN_PURPOSE = "audit-chain"
CHECKPOINT_PURPOSE = "audit-checkpoint"


class Outcome(StrEnum):
    success = "success"
    denied = "denied"
    failure = "failure"


class AuditEvent(Base):
    __tablename__ = "audit_events"
    __table_args__ = (
        # Every index is paid for on each append, the hottest write there is: only what reads need. Time
        # windows use a BRIN index on PostgreSQL (entries arrive in time order; it costs next to nothing to
        # keep); GET /audit-events pages newest-first by id within one organization.
        Index("ix_audit_events_occurred_at", "occurred_at", postgresql_using="brin"),
        Index("ix_audit_events_organization_id_id", "organization_id", "id"),
        Index("ix_audit_events_patient_id_occurred_at", "patient_id", "occurred_at"),
    )

    # BIGINT on PostgreSQL; on SQLite an INTEGER primary key is the rowid, assigned in insertion order.
    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    event_uuid: Mapped[uuid.UUID] = mapped_column(unique=True)
    occurred_at: Mapped[datetime]
    organization_id: Mapped[uuid.UUID | None] = mapped_column(index=False)
    actor_type: Mapped[str] = mapped_column(String(16))
    actor_id: Mapped[uuid.UUID | None] = mapped_column(index=True)
    actor_roles: Mapped[list[str]] = mapped_column(JSON)
    action: Mapped[str] = mapped_column(String(64))
    resource_type: Mapped[str | None] = mapped_column(String(64))
    resource_id: Mapped[str | None] = mapped_column(String(64))
    patient_id: Mapped[uuid.UUID | None]
    outcome: Mapped[str] = mapped_column(String(16))
    client_address: Mapped[str | None] = mapped_column(String(64))
    request_id: Mapped[str | None] = mapped_column(String(64))
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    mac_kid: Mapped[str] = mapped_column(String(32))
    mac: Mapped[bytes] = mapped_column(LargeBinary)


class AuditSeal(Base):
    __tablename__ = "audit_seals"

    chain_index: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    event_id: Mapped[int] = mapped_column(BigInteger, ForeignKey("audit_events.id"), unique=True)
    chain_kid: Mapped[str] = mapped_column(String(32))
    chain_hash: Mapped[bytes] = mapped_column(LargeBinary)
    sealed_at: Mapped[datetime] = mapped_column(default=utcnow)


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """What to record. ``details`` must hold no patient identifiers: ids, codes and counts only."""

    action: str
    outcome: Outcome
    resource_type: str | None = None
    resource_id: str | None = None
    patient_id: uuid.UUID | None = None
    details: dict[str, Any] = field(default_factory=dict)


def canonical_content(event: AuditEvent) -> bytes:
    """The bytes an entry's MAC covers: every recorded field except the database-assigned id."""
    return orjson.dumps(
        [
            str(event.event_uuid),
            event.occurred_at.isoformat(),
            str(event.organization_id) if event.organization_id else None,
            event.actor_type,
            str(event.actor_id) if event.actor_id else None,
            sorted(event.actor_roles),
            event.action,
            event.resource_type,
            event.resource_id,
            str(event.patient_id) if event.patient_id else None,
            event.outcome,
            event.client_address,
            event.request_id,
            event.details,
        ],
        option=orjson.OPT_SORT_KEYS,
    )


def entry_mac(key: bytes, content: bytes) -> bytes:
    return hmac.new(key, content, hashlib.sha256).digest()


def chain_step(key: bytes, previous: bytes, mac: bytes) -> bytes:
    return hmac.new(key, previous + mac, hashlib.sha256).digest()


GENESIS = b"\x00" * 32


class AuditLog:
    """Appends entries for one server process; holds the MAC key derived from the master key ring."""

    def __init__(self, key_ring: KeyRing) -> None:
        self.mac_kid, self._mac_key = key_ring.derive(MAC_PURPOSE)
        self._pseudonym_key = key_ring.derive(PSEUDONYM_PURPOSE)[1]

    def pseudonym(self, value: str) -> str:
        """A stable stand-in for an identifier that must not be stored (an e-mail typed at sign-in): the same
        value always gives the same pseudonym, and without the master key it cannot be reversed or guessed."""
        return hmac.new(self._pseudonym_key, value.encode(), hashlib.sha256).hexdigest()[:32]

    def record(
        self,
        session: AsyncSession,
        actor: Actor | SystemActor | None,
        entry: AuditEntry,
        *,
        organization_id: uuid.UUID | None = None,
        client_address: str | None = None,
        request_id: str | None = None,
        user_id: uuid.UUID | None = None,
        roles: Sequence[str] = (),
    ) -> AuditEvent:
        """Add an entry to the session's transaction: it commits (or rolls back) with the work it audits.

        ``user_id`` and ``roles`` name the person when there is no token yet (a sign-in)."""
        event = AuditEvent(
            **self.values(
                actor,
                entry,
                organization_id=organization_id,
                client_address=client_address,
                request_id=request_id,
                user_id=user_id,
                roles=roles,
            )
        )
        session.add(event)
        return event

    async def fetch_with_entry(
        self, session: AsyncSession, actor: Actor, entry: AuditEntry, query: str, *arguments: Any
    ) -> list[Any]:
        """PostgreSQL only: run one read (asyncpg SQL, ``$1``..``$n``) with the entry's INSERT travelling inside
        it as a data-modifying CTE, on the session's own connection, so it shares the session's transaction
        and tenant scope. A hot read and its audit entry then cost one round trip and no ORM work, and commit
        together. The SQLite version of such a read adds the entry with ``record`` instead.

        ``query`` may start with its own WITH clause; the entry's CTE goes first."""
        entry_values = self.values(actor, entry)
        values = [_insert_value(entry_values, column) for column in _INSERTED_COLUMNS]
        prefix = _entry_cte(len(arguments))
        body = query.lstrip()
        statement = prefix + (", " + body[5:] if body[:5].upper() == "WITH " else " " + body)
        driver = await session.run_sync(driver_connection)
        rows: list[Any] = await driver.fetch(statement, *arguments, *values)
        return rows

    def row_json(self, actor: Actor, entry: AuditEntry) -> str:
        """The entry's stored columns as one JSON object, for a PostgreSQL function that inserts it with
        ``json_populate_record(NULL::audit_events, ...)``: the MAC goes as bytea's hex text (``\\x...``)."""
        values = self.values(actor, entry)
        values["mac"] = "\\x" + values["mac"].hex()
        return orjson.dumps(values).decode()

    async def record_many(self, session: AsyncSession, actor: Actor, entries: Sequence[AuditEntry]) -> None:
        """Add several entries to the session's transaction. On PostgreSQL they go in one INSERT on the
        session's own connection, without mapped objects: a hot read that returns a few patients audits each
        of them for one round trip and no ORM work."""
        if not entries:
            return
        if session.bind.dialect.name != "postgresql":  # type: ignore[union-attr]
            for entry in entries:
                self.record(session, actor, entry)
            return
        rows = [
            [_insert_value(values, column) for column in _INSERTED_COLUMNS]
            for values in (self.values(actor, entry) for entry in entries)
        ]
        driver = await session.run_sync(driver_connection)
        await driver.executemany(_insert_sql(0), rows)

    def values(
        self,
        actor: Actor | SystemActor | None,
        entry: AuditEntry,
        *,
        organization_id: uuid.UUID | None = None,
        client_address: str | None = None,
        request_id: str | None = None,
        user_id: uuid.UUID | None = None,
        roles: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Every stored column of the entry but its id, MAC included. Plain values, no ORM object: the hot
        read path needs nothing more, and building a mapped object costs more than the MAC."""
        if isinstance(actor, Actor):
            actor_type, actor_id, roles = "user", actor.user_id, sorted(role.value for role in actor.roles)
            organization_id = organization_id or actor.organization_id
            client_address = client_address or actor.client_address
            request_id = request_id or actor.request_id
        elif isinstance(actor, SystemActor):
            actor_type, actor_id, roles = "system", None, [actor.name]
        elif user_id is not None:
            actor_type, actor_id, roles = "user", user_id, sorted(roles)
        else:
            actor_type, actor_id, roles = "anonymous", None, []
        values: dict[str, Any] = {
            "event_uuid": uuid.uuid4(),
            "occurred_at": utcnow(),
            "organization_id": organization_id,
            "actor_type": actor_type,
            "actor_id": actor_id,
            "actor_roles": roles,
            "action": entry.action,
            "resource_type": entry.resource_type,
            "resource_id": entry.resource_id,
            "patient_id": entry.patient_id,
            "outcome": entry.outcome.value,
            "client_address": client_address,
            "request_id": request_id,
            "details": entry.details,
            "mac_kid": self.mac_kid,
        }
        values["mac"] = entry_mac(self._mac_key, canonical_values(values))
        return values


def canonical_values(values: dict[str, Any]) -> bytes:
    """``canonical_content`` of an entry with these column values, byte for byte (a test holds them equal).
    orjson writes a timezone-aware datetime exactly as ``isoformat`` does, in C."""
    organization_id, actor_id, patient_id = values["organization_id"], values["actor_id"], values["patient_id"]
    return orjson.dumps(
        [
            str(values["event_uuid"]),
            values["occurred_at"],
            # str(), not orjson's own UUID support: ids read from the database are asyncpg's UUID subclass.
            str(organization_id) if organization_id else None,
            values["actor_type"],
            str(actor_id) if actor_id else None,
            sorted(values["actor_roles"]),
            values["action"],
            values["resource_type"],
            values["resource_id"],
            str(patient_id) if patient_id else None,
            values["outcome"],
            values["client_address"],
            values["request_id"],
            values["details"],
        ],
        option=orjson.OPT_SORT_KEYS,
    )


# Everything but the id, which the database assigns.
_INSERTED_COLUMNS = [column.key for column in AuditEvent.__table__.columns if column.key != "id"]
_JSON_COLUMNS = frozenset({"actor_roles", "details"})


def _insert_value(values: dict[str, Any], column: str) -> Any:
    value = values[column]
    # asyncpg sends json parameters as text.
    return orjson.dumps(value).decode() if column in _JSON_COLUMNS else value


@functools.cache
def _insert_sql(first_free_argument: int) -> str:
    """``INSERT INTO audit_events (...) VALUES (...)`` whose placeholders start after ``$first_free_argument``."""
    placeholders = ", ".join(f"${first_free_argument + number}" for number in range(1, len(_INSERTED_COLUMNS) + 1))
    columns = ", ".join(_INSERTED_COLUMNS)
    # Built from the model's column names and placeholder numbers only: nothing from a caller.
    return f"INSERT INTO audit_events ({columns}) VALUES ({placeholders})"  # noqa: S608


@functools.cache
def _entry_cte(first_free_argument: int) -> str:
    """``WITH audit_entry AS (INSERT ...)`` whose placeholders follow the read's own ``$1``..``$n``."""
    return f"WITH audit_entry AS ({_insert_sql(first_free_argument)})"
