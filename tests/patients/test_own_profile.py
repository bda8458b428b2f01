"""A patient reads their own record and corrects their contact details, never their identity, and never over
a change made meanwhile (GET and PATCH /api/v1/me/patient, issue 4 item 5)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from sehat.core.audit import AuditEvent
from tests.patients.conftest import PHONE_E164, Desk
from tests.patients.test_patient_invitations import open_account

ME = "/api/v1/me/patient"
NEW_PHONE = "+92 300 7654321"
NEW_PHONE_E164 = "+923007654321"


async def _patient_with_account(desk: Desk) -> tuple[dict[str, Any], dict[str, str]]:
    patient = await desk.register()
    return patient, await open_account(desk, patient)


async def test_a_patient_reads_their_whole_record_with_its_version(desk: Desk) -> None:
    patient, headers = await _patient_with_account(desk)
    response = await desk.api.client.get(ME, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["etag"] == '"1"'
    own = response.json()
    assert (own["id"], own["mrn"], own["phone"], own["given_name"]) == (patient["id"], "00000001", PHONE_E164, "Ayesha")
    # Their own national id, whole: the patient is the one person it need not be masked for.
    assert own["national_id"] == {"kind": "aadhaar", "last4": "0123", "value": "234567890123"}
    assert own["emergency_contact"]["phone"] == "+923001234567"


async def test_a_patient_corrects_their_phone_with_if_match_and_front_office_finds_them_by_the_new_one(
    desk: Desk,
) -> None:
    patient, headers = await _patient_with_account(desk)
    corrected = await desk.api.client.patch(ME, headers={**headers, "If-Match": '"1"'}, json={"phone": NEW_PHONE})
    assert corrected.status_code == 200, corrected.text
    assert (corrected.json()["phone"], corrected.json()["version"]) == (NEW_PHONE_E164, 2)
    assert corrected.headers["etag"] == '"2"'
    assert (await desk.api.client.get(ME, headers=headers)).json()["phone"] == NEW_PHONE_E164

    for phone, expected in ((NEW_PHONE, [patient["id"]]), (PHONE_E164, [])):
        found = await desk.api.client.get("/api/v1/patients", headers=desk.front_office, params={"phone": phone})
        assert [item["id"] for item in found.json()["items"]] == expected, phone
    async with desk.api.unit_of_work() as session:
        update = await session.scalar(select(AuditEvent).where(AuditEvent.action == "patient.update"))
    assert update is not None
    assert (update.actor_roles, update.details["fields"]) == (["patient"], ["phone"])


async def test_name_and_birth_date_are_not_the_patients_to_change(desk: Desk) -> None:
    _, headers = await _patient_with_account(desk)
    refused = await desk.api.client.patch(
        ME,
        headers={**headers, "If-Match": '"1"'},
        json={"given_name": "Someone", "birth_date": "1990-01-01", "phone": NEW_PHONE},
    )
    assert refused.status_code == 422, refused.text
    assert sorted(error["field"] for error in refused.json()["errors"]) == ["birth_date", "given_name"]
    unchanged = (await desk.api.client.get(ME, headers=headers)).json()
    assert (unchanged["given_name"], unchanged["birth_date"], unchanged["phone"], unchanged["version"]) == (
        "Ayesha",
        "1987-04-12",
        PHONE_E164,
        1,
    )


async def test_a_correction_without_if_match_is_428_and_with_a_stale_one_412(desk: Desk) -> None:
    _, headers = await _patient_with_account(desk)
    missing = await desk.api.client.patch(ME, headers=headers, json={"phone": NEW_PHONE})
    assert (missing.status_code, missing.json()["code"]) == (428, "if_match_required")
    # Front office corrects the e-mail address meanwhile: the patient's version 1 is stale now.
    patient_id = (await desk.api.client.get(ME, headers=headers)).json()["id"]
    staff = await desk.api.client.patch(
        f"/api/v1/patients/{patient_id}",
        headers={**desk.front_office, "If-Match": '"1"'},
        json={"email": "ayesha@example.net"},
    )
    assert staff.status_code == 200, staff.text
    stale = await desk.api.client.patch(ME, headers={**headers, "If-Match": '"1"'}, json={"phone": NEW_PHONE})
    assert (stale.status_code, stale.json()["code"]) == (412, "version_mismatch")
    current = (await desk.api.client.get(ME, headers=headers)).json()
    assert (current["phone"], current["email"], current["version"]) == (PHONE_E164, "ayesha@example.net", 2)


async def test_staff_tokens_cannot_use_the_patients_own_profile(desk: Desk) -> None:
    await _patient_with_account(desk)
    for headers in (desk.front_office, desk.admin):
        response = await desk.api.client.get(ME, headers=headers)
        assert (response.status_code, response.json()["code"]) == (401, "wrong_audience")
