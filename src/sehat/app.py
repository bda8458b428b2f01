"""The ASGI application: ``create_app()`` builds it, its lifespan opens and closes what it holds."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import structlog
from fastapi import FastAPI, Request
from redis.asyncio import Redis
from sqlalchemy import text

from sehat import __version__
from sehat.access import api as access_api
from sehat.access.anomaly import evaluate_new_entries
from sehat.core.actor import SystemActor
from sehat.core.audit import AuditLog
from sehat.core.audit_chain import AuditChain
from sehat.core.crypto import load_key_ring
from sehat.core.db import Database, create_engine
from sehat.core.errors import ServiceUnavailable
from sehat.core.http import HotRoutes, RequestContextMiddleware, install_problem_handlers, problem_response
from sehat.core.logging import configure_logging
from sehat.core.migrate import check_app_role, is_up_to_date
from sehat.core.realtime import build_broadcaster
from sehat.identity import api as identity_api
from sehat.identity import service as identity_service
from sehat.identity.passwords import Passwords
from sehat.identity.permissions import PermissionTable
from sehat.identity.revocation import MemoryRevokedSessions, RedisRevokedSessions, RevokedSessions
from sehat.identity.runtime import AuthRuntime
from sehat.identity.throttle import LoginThrottle
from sehat.identity.tokens import AccessTokens, SigningKeys
from sehat.patients import accounts_api as patient_accounts_api
from sehat.patients import api as patients_api
from sehat.patients import rights_api as patients_rights_api
from sehat.patients.vault import PatientVault
from sehat.queue import api as queue_api
from sehat.queue.boards import BoardAnnouncer
from sehat.queue.live import LiveQueues
from sehat.queue.service import QueueRuntime
from sehat.scheduling import api as scheduling_api
from sehat.settings import Settings
from sehat.tenancy import api as tenancy_api
from sehat.web import boards as web_boards
from sehat.web import pages as web_pages

log = structlog.get_logger("sehat.app")

# Routes that need no token. Every other /api/v1 route must declare a permission (tests enforce it).
PUBLIC_ROUTES = frozenset(
    {
        "/healthz",
        "/readyz",
        "/api/v1/auth/token",
        "/api/v1/auth/refresh",
        # Opening a patient account with an invitation, and signing up: nobody is signed in yet.
        "/api/v1/patient-accounts",
        "/api/v1/patient-registrations",
    }
)


class SchemaNotReady(RuntimeError):
    pass


async def _sync_shared_state(app: FastAPI) -> None:
    """Reload signing keys and role grants and re-seed revoked sessions from the database, the record of all
    three, so a change made through any server reaches every server within one refresh interval.

    Re-seeding heals a revocation store that lost its contents (a Redis restarted without persistence)."""
    async with app.state.database.unit_of_work(actor=SystemActor(name="shared-state")) as session:
        await app.state.auth.signing_keys.load(session)
        await app.state.auth.permissions.load(session)
        await identity_service.seed_revocations(session, app.state.auth)


async def keep_sealing(database: Database, audit_chain: AuditChain, interval: float) -> None:
    """Seal settled audit entries into the chain; one sealer at a time across servers (advisory lock)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await audit_chain.seal(database)
        except Exception as exc:
            log.warning("audit_sealing_failed", exc_type=type(exc).__name__)


async def keep_evaluating_anomalies(database: Database, settings: Settings, interval: float) -> None:
    """Run the anomaly rules over newly sealed audit entries; one evaluator at a time across servers. It runs
    at the sealer's pace: it can only see what the sealer has sealed."""
    while True:
        await asyncio.sleep(interval)
        try:
            await evaluate_new_entries(database, settings)
        except Exception as exc:
            log.warning("anomaly_evaluation_failed", exc_type=type(exc).__name__)


async def _keep_shared_state_fresh(app: FastAPI, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await _sync_shared_state(app)
        except Exception as exc:
            log.warning("shared_state_refresh_failed", exc_type=type(exc).__name__)


def build_auth(settings: Settings, redis: Redis | None) -> AuthRuntime:
    key_ring = load_key_ring(settings)
    signing_keys = SigningKeys(key_ring, settings)
    revoked: RevokedSessions = (
        RedisRevokedSessions(redis, settings.redis_key_prefix) if redis is not None else MemoryRevokedSessions()
    )
    return AuthRuntime(
        settings=settings,
        key_ring=key_ring,
        passwords=Passwords(settings),
        signing_keys=signing_keys,
        tokens=AccessTokens(signing_keys, settings),
        revoked=revoked,
        throttle=LoginThrottle(settings, settings.redis_url),
        permissions=PermissionTable(),
        audit=AuditLog(key_ring),
    )


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    database = Database(create_engine(settings))
    redis = (
        Redis.from_url(settings.redis_url, client_name=settings.redis_key_prefix + "app")
        if settings.redis_url
        else None
    )
    app.state.database = database
    app.state.redis = redis
    refresher: asyncio.Task[None] | None = None
    sealer: asyncio.Task[None] | None = None
    anomalies: asyncio.Task[None] | None = None
    try:
        if not await is_up_to_date(database.engine):
            raise SchemaNotReady("the database schema is not current; run `sehat migrate` first")
        escapes = await check_app_role(database.engine)
        if escapes:
            message = "the database role " + " and ".join(escapes) + ", so row-level security does not apply to it"
            if settings.is_production:
                raise SchemaNotReady(message + "; connect as the application role (see docs/operations.md)")
            log.warning("database_role_bypasses_row_level_security", reasons=escapes)
        app.state.auth = build_auth(settings, redis)
        app.state.realtime = build_broadcaster(redis, settings.redis_key_prefix)
        # Both wait a moment for their Redis subscription: side by side, a slow Redis costs that moment once.
        await asyncio.gather(app.state.auth.revoked.start(), app.state.realtime.start())
        app.state.audit = app.state.auth.audit
        live_queues = LiveQueues()
        app.state.boards = BoardAnnouncer(database, live_queues, app.state.realtime)
        app.state.queues = QueueRuntime(live_queues, app.state.audit, announce=app.state.boards.announce)
        if getattr(app.state, "patient_vault", None) is None:  # a benchmark build may bring its own
            app.state.patient_vault = PatientVault.for_settings(app.state.auth.key_ring, settings)
        app.state.audit_chain = AuditChain(
            app.state.auth.key_ring, settings.audit_checkpoint_file, settings.audit_seal_settle_seconds
        )
        async with database.unit_of_work() as session:
            await app.state.auth.signing_keys.ensure_current(session)
            # Loaded here as well as below: the refresh below may fail on the revocation store, and until
            # the grants are loaded every permission check denies.
            await app.state.auth.permissions.load(session)
        try:
            await _sync_shared_state(app)
        except ServiceUnavailable:
            # Start anyway: /readyz reports the store, and every authenticated request fails closed meanwhile.
            log.warning("revocation_store_unavailable_at_start")
        refresher = asyncio.create_task(_keep_shared_state_fresh(app, settings.signing_key_refresh_seconds))
        if settings.background_jobs:
            interval = settings.audit_seal_interval_seconds
            sealer = asyncio.create_task(keep_sealing(database, app.state.audit_chain, interval))
            anomalies = asyncio.create_task(keep_evaluating_anomalies(database, settings, interval))
        # Long-lived start-up objects (modules, routes, schemas) need no more collecting; fewer, cheaper young
        # collections keep latency tails short under load.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        log.info("started", version=__version__, backend=database.engine.dialect.name, redis=redis is not None)
        yield
    finally:
        for task in (refresher, sealer, anomalies):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if getattr(app.state, "auth", None) is not None:
            await app.state.auth.revoked.stop()
        if getattr(app.state, "realtime", None) is not None:
            await app.state.realtime.stop()
        if redis is not None:
            await redis.aclose()
        await database.dispose()


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    app = FastAPI(
        title="sehat",
        version=__version__,
        summary="Outpatient care: registry, scheduling, OPD queues, with patient data sealed.",
        lifespan=lifespan,
        # /docs is served by sehat.web.pages from local Swagger UI files (FastAPI's own loads a CDN).
        docs_url=None,
        redoc_url=None,
        # sehat configures no OpenTelemetry provider; left on, FastAPI looks for one on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.settings = settings
    install_problem_handlers(app)
    # Inside the request context (request id, body limit, headers, access log), ahead of FastAPI's routing.
    app.add_middleware(HotRoutes, routes=scheduling_api.HOT_ROUTES)
    app.add_middleware(
        RequestContextMiddleware, max_body_bytes=settings.max_request_body_bytes, production=settings.is_production
    )

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """Alive: the process answers. Touches no dependency."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> object:
        """Ready: the database answers; when Redis is configured, it answers too and both of its feeds (session
        revocations, realtime messages) are subscribed."""
        checks: dict[str, str] = {}
        try:
            async with asyncio.timeout(2):
                async with request.app.state.database.engine.connect() as connection:
                    await connection.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception:
            checks["database"] = "unavailable"
        if request.app.state.redis is not None:
            try:
                async with asyncio.timeout(2):
                    await request.app.state.redis.ping()
                checks["redis"] = "ok"
            except Exception:
                checks["redis"] = "unavailable"
            # Until the revocation feed is subscribed and loaded, authenticated requests are refused.
            in_sync = getattr(request.app.state.auth.revoked, "in_sync", True)
            checks["session_store"] = "ok" if in_sync else "syncing"
            # Until the realtime subscription is up, changes made through other servers reach no screen here.
            checks["realtime"] = "ok" if getattr(request.app.state.realtime, "listening", True) else "syncing"
        if all(value == "ok" for value in checks.values()):
            return {"status": "ok", "checks": checks}
        problem = ServiceUnavailable("A dependency is not ready.", code="not_ready", extra={"checks": checks})
        return problem_response(problem)

    app.include_router(identity_api.router)
    app.include_router(tenancy_api.router)
    app.include_router(access_api.router)
    app.include_router(patients_api.router)
    app.include_router(patient_accounts_api.router)
    app.include_router(patients_rights_api.router)
    app.include_router(scheduling_api.router)
    app.include_router(queue_api.router)
    app.include_router(web_boards.router)
    app.include_router(web_pages.router)
    return app
