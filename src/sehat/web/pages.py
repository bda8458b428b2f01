"""The landing page at ``/`` and the interactive API docs at ``/docs``, served without any outside host.

FastAPI's own ``/docs`` page loads Swagger UI from a CDN, which fails on a machine without internet. Here
the page loads Swagger UI from the files the ``fastapi-offline`` package ships, through two fixed asset
routes. Both pages carry a strict Content-Security-Policy; inline code is allowed only by its SHA-256 hash.
The docs are absent in production, as the design says (``/openapi.json`` stays).
"""

from __future__ import annotations

import base64
import hashlib
import html
import re
from importlib.resources import files
from pathlib import Path
from string import Template
from urllib.parse import quote

import fastapi_offline
from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from starlette.responses import FileResponse, HTMLResponse

from sehat import __version__
from sehat.core.errors import NotFound
from sehat.settings import Settings

router = APIRouter(include_in_schema=False)

API_BASE = "/api/v1"
DOCS_PATH = "/docs"
DOCS_ASSETS_PATH = "/docs/assets"

_FAVICON_SVG = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 56 56"><rect width="56" height="56" rx="14" '
    'fill="#0f766e"/><path d="M23 13h10v10h10v10H33v10H23V33H13V23h10z" fill="#fff"/></svg>'
)
FAVICON_URL = "data:image/svg+xml," + quote(_FAVICON_SVG)

_LANDING = Template((files("sehat.web") / "templates" / "landing.html").read_text(encoding="utf-8"))
_STYLE = re.compile(r"<style>(.*?)</style>", re.DOTALL)
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def csp_hash(source: str) -> str:
    """A CSP source expression that allows exactly this inline script or style text."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


_styles = _STYLE.findall(_LANDING.template)
if len(_styles) != 1:
    raise RuntimeError("landing.html must hold exactly one <style> block: its hash is the page's style policy")
LANDING_CSP = "; ".join(
    (
        "default-src 'none'",
        f"style-src {csp_hash(_styles[0])}",
        "img-src 'self' data:",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)

# Only these files are served, by name: no path from the request ever reaches the file system.
_SWAGGER_DIR = Path(fastapi_offline.__file__).parent / "static"
_DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
}


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _link(href: str, label: str, what: str) -> str:
    return (
        f'    <li><a href="{html.escape(href)}"><span class="path">{html.escape(label)}</span>'
        f'<span class="what">{html.escape(what)}</span></a></li>'
    )


def _unlinked(label: str, what: str) -> str:
    return (
        f'    <li><span><span class="path">{html.escape(label)}</span>'
        f'<span class="what">{html.escape(what)}</span></span></li>'
    )


def _demo_hint(root: str) -> str:
    docs = html.escape(root + DOCS_PATH)
    return f"""  <section class="hint" id="demo-hint">
    <h2>Trying it out</h2>
    <p>If you started this server with <code>sehat demo</code> (or <code>python3 dev.py run</code>), sign in with
    the demo accounts printed in the terminal: they share one password, and staff also give a one-time code from
    the printed TOTP secret.</p>
    <p>In the <a href="{docs}">API docs</a>, call <code>POST /api/v1/auth/token</code>, then paste the
    <code>access_token</code> it returns into <b>Authorize</b>.</p>
  </section>"""


@router.get("/")
async def landing_page(request: Request) -> HTMLResponse:
    """What a person opening the server in a browser sees: what this is, its version, where to go next."""
    settings = _settings(request)
    root = request.scope.get("root_path", "")
    links = []
    if settings.is_production:
        links.append(_unlinked(DOCS_PATH, "Interactive API documentation: turned off in production"))
    else:
        links.append(_link(root + DOCS_PATH, DOCS_PATH, "Interactive API documentation (Swagger UI)"))
    if request.app.openapi_url:
        links.append(_link(root + request.app.openapi_url, request.app.openapi_url, "The OpenAPI description"))
    links.append(_link(root + "/healthz", "/healthz", "Liveness: the process answers"))
    links.append(_link(root + "/readyz", "/readyz", "Readiness: the database (and Redis, if set) answer"))
    page = _LANDING.substitute(
        favicon=html.escape(FAVICON_URL),
        version=html.escape(__version__),
        environment=html.escape(settings.environment.value),
        api_base=html.escape(API_BASE),
        hint="" if settings.is_production else _demo_hint(root),
        links="\n".join(links),
    )
    return HTMLResponse(page, headers={"Content-Security-Policy": LANDING_CSP})


def _docs_available(request: Request) -> bool:
    return not _settings(request).is_production and bool(request.app.openapi_url)


@router.get(DOCS_PATH)
async def api_docs(request: Request) -> HTMLResponse:
    """Swagger UI from our own asset routes; the browser talks to no other host."""
    if not _docs_available(request):
        raise NotFound()
    root = request.scope.get("root_path", "")
    page = get_swagger_ui_html(
        openapi_url=root + request.app.openapi_url,
        title=f"{request.app.title} API docs",
        swagger_js_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{DOCS_ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=FAVICON_URL,
        oauth2_redirect_url=None,
        # No validator badge: it would send the API description's address to an outside service.
        swagger_ui_parameters={**(request.app.swagger_ui_parameters or {}), "validatorUrl": None},
    )
    body = bytes(page.body).decode()
    policy = "; ".join(
        (
            "default-src 'none'",
            "script-src 'self' " + " ".join(csp_hash(script) for script in _INLINE_SCRIPT.findall(body)),
            # Swagger UI sets style attributes from its scripts.
            "style-src 'self' 'unsafe-inline'",
            "img-src 'self' data:",
            "connect-src 'self'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )
    return HTMLResponse(body, headers={"Content-Security-Policy": policy})


@router.get(DOCS_ASSETS_PATH + "/{name}")
async def api_docs_asset(name: str, request: Request) -> FileResponse:
    media_type = _DOCS_ASSETS.get(name)
    if media_type is None or not _docs_available(request):
        raise NotFound()
    return FileResponse(_SWAGGER_DIR / name, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})
