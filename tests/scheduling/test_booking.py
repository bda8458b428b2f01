"""Booking: a free time on the practitioner's grid gives 201 and one row; a taken time, a busy patient, a time
outside the practitioner's hours or in the past gives 409 with its code and writes nothing."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from sehat.core.audit import AuditEvent
from sehat.scheduling.models import Appointment, AppointmentHistory
from tests.conftest import Api
from tests.scheduling.conftest import KARACHI, Clinic, open_clinic, tomorrow_at


async def _count(clinic: Clinic, model: Any) -> int:
    async with clinic.api.unit_of_work() as session:
        return int(await session.scalar(select(func.count()).select_from(model)))


async def test_a_free_slot_is_booked_with_its_end_from_the_appointment_type(clinic: Clinic) -> None:
    start = tomorrow_at(10)
    response = await clinic.book(clinic.booking(start=start))
    assert response.status_code == 201, response.text
    booked = response.json()
    assert datetime.fromisoformat(booked["start"]) == start
    assert datetime.fromisoformat(booked["end"]) - datetime.fromisoformat(booked["start"]) == timedelta(minutes=20)
    assert booked["status"] == "booked"
    assert await _count(clinic, AppointmentHistory) == 1
    async with clinic.api.unit_of_work() as session:
        actions = (
            await session.scalars(select(AuditEvent.action).where(AuditEvent.action == "appointment.book"))
        ).all()
    assert actions == ["appointment.book"]


async def test_refusals_answer_409_with_their_code_and_write_nothing(api: Api) -> None:
    clinic = await open_clinic(api, practitioners=2)
    start = tomorrow_at(11)
    assert (await clinic.book(clinic.booking(start=start))).status_code == 201
    cases = {
        "slot_taken": clinic.booking(start=start + timedelta(minutes=10), patient=1),
        # The same patient with another, free practitioner.
        "patient_busy": clinic.booking(start=start - timedelta(minutes=10), patient=0, practitioner=1),
        "outside_availability": clinic.booking(start=tomorrow_at(21), patient=2),
        "in_the_past": clinic.booking(start=datetime.now(KARACHI) - timedelta(hours=1), patient=2),
    }
    for code, body in cases.items():
        response = await clinic.book(body)
        assert response.status_code == 409, (code, response.text)
        assert response.json()["code"] == code
    assert await _count(clinic, Appointment) == 1
    assert await _count(clinic, AppointmentHistory) == 1


async def test_back_to_back_appointments_do_not_conflict(clinic: Clinic) -> None:
    start = tomorrow_at(12)
    assert (await clinic.book(clinic.booking(start=start, patient=0))).status_code == 201
    assert (await clinic.book(clinic.booking(start=start + timedelta(minutes=20), patient=1))).status_code == 201


async def test_a_time_off_the_slot_grid_is_bad_input_naming_the_start(clinic: Clinic) -> None:
    response = await clinic.book(clinic.booking(start=tomorrow_at(10, 5)))
    assert response.status_code == 422
    problem = response.json()
    assert problem["code"] == "not_on_slot_grid"
    assert [error["field"] for error in problem["errors"]] == ["start"]
    assert await _count(clinic, Appointment) == 0


async def test_bad_input_is_422_with_the_field_named(clinic: Clinic) -> None:
    naive = clinic.booking(start=tomorrow_at(10))
    naive["start"] = tomorrow_at(10).replace(tzinfo=None).isoformat()
    response = await clinic.book(naive)
    assert response.status_code == 422
    assert [error["field"] for error in response.json()["errors"]] == ["start"]
    unknown = clinic.booking(start=tomorrow_at(10))
    unknown["appointment_type_id"] = "00000000-0000-4000-8000-000000000000"
    assert (await clinic.book(unknown)).status_code == 404


async def test_the_practitioners_buffer_keeps_a_gap_after_each_appointment(clinic: Clinic) -> None:
    weekday = tomorrow_at(10).weekday()
    evening = await clinic.api.client.post(
        f"/api/v1/practitioners/{clinic.practitioner_ids[0]}/availability",
        headers=clinic.desk.admin,
        json={
            "facility_id": clinic.facility_id,
            "weekday": weekday,
            "starts": "20:00",
            "ends": "21:00",
            "slot_minutes": 10,
            "buffer_minutes": 10,
        },
    )
    assert evening.status_code == 201, evening.text
    assert (await clinic.book(clinic.booking(start=tomorrow_at(10), patient=0))).status_code == 201
    too_close = await clinic.book(clinic.booking(start=tomorrow_at(10, 20), patient=1))
    assert too_close.status_code == 409 and too_close.json()["code"] == "slot_taken"
    assert (await clinic.book(clinic.booking(start=tomorrow_at(10, 30), patient=1))).status_code == 201
    assert await _count(clinic, Appointment) == 2


async def test_a_patient_books_for_themselves_only(clinic: Clinic) -> None:
    patient = await clinic.patient_headers(0)
    own = await clinic.api.client.post(
        "/api/v1/appointments", headers=patient, json=clinic.booking(start=tomorrow_at(10), patient=0)
    )
    assert own.status_code == 201, own.text
    for_another = await clinic.api.client.post(
        "/api/v1/appointments", headers=patient, json=clinic.booking(start=tomorrow_at(11), patient=1)
    )
    assert for_another.status_code == 404 and for_another.json()["code"] == "patient_not_found"
    slots = await clinic.get(
        "/slots",
        headers=patient,
        practitioner_id=clinic.practitioner_ids[0],
        facility_id=clinic.facility_id,
        appointment_type_id=clinic.type_ids["new"],
        **{"from": tomorrow_at(9).isoformat(), "to": tomorrow_at(11).isoformat()},
    )
    assert slots.status_code == 200
    starts = [datetime.fromisoformat(slot["start"]) for slot in slots.json()]
    assert tomorrow_at(9) in starts and tomorrow_at(10) not in starts
    assert await _count(clinic, Appointment) == 1
