"""Anomaly rules fire on constructed cases (issue 3): patient access while a facility is closed, and one person
opening more than N distinct patients within M minutes. Entries are written through the real audit log at
chosen times, sealed, then evaluated; alerts are read the way an auditor reads them."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import time_machine
from sqlalchemy import select

from sehat.access.anomaly import (
    AFTER_HOURS_ACCESS,
    BULK_PATIENT_ACCESS,
    PATIENT_READ,
    RECORD_READ_CLINICAL,
    Evaluation,
    evaluate_new_entries,
)
from sehat.core.audit import AuditEntry, AuditEvent, Outcome
from sehat.identity.models import User
from tests.conftest import Tenant, _actor_for, build_tenant

KARACHI = ZoneInfo("Asia/Karachi")  # the first facility of build_tenant; UTC+5 all year
# Monday to Friday 08:00-20:00, Saturday 09:00-13:00, Sunday closed.
CLINIC_WEEK = [{"weekday": day, "opens": "08:00", "closes": "20:00"} for day in range(5)] + [
    {"weekday": 5, "opens": "09:00", "closes": "13:00"}
]
ROLES = ("doctor", "nurse", "auditor")
# Wednesday 11 March 2026, 10:00 in Karachi: inside the clinic's hours.
WEDNESDAY_MORNING = datetime(2026, 3, 11, 10, 0, tzinfo=KARACHI)
DEFAULT_PATIENTS, DEFAULT_MINUTES = 50, 10


def karachi(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 3, day, hour, minute, tzinfo=KARACHI)


@pytest.fixture
def rules_settings(tmp_path: Path) -> dict[str, Any]:
    """Entries seal at once when asked, and neither background task runs by itself during a test."""
    return {
        "audit_checkpoint_file": tmp_path / "checkpoints.jsonl",
        "audit_seal_settle_seconds": 0,
        "audit_seal_interval_seconds": 3600,
    }


@pytest.fixture
async def rules(start_api: Any, rules_settings: dict[str, Any]) -> AsyncIterator[Any]:
    async with start_api(**rules_settings) as api:
        yield api


async def _staff(api: Any, tenant: Tenant, role: str) -> Any:
    async with api.unit_of_work() as session:
        user_id = await session.scalar(select(User.id).where(User.email == tenant.emails[role]))
    return await _actor_for(api, user_id)


async def _set_hours(api: Any, tenant: Tenant, facility_id: uuid.UUID, hours: list[dict[str, Any]] | None) -> None:
    response = await api.client.patch(
        f"/api/v1/facilities/{facility_id}",
        headers=await api.headers_for(tenant.admin_email),
        json={"opening_hours": hours},
    )
    assert response.status_code == 200, response.text


async def _record(
    api: Any,
    actor: Any,
    accesses: Sequence[tuple[datetime, uuid.UUID | None]],
    *,
    action: str = RECORD_READ_CLINICAL,
    facility_id: uuid.UUID | str | None = None,
    outcome: Outcome = Outcome.success,
) -> list[int]:
    """Audit entries as the patient domain will write them, each at its own time; their entry ids."""
    details = {"facility_id": str(facility_id)} if facility_id is not None else {}
    events = []
    async with api.unit_of_work() as session:
        for at, patient_id in accesses:
            with time_machine.travel(at, tick=False):
                events.append(
                    api.app.state.audit.record(
                        session,
                        actor,
                        AuditEntry(
                            action=action,
                            outcome=outcome,
                            resource_type="patient",
                            resource_id=str(patient_id) if patient_id else None,
                            patient_id=patient_id,
                            details=details,
                        ),
                    )
                )
        await session.flush()
        return [event.id for event in events]


async def _seal_and_evaluate(api: Any, **options: Any) -> Evaluation:
    await api.app.state.audit_chain.seal(api.database)
    return await evaluate_new_entries(api.database, api.app.state.settings, **options)


async def _alerts(api: Any, tenant: Tenant, kind: str | None = None) -> list[dict[str, Any]]:
    items = await api.all_pages("/api/v1/alerts", await api.headers_for(tenant.emails["auditor"]))
    return [item for item in items if kind is None or item["kind"] == kind]


def _burst(start: datetime, patients: Sequence[uuid.UUID], every: timedelta) -> list[tuple[datetime, uuid.UUID]]:
    return [(start + number * every, patient) for number, patient in enumerate(patients)]


def _patients(count: int) -> list[uuid.UUID]:
    return [uuid.uuid4() for _ in range(count)]


# --- after-hours access --------------------------------------------------------------------------------------


async def test_clinical_access_while_the_facility_is_closed_raises_one_after_hours_alert(rules: Any) -> None:
    alpha = await build_tenant(rules, "alpha", roles=ROLES)
    beta = await build_tenant(rules, "beta", roles=ROLES)
    north = alpha.facility_ids[0]
    await _set_hours(rules, alpha, north, CLINIC_WEEK)
    doctor = await _staff(rules, alpha, "doctor")
    patient = uuid.uuid4()

    (entry_id,) = await _record(rules, doctor, [(karachi(11, 22, 30), patient)], facility_id=north)
    evaluation = await _seal_and_evaluate(rules)

    assert evaluation.alerts == 1
    (alert,) = await _alerts(rules, alpha)
    assert (alert["kind"], alert["severity"]) == (AFTER_HOURS_ACCESS, "warning")
    assert (alert["actor_id"], alert["patient_id"], alert["audit_event_id"]) == (
        str(doctor.user_id), str(patient), entry_id,
    )  # fmt: skip
    # Ids, an action name and times: nothing that names or describes the patient.
    assert set(alert["details"]) == {"facility_id", "action", "occurred_at", "local_time", "chain_index"}
    assert alert["details"]["facility_id"] == str(north)
    assert alert["details"]["action"] == RECORD_READ_CLINICAL
    assert alert["details"]["local_time"] == "2026-03-11T22:30:00+05:00"
    assert await _alerts(rules, beta) == []

    # Running again, with or without new entries sealed meanwhile, raises nothing twice.
    assert await evaluate_new_entries(rules.database, rules.app.state.settings) == Evaluation(0, 0)
    assert (await _seal_and_evaluate(rules)).alerts == 0
    assert len(await _alerts(rules, alpha)) == 1


async def test_access_inside_hours_at_a_facility_without_known_hours_or_not_to_patient_data_raises_nothing(
    rules: Any,
) -> None:
    tenant = await build_tenant(rules, "alpha", roles=ROLES)
    north, south = tenant.facility_ids
    await _set_hours(rules, tenant, north, CLINIC_WEEK)  # south's hours stay unknown
    doctor = await _staff(rules, tenant, "doctor")
    late = karachi(11, 23, 0)

    await _record(
        rules,
        doctor,
        [(karachi(11, 8, 0), uuid.uuid4()), (karachi(11, 19, 59), uuid.uuid4()), (karachi(14, 12, 59), uuid.uuid4())],
        facility_id=north,
    )
    await _record(rules, doctor, [(late, uuid.uuid4())], facility_id=south)
    await _record(rules, doctor, [(late, uuid.uuid4())])  # no facility named
    await _record(rules, doctor, [(late, None)], action="appointment.book", facility_id=north)
    await _record(rules, doctor, [(late, uuid.uuid4())], action=PATIENT_READ, facility_id=north, outcome=Outcome.denied)
    evaluation = await _seal_and_evaluate(rules)

    assert evaluation.entries > 0
    assert evaluation.alerts == 0
    assert await _alerts(rules, tenant) == []


async def test_after_hours_reads_in_one_sitting_raise_one_alert_per_actor_and_facility(rules: Any) -> None:
    tenant = await build_tenant(rules, "alpha", roles=ROLES)
    north, south = tenant.facility_ids
    await _set_hours(rules, tenant, north, CLINIC_WEEK)
    await _set_hours(rules, tenant, south, [])  # never open
    doctor, nurse = await _staff(rules, tenant, "doctor"), await _staff(rules, tenant, "nurse")

    sitting = [(karachi(11, 22, minute), uuid.uuid4()) for minute in range(0, 50, 10)]
    first, *_ = await _record(rules, doctor, sitting, facility_id=north)
    later, *_ = await _record(rules, doctor, [(karachi(11, 23, 45), uuid.uuid4())], facility_id=north)
    elsewhere, *_ = await _record(rules, doctor, [(karachi(11, 22, 15), uuid.uuid4())], facility_id=south)
    nursing, *_ = await _record(rules, nurse, [(karachi(11, 22, 10), uuid.uuid4())], facility_id=north)
    evaluation = await _seal_and_evaluate(rules)

    assert evaluation.alerts == 4
    alerts = await _alerts(rules, tenant, AFTER_HOURS_ACCESS)
    assert sorted((a["actor_id"], a["details"]["facility_id"], a["audit_event_id"]) for a in alerts) == sorted(
        [
            (str(doctor.user_id), str(north), first),
            (str(doctor.user_id), str(north), later),
            (str(doctor.user_id), str(south), elsewhere),
            (str(nurse.user_id), str(north), nursing),
        ]
    )


async def test_a_facility_named_from_another_organization_or_garbled_is_not_consulted(rules: Any) -> None:
    alpha = await build_tenant(rules, "alpha", roles=ROLES)
    beta = await build_tenant(rules, "beta", roles=ROLES)
    await _set_hours(rules, beta, beta.facility_ids[0], [])
    doctor = await _staff(rules, alpha, "doctor")

    await _record(rules, doctor, [(karachi(11, 23, 0), uuid.uuid4())], facility_id=beta.facility_ids[0])
    await _record(rules, doctor, [(karachi(11, 23, 5), uuid.uuid4())], facility_id="not-a-facility-id")
    evaluation = await _seal_and_evaluate(rules)

    assert evaluation.alerts == 0
    assert await _alerts(rules, alpha) == []
    assert await _alerts(rules, beta) == []


# --- bulk patient access -------------------------------------------------------------------------------------


async def test_more_than_n_distinct_patients_within_the_window_raise_one_alert_per_window(rules: Any) -> None:
    settings = rules.app.state.settings
    assert (settings.anomaly_bulk_patients, settings.anomaly_bulk_window_minutes) == (
        DEFAULT_PATIENTS, DEFAULT_MINUTES,
    )  # fmt: skip
    tenant = await build_tenant(rules, "alpha", roles=ROLES)
    doctor = await _staff(rules, tenant, "doctor")
    # 51 patients, one every 10 seconds: all inside 10 minutes.
    first_burst = await _record(rules, doctor, _burst(WEDNESDAY_MORNING, _patients(51), timedelta(seconds=10)))
    # Small batches: windows and the one-alert rule hold across batch boundaries.
    assert (await _seal_and_evaluate(rules, batch_size=7)).alerts == 1
    # More patients while the same window is still open: the alert already stands for them.
    await _record(rules, doctor, _burst(WEDNESDAY_MORNING + timedelta(minutes=9), _patients(20), timedelta(seconds=3)))
    assert (await _seal_and_evaluate(rules, batch_size=7)).alerts == 0
    # Half an hour later, another burst: another window, another alert.
    second_burst = await _record(
        rules, doctor, _burst(WEDNESDAY_MORNING + timedelta(minutes=40), _patients(60), timedelta(seconds=5))
    )
    assert (await _seal_and_evaluate(rules)).alerts == 1
    assert (await _seal_and_evaluate(rules)).alerts == 0

    alerts = await _alerts(rules, tenant, BULK_PATIENT_ACCESS)
    assert [alert["audit_event_id"] for alert in alerts] == [first_burst[50], second_burst[50]]
    first = alerts[0]
    assert (first["severity"], first["actor_id"], first["patient_id"]) == ("critical", str(doctor.user_id), None)
    assert first["details"] == {
        "distinct_patients": 51,
        "threshold": DEFAULT_PATIENTS,
        "window_minutes": DEFAULT_MINUTES,
        "window_start": WEDNESDAY_MORNING.astimezone(UTC).isoformat(),
        "occurred_at": (WEDNESDAY_MORNING + timedelta(seconds=500)).astimezone(UTC).isoformat(),
        "chain_index": first["details"]["chain_index"],
    }
    assert await _alerts(rules, tenant, AFTER_HOURS_ACCESS) == []


async def test_exactly_n_patients_one_patient_many_times_or_two_people_sharing_the_work_raise_nothing(
    rules: Any,
) -> None:
    tenant = await build_tenant(rules, "alpha", roles=ROLES)
    doctor, nurse = await _staff(rules, tenant, "doctor"), await _staff(rules, tenant, "nurse")
    doctors_patients = _patients(DEFAULT_PATIENTS)

    await _record(rules, doctor, _burst(WEDNESDAY_MORNING, doctors_patients, timedelta(seconds=5)))
    # The same patient again and again: still 50 distinct patients in the window.
    again = [(WEDNESDAY_MORNING + timedelta(minutes=5, seconds=second), doctors_patients[0]) for second in range(100)]
    await _record(rules, doctor, again, action=PATIENT_READ)
    # The nurse's 50 others in the same minutes: 100 together, 50 each.
    await _record(rules, nurse, _burst(WEDNESDAY_MORNING, _patients(DEFAULT_PATIENTS), timedelta(seconds=5)))
    evaluation = await _seal_and_evaluate(rules)

    assert evaluation.alerts == 0
    assert await _alerts(rules, tenant) == []


async def test_the_window_is_the_last_m_minutes_up_to_each_access(rules: Any) -> None:
    tenant = await build_tenant(rules, "alpha", roles=ROLES)
    doctor, nurse = await _staff(rules, tenant, "doctor"), await _staff(rules, tenant, "nurse")
    window = timedelta(minutes=DEFAULT_MINUTES)

    def spread(last_after: timedelta) -> list[tuple[datetime, uuid.UUID]]:
        """51 patients: the first at the start, 49 in the next seconds, the last ``last_after`` the first."""
        patients = _patients(51)
        return [(WEDNESDAY_MORNING + timedelta(seconds=n), p) for n, p in enumerate(patients[:50])] + [
            (WEDNESDAY_MORNING + last_after, patients[50])
        ]

    # Exactly M minutes apart: the first has left the window when the last arrives.
    await _record(rules, doctor, spread(window))
    # One second less: all 51 in one window.
    (*_, last) = await _record(rules, nurse, spread(window - timedelta(seconds=1)))
    # 100 patients over 25 minutes: never more than 41 in any 10.
    await _record(rules, doctor, _burst(WEDNESDAY_MORNING + timedelta(hours=1), _patients(100), timedelta(seconds=15)))
    evaluation = await _seal_and_evaluate(rules)

    assert evaluation.alerts == 1
    (alert,) = await _alerts(rules, tenant)
    assert (alert["kind"], alert["actor_id"], alert["audit_event_id"]) == (
        BULK_PATIENT_ACCESS,
        str(nurse.user_id),
        last,
    )


async def test_an_entry_sealed_late_is_counted_in_the_windows_it_belongs_to(rules: Any) -> None:
    tenant = await build_tenant(rules, "alpha", roles=ROLES)
    doctor = await _staff(rules, tenant, "doctor")
    on_time = await _record(
        rules, doctor, _burst(WEDNESDAY_MORNING + timedelta(seconds=1), _patients(50), timedelta(seconds=1))
    )
    assert (await _seal_and_evaluate(rules)).alerts == 0

    # A transaction that began before those and committed after them: an earlier time, a later seal.
    (late,) = await _record(rules, doctor, [(WEDNESDAY_MORNING, uuid.uuid4())])
    async with rules.unit_of_work() as session:
        occurred = {
            row.id: row.occurred_at for row in await session.execute(select(AuditEvent.id, AuditEvent.occurred_at))
        }
    assert occurred[late] < occurred[on_time[0]] and late > on_time[-1]
    assert (await _seal_and_evaluate(rules)).alerts == 1

    (alert,) = await _alerts(rules, tenant, BULK_PATIENT_ACCESS)
    # The window that overflowed ends at the last access already evaluated; the late one completed it.
    assert alert["audit_event_id"] == on_time[-1]
    assert alert["details"]["distinct_patients"] == 51


# --- running the rules ---------------------------------------------------------------------------------------


async def test_the_background_task_raises_alerts_without_being_called(
    start_api: Any, rules_settings: dict[str, Any]
) -> None:
    async with start_api(**{**rules_settings, "audit_seal_interval_seconds": 0.1}) as api:
        tenant = await build_tenant(api, "alpha", roles=ROLES)
        await _set_hours(api, tenant, tenant.facility_ids[0], [])
        doctor = await _staff(api, tenant, "doctor")
        await _record(api, doctor, [(WEDNESDAY_MORNING, uuid.uuid4())], facility_id=tenant.facility_ids[0])
        # One sign-in for all the polling: each sign-in spends a one-time code.
        auditor = await api.headers_for(tenant.emails["auditor"])
        alerts: list[dict[str, Any]] = []
        for _ in range(100):
            alerts = await api.all_pages("/api/v1/alerts", auditor)
            if alerts:
                break
            await asyncio.sleep(0.1)
        assert [alert["kind"] for alert in alerts] == [AFTER_HOURS_ACCESS]
