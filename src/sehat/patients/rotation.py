"""Master key rotation: re-wrap every patient data key and organization index key under the primary master key,
online, and re-seal the values sealed straight under the ring, so that the old master key can be retired.

Why this is safe while servers keep reading and writing:

* A wrapped key names the master key that wrapped it, and every server's ring holds both the old and the new
  master key before rotation starts (docs/operations.md, "Rotating the master key"), so a reader opens a key
  whether it was re-wrapped a moment ago or not. Only the wrapping changes: the data key inside, and so every
  field ciphertext and blind index, stays the same.
* Each batch is one short transaction for one organization (row-level security admits one organization per
  transaction), paginated by ``patient_id`` over the rows whose ``kek_id`` is not the primary's. It holds row
  locks on the rows it rewrites until the batch commits (tens of milliseconds) and never a table lock;
  PostgreSQL readers do not wait for row locks at all.
* The UPDATE is conditional on the wrapped key still being the one read. A patient erased meanwhile (its key
  row deleted) stays erased, and a key rewritten meanwhile keeps what its writer wrote: nothing is clobbered.

On PostgreSQL a batch is two statements on the raw asyncpg connection (one SELECT, one UPDATE over ``unnest``
arrays); SQLite takes the portable SQLAlchemy path. Rows that do not open (a tampered key, a key under a master
key missing from the ring) are left as they are and reported as remaining.
"""

from __future__ import annotations

import fcntl
import inspect
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import structlog
from sqlalchemy import Table, and_, bindparam, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.audit import AuditEvent, AuditSeal
from sehat.core.clock import utcnow
from sehat.core.crypto import DecryptionError, KeyRing, KeyRingError, associated_data, rewrap_data_key
from sehat.core.db import Database, driver_connection
from sehat.core.tenant_scope import enter_organization, enter_platform_scope
from sehat.patients.models import PATIENTS_TABLE, OrganizationIndexKey, PatientKey
from sehat.patients.vault import INDEX_KEYS_TABLE
from sehat.tenancy.models import Organization

log = structlog.get_logger(__name__)

DEFAULT_BATCH_SIZE = 1000
# The smallest UUID: keyset pagination starts below every patient id.
_BEFORE_ALL = uuid.UUID(int=0)
# A run sweeps an organization again when the previous sweep re-wrapped something and rows are still left:
# a server that had not loaded the new ring may have added keys behind the cursor meanwhile.
_MAX_SWEEPS = 3
# The sealed format's header is version(1) | len(kid)(1) | kid; a kid has at most 32 characters.
_SEALED_HEADER_MAX = 2 + 32

_SELECT_PATIENT_KEYS = """
SELECT patient_id, wrapped_key FROM patient_keys
WHERE organization_id = $1 AND kek_id <> $2 AND patient_id > $3
ORDER BY patient_id
LIMIT $4
"""
# Conditional on the wrapped key read: a row erased or rewritten since then is left alone.
_UPDATE_PATIENT_KEYS = """
UPDATE patient_keys AS k
SET wrapped_key = n.new_key, kek_id = $4, rewrapped_at = $5
FROM unnest($1::uuid[], $2::bytea[], $3::bytea[]) AS n(patient_id, old_key, new_key)
WHERE k.patient_id = n.patient_id AND k.organization_id = $6 AND k.wrapped_key = n.old_key
"""


@dataclass(frozen=True)
class RotationReport:
    rewrapped_patient_keys: int
    rewrapped_index_keys: int
    # Master key id -> rows (patient keys and index keys) not under the primary after the run; empty when done.
    remaining: dict[str, int]
    seconds: float


@dataclass(frozen=True)
class Rewrapped:
    owner_id: uuid.UUID
    old: bytes
    new: bytes


# --- patient data keys and organization index keys ----------------------------------------------------------


async def rewrap_keys(
    database: Database,
    key_ring: KeyRing,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    on_progress: Callable[[int, int], Awaitable[None] | None] | None = None,
) -> RotationReport:
    """Re-wrap every patient data key and organization index key that is not under ``key_ring.primary_kid``.

    ``on_progress(done, total)`` is called after each batch with the rows handled so far (re-wrapped or left
    because they changed or do not open) and the rows found to do; the total grows if writers add rows under an
    old key while the run goes on."""
    if batch_size < 1:
        raise ValueError("the batch size must be at least 1")
    started = time.perf_counter()
    primary = key_ring.primary_kid
    organizations = await organization_ids(database)
    to_do: dict[uuid.UUID, int] = {}
    for organization_id in organizations:
        left = await _count_not_under(database, organization_id, primary)
        if left:
            to_do[organization_id] = sum(left.values())
    progress = _Progress(sum(to_do.values()), on_progress)
    patient_keys = index_keys = 0
    remaining: Counter[str] = Counter()
    for organization_id in to_do:
        index_keys += await _rewrap_index_key(database, key_ring, organization_id, progress)
        for _ in range(_MAX_SWEEPS):
            done = await _sweep_patient_keys(database, key_ring, organization_id, batch_size, progress)
            patient_keys += done
            left = await _count_not_under(database, organization_id, primary)
            if not left or not done:
                break
        remaining.update(left)
    remaining = Counter({kid: count for kid, count in remaining.items() if count})
    if remaining:
        log.warning("key_rotation_incomplete", primary=primary, remaining=dict(remaining))
    return RotationReport(
        rewrapped_patient_keys=patient_keys,
        rewrapped_index_keys=index_keys,
        remaining=dict(remaining),
        seconds=time.perf_counter() - started,
    )


class _Progress:
    def __init__(self, total: int, callback: Callable[[int, int], Awaitable[None] | None] | None) -> None:
        self.total = total
        self.done = 0
        self._callback = callback

    async def advance(self, rows: int) -> None:
        self.done += rows
        self.total = max(self.total, self.done)
        if self._callback is not None:
            # Called between batches, with no transaction open: a caller may await here (a test pacing readers).
            reported = self._callback(self.done, self.total)
            if inspect.isawaitable(reported):
                await reported


async def organization_ids(database: Database) -> list[uuid.UUID]:
    """Every organization, read in the platform scope (the only scope that sees them all)."""
    async with database.unit_of_work() as session:
        await enter_platform_scope(session)
        return list(await session.scalars(select(Organization.id).order_by(Organization.id)))


async def _count_not_under(database: Database, organization_id: uuid.UUID, primary: str) -> Counter[str]:
    """Patient keys and the index key of one organization not under ``primary``, by master key id."""
    counts: Counter[str] = Counter()
    async with database.unit_of_work() as session:
        await enter_organization(session, organization_id)
        for model in (PatientKey, OrganizationIndexKey):
            rows = await session.execute(
                select(model.kek_id, func.count())
                .where(model.organization_id == organization_id, model.kek_id != primary)
                .group_by(model.kek_id)
            )
            counts.update(dict(rows.all()))
    return counts


async def _rewrap_index_key(
    database: Database, key_ring: KeyRing, organization_id: uuid.UUID, progress: _Progress
) -> int:
    primary = key_ring.primary_kid
    async with database.unit_of_work() as session:
        await enter_organization(session, organization_id)
        wrapped = await session.scalar(
            select(OrganizationIndexKey.wrapped_key).where(
                OrganizationIndexKey.organization_id == organization_id, OrganizationIndexKey.kek_id != primary
            )
        )
        if wrapped is None:
            return 0
        rewrapped = rewrap_rows(key_ring, organization_id, INDEX_KEYS_TABLE, [(organization_id, wrapped)])
        changed = 0
        if rewrapped:
            result = await session.execute(
                update(OrganizationIndexKey)
                .where(
                    OrganizationIndexKey.organization_id == organization_id,
                    OrganizationIndexKey.wrapped_key == wrapped,
                )
                .values(wrapped_key=rewrapped[0].new, kek_id=primary, rewrapped_at=utcnow())
                .execution_options(synchronize_session=False)
            )
            changed = result.rowcount  # type: ignore[attr-defined]
    await progress.advance(1)
    return changed


async def _sweep_patient_keys(
    database: Database, key_ring: KeyRing, organization_id: uuid.UUID, batch_size: int, progress: _Progress
) -> int:
    """One pass over the organization's patient keys in ``patient_id`` order; returns how many it re-wrapped."""
    after = _BEFORE_ALL
    changed = 0
    while True:
        async with database.unit_of_work() as session:
            await enter_organization(session, organization_id)
            rows = await read_patient_key_batch(session, organization_id, key_ring.primary_kid, after, batch_size)
            if not rows:
                return changed
            changed += await write_patient_key_batch(
                session,
                organization_id,
                key_ring.primary_kid,
                rewrap_rows(key_ring, organization_id, PATIENTS_TABLE, rows),
            )
        await progress.advance(len(rows))
        after = rows[-1][0]
        if len(rows) < batch_size:
            return changed


# The three steps of one batch, public so that a test can let the world change between reading and writing.


async def read_patient_key_batch(
    session: AsyncSession, organization_id: uuid.UUID, primary_kid: str, after: uuid.UUID, limit: int
) -> list[tuple[uuid.UUID, bytes]]:
    """The next ``limit`` patient keys after ``after`` (by ``patient_id``) that are not under the primary."""
    if _is_postgresql(session):
        driver = await session.run_sync(driver_connection)
        return [
            (row[0], row[1])
            for row in await driver.fetch(_SELECT_PATIENT_KEYS, organization_id, primary_kid, after, limit)
        ]
    rows = await session.execute(
        select(PatientKey.patient_id, PatientKey.wrapped_key)
        .where(
            PatientKey.organization_id == organization_id,
            PatientKey.kek_id != primary_kid,
            PatientKey.patient_id > after,
        )
        .order_by(PatientKey.patient_id)
        .limit(limit)
    )
    return [(patient_id, wrapped) for patient_id, wrapped in rows]


def rewrap_rows(
    key_ring: KeyRing, organization_id: uuid.UUID, owner_table: str, rows: Sequence[tuple[uuid.UUID, bytes]]
) -> list[Rewrapped]:
    """Each wrapped key opened with the master key it names and wrapped again under the primary. A key that does
    not open is left out (and stays where it is): rotation never destroys what it cannot read."""
    result = []
    unreadable = 0
    for owner_id, wrapped in rows:
        try:
            new = rewrap_data_key(
                key_ring, wrapped, organization_id=organization_id, owner_table=owner_table, owner_id=owner_id
            )
        except DecryptionError:
            unreadable += 1
            continue
        result.append(Rewrapped(owner_id, wrapped, new))
    if unreadable:
        log.warning("key_rotation_unreadable_keys", table=owner_table, count=unreadable)
    return result


async def write_patient_key_batch(
    session: AsyncSession, organization_id: uuid.UUID, primary_kid: str, rewrapped: Sequence[Rewrapped]
) -> int:
    """Store re-wrapped keys where each row still holds the key that was read; returns the rows changed."""
    if not rewrapped:
        return 0
    now = utcnow()
    if _is_postgresql(session):
        driver = await session.run_sync(driver_connection)
        status: str = await driver.execute(
            _UPDATE_PATIENT_KEYS,
            [row.owner_id for row in rewrapped],
            [row.old for row in rewrapped],
            [row.new for row in rewrapped],
            primary_kid,
            now,
            organization_id,
        )
        return int(status.rsplit(" ", 1)[1])
    table = PatientKey.__table__
    statement = (
        update(table)
        .where(
            table.c.organization_id == organization_id,
            table.c.patient_id == bindparam("b_patient_id"),
            table.c.wrapped_key == bindparam("b_old"),
        )
        .values(wrapped_key=bindparam("b_new"), kek_id=primary_kid, rewrapped_at=now)
    )
    result = await session.execute(
        statement, [{"b_patient_id": row.owner_id, "b_old": row.old, "b_new": row.new} for row in rewrapped]
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


def _is_postgresql(session: AsyncSession) -> bool:
    return session.get_bind().dialect.name == "postgresql"


# --- values sealed straight under the ring ------------------------------------------------------------------


@dataclass(frozen=True)
class SealedColumn:
    """A column whose values are sealed with ``KeyRing.seal`` and ``associated_data(table, column, row id[,
    organization id])``, as at its call site. The servers open these themselves (a TOTP code, a signing key),
    so they are re-sealed only once every server runs a ring that holds the new primary."""

    table: str
    column: str
    id_column: str
    # Bound to an organization, both in the associated data and by row-level security (which admits such rows
    # only in their organization's scope); the others are re-sealed in the platform scope.
    organization_scoped: bool

    @property
    def name(self) -> str:
        return f"{self.table}.{self.column}"

    def place(self, row_id: object, organization_id: object) -> bytes:
        return associated_data(self.table, self.column, row_id, organization_id if self.organization_scoped else None)


SEALED_COLUMNS: tuple[SealedColumn, ...] = (
    # identity/tokens.py: associated_data("signing_keys", "private_key_sealed", kid)
    SealedColumn("signing_keys", "private_key_sealed", "kid", organization_scoped=False),
    # identity/service.py: associated_data("users", "mfa_secret_sealed", user id)
    SealedColumn("users", "mfa_secret_sealed", "id", organization_scoped=False),
    # access/break_glass.py: associated_data("break_glass_grants", "reason_sealed", grant id, organization id)
    SealedColumn("break_glass_grants", "reason_sealed", "id", organization_scoped=True),
    # patients/erasure.py: associated_data("patients", "legal_hold_reason_sealed", patient id, organization id)
    SealedColumn("patients", "legal_hold_reason_sealed", "id", organization_scoped=True),
    # patients/accounts.py: associated_data("patient_registrations", "details_sealed", registration id, org id)
    SealedColumn("patient_registrations", "details_sealed", "id", organization_scoped=True),
    # scheduling/service.py: associated_data("appointments", "reason_sealed", appointment id, organization id)
    SealedColumn("appointments", "reason_sealed", "id", organization_scoped=True),
)


@dataclass(frozen=True)
class ResealReport:
    # "table.column" -> values re-sealed under the primary
    resealed: dict[str, int]
    # "table.column" -> master key id -> values still sealed under another key after the run; empty when done
    remaining: dict[str, dict[str, int]]
    seconds: float


def sealed_header(kid: str) -> bytes:
    """The first bytes of every value ``KeyRing.seal`` writes under ``kid``."""
    return bytes([1, len(kid)]) + kid.encode()


def _sealed_kid(prefix: bytes) -> str:
    if len(prefix) < 2 or prefix[0] != 1:
        return "?"
    return prefix[2 : 2 + prefix[1]].decode("ascii", errors="replace")


def _table(name: str) -> Table:
    # Imported here: the aggregate imports every domain's models, and this module is imported by some of them.
    from sehat.models import metadata

    return metadata.tables[name]


async def reseal_values(
    database: Database,
    key_ring: KeyRing,
    *,
    columns: Sequence[SealedColumn] = SEALED_COLUMNS,
    batch_size: int = 500,
) -> ResealReport:
    """Open every value of ``columns`` not sealed under the primary and seal it again under the primary, one
    short transaction per batch, each UPDATE conditional on the value read (a value rewritten meanwhile, such
    as a second factor enrolled again, keeps its new value). A value that does not open is left as it is."""
    started = time.perf_counter()
    resealed: Counter[str] = Counter({column.name: 0 for column in columns})
    remaining: dict[str, Counter[str]] = {}
    for organization_id, scoped in _scopes(await organization_ids(database), columns):
        done, left = await _reseal_scope(database, key_ring, scoped, organization_id, batch_size)
        resealed.update(done)
        for name, counts in left.items():
            remaining.setdefault(name, Counter()).update(counts)
    return ResealReport(
        resealed=dict(resealed),
        remaining={name: dict(counts) for name, counts in remaining.items() if counts},
        seconds=time.perf_counter() - started,
    )


def _scopes(
    organizations: Sequence[uuid.UUID], columns: Sequence[SealedColumn]
) -> list[tuple[uuid.UUID | None, list[SealedColumn]]]:
    """The platform scope with the columns it reaches, then each organization with the organizations' columns:
    one organization's columns are all handled in the same transactions."""
    platform = [column for column in columns if not column.organization_scoped]
    scoped = [column for column in columns if column.organization_scoped]
    return ([(None, platform)] if platform else []) + ([(org, scoped) for org in organizations] if scoped else [])


async def _enter(session: AsyncSession, organization_id: uuid.UUID | None) -> None:
    if organization_id is None:
        await enter_platform_scope(session)
    else:
        await enter_organization(session, organization_id)


def _sealed_values(sealed: SealedColumn, organization_id: uuid.UUID | None, *, not_under: str | None) -> Any:
    """The column's sealed values in one organization (or all, for a platform-scoped column), only those not
    sealed under ``not_under`` if given. Filtered by the header, so no value has to be fetched to be skipped."""
    table = _table(sealed.table)
    value = table.c[sealed.column]
    # An empty value seals nothing: erasure leaves one where the column may not be NULL.
    condition = and_(value.is_not(None), func.length(value) > 0)
    if not_under is not None:
        header = sealed_header(not_under)
        condition = and_(condition, func.substr(value, 1, len(header)) != header)
    if organization_id is not None:
        condition = and_(condition, table.c.organization_id == organization_id)
    return condition


async def _reseal_scope(
    database: Database,
    key_ring: KeyRing,
    columns: Sequence[SealedColumn],
    organization_id: uuid.UUID | None,
    batch_size: int,
) -> tuple[Counter[str], dict[str, Counter[str]]]:
    """Re-seal the columns in one scope, a batch of each per transaction; returns what was re-sealed and, by
    column and master key id, what is still not under the primary."""
    primary = key_ring.primary_kid
    resealed: Counter[str] = Counter()
    after: dict[str, Any] = {}
    pending = list(columns)
    while True:
        async with database.unit_of_work() as session:
            await _enter(session, organization_id)
            for sealed in list(pending):
                table = _table(sealed.table)
                row_id, value = table.c[sealed.id_column], table.c[sealed.column]
                statement = select(row_id, value).where(_sealed_values(sealed, organization_id, not_under=primary))
                if sealed.name in after:
                    statement = statement.where(row_id > after[sealed.name])
                rows = (await session.execute(statement.order_by(row_id).limit(batch_size))).all()
                resealed[sealed.name] += await _reseal_rows(session, key_ring, sealed, organization_id, rows)
                if len(rows) < batch_size:
                    pending.remove(sealed)
                else:
                    after[sealed.name] = rows[-1][0]
            if not pending:
                # Counted in the transaction that made the last changes, which sees them: what is left did not
                # open, or was sealed meanwhile by a server whose primary is still the old key.
                left: dict[str, Counter[str]] = {}
                for sealed in columns:
                    left[sealed.name] = await _sealed_kids(session, sealed, organization_id, not_under=primary)
                return resealed, left


async def _reseal_rows(
    session: AsyncSession,
    key_ring: KeyRing,
    sealed: SealedColumn,
    organization_id: uuid.UUID | None,
    rows: Sequence[Any],
) -> int:
    table = _table(sealed.table)
    row_id, value = table.c[sealed.id_column], table.c[sealed.column]
    changed = unreadable = 0
    for identifier, old in rows:
        place = sealed.place(identifier, organization_id)
        try:
            new = key_ring.seal(key_ring.open(old, place), place)
        except DecryptionError:
            unreadable += 1
            continue
        # These tables are small (accounts, signing keys, holds): one statement per value is cheap enough.
        result = await session.execute(
            update(table).where(row_id == identifier, value == old).values({sealed.column: new})
        )
        changed += int(result.rowcount)  # type: ignore[attr-defined]
    if unreadable:
        log.warning("key_rotation_unreadable_sealed_values", column=sealed.name, count=unreadable)
    return changed


async def _sealed_kids(
    session: AsyncSession, sealed: SealedColumn, organization_id: uuid.UUID | None, *, not_under: str | None
) -> Counter[str]:
    """Values of the column by the master key id in their header (``?`` for a header sehat did not write)."""
    prefix = func.substr(_table(sealed.table).c[sealed.column], 1, _SEALED_HEADER_MAX)
    found = await session.scalars(select(prefix).where(_sealed_values(sealed, organization_id, not_under=not_under)))
    return Counter(_sealed_kid(bytes(value)) for value in found)


# --- what still names which master key ----------------------------------------------------------------------


@dataclass(frozen=True)
class KeyUsage:
    """How many stored values name each master key id, to tell whether an old master key can be retired."""

    primary: str
    ring: tuple[str, ...]
    patient_keys: dict[str, int]
    index_keys: dict[str, int]
    # "table.column" -> master key id -> values
    sealed: dict[str, dict[str, int]]
    # The audit log cannot be re-keyed (entries are append-only): these master keys stay needed to verify it.
    audit_entries: dict[str, int]
    audit_seals: dict[str, int]
    audit_checkpoints: dict[str, int] = field(default_factory=dict)

    def served_by(self, kid: str) -> dict[str, int]:
        """What a server still opens with ``kid``: when empty, servers can drop it from their ring."""
        needs = {"patient_keys": self.patient_keys.get(kid, 0), "organization_index_keys": self.index_keys.get(kid, 0)}
        needs.update({name: counts.get(kid, 0) for name, counts in self.sealed.items()})
        return {name: count for name, count in needs.items() if count}

    def audited_by(self, kid: str) -> dict[str, int]:
        """What ``sehat audit verify`` still checks with ``kid``: keep the key (offline) while this is not empty."""
        needs = {
            "audit_events": self.audit_entries.get(kid, 0),
            "audit_seals": self.audit_seals.get(kid, 0),
            "audit_checkpoints": self.audit_checkpoints.get(kid, 0),
        }
        return {name: count for name, count in needs.items() if count}

    def as_json(self) -> dict[str, Any]:
        return {
            "primary": self.primary,
            "ring": list(self.ring),
            "patient_keys": self.patient_keys,
            "organization_index_keys": self.index_keys,
            "sealed": self.sealed,
            "audit_entries": self.audit_entries,
            "audit_seals": self.audit_seals,
            "audit_checkpoints": self.audit_checkpoints,
            "retirable": {
                kid: {"servers": self.served_by(kid), "audit": self.audited_by(kid)}
                for kid in self.ring
                if kid != self.primary
            },
        }


async def key_usage(database: Database, key_ring: KeyRing, *, checkpoint_file: Path | None = None) -> KeyUsage:
    """Counted in one transaction in the platform scope and one per organization (its keys and sealed values)."""
    sealed: dict[str, Counter[str]] = {column.name: Counter() for column in SEALED_COLUMNS}
    async with database.unit_of_work() as session:
        await enter_platform_scope(session)
        for column in SEALED_COLUMNS:
            if not column.organization_scoped:
                sealed[column.name].update(await _sealed_kids(session, column, None, not_under=None))
        entries = await session.execute(select(AuditEvent.mac_kid, func.count()).group_by(AuditEvent.mac_kid))
        audit_entries: dict[str, int] = dict(entries.all())  # type: ignore[arg-type]
        seals = await session.execute(select(AuditSeal.chain_kid, func.count()).group_by(AuditSeal.chain_kid))
        audit_seals: dict[str, int] = dict(seals.all())  # type: ignore[arg-type]
    patient_keys: Counter[str] = Counter()
    index_keys: Counter[str] = Counter()
    for organization_id in await organization_ids(database):
        async with database.unit_of_work() as session:
            await enter_organization(session, organization_id)
            for column in SEALED_COLUMNS:
                if column.organization_scoped:
                    sealed[column.name].update(await _sealed_kids(session, column, organization_id, not_under=None))
            for model, counts in ((PatientKey, patient_keys), (OrganizationIndexKey, index_keys)):
                rows = await session.execute(
                    select(model.kek_id, func.count())
                    .where(model.organization_id == organization_id)
                    .group_by(model.kek_id)
                )
                counts.update(dict(rows.all()))
    return KeyUsage(
        primary=key_ring.primary_kid,
        ring=key_ring.key_ids,
        patient_keys=dict(patient_keys),
        index_keys=dict(index_keys),
        sealed={name: dict(counts) for name, counts in sealed.items()},
        audit_entries=audit_entries,
        audit_seals=audit_seals,
        audit_checkpoints=checkpoint_kids(checkpoint_file) if checkpoint_file is not None else {},
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{kid} {count}" for kid, count in sorted(counts.items())) or "-"


def status_lines(usage: KeyUsage) -> list[str]:
    """``sehat keys status``: what names each master key, then whether each older key can be retired."""
    rows = [
        ("patient data keys", usage.patient_keys),
        ("organization index keys", usage.index_keys),
        *sorted(usage.sealed.items()),
        ("audit entries (MAC key)", usage.audit_entries),
        ("audit seals (chain key)", usage.audit_seals),
        ("audit checkpoints (signing key)", usage.audit_checkpoints),
    ]
    ring = ", ".join(f"{kid} (primary)" if kid == usage.primary else kid for kid in usage.ring)
    width = max(len(name) for name, _ in rows)
    lines = [f"master key ring: {ring}"]
    lines += [f"{name:<{width}}  {_counts(counts)}" for name, counts in rows]
    return lines + retirement_lines(usage)


def retirement_lines(usage: KeyUsage) -> list[str]:
    """For each master key other than the primary, and each key named by stored values but missing from the
    ring: what still needs it."""
    named = set(usage.patient_keys) | set(usage.index_keys) | set(usage.audit_entries) | set(usage.audit_seals)
    named |= set(usage.audit_checkpoints) | {kid for counts in usage.sealed.values() for kid in counts}
    lines = []
    for kid in [*usage.ring[1:], *sorted(named - set(usage.ring))]:
        served = _counts(usage.served_by(kid)) if usage.served_by(kid) else ""
        audited = _counts(usage.audited_by(kid)) if usage.audited_by(kid) else ""
        if kid not in usage.ring:
            lines.append(f"{kid}: NOT IN THE RING, yet named by {served or audited}: those values do not open")
        elif served:
            lines.append(f"{kid}: servers still need it ({served}): run `sehat keys rotate` before retiring it")
        elif audited:
            lines.append(
                f"{kid}: wraps and seals nothing any more: servers may drop it from their ring; keep it where "
                f"`sehat audit verify` can use it, for the audit log names it ({audited})"
            )
        else:
            lines.append(f"{kid}: nothing names it any more: it can be retired")
    return lines


def checkpoint_kids(path: Path) -> dict[str, int]:
    """Signed audit checkpoints by the master key id their signing key derives from."""
    counts: Counter[str] = Counter()
    try:
        lines = path.read_bytes().splitlines()
    except FileNotFoundError:
        return {}
    for line in lines:
        try:
            kid = orjson.loads(line).get("kid")
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if isinstance(kid, str):
            counts[kid] += 1
    return dict(counts)


# --- a new master key in the development key file -----------------------------------------------------------

_NUMBERED_KID = re.compile(r"^(.*?)(\d*)$")


def next_key_id(existing: Sequence[str]) -> str:
    """The next free id in the primary's numbering: k1 -> k2, test7 -> test8; k<n> when that does not fit."""
    prefix = _NUMBERED_KID.match(existing[0]).group(1)  # type: ignore[union-attr]
    numbers = [int(match.group(2)) for kid in existing if (match := _NUMBERED_KID.match(kid)) and match.group(2)]
    for candidate_prefix in (prefix, "k"):
        number = max(numbers, default=0) + 1
        while f"{candidate_prefix}{number}" in existing:
            number += 1
        kid = f"{candidate_prefix}{number}"
        if len(kid) <= 32:
            return kid
    raise KeyRingError("no free master key id")  # unreachable: "k" plus a number always fits


def add_primary_key(path: Path) -> str:
    """Generate a master key and write it first in the key file, keeping every older key; returns its id.

    The file is replaced atomically (a server reloading it never reads half a ring) with mode 0600, under an
    exclusive lock, so two rotations at once cannot each add a key and lose the other's."""
    with _exclusive(path):
        text = path.read_text()
        ring = KeyRing.parse(text)
        kid = next_key_id(ring.key_ids)
        updated = KeyRing.generate_entry(kid) + "\n" + text + ("" if text.endswith("\n") else "\n")
        if KeyRing.parse(updated).key_ids != (kid, *ring.key_ids):
            raise KeyRingError("the updated key file would not hold every key")
        _replace(path, updated)
    return kid


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    while True:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX)
            # Another rotation may have replaced the file while we waited: lock the file that is there now.
            if os.fstat(descriptor).st_ino == os.stat(path).st_ino:
                yield
                return
        finally:
            os.close(descriptor)


def _replace(path: Path, text: str) -> None:
    previous = path.stat()
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w") as handle:
            if (previous.st_uid, previous.st_gid) != (os.getuid(), os.getgid()):
                # Run as root for a server running as its own account: that account must still read the file.
                os.fchown(handle.fileno(), previous.st_uid, previous.st_gid)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
