"""The transactional outbox: an event is a row written in the transaction of the change it describes, so it
commits with the change and vanishes with a rollback."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from sehat.core.events import OutboxEvent, emit
from sehat.core.tenant_scope import enter_organization
from tests.conftest import build_tenant


async def _count(api: Any) -> int:
    async with api.unit_of_work() as session:
        return int(await session.scalar(select(func.count()).select_from(OutboxEvent)))


async def test_an_event_commits_with_its_transaction_and_vanishes_with_a_rollback(api: Any) -> None:
    tenant = await build_tenant(api, "outbox", roles=())
    with pytest.raises(RuntimeError):
        async with api.unit_of_work() as session:
            await enter_organization(session, tenant.organization_id)
            emit(session, tenant.organization_id, "test.rolled_back", {"n": 1})
            await session.flush()
            raise RuntimeError("the change fails after the event was written")
    assert await _count(api) == 0
    async with api.unit_of_work() as session:
        await enter_organization(session, tenant.organization_id)
        emit(session, tenant.organization_id, "test.committed", {"n": 2})
    async with api.unit_of_work() as session:
        rows = (await session.execute(select(OutboxEvent.kind, OutboxEvent.payload, OutboxEvent.published_at))).all()
    assert [(kind, payload, published) for kind, payload, published in rows] == [("test.committed", {"n": 2}, None)]
