"""Logging out ends the session at once, everywhere, and a restart does not bring it back."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis

from sehat.identity.revocation import FEED_STALE_AFTER_SECONDS
from tests.conftest import build_tenant


def _bearer(pair: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {pair['access_token']}"}


async def test_after_logout_the_access_and_refresh_tokens_are_refused(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=())
    pair = await api.full_session(tenant.admin_email)
    assert (await api.client.post("/api/v1/auth/logout", headers=_bearer(pair))).status_code == 204
    me = await api.client.get("/api/v1/me", headers=_bearer(pair))
    assert me.status_code == 401
    assert me.json()["code"] == "session_revoked"
    refresh = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    assert refresh.status_code == 401


async def test_logout_ends_only_that_session(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=())
    phone = await api.full_session(tenant.admin_email)
    laptop = await api.full_session(tenant.admin_email)
    await api.client.post("/api/v1/auth/logout", headers=_bearer(phone))
    assert (await api.client.get("/api/v1/me", headers=_bearer(laptop))).status_code == 200


async def test_a_logged_out_token_stays_refused_after_the_server_restarts(start_api: Any) -> None:
    async with start_api() as first:
        tenant = await build_tenant(first, "alpha", roles=())
        pair = await first.full_session(tenant.admin_email)
        await first.client.post("/api/v1/auth/logout", headers=_bearer(pair))
    async with start_api() as restarted:
        me = await restarted.client.get("/api/v1/me", headers=_bearer(pair))
    assert me.status_code == 401
    assert me.json()["code"] == "session_revoked"


async def test_logout_on_one_server_is_refused_by_another_sharing_redis(start_api: Any, redis_url: str) -> None:
    prefix = "shared-test:"
    async with start_api(redis_url=redis_url, redis_key_prefix=prefix) as server_a:
        tenant = await build_tenant(server_a, "alpha", roles=())
        pair = await server_a.full_session(tenant.admin_email)
        async with start_api(redis_url=redis_url, redis_key_prefix=prefix) as server_b:
            assert (await server_b.client.get("/api/v1/me", headers=_bearer(pair))).status_code == 200
            assert (await server_a.client.post("/api/v1/auth/logout", headers=_bearer(pair))).status_code == 204
            refused = await _refused_within(server_b, pair, seconds=1.0)
    assert refused.json()["code"] == "session_revoked"


async def _refused_within(server: Any, pair: dict[str, Any], *, seconds: float) -> Any:
    """Other servers learn of a revocation through Redis pub/sub: within milliseconds, not in the same instant."""
    deadline = time.monotonic() + seconds
    while True:
        response = await server.client.get("/api/v1/me", headers=_bearer(pair))
        if response.status_code == 401 or time.monotonic() > deadline:
            assert response.status_code == 401, response.text
            return response
        await asyncio.sleep(0.01)


async def test_a_revocation_made_while_a_server_was_unsubscribed_is_still_refused(
    start_api: Any, redis_url: str
) -> None:
    prefix = f"resub-{time.time_ns()}:"
    async with start_api(redis_url=redis_url, redis_key_prefix=prefix) as server_a:
        tenant = await build_tenant(server_a, "alpha", roles=())
        pair = await server_a.full_session(tenant.admin_email)
        async with start_api(redis_url=redis_url, redis_key_prefix=prefix) as server_b:
            assert (await server_b.client.get("/api/v1/me", headers=_bearer(pair))).status_code == 200
            # Cut server B's subscription, then log out on A while B cannot hear the announcement.
            killer = redis.Redis.from_url(redis_url)
            killed = 0
            for client in killer.client_list():
                if client.get("name") == prefix + "app" and "subscribe" in client.get("cmd", ""):
                    killed += killer.client_kill_filter(_id=client["id"])
            cut_at = time.monotonic()
            assert killed >= 2  # both servers' subscriptions
            assert (await server_a.client.post("/api/v1/auth/logout", headers=_bearer(pair))).status_code == 204
            # B may not notice a dead link at once, but never answers for the revoked session past the stale
            # bound: then 503 until it has re-subscribed and reloaded, then 401. Nothing announced is missed.
            statuses = []
            while time.monotonic() < cut_at + 8:
                response = await server_b.client.get("/api/v1/me", headers=_bearer(pair))
                statuses.append((time.monotonic() - cut_at, response.status_code))
                if response.status_code == 401:
                    break
                await asyncio.sleep(0.05)
            assert statuses[-1][1] == 401, statuses
            assert all(code in (200, 503) for _, code in statuses[:-1]), statuses
            late_successes = [
                moment for moment, code in statuses if code == 200 and moment > FEED_STALE_AFTER_SECONDS + 0.5
            ]
            assert late_successes == [], statuses
            assert (await server_b.client.get("/readyz")).json()["checks"]["session_store"] == "ok"
            killer.close()


async def test_when_redis_is_unreachable_authenticated_requests_fail_closed_with_503(start_api: Any) -> None:
    async with start_api() as healthy:
        tenant = await build_tenant(healthy, "alpha", roles=())
        pair = await healthy.full_session(tenant.admin_email)
    # Port 1 on loopback refuses connections at once: the revocation store cannot be asked.
    async with start_api(redis_url="redis://127.0.0.1:1/0") as broken:
        response = await broken.client.get("/api/v1/me", headers=_bearer(pair))
    assert response.status_code == 503
    assert response.json()["code"] == "session_store_unavailable"
