"""Test harness: every test that takes ``backend`` runs on SQLite and on PostgreSQL.

PostgreSQL and Redis are real servers. Outside CI a missing PostgreSQL skips its half of the suite; with
CI=true a missing server, or any skipped PostgreSQL test, fails the run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import EllipsisType
from typing import Any

import httpx
import pyotp
import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine

from sehat.app import create_app
from sehat.core.actor import SystemActor
from sehat.core.crypto import KeyRing
from sehat.core.db import Database, create_engine
from sehat.core.migrate import grant_app_role, upgrade
from sehat.identity import service as identity_service
from sehat.identity.schemas import OrgAdminCreate, UserCreate
from sehat.models import metadata
from sehat.settings import Settings
from sehat.tenancy import service as tenancy_service
from sehat.tenancy.schemas import FacilityCreate, OrganizationCreate

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
# One database per test process, so two suites running at once (two developers, parallel helpers) never
# drop each other's data.
POSTGRES_SERVER = os.environ.get("SEHAT_TEST_POSTGRES_SERVER", "postgresql+asyncpg://postgres@127.0.0.1:5432")
POSTGRES_URL = f"{POSTGRES_SERVER}/sehat_test_{os.getpid()}"
# The app under test connects as a role that is neither superuser nor owner, as in production, so row-level
# security really applies. The harness itself (migrations, arranging, emptying tables) uses POSTGRES_URL.
APP_ROLE = "sehat_app"
APP_POSTGRES_URL = make_url(POSTGRES_URL).set(username=APP_ROLE, password=None).render_as_string(hide_password=False)
REDIS_URL = os.environ.get("SEHAT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
MASTER_KEY = KeyRing.generate_entry("test1")
PASSWORD = "correct horse battery staple"

# Argon2 at its cheapest, so hundreds of sign-ins stay fast; one test checks the production parameters.
FAST_HASHING = {"argon2_time_cost": 1, "argon2_memory_kib": 8, "argon2_parallelism": 1}


def _run_blocking(coroutine_function: Callable[[], Any]) -> Any:
    """Run one-time async setup from a sync session fixture, on its own thread and event loop."""
    with ThreadPoolExecutor(max_workers=1) as executor:
        return executor.submit(asyncio.run, coroutine_function()).result()


def _base_url_of(url: str) -> tuple[str, str]:
    base, _, name = url.rpartition("/")
    return base, name


async def _recreate_database(url: str, *, create: bool = True) -> None:
    base, name = _base_url_of(url)
    admin = create_async_engine(f"{base}/postgres", isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            if create:
                await connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        await admin.dispose()


async def _prepare_postgres() -> str | None:
    """Create this process's test database and migrate it; the reason it cannot be used, or None."""
    try:
        await _recreate_database(POSTGRES_URL)
    except Exception as exc:
        return f"PostgreSQL not available at {POSTGRES_SERVER}: {type(exc).__name__}"
    engine = create_engine(Settings(database_url=POSTGRES_URL))
    try:
        await upgrade(engine)
        async with engine.connect() as connection:
            # Roles are shared by the whole server; a parallel test process may create it at the same moment.
            await connection.execute(
                text(
                    "DO $$ BEGIN CREATE ROLE " + APP_ROLE + " LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE; "
                    "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
                )
            )
            await connection.commit()
        await grant_app_role(engine, APP_ROLE)
    finally:
        await engine.dispose()
    return None


@pytest.fixture(scope="session")
def postgres_ready() -> Iterator[str | None]:
    reason = _run_blocking(_prepare_postgres)
    yield reason
    if reason is None:
        _run_blocking(lambda: _recreate_database(POSTGRES_URL, create=False))


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Migrate one SQLite file once; each test gets a copy, which is far cheaper than migrating again."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    engine = create_engine(Settings(database_url=f"sqlite+aiosqlite:///{path}"))

    async def migrate() -> None:
        try:
            await upgrade(engine)
        finally:
            await engine.dispose()

    _run_blocking(migrate)
    return path


def _unavailable(reason: str) -> None:
    if IN_CI:
        pytest.fail(f"{reason} (CI=true requires it)")
    pytest.skip(reason)


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
async def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    if backend == "sqlite":
        template = request.getfixturevalue("sqlite_template")
        path = tmp_path / "sehat.db"
        shutil.copyfile(template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    reason = request.getfixturevalue("postgres_ready")
    if reason:
        _unavailable(reason)
    yield APP_POSTGRES_URL
    await _empty_postgres_tables()


# Reference data the migrations insert, which every test starts from: emptying it would leave every role
# without permissions. A test that changes it restores it.
SEEDED_TABLES = frozenset({"permissions", "role_permissions"})


async def _empty_postgres_tables() -> None:
    engine = create_async_engine(POSTGRES_URL)
    try:
        async with engine.begin() as connection:
            names = ", ".join(f'"{table.name}"' for table in metadata.sorted_tables if table.name not in SEEDED_TABLES)
            # The audit tables refuse TRUNCATE; between tests the harness may, as a superuser, bypass that.
            await connection.execute(text("SET session_replication_role = replica"))
            await connection.execute(text(f"TRUNCATE {names} CASCADE"))
    finally:
        await engine.dispose()


@pytest.fixture
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        _unavailable(f"Redis not available: {type(exc).__name__}")
    return REDIS_URL


@pytest.fixture
def make_settings(database_url: str, tmp_path: Path) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "database_url": database_url,
            "master_key": MASTER_KEY,
            "redis_key_prefix": f"t{uuid.uuid4().hex[:12]}:",
            # Never the working directory: a test that seals must not leave checkpoints in the checkout.
            "audit_checkpoint_file": tmp_path / "audit-checkpoints.jsonl",
            **FAST_HASHING,
            **overrides,
        }
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return build


@dataclass
class Api:
    """An HTTP client on a running app, plus shortcuts that build data through the real services."""

    client: httpx.AsyncClient
    app: Any
    # PostgreSQL only: the schema owner's connection, outside row-level security (see ``unit_of_work``).
    owner_database: Any = None
    mfa_secrets: dict[str, str] = field(default_factory=dict)

    @property
    def database(self) -> Any:
        return self.app.state.database

    @property
    def auth(self) -> Any:
        return self.app.state.auth

    async def sign_in(self, email: str, password: str = PASSWORD, otp: str | None = None) -> httpx.Response:
        form = {"username": email, "password": password}
        if otp is not None:
            form["otp"] = otp
        return await self.client.post("/api/v1/auth/token", data=form)

    async def full_session(self, email: str, password: str = PASSWORD) -> dict[str, Any]:
        """Sign in the way a person would: enrolling a second factor first if the account has none."""
        secret = self.mfa_secrets.get(email)
        otp = None
        if secret is not None:
            # The current step may already be spent by an earlier sign-in; the next one is within drift.
            otp = pyotp.TOTP(secret).generate_otp(pyotp.TOTP(secret).timecode(_now()) + 1)
        response = await self.sign_in(email, password, otp)
        assert response.status_code == 200, response.text
        tokens = response.json()
        if tokens["scope"] == "mfa_enroll":
            headers = {"Authorization": f"Bearer {tokens['access_token']}"}
            enrolment = (await self.client.post("/api/v1/auth/mfa/enroll", headers=headers)).json()
            self.mfa_secrets[email] = enrolment["secret"]
            confirmed = await self.client.post(
                "/api/v1/auth/mfa/confirm", headers=headers, json={"otp": pyotp.TOTP(enrolment["secret"]).now()}
            )
            assert confirmed.status_code == 200, confirmed.text
            tokens = confirmed.json()
        return tokens

    async def all_pages(self, path: str, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
        """Every item of a paginated list, following ``next_cursor`` to the end."""
        seen: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query: dict[str, Any] = {"limit": 100, **params, **({"cursor": cursor} if cursor else {})}
            response = await self.client.get(path, headers=headers, params=query)
            assert response.status_code == 200, response.text
            seen.extend(response.json()["items"])
            cursor = response.json()["next_cursor"]
            if cursor is None:
                return seen

    async def add_patient_account(
        self, organization_id: uuid.UUID, email: str, *, patient_id: uuid.UUID | EllipsisType | None = ...
    ) -> uuid.UUID | None:
        """A patient sign-in account, linked to ``patient_id`` (a fresh one unless given; None leaves the account
        unlinked), which it returns. Patient accounts get their own service with the registry (issue 4)."""
        from sehat.identity.models import User

        linked = uuid.uuid4() if patient_id is ... else patient_id
        async with self.unit_of_work() as session:
            session.add(
                User(
                    organization_id=organization_id,
                    email=email,
                    full_name="Patient",
                    roles=["patient"],
                    password_hash=self.auth.passwords.hash(PASSWORD),
                    patient_id=linked,
                )
            )
        return linked

    async def headers_for(self, email: str, password: str = PASSWORD) -> dict[str, str]:
        return {"Authorization": f"Bearer {(await self.full_session(email, password))['access_token']}"}

    @asynccontextmanager
    async def unit_of_work(self, actor: Any = None) -> AsyncIterator[Any]:
        """With an actor: the app's own connection, in that actor's tenant scope, as a request would be.
        Without: the harness arranging or inspecting data from outside the tenant walls (on PostgreSQL the
        schema owner, a superuser, to whom row-level security does not apply)."""
        database = self.database if actor is not None or self.owner_database is None else self.owner_database
        async with database.unit_of_work(actor=actor) as session:
            yield session


def _now() -> Any:
    from sehat.core.clock import utcnow

    return utcnow()


@pytest.fixture
def start_api(make_settings: Callable[..., Settings]) -> Callable[..., Any]:
    """``async with start_api(**settings) as api``: a running app (lifespan included) and a client for it."""

    @asynccontextmanager
    async def start(client_address: str = "203.0.113.10", **overrides: Any) -> AsyncIterator[Api]:
        settings = make_settings(**overrides)
        app = create_app(settings)
        owner = None
        if settings.database_url == APP_POSTGRES_URL:
            owner = Database(create_engine(Settings(_env_file=None, database_url=POSTGRES_URL)))  # type: ignore[call-arg]
        try:
            async with LifespanManager(app) as manager:
                transport = httpx.ASGITransport(app=manager.app, client=(client_address, 50000))
                async with httpx.AsyncClient(transport=transport, base_url="http://sehat.test") as client:
                    yield Api(client=client, app=app, owner_database=owner)
        finally:
            if owner is not None:
                await owner.dispose()

    return start


@pytest.fixture
async def api(start_api: Callable[..., Any]) -> AsyncIterator[Api]:
    async with start_api() as running:
        yield running


@dataclass
class Tenant:
    organization_id: uuid.UUID
    facility_ids: list[uuid.UUID]
    admin_email: str
    emails: dict[str, str]


async def build_tenant(api: Api, slug: str, roles: tuple[str, ...] = ("front_office", "doctor")) -> Tenant:
    """An organization with two facilities, an org admin, and one user per listed role (first facility)."""
    system = SystemActor(name="test")
    async with api.unit_of_work(system) as session:
        organization = await tenancy_service.create_organization(
            session, system, OrganizationCreate(name=f"Org {slug}", slug=slug)
        )
        admin = await identity_service.create_org_admin(
            session,
            api.auth,
            system,
            organization.id,
            OrgAdminCreate(email=f"admin@{slug}.test", full_name="Org Admin", password=PASSWORD),
        )
    admin_actor = await _actor_for(api, admin.id)
    facility_ids = []
    async with api.unit_of_work(admin_actor) as session:
        for code, timezone in (("NORTH", "Asia/Karachi"), ("SOUTH", "Europe/London")):
            facility = await tenancy_service.create_facility(
                session, admin_actor, FacilityCreate(name=f"{slug} {code}", code=code, timezone=timezone)
            )
            facility_ids.append(facility.id)
        emails = {}
        for role in roles:
            email = f"{role.replace('_', '-')}@{slug}.test"
            await identity_service.create_user(
                session,
                api.auth,
                admin_actor,
                UserCreate(
                    email=email,
                    full_name=f"{role} person",
                    roles=[role],
                    facility_ids=[facility_ids[0]],
                    password=PASSWORD,
                ),
            )
            emails[role] = email
    return Tenant(organization.id, facility_ids, f"admin@{slug}.test", emails)


async def _actor_for(api: Api, user_id: uuid.UUID) -> Any:
    """A service-level actor for a user, as the auth dependency would build it from their token."""
    from sehat.core.actor import Actor, Audience, Role
    from sehat.identity.models import User

    async with api.unit_of_work() as session:
        user = await session.get(User, user_id)
        roles = frozenset(Role(role) for role in user.roles)
        return Actor(
            user_id=user.id,
            organization_id=user.organization_id,
            roles=roles,
            audience=Audience.staff,
            session_id=uuid.uuid4(),
            token_id="test",
            permissions=api.auth.permissions.for_roles(roles),
        )


@pytest.fixture
async def tenant(api: Api) -> Tenant:
    return await build_tenant(api, "alpha")


@pytest.fixture
async def other_tenant(api: Api) -> Tenant:
    return await build_tenant(api, "beta")


def _skipped_backend_tests(config: pytest.Config) -> list[Any]:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    skipped = getattr(reporter, "stats", {}).get("skipped", []) if reporter else []
    return [report for report in skipped if "postgresql" in report.nodeid or "redis" in report.nodeid]


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # With CI=true the backends are required: a skipped PostgreSQL or Redis test fails the run.
    if IN_CI and _skipped_backend_tests(session.config):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    skipped = _skipped_backend_tests(config)
    if IN_CI and skipped:
        terminalreporter.write_line(f"CI=true: {len(skipped)} PostgreSQL/Redis tests were skipped: failing", red=True)
