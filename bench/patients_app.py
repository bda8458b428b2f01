"""A benchmark build of sehat for measuring what field encryption costs a patient registration.

``SEHAT_BENCH_ENCRYPTION=on`` (the default) serves the real app unchanged. ``off`` serves the same app with a
vault that stores every identifying field as plaintext and its data key unwrapped, so the two builds differ by
the cryptography alone: the same routes, validation, normalization, MRN counter, blind indexes (still HMACs
under the organization's wrapped index key, as the brief of the comparison asks), audit entry and rows
written, the key row included. Only the benchmark serves this module; sehat itself has no way to turn
encryption off.
"""

from __future__ import annotations

import os
import uuid

from fastapi import FastAPI

from sehat.app import create_app
from sehat.core.crypto import FieldCipher, Identifier, load_key_ring, new_data_key
from sehat.patients.models import PatientKey
from sehat.patients.vault import PatientVault

ENCRYPTION_SWITCH = "SEHAT_BENCH_ENCRYPTION"
# Stored as the key row's key id, so rows the plaintext build wrote are told apart from real ones at a glance.
PLAINTEXT_KEY_ID = "plaintext"


class PlaintextCipher(FieldCipher):
    """Stores values as they are: what the registry would cost without AES-GCM."""

    __slots__ = ()

    def __init__(self) -> None:  # no key: nothing is encrypted
        pass

    def __repr__(self) -> str:
        return "PlaintextCipher()"

    def encrypt(
        self, value: str | bytes, *, organization_id: Identifier, table: str, column: str, row_id: Identifier
    ) -> bytes:
        return value.encode() if isinstance(value, str) else bytes(value)

    def decrypt(
        self, ciphertext: bytes, *, organization_id: Identifier, table: str, column: str, row_id: Identifier
    ) -> bytes:
        return bytes(ciphertext)


class PlaintextVault(PatientVault):
    """Data keys are neither used nor wrapped; the blind-index key is the real one (``PatientVault.index_key``)."""

    def new_patient_key(self, organization_id: uuid.UUID, patient_id: uuid.UUID) -> tuple[FieldCipher, PatientKey]:
        # The key row is still written, with a key of the same size, so both builds insert the same rows.
        row = PatientKey(
            patient_id=patient_id, organization_id=organization_id, wrapped_key=new_data_key(), kek_id=PLAINTEXT_KEY_ID
        )
        return PlaintextCipher(), row

    def open_patient_key(self, organization_id: uuid.UUID, patient_id: uuid.UUID, wrapped: bytes) -> FieldCipher:
        return PlaintextCipher()


def create_bench_app() -> FastAPI:
    app = create_app()
    if os.environ.get(ENCRYPTION_SWITCH, "on") == "off":
        settings = app.state.settings
        # Set before the lifespan runs, which then keeps it instead of building the real vault.
        app.state.patient_vault = PlaintextVault(load_key_ring(settings), phone_region=settings.default_phone_region)
    return app
