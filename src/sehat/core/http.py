"""HTTP plumbing shared by every domain router: the unit-of-work route, problem rendering, request context.

No domain logic lives here; a domain's ``api.py`` builds its router with ``api_router()`` and takes its
session from ``get_session``.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import orjson
import structlog
from fastapi import APIRouter, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sehat.core.actor import SystemActor
from sehat.core.audit import AuditEntry, AuditLog, Outcome
from sehat.core.crypto import KeyRing
from sehat.core.db import SessionOnDemand, finish
from sehat.core.errors import (
    Conflict,
    InternalError,
    InvalidInput,
    PayloadTooLarge,
    PreconditionFailed,
    Problem,
    ServiceUnavailable,
    problem_for_status,
)
from sehat.core.tenant_scope import bind_actor

log = structlog.get_logger("sehat.http")
access_log = structlog.get_logger("sehat.access")

PROBLEM_MEDIA_TYPE = "application/problem+json"
# Per-request values live under our own keys in the ASGI scope, which is one dict per request. Not in
# scope["state"]: servers may hand every request the same lifespan state dict.
SCOPE_SESSION = "sehat.session"
SCOPE_REQUEST_ID = "sehat.request_id"
SCOPE_ACTOR = "sehat.actor"
# Set by an access guard (identity's `require`) when a request reaches for a protected resource: a 401, 403 or
# 404 on such a request is a denial, and every denial is audited.
SCOPE_PROTECTED = "sehat.protected"
_DENIAL_STATUSES = frozenset({401, 403, 404})


def problem_response(problem: Problem) -> Response:
    return Response(
        content=orjson.dumps(problem.body()),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=problem.headers,
    )


async def get_audit_log(request: Request) -> AuditLog:
    """The process's audit log, for routes whose service records entries."""
    audit_log: AuditLog = request.app.state.audit
    return audit_log


async def get_key_ring(request: Request) -> KeyRing:
    """The master key ring, for services that seal values directly with it (reasons, secrets)."""
    key_ring: KeyRing = request.app.state.auth.key_ring
    return key_ring


IfMatch = Annotated[str | None, Header(max_length=64, description='The version read, as its ETag: "3"')]


def expected_version(if_match: str | None) -> int | None:
    """The version an ``If-Match`` header names (our ETags are the quoted version number), or None."""
    if if_match is None:
        return None
    tag = if_match.strip().removeprefix("W/").strip('"')
    if not tag.isdigit():
        raise PreconditionFailed("If-Match must be the ETag this server sent.", code="version_mismatch")
    return int(tag)


async def get_session(request: Request) -> AsyncSession:
    """The request's one session, opened on first use so routes that never touch the database pay nothing.

    Async on purpose: FastAPI runs plain ``def`` dependencies in a thread pool, which costs a hot path."""
    scope = request.scope
    session = scope.get(SCOPE_SESSION)
    if session is None:
        session = request.app.state.database.session()
        scope[SCOPE_SESSION] = session
        actor = scope.get(SCOPE_ACTOR)
        if actor is not None:
            # Free before the transaction begins: the scope is set by the statement that begins it.
            await bind_actor(session, actor)
    return session


class UnitOfWorkRoute(APIRoute):
    """Commits the request's transaction before the response leaves, so a 2xx always means durable."""

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def run_in_unit_of_work(request: Request) -> Response:
            return await in_unit_of_work(request, self.path, lambda: handler(request))

        return run_in_unit_of_work


async def in_unit_of_work(request: Request, route: str, respond: Callable[[], Awaitable[Response]]) -> Response:
    """The response ``respond`` gives, after the request's transaction is committed (a 2xx or 3xx) or rolled
    back; a refusal is re-raised after a denial of a protected resource is audited."""
    scope = request.scope
    try:
        response = await respond()
    except Problem as problem:
        await _finish(scope, keep=problem.keep_changes)
        if problem.status in _DENIAL_STATUSES and scope.get(SCOPE_PROTECTED):
            await _audit_denial(request, route, problem)
        raise
    except BaseException:
        await _finish(scope, keep=False)
        raise
    await _finish(scope, keep=response.status_code < 400)
    return response


async def _audit_denial(request: Request, route: str, problem: Problem) -> None:
    """Record a refused access in a transaction of its own: the request's work was rolled back, its denial
    must not be. Never replaces the refusal the caller gets, even if the audit write fails."""
    scope = request.scope
    actor = scope.get(SCOPE_ACTOR)
    entry = AuditEntry(
        action="access.denied",
        outcome=Outcome.denied,
        resource_type="route",
        resource_id=None,
        details={
            "method": request.method,
            "route": route,
            "status": problem.status,
            "code": problem.code,
            "path_params": {name: str(value) for name, value in request.path_params.items()},
        },
    )
    try:
        # Someone refused before we knew who they are is recorded by the platform: the entry belongs to no
        # organization, and only the platform scope may read it back (as INSERT ... RETURNING does).
        writer = actor or SystemActor(name="denial-audit")
        async with request.app.state.database.unit_of_work(actor=writer) as session:
            request.app.state.audit.record(
                session,
                actor,
                entry,
                client_address=request.client.host if request.client else None,
                request_id=scope.get(SCOPE_REQUEST_ID),
            )
    except Exception as exc:
        log.error("denial_audit_failed", exc_type=type(exc).__name__)


async def _finish(scope: Scope, *, keep: bool) -> None:
    session: AsyncSession | None = scope.pop(SCOPE_SESSION, None)
    if session is not None:
        await finish(session, keep=keep)


def api_router(**kwargs: Any) -> APIRouter:
    return APIRouter(route_class=UnitOfWorkRoute, **kwargs)


def _field_name(location: tuple[Any, ...]) -> str:
    parts = [str(part) for part in location if part not in ("body",)] or [str(location[0])]
    return ".".join(parts)


async def _on_validation_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Only where and why: pydantic's "input" and "ctx" may echo a password or a phone number back.
    errors = [
        {"field": _field_name(tuple(error.get("loc", ()))), "message": error.get("msg", ""), "type": error.get("type")}
        for error in exc.errors()
    ]
    problem = InvalidInput(
        "The request has invalid fields." if errors else "The request is invalid.", extra={"errors": errors}
    )
    return problem_response(problem)


async def _on_problem(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(exc)


async def _on_http_exception(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    problem = problem_for_status(exc.status_code, exc.detail if isinstance(exc.detail, str) else None)
    if exc.headers:
        problem.headers.update(exc.headers)
    return problem_response(problem)


async def _on_integrity_error(_request: Request, _exc: Exception) -> Response:
    return problem_response(Conflict("The change conflicts with existing data.", code="integrity_conflict"))


async def _on_unavailable(_request: Request, exc: Exception) -> Response:
    log.warning("dependency_unavailable", exc_type=type(exc).__name__)
    return problem_response(
        ServiceUnavailable("A dependency is not answering; try again shortly.", headers={"Retry-After": "2"})
    )


async def _on_unexpected(_request: Request, exc: Exception) -> Response:
    log.error("unhandled_error", exc_type=type(exc).__name__, exc_info=exc)
    return problem_response(InternalError("Something went wrong on our side; it has been logged."))


def install_problem_handlers(app: Any) -> None:
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Problem, _on_problem)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(IntegrityError, _on_integrity_error)
    app.add_exception_handler(PoolTimeoutError, _on_unavailable)
    app.add_exception_handler(OperationalError, _on_unavailable)
    app.add_exception_handler(ConnectionError, _on_unavailable)
    app.add_exception_handler(Exception, _on_unexpected)


@dataclass(frozen=True)
class HotRoute:
    """A route a domain serves on its own, ahead of FastAPI's routing and dependency injection, for requests
    that are by far the most frequent (booking). ``serve`` answers a request or returns False without having
    read its body or answered, and then the FastAPI route of the same method and path (which stays the
    documented, tested route) answers it, so that every irregular request (a missing token, a malformed body,
    an unexpected header) still gets the framework's own answer."""

    method: str
    path: str
    serve: Callable[[Request, Send], Awaitable[bool]]


class HotRoutes:
    """Middleware that hands the requests of its ``HotRoute``s to them; everything else passes straight on."""

    def __init__(self, app: ASGIApp, *, routes: Sequence[HotRoute]) -> None:
        self.app = app
        self.routes = {(route.method, route.path): route for route in routes}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self.routes.get((scope.get("method", ""), scope.get("path", ""))) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        # The access log and a denial's audit entry name the route by its template, as for any route.
        scope["route"] = route
        replay = _BodyReplay(receive)
        request = Request(scope, replay.receive)
        if not await route.serve(request, send):
            replay.rewind()
            await self.app(scope, replay.receive, send)


class _BodyReplay:
    """``receive`` that, once a hot route has read the body and declined the request, gives the body again."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._read: list[Message] = []
        self._replaying = False

    async def receive(self) -> Message:
        if self._replaying:
            if self._read:
                return self._read.pop(0)
            return await self._receive()
        message = await self._receive()
        if message["type"] == "http.request":
            self._read.append(message)
        return message

    def rewind(self) -> None:
        self._replaying = True


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, as FastAPI's ``HTTPBearer`` reads it."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token if scheme.lower() == "bearer" and token else None


async def serve_json(
    request: Request, send: Send, route: str, respond: Callable[[SessionOnDemand], Awaitable[tuple[int, Any]]]
) -> None:
    """Answer a hot route's request with the status and JSON ``respond`` gives, within the request's unit of
    work (``in_unit_of_work``, whose session is opened only if ``respond`` asks for it): a ``Problem`` as
    problem+json, any other error as the app's exception handlers render it."""
    sessions = SessionOnDemand(request.app.state.database.engine, lambda: get_session(request))

    async def answer() -> Response:
        status_code, content = await respond(sessions)
        return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")

    try:
        response = await in_unit_of_work(request, route, answer)
    except Exception as exc:
        handler = _exception_handler(request, exc)
        if handler is None:
            raise
        response = await handler(request, exc)
    await response(request.scope, request.receive, send)


def _exception_handler(request: Request, exc: Exception) -> Callable[[Request, Exception], Awaitable[Response]] | None:
    handlers = request.app.exception_handlers
    for kind in type(exc).__mro__:
        if kind in handlers:
            handler: Callable[[Request, Exception], Awaitable[Response]] = handlers[kind]
            return handler
    return None


class BodyTooLarge(StarletteHTTPException):
    # An HTTPException so that FastAPI's body parser re-raises it instead of turning it into a 400.
    def __init__(self) -> None:
        super().__init__(status_code=413)


_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class RequestContextMiddleware:
    """Request id, body-size limit, security headers and one access-log line per request (no query string)."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int, production: bool) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        base_headers = [
            (b"x-content-type-options", b"nosniff"),
            (b"x-frame-options", b"DENY"),
            (b"referrer-policy", b"no-referrer"),
        ]
        if production:
            base_headers.append((b"strict-transport-security", b"max-age=31536000; includeSubDomains"))
        self.base_headers = base_headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        scope[SCOPE_REQUEST_ID] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        status_holder = [500]
        response_started = False
        extra_headers = [*self.base_headers, (b"x-request-id", request_id.encode())]

        async def send_with_headers(message: Message) -> None:
            nonlocal response_started
            if message["type"] == "http.response.start":
                response_started = True
                status_holder[0] = message["status"]
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"cache-control" for name, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message["headers"] = headers + extra_headers
            await send(message)

        try:
            declared = _header(scope, b"content-length")
            if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
                await self._send_problem(
                    send_with_headers, PayloadTooLarge(f"The request body exceeds {self.max_body_bytes} bytes.")
                )
                return
            received = 0

            async def limited_receive() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > self.max_body_bytes:
                        raise BodyTooLarge()
                return message

            try:
                await self.app(scope, limited_receive, send_with_headers)
            except BodyTooLarge:
                if response_started:
                    raise
                await self._send_problem(
                    send_with_headers, PayloadTooLarge(f"The request body exceeds {self.max_body_bytes} bytes.")
                )
            except Exception as exc:
                # Answered here rather than by Starlette's outermost handler, so that a 500 too carries the
                # request id and the security headers. Logged once, masked, without re-raising to the server.
                if response_started:
                    raise
                log.error("unhandled_error", exc_type=type(exc).__name__, exc_info=exc)
                await self._send_problem(
                    send_with_headers, InternalError("Something went wrong on our side; it has been logged.")
                )
        finally:
            route = scope.get("route")
            access_log.info(
                "request",
                method=scope.get("method"),
                route=getattr(route, "path", None) or "unmatched",
                status=status_holder[0],
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )
            structlog.contextvars.unbind_contextvars("request_id")

    async def _send_problem(self, send: Send, problem: Problem) -> None:
        body = orjson.dumps(problem.body())
        headers = [(b"content-type", PROBLEM_MEDIA_TYPE.encode()), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": problem.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None
