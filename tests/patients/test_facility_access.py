"""Clinicians open the records of patients registered at their own facilities; outside them only through
break-glass, which the read's audit entry records. Front office and billing read across the organization."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from sehat.core.audit import AuditEvent
from tests.patients.conftest import Desk


async def test_a_doctor_reads_patients_of_their_facility_and_not_of_another(desk: Desk) -> None:
    here = await desk.register()
    elsewhere = await desk.register(
        registering_facility_id=str(desk.tenant.facility_ids[1]), phone=None, email=None, national_id=None
    )
    doctor = await desk.headers("doctor")
    assert (await desk.api.client.get(f"/api/v1/patients/{here['id']}", headers=doctor)).status_code == 200
    refused = await desk.api.client.get(f"/api/v1/patients/{elsewhere['id']}", headers=doctor)
    assert refused.status_code == 403
    assert refused.json()["code"] == "outside_your_facilities"
    assert "Ayesha" not in refused.text
    for role in ("front_office", "billing"):
        read = await desk.api.client.get(f"/api/v1/patients/{elsewhere['id']}", headers=await desk.headers(role))
        assert read.status_code == 200, role


async def test_break_glass_opens_one_patient_outside_the_facilities_and_the_read_says_so(desk: Desk) -> None:
    elsewhere = await desk.register(
        registering_facility_id=str(desk.tenant.facility_ids[1]), phone=None, email=None, national_id=None
    )
    doctor = await desk.headers("doctor")
    grant = await desk.api.client.post(
        "/api/v1/break-glass",
        headers=doctor,
        json={"patient_id": elsewhere["id"], "reason": "Collapsed in the waiting area, needs history"},
    )
    assert grant.status_code == 201
    read = await desk.api.client.get(f"/api/v1/patients/{elsewhere['id']}", headers=doctor)
    assert read.status_code == 200 and read.json()["given_name"] == "Ayesha"
    async with desk.api.unit_of_work() as session:
        details = await session.scalar(
            select(AuditEvent.details).where(
                AuditEvent.patient_id == uuid.UUID(elsewhere["id"]), AuditEvent.action == "patient.read"
            )
        )
    assert details["break_glass"] is True
    assert details["facility_id"] == str(desk.tenant.facility_ids[1])
