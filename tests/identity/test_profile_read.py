"""The one-statement PostgreSQL profile read returns exactly what the portable ORM read returns."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from sehat.identity.models import User
from sehat.identity.repository import load_profile_portable, load_profile_postgresql
from tests.conftest import build_tenant


@pytest.fixture(params=["postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    """The fast path exists only on PostgreSQL (SQLite always takes the portable path, tested everywhere)."""
    return request.param


async def _both_reads(api: Any, user_id: Any) -> tuple[Any, Any]:
    async with api.unit_of_work() as session:
        fast = await load_profile_postgresql(session, user_id)
    async with api.unit_of_work() as session:
        portable = await load_profile_portable(session, user_id)
    return fast, portable


async def test_postgresql_fast_path_and_portable_path_agree(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("doctor",))
    headers = await api.headers_for(tenant.admin_email)
    async with api.unit_of_work() as session:
        doctor_id = await session.scalar(select(User.id).where(User.email == tenant.emails["doctor"]))
        admin_id = await session.scalar(select(User.id).where(User.email == tenant.admin_email))
    await api.client.patch(
        f"/api/v1/users/{doctor_id}",
        headers=headers,
        json={"facility_ids": [str(facility) for facility in tenant.facility_ids]},
    )

    doctor_fast, doctor_portable = await _both_reads(api, doctor_id)
    admin_fast, admin_portable = await _both_reads(api, admin_id)

    assert doctor_fast == doctor_portable
    assert sorted(doctor_fast.facility_ids) == sorted(tenant.facility_ids)
    assert doctor_fast.roles == ["doctor"]
    assert admin_fast == admin_portable
    assert admin_fast.facility_ids == []
    assert await _both_reads(api, tenant.organization_id) == (None, None)
