"""Consent: decisions of each kind granted or withdrawn, with time, who recorded them and the evidence; the
latest decision per kind is the current state, one call away; evidence is sealed under the patient's own key;
a patient reads and records their own consents only; every read and write is audited."""

from __future__ import annotations

import base64
import uuid
from typing import Any

from sqlalchemy import select

from sehat.core.audit import AuditEvent
from sehat.core.crypto import DecryptionError
from sehat.identity.models import User
from sehat.patients.consent import current_consents, has_consent
from sehat.patients.models import PatientConsent, PatientKey
from sehat.patients.rights_schemas import ConsentKind
from tests.conftest import Api
from tests.patients.conftest import Desk, open_desk

CHECKBOX = "I agree to receive appointment reminders by SMS on the number I gave."
# A signature pad's PNG, as the browser hands it over.
SIGNATURE = "data:image/png;base64," + base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4).decode()


def checkbox(kind: str, granted: bool = True, wording: str = CHECKBOX) -> dict[str, Any]:
    return {"kind": kind, "granted": granted, "evidence_kind": "checkbox", "evidence": wording}


async def record(desk: Desk, patient_id: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    response = await desk.api.client.post(
        f"/api/v1/patients/{patient_id}/consents", headers=headers or desk.front_office, json=body
    )
    assert response.status_code == 201, response.text
    return response.json()


async def user_id(api: Api, email: str) -> uuid.UUID:
    async with api.unit_of_work() as session:
        found = await session.scalar(select(User.id).where(User.email == email))
    assert found is not None
    return found


async def patient_headers(desk: Desk, patient_id: str, email: str = "ayesha@patients.test") -> dict[str, str]:
    """A patient account linked to ``patient_id``, signed in (patients sign in without a second factor)."""
    await desk.api.add_patient_account(desk.tenant.organization_id, email, patient_id=uuid.UUID(patient_id))
    response = await desk.api.sign_in(email)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def test_the_latest_decision_of_each_kind_is_current_and_the_history_lists_all_newest_first(desk: Desk) -> None:
    patient = await desk.register()
    treatment = await record(desk, patient["id"], checkbox("treatment"))
    sms_granted = await record(desk, patient["id"], checkbox("sms"))
    sms_withdrawn = await record(desk, patient["id"], checkbox("sms", granted=False, wording="Stop SMS reminders."))
    front_office_id = await user_id(desk.api, desk.tenant.emails["front_office"])
    assert sms_withdrawn["recorded_by_id"] == str(front_office_id)
    assert sms_withdrawn["evidence"] == "Stop SMS reminders."

    response = await desk.api.client.get(f"/api/v1/patients/{patient['id']}/consents", headers=desk.front_office)
    assert response.status_code == 200, response.text
    consents = response.json()
    assert set(consents["current"]) == {"treatment", "sms"}
    assert consents["current"]["treatment"]["granted"] is True
    assert consents["current"]["sms"] == {
        "granted": False,
        "recorded_at": sms_withdrawn["recorded_at"],
        "recorded_by_id": str(front_office_id),
    }
    assert [item["id"] for item in consents["history"]] == [sms_withdrawn["id"], sms_granted["id"], treatment["id"]]
    assert [item["evidence"] for item in consents["history"]] == ["Stop SMS reminders.", CHECKBOX, CHECKBOX]


async def test_a_signature_is_recorded_and_read_back_as_given(desk: Desk) -> None:
    patient = await desk.register()
    recorded = await record(
        desk, patient["id"], {"kind": "research", "granted": True, "evidence_kind": "signature", "evidence": SIGNATURE}
    )
    assert recorded["evidence_kind"] == "signature"
    response = await desk.api.client.get(f"/api/v1/patients/{patient['id']}/consents", headers=desk.front_office)
    assert response.json()["history"][0]["evidence"] == SIGNATURE


async def test_evidence_is_stored_encrypted_under_the_patients_own_data_key(desk: Desk) -> None:
    patient = await desk.register()
    other = await desk.register(phone=None, email=None, national_id=None, given_name="Bilal")
    recorded = await record(desk, patient["id"], checkbox("data_sharing"))
    vault = desk.api.app.state.patient_vault
    async with desk.api.unit_of_work() as session:
        stored = await session.get(PatientConsent, uuid.UUID(recorded["id"]))
        keys = dict((await session.execute(select(PatientKey.patient_id, PatientKey.wrapped_key))).all())
    assert stored is not None
    assert CHECKBOX.encode() not in stored.evidence and b"reminders" not in stored.evidence
    place = {"organization_id": stored.organization_id, "table": "patient_consents", "column": "evidence"}
    own = vault.open_patient_key(stored.organization_id, stored.patient_id, keys[stored.patient_id])
    assert own.decrypt_text(stored.evidence, row_id=stored.id, **place) == CHECKBOX
    # Another patient's key does not open it, nor does the right key for another row.
    other_id = uuid.UUID(other["id"])
    other_cipher = vault.open_patient_key(stored.organization_id, other_id, keys[other_id])
    for cipher, row_id in ((other_cipher, stored.id), (own, uuid.uuid4())):
        try:
            cipher.decrypt(stored.evidence, row_id=row_id, **place)
        except DecryptionError:
            continue
        raise AssertionError("evidence opened under the wrong key or place")


async def test_bad_consent_input_names_the_field_and_never_echoes_it(desk: Desk) -> None:
    patient = await desk.register()
    signature = {"kind": "sms", "granted": True, "evidence_kind": "signature"}
    cases = [
        ("kind", {**checkbox("sms"), "kind": "telepathy"}),
        ("granted", {**checkbox("sms"), "granted": "perhaps"}),
        ("evidence_kind", {**checkbox("sms"), "evidence_kind": "handshake"}),
        ("evidence", {**checkbox("sms"), "evidence": "x" * 2_001}),
        ("evidence", {**checkbox("sms"), "evidence": "   "}),
        ("evidence", {**signature, "evidence": "not base64 at all!"}),
        ("evidence", {**signature, "evidence": "QUJD" * 50_001}),
    ]
    for expected_field, body in cases:
        response = await desk.api.client.post(
            f"/api/v1/patients/{patient['id']}/consents", headers=desk.front_office, json=body
        )
        assert response.status_code == 422, (expected_field, response.text)
        assert expected_field in [error["field"] for error in response.json()["errors"]], response.text
        assert "telepathy" not in response.text and "not base64" not in response.text
    # Nothing was recorded by any of them.
    listed = await desk.api.client.get(f"/api/v1/patients/{patient['id']}/consents", headers=desk.front_office)
    assert listed.json() == {"current": {}, "history": []}


async def test_current_consents_and_has_consent_answer_in_one_call_for_notifications(desk: Desk) -> None:
    patient = await desk.register()
    patient_id = uuid.UUID(patient["id"])
    organization_id = desk.tenant.organization_id
    async with desk.api.unit_of_work() as session:
        assert await has_consent(session, organization_id, patient_id, ConsentKind.sms) is False
        assert await current_consents(session, organization_id, patient_id) == {}
    await record(desk, patient["id"], checkbox("sms"))
    await record(desk, patient["id"], checkbox("email"))
    await record(desk, patient["id"], checkbox("email", granted=False))
    async with desk.api.unit_of_work() as session:
        assert await has_consent(session, organization_id, patient_id, ConsentKind.sms) is True
        assert await has_consent(session, organization_id, patient_id, ConsentKind.email) is False
        assert await has_consent(session, organization_id, patient_id, ConsentKind.research) is False
        # Another organization's id finds nothing, even with the right patient id.
        assert await has_consent(session, uuid.uuid4(), patient_id, ConsentKind.sms) is False
        current = await current_consents(session, organization_id, patient_id)
    assert {kind: state.granted for kind, state in current.items()} == {ConsentKind.sms: True, ConsentKind.email: False}


async def test_a_patient_reads_and_records_their_own_consents_and_no_one_elses(desk: Desk) -> None:
    own = await desk.register()
    someone_else = await desk.register(phone=None, email=None, national_id=None, given_name="Bilal")
    headers = await patient_headers(desk, own["id"])
    recorded = await record(desk, own["id"], checkbox("email"), headers=headers)
    assert recorded["recorded_by_id"] == str(await user_id(desk.api, "ayesha@patients.test"))
    response = await desk.api.client.get(f"/api/v1/patients/{own['id']}/consents", headers=headers)
    assert response.status_code == 200, response.text
    assert response.json()["current"]["email"]["granted"] is True

    for method, body in (("GET", None), ("POST", checkbox("email"))):
        response = await desk.api.client.request(
            method, f"/api/v1/patients/{someone_else['id']}/consents", headers=headers, json=body
        )
        # Not 403: a patient token must not learn that another record exists.
        assert response.status_code == 404, response.text
    async with desk.api.unit_of_work() as session:
        others = await session.scalar(
            select(PatientConsent.id).where(PatientConsent.patient_id == uuid.UUID(someone_else["id"]))
        )
    assert others is None


async def test_staff_read_consents_of_patients_at_their_facilities_only(desk: Desk) -> None:
    here = await desk.register()
    elsewhere = await desk.register(
        registering_facility_id=str(desk.tenant.facility_ids[1]), phone=None, email=None, national_id=None
    )
    nurse = await desk.headers("nurse")
    assert (await desk.api.client.get(f"/api/v1/patients/{here['id']}/consents", headers=nurse)).status_code == 200
    response = await desk.api.client.get(f"/api/v1/patients/{elsewhere['id']}/consents", headers=nurse)
    assert response.status_code == 403
    assert response.json()["code"] == "outside_your_facilities"


async def test_roles_without_consent_permissions_and_other_organizations_are_refused(desk: Desk) -> None:
    patient = await desk.register()
    url = f"/api/v1/patients/{patient['id']}/consents"
    billing = await desk.headers("billing")
    assert (await desk.api.client.get(url, headers=billing)).status_code == 403
    doctor = await desk.headers("doctor")
    assert (await desk.api.client.post(url, headers=doctor, json=checkbox("sms"))).status_code == 403
    other = await open_desk(desk.api, "beta")
    for method, body in (("GET", None), ("POST", checkbox("sms"))):
        response = await desk.api.client.request(method, url, headers=other.admin, json=body)
        assert response.status_code == 404, response.text


async def test_every_consent_read_and_write_is_audited_with_kind_and_facility(desk: Desk) -> None:
    patient = await desk.register()
    await record(desk, patient["id"], checkbox("treatment"))
    await desk.api.client.get(f"/api/v1/patients/{patient['id']}/consents", headers=desk.front_office)
    async with desk.api.unit_of_work() as session:
        entries = (
            await session.scalars(
                select(AuditEvent)
                .where(AuditEvent.patient_id == uuid.UUID(patient["id"]), AuditEvent.action.like("consent.%"))
                .order_by(AuditEvent.id)
            )
        ).all()
    facility = patient["registering_facility_id"]
    assert [(entry.action, entry.outcome) for entry in entries] == [
        ("consent.record", "success"),
        ("consent.read", "success"),
    ]
    assert entries[0].details == {"facility_id": facility, "kind": "treatment", "granted": True}
    assert entries[1].details == {"facility_id": facility, "kinds": ["treatment"]}
    # The evidence itself never reaches the audit log.
    assert all("reminders" not in str(entry.details) for entry in entries)


async def test_consent_is_not_recorded_on_a_merged_duplicate(desk: Desk) -> None:
    survivor = await desk.register()
    duplicate = await desk.register(phone=None, email=None, national_id=None)
    merged = await desk.api.client.post(
        f"/api/v1/patients/{duplicate['id']}/merge", headers=desk.admin, json={"survivor_id": survivor["id"]}
    )
    assert merged.status_code == 200, merged.text
    response = await desk.api.client.post(
        f"/api/v1/patients/{duplicate['id']}/consents", headers=desk.front_office, json=checkbox("sms")
    )
    assert response.status_code == 409
    assert response.json()["code"] == "patient_merged"
