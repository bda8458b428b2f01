"""One request, one transaction: committed before the response leaves, nothing kept from a failed request,
and after-commit callbacks fired only for work that was really committed."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

import httpx
import pytest
from fastapi import Depends
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import SystemActor
from sehat.core.db import after_commit
from sehat.core.errors import Conflict
from sehat.core.http import api_router, get_session
from sehat.core.tenant_scope import enter_platform_scope
from sehat.tenancy.models import Organization

Session = Annotated[AsyncSession, Depends(get_session)]


def _mount(api: Any, fired: list[str]) -> None:
    router = api_router(prefix="/uow")

    async def _write(session: AsyncSession, slug: str) -> None:
        # Organizations are the platform's to create; row-level security admits them in that scope only.
        await enter_platform_scope(session)
        session.add(Organization(id=uuid.uuid4(), name=slug, slug=slug))
        await session.flush()

        async def note() -> None:
            fired.append(slug)

        after_commit(session, note)

    @router.post("/ok/{slug}", status_code=201)
    async def ok(slug: str, session: Session) -> dict[str, str]:
        await _write(session, slug)
        return {"slug": slug}

    @router.post("/refused/{slug}")
    async def refused(slug: str, session: Session) -> None:
        await _write(session, slug)
        raise Conflict("refused after writing")

    @router.post("/refused-but-kept/{slug}")
    async def refused_but_kept(slug: str, session: Session) -> None:
        await _write(session, slug)
        raise Conflict("refused, but what led here must persist", keep_changes=True)

    @router.post("/crash/{slug}")
    async def crash(slug: str, session: Session) -> None:
        await _write(session, slug)
        raise RuntimeError("boom after writing")

    api.app.include_router(router)


async def _exists(api: Any, slug: str) -> bool:
    async with api.unit_of_work() as session:
        return await session.scalar(select(Organization.id).where(Organization.slug == slug)) is not None


@pytest.fixture
def fired(api: Any) -> list[str]:
    events: list[str] = []
    _mount(api, events)
    return events


async def test_a_2xx_means_the_work_is_already_committed_and_its_callback_fired(api: Any, fired: list) -> None:
    response = await api.client.post("/uow/ok/committed-org")
    assert response.status_code == 201
    # Read through a separate session the moment the response arrives: the commit came first.
    assert await _exists(api, "committed-org")
    assert fired == ["committed-org"]


async def test_a_refused_request_keeps_nothing_and_fires_nothing(api: Any, fired: list) -> None:
    response = await api.client.post("/uow/refused/refused-org")
    assert response.status_code == 409
    assert not await _exists(api, "refused-org")
    assert fired == []


async def test_a_refusal_marked_keep_changes_commits_what_led_to_it(api: Any, fired: list) -> None:
    response = await api.client.post("/uow/refused-but-kept/kept-org")
    assert response.status_code == 409
    assert await _exists(api, "kept-org")
    assert fired == ["kept-org"]


async def test_a_crash_mid_request_keeps_nothing_and_fires_nothing(api: Any, fired: list) -> None:
    transport = httpx.ASGITransport(app=api.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://sehat.test") as client:
        response = await client.post("/uow/crash/crashed-org")
    assert response.status_code == 500
    assert not await _exists(api, "crashed-org")
    assert fired == []


async def test_unit_of_work_outside_requests_commits_on_success_and_rolls_back_on_error(api: Any) -> None:
    fired: list[str] = []

    async def note() -> None:
        fired.append("cli")

    async with api.database.unit_of_work(actor=SystemActor(name="cli")) as session:
        session.add(Organization(id=uuid.uuid4(), name="cli", slug="cli-org"))
        after_commit(session, note)
    with pytest.raises(RuntimeError):
        async with api.database.unit_of_work(actor=SystemActor(name="cli")) as session:
            session.add(Organization(id=uuid.uuid4(), name="cli", slug="cli-org-failed"))
            after_commit(session, note)
            raise RuntimeError("fail inside")
    assert await _exists(api, "cli-org")
    assert not await _exists(api, "cli-org-failed")
    assert fired == ["cli"]
