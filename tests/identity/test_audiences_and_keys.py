"""Staff and patient tokens are never accepted in each other's endpoints; signing keys rotate without a gap."""

from __future__ import annotations

import time
from typing import Annotated, Any

import jwt
import pytest
import time_machine
from fastapi import APIRouter, Depends

from sehat.core.actor import Actor, Audience
from sehat.identity.deps import Require
from sehat.identity.permissions import SELF_SERVICE
from sehat.identity.tokens import SigningKeys
from tests.conftest import build_tenant

patient_only = Require(SELF_SERVICE, audiences=(Audience.patient,))


def _add_patient_only_route(app: Any) -> None:
    router = APIRouter()

    @router.get("/test-patient-only")
    async def patient_area(actor: Annotated[Actor, Depends(patient_only)]) -> dict[str, str]:
        return {"audience": actor.audience.value}

    app.include_router(router)


@pytest.fixture
async def tokens(api: Any) -> dict[str, str]:
    tenant = await build_tenant(api, "alpha", roles=("front_office",))
    await api.add_patient_account(tenant.organization_id, "patient@alpha.test")
    staff = (await api.full_session(tenant.emails["front_office"]))["access_token"]
    patient = (await api.sign_in("patient@alpha.test")).json()["access_token"]
    return {"staff": staff, "patient": patient}


async def test_patient_token_is_refused_on_staff_routes(api: Any, tokens: dict) -> None:
    assert jwt.decode(tokens["patient"], options={"verify_signature": False})["aud"] == "sehat-patient"
    response = await api.client.get("/api/v1/facilities", headers={"Authorization": f"Bearer {tokens['patient']}"})
    assert response.status_code == 401
    assert response.json()["code"] == "wrong_audience"


async def test_staff_token_is_refused_on_patient_routes(api: Any, tokens: dict) -> None:
    _add_patient_only_route(api.app)
    staff = await api.client.get("/test-patient-only", headers={"Authorization": f"Bearer {tokens['staff']}"})
    assert staff.status_code == 401
    assert staff.json()["code"] == "wrong_audience"
    patient = await api.client.get("/test-patient-only", headers={"Authorization": f"Bearer {tokens['patient']}"})
    assert patient.status_code == 200


async def test_both_audiences_may_read_their_own_profile(api: Any, tokens: dict) -> None:
    for token in tokens.values():
        assert (await api.client.get("/api/v1/me", headers={"Authorization": f"Bearer {token}"})).status_code == 200


async def test_after_rotation_new_tokens_use_the_new_key_and_old_tokens_stay_valid_until_expiry(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=())
    old_pair = await api.full_session(tenant.admin_email)
    old_kid = jwt.get_unverified_header(old_pair["access_token"])["kid"]
    # What `sehat keys rotate-signing` does, from another process: the server learns it on its next reload.
    async with api.unit_of_work() as session:
        new_kid = await SigningKeys(api.auth.key_ring, api.auth.settings).add_key(session)
    async with api.unit_of_work() as session:
        await api.auth.signing_keys.load(session)
    assert new_kid != old_kid
    refreshed = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": old_pair["refresh_token"]})
    assert jwt.get_unverified_header(refreshed.json()["access_token"])["kid"] == new_kid
    new_headers = {"Authorization": f"Bearer {refreshed.json()['access_token']}"}
    assert (await api.client.get("/api/v1/me", headers=new_headers)).status_code == 200
    old_headers = {"Authorization": f"Bearer {old_pair['access_token']}"}
    assert (await api.client.get("/api/v1/me", headers=old_headers)).status_code == 200
    with time_machine.travel(time.time() + 901, tick=False):
        assert (await api.client.get("/api/v1/me", headers=old_headers)).status_code == 401


async def test_a_second_server_learns_a_rotated_key_on_first_sight(start_api: Any) -> None:
    async with start_api() as server_a:
        tenant = await build_tenant(server_a, "alpha", roles=())
        async with start_api() as server_b:
            async with server_a.unit_of_work() as session:
                await server_a.auth.signing_keys.add_key(session)  # server A rotates and signs with the new key
            headers = await server_a.headers_for(tenant.admin_email)
            assert server_b.auth.signing_keys.current_kid != server_a.auth.signing_keys.current_kid
            response = await server_b.client.get("/api/v1/me", headers=headers)
            assert response.status_code == 200
            assert server_b.auth.signing_keys.current_kid == server_a.auth.signing_keys.current_kid


async def test_a_superseded_key_stops_verifying_once_its_tokens_must_have_expired(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=())
    headers = await api.headers_for(tenant.admin_email)
    async with api.unit_of_work() as session:
        await api.auth.signing_keys.add_key(session)
    assert (await api.client.get("/api/v1/me", headers=headers)).status_code == 200
    later = time.time() + 900 + 60 + 5
    with time_machine.travel(later, tick=False):
        async with api.unit_of_work() as session:
            await api.auth.signing_keys.load(session)
        assert len(api.auth.signing_keys._public) == 1
        refused = await api.client.get("/api/v1/me", headers=headers)
    assert refused.status_code == 401
