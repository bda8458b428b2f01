"""Signing in: a bearer pair for the right password, one indistinguishable answer for every wrong one."""

from __future__ import annotations

import statistics
import time
from typing import Any

import jwt
from sqlalchemy import select

from sehat.identity.models import User
from tests.conftest import PASSWORD, build_tenant


async def test_right_password_returns_a_bearer_pair_with_a_15_minute_eddsa_access_token(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    response = await api.sign_in(tenant.emails["doctor"])
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 900
    header = jwt.get_unverified_header(body["access_token"])
    assert header["alg"] == "EdDSA"
    assert header["kid"] == api.auth.signing_keys.current_kid
    claims = jwt.decode(body["access_token"], options={"verify_signature": False})
    assert claims["aud"] == "sehat-staff"
    assert claims["iss"] == "http://127.0.0.1:8000"
    assert claims["org"] == str(tenant.organization_id)
    assert claims["roles"] == ["doctor"]
    assert claims["exp"] - claims["iat"] == 900
    assert {"sub", "jti", "sid", "nbf"} <= set(claims)
    assert response.headers["cache-control"] == "no-store"


async def test_unknown_user_wrong_password_and_disabled_account_get_the_same_status_and_body(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    async with api.unit_of_work() as session:
        user = await session.scalar(select(User).where(User.email == tenant.emails["front_office"]))
        user.active = False
    unknown = await api.sign_in("nobody@alpha.test", PASSWORD)
    wrong = await api.sign_in(tenant.emails["doctor"], "not the right password")
    disabled = await api.sign_in(tenant.emails["front_office"], PASSWORD)
    assert unknown.status_code == wrong.status_code == disabled.status_code == 401
    assert unknown.json() == wrong.json() == disabled.json()
    assert unknown.json()["code"] == "invalid_credentials"
    assert unknown.headers["content-type"] == "application/problem+json"


async def test_unknown_user_costs_exactly_one_password_verification_like_a_known_one(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    calls: list[str] = []
    original = api.auth.passwords._verify_sync

    def counting(stored_hash: str, password: str) -> bool:
        calls.append(stored_hash[:10])
        return original(stored_hash, password)

    api.auth.passwords._verify_sync = counting
    await api.sign_in("nobody@alpha.test", "whatever password")
    unknown_calls = len(calls)
    await api.sign_in(tenant.emails["doctor"], "whatever password")
    assert unknown_calls == 1
    assert len(calls) == 2
    assert all(prefix.startswith("$argon2id$") for prefix in calls)


async def test_unknown_user_and_wrong_password_take_the_same_time_with_production_hashing(
    start_api: Any, backend: str
) -> None:
    production_cost = {"argon2_time_cost": 3, "argon2_memory_kib": 65_536, "argon2_parallelism": 4}
    async with start_api(**production_cost, login_max_failures_per_address=1000) as api:
        tenant = await build_tenant(api, "alpha", roles=())
        samples: dict[str, list[float]] = {"unknown": [], "wrong": []}
        for index in range(8):
            for kind, email in (("unknown", f"ghost{index}@alpha.test"), ("wrong", tenant.admin_email)):
                started = time.perf_counter()
                response = await api.sign_in(email, f"wrong password {index}")
                samples[kind].append(time.perf_counter() - started)
                assert response.status_code in (401, 429)
        unknown, wrong = statistics.median(samples["unknown"]), statistics.median(samples["wrong"])
    # Both are dominated by one Argon2 verification (tens of milliseconds); a missing one would halve a side.
    assert 0.6 < unknown / wrong < 1.6, (unknown, wrong)


async def test_password_hash_is_argon2id_and_is_upgraded_at_sign_in_when_the_cost_changes(start_api: Any) -> None:
    async with start_api() as api:
        tenant = await build_tenant(api, "alpha")
        async with api.unit_of_work() as session:
            before = await session.scalar(select(User.password_hash).where(User.email == tenant.emails["doctor"]))
    assert before.startswith("$argon2id$v=19$m=8,t=1,p=1$")
    async with start_api(argon2_time_cost=2, argon2_memory_kib=16) as api:
        assert (await api.sign_in(tenant.emails["doctor"])).status_code == 200
        async with api.unit_of_work() as session:
            after = await session.scalar(select(User.password_hash).where(User.email == tenant.emails["doctor"]))
        assert after.startswith("$argon2id$v=19$m=16,t=2,p=1$")
        # The upgraded hash still accepts the same password.
        assert (await api.sign_in(tenant.emails["doctor"])).status_code == 200


async def test_email_is_matched_case_insensitively(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    response = await api.sign_in("  " + tenant.emails["doctor"].upper())
    assert response.status_code == 200


async def test_sign_in_form_with_unknown_or_missing_fields_is_422_listing_them(api: Any) -> None:
    missing = await api.client.post("/api/v1/auth/token", data={"username": "a@b.test"})
    assert missing.status_code == 422
    assert [error["field"] for error in missing.json()["errors"]] == ["password"]
    unknown = await api.client.post(
        "/api/v1/auth/token", data={"username": "a@b.test", "password": "x" * 12, "role": "platform_admin"}
    )
    assert unknown.status_code == 422
    assert "role" in [error["field"] for error in unknown.json()["errors"]]


async def test_passwords_of_128_characters_work_and_the_response_never_echoes_a_password(api: Any) -> None:
    long_password = "p" * 127 + "!"
    tenant = await build_tenant(api, "alpha")
    headers = await api.headers_for(tenant.admin_email)
    created = await api.client.post(
        "/api/v1/users",
        headers=headers,
        json={"email": "long@alpha.test", "full_name": "Long Pass", "roles": ["nurse"], "password": long_password},
    )
    assert created.status_code == 201
    assert long_password not in created.text
    assert (await api.sign_in("long@alpha.test", long_password)).status_code == 200
    too_long = await api.client.post(
        "/api/v1/users",
        headers=headers,
        json={"email": "longer@alpha.test", "full_name": "Too Long", "roles": ["nurse"], "password": "p" * 129},
    )
    assert too_long.status_code == 422
    assert "p" * 129 not in too_long.text
