"""The key machinery of the patient vault one server process holds: the master key ring, the organizations'
blind-index keys (unwrapped once and kept in memory, like the ring itself), and the region in which phone
numbers typed without a country code are read.

A patient's data key is created with the patient and stored wrapped in ``patient_keys``; every request that
reads a patient unwraps it into a :class:`~sehat.core.crypto.FieldCipher` for that request only.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.blind_index import IndexKind, blind_index
from sehat.core.crypto import (
    FieldCipher,
    KeyRing,
    new_data_key,
    open_field_cipher,
    unwrap_data_key,
    wrap_data_key,
    wrapped_key_id,
)
from sehat.core.db import insert_ignoring_conflicts
from sehat.patients.models import PATIENTS_TABLE, OrganizationIndexKey, PatientKey

INDEX_KEYS_TABLE = "organization_index_keys"


class PatientVault:
    def __init__(self, key_ring: KeyRing, *, phone_region: str) -> None:
        self.key_ring = key_ring
        self.phone_region = phone_region
        self._index_keys: dict[uuid.UUID, bytes] = {}

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
            self.key_ring, wrapped, organization_id=organization_id, owner_table=PATIENTS_TABLE, owner_id=patient_id
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
            self.key_ring,
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
