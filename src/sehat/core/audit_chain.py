"""Sealing the audit log into a hash chain, signing checkpoints, and verifying it all (see core/audit.py).

**Verification** reads every entry once, in keyset batches of plain column values (no ORM objects). On
PostgreSQL it reads the session's own asyncpg connection: the entry's fields come as text (uuids, JSON and
the timestamp rendered by the server) and ``text_canonicalizer`` turns them into exactly the bytes
``canonical_content`` gives for the same row (a test holds the two to byte equality). The next batch is
requested before the current one is checked, so the server produces rows on one core while this process
hashes on the other. On SQLite (the laptop mode) the same walk runs over typed rows with
``canonical_content`` itself. Either way the findings, and their order, are those of the original walk.

**Sealing** looks only at ids above a floor below which every entry is known to be sealed (or refused); see
``AuditChain.seal_pass`` for why that bound never skips an entry whose transaction commits late.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import json
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import aclosing, contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import exists, func, literal_column, null, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.audit import (
    CHAIN_PURPOSE,
    CHECKPOINT_PURPOSE,
    GENESIS,
    MAC_PURPOSE,
    AuditEvent,
    AuditSeal,
    canonical_content,
    chain_step,
)
from sehat.core.clock import utcnow
from sehat.core.crypto import DecryptionError, KeyRing
from sehat.core.db import Database, after_commit, driver_connection
from sehat.core.tenant_scope import enter_platform_scope

log = structlog.get_logger(__name__)

_SEAL_BATCH = 5_000
# Rows per verification query, and rows checked between two looks at the socket. A batch is a few MB on the
# wire; between chunks the event loop reads what the server sent meanwhile, so it never stalls on a full buffer.
_VERIFY_BATCH = 10_000
_VERIFY_CHUNK = 1_000
# Any constant will do: it names the one lock all sealers on all servers contend for.
_SEALER_LOCK_ID = 0x5E4A7A0D17
# A pass over the whole table now and then, whatever the floor says: it re-reports entries the sealer refused
# and bounds the damage of any assumption below that stops holding (for instance a sequence given a CACHE).
_FULL_SCAN_SECONDS = 600.0
_OBSERVATIONS_KEPT = 64


@dataclass(frozen=True, slots=True)
class Finding:
    kind: str  # edited | deleted | reordered | inserted | truncated | rewritten | bad_checkpoint
    message: str
    chain_index: int | None = None
    event_id: int | None = None

    @property
    def position(self) -> tuple[int, int]:
        # Chain order first; entries never sealed sort after the chain, by id.
        return (0, self.chain_index) if self.chain_index is not None else (1, self.event_id or 0)


@dataclass
class VerifyReport:
    sealed: int = 0
    unsealed: int = 0
    checkpoint_index: int | None = None
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    @property
    def first(self) -> Finding | None:
        return min(self.findings, key=lambda finding: finding.position) if self.findings else None


@dataclass(frozen=True, slots=True)
class SealPass:
    """What one ``seal_pass`` did. ``scanned_above`` is the floor it looked above (None: the whole table)."""

    sealed: int
    refused: int
    scanned_above: int | None


@dataclass(frozen=True, slots=True)
class _Observation:
    """Taken at the start of a sealing pass: the highest visible id, and the transactions that may still be
    inserting entries at or below it (see ``AuditChain.seal_pass``)."""

    number: int
    highest_id: int | None  # None: the table was empty
    inserters: frozenset[str]


# --- the bytes an entry's MAC covers, from text columns -----------------------------------------------------

# The content columns of a verification row (layout below): ``canonical_content``'s fields, rendered as text
# by PostgreSQL so that this process only decodes strings. uuid::text is the same lower-case hyphenated form
# as str(UUID). The timestamp is the UTC wall clock with six fractional digits, as datetime.isoformat() writes
# it except that isoformat() leaves the fraction out when it is zero (handled in text_canonicalizer). to_char
# costs the server more than the timestamp's own text form would, but that form would need more work here, and
# this process, not the server, is the one that limits the walk. Outside the years 1-9999, which Python cannot
# represent and sehat therefore never wrote, it is NULL, which no valid MAC covers. JSON columns come as their
# stored text and are parsed here, as SQLAlchemy parses them.
_PG_CONTENT_COLUMNS = (
    "e.event_uuid::text, "
    "CASE WHEN e.occurred_at >= '0001-01-01 00:00:00+00' AND e.occurred_at < '10000-01-01 00:00:00+00' "
    """THEN to_char(e.occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"') END, """
    "e.organization_id::text, e.actor_type, e.actor_id::text, e.actor_roles::text, e.action, e.resource_type, "
    "e.resource_id, e.patient_id::text, e.outcome, e.client_address, e.request_id, e.details::text"
)
# Every verification row has one layout, so one walk serves both queries and both backends: chain_index,
# sealed_event_id, chain_kid, chain_hash (NULLs for an unsealed entry), event_id (NULL when the sealed entry is
# gone), mac_kid, mac, then the content columns. The batch size is a literal, not a parameter, so that even a
# generic plan knows it reads a small slice of the index. The first batch has no lower bound: ids and chain
# indices written by hand may be zero or negative.
_PG_CHAIN_BATCH = (
    "SELECT s.chain_index, s.event_id, s.chain_kid, s.chain_hash, e.id, e.mac_kid, e.mac, "  # noqa: S608
    f"{_PG_CONTENT_COLUMNS} FROM audit_seals s LEFT JOIN audit_events e ON e.id = s.event_id "
    "WHERE {after} ORDER BY s.chain_index LIMIT {limit}"
)
# Entries without a seal, in the ranges of ids the chain left out (see _Walk.gaps), in id order. The seal is
# looked up entry by entry: written as NOT EXISTS, the planner, which cannot know the ranges are narrow, hashes
# every seal first.
_PG_UNSEALED = (
    "SELECT NULL::bigint, NULL::bigint, NULL::text, NULL::bytea, e.id, e.mac_kid, e.mac, "  # noqa: S608
    f"{_PG_CONTENT_COLUMNS} FROM unnest($1::bigint[], $2::bigint[]) AS gap(low, high) "
    "JOIN audit_events e ON e.id BETWEEN gap.low AND gap.high "
    "WHERE (SELECT s.chain_index FROM audit_seals s WHERE s.event_id = e.id) IS NULL ORDER BY e.id"
)
# Settled entries without a seal, in id order, in the verification row layout (see _seal_batch_postgresql).
_PG_PENDING = (
    "SELECT NULL::bigint, NULL::bigint, NULL::text, NULL::bytea, e.id, e.mac_kid, e.mac, "  # noqa: S608
    f"{_PG_CONTENT_COLUMNS} FROM audit_events e WHERE e.occurred_at <= $1 {{after}} "
    "AND NOT EXISTS (SELECT 1 FROM audit_seals s WHERE s.event_id = e.id) "
    "ORDER BY e.id LIMIT {limit}"
)
# The walk reads in index order batch by batch: parallel workers started per batch and JIT compilation (the
# planner sees a join over the whole table) each cost more than they save here.
_PG_VERIFY_SETTINGS = "SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL jit = off"
_ROLES_CACHE_LIMIT = 1_024
# Ids are BIGINT: every id lies strictly between these two.
_BELOW_ANY_ID = -(2**63) - 1
_ABOVE_ANY_ID = 2**63

ContentOf = Callable[[Sequence[Any]], bytes]


def _json_value(document: str) -> Any:
    """A JSON column's value, read quickly: orjson where it accepts the text, else ``json.loads``.

    SQLAlchemy reads JSON columns with ``json.loads``. orjson reads the same text to the same value except for
    what a float cannot hold: NaN, infinities and out-of-range exponents it refuses (json.loads takes those
    here), and integers beyond 64 bits it reads as floats, which come out of ``orjson.dumps`` with an exponent
    ("e+"), so ``text_canonicalizer`` reads such content again with json.loads alone.
    """
    try:
        return orjson.loads(document)
    except orjson.JSONDecodeError:
        return json.loads(document)


def text_canonicalizer() -> ContentOf:
    """``canonical_content`` for a verification row whose columns PostgreSQL rendered as text (_ROW layout).

    Raises for a row sehat could not have written (a timestamp out of range, JSON that does not serialize);
    the walk treats that as an entry without a valid MAC, which it is.
    """
    roles_seen: dict[str, list[Any]] = {}
    dumps, sort_keys, loads, refused = orjson.dumps, orjson.OPT_SORT_KEYS, orjson.loads, orjson.JSONDecodeError

    def canonical(row: Sequence[Any]) -> bytes:
        (
            _,
            _,
            _,
            _,
            _,
            _,
            _,
            event_uuid,
            occurred_at,
            organization_id,
            actor_type,
            actor_id,
            actor_roles,
            action,
            resource_type,
            resource_id,
            patient_id,
            outcome,
            client_address,
            request_id,
            details,
        ) = row
        if occurred_at is None:
            raise ValueError("a timestamp sehat cannot have written")
        # The only "." in the rendered timestamp is the fraction's.
        occurred_at = occurred_at.replace(".000000", "")
        # A handful of distinct role lists cover almost every entry: parse and sort each once.
        roles = roles_seen.get(actor_roles)
        if roles is None:
            roles = sorted(_json_value(actor_roles))
            if len(roles_seen) < _ROLES_CACHE_LIMIT:
                roles_seen[actor_roles] = roles
        try:  # _json_value, written out: this runs once per entry
            details_value = loads(details)
        except refused:
            details_value = json.loads(details)
        content = dumps(
            [
                event_uuid,
                occurred_at,
                organization_id,
                actor_type,
                actor_id,
                roles,
                action,
                resource_type,
                resource_id,
                patient_id,
                outcome,
                client_address,
                request_id,
                details_value,
            ],
            option=sort_keys,
        )
        # A large float, or an integer beyond 64 bits that orjson read as one (see _json_value), is written with
        # "e+". The timestamp holds the only "+" of an ordinary entry, so look after it only: searching the
        # whole content for "e+" costs a tenth of the walk (every uuid is full of "e").
        if content.find(b"+", 6 + len(event_uuid) + len(occurred_at)) < 0:
            return content
        # Read both JSON columns again exactly as SQLAlchemy does. Rare; any other "+" merely takes this path too.
        return dumps(
            [
                event_uuid,
                occurred_at,
                organization_id,
                actor_type,
                actor_id,
                sorted(json.loads(actor_roles)),
                action,
                resource_type,
                resource_id,
                patient_id,
                outcome,
                client_address,
                request_id,
                json.loads(details),
            ],
            option=sort_keys,
        )

    return canonical


def _typed_canonical(row: Sequence[Any]) -> bytes:
    # SQLite rows are typed by SQLAlchemy and labelled with AuditEvent's attribute names: the original function.
    return canonical_content(row)  # type: ignore[arg-type]


class PreparedHmac:
    """HMAC-SHA256 (RFC 2104) whose key has been absorbed once: each message copies two prepared hash states.

    ``hmac.digest`` sets up a new OpenSSL MAC context per call: 2.6 µs for a 360-byte entry on our 2-core
    machines, against 1.2 µs here. Tests hold it equal to ``entry_mac`` and ``chain_step``.
    """

    __slots__ = ("inner", "outer")

    def __init__(self, key: bytes) -> None:
        block = (hashlib.sha256(key).digest() if len(key) > 64 else key).ljust(64, b"\0")
        # The hash states after the key's inner and outer padded blocks; copied, never updated in place.
        self.inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in block))
        self.outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in block))

    def digest(self, message: bytes) -> bytes:
        inner = self.inner.copy()
        inner.update(message)
        outer = self.outer.copy()
        outer.update(inner.digest())
        return outer.digest()


# --- where verification rows come from -----------------------------------------------------------------------


class _PostgresRows:
    """Verification rows from the session's asyncpg connection (inside the session's transaction)."""

    prefetch = True

    def __init__(self, connection: Any) -> None:
        self._connection = connection
        self.content: ContentOf = text_canonicalizer()

    async def chain_after(self, chain_index: int | None) -> Sequence[Sequence[Any]]:
        return await self._fetch(_PG_CHAIN_BATCH, "s.chain_index", chain_index)

    async def unsealed_within(self, gaps: Sequence[tuple[int, int]]) -> AsyncIterator[Sequence[Sequence[Any]]]:
        # One statement through a cursor: however many entries lack a seal, they are read once, batch by batch.
        cursor = await self._connection.cursor(_PG_UNSEALED, [low for low, _ in gaps], [high for _, high in gaps])
        while rows := await cursor.fetch(_VERIFY_BATCH):
            yield rows

    async def _fetch(self, template: str, key: str, after: int | None) -> Sequence[Sequence[Any]]:
        if after is None:
            rows: Sequence[Sequence[Any]] = await self._connection.fetch(
                template.format(after="true", limit=_VERIFY_BATCH)
            )
        else:
            rows = await self._connection.fetch(template.format(after=f"{key} > $1", limit=_VERIFY_BATCH), after)
        return rows


_CONTENT_COLUMNS = (
    AuditEvent.event_uuid,
    AuditEvent.occurred_at,
    AuditEvent.organization_id,
    AuditEvent.actor_type,
    AuditEvent.actor_id,
    AuditEvent.actor_roles,
    AuditEvent.action,
    AuditEvent.resource_type,
    AuditEvent.resource_id,
    AuditEvent.patient_id,
    AuditEvent.outcome,
    AuditEvent.client_address,
    AuditEvent.request_id,
    AuditEvent.details,
)


def _is_sealed(event_id: Any) -> Any:
    return exists().where(AuditSeal.event_id == event_id)


class _SQLiteRows:
    """The same rows through SQLAlchemy, typed, for the laptop mode: simple rather than fast."""

    prefetch = False  # one session, one statement at a time

    def __init__(self, session: AsyncSession) -> None:
        self._session = session
        self.content: ContentOf = _typed_canonical

    async def chain_after(self, chain_index: int | None) -> Sequence[Sequence[Any]]:
        statement = (
            select(
                AuditSeal.chain_index,
                AuditSeal.event_id.label("sealed_event_id"),
                AuditSeal.chain_kid,
                AuditSeal.chain_hash,
                AuditEvent.id.label("event_id"),
                AuditEvent.mac_kid,
                AuditEvent.mac,
                *_CONTENT_COLUMNS,
            )
            .outerjoin(AuditEvent, AuditEvent.id == AuditSeal.event_id)
            .order_by(AuditSeal.chain_index)
            .limit(_VERIFY_BATCH)
        )
        if chain_index is not None:
            statement = statement.where(AuditSeal.chain_index > chain_index)
        return (await self._session.execute(statement)).all()

    async def unsealed_within(self, gaps: Sequence[tuple[int, int]]) -> AsyncIterator[Sequence[Sequence[Any]]]:
        # A laptop's log is small: every entry without a seal, whatever the ranges, is the same answer.
        statement = (
            select(
                null().label("chain_index"),
                null().label("sealed_event_id"),
                null().label("chain_kid"),
                null().label("chain_hash"),
                AuditEvent.id.label("event_id"),
                AuditEvent.mac_kid,
                AuditEvent.mac,
                *_CONTENT_COLUMNS,
            )
            .where(~_is_sealed(AuditEvent.id))
            .order_by(AuditEvent.id)
            .execution_options(yield_per=_VERIFY_BATCH)
        )
        async for rows in (await self._session.stream(statement)).partitions():
            yield rows


RowSource = _PostgresRows | _SQLiteRows


async def verification_rows(session: AsyncSession) -> RowSource:
    """Where ``AuditChain.verify`` reads its rows, in the session's transaction, which this starts."""
    await enter_platform_scope(session)
    if session.bind.dialect.name != "postgresql":  # type: ignore[union-attr]
        return _SQLiteRows(session)
    # One snapshot for the whole walk (a read-only transaction never fails to serialize): the search for
    # entries without a seal, which follows the chain, sees the same table the chain was read from. The
    # isolation level is set as the transaction begins; the platform scope follows at once (tenant_scope's
    # after_begin hook), before any read.
    await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
    connection = await session.run_sync(driver_connection)
    await connection.execute(_PG_VERIFY_SETTINGS)
    return _PostgresRows(connection)


async def _batches(
    fetch: Callable[[int | None], Awaitable[Sequence[Sequence[Any]]]], start: int | None, key: int, *, prefetch: bool
) -> AsyncIterator[Sequence[Sequence[Any]]]:
    """Keyset batches (``key`` is the column the query orders by). With ``prefetch`` the next batch is asked
    for before this one is handed out: the server reads and sends it while the caller checks this one."""
    pending: asyncio.Future[Sequence[Sequence[Any]]] | None = asyncio.ensure_future(fetch(start))
    try:
        while pending is not None:
            rows = await pending
            pending = None
            if not rows:
                return
            follow = len(rows) == _VERIFY_BATCH
            if follow and prefetch:
                pending = asyncio.ensure_future(fetch(rows[-1][key]))
            yield rows
            if follow and not prefetch:
                pending = asyncio.ensure_future(fetch(rows[-1][key]))
    finally:
        if pending is not None:
            # The connection runs one statement at a time: let this one end before the transaction does.
            with suppress(Exception):
                await pending


class _Keys:
    """Derived keys by key id as prepared HMAC states, each derived once; None for an id the ring lacks."""

    def __init__(self, key_ring: KeyRing, purpose: str) -> None:
        self._key_ring = key_ring
        self._purpose = purpose
        self.by_kid: dict[str, PreparedHmac | None] = {}

    def get(self, kid: str) -> PreparedHmac | None:
        key = self.by_kid.get(kid, False)
        if key is not False:
            return key
        try:
            key = PreparedHmac(self._key_ring.derive(self._purpose, kid)[1])
        except DecryptionError:
            key = None
        self.by_kid[kid] = key
        return key


def _row_mac_is_valid(mac_keys: _Keys, content: ContentOf, row: Sequence[Any]) -> bool:
    """Whether a row of the verification layout carries the MAC sehat would have written for it."""
    key = mac_keys.get(row[5])
    if key is None:
        return False
    try:
        rendered = content(row)
    except Exception:  # whatever the row holds, content that cannot be rendered was not written by sehat
        return False
    return key.digest(rendered) == row[6]


class _Walk:
    """The verification state machine, fed rows in chain order and then the unsealed entries in id order."""

    def __init__(
        self, key_ring: KeyRing, checkpoint: tuple[int, bytes] | None, report: VerifyReport, content: ContentOf
    ) -> None:
        self.report = report
        self.checkpoint = checkpoint
        self.content = content
        self.mac_keys = _Keys(key_ring, MAC_PURPOSE)
        self.chain_keys = _Keys(key_ring, CHAIN_PURPOSE)
        self.expected_index = 1
        self.previous = GENESIS
        self.resync = False
        # The highest id of a sealed entry so far, and the ranges of ids below it that no sealed entry had
        # when that id came: an entry without a seal can only be in one of those ranges or above the highest.
        # The chain comes in about id order, so the ranges are few (ids of transactions that rolled back); an
        # id that comes late falls in a range already noted, which stays a candidate.
        self.highest_found = _BELOW_ANY_ID
        self.gaps: list[tuple[int, int]] = []

    def mac_is_valid(self, row: Sequence[Any]) -> bool:
        return _row_mac_is_valid(self.mac_keys, self.content, row)

    def chain(self, rows: Sequence[Sequence[Any]]) -> None:
        # The hot loop, a million rows in a few seconds. State lives in locals while it runs, and the common
        # case (a key seen before, content that renders) calls nothing but the content function and hashlib:
        # each Python-level call here costs about 5% of the walk's time.
        findings = self.report.findings
        checkpoint_index, checkpoint_hash = self.checkpoint or (None, None)
        content_of = self.content
        mac_keys, chain_keys = self.mac_keys.by_kid, self.chain_keys.by_kid
        expected_index, previous, resync = self.expected_index, self.previous, self.resync
        highest_found, gaps = self.highest_found, self.gaps
        for row in rows:
            chain_index, sealed_event_id, chain_kid, chain_hash, event_id, mac_kid, mac = row[0:7]
            if chain_index != expected_index:
                missing = f"{expected_index}" + (f"-{chain_index - 1}" if chain_index - 1 > expected_index else "")
                findings.append(Finding("deleted", f"chain entries {missing} were deleted", chain_index=expected_index))
                resync = True
            if event_id is None:
                findings.append(
                    Finding(
                        "deleted",
                        f"the entry sealed at {chain_index} was deleted",
                        chain_index=chain_index,
                        event_id=sealed_event_id,
                    )
                )
            else:
                if event_id > highest_found:
                    if event_id != highest_found + 1:
                        gaps.append((highest_found + 1, event_id - 1))
                    highest_found = event_id
                mac_valid = False
                mac_key = mac_keys.get(mac_kid) or self.mac_keys.get(mac_kid)
                if mac_key is not None:
                    try:
                        content = content_of(row)
                    except Exception:  # whatever the row holds, content that cannot be rendered was not sehat's
                        content = None
                    if content is not None:
                        inner = mac_key.inner.copy()
                        inner.update(content)
                        outer = mac_key.outer.copy()
                        outer.update(inner.digest())
                        mac_valid = outer.digest() == mac
                if not mac_valid:
                    findings.append(
                        Finding(
                            "edited",
                            f"the entry sealed at {chain_index} was edited",
                            chain_index=chain_index,
                            event_id=event_id,
                        )
                    )
                elif not resync:
                    chain_key = chain_keys.get(chain_kid) or self.chain_keys.get(chain_kid)
                    if chain_key is None:
                        findings.append(
                            Finding(
                                "reordered",
                                f"the seal at {chain_index} names a chain key the key ring does not hold",
                                chain_index=chain_index,
                                event_id=event_id,
                            )
                        )
                    else:
                        inner = chain_key.inner.copy()
                        inner.update(previous + mac)
                        outer = chain_key.outer.copy()
                        outer.update(inner.digest())
                        if outer.digest() != chain_hash:
                            findings.append(
                                Finding(
                                    "reordered",
                                    f"the chain breaks at {chain_index}: entries were swapped, moved or replaced",
                                    chain_index=chain_index,
                                    event_id=event_id,
                                )
                            )
            if chain_index == checkpoint_index and chain_hash != checkpoint_hash:
                findings.append(
                    Finding(
                        "rewritten",
                        f"the chain up to checkpoint {checkpoint_index} was rewritten",
                        chain_index=chain_index,
                    )
                )
            previous, resync = chain_hash, False
            expected_index = chain_index + 1
        self.report.sealed += len(rows)
        self.expected_index, self.previous, self.resync = expected_index, previous, resync
        self.highest_found = highest_found

    def unsealed_ranges(self) -> list[tuple[int, int]]:
        above = [(self.highest_found + 1, _ABOVE_ANY_ID - 1)] if self.highest_found < _ABOVE_ANY_ID - 1 else []
        return [*self.gaps, *above]

    def unsealed(self, rows: Sequence[Sequence[Any]]) -> None:
        # Unsealed entries with a valid MAC are simply waiting for the sealer; a seal removed from the middle
        # shows as a gap in the chain, one removed from the end against the checkpoint.
        self.report.unsealed += len(rows)
        for row in rows:
            if not self.mac_is_valid(row):
                event_id = row[4]
                self.report.findings.append(
                    Finding(
                        "inserted", f"entry id {event_id} was not written by sehat (no valid MAC)", event_id=event_id
                    )
                )

    def finish(self) -> None:
        checkpoint = self.checkpoint
        if checkpoint and self.expected_index - 1 < checkpoint[0]:
            self.report.findings.append(
                Finding(
                    "truncated",
                    f"the log ends at {self.expected_index - 1} but a checkpoint records {checkpoint[0]} entries",
                    chain_index=self.expected_index,
                )
            )


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the walk.

    The walk allocates a few containers per entry (its row, the parsed JSON) that never form cycles and are
    freed by reference counting as soon as their chunk is checked, so memory stays bounded. With the collector
    on, every full collection re-traverses all objects of the process while millions of rows stream through:
    measured, 1.2 of the 5.1 µs this process spends per entry. Only cyclic garbage made meanwhile waits.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


async def _feed(
    fetch: Callable[[int | None], Awaitable[Sequence[Sequence[Any]]]],
    start: int | None,
    key: int,
    prefetch: bool,
    check: Callable[[Sequence[Sequence[Any]]], None],
) -> None:
    async with aclosing(_batches(fetch, start, key, prefetch=prefetch)) as batches:
        async for rows in batches:
            for offset in range(0, len(rows), _VERIFY_CHUNK):
                check(rows[offset : offset + _VERIFY_CHUNK])
                # Lets the event loop read the next batch off the socket while this one is checked.
                await asyncio.sleep(0)


async def _check_unsealed(source: RowSource, gaps: Sequence[tuple[int, int]], walk: _Walk) -> None:
    async with aclosing(source.unsealed_within(gaps)) as batches:
        async for rows in batches:
            for offset in range(0, len(rows), _VERIFY_CHUNK):
                walk.unsealed(rows[offset : offset + _VERIFY_CHUNK])
                await asyncio.sleep(0)


@dataclass(frozen=True, slots=True)
class _Batch:
    sealed: int
    refused: int
    examined: int
    last_id: int | None


class AuditChain:
    def __init__(
        self,
        key_ring: KeyRing,
        checkpoint_file: Path,
        settle_seconds: float = 5.0,
        *,
        full_scan_seconds: float = _FULL_SCAN_SECONDS,
    ) -> None:
        self._key_ring = key_ring
        self.checkpoint_file = Path(checkpoint_file)
        self.settle = timedelta(seconds=settle_seconds)
        self.full_scan_seconds = full_scan_seconds
        # Sealer state of this process (see seal_pass). Nothing is known at start-up: the first pass scans all.
        self._floor: int | None = None
        self._next_full_scan = 0.0
        self._observed = 0
        self._observations: deque[_Observation] = deque(maxlen=_OBSERVATIONS_KEPT)

    # --- sealing --------------------------------------------------------------------------------------

    async def seal(self, database: Database) -> int:
        """Seal settled, unsealed entries in id order; the number examined (sealed, or refused for a bad MAC)."""
        done = await self.seal_pass(database)
        return done.sealed + done.refused

    async def seal_pass(self, database: Database) -> SealPass:
        """One sealing pass; one sealer at a time across all servers (an advisory lock on PostgreSQL).

        An idle pass must not scan the table. It looks only at ids above a floor, below which every entry is
        known to be sealed or refused. The floor must never pass an entry whose transaction is still open: ids
        are taken in insertion order, but a transaction can commit long after a later id was sealed.

        At its start each pass observes the highest visible id H and, on PostgreSQL, the transactions holding
        the lock any INSERT into audit_events takes before it draws an id (RowExclusiveLock, read from pg_locks
        after the snapshot that gave H). An id at or below H that was not visible was drawn before H's (ids come
        from a sequence without a cache, so in order), by a transaction already holding that lock: one of the
        observed inserters, or one that ended before the lock table was read and whose entry every later
        snapshot sees. So once none of an observation's inserters still holds the lock, every entry up to its H
        is visible to the statements that follow, and a pass that starts after that and completes has sealed
        each of them, refused it, or found it not yet settled. The floor then rises to H, or to just below the
        lowest entry left waiting to settle. On SQLite the sealer holds the database's only write lock, so no
        insert is ever in flight and a pass's own observation is complete at once.

        The first pass of a process, and one every ``full_scan_seconds``, scans the whole table regardless.
        """
        started = time.monotonic()
        full = started >= self._next_full_scan
        floor = None if full else self._floor
        cutoff = utcnow() - self.settle
        sealed = refused = 0
        after: int | None = floor
        observation: _Observation | None = None
        inserters_now: frozenset[str] = frozenset()
        lowest_unsettled: int | None = None
        while True:
            async with database.unit_of_work() as session:
                await enter_platform_scope(session)
                if not await self._take_sealer_lock(session):
                    return SealPass(sealed, refused, floor)
                if observation is None:
                    highest, inserters_now = await self._observe(session)
                    # Numbered in the order taken: under the sealer lock, so in the database's order too.
                    self._observed += 1
                    observation = _Observation(self._observed, highest, inserters_now)
                    self._observations.append(observation)
                batch = await self._seal_batch(session, after, cutoff)
                finished = batch.examined < _SEAL_BATCH
                if finished:
                    lowest_unsettled = await self._lowest_unsettled(session, floor, cutoff)
            sealed += batch.sealed
            refused += batch.refused
            after = batch.last_id
            if finished:
                break
        if full:
            self._next_full_scan = started + self.full_scan_seconds
        if observation is not None:
            self._raise_floor(observation, lowest_unsettled)
        return SealPass(sealed, refused, floor)

    def _raise_floor(self, own: _Observation, lowest_unsettled: int | None) -> None:
        # Complete: taken no later than this pass's own observation, and none of its inserters was still there
        # when this pass read the lock table, so every statement of this pass, its scan included, saw their
        # entries. An observation taken later than this pass's own could count transactions that ended after
        # this pass's scan, so it waits for a later pass.
        complete = [
            observation
            for observation in self._observations
            if observation.number <= own.number and not observation.inserters & own.inserters
        ]
        if not complete:
            return
        newest = max(complete, key=lambda observation: observation.number)
        if newest.highest_id is None:
            return
        candidate = newest.highest_id if lowest_unsettled is None else min(newest.highest_id, lowest_unsettled - 1)
        self._floor = candidate if self._floor is None else max(self._floor, candidate)
        for observation in list(self._observations):
            if observation.number < newest.number:
                self._observations.remove(observation)

    async def _observe(self, session: AsyncSession) -> tuple[int | None, frozenset[str]]:
        highest = select(func.max(AuditEvent.id)).scalar_subquery()
        if session.bind.dialect.name != "postgresql":  # type: ignore[union-attr]
            return await session.scalar(select(highest)), frozenset()
        # One statement: its snapshot gives the highest id, and pg_locks is read after that snapshot was taken.
        inserters = literal_column(
            "ARRAY(SELECT DISTINCT l.virtualtransaction FROM pg_locks l "
            "WHERE l.locktype = 'relation' AND l.relation = 'audit_events'::regclass "
            "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) "
            "AND l.mode = 'RowExclusiveLock')"
        )
        row = (await session.execute(select(highest, inserters))).one()
        return row[0], frozenset(row[1] or ())

    async def _lowest_unsettled(self, session: AsyncSession, floor: int | None, cutoff: datetime) -> int | None:
        statement = select(func.min(AuditEvent.id)).where(AuditEvent.occurred_at > cutoff, ~_is_sealed(AuditEvent.id))
        if floor is not None:
            statement = statement.where(AuditEvent.id > floor)
        lowest: int | None = await session.scalar(statement)
        return lowest

    async def _take_sealer_lock(self, session: AsyncSession) -> bool:
        if session.bind.dialect.name != "postgresql":  # type: ignore[union-attr]
            return True  # SQLite: the write transaction (BEGIN IMMEDIATE) already excludes other sealers
        return bool(await session.scalar(text("SELECT pg_try_advisory_xact_lock(:lock)"), {"lock": _SEALER_LOCK_ID}))

    async def _seal_batch(self, session: AsyncSession, after: int | None, cutoff: datetime) -> _Batch:
        if session.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
            return await self._seal_batch_postgresql(session, after, cutoff)
        statement = (
            select(AuditEvent)
            .where(AuditEvent.occurred_at <= cutoff, ~_is_sealed(AuditEvent.id))
            .order_by(AuditEvent.id)
            .limit(_SEAL_BATCH)
        )
        if after is not None:
            statement = statement.where(AuditEvent.id > after)
        pending = (await session.scalars(statement)).all()
        if not pending:
            return _Batch(0, 0, 0, after)
        head = (
            await session.execute(
                select(AuditSeal.chain_index, AuditSeal.chain_hash).order_by(AuditSeal.chain_index.desc()).limit(1)
            )
        ).first()
        index, previous = (head[0], head[1]) if head else (0, GENESIS)
        chain_kid, chain_key = self._key_ring.derive(CHAIN_PURPOSE)
        mac_keys = _Keys(self._key_ring, MAC_PURPOSE)
        now = utcnow()
        sealed = 0
        for event in pending:
            if not self._mac_is_valid(event, mac_keys):
                # Never seal what the application did not write; verification reports it as inserted.
                log.warning("audit_entry_with_invalid_mac_not_sealed", event_id=event.id)
                continue
            index += 1
            sealed += 1
            previous = chain_step(chain_key, previous, event.mac)
            session.add(
                AuditSeal(chain_index=index, event_id=event.id, chain_kid=chain_kid, chain_hash=previous, sealed_at=now)
            )
        if sealed:
            # A checkpoint only when the head moved: a batch of refused entries alone adds no line.
            head_index, head_hash = index, previous

            async def checkpoint() -> None:
                self.write_checkpoint(head_index, head_hash)

            after_commit(session, checkpoint)
        return _Batch(sealed, len(pending) - sealed, len(pending), pending[-1].id)

    async def _seal_batch_postgresql(self, session: AsyncSession, after: int | None, cutoff: datetime) -> _Batch:
        """The same batch without ORM objects, as the verifier reads: text columns on the session's asyncpg
        connection, MACs over ``text_canonicalizer``'s bytes, and the seals written with one COPY. Sealing runs
        beside the requests it seals for, so its cost per entry is a cost of every audited request."""
        connection = await session.run_sync(driver_connection)
        arguments: list[Any] = [cutoff] if after is None else [cutoff, after]
        query = _PG_PENDING.format(after="" if after is None else "AND e.id > $2", limit=int(_SEAL_BATCH))
        pending = await connection.fetch(query, *arguments)
        if not pending:
            return _Batch(0, 0, 0, after)
        head = await connection.fetchrow(
            "SELECT chain_index, chain_hash FROM audit_seals ORDER BY chain_index DESC LIMIT 1"
        )
        index, previous = (head["chain_index"], head["chain_hash"]) if head else (0, GENESIS)
        chain_kid, chain_key = self._key_ring.derive(CHAIN_PURPOSE)
        canonical = text_canonicalizer()
        mac_keys = _Keys(self._key_ring, MAC_PURPOSE)
        now = utcnow()
        seals: list[tuple[int, int, str, bytes, datetime]] = []
        for row in pending:
            if not _row_mac_is_valid(mac_keys, canonical, row):
                # Never seal what the application did not write; verification reports it as inserted.
                log.warning("audit_entry_with_invalid_mac_not_sealed", event_id=row[4])
                continue
            index += 1
            previous = chain_step(chain_key, previous, row[6])
            seals.append((index, row[4], chain_kid, previous, now))
        if seals:
            await connection.copy_records_to_table(
                "audit_seals",
                records=seals,
                columns=["chain_index", "event_id", "chain_kid", "chain_hash", "sealed_at"],
            )
            # A checkpoint only when the head moved: a batch of refused entries alone adds no line.
            head_index, head_hash = index, previous

            async def checkpoint() -> None:
                self.write_checkpoint(head_index, head_hash)

            after_commit(session, checkpoint)
        return _Batch(len(seals), len(pending) - len(seals), len(pending), pending[-1][4])

    @staticmethod
    def _mac_is_valid(event: AuditEvent, mac_keys: _Keys) -> bool:
        key = mac_keys.get(event.mac_kid)
        if key is None:
            return False
        try:
            content = canonical_content(event)
        except Exception:  # content that cannot be rendered was not written by sehat
            return False
        return event.mac == key.digest(content)

    # --- checkpoints ----------------------------------------------------------------------------------

    def _checkpoint_key(self, kid: str | None = None) -> tuple[str, Ed25519PrivateKey]:
        kid, seed = self._key_ring.derive(CHECKPOINT_PURPOSE, kid)
        return kid, Ed25519PrivateKey.from_private_bytes(seed)

    @staticmethod
    def _signed_text(index: int, chain_hash: str, at: str) -> bytes:
        return f"sehat-audit-checkpoint|{index}|{chain_hash}|{at}".encode()

    def write_checkpoint(self, index: int, chain_hash: bytes) -> None:
        kid, key = self._checkpoint_key()
        at = utcnow().isoformat()
        hash_hex = chain_hash.hex()
        signature = key.sign(self._signed_text(index, hash_hex, at))
        line = {
            "chain_index": index,
            "chain_hash": hash_hex,
            "at": at,
            "kid": kid,
            "signature": base64.b64encode(signature).decode(),
        }
        self.checkpoint_file.parent.mkdir(parents=True, exist_ok=True)
        with self.checkpoint_file.open("ab") as handle:
            handle.write(orjson.dumps(line) + b"\n")

    def latest_checkpoint(self, report: VerifyReport) -> tuple[int, bytes] | None:
        """The newest checkpoint whose signature holds; a line whose signature fails is itself a finding."""
        if not self.checkpoint_file.exists():
            return None
        latest: tuple[int, bytes] | None = None
        for number, raw in enumerate(self.checkpoint_file.read_bytes().splitlines(), start=1):
            try:
                line = orjson.loads(raw)
                _, key = self._checkpoint_key(line["kid"])
                key.public_key().verify(
                    base64.b64decode(line["signature"]),
                    self._signed_text(line["chain_index"], line["chain_hash"], line["at"]),
                )
                candidate = (int(line["chain_index"]), bytes.fromhex(line["chain_hash"]))
            except (ValueError, KeyError, TypeError, InvalidSignature, DecryptionError, orjson.JSONDecodeError):
                report.findings.append(Finding("bad_checkpoint", f"checkpoint line {number} is not validly signed"))
                continue
            if latest is None or candidate[0] >= latest[0]:
                latest = candidate
        return latest

    # --- verification ---------------------------------------------------------------------------------

    async def verify(self, database: Database) -> VerifyReport:
        """Walk the whole chain and every unsealed entry; report each place the log was tampered with."""
        report = VerifyReport()
        checkpoint = self.latest_checkpoint(report)
        report.checkpoint_index = checkpoint[0] if checkpoint else None
        with _collector_paused():
            async with database.unit_of_work() as session:
                source = await verification_rows(session)
                walk = _Walk(self._key_ring, checkpoint, report, source.content)
                await _feed(source.chain_after, None, 0, source.prefetch, walk.chain)
                # Unsealed entries are looked for where the chain left ids out, and above its highest: no join
                # over the whole table. In the same snapshot, so nothing sealed meanwhile is missed.
                await _check_unsealed(source, walk.unsealed_ranges(), walk)
        walk.finish()
        return report
