"""Permissions are data: roles' grants live in the database, every server holds them in memory, and a change
reaches requests without a new sign-in and without a database round trip per request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import jwt
import pytest
from sqlalchemy import delete, event, insert, select

from sehat.app import _sync_shared_state
from sehat.core.actor import Role
from sehat.identity.models import RolePermission, User
from sehat.identity.permissions import PermissionTable, read_grants
from sehat.identity.repository import load_profile
from tests.conftest import _actor_for, build_tenant

# What a freshly migrated database grants: the specification, written out rather than read from the code.
DEFAULT_GRANTS: dict[str, set[str]] = {
    "platform_admin": {"self.session", "organization.manage"},
    "org_admin": {
        "self.session",
        "facility.read",
        "facility.manage",
        "user.read",
        "user.manage",
        "audit.read",
        "alert.read",
        "patient.read",
        "patient.read_all_facilities",
        "patient.write",
        "patient.merge",
        "patient.invite",
        "patient.export",
        "patient.erase",
        "patient.legal_hold",
        "consent.read",
        "consent.write",
        "schedule.read",
        "schedule.manage",
        "appointment.read",
        "appointment.book",
        "appointment.manage",
        "appointment.change",
        "waitlist.manage",
        "queue.read",
        "queue.manage",
        "queue.issue",
        "queue.serve",
        "queue.transfer",
        "board.manage",
    },
    "front_office": {
        "self.session",
        "facility.read",
        "patient.read",
        "patient.read_all_facilities",
        "patient.write",
        "patient.invite",
        "consent.read",
        "consent.write",
        "schedule.read",
        "appointment.read",
        "appointment.book",
        "appointment.manage",
        "appointment.change",
        "waitlist.manage",
        "queue.read",
        "queue.manage",
        "queue.issue",
        "queue.transfer",
    },
    "doctor": {
        "self.session",
        "facility.read",
        "break_glass.use",
        "patient.read",
        "consent.read",
        "schedule.read",
        "appointment.read",
        "queue.read",
        "queue.serve",
        "queue.transfer",
    },
    "nurse": {
        "self.session",
        "facility.read",
        "patient.read",
        "consent.read",
        "schedule.read",
        "appointment.read",
        "appointment.manage",
        "appointment.change",
        "queue.read",
        "queue.issue",
        "queue.serve",
        "queue.transfer",
    },
    "billing": {"self.session", "facility.read", "patient.read", "patient.read_all_facilities"},
    "auditor": {"self.session", "facility.read", "user.read", "audit.read", "alert.read"},
    "patient": {
        "self.session",
        "audit.read_own",
        "patient.self",
        "patient.export",
        "consent.read",
        "consent.write",
        "schedule.read",
        "appointment.read",
        "appointment.book",
        "appointment.change",
        "waitlist.manage",
        "queue.read_own",
    },
}


@asynccontextmanager
async def _grants_restored(api: Any) -> AsyncIterator[None]:
    """Put role_permissions back as it was: PostgreSQL tests share one database, and these tests edit it."""
    async with api.unit_of_work() as session:
        snapshot = (await session.execute(select(RolePermission.role, RolePermission.permission))).all()
    try:
        yield
    finally:
        async with api.unit_of_work() as session:
            await session.execute(delete(RolePermission))
            await session.execute(
                insert(RolePermission), [{"role": role, "permission": permission} for role, permission in snapshot]
            )


@pytest.fixture
async def api(start_api: Callable[..., Any]) -> AsyncIterator[Any]:
    async with start_api() as running, _grants_restored(running):
        yield running


async def _grant(api: Any, role: str, permission: str) -> None:
    async with api.unit_of_work() as session:
        session.add(RolePermission(role=role, permission=permission))


async def _revoke(api: Any, role: str, permission: str | None = None) -> None:
    statement = delete(RolePermission).where(RolePermission.role == role)
    if permission is not None:
        statement = statement.where(RolePermission.permission == permission)
    async with api.unit_of_work() as session:
        await session.execute(statement)


async def _reload_through_the_session(api: Any) -> None:
    async with api.unit_of_work() as session:
        await api.auth.permissions.load(session)


async def _nurse_headers(api: Any) -> dict[str, str]:
    tenant = await build_tenant(api, "alpha", roles=("nurse",))
    return await api.headers_for(tenant.emails["nurse"])


async def test_a_migrated_database_grants_each_role_exactly_the_default_permissions(api: Any) -> None:
    async with api.unit_of_work() as session:
        in_database = {role: set(permissions) for role, permissions in (await read_grants(session)).items()}
    assert in_database == DEFAULT_GRANTS
    # And that is what the server loaded at start-up.
    assert api.auth.permissions.grants == {Role(role): frozenset(granted) for role, granted in DEFAULT_GRANTS.items()}


def test_a_table_not_yet_loaded_denies_every_role_everything() -> None:
    assert PermissionTable().for_roles(frozenset(Role)) == frozenset()


async def test_granting_a_permission_in_the_database_opens_a_route_and_revoking_closes_it_without_new_sign_in(
    api: Any,
) -> None:
    headers = await _nurse_headers(api)
    # The token carries roles, not permissions: that is why one token sees both changes below.
    claims = jwt.decode(headers["Authorization"].split()[1], options={"verify_signature": False})
    assert claims["roles"] == ["nurse"]
    assert "permissions" not in claims

    refused = await api.client.get("/api/v1/users", headers=headers)
    assert refused.status_code == 403
    assert refused.json()["code"] == "permission_denied"

    await _grant(api, "nurse", "user.read")
    await _reload_through_the_session(api)
    assert (await api.client.get("/api/v1/users", headers=headers)).status_code == 200
    me = (await api.client.get("/api/v1/me", headers=headers)).json()
    assert "user.read" in me["permissions"]

    await _revoke(api, "nurse", "user.read")
    await _sync_shared_state(api.app)  # the reload every server runs each SEHAT_SIGNING_KEY_REFRESH_SECONDS
    assert (await api.client.get("/api/v1/users", headers=headers)).status_code == 403


async def test_a_grant_written_by_another_server_reaches_this_one_within_one_refresh_interval(
    start_api: Callable[..., Any],
) -> None:
    async with start_api(signing_key_refresh_seconds=1) as api, _grants_restored(api):
        headers = await _nurse_headers(api)
        assert (await api.client.get("/api/v1/users", headers=headers)).status_code == 403
        await _grant(api, "nurse", "user.read")  # straight into the database, as another server would
        deadline = time.monotonic() + 5
        status = 403
        while status == 403 and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            status = (await api.client.get("/api/v1/users", headers=headers)).status_code
        assert status == 200


async def test_a_role_with_no_grants_is_denied_everything_even_its_own_profile_until_self_session_is_granted(
    api: Any,
) -> None:
    headers = await _nurse_headers(api)
    await _revoke(api, "nurse")
    await _reload_through_the_session(api)
    for path in ("/api/v1/me", "/api/v1/facilities", "/api/v1/users"):
        response = await api.client.get(path, headers=headers)
        assert response.status_code == 403, path
        assert response.json()["code"] == "permission_denied"
    assert (await api.client.post("/api/v1/auth/logout", headers=headers)).status_code == 403

    await _grant(api, "nurse", "self.session")
    await _reload_through_the_session(api)
    me = await api.client.get("/api/v1/me", headers=headers)
    assert me.status_code == 200
    assert me.json()["permissions"] == ["self.session"]
    assert (await api.client.get("/api/v1/facilities", headers=headers)).status_code == 403


async def test_grants_to_a_role_this_release_does_not_know_are_ignored(api: Any) -> None:
    await _grant(api, "janitor", "user.manage")
    await _reload_through_the_session(api)
    assert api.auth.permissions.for_roles(["janitor"]) == frozenset()
    assert api.auth.permissions.for_roles([Role.nurse]) == frozenset(DEFAULT_GRANTS["nurse"])


@contextmanager
def _recorded_statements(api: Any) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = api.database.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


async def test_authenticating_a_request_issues_no_sql_beyond_what_the_handler_reads(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("nurse",))
    headers = await api.headers_for(tenant.emails["nurse"])
    assert (await api.client.get("/api/v1/me", headers=headers)).status_code == 200  # the token is now cached
    async with api.unit_of_work() as session:
        nurse_id = await session.scalar(select(User.id).where(User.email == tenant.emails["nurse"]))

    nurse = await _actor_for(api, nurse_id)
    with _recorded_statements(api) as profile_read_alone:
        async with api.database.unit_of_work(actor=nurse) as session:
            assert await load_profile(session, nurse_id) is not None
    with _recorded_statements(api) as whole_request:
        assert (await api.client.get("/api/v1/me", headers=headers)).status_code == 200

    assert whole_request == profile_read_alone
    assert not [statement for statement in whole_request if "permissions" in statement.lower()]

    # The recorder does see the permission query when one runs, so its silence above means something.
    with _recorded_statements(api) as reload:
        await _sync_shared_state(api.app)
    assert any("role_permissions" in statement for statement in reload)
