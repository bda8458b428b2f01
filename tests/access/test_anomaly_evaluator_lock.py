"""Several servers run the anomaly evaluator; a PostgreSQL advisory lock lets one work at a time, so no alert
is raised twice. PostgreSQL only: on SQLite every unit of work already holds the one write lock."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import text

from sehat.access.anomaly import _EVALUATOR_LOCK_ID, Evaluation, evaluate_new_entries
from tests.access.test_anomaly_rules import ROLES, WEDNESDAY_MORNING, _record, _set_hours, _staff, rules, rules_settings
from tests.conftest import build_tenant

__all__ = ["rules", "rules_settings"]  # fixtures used below, shared with the rules' own tests


@pytest.fixture(params=["postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_one_evaluator_at_a_time_across_servers(rules: Any) -> None:
    tenant = await build_tenant(rules, "alpha", roles=ROLES)
    await _set_hours(rules, tenant, tenant.facility_ids[0], [])
    doctor = await _staff(rules, tenant, "doctor")
    await _record(rules, doctor, [(WEDNESDAY_MORNING, uuid.uuid4())], facility_id=tenant.facility_ids[0])
    await rules.app.state.audit_chain.seal(rules.database)

    async with rules.database.engine.connect() as other_server:
        await other_server.execute(text("SELECT pg_advisory_lock(:lock)"), {"lock": _EVALUATOR_LOCK_ID})
        assert await evaluate_new_entries(rules.database, rules.app.state.settings) == Evaluation(0, 0)
        await other_server.execute(text("SELECT pg_advisory_unlock(:lock)"), {"lock": _EVALUATOR_LOCK_ID})
        await other_server.commit()
    assert (await evaluate_new_entries(rules.database, rules.app.state.settings)).alerts == 1
