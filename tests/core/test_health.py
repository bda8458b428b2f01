"""Liveness answers without dependencies; readiness answers only when the database (and Redis) do."""

from __future__ import annotations

from typing import Any


async def test_healthz_answers_ok(api: Any) -> None:
    response = await api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_reports_database_and_redis_ok(start_api: Any, redis_url: str) -> None:
    async with start_api(redis_url=redis_url) as api:
        response = await api.client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "redis": "ok", "session_store": "ok", "realtime": "ok"},
    }


async def test_readyz_is_503_problem_when_redis_is_unreachable(start_api: Any) -> None:
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    async with start_api(redis_url="redis://127.0.0.1:1/0") as api:
        response = await api.client.get("/readyz")
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == "not_ready"
    assert body["checks"] == {
        "database": "ok",
        "redis": "unavailable",
        "session_store": "syncing",
        "realtime": "syncing",
    }
