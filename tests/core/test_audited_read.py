"""A hot read carries its own audit entry (``AuditLog.attach``): the row comes back, exactly one valid entry is
written in the same transaction, and if the transaction rolls back the entry goes with it."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from sehat.core.audit import AuditEntry, AuditEvent, Outcome
from sehat.core.scoping import scoped_select
from sehat.tenancy.models import Facility
from tests.conftest import Tenant, _actor_for, build_tenant

PATIENT = uuid.UUID("5b0d7a52-9e0c-4a51-a8a0-0f4f3b8e6c11")


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
            statement = scoped_select(Facility, doctor).where(Facility.id == facility_id)
            facility = await session.scalar(api.app.state.audit.attach(session, doctor, _entry(facility_id), statement))
            assert facility is not None and facility.id == facility_id
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
            statement = scoped_select(Facility, doctor).where(Facility.id == facility_id)
            assert await session.scalar(api.app.state.audit.attach(session, doctor, _entry(facility_id), statement))
            raise RuntimeError("the request failed after reading")
    assert await _entries(api) == []
