"""Correcting a patient is versioned: the caller sends the version it read (If-Match), a stale one is refused
with 412 and overwrites nothing, and the blind indexes follow the change."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.patients.conftest import Desk


async def _patch(desk: Desk, patient: dict[str, Any], body: dict[str, Any], if_match: str | None) -> Any:
    headers = {**desk.front_office, **({"If-Match": if_match} if if_match is not None else {})}
    return await desk.api.client.patch(f"/api/v1/patients/{patient['id']}", headers=headers, json=body)


async def _search(desk: Desk, **params: Any) -> list[str]:
    response = await desk.api.client.get("/api/v1/patients", headers=desk.front_office, params=params)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def test_an_update_with_the_current_version_changes_the_record_and_its_indexes(desk: Desk) -> None:
    patient = await desk.register()
    response = await _patch(desk, patient, {"phone": "+91 99887 76655", "family_name": "Khan"}, '"1"')
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["version"] == 2 and response.headers["etag"] == '"2"'
    assert updated["phone"] == "+919988776655" and updated["family_name"] == "Khan"
    assert updated["given_name"] == "Ayesha"
    assert await _search(desk, phone="+919988776655") == [patient["id"]]
    assert await _search(desk, phone=patient["phone"]) == []
    assert await _search(desk, name="Ayesha Khan", birth_date="1987-04-12") == [patient["id"]]
    assert await _search(desk, name="Ayesha Siddiqui", birth_date="1987-04-12") == []
    read = await desk.api.client.get(f"/api/v1/patients/{patient['id']}", headers=desk.front_office)
    assert read.json()["phone"] == "+919988776655"


async def test_an_update_without_if_match_is_refused_with_428(desk: Desk) -> None:
    patient = await desk.register()
    response = await _patch(desk, patient, {"family_name": "Khan"}, None)
    assert response.status_code == 428
    assert response.json()["code"] == "if_match_required"


async def test_a_stale_version_is_refused_with_412_and_changes_nothing(desk: Desk) -> None:
    patient = await desk.register()
    assert (await _patch(desk, patient, {"family_name": "Khan"}, '"1"')).status_code == 200
    stale = await _patch(desk, patient, {"family_name": "Malik"}, '"1"')
    assert stale.status_code == 412
    read = await desk.api.client.get(f"/api/v1/patients/{patient['id']}", headers=desk.front_office)
    assert read.json()["family_name"] == "Khan" and read.json()["version"] == 2


async def test_of_two_concurrent_updates_of_one_version_exactly_one_wins(desk: Desk) -> None:
    patient = await desk.register()
    results = await asyncio.gather(
        *(_patch(desk, patient, {"family_name": name}, '"1"') for name in ("Khan", "Malik", "Qureshi", "Butt"))
    )
    statuses = sorted(response.status_code for response in results)
    assert statuses == [200, 412, 412, 412]
    winner = next(response.json()["family_name"] for response in results if response.status_code == 200)
    read = await desk.api.client.get(f"/api/v1/patients/{patient['id']}", headers=desk.front_office)
    assert read.json()["family_name"] == winner and read.json()["version"] == 2


async def test_required_fields_cannot_be_cleared_and_status_moves_only_between_active_and_deceased(desk: Desk) -> None:
    patient = await desk.register()
    cleared = await _patch(desk, patient, {"given_name": None}, '"1"')
    assert cleared.status_code == 422
    assert [error["field"] for error in cleared.json()["errors"]] == ["given_name"]
    assert (await _patch(desk, patient, {"status": "merged"}, '"1"')).status_code == 422
    deceased = await _patch(desk, patient, {"status": "deceased"}, '"1"')
    assert deceased.status_code == 200 and deceased.json()["status"] == "deceased"
    assert (await _patch(desk, patient, {"email": None}, '"2"')).json()["email"] is None
