"""Deny by default: every /api/v1 route declares a permission, unless it is on the explicit public list."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from sehat.app import PUBLIC_ROUTES, create_app
from sehat.identity.deps import Require
from sehat.identity.permissions import ALL_PERMISSIONS
from tests.conftest import MASTER_KEY


def _api_routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if isinstance(route, APIRoute):
            yield route
        # Included routers are kept as wrappers in recent FastAPI versions; look inside them.
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _api_routes(inner.routes)


def _declared(dependant: Dependant) -> list[Require]:
    found = [dependant.call] if isinstance(dependant.call, Require) else []
    for child in dependant.dependencies:
        found.extend(_declared(child))
    return found  # type: ignore[return-value]


def test_every_api_route_declares_a_known_permission_or_is_explicitly_public() -> None:
    from sehat.settings import Settings

    app = create_app(Settings(_env_file=None, master_key=MASTER_KEY))  # type: ignore[call-arg]
    routes = [route for route in _api_routes(app.routes) if route.path.startswith("/api/")]
    assert len(routes) >= 20  # the walk really found the routers
    undeclared = []
    for route in routes:
        requirements = _declared(route.dependant)
        if route.path in PUBLIC_ROUTES:
            assert not requirements, f"{route.path} is public but also declares a permission"
            continue
        if not requirements:
            undeclared.append(f"{sorted(route.methods)} {route.path}")
        for requirement in requirements:
            assert requirement.permission in ALL_PERMISSIONS, (route.path, requirement.permission)
    assert undeclared == [], "routes without a declared permission: " + ", ".join(undeclared)


def test_the_public_list_names_only_routes_that_exist() -> None:
    from sehat.settings import Settings

    app = create_app(Settings(_env_file=None, master_key=MASTER_KEY))  # type: ignore[call-arg]
    paths = {route.path for route in _api_routes(app.routes)}
    assert paths >= PUBLIC_ROUTES


async def test_every_declared_permission_is_in_the_permissions_table_of_a_migrated_database(api: Any) -> None:
    from sqlalchemy import select

    from sehat.identity.models import Permission

    async with api.unit_of_work() as session:
        catalogue = set((await session.scalars(select(Permission.name))).all())
    # The names code may declare and the names the database can grant are the same list.
    assert catalogue == ALL_PERMISSIONS
    declared = {
        requirement.permission
        for route in _api_routes(api.app.routes)
        if route.path.startswith("/api/")
        for requirement in _declared(route.dependant)
    }
    assert declared, "the walk found no declared permissions"
    assert declared - catalogue == set(), "routes declare permissions the database does not know"
