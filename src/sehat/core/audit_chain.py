"""Sealing the audit log into a hash chain, signing checkpoints, and verifying it all (see core/audit.py)."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import orjson
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import exists, select, text
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
    entry_mac,
)
from sehat.core.clock import utcnow
from sehat.core.crypto import DecryptionError, KeyRing
from sehat.core.db import Database, after_commit

log = structlog.get_logger(__name__)

_SEAL_BATCH = 5_000
_STREAM_BATCH = 10_000
# Any constant will do: it names the one lock all sealers on all servers contend for.
_SEALER_LOCK_ID = 0x5E4A7A0D17


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


class AuditChain:
    def __init__(self, key_ring: KeyRing, checkpoint_file: Path, settle_seconds: float = 5.0) -> None:
        self._key_ring = key_ring
        self.checkpoint_file = Path(checkpoint_file)
        self.settle = timedelta(seconds=settle_seconds)

    # --- sealing --------------------------------------------------------------------------------------

    async def seal(self, database: Database) -> int:
        """Seal every settled, unsealed entry in id order; one sealer at a time across all servers."""
        sealed = 0
        while True:
            async with database.unit_of_work() as session:
                if not await self._take_sealer_lock(session):
                    return sealed
                batch = await self._seal_batch(session)
            sealed += batch
            if batch < _SEAL_BATCH:
                return sealed

    async def _take_sealer_lock(self, session: AsyncSession) -> bool:
        if session.bind.dialect.name != "postgresql":  # type: ignore[union-attr]
            return True  # SQLite: the write transaction (BEGIN IMMEDIATE) already excludes other sealers
        return bool(await session.scalar(text("SELECT pg_try_advisory_xact_lock(:lock)"), {"lock": _SEALER_LOCK_ID}))

    async def _seal_batch(self, session: AsyncSession) -> int:
        head = (
            await session.execute(
                select(AuditSeal.chain_index, AuditSeal.chain_hash).order_by(AuditSeal.chain_index.desc()).limit(1)
            )
        ).first()
        index, previous = (head[0], head[1]) if head else (0, GENESIS)
        pending = (
            await session.scalars(
                select(AuditEvent)
                .where(~exists().where(AuditSeal.event_id == AuditEvent.id))
                .where(AuditEvent.occurred_at <= utcnow() - self.settle)
                .order_by(AuditEvent.id)
                .limit(_SEAL_BATCH)
            )
        ).all()
        chain_kid, chain_key = self._key_ring.derive(CHAIN_PURPOSE)
        mac_keys: dict[str, bytes] = {}
        now = utcnow()
        for event in pending:
            if not self._mac_is_valid(event, mac_keys):
                # Never seal what the application did not write; verification reports it as inserted.
                log.warning("audit_entry_with_invalid_mac_not_sealed", event_id=event.id)
                continue
            index += 1
            previous = chain_step(chain_key, previous, event.mac)
            session.add(
                AuditSeal(chain_index=index, event_id=event.id, chain_kid=chain_kid, chain_hash=previous, sealed_at=now)
            )
        if pending:
            head_index, head_hash = index, previous

            async def checkpoint() -> None:
                self.write_checkpoint(head_index, head_hash)

            after_commit(session, checkpoint)
        return len(pending)

    def _mac_is_valid(self, event: AuditEvent, keys: dict[str, bytes]) -> bool:
        key = keys.get(event.mac_kid)
        if key is None:
            try:
                key = keys[event.mac_kid] = self._key_ring.derive(MAC_PURPOSE, event.mac_kid)[1]
            except DecryptionError:
                return False
        return event.mac == entry_mac(key, canonical_content(event))

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
        chain_keys: dict[str, bytes] = {}
        mac_keys: dict[str, bytes] = {}
        async with database.unit_of_work(write=False) as session:
            expected_index, previous, resync = 1, GENESIS, False
            rows = await session.stream(
                select(AuditSeal, AuditEvent)
                .outerjoin(AuditEvent, AuditEvent.id == AuditSeal.event_id)
                .order_by(AuditSeal.chain_index)
                .execution_options(yield_per=_STREAM_BATCH)
            )
            async for seal, event in rows:
                report.sealed += 1
                if seal.chain_index != expected_index:
                    missing = f"{expected_index}" + (
                        f"-{seal.chain_index - 1}" if seal.chain_index - 1 > expected_index else ""
                    )
                    report.findings.append(
                        Finding("deleted", f"chain entries {missing} were deleted", chain_index=expected_index)
                    )
                    resync = True
                key = chain_keys.get(seal.chain_kid)
                if key is None:
                    key = chain_keys[seal.chain_kid] = self._key_ring.derive(CHAIN_PURPOSE, seal.chain_kid)[1]
                if event is None:
                    report.findings.append(
                        Finding(
                            "deleted",
                            f"the entry sealed at {seal.chain_index} was deleted",
                            chain_index=seal.chain_index,
                            event_id=seal.event_id,
                        )
                    )
                elif not self._mac_is_valid(event, mac_keys):
                    report.findings.append(
                        Finding(
                            "edited",
                            f"the entry sealed at {seal.chain_index} was edited",
                            chain_index=seal.chain_index,
                            event_id=event.id,
                        )
                    )
                elif not resync and chain_step(key, previous, event.mac) != seal.chain_hash:
                    report.findings.append(
                        Finding(
                            "reordered",
                            f"the chain breaks at {seal.chain_index}: entries were swapped, moved or replaced",
                            chain_index=seal.chain_index,
                            event_id=event.id,
                        )
                    )
                if checkpoint and seal.chain_index == checkpoint[0] and seal.chain_hash != checkpoint[1]:
                    report.findings.append(
                        Finding(
                            "rewritten",
                            f"the chain up to checkpoint {checkpoint[0]} was rewritten",
                            chain_index=seal.chain_index,
                        )
                    )
                previous, resync = seal.chain_hash, False
                expected_index = seal.chain_index + 1
            unsealed = await session.stream_scalars(
                select(AuditEvent).where(~exists().where(AuditSeal.event_id == AuditEvent.id)).order_by(AuditEvent.id)
            )
            # Unsealed entries with a valid MAC are simply waiting for the sealer; a seal removed from the middle
            # shows as a gap in the chain, one removed from the end against the checkpoint.
            async for event in unsealed:
                report.unsealed += 1
                if not self._mac_is_valid(event, mac_keys):
                    report.findings.append(
                        Finding(
                            "inserted",
                            f"entry id {event.id} was not written by sehat (no valid MAC)",
                            event_id=event.id,
                        )
                    )
        if checkpoint and expected_index - 1 < checkpoint[0]:
            report.findings.append(
                Finding(
                    "truncated",
                    f"the log ends at {expected_index - 1} but a checkpoint records {checkpoint[0]} entries",
                    chain_index=expected_index,
                )
            )
        return report
