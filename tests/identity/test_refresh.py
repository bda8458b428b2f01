"""Refresh tokens rotate on every use; a spent one presented again ends the whole session (its family)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import time_machine

from tests.conftest import build_tenant


@pytest.fixture
async def pair(api: Any) -> dict[str, Any]:
    tenant = await build_tenant(api, "alpha", roles=())
    return await api.full_session(tenant.admin_email)


async def _refresh(api: Any, token: str) -> Any:
    return await api.client.post("/api/v1/auth/refresh", json={"refresh_token": token})


def _bearer(pair: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {pair['access_token']}"}


async def test_refresh_returns_a_new_pair_and_spends_the_old_refresh_token(api: Any, pair: dict) -> None:
    first = await _refresh(api, pair["refresh_token"])
    assert first.status_code == 200
    rotated = first.json()
    assert rotated["refresh_token"] != pair["refresh_token"]
    assert rotated["access_token"] != pair["access_token"]
    assert (await api.client.get("/api/v1/me", headers=_bearer(rotated))).status_code == 200
    assert (await _refresh(api, rotated["refresh_token"])).status_code == 200


async def test_reusing_a_spent_refresh_token_revokes_the_whole_family(api: Any, pair: dict) -> None:
    rotated = (await _refresh(api, pair["refresh_token"])).json()
    reuse = await _refresh(api, pair["refresh_token"])
    assert reuse.status_code == 401
    assert reuse.json()["code"] == "refresh_token_reused"
    # The legitimate holder's newer tokens die with it: the attacker and the victim both sign in again.
    newest = await _refresh(api, rotated["refresh_token"])
    assert newest.status_code == 401
    assert newest.json()["code"] == "session_revoked"
    me = await api.client.get("/api/v1/me", headers=_bearer(rotated))
    assert me.status_code == 401
    assert me.json()["code"] == "session_revoked"


async def test_two_concurrent_refreshes_with_one_token_yield_one_success_and_a_revoked_family(
    api: Any, pair: dict
) -> None:
    responses = await asyncio.gather(*(_refresh(api, pair["refresh_token"]) for _ in range(2)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses == [200, 401]
    winner = next(response.json() for response in responses if response.status_code == 200)
    assert (await _refresh(api, winner["refresh_token"])).status_code == 401


async def test_a_session_idle_for_30_minutes_ends(api: Any, pair: dict) -> None:
    with time_machine.travel(time.time() + 29 * 60, tick=False):
        still_alive = await _refresh(api, pair["refresh_token"])
    assert still_alive.status_code == 200
    with time_machine.travel(time.time() + (29 + 31) * 60, tick=False):
        idle = await _refresh(api, still_alive.json()["refresh_token"])
    assert idle.status_code == 401
    assert idle.json()["code"] == "session_expired"


async def test_no_session_outlives_12_hours_however_active(api: Any, pair: dict) -> None:
    start = time.time()
    current = pair
    elapsed_minutes = 0
    while elapsed_minutes + 20 < 12 * 60:
        elapsed_minutes += 20
        with time_machine.travel(start + elapsed_minutes * 60, tick=False):
            response = await _refresh(api, current["refresh_token"])
            assert response.status_code == 200, elapsed_minutes
            current = response.json()
            claims_exp = api.auth.tokens.verify(current["access_token"]).expires_at
            # An access token never reaches past the session's absolute end.
            assert claims_exp <= start + 12 * 3600 + 1
    with time_machine.travel(start + 12 * 3600 + 1, tick=False):
        ended = await _refresh(api, current["refresh_token"])
    assert ended.status_code == 401
    assert ended.json()["code"] == "session_expired"


async def test_unknown_refresh_token_is_401_and_a_too_short_one_is_422(api: Any, pair: dict) -> None:
    unknown = await _refresh(api, "x" * 43)
    assert unknown.status_code == 401
    assert unknown.json()["code"] == "invalid_refresh_token"
    short = await _refresh(api, "abc")
    assert short.status_code == 422
    assert short.json()["errors"][0]["field"] == "refresh_token"
