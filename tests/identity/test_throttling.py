"""Failed sign-ins are throttled per account and per address; the real user gets back in."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import time_machine

from tests.conftest import PASSWORD, build_tenant

WRONG = "definitely the wrong password"


async def _fail(api: Any, email: str, times: int) -> list[int]:
    return [(await api.sign_in(email, WRONG)).status_code for _ in range(times)]


async def test_the_sixth_attempt_after_five_failures_is_429_even_with_the_right_password(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=())
    assert await _fail(api, tenant.admin_email, 5) == [401] * 5
    locked = await api.sign_in(tenant.admin_email, PASSWORD)
    assert locked.status_code == 429
    assert locked.json()["code"] == "login_throttled"
    retry_after = int(locked.headers["retry-after"])
    assert 0 < retry_after <= 900


async def test_after_the_window_the_real_user_signs_in_from_another_address(start_api: Any) -> None:
    async with start_api(client_address="198.51.100.7") as attacker:
        tenant = await build_tenant(attacker, "alpha", roles=())
        await _fail(attacker, tenant.admin_email, 5)
        assert (await attacker.sign_in(tenant.admin_email, PASSWORD)).status_code == 429
        with time_machine.travel(time.time() + 901, tick=False):
            # Same process (the memory store), another client address: the account window has passed.
            attacker.client._transport = type(attacker.client._transport)(
                app=attacker.client._transport.app, client=("203.0.113.50", 40000)
            )
            assert (await attacker.sign_in(tenant.admin_email, PASSWORD)).status_code == 200


async def test_one_address_spraying_many_accounts_is_throttled_but_others_are_not(start_api: Any) -> None:
    async with start_api(client_address="198.51.100.9", login_max_failures_per_address=6) as sprayer:
        tenant = await build_tenant(sprayer, "alpha", roles=("doctor", "nurse"))
        for email in (tenant.admin_email, tenant.emails["doctor"], tenant.emails["nurse"]):
            await _fail(sprayer, email, 2)
        blocked = await sprayer.sign_in(tenant.emails["nurse"], PASSWORD)
        assert blocked.status_code == 429
        sprayer.client._transport = type(sprayer.client._transport)(
            app=sprayer.client._transport.app, client=("203.0.113.60", 40000)
        )
        assert (await sprayer.sign_in(tenant.emails["nurse"], PASSWORD)).status_code == 200


async def test_successful_sign_ins_do_not_count_towards_the_limit(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=())
    for _ in range(8):
        assert (await api.sign_in(tenant.admin_email, PASSWORD)).status_code == 200


async def test_unknown_accounts_are_throttled_like_real_ones(api: Any) -> None:
    assert await _fail(api, "ghost@alpha.test", 5) == [401] * 5
    assert (await api.sign_in("ghost@alpha.test", WRONG)).status_code == 429


@pytest.mark.parametrize("window", [2])
async def test_throttling_is_shared_through_redis_and_expires_with_its_window(
    start_api: Any, redis_url: str, window: int
) -> None:
    prefix = f"throttle-{time.time_ns()}:"
    settings = {"redis_url": redis_url, "redis_key_prefix": prefix, "login_failure_window_seconds": window}
    async with start_api(**settings) as server_a, start_api(**settings) as server_b:
        tenant = await build_tenant(server_a, "alpha", roles=())
        await _fail(server_a, tenant.admin_email, 3)
        await _fail(server_b, tenant.admin_email, 2)
        assert (await server_b.sign_in(tenant.admin_email, PASSWORD)).status_code == 429
        assert (await server_a.sign_in(tenant.admin_email, PASSWORD)).status_code == 429
        await asyncio.sleep(window + 0.5)
        assert (await server_a.sign_in(tenant.admin_email, PASSWORD)).status_code == 200
