"""The key machinery of the patient vault one server process holds: the master key ring, the organizations'
blind-index keys (unwrapped once and kept in memory, like the ring itself), and the region in which phone
numbers typed without a country code are read.

A patient's data key is created with the patient and stored wrapped in ``patient_keys``; every request that
reads a patient unwraps it into a :class:`~sehat.core.crypto.FieldCipher` for that request only.

When the ring comes from a key file, ``sehat keys rotate`` may put a new master key first in that file and
re-wrap keys under it while this process runs with the ring it loaded at start. The vault then meets a
wrapped key naming a master key it does not know: it reads the file again (at most once a second) and retries,
so reads keep working and new patients' keys are wrapped under the new key from then on. A ring from the
environment cannot change under a running process; operators restart servers with the new ring first.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.blind_index import IndexKind, blind_index
from sehat.core.crypto import (
    DecryptionError,
    FieldCipher,
    KeyRing,
    KeyRingError,
    new_data_key,
    open_field_cipher,
    unwrap_data_key,
    wrap_data_key,
    wrapped_key_id,
)
from sehat.core.db import insert_ignoring_conflicts
from sehat.patients.models import PATIENTS_TABLE, OrganizationIndexKey, PatientKey
from sehat.settings import Settings

INDEX_KEYS_TABLE = "organization_index_keys"
# A wrapped key under a master key that is in no version of the file (tampering, a restored key table) must
# not make every read of it re-read the file.
KEY_FILE_RELOAD_SECONDS = 1.0

log = structlog.get_logger(__name__)


class PatientVault:
    def __init__(self, key_ring: KeyRing, *, phone_region: str, key_file: Path | None = None) -> None:
        self.key_ring = key_ring
        self.phone_region = phone_region
        self._index_keys: dict[uuid.UUID, bytes] = {}
        # Where the ring came from, if it can change under this process; None for a ring from the environment.
        self.key_file = key_file
        self._last_reload = float("-inf")

    @classmethod
    def for_settings(cls, key_ring: KeyRing, settings: Settings) -> PatientVault:
        """The vault for a server: one that follows the key file when the ring comes from a file."""
        key_file = None if settings.master_key is not None else settings.default_master_key_path()
        return cls(key_ring, phone_region=settings.default_phone_region, key_file=key_file)

    def _ring_for(self, wrapped: bytes) -> KeyRing:
        """The ring to open ``wrapped`` with: the current one, reloaded from the key file first if the wrapped key
        names a master key the current ring lacks (a rotation began after this process loaded its ring)."""
        if self.key_file is None:
            return self.key_ring
        try:
            kid = wrapped_key_id(wrapped)
        except DecryptionError:
            return self.key_ring  # not a wrapped key at all: opening it fails with the usual error
        if kid not in self.key_ring.key_ids:
            self.reload_key_ring()
        return self.key_ring

    def reload_key_ring(self) -> bool:
        """Read the key file again, unless that was done less than a second ago; whether the ring was replaced.

        Synchronous and without an await, so concurrent requests never see half a reload: the first one to meet
        the new key reloads, and the others find the new ring in place."""
        now = time.monotonic()
        if self.key_file is None or now - self._last_reload < KEY_FILE_RELOAD_SECONDS:
            return False
        self._last_reload = now
        try:
            ring = KeyRing.parse(self.key_file.read_text())
        except (OSError, KeyRingError) as exc:
            # Keep serving with the ring we have; the values it opens still open.
            log.warning("master_key_file_reload_failed", exc_type=type(exc).__name__)
            return False
        if ring.key_ids != self.key_ring.key_ids:
            log.info("master_key_ring_reloaded", primary=ring.primary_kid, key_ids=list(ring.key_ids))
        self.key_ring = ring
        return True

    def new_patient_key(self, organization_id: uuid.UUID, patient_id: uuid.UUID) -> tuple[FieldCipher, PatientKey]:
        """A fresh data key for a new patient: the cipher to encrypt with, and the row that stores it wrapped."""
        dek = new_data_key()
        wrapped = wrap_data_key(
            self.key_ring, dek, organization_id=organization_id, owner_table=PATIENTS_TABLE, owner_id=patient_id
        )
        row = PatientKey(
            patient_id=patient_id,
            organization_id=organization_id,
            wrapped_key=wrapped,
            kek_id=wrapped_key_id(wrapped),
        )
        return FieldCipher(dek), row

    def open_patient_key(self, organization_id: uuid.UUID, patient_id: uuid.UUID, wrapped: bytes) -> FieldCipher:
        """Raises ``DecryptionError`` when the wrapped key is not this patient's or was tampered with."""
        return open_field_cipher(
            self._ring_for(wrapped),
            wrapped,
            organization_id=organization_id,
            owner_table=PATIENTS_TABLE,
            owner_id=patient_id,
        )

    async def index_key(self, session: AsyncSession, organization_id: uuid.UUID) -> bytes:
        """The organization's blind-index key, created on first use. Unwrapped once per process: the key does
        not change when the master key rotates (only its wrapping does)."""
        key = self._index_keys.get(organization_id)
        if key is not None:
            return key
        wrapped = await session.scalar(
            select(OrganizationIndexKey.wrapped_key).where(OrganizationIndexKey.organization_id == organization_id)
        )
        if wrapped is None:
            fresh = wrap_data_key(
                self.key_ring,
                new_data_key(),
                organization_id=organization_id,
                owner_table=INDEX_KEYS_TABLE,
                owner_id=organization_id,
            )
            # Two servers may create it at once: the first insert wins and both use what is stored.
            await insert_ignoring_conflicts(
                session,
                OrganizationIndexKey,
                {"organization_id": organization_id, "wrapped_key": fresh, "kek_id": wrapped_key_id(fresh)},
                ["organization_id"],
            )
            wrapped = await session.scalar(
                select(OrganizationIndexKey.wrapped_key).where(OrganizationIndexKey.organization_id == organization_id)
            )
            assert wrapped is not None
        key = unwrap_data_key(
            self._ring_for(wrapped),
            wrapped,
            organization_id=organization_id,
            owner_table=INDEX_KEYS_TABLE,
            owner_id=organization_id,
        )
        self._index_keys[organization_id] = key
        return key

    @staticmethod
    def digests(key: bytes, values: Iterable[tuple[IndexKind, str]]) -> list[tuple[IndexKind, bytes]]:
        return [(kind, blind_index(key, kind, value)) for kind, value in values]
