"""Bad input gets an RFC 9457 problem with the right status; a 500 never carries internals."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest
from fastapi import APIRouter

from tests.conftest import build_tenant


@pytest.fixture
async def admin(api: Any) -> dict[str, str]:
    tenant = await build_tenant(api, "alpha", roles=())
    return await api.headers_for(tenant.admin_email)


def _assert_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert {"type", "title", "status", "detail", "code"} <= set(body)
    assert body["status"] == status
    return body


async def test_malformed_json_is_422(api: Any, admin: dict) -> None:
    response = await api.client.post(
        "/api/v1/facilities", headers={**admin, "Content-Type": "application/json"}, content=b'{"name": "x",'
    )
    body = _assert_problem(response, 422)
    assert body["errors"][0]["type"] == "json_invalid"


async def test_wrong_types_are_422_listing_every_field(api: Any, admin: dict) -> None:
    response = await api.client.post(
        "/api/v1/facilities", headers=admin, json={"name": 5, "code": [], "timezone": None}
    )
    body = _assert_problem(response, 422)
    assert sorted(error["field"] for error in body["errors"]) == ["code", "name", "timezone"]


async def test_unknown_fields_are_422_and_nothing_is_written(api: Any, admin: dict) -> None:
    response = await api.client.post(
        "/api/v1/facilities",
        headers=admin,
        json={"name": "Sneaky", "code": "SNK", "timezone": "Asia/Karachi", "organization_id": str(uuid.uuid4())},
    )
    body = _assert_problem(response, 422)
    assert [error["field"] for error in body["errors"]] == ["organization_id"]
    listed = (await api.client.get("/api/v1/facilities", headers=admin)).json()["items"]
    assert "SNK" not in [facility["code"] for facility in listed]


async def test_validation_errors_never_echo_the_submitted_value(api: Any, admin: dict) -> None:
    canary = "canary-secret-value-7731"
    response = await api.client.post(
        "/api/v1/users", headers=admin, json={"email": canary, "full_name": "X", "roles": ["nurse"], "password": canary}
    )
    _assert_problem(response, 422)
    assert canary not in response.text


async def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(start_api: Any) -> None:
    async with start_api(max_request_body_bytes=2048) as api:
        declared = await api.client.post("/api/v1/auth/refresh", content=b"x" * 4096)
        _assert_problem(declared, 413)

        async def chunks() -> Any:
            for _ in range(8):
                yield b"y" * 1024

        streamed = await api.client.post(
            "/api/v1/auth/refresh", content=chunks(), headers={"Content-Type": "application/json"}
        )
        _assert_problem(streamed, 413)
        small = await api.client.post("/api/v1/auth/refresh", json={"refresh_token": "z" * 40})
        assert small.status_code == 401


async def test_unknown_path_is_404_problem_and_wrong_method_is_405_problem(api: Any) -> None:
    _assert_problem(await api.client.get("/api/v1/no-such-thing"), 404)
    _assert_problem(await api.client.delete("/api/v1/auth/token"), 405)


async def test_an_unexpected_error_is_a_generic_500_without_internals(api: Any, capsys: Any) -> None:
    router = APIRouter()

    @router.get("/boom")
    async def boom() -> None:
        raise RuntimeError("internal detail: password=hunter2 at /srv/secret/path")

    api.app.include_router(router)
    # Starlette re-raises after answering so the server can log it; this client must not re-raise it here.
    transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://sehat.test") as client:
        response = await client.get("/boom")
    body = _assert_problem(response, 500)
    assert body["code"] == "internal_error"
    assert response.headers["x-request-id"]
    assert response.headers["x-content-type-options"] == "nosniff"
    assert "hunter2" not in response.text
    assert "secret" not in response.text
    logs = "".join(capsys.readouterr())
    assert "unhandled_error" in logs
    assert "hunter2" not in logs


async def test_every_response_carries_a_request_id_and_security_headers(api: Any) -> None:
    response = await api.client.get("/healthz")
    assert len(response.headers["x-request-id"]) >= 16
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"
    assert "strict-transport-security" not in response.headers  # development serves plain HTTP


async def test_a_well_formed_incoming_request_id_is_kept_and_a_hostile_one_replaced(api: Any) -> None:
    kept = await api.client.get("/healthz", headers={"X-Request-ID": "trace-0123456789abcdef"})
    assert kept.headers["x-request-id"] == "trace-0123456789abcdef"
    replaced = await api.client.get("/healthz", headers={"X-Request-ID": "evil\r\nSet-Cookie: x=1"})
    assert replaced.headers["x-request-id"] != "evil\r\nSet-Cookie: x=1"
    assert "set-cookie" not in replaced.headers


async def test_production_adds_hsts_and_hides_the_interactive_docs(start_api: Any) -> None:
    async with start_api(environment="production", trusted_proxies="127.0.0.1") as api:
        response = await api.client.get("/healthz")
        assert response.headers["strict-transport-security"].startswith("max-age=31536000")
        assert (await api.client.get("/docs")).status_code == 404
        assert (await api.client.get("/openapi.json")).status_code == 200
