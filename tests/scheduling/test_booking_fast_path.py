"""On PostgreSQL a front-office booking is decided by the hot path (booking_pg) without the portable path, and
leaves exactly what the portable path leaves: the row, its history row and its audit entry; refusals it cannot
name itself (an unknown id) still reach the portable path's precise answer; and the working time it keeps in
memory never outlives a change to the schedule."""

from __future__ import annotations

import importlib
import uuid
from typing import Any

import pytest
from sqlalchemy import func, select, text, update

from sehat.core.audit import AuditEvent
from sehat.core.audit_chain import AuditChain
from sehat.patients.models import Patient
from sehat.scheduling import service
from sehat.scheduling.models import Appointment, AppointmentHistory
from tests.scheduling.conftest import Clinic, tomorrow_at

SCHEDULE_TABLES = importlib.import_module("sehat.migrations.versions.0013_booking_in_one_round_trip").SCHEDULE_TABLES


@pytest.fixture
def backend() -> str:
    return "postgresql"


async def test_a_front_office_booking_is_decided_by_the_hot_path_alone(
    clinic: Clinic, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def portable_path(*_: Any, **__: Any) -> None:
        raise AssertionError("the portable path was used")

    monkeypatch.setattr(service, "book_appointment", portable_path)
    response = await clinic.book(clinic.booking(start=tomorrow_at(10)), **{"Idempotency-Key": "hot-path-1"})
    assert response.status_code == 201, response.text
    taken = await clinic.book(clinic.booking(start=tomorrow_at(10, 10), patient=1))
    assert taken.status_code == 409 and taken.json()["code"] == "slot_taken"
    past = await clinic.book(clinic.booking(start=tomorrow_at(10).replace(year=2020), patient=2))
    assert past.status_code == 409 and past.json()["code"] == "in_the_past"
    async with clinic.api.unit_of_work() as session:
        rows = (await session.scalars(select(Appointment))).all()
        history = (await session.scalars(select(AppointmentHistory.to_status))).all()
        audited = (
            await session.scalars(select(AuditEvent.action).where(AuditEvent.resource_type == "appointment"))
        ).all()
    assert [(str(row.id), row.status, row.version) for row in rows] == [(response.json()["id"], "booked", 1)]
    assert history == ["booked"]
    assert audited == ["appointment.book"]


async def test_what_the_hot_path_cannot_name_is_answered_by_the_portable_path(clinic: Clinic) -> None:
    unknown = clinic.booking(start=tomorrow_at(10))
    unknown["practitioner_id"] = "00000000-0000-4000-8000-000000000000"
    response = await clinic.book(unknown)
    assert response.status_code == 404 and response.json()["code"] == "practitioner_not_found"


async def test_a_schedule_change_binds_the_very_next_booking(clinic: Clinic) -> None:
    """The hot path keeps the week's working time in memory; leave, an extra session and a holiday each move the
    schedule epoch, so the next booking decides on the changed schedule, in both directions."""
    practitioner = clinic.practitioner_ids[0]
    first = await clinic.book(clinic.booking(start=tomorrow_at(10)))
    assert first.status_code == 201, first.text  # the week's working time is now in this process's memory
    evening = await clinic.book(clinic.booking(start=tomorrow_at(20), patient=1))
    assert evening.status_code == 409 and evening.json()["code"] == "outside_availability"

    leave = {"starts": tomorrow_at(11).isoformat(), "ends": tomorrow_at(12).isoformat(), "reason": "conference"}
    assert (
        await clinic.post(f"/practitioners/{practitioner}/leave", leave, headers=clinic.desk.admin)
    ).status_code == 201
    on_leave = await clinic.book(clinic.booking(start=tomorrow_at(11), patient=1))
    assert on_leave.status_code == 409 and on_leave.json()["code"] == "outside_availability"

    extra = {
        "facility_id": clinic.facility_id,
        "starts": tomorrow_at(20).isoformat(),
        "ends": tomorrow_at(22).isoformat(),
    }
    added = await clinic.post(f"/practitioners/{practitioner}/extra-sessions", extra, headers=clinic.desk.admin)
    assert added.status_code == 201, added.text
    in_the_extra_session = await clinic.book(clinic.booking(start=tomorrow_at(20), patient=1))
    assert in_the_extra_session.status_code == 201, in_the_extra_session.text

    holiday = {"facility_id": clinic.facility_id, "day": tomorrow_at(0).date().isoformat(), "name": "Iqbal Day"}
    assert (await clinic.post("/holidays", holiday, headers=clinic.desk.admin)).status_code == 201
    closed = await clinic.book(clinic.booking(start=tomorrow_at(15), patient=2))
    assert closed.status_code == 409 and closed.json()["code"] == "outside_availability"


async def test_every_table_that_decides_a_booking_moves_the_schedule_epoch(clinic: Clinic) -> None:
    async with clinic.api.unit_of_work() as session:
        triggered = set(
            (
                await session.scalars(
                    text("SELECT tgrelid::regclass::text FROM pg_trigger WHERE tgname = 'move_schedule_epoch'")
                )
            ).all()
        )
    assert triggered == set(SCHEDULE_TABLES)
    # Each table the working time, the type or the practitioner is read from is among them.
    assert {"availability_rules", "availability_exceptions", "facility_holidays", "appointment_types"} <= triggered
    assert {"practitioners", "practitioner_appointment_types", "facilities"} <= triggered


async def test_the_hot_paths_audit_entries_seal_and_verify(clinic: Clinic) -> None:
    """The booking statement inserts its audit entry from JSON; the entry must read back byte for byte as the
    MAC was computed, or the tamper-evident log would report every booking as tampered."""
    booked = await clinic.book(clinic.booking(start=tomorrow_at(10)), **{"Idempotency-Key": "sealed-0001"})
    held = await clinic.post("/slot-holds", clinic.booking(start=tomorrow_at(11), patient=1))
    assert booked.status_code == held.status_code == 201, (booked.text, held.text)
    # A sealer of its own that waits for no settling time, as the audit log's own tests build one.
    running = clinic.api.app.state.audit_chain
    chain = AuditChain(clinic.api.auth.key_ring, running.checkpoint_file, 0)
    assert await chain.seal(clinic.api.database) >= 2
    report = await chain.verify(clinic.api.database)
    assert report.ok, report.findings
    async with clinic.api.unit_of_work() as session:
        actions = (
            await session.scalars(
                select(AuditEvent.action)
                .where(AuditEvent.resource_id.in_([booked.json()["id"], held.json()["id"]]))
                .order_by(AuditEvent.id)
            )
        ).all()
    assert actions == ["appointment.book", "appointment.hold"]


async def test_a_patient_the_hot_path_cannot_book_is_answered_by_the_portable_path_and_leaves_no_claim(
    clinic: Clinic,
) -> None:
    """The booking statement refuses a patient who is not active (it hands over, its transaction and its claim
    of the key rolled back); the portable path names the reason, and the key stays free for a later try."""
    warm = await clinic.book(clinic.booking(start=tomorrow_at(9), patient=1))
    assert warm.status_code == 201  # the week's working time is in memory: the next booking reaches the statement
    patient_id = uuid.UUID(clinic.patient_ids[0])
    async with clinic.api.unit_of_work() as session:
        await session.execute(update(Patient).where(Patient.id == patient_id).values(status="deceased"))
    body = clinic.booking(start=tomorrow_at(10))
    refused = await clinic.book(body, **{"Idempotency-Key": "handover-0001"})
    assert refused.status_code == 409 and refused.json()["code"] == "patient_deceased"
    async with clinic.api.unit_of_work() as session:
        await session.execute(update(Patient).where(Patient.id == patient_id).values(status="active"))
        booked_for_them = await session.scalar(
            select(func.count()).select_from(Appointment).where(Appointment.patient_id == patient_id)
        )
    assert booked_for_them == 0
    later = await clinic.book(body, **{"Idempotency-Key": "handover-0001"})
    assert later.status_code == 201, later.text
