"""Merging a duplicate registration: nothing is lost, the duplicate points to the survivor, and both keep
their histories."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from sehat.core.audit import AuditEvent
from sehat.identity.models import User
from tests.patients.conftest import Desk


async def _merge(desk: Desk, duplicate: dict[str, Any], survivor_id: str) -> Any:
    return await desk.api.client.post(
        f"/api/v1/patients/{duplicate['id']}/merge", headers=desk.admin, json={"survivor_id": survivor_id}
    )


async def test_a_duplicate_is_marked_merged_and_points_to_the_survivor(desk: Desk) -> None:
    survivor = await desk.register()
    duplicate = await desk.register(phone="+919812345670", email=None, national_id=None)
    account = await desk.api.add_patient_account(
        desk.tenant.organization_id, "ayesha@patients.test", patient_id=uuid.UUID(duplicate["id"])
    )
    response = await _merge(desk, duplicate, survivor["id"])
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "merged"
    assert response.json()["merged_into_id"] == survivor["id"]
    read = await desk.api.client.get(f"/api/v1/patients/{duplicate['id']}", headers=desk.admin)
    # Its own data is still there, readable, and says where the patient went.
    assert read.json()["merged_into_id"] == survivor["id"] and read.json()["mrn"] == duplicate["mrn"]
    hits = await desk.api.client.get("/api/v1/patients", headers=desk.admin, params={"mrn": duplicate["mrn"]})
    assert [(hit["id"], hit["merged_into_id"]) for hit in hits.json()["items"]] == [(duplicate["id"], survivor["id"])]
    async with desk.api.unit_of_work() as session:
        linked = await session.scalar(select(User.patient_id).where(User.email == "ayesha@patients.test"))
        merges = (
            await session.scalars(select(AuditEvent.patient_id).where(AuditEvent.action == "patient.merge"))
        ).all()
    # The patient's account now opens the surviving record.
    assert account is not None and linked == uuid.UUID(survivor["id"])
    assert sorted(map(str, merges)) == sorted([duplicate["id"], survivor["id"]])


async def test_a_merged_record_cannot_be_changed_or_merged_again(desk: Desk) -> None:
    survivor = await desk.register()
    duplicate = await desk.register(phone=None, email=None, national_id=None)
    assert (await _merge(desk, duplicate, survivor["id"])).status_code == 200
    assert (await _merge(desk, duplicate, survivor["id"])).status_code == 409
    into_merged = await _merge(desk, survivor, duplicate["id"])
    assert into_merged.status_code == 409
    change = await desk.api.client.patch(
        f"/api/v1/patients/{duplicate['id']}", headers={**desk.admin, "If-Match": '"2"'}, json={"family_name": "X"}
    )
    assert change.status_code == 409


async def test_a_patient_cannot_be_merged_into_itself_or_into_a_stranger(desk: Desk) -> None:
    patient = await desk.register()
    itself = await _merge(desk, patient, patient["id"])
    assert itself.status_code == 422
    stranger = await _merge(desk, patient, str(uuid.uuid4()))
    assert stranger.status_code == 422
    assert [error["field"] for error in stranger.json()["errors"]] == ["survivor_id"]


async def test_only_organization_administrators_merge(desk: Desk) -> None:
    survivor = await desk.register()
    duplicate = await desk.register(phone=None, email=None, national_id=None)
    response = await desk.api.client.post(
        f"/api/v1/patients/{duplicate['id']}/merge", headers=desk.front_office, json={"survivor_id": survivor["id"]}
    )
    assert response.status_code == 403
