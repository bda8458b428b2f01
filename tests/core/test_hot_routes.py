"""A hot route serves its requests ahead of FastAPI's routing; a request it declines reaches the FastAPI route
of the same method and path with its body intact, so the route's own answer stands for every irregular
request. Other paths never meet the hot route."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Request
from starlette.types import Send

from sehat.core.http import HotRoute, HotRoutes, bearer_token

served_by_hot_route: list[bytes] = []


async def _serve(request: Request, send: Send) -> bool:
    mode = request.headers.get("x-mode")
    if mode == "decline-unread":
        return False
    body = await request.body()
    if mode == "decline-after-reading":
        return False
    served_by_hot_route.append(body)
    content = orjson.dumps({"by": "hot route", "body": body.decode(), "token": bearer_token(request)})
    await send({"type": "http.response.start", "status": 201, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": content})
    return True


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(HotRoutes, routes=(HotRoute("POST", "/things", _serve),))

    @app.post("/things")
    async def create(request: Request) -> dict[str, Any]:
        return {"by": "route", "body": (await request.body()).decode()}

    @app.post("/other")
    async def other(request: Request) -> dict[str, Any]:
        return {"by": "other route", "body": (await request.body()).decode()}

    return app


async def _post(path: str, body: bytes, **headers: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://sehat.test") as client:
        return await client.post(path, content=body, headers=headers)


async def test_the_hot_route_answers_its_own_requests() -> None:
    served_by_hot_route.clear()
    response = await _post("/things", b'{"n": 1}', authorization="Bearer abc.def")
    assert response.status_code == 201
    assert response.json() == {"by": "hot route", "body": '{"n": 1}', "token": "abc.def"}
    assert served_by_hot_route == [b'{"n": 1}']


async def test_a_declined_request_reaches_the_route_with_its_body_whole() -> None:
    served_by_hot_route.clear()
    body = b'{"big": "' + b"x" * 200_000 + b'"}'  # arrives in several chunks
    unread = await _post("/things", body, **{"x-mode": "decline-unread"})
    after_reading = await _post("/things", body, **{"x-mode": "decline-after-reading"})
    for response in (unread, after_reading):
        assert response.status_code == 200
        assert response.json() == {"by": "route", "body": body.decode()}
    assert served_by_hot_route == []


async def test_other_methods_and_paths_never_meet_the_hot_route() -> None:
    served_by_hot_route.clear()
    assert (await _post("/other", b"{}")).json() == {"by": "other route", "body": "{}"}
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://sehat.test") as client:
        assert (await client.get("/things")).status_code == 405
    assert served_by_hot_route == []


def test_the_bearer_token_is_read_as_fastapis_http_bearer_reads_it() -> None:
    def token(header: str | None) -> str | None:
        headers = [(b"authorization", header.encode())] if header is not None else []
        return bearer_token(Request({"type": "http", "headers": headers}))

    assert token("Bearer abc") == "abc"
    assert token("bearer abc") == "abc"
    assert token("Basic abc") is None
    assert token("Bearer") is None
    assert token(None) is None
