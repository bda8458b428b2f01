"""Row-level security, the second tenant wall (issue 3), holds in PostgreSQL itself: a query that forgets the
tenant filter, a guessed id and a reused pooled connection all still see one organization's rows only.

PostgreSQL only: SQLite has no row-level security, and there the scoped query helper is the one wall.
The app under test connects as ``sehat_app`` (neither superuser nor owner); the harness's owner connection
is used only to check what is really stored.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from sqlalchemy import Table, func, select, text
from sqlalchemy.exc import DBAPIError

from sehat.app import SchemaNotReady, create_app
from sehat.core.actor import SystemActor
from sehat.core.db import Database, create_engine
from sehat.core.migrate import check_app_role
from sehat.identity.models import User
from sehat.identity.repository import load_profile
from sehat.models import metadata
from sehat.settings import Settings
from sehat.tenancy.models import Facility
from tests.conftest import APP_POSTGRES_URL, MASTER_KEY, POSTGRES_URL, Tenant, _actor_for, build_tenant

TENANT_TABLES: list[Table] = [table for table in metadata.sorted_tables if "organization_id" in table.c]


@pytest.fixture(params=["postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
async def two_tenants(api: Any) -> tuple[Tenant, Tenant]:
    alpha = await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")
    # Sign-ins leave audit entries in both organizations.
    await api.headers_for(alpha.emails["doctor"])
    await api.headers_for(beta.emails["doctor"])
    return alpha, beta


async def _admin(api: Any, tenant: Tenant) -> Any:
    async with api.unit_of_work() as session:
        admin_id = await session.scalar(select(User.id).where(User.email == tenant.admin_email))
    return await _actor_for(api, admin_id)


async def _counts(session: Any, tables: list[Table]) -> dict[str, int]:
    return {table.name: int(await session.scalar(select(func.count()).select_from(table))) for table in tables}


async def test_the_app_connects_as_a_role_that_row_level_security_applies_to(api: Any) -> None:
    assert await check_app_role(api.database.engine) == []
    # The check is not blind: the harness's own superuser connection is reported.
    assert "is a superuser" in await check_app_role(api.owner_database.engine)


async def test_every_table_with_an_organization_forces_row_level_security_and_has_a_policy(api: Any) -> None:
    names = [table.name for table in TENANT_TABLES] + ["organizations"]
    assert {"facilities", "departments", "users", "audit_events", "break_glass_grants"} <= set(names)
    async with api.unit_of_work() as session:
        rows = (
            await session.execute(
                text(
                    "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity, "
                    "(SELECT count(*) FROM pg_policies p WHERE p.tablename = c.relname) "
                    "FROM pg_class c WHERE c.relname = ANY(:names) AND c.relkind = 'r'"
                ),
                {"names": names},
            )
        ).all()
    found = {name: (enabled, forced, policies) for name, enabled, forced, policies in rows}
    assert set(found) == set(names)
    unprotected = [name for name, (enabled, forced, policies) in found.items() if not (enabled and forced and policies)]
    assert unprotected == []


async def test_a_transaction_that_sets_no_organization_sees_no_tenant_rows(
    api: Any, two_tenants: tuple[Tenant, Tenant]
) -> None:
    async with api.unit_of_work() as session:
        stored = await _counts(session, TENANT_TABLES)
    assert stored["facilities"] == 4 and stored["users"] >= 6 and stored["audit_events"] > 0
    async with api.database.unit_of_work() as session:
        assert set((await _counts(session, TENANT_TABLES)).values()) == {0}
        assert await session.scalar(text("SELECT count(*) FROM organizations")) == 0


async def test_an_organization_sees_only_its_own_rows_even_when_a_query_forgets_the_filter(
    api: Any, two_tenants: tuple[Tenant, Tenant]
) -> None:
    alpha, beta = two_tenants
    async with api.database.unit_of_work(actor=await _admin(api, alpha)) as session:
        # Plain selects with no tenant filter, as a buggy query would write them.
        assert set((await session.scalars(select(Facility.organization_id))).all()) == {alpha.organization_id}
        assert set((await session.scalars(select(User.organization_id))).all()) == {alpha.organization_id}
        assert await session.get(Facility, beta.facility_ids[0]) is None
        audit_organizations = set(
            (await session.scalars(text("SELECT DISTINCT organization_id FROM audit_events"))).all()
        )
        assert audit_organizations == {alpha.organization_id}
        organizations = (await session.scalars(text("SELECT id FROM organizations"))).all()
        assert organizations == [alpha.organization_id]


async def test_the_database_refuses_to_write_into_another_organization(
    api: Any, two_tenants: tuple[Tenant, Tenant]
) -> None:
    alpha, beta = two_tenants
    admin = await _admin(api, alpha)
    with pytest.raises(DBAPIError, match="row-level security"):
        async with api.database.unit_of_work(actor=admin) as session:
            session.add(Facility(organization_id=beta.organization_id, name="Planted", code="PLANT", timezone="UTC"))
            await session.flush()
    async with api.database.unit_of_work(actor=admin) as session:
        moved = await session.execute(
            text("UPDATE facilities SET name = 'hijacked' WHERE id = :id"), {"id": beta.facility_ids[0]}
        )
        assert moved.rowcount == 0
        with pytest.raises(DBAPIError, match="row-level security"):
            async with session.begin_nested():
                await session.execute(
                    text("UPDATE facilities SET organization_id = :other WHERE id = :id"),
                    {"other": beta.organization_id, "id": alpha.facility_ids[0]},
                )
    async with api.unit_of_work() as session:
        names = set((await session.scalars(select(Facility.name))).all())
        owners = {row.id: row.organization_id for row in (await session.execute(select(Facility))).scalars()}
    assert "hijacked" not in names and "Planted" not in names
    assert owners[alpha.facility_ids[0]] == alpha.organization_id


async def test_a_pooled_connection_does_not_carry_the_previous_tenant(
    api: Any, two_tenants: tuple[Tenant, Tenant]
) -> None:
    alpha, _ = two_tenants
    admin = await _admin(api, alpha)
    settings = Settings(_env_file=None, database_url=APP_POSTGRES_URL, database_pool_size=1)  # type: ignore[call-arg]
    database = Database(create_engine(settings))
    try:
        async with database.unit_of_work(actor=admin) as session:
            first_backend = await session.scalar(text("SELECT pg_backend_pid()"))
            assert await session.scalar(select(func.count()).select_from(Facility)) == 2
        async with database.unit_of_work() as session:
            assert await session.scalar(text("SELECT pg_backend_pid()")) == first_backend  # the same connection
            assert not await session.scalar(text("SELECT current_setting('sehat.organization_id', true)"))
            assert await session.scalar(select(func.count()).select_from(Facility)) == 0
        # The one-statement profile read (GET /me) sets the scope for that statement alone.
        async with database.unit_of_work(actor=admin) as session:
            assert await load_profile(session, admin.user_id) is not None
        async with database.unit_of_work() as session:
            assert await session.scalar(text("SELECT pg_backend_pid()")) == first_backend
            assert await session.scalar(select(func.count()).select_from(User)) == 0
            assert await load_profile(session, admin.user_id) is None
    finally:
        await database.dispose()


async def test_the_platform_scope_opens_accounts_but_never_clinical_tables(
    api: Any, two_tenants: tuple[Tenant, Tenant]
) -> None:
    alpha, beta = two_tenants
    async with api.database.unit_of_work(actor=SystemActor(name="platform-test")) as session:
        organizations = set((await session.scalars(select(User.organization_id))).all())
        assert {alpha.organization_id, beta.organization_id} <= organizations
        assert await session.scalar(select(func.count()).select_from(Facility)) == 0
        assert await session.scalar(text("SELECT count(*) FROM departments")) == 0


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE audit_events SET action = 'x'",
        "DELETE FROM audit_events",
        "TRUNCATE audit_events",
        "DELETE FROM audit_seals",
    ],
)
async def test_the_app_role_may_only_read_and_append_audit_entries(
    api: Any, two_tenants: tuple[Tenant, Tenant], statement: str
) -> None:
    alpha, _ = two_tenants
    with pytest.raises(DBAPIError, match="permission denied"):
        async with api.database.unit_of_work(actor=await _admin(api, alpha)) as session:
            await session.execute(text(statement))


async def test_production_refuses_to_run_as_a_role_that_escapes_row_level_security(api: Any) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None,
        environment="production",
        database_url=POSTGRES_URL,
        master_key=MASTER_KEY,
        trusted_proxies="127.0.0.1",
        redis_key_prefix=f"t{uuid.uuid4().hex[:12]}:",
    )
    with pytest.raises(SchemaNotReady, match="superuser"):
        async with LifespanManager(create_app(settings)):
            pass
