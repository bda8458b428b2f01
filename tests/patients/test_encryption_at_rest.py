"""Patient data at rest is ciphertext: no identifying value appears in any column of any table, a ciphertext
moved to another row or column does not decrypt, and a tampered one fails the read with a generic 500 and an
alert instead of showing garbage or part of a record."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select, update

from sehat.access.models import Alert
from sehat.core.audit import AuditEvent
from sehat.core.crypto import DecryptionError
from sehat.models import metadata
from sehat.patients.models import ENCRYPTED_FIELDS, Patient, PatientKey
from sehat.patients.service import PATIENTS_TABLE
from tests.patients.conftest import Desk

# Every identifying value of the default body, in the forms the system might store it.
SECRETS = (
    "Ayesha",
    "Siddiqui",
    "1987-04-12",
    "9812345678",
    "ayesha.siddiqui@example.org",
    "Jail Road",
    "Lahore",
    "234567890123",
    "Imran",
    "3001234567",
    "ur-PK",
    "00000001",
)


def _contains(value: Any, secret: str) -> bool:
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        return secret.encode() in raw
    return secret.lower() in str(value).lower()


async def test_raw_sql_shows_no_plaintext_of_any_encrypted_field_in_any_table(desk: Desk) -> None:
    await desk.register()
    staff_email = desk.tenant.emails["front_office"]
    found: list[tuple[str, str, str]] = []
    async with desk.api.unit_of_work() as session:
        for table in metadata.sorted_tables:
            for row in (await session.execute(select(table))).mappings():
                for column, value in row.items():
                    found.extend(
                        (table.name, column, secret) for secret in (*SECRETS, staff_email) if _contains(value, secret)
                    )
        stored = (await session.execute(select(Patient))).scalars().one()
    # The scan sees clear text where it is: staff e-mail addresses are not patient data and are stored as is.
    assert found == [("users", "email", staff_email)]
    # And the check can see: every encrypted column holds a value, none of them the plaintext.
    assert all(getattr(stored, name) for name in ENCRYPTED_FIELDS if name != "gender") and stored.gender


async def _read(desk: Desk, patient_id: str) -> Any:
    return await desk.api.client.get(f"/api/v1/patients/{patient_id}", headers=desk.admin)


async def test_a_ciphertext_copied_to_another_patient_or_column_does_not_decrypt(desk: Desk) -> None:
    first = await desk.register()
    second = await desk.register(given_name="Bilal", phone="+919876543210", email=None, national_id=None)
    async with desk.api.unit_of_work() as session:
        source = await session.get(Patient, uuid.UUID(first["id"]))
        target = await session.get(Patient, uuid.UUID(second["id"]))
        wrapped = await session.get(PatientKey, target.id)
        cipher = desk.api.app.state.patient_vault.open_patient_key(
            target.organization_id, target.id, wrapped.wrapped_key
        )
        # Under the right key but in the wrong place: the associated data names row and column.
        own_name = target.given_name
        for column in ("family_name", "phone"):
            try:
                cipher.decrypt(
                    own_name,
                    organization_id=target.organization_id,
                    table=PATIENTS_TABLE,
                    column=column,
                    row_id=target.id,
                )
            except DecryptionError:
                continue
            raise AssertionError(f"given_name ciphertext decrypted as {column}")
        stolen_name = source.given_name
        await session.execute(update(Patient).where(Patient.id == target.id).values(given_name=stolen_name))
    response = await _read(desk, second["id"])
    assert response.status_code == 500
    assert "Ayesha" not in response.text and "Bilal" not in response.text


async def test_a_tampered_ciphertext_gives_a_generic_500_an_alert_and_a_failed_access_entry(desk: Desk) -> None:
    patient = await desk.register()
    async with desk.api.unit_of_work() as session:
        stored = await session.get(Patient, uuid.UUID(patient["id"]))
        flipped = bytearray(stored.phone)
        flipped[-1] ^= 0x01
        await session.execute(update(Patient).where(Patient.id == stored.id).values(phone=bytes(flipped)))
    response = await _read(desk, patient["id"])
    assert response.status_code == 500
    body = response.json()
    assert body["code"] == "internal_error"
    assert set(body) == {"type", "title", "status", "detail", "code"}
    assert "Ayesha" not in response.text and "+91" not in response.text
    async with desk.api.unit_of_work() as session:
        alerts = (await session.scalars(select(Alert).where(Alert.patient_id == stored.id))).all()
        failures = (
            await session.scalars(
                select(AuditEvent.outcome).where(
                    AuditEvent.patient_id == stored.id, AuditEvent.action == "patient.read"
                )
            )
        ).all()
    assert [(alert.kind, alert.severity) for alert in alerts] == [("patient_data_unreadable", "critical")]
    assert failures == ["failure"]


async def test_a_wrapped_data_key_moved_to_another_patient_does_not_open(desk: Desk) -> None:
    first = await desk.register()
    second = await desk.register(given_name="Bilal", phone="+919876543210", email=None, national_id=None)
    async with desk.api.unit_of_work() as session:
        first_key = await session.get(PatientKey, uuid.UUID(first["id"]))
        await session.execute(
            update(PatientKey)
            .where(PatientKey.patient_id == uuid.UUID(second["id"]))
            .values(wrapped_key=first_key.wrapped_key)
        )
    assert (await _read(desk, second["id"])).status_code == 500
    assert (await _read(desk, first["id"])).status_code == 200
