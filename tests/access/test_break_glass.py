"""Break-glass: one patient, a stated reason, a time limit; audited as emergency access and alerted."""

from __future__ import annotations

import time
import uuid
from typing import Any

import time_machine
from sqlalchemy import select

from sehat.access.break_glass import has_emergency_access
from sehat.access.models import Alert, BreakGlassGrant
from sehat.core.audit import AuditEvent
from tests.conftest import _actor_for, build_tenant

REASON = "Unconscious arrival in emergency, needs allergy history"


async def _open(api: Any, headers: dict[str, str], patient_id: uuid.UUID, reason: str = REASON) -> Any:
    return await api.client.post(
        "/api/v1/break-glass", headers=headers, json={"patient_id": str(patient_id), "reason": reason}
    )


async def _doctor(api: Any, tenant: Any) -> tuple[dict[str, str], Any]:
    from sehat.identity.models import User

    async with api.unit_of_work() as session:
        doctor_id = await session.scalar(select(User.id).where(User.email == tenant.emails["doctor"]))
    return await api.headers_for(tenant.emails["doctor"]), await _actor_for(api, doctor_id)


async def test_a_doctor_gets_access_to_that_one_patient_until_it_expires(start_api: Any) -> None:
    async with start_api(break_glass_minutes=60) as api:
        tenant = await build_tenant(api, "alpha", roles=("doctor",))
        headers, doctor = await _doctor(api, tenant)
        patient, other_patient = uuid.uuid4(), uuid.uuid4()
        response = await _open(api, headers, patient)
        assert response.status_code == 201
        grant = response.json()
        assert grant["patient_id"] == str(patient)
        async with api.unit_of_work() as session:
            assert await has_emergency_access(session, doctor, patient)
            assert not await has_emergency_access(session, doctor, other_patient)
        with time_machine.travel(time.time() + 59 * 60, tick=False):
            async with api.unit_of_work() as session:
                assert await has_emergency_access(session, doctor, patient)
        with time_machine.travel(time.time() + 61 * 60, tick=False):
            async with api.unit_of_work() as session:
                assert not await has_emergency_access(session, doctor, patient)
            listed = await api.client.get("/api/v1/break-glass", headers=await api.headers_for(tenant.emails["doctor"]))
            assert listed.json() == []


async def test_each_use_is_audited_as_emergency_access_and_raises_an_alert(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("doctor", "auditor"))
    headers, doctor = await _doctor(api, tenant)
    patient = uuid.uuid4()
    grant_id = (await _open(api, headers, patient)).json()["id"]
    async with api.unit_of_work() as session:
        (event,) = (await session.scalars(select(AuditEvent).where(AuditEvent.action == "access.break_glass"))).all()
    assert (event.actor_id, event.patient_id, event.resource_id) == (doctor.user_id, patient, grant_id)
    assert REASON not in str(event.details)
    alerts = await api.client.get("/api/v1/alerts", headers=await api.headers_for(tenant.emails["auditor"]))
    assert alerts.status_code == 200
    (alert,) = alerts.json()["items"]
    assert (alert["kind"], alert["patient_id"], alert["actor_id"]) == ("break_glass", str(patient), str(doctor.user_id))
    assert alert["audit_event_id"] == event.id


async def test_the_reason_is_required_and_stored_sealed(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("doctor",))
    headers, _ = await _doctor(api, tenant)
    missing = await api.client.post("/api/v1/break-glass", headers=headers, json={"patient_id": str(uuid.uuid4())})
    short = await _open(api, headers, uuid.uuid4(), reason="because")
    assert missing.status_code == short.status_code == 422
    assert [error["field"] for error in short.json()["errors"]] == ["reason"]
    async with api.unit_of_work() as session:
        assert (await session.scalars(select(Alert))).all() == []
    assert (await _open(api, headers, uuid.uuid4())).status_code == 201
    async with api.unit_of_work() as session:
        (sealed,) = (await session.scalars(select(BreakGlassGrant.reason_sealed))).all()
    assert REASON.encode() not in sealed


async def test_only_doctors_may_break_the_glass_and_only_admins_and_auditors_read_alerts(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("doctor", "nurse", "front_office"))
    for role in ("nurse", "front_office"):
        headers = await api.headers_for(tenant.emails[role])
        assert (await _open(api, headers, uuid.uuid4())).status_code == 403
    doctor_headers, _ = await _doctor(api, tenant)
    assert (await api.client.get("/api/v1/alerts", headers=doctor_headers)).status_code == 403
    admin_headers = await api.headers_for(tenant.admin_email)
    assert (await api.client.get("/api/v1/alerts", headers=admin_headers)).status_code == 200


async def test_alerts_of_another_organization_are_never_listed(api: Any) -> None:
    alpha = await build_tenant(api, "alpha", roles=("doctor",))
    beta = await build_tenant(api, "beta", roles=("doctor",))
    beta_headers, _ = await _doctor(api, beta)
    await _open(api, beta_headers, uuid.uuid4())
    alpha_admin = await api.headers_for(alpha.admin_email)
    assert (await api.client.get("/api/v1/alerts", headers=alpha_admin)).json()["items"] == []
    beta_admin = await api.headers_for(beta.admin_email)
    assert len((await api.client.get("/api/v1/alerts", headers=beta_admin)).json()["items"]) == 1
