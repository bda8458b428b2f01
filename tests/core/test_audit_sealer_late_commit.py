"""The sealer's idle pass looks only above a floor, yet an entry whose transaction commits after later entries
were sealed is still sealed. PostgreSQL only: SQLite admits one writer at a time, so no entry can commit after
a later one was sealed there."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from sehat.core.actor import SystemActor
from sehat.core.audit import AuditEntry, AuditSeal, Outcome
from sehat.core.tenant_scope import enter_platform_scope
from tests.core.test_audit_log import _record
from tests.core.test_audit_verify_fast_path import _chain, log_api

__all__ = ["log_api"]  # the fixture used below, shared with the fast-path tests


@pytest.fixture(params=["postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_an_entry_whose_transaction_commits_late_is_still_sealed(log_api: Any) -> None:
    api = log_api
    chain = _chain(api)
    await _record(api, 2)
    await chain.seal_pass(api.database)
    # A request that drew its entry's id and is still working when a later entry commits and gets sealed.
    slow = api.database.session()
    try:
        await enter_platform_scope(slow)
        late = api.app.state.audit.record(
            slow, SystemActor(name="slow"), AuditEntry(action="test.late", outcome=Outcome.success)
        )
        await slow.flush()
        later = await _record(api, 2, start=10)
        assert late.id < later[0]
        for _ in range(3):
            done = await chain.seal_pass(api.database)
            # The floor waits below the open transaction's entry, however many passes run meanwhile.
            assert done.scanned_above < late.id
        await slow.commit()
    finally:
        await slow.close()
    done = await chain.seal_pass(api.database)
    assert done.sealed == 1
    async with api.unit_of_work() as session:
        await enter_platform_scope(session)
        assert await session.scalar(select(AuditSeal.chain_index).where(AuditSeal.event_id == late.id)) == 5
    report = await api.app.state.audit_chain.verify(api.database)
    assert report.ok and (report.sealed, report.unsealed) == (5, 0)
    assert (await chain.seal_pass(api.database)).scanned_above == later[-1]
