"""Every denial on a protected route (401, 403, 404) is audited, with who was refused, even though the
request's own work is rolled back; refusals that are not denials, and public routes, are not."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import select

from sehat.core.audit import AuditEvent
from sehat.identity.models import User
from tests.conftest import build_tenant


async def _denials(api: Any) -> list[AuditEvent]:
    async with api.unit_of_work() as session:
        statement = select(AuditEvent).where(AuditEvent.action == "access.denied").order_by(AuditEvent.id)
        return list((await session.scalars(statement)).all())


async def test_a_request_without_a_token_is_audited_as_an_anonymous_denial(api: Any) -> None:
    assert (await api.client.get("/api/v1/facilities")).status_code == 401
    (denial,) = await _denials(api)
    assert (denial.actor_type, denial.outcome) == ("anonymous", "denied")
    assert denial.details["status"] == 401
    assert denial.details["route"] == "/api/v1/facilities"
    assert denial.details["code"] == "invalid_token"


async def test_a_forbidden_action_is_audited_with_the_refused_user(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("front_office",))
    headers = await api.headers_for(tenant.emails["front_office"])
    refused = await api.client.post(
        "/api/v1/facilities", headers=headers, json={"name": "X", "code": "X1", "timezone": "Asia/Karachi"}
    )
    assert refused.status_code == 403
    async with api.unit_of_work() as session:
        user_id = await session.scalar(select(User.id).where(User.email == tenant.emails["front_office"]))
    (denial,) = await _denials(api)
    assert (denial.actor_type, denial.actor_id, denial.actor_roles) == ("user", user_id, ["front_office"])
    assert denial.organization_id == tenant.organization_id
    assert (denial.details["status"], denial.details["code"]) == (403, "permission_denied")


async def test_another_tenants_id_is_audited_as_a_404_denial_naming_the_id(api: Any) -> None:
    alpha = await build_tenant(api, "alpha", roles=())
    beta = await build_tenant(api, "beta", roles=())
    headers = await api.headers_for(alpha.admin_email)
    foreign = beta.facility_ids[0]
    assert (await api.client.get(f"/api/v1/facilities/{foreign}", headers=headers)).status_code == 404
    (denial,) = await _denials(api)
    assert denial.details["status"] == 404
    assert denial.details["path_params"] == {"facility_id": str(foreign)}
    assert denial.organization_id == alpha.organization_id


async def test_successes_invalid_input_and_public_routes_are_not_denials(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=())
    headers = await api.headers_for(tenant.admin_email)
    assert (await api.client.get("/api/v1/facilities", headers=headers)).status_code == 200
    assert (await api.client.post("/api/v1/facilities", headers=headers, json={"name": 5})).status_code == 422
    assert (await api.sign_in(tenant.admin_email, "wrong password here")).status_code == 401
    missing = await api.client.get(f"/api/v1/no-such-route/{uuid.uuid4()}")
    assert missing.status_code == 404
    assert await _denials(api) == []
