"""The export (GDPR Art. 15 and 20): everything held on a patient, in full, as a JSON attachment: every
demographic field, status and merges, the legal hold flag, every consent with its evidence, invitations
without their tokens, the patient's accounts, and who accessed the record. Audited as ``patient.export``."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from sehat.core.audit import AuditEntry, AuditEvent, Outcome
from sehat.core.clock import utcnow
from sehat.patients.models import PatientInvitation
from sehat.patients.schemas import PatientCreate
from tests.conftest import Api
from tests.patients.conftest import PHONE_E164, Desk, open_desk, patient_body
from tests.patients.test_consent import SIGNATURE, checkbox, patient_headers, record, user_id


async def add_invitation(
    api: Api, organization_id: uuid.UUID, patient_id: uuid.UUID, *, accepted_by: uuid.UUID | None = None
) -> tuple[uuid.UUID, str]:
    """An invitation as the account service stores it (only the token's hash), arranged from outside; returns
    its id and the token, so a test can look for the token where it must not be."""
    token = secrets.token_urlsafe(32)
    invitation = PatientInvitation(
        id=uuid.uuid4(),
        organization_id=organization_id,
        patient_id=patient_id,
        token_hash=hashlib.sha256(token.encode()).digest(),
        created_at=utcnow(),
        expires_at=utcnow() + timedelta(days=7),
        accepted_at=utcnow() if accepted_by else None,
        user_id=accepted_by,
    )
    async with api.unit_of_work() as session:
        session.add(invitation)
    return invitation.id, token


async def export(desk: Desk, patient_id: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = await desk.api.client.get(f"/api/v1/patients/{patient_id}/export", headers=headers or desk.admin)
    assert response.status_code == 200, response.text
    assert response.headers["content-disposition"] == f'attachment; filename="patient-{patient_id}.json"'
    assert response.headers["cache-control"] == "no-store"
    return response.json()


async def test_the_export_holds_every_field_of_registration_in_full_and_every_consent(desk: Desk) -> None:
    patient = await desk.register()
    consents = [
        await record(desk, patient["id"], checkbox("treatment")),
        await record(desk, patient["id"], {**checkbox("sms"), "evidence_kind": "signature", "evidence": SIGNATURE}),
        await record(desk, patient["id"], checkbox("sms", granted=False, wording="No more SMS, please.")),
    ]
    document = await export(desk, patient["id"])

    exported = document["patient"]
    registered = patient_body(desk.tenant)
    # Every field a registration can hold is there, none left out or masked.
    missing = [name for name in PatientCreate.model_fields if exported.get(name) is None]
    assert missing == []
    assert exported["registering_facility_id"] == registered["registering_facility_id"]
    for name in ("given_name", "family_name", "birth_date", "sex", "gender", "preferred_language"):
        assert exported[name] == registered[name], name
    assert exported["phone"] == PHONE_E164
    assert exported["email"] == registered["email"].lower()
    # Address lines left empty at registration are exported as null.
    assert {name: value for name, value in exported["address"].items() if value is not None} == registered["address"]
    # The whole national id, not the last four characters front office sees.
    assert exported["national_id"] == {"kind": "aadhaar", "value": "234567890123", "last4": "0123"}
    assert exported["emergency_contact"] == {
        **registered["emergency_contact"],
        "phone": "+923001234567",
    }
    assert exported["mrn"] == "00000001"
    assert exported["status"] == "active" and exported["legal_hold"] is False
    assert document["legal_hold_since"] is None

    by_id = {item["id"]: item for item in document["consents"]}
    assert set(by_id) == {consent["id"] for consent in consents}
    for consent in consents:
        assert by_id[consent["id"]] == consent


async def test_the_export_lists_merges_invitations_accounts_and_accesses_but_never_tokens(desk: Desk) -> None:
    patient = await desk.register()
    patient_id = uuid.UUID(patient["id"])
    duplicate = await desk.register(phone=None, email=None, national_id=None)
    merged = await desk.api.client.post(
        f"/api/v1/patients/{duplicate['id']}/merge", headers=desk.admin, json={"survivor_id": patient["id"]}
    )
    assert merged.status_code == 200, merged.text
    await desk.api.add_patient_account(desk.tenant.organization_id, "ayesha@patients.test", patient_id=patient_id)
    account_id = await user_id(desk.api, "ayesha@patients.test")
    accepted_id, accepted_token = await add_invitation(
        desk.api, desk.tenant.organization_id, patient_id, accepted_by=account_id
    )
    pending_id, pending_token = await add_invitation(desk.api, desk.tenant.organization_id, patient_id)
    await desk.api.client.get(f"/api/v1/patients/{patient['id']}", headers=await desk.headers("doctor"))

    response = await desk.api.client.get(f"/api/v1/patients/{patient['id']}/export", headers=desk.admin)
    assert response.status_code == 200, response.text
    document = response.json()
    assert document["merged_from_ids"] == [duplicate["id"]]
    assert {(item["id"], item["status"]) for item in document["invitations"]} == {
        (str(accepted_id), "accepted"),
        (str(pending_id), "pending"),
    }
    for token in (accepted_token, pending_token):
        hashed = hashlib.sha256(token.encode()).digest()
        assert token not in response.text and hashed.hex() not in response.text
    assert [(account["email"], account["active"]) for account in document["accounts"]] == [
        ("ayesha@patients.test", True)
    ]
    accesses = [(item["action"], item["actor_name"], item["actor_roles"]) for item in document["accesses"]]
    assert accesses[0] == ("patient.create", "front_office person", ["front_office"])
    assert ("patient.read", "doctor person", ["doctor"]) in accesses
    assert ("patient.merge", "Org Admin", ["org_admin"]) in accesses
    read = next(item for item in document["accesses"] if item["action"] == "patient.read")
    assert read["outcome"] == "success" and read["description"] == "viewed your record"


async def test_a_patient_exports_their_own_record_and_no_one_elses(desk: Desk) -> None:
    own = await desk.register()
    someone_else = await desk.register(phone=None, email=None, national_id=None, given_name="Bilal")
    headers = await patient_headers(desk, own["id"])
    document = await export(desk, own["id"], headers=headers)
    assert document["patient"]["national_id"]["value"] == "234567890123"
    assert document["accounts"][0]["email"] == "ayesha@patients.test"
    response = await desk.api.client.get(f"/api/v1/patients/{someone_else['id']}/export", headers=headers)
    assert response.status_code == 404
    assert "Bilal" not in response.text


async def test_roles_without_the_export_permission_and_other_organizations_are_refused(desk: Desk) -> None:
    patient = await desk.register()
    url = f"/api/v1/patients/{patient['id']}/export"
    for role in ("front_office", "doctor", "billing", "auditor"):
        response = await desk.api.client.get(url, headers=await desk.headers(role))
        assert response.status_code == 403, (role, response.text)
    other = await open_desk(desk.api, "beta")
    response = await desk.api.client.get(url, headers=other.admin)
    assert response.status_code == 404
    assert "Ayesha" not in response.text


async def test_each_export_is_audited_and_shows_up_in_the_next(desk: Desk) -> None:
    patient = await desk.register()
    first = await export(desk, patient["id"])
    assert "patient.export" not in [item["action"] for item in first["accesses"]]
    second = await export(desk, patient["id"])
    assert [item["action"] for item in second["accesses"]].count("patient.export") == 1
    async with desk.api.unit_of_work() as session:
        entries = (
            await session.scalars(
                select(AuditEvent).where(
                    AuditEvent.patient_id == uuid.UUID(patient["id"]), AuditEvent.action == "patient.export"
                )
            )
        ).all()
    assert len(entries) == 2
    assert all(entry.outcome == "success" and entry.actor_roles == ["org_admin"] for entry in entries)
    assert entries[0].details == {"facility_id": patient["registering_facility_id"]}


async def test_another_patients_attempt_on_the_record_is_left_out_and_the_patients_own_accesses_kept(
    desk: Desk,
) -> None:
    own = await desk.register()
    own_headers = await patient_headers(desk, own["id"])
    await export(desk, own["id"], headers=own_headers)
    await desk.api.add_patient_account(desk.tenant.organization_id, "bilal@patients.test")
    intruder_id = await user_id(desk.api, "bilal@patients.test")
    # A domain that records a patient's refused attempt on someone else's record (with that record's id).
    async with desk.api.unit_of_work() as session:
        desk.api.app.state.audit.record(
            session,
            None,
            AuditEntry(action="patient.read", outcome=Outcome.denied, patient_id=uuid.UUID(own["id"])),
            organization_id=desk.tenant.organization_id,
            user_id=intruder_id,
            roles=["patient"],
        )
    document = await export(desk, own["id"])
    patients_accesses = [item for item in document["accesses"] if "patient" in item["actor_roles"]]
    # The patient's own export is there, under their account's name; the other patient's attempt is not.
    assert [(item["action"], item["outcome"]) for item in patients_accesses] == [("patient.export", "success")]
    assert len([item for item in document["accesses"] if item["outcome"] == "denied"]) == 0
