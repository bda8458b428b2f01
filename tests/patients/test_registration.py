"""Registering a patient: an MRN from the organization's counter, demographics stored, the response shaped by
the caller's role, and every access audited."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from sehat.core.audit import AuditEvent
from tests.patients.conftest import PHONE_E164, Desk, patient_body


async def test_front_office_registers_a_patient_with_an_mrn_and_normalized_contact_details(desk: Desk) -> None:
    patient = await desk.register()
    assert patient["mrn"] == "00000001"
    assert patient["status"] == "active"
    assert patient["version"] == 1
    assert patient["phone"] == PHONE_E164
    assert patient["email"] == "ayesha.siddiqui@example.org"
    assert patient["emergency_contact"]["phone"] == "+923001234567"
    # Front office confirms the national id by its last four characters only.
    assert patient["national_id"] == {"kind": "aadhaar", "last4": "0123"}


async def test_mrns_count_up_per_organization_and_never_repeat(desk: Desk) -> None:
    numbers = [(await desk.register(phone=None, email=None, national_id=None))["mrn"] for _ in range(3)]
    assert numbers == ["00000001", "00000002", "00000003"]


async def test_reading_a_patient_returns_the_fields_the_role_may_see_and_is_audited(desk: Desk) -> None:
    patient = await desk.register()
    for role, national_id in (
        ("doctor", {"kind": "aadhaar", "last4": "0123"}),
        ("billing", {"kind": "aadhaar", "last4": "0123", "value": "234567890123"}),
    ):
        response = await desk.api.client.get(f"/api/v1/patients/{patient['id']}", headers=await desk.headers(role))
        assert response.status_code == 200, response.text
        assert response.headers["etag"] == '"1"'
        assert response.json()["national_id"] == national_id
    billing_view = response.json()
    # Billing has no use for the emergency contact or the language.
    assert "emergency_contact" not in billing_view and "preferred_language" not in billing_view
    async with desk.api.unit_of_work() as session:
        actions = (
            await session.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.patient_id == desk.patient_id(patient))
                .order_by(AuditEvent.id)
            )
        ).all()
    assert actions == ["patient.create", "patient.read", "patient.read"]


async def test_bad_input_names_the_field(desk: Desk) -> None:
    cases = {
        "phone": {"phone": "12345"},
        "birth_date": {"birth_date": "2999-01-01"},
        "sex": {"sex": "robot"},
        "given_name": {"given_name": "x" * 101},
    }
    for field, overrides in cases.items():
        response = await desk.api.client.post(
            "/api/v1/patients", headers=desk.front_office, json=patient_body(desk.tenant, **overrides)
        )
        assert response.status_code == 422, (field, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert field in [error["field"] for error in response.json()["errors"]], response.text
        assert "12345" not in response.text and "robot" not in response.text


async def test_a_facility_outside_the_organization_is_not_found(desk: Desk) -> None:
    response = await desk.api.client.post(
        "/api/v1/patients",
        headers=desk.front_office,
        json=patient_body(desk.tenant, registering_facility_id="00000000-0000-4000-8000-000000000000"),
    )
    assert response.status_code == 404
    assert response.json()["code"] == "facility_not_found"


async def test_concurrent_registrations_get_distinct_mrns(desk: Desk) -> None:
    responses = await asyncio.gather(
        *(
            desk.api.client.post(
                "/api/v1/patients",
                headers=desk.front_office,
                json=patient_body(desk.tenant, phone=f"+9198100{number:05d}", email=None, national_id=None),
            )
            for number in range(20)
        )
    )
    assert [response.status_code for response in responses] == [201] * 20
    mrns = [response.json()["mrn"] for response in responses]
    assert len(set(mrns)) == 20
    listed = await desk.api.all_pages("/api/v1/patients", desk.front_office)
    assert sorted(item["mrn"] for item in listed) == sorted(mrns)
