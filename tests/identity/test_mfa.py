"""Staff must enrol a TOTP second factor before doing anything else, and each code works exactly once."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pyotp
import pytest
import time_machine
from sqlalchemy import select

from sehat.identity.models import User
from tests.conftest import build_tenant


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def tenant(api: Any) -> Any:
    return await build_tenant(api, "alpha", roles=("doctor",))


async def _enrol(api: Any, email: str) -> tuple[str, dict[str, Any]]:
    """Sign in, enrol and confirm; the secret and the full session."""
    first = (await api.sign_in(email)).json()
    enrolment = await api.client.post("/api/v1/auth/mfa/enroll", headers=_bearer(first["access_token"]))
    secret = enrolment.json()["secret"]
    confirmed = await api.client.post(
        "/api/v1/auth/mfa/confirm", headers=_bearer(first["access_token"]), json={"otp": pyotp.TOTP(secret).now()}
    )
    assert confirmed.status_code == 200, confirmed.text
    return secret, confirmed.json()


async def test_staff_without_mfa_get_a_token_that_only_allows_enrolment(api: Any, tenant: Any) -> None:
    tokens = (await api.sign_in(tenant.emails["doctor"])).json()
    assert tokens["scope"] == "mfa_enroll"
    headers = _bearer(tokens["access_token"])
    refused = await api.client.get("/api/v1/facilities", headers=headers)
    assert refused.status_code == 403
    assert refused.json()["code"] == "mfa_enrollment_required"
    me = await api.client.get("/api/v1/me", headers=headers)
    assert me.status_code == 200
    assert me.json()["mfa_enabled"] is False
    assert me.json()["scope"] == "mfa_enroll"


async def test_enrolment_returns_a_secret_and_an_otpauth_uri(api: Any, tenant: Any) -> None:
    tokens = (await api.sign_in(tenant.emails["doctor"])).json()
    response = await api.client.post("/api/v1/auth/mfa/enroll", headers=_bearer(tokens["access_token"]))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"secret", "otpauth_uri"}
    assert body["otpauth_uri"].startswith("otpauth://totp/sehat:")
    assert f"secret={body['secret']}" in body["otpauth_uri"]


async def test_confirming_with_a_valid_code_turns_mfa_on_and_swaps_the_session_for_a_full_one(
    api: Any, tenant: Any
) -> None:
    enrolment_only = (await api.sign_in(tenant.emails["doctor"])).json()
    secret = (await api.client.post("/api/v1/auth/mfa/enroll", headers=_bearer(enrolment_only["access_token"]))).json()[
        "secret"
    ]
    confirmed = await api.client.post(
        "/api/v1/auth/mfa/confirm",
        headers=_bearer(enrolment_only["access_token"]),
        json={"otp": pyotp.TOTP(secret).now()},
    )
    assert confirmed.status_code == 200
    full = confirmed.json()
    assert full["scope"] == "full"
    assert (await api.client.get("/api/v1/facilities", headers=_bearer(full["access_token"]))).status_code == 200
    old = await api.client.get("/api/v1/me", headers=_bearer(enrolment_only["access_token"]))
    assert old.status_code == 401


async def test_a_wrong_confirmation_code_leaves_mfa_off(api: Any, tenant: Any) -> None:
    tokens = (await api.sign_in(tenant.emails["doctor"])).json()
    headers = _bearer(tokens["access_token"])
    secret = (await api.client.post("/api/v1/auth/mfa/enroll", headers=headers)).json()["secret"]
    wrong = str((int(pyotp.TOTP(secret).now()) + 1) % 1_000_000).zfill(6)
    response = await api.client.post("/api/v1/auth/mfa/confirm", headers=headers, json={"otp": wrong})
    assert response.status_code == 422
    assert response.json()["code"] == "invalid_otp"
    me = await api.client.get("/api/v1/me", headers=headers)
    assert me.json()["mfa_enabled"] is False
    malformed = await api.client.post("/api/v1/auth/mfa/confirm", headers=headers, json={"otp": "12ab56"})
    assert malformed.status_code == 422
    assert malformed.json()["errors"][0]["field"] == "otp"


async def test_once_mfa_is_on_sign_in_needs_a_valid_code(api: Any, tenant: Any) -> None:
    secret, _ = await _enrol(api, tenant.emails["doctor"])
    missing = await api.sign_in(tenant.emails["doctor"])
    assert missing.status_code == 401
    assert missing.json()["code"] == "otp_required"
    wrong = await api.sign_in(
        tenant.emails["doctor"], otp="000000" if pyotp.TOTP(secret).now() != "000000" else "111111"
    )
    assert wrong.status_code == 401
    assert wrong.json()["code"] == "invalid_otp"
    with time_machine.travel(time.time() + 30, tick=False):
        right = await api.sign_in(tenant.emails["doctor"], otp=pyotp.TOTP(secret).now())
    assert right.status_code == 200
    assert right.json()["scope"] == "full"


async def test_a_code_is_accepted_once_and_never_again(api: Any, tenant: Any) -> None:
    secret, _ = await _enrol(api, tenant.emails["doctor"])
    with time_machine.travel(time.time() + 30, tick=False):
        code = pyotp.TOTP(secret).now()
        first = await api.sign_in(tenant.emails["doctor"], otp=code)
        replay = await api.sign_in(tenant.emails["doctor"], otp=code)
    assert first.status_code == 200
    assert replay.status_code == 401
    assert replay.json()["code"] == "invalid_otp"


async def test_an_older_code_is_refused_after_a_newer_one_was_used(api: Any, tenant: Any) -> None:
    secret, _ = await _enrol(api, tenant.emails["doctor"])
    with time_machine.travel(time.time() + 60, tick=False):
        totp = pyotp.TOTP(secret)
        step = totp.timecode(time_machine_now())
        assert (await api.sign_in(tenant.emails["doctor"], otp=totp.generate_otp(step))).status_code == 200
        older = await api.sign_in(tenant.emails["doctor"], otp=totp.generate_otp(step - 1))
    assert older.status_code == 401


def time_machine_now() -> Any:
    from sehat.core.clock import utcnow

    return utcnow()


async def test_a_stale_code_outside_the_drift_window_is_refused(api: Any, tenant: Any) -> None:
    secret, _ = await _enrol(api, tenant.emails["doctor"])
    stale = pyotp.TOTP(secret).at(time.time() - 120)
    with time_machine.travel(time.time() + 60, tick=False):
        assert (await api.sign_in(tenant.emails["doctor"], otp=stale)).status_code == 401


async def test_two_simultaneous_sign_ins_with_one_code_let_only_one_through(api: Any, tenant: Any) -> None:
    secret, _ = await _enrol(api, tenant.emails["doctor"])
    with time_machine.travel(time.time() + 30, tick=False):
        code = pyotp.TOTP(secret).now()
        responses = await asyncio.gather(*(api.sign_in(tenant.emails["doctor"], otp=code) for _ in range(4)))
    assert sorted(response.status_code for response in responses) == [200, 401, 401, 401]


async def test_enrolling_again_when_mfa_is_on_is_409(api: Any, tenant: Any) -> None:
    _, full = await _enrol(api, tenant.emails["doctor"])
    response = await api.client.post("/api/v1/auth/mfa/enroll", headers=_bearer(full["access_token"]))
    assert response.status_code == 409
    assert response.json()["code"] == "mfa_already_enabled"


async def test_the_totp_secret_is_stored_sealed_never_in_plain_text(api: Any, tenant: Any) -> None:
    secret, _ = await _enrol(api, tenant.emails["doctor"])
    async with api.unit_of_work() as session:
        sealed = await session.scalar(select(User.mfa_secret_sealed).where(User.email == tenant.emails["doctor"]))
    assert sealed is not None
    assert secret.encode() not in sealed
    assert b"test1" in sealed[:8]  # the master key id travels with the ciphertext


async def test_patients_get_a_full_token_without_a_second_factor(api: Any, tenant: Any) -> None:
    await api.add_patient_account(tenant.organization_id, "patient@alpha.test")
    tokens = (await api.sign_in("patient@alpha.test")).json()
    assert tokens["scope"] == "full"
