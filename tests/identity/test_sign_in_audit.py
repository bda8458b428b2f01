"""Every sign-in, success or failure, every refresh-token reuse and every logout leaves an audit entry."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import select

from sehat.core.audit import AuditEvent
from sehat.identity.models import User
from tests.conftest import PASSWORD, build_tenant


async def _events(api: Any, action: str) -> list[AuditEvent]:
    async with api.unit_of_work() as session:
        return list(
            (await session.scalars(select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.id))).all()
        )


async def test_successful_and_failed_sign_ins_are_audited_without_the_typed_email(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("doctor",))
    async with api.unit_of_work() as session:
        doctor_id = await session.scalar(select(User.id).where(User.email == tenant.emails["doctor"]))
    assert (await api.sign_in(tenant.emails["doctor"])).status_code == 200
    assert (await api.sign_in(tenant.emails["doctor"], "wrong password here")).status_code == 401
    assert (await api.sign_in("nobody@alpha.test", "wrong password here")).status_code == 401

    success, known_failure, unknown_failure = await _events(api, "auth.sign_in")
    assert (success.outcome, success.actor_type, success.actor_id) == ("success", "user", doctor_id)
    assert success.organization_id == tenant.organization_id
    assert success.client_address == "203.0.113.10"
    assert (known_failure.outcome, known_failure.resource_id) == ("failure", str(doctor_id))
    assert known_failure.details["reason"] == "invalid_credentials"
    assert (unknown_failure.outcome, unknown_failure.resource_id) == ("failure", None)
    # The same account always gets the same pseudonym, so attempts can be correlated without the e-mail.
    assert success.details["account"] == known_failure.details["account"] != unknown_failure.details["account"]
    stored = orjson.dumps([event.details for event in (success, known_failure, unknown_failure)]).decode()
    for secret in (tenant.emails["doctor"], "nobody@alpha.test", PASSWORD, "wrong password here"):
        assert secret not in stored


async def test_a_throttled_sign_in_is_audited_as_denied(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=())
    for _ in range(5):
        await api.sign_in(tenant.admin_email, "wrong password here")
    assert (await api.sign_in(tenant.admin_email)).status_code == 429
    last = (await _events(api, "auth.sign_in"))[-1]
    assert (last.outcome, last.details["reason"]) == ("denied", "login_throttled")


async def test_refresh_token_reuse_and_logout_are_audited(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=())
    pair = await api.full_session(tenant.admin_email)
    rotated = (await api.client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})).json()
    await api.client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    (reuse,) = await _events(api, "auth.refresh_token_reuse")
    assert reuse.outcome == "denied"
    assert reuse.details == {"family_revoked": True}
    second = await api.full_session(tenant.admin_email)
    await api.client.post("/api/v1/auth/logout", headers={"Authorization": f"Bearer {second['access_token']}"})
    (logout,) = await _events(api, "auth.sign_out")
    assert logout.actor_type == "user"
    assert rotated["access_token"] not in orjson.dumps(logout.details).decode()


async def test_audit_entries_pass_verification_once_sealed(start_api: Any, tmp_path: Any) -> None:
    async with start_api(audit_checkpoint_file=tmp_path / "cp.jsonl", audit_seal_settle_seconds=0) as api:
        tenant = await build_tenant(api, "alpha", roles=())
        await api.full_session(tenant.admin_email)
        await api.sign_in(tenant.admin_email, "wrong password here")
        sealed = await api.app.state.audit_chain.seal(api.database)
        report = await api.app.state.audit_chain.verify(api.database)
    assert sealed >= 2
    assert report.ok, report.findings
