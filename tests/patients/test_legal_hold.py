"""Legal holds: an org admin holds a patient's data (the reason sealed under the key ring, bound to the row),
erasure is refused with 409 while the hold is on and changes nothing, and lifting it lets erasure proceed.
Placing and lifting are audited, never with the reason."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import func, select

from sehat.core.audit import AuditEvent
from sehat.core.crypto import DecryptionError, associated_data
from sehat.patients.erasure import read_hold_reason
from sehat.patients.models import ENCRYPTED_FIELDS, Patient, PatientKey, PatientSearchEntry
from tests.patients.conftest import Desk, open_desk

REASON = "Litigation hold, case 2026-CV-0042 (High Court, Lahore)"
ERASE = {"reason": "patient_request", "reference": "DSR-1001"}


async def hold(desk: Desk, patient_id: str, reason: str = REASON) -> dict[str, Any]:
    response = await desk.api.client.put(
        f"/api/v1/patients/{patient_id}/legal-hold", headers=desk.admin, json={"reason": reason}
    )
    assert response.status_code == 200, response.text
    return response.json()


async def _stored(desk: Desk, patient_id: str) -> tuple[Patient, bytes | None, int]:
    """The patient row, its wrapped key and its number of search entries, read from outside the app."""
    async with desk.api.unit_of_work() as session:
        patient = await session.get(Patient, uuid.UUID(patient_id))
        wrapped = await session.scalar(select(PatientKey.wrapped_key).where(PatientKey.patient_id == patient.id))
        entries = await session.scalar(
            select(func.count()).select_from(PatientSearchEntry).where(PatientSearchEntry.patient_id == patient.id)
        )
    assert patient is not None
    return patient, wrapped, entries


async def test_a_legal_hold_flags_the_patient_and_seals_its_reason_to_the_row(desk: Desk) -> None:
    patient = await desk.register()
    other = await desk.register(phone=None, email=None, national_id=None)
    placed = await hold(desk, patient["id"])
    assert placed["patient_id"] == patient["id"]
    assert placed["legal_hold"] is True and placed["legal_hold_since"] is not None
    read = await desk.api.client.get(f"/api/v1/patients/{patient['id']}", headers=desk.front_office)
    assert read.json()["legal_hold"] is True

    stored, _, _ = await _stored(desk, patient["id"])
    sealed = stored.legal_hold_reason_sealed
    assert sealed is not None and b"Litigation" not in sealed and b"Lahore" not in sealed
    key_ring = desk.api.auth.key_ring
    assert read_hold_reason(key_ring, stored) == REASON
    # Bound to this patient: moved to another row, it does not open.
    try:
        key_ring.open(
            sealed,
            associated_data("patients", "legal_hold_reason_sealed", uuid.UUID(other["id"]), stored.organization_id),
        )
    except DecryptionError:
        pass
    else:
        raise AssertionError("a hold reason opened for another patient")


async def test_erasure_under_legal_hold_is_refused_with_409_and_nothing_changes(desk: Desk) -> None:
    patient = await desk.register()
    await hold(desk, patient["id"])
    before, wrapped_before, entries_before = await _stored(desk, patient["id"])

    response = await desk.api.client.post(f"/api/v1/patients/{patient['id']}/erase", headers=desk.admin, json=ERASE)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "legal_hold"

    after, wrapped_after, entries_after = await _stored(desk, patient["id"])
    assert wrapped_after == wrapped_before and wrapped_after is not None
    assert entries_after == entries_before > 0
    assert {name: getattr(after, name) for name in ENCRYPTED_FIELDS} == {
        name: getattr(before, name) for name in ENCRYPTED_FIELDS
    }
    assert (after.status, after.erased_at, after.version) == ("active", None, before.version)
    read = await desk.api.client.get(f"/api/v1/patients/{patient['id']}", headers=desk.front_office)
    assert read.json()["given_name"] == "Ayesha"
    async with desk.api.unit_of_work() as session:
        erasures = await session.scalar(
            select(func.count())
            .select_from(AuditEvent)
            .where(AuditEvent.patient_id == before.id, AuditEvent.action == "patient.erase")
        )
    assert erasures == 0


async def test_a_hold_on_a_record_merged_into_the_patient_refuses_its_erasure_too(desk: Desk) -> None:
    survivor = await desk.register()
    duplicate = await desk.register(phone=None, email=None, national_id=None)
    merged = await desk.api.client.post(
        f"/api/v1/patients/{duplicate['id']}/merge", headers=desk.admin, json={"survivor_id": survivor["id"]}
    )
    assert merged.status_code == 200, merged.text
    await hold(desk, duplicate["id"])
    response = await desk.api.client.post(f"/api/v1/patients/{survivor['id']}/erase", headers=desk.admin, json=ERASE)
    assert response.status_code == 409
    assert response.json()["code"] == "legal_hold"
    _, wrapped, _ = await _stored(desk, survivor["id"])
    assert wrapped is not None


async def test_lifting_the_hold_lets_erasure_proceed(desk: Desk) -> None:
    patient = await desk.register()
    await hold(desk, patient["id"])
    lifted = await desk.api.client.delete(f"/api/v1/patients/{patient['id']}/legal-hold", headers=desk.admin)
    assert lifted.status_code == 200, lifted.text
    assert lifted.json() == {"patient_id": patient["id"], "legal_hold": False, "legal_hold_since": None}
    stored, _, _ = await _stored(desk, patient["id"])
    assert stored.legal_hold_reason_sealed is None
    response = await desk.api.client.post(f"/api/v1/patients/{patient['id']}/erase", headers=desk.admin, json=ERASE)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "erased"


async def test_placing_a_hold_again_keeps_its_start_and_replaces_the_reason(desk: Desk) -> None:
    patient = await desk.register()
    first = await hold(desk, patient["id"])
    second = await hold(desk, patient["id"], reason="Regulator inquiry REG-7")
    assert second["legal_hold_since"] == first["legal_hold_since"]
    stored, _, _ = await _stored(desk, patient["id"])
    assert read_hold_reason(desk.api.auth.key_ring, stored) == "Regulator inquiry REG-7"


async def test_placing_and_lifting_are_audited_without_the_reason(desk: Desk) -> None:
    patient = await desk.register()
    await hold(desk, patient["id"])
    await desk.api.client.delete(f"/api/v1/patients/{patient['id']}/legal-hold", headers=desk.admin)
    await desk.api.client.delete(f"/api/v1/patients/{patient['id']}/legal-hold", headers=desk.admin)
    async with desk.api.unit_of_work() as session:
        entries = (
            await session.scalars(
                select(AuditEvent)
                .where(AuditEvent.patient_id == uuid.UUID(patient["id"]), AuditEvent.action.like("patient.legal_hold%"))
                .order_by(AuditEvent.id)
            )
        ).all()
    facility = patient["registering_facility_id"]
    assert [(entry.action, entry.details) for entry in entries] == [
        ("patient.legal_hold.place", {"facility_id": facility, "renewed": False}),
        ("patient.legal_hold.lift", {"facility_id": facility, "was_held": True}),
        ("patient.legal_hold.lift", {"facility_id": facility, "was_held": False}),
    ]


async def test_only_holders_of_the_permission_in_the_same_organization_place_holds(desk: Desk) -> None:
    patient = await desk.register()
    url = f"/api/v1/patients/{patient['id']}/legal-hold"
    response = await desk.api.client.put(url, headers=desk.front_office, json={"reason": REASON})
    assert response.status_code == 403
    other = await open_desk(desk.api, "beta")
    for method, body in (("PUT", {"reason": REASON}), ("DELETE", None)):
        response = await desk.api.client.request(method, url, headers=other.admin, json=body)
        assert response.status_code == 404, response.text
    for reason in ("", "   ", "x" * 501):
        response = await desk.api.client.put(url, headers=desk.admin, json={"reason": reason})
        assert response.status_code == 422
        assert [error["field"] for error in response.json()["errors"]] == ["reason"]
    stored, _, _ = await _stored(desk, patient["id"])
    assert stored.legal_hold_since is None


async def test_an_erased_patient_cannot_be_held(desk: Desk) -> None:
    patient = await desk.register()
    erased = await desk.api.client.post(f"/api/v1/patients/{patient['id']}/erase", headers=desk.admin, json=ERASE)
    assert erased.status_code == 200, erased.text
    response = await desk.api.client.put(
        f"/api/v1/patients/{patient['id']}/legal-hold", headers=desk.admin, json={"reason": REASON}
    )
    assert response.status_code == 409
    assert response.json()["code"] == "patient_erased"
