"""A hot read carries its own audit entry (``AuditLog.fetch_with_entry``): the row comes back, exactly one valid
entry is written in the same statement and transaction, and if the transaction rolls back the entry goes with
it. PostgreSQL only: SQLite has no data-modifying CTEs, and its reads add the entry with ``record``."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from sehat.core.audit import AuditEntry, AuditEvent, Outcome
from tests.conftest import Tenant, _actor_for, build_tenant

PATIENT = uuid.UUID("5b0d7a52-9e0c-4a51-a8a0-0f4f3b8e6c11")
READ = "SELECT id, name FROM facilities WHERE id = $1"


@pytest.fixture(params=["postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def _doctor(api: Any, tenant: Tenant) -> Any:
    from sehat.identity.models import User

    async with api.unit_of_work() as session:
        doctor_id = await session.scalar(select(User.id).where(User.email == tenant.emails["doctor"]))
    return await _actor_for(api, doctor_id)


def _entry(facility_id: uuid.UUID) -> AuditEntry:
    return AuditEntry(
        action="patient.read",
        outcome=Outcome.success,
        resource_type="facility",
        resource_id=str(facility_id),
        patient_id=PATIENT,
        details={"facility_id": str(facility_id)},
    )


async def _entries(api: Any) -> list[AuditEvent]:
    async with api.unit_of_work() as session:
        return list((await session.scalars(select(AuditEvent).where(AuditEvent.action == "patient.read"))).all())


async def test_the_read_returns_its_row_and_writes_one_entry_that_verifies(start_api: Any, tmp_path: Any) -> None:
    async with start_api(audit_checkpoint_file=tmp_path / "checkpoints.jsonl", audit_seal_settle_seconds=0) as api:
        tenant = await build_tenant(api, "alpha")
        doctor = await _doctor(api, tenant)
        facility_id = tenant.facility_ids[0]
        async with api.database.unit_of_work(actor=doctor) as session:
            rows = await api.app.state.audit.fetch_with_entry(session, doctor, _entry(facility_id), READ, facility_id)
            assert [row["id"] for row in rows] == [facility_id]
        (entry,) = await _entries(api)
        assert (entry.organization_id, entry.actor_id, entry.patient_id) == (
            tenant.organization_id,
            doctor.user_id,
            PATIENT,
        )
        assert (entry.resource_type, entry.resource_id, entry.outcome) == ("facility", str(facility_id), "success")
        assert entry.details == {"facility_id": str(facility_id)}
        await api.app.state.audit_chain.seal(api.database)
        report = await api.app.state.audit_chain.verify(api.database)
        assert report.ok, report.findings


async def test_the_entry_is_rolled_back_with_the_read(api: Any) -> None:
    tenant = await build_tenant(api, "alpha")
    doctor = await _doctor(api, tenant)
    facility_id = tenant.facility_ids[0]
    with pytest.raises(RuntimeError):
        async with api.database.unit_of_work(actor=doctor) as session:
            assert await api.app.state.audit.fetch_with_entry(session, doctor, _entry(facility_id), READ, facility_id)
            raise RuntimeError("the request failed after reading")
    assert await _entries(api) == []


async def test_the_read_may_bring_its_own_with_clause_and_row_level_security_still_applies(api: Any) -> None:
    alpha = await build_tenant(api, "alpha")
    beta = await build_tenant(api, "beta")
    doctor = await _doctor(api, alpha)
    query = "WITH wanted AS (SELECT unnest($1::uuid[]) AS id) SELECT f.id FROM facilities f JOIN wanted USING (id)"
    async with api.database.unit_of_work(actor=doctor) as session:
        rows = await api.app.state.audit.fetch_with_entry(
            session, doctor, _entry(alpha.facility_ids[0]), query, [alpha.facility_ids[0], beta.facility_ids[0]]
        )
    # The other organization's facility is filtered out by the database even though the query asked for it.
    assert [row["id"] for row in rows] == [alpha.facility_ids[0]]
    assert len(await _entries(api)) == 1
