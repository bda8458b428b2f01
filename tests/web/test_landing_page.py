"""The landing page at / tells a person what this server is, and the docs at /docs load nothing from outside."""

from __future__ import annotations

import base64
import hashlib
import re
from typing import Any

import httpx
from fastapi import FastAPI

from sehat import __version__
from sehat.core.crypto import KeyRing
from sehat.core.http import install_problem_handlers
from sehat.settings import Settings
from sehat.web import pages


def _policy(response: httpx.Response) -> dict[str, str]:
    header = response.headers["content-security-policy"]
    return {part.split(" ", 1)[0]: part.partition(" ")[2] for part in (p.strip() for p in header.split(";")) if part}


def _sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


async def test_landing_page_is_html_with_version_and_links(api: Any) -> None:
    response = await api.client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    body = response.text
    assert __version__ in body
    assert "development" in body
    for path in ("/docs", "/healthz", "/readyz", "/openapi.json"):
        assert f'href="{path}"' in body


async def test_landing_page_carries_a_strict_content_security_policy(api: Any) -> None:
    response = await api.client.get("/")
    policy = _policy(response)
    assert policy["default-src"] == "'none'"
    assert policy["frame-ancestors"] == "'none'"
    assert policy["img-src"] == "'self' data:"
    assert "'unsafe-inline'" not in response.headers["content-security-policy"]
    assert "<script" not in response.text
    # The one inline style block is allowed by its hash, so the page renders styled under the policy.
    (style,) = re.findall(r"<style>(.*?)</style>", response.text, re.DOTALL)
    assert policy["style-src"] == _sha256_source(style)


async def test_landing_page_shows_the_demo_hint_in_development(api: Any) -> None:
    response = await api.client.get("/")
    assert 'id="demo-hint"' in response.text
    assert "demo accounts printed in the terminal" in response.text


async def test_landing_page_in_production_has_no_demo_hint_and_no_docs_link(start_api: Any) -> None:
    async with start_api(
        environment="production", master_key=KeyRing.generate_entry("prod1"), trusted_proxies="127.0.0.1"
    ) as api:
        response = await api.client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "content-security-policy" in response.headers
    body = response.text
    assert __version__ in body
    assert "production" in body
    assert 'id="demo-hint"' not in body
    assert "demo" not in body.lower()
    assert 'href="/docs"' not in body
    assert 'href="/openapi.json"' in body


async def test_the_full_app_serves_the_self_hosted_docs_not_a_cdn_page(start_api: Any) -> None:
    async with start_api() as api:
        response = await api.client.get("/docs")
    assert response.status_code == 200
    assert "/docs/assets/swagger-ui-bundle.js" in response.text
    assert "cdn" not in response.text.lower()


# The docs page's details are checked on its router alone, in both environments, without a database.


def _docs_client(environment: str) -> httpx.AsyncClient:
    app = FastAPI(docs_url=None, redoc_url=None)
    extra = {"master_key": KeyRing.generate_entry("d1"), "trusted_proxies": "127.0.0.1"}
    app.state.settings = Settings(_env_file=None, environment=environment, **extra)  # type: ignore[call-arg]
    install_problem_handlers(app)
    app.include_router(pages.router)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://sehat.test")


async def test_docs_page_loads_swagger_ui_from_this_server_only() -> None:
    async with _docs_client("development") as client:
        response = await client.get("/docs")
        assert response.status_code == 200
        body = response.text
        sources = re.findall(r'(?:src|href)="([^"]+)"', body)
        assert "/docs/assets/swagger-ui-bundle.js" in sources
        assert "/docs/assets/swagger-ui.css" in sources
        assert all(source.startswith(("/", "data:")) for source in sources), sources
        policy = _policy(response)
        assert policy["default-src"] == "'none'"
        assert policy["connect-src"] == "'self'"
        (inline,) = re.findall(r"<script>(.*?)</script>", body, re.DOTALL)
        assert policy["script-src"] == "'self' " + _sha256_source(inline)
        for name, media_type in (("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css")):
            asset = await client.get(f"/docs/assets/{name}")
            assert asset.status_code == 200
            assert asset.headers["content-type"].startswith(media_type)
            assert len(asset.content) > 10_000


async def test_docs_assets_serve_only_the_named_files() -> None:
    async with _docs_client("development") as client:
        for name in ("consts.py", "..%2F__init__.py", "favicon.png", "redoc.standalone.js"):
            response = await client.get(f"/docs/assets/{name}")
            assert response.status_code == 404, name


async def test_docs_are_absent_in_production() -> None:
    async with _docs_client("production") as client:
        assert (await client.get("/docs")).status_code == 404
        assert (await client.get("/docs/assets/swagger-ui-bundle.js")).status_code == 404
