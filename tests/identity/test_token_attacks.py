"""Every malformed, forged, expired or misdirected access token is refused with 401 and changes nothing."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import time_machine
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.conftest import build_tenant


def _claims(api: Any, tenant: Any, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": api.auth.tokens.issuer,
        "aud": "sehat-staff",
        "sub": str(uuid.uuid4()),
        "org": str(tenant.organization_id),
        "roles": ["org_admin"],
        "sid": str(uuid.uuid4()),
        "scope": "full",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "jti": uuid.uuid4().hex,
    }
    claims.update(changes)
    return {key: value for key, value in claims.items() if value is not None}


def _sign(api: Any, claims: dict[str, Any], **header: Any) -> str:
    kid, private_key = api.auth.signing_keys.signer()
    return jwt.encode(claims, private_key, algorithm="EdDSA", headers={"kid": kid, **header})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


async def _assert_refused(api: Any, token: str) -> None:
    before = await _user_count(api)
    response = await api.client.post(
        "/api/v1/users",
        headers={"Authorization": f"Bearer {token}"},
        json={
            "email": f"{uuid.uuid4().hex[:8]}@alpha.test",
            "full_name": "X",
            "roles": ["nurse"],
            "password": "p" * 14,
        },
    )
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["code"] in {"invalid_token", "wrong_audience"}
    assert await _user_count(api) == before


async def _user_count(api: Any) -> int:
    from sqlalchemy import func, select

    from sehat.identity.models import User

    async with api.unit_of_work() as session:
        return int(await session.scalar(select(func.count()).select_from(User)))


@pytest.fixture
async def tenant(api: Any) -> Any:
    return await build_tenant(api, "alpha", roles=())


async def test_a_correctly_signed_forged_claim_set_is_accepted_so_the_refusals_below_mean_something(
    api: Any, tenant: Any
) -> None:
    response = await api.client.get(
        "/api/v1/facilities", headers={"Authorization": f"Bearer {_sign(api, _claims(api, tenant))}"}
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"aud": "sehat-elsewhere"}, id="wrong-audience"),
        pytest.param({"iss": "https://evil.example"}, id="wrong-issuer"),
        pytest.param({"exp": None}, id="no-exp"),
        pytest.param({"iat": None}, id="no-iat"),
        pytest.param({"nbf": None}, id="no-nbf"),
        pytest.param({"aud": None}, id="no-aud"),
        pytest.param({"jti": None}, id="no-jti"),
        # Times are taken when the test runs, not when it is collected: a long suite reaches this test minutes later.
        pytest.param(lambda: {"exp": int(time.time()) - 5}, id="expired"),
        pytest.param(lambda: {"nbf": int(time.time()) + 120}, id="not-yet-valid"),
        pytest.param({"sub": "not-a-uuid"}, id="malformed-subject"),
        pytest.param({"roles": ["superuser"]}, id="unknown-role"),
    ],
)
async def test_properly_signed_token_with_bad_claims_is_refused(
    api: Any, tenant: Any, changes: dict | Callable[[], dict]
) -> None:
    changes = changes() if callable(changes) else changes
    await _assert_refused(api, _sign(api, _claims(api, tenant, **changes)))


async def test_alg_none_is_refused(api: Any, tenant: Any) -> None:
    kid = api.auth.signing_keys.current_kid
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": kid}).encode())
    payload = _b64(json.dumps(_claims(api, tenant)).encode())
    await _assert_refused(api, f"{header}.{payload}.")


async def test_hmac_signed_with_the_public_key_is_refused(api: Any, tenant: Any) -> None:
    kid, private_key = api.auth.signing_keys.signer()
    public_raw = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = _b64(json.dumps(_claims(api, tenant)).encode())
    import hashlib
    import hmac

    signature = _b64(hmac.new(public_raw, f"{header}.{payload}".encode(), hashlib.sha256).digest())
    await _assert_refused(api, f"{header}.{payload}.{signature}")


async def test_token_signed_by_another_key_under_our_kid_is_refused(api: Any, tenant: Any) -> None:
    stranger = Ed25519PrivateKey.generate()
    token = jwt.encode(
        _claims(api, tenant), stranger, algorithm="EdDSA", headers={"kid": api.auth.signing_keys.current_kid}
    )
    await _assert_refused(api, token)


async def test_token_naming_an_unknown_kid_is_refused(api: Any, tenant: Any) -> None:
    stranger = Ed25519PrivateKey.generate()
    await _assert_refused(api, jwt.encode(_claims(api, tenant), stranger, algorithm="EdDSA", headers={"kid": "zz"}))


async def test_token_carrying_its_own_key_in_the_header_is_refused(api: Any, tenant: Any) -> None:
    stranger = Ed25519PrivateKey.generate()
    public = _b64(stranger.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))
    embedded = {"kty": "OKP", "crv": "Ed25519", "x": public}
    token = jwt.encode(
        _claims(api, tenant),
        stranger,
        algorithm="EdDSA",
        headers={"kid": api.auth.signing_keys.current_kid, "jwk": embedded},
    )
    await _assert_refused(api, token)
    await _assert_refused(api, _sign(api, _claims(api, tenant), jku="https://evil.example/keys"))


async def test_tampered_payload_is_refused(api: Any, tenant: Any) -> None:
    header, payload, signature = _sign(api, _claims(api, tenant, roles=["nurse"])).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["roles"] = ["org_admin"]
    await _assert_refused(api, f"{header}.{_b64(json.dumps(claims).encode())}.{signature}")


@pytest.mark.parametrize("value", ["", "Bearer", "Bearer ", "Bearer not.a.jwt", "Basic dXNlcjpwYXNz", "Bearer a.b"])
async def test_missing_or_malformed_authorization_header_is_401(api: Any, tenant: Any, value: str) -> None:
    headers = {"Authorization": value} if value else {}
    response = await api.client.get("/api/v1/facilities", headers=headers)
    assert response.status_code == 401
    assert response.json()["code"] == "invalid_token"


async def test_real_token_stops_working_when_it_expires(api: Any, tenant: Any) -> None:
    headers = await api.headers_for(tenant.admin_email)
    assert (await api.client.get("/api/v1/me", headers=headers)).status_code == 200
    with time_machine.travel(time.time() + 901, tick=False):
        expired = await api.client.get("/api/v1/me", headers=headers)
    assert expired.status_code == 401
    assert expired.json()["code"] == "invalid_token"


async def test_errors_for_refused_tokens_name_no_reason_an_attacker_could_use(api: Any, tenant: Any) -> None:
    bodies = set()
    for changes in ({"aud": "x"}, {"iss": "x"}, {"exp": int(time.time()) - 5}):
        response = await api.client.get(
            "/api/v1/me", headers={"Authorization": f"Bearer {_sign(api, _claims(api, tenant, **changes))}"}
        )
        bodies.add(response.text)
    assert len(bodies) == 1
