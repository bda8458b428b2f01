"""Changing a booked appointment: a cancellation frees its time at once and keeps its reason sealed; a
reschedule takes the new time and frees the old in one step, or changes nothing; a no-show is marked only once
the appointment has begun, a check-in only on its day; each change keeps a history row and an audit entry."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

import time_machine
from sqlalchemy import select, text

from sehat.core.audit import AuditEvent
from sehat.scheduling.models import AppointmentHistory
from tests.conftest import Api
from tests.scheduling.conftest import Clinic, open_clinic, tomorrow_at

REASON = "Admitted to hospital with chest pain"


async def _history(clinic: Clinic, appointment_id: str) -> list[tuple[str | None, str]]:
    async with clinic.api.unit_of_work() as session:
        rows = await session.execute(
            select(AppointmentHistory.from_status, AppointmentHistory.to_status)
            .where(AppointmentHistory.appointment_id == uuid.UUID(appointment_id))
            .order_by(AppointmentHistory.at, AppointmentHistory.id)
        )
        return [(from_status, to_status) for from_status, to_status in rows]


async def _audited(clinic: Clinic, appointment_id: str) -> list[str]:
    async with clinic.api.unit_of_work() as session:
        actions = await session.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.resource_id == appointment_id, AuditEvent.action != "appointment.read")
            .order_by(AuditEvent.id)
        )
        return list(actions)


async def _cancel(clinic: Clinic, appointment_id: str, headers: dict[str, str] | None = None) -> Any:
    body = {"code": "patient_request", "reason": REASON}
    return await clinic.post(f"/appointments/{appointment_id}/cancel", body, headers=headers)


async def test_a_cancellation_frees_the_time_at_once_and_keeps_its_reason_sealed(clinic: Clinic) -> None:
    booked = await clinic.booked(start=tomorrow_at(10), patient=0)
    response = await _cancel(clinic, booked["id"])
    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert (cancelled["status"], cancelled["cancellation_code"], cancelled["version"]) == (
        "cancelled",
        "patient_request",
        2,
    )
    assert response.headers["ETag"] == '"2"'
    assert (await clinic.appointment(booked["id"]))["cancellation_reason"] == REASON
    await clinic.booked(start=tomorrow_at(10), patient=1)
    async with clinic.api.unit_of_work() as session:
        stored = await session.scalar(
            text("SELECT reason_sealed FROM appointments WHERE cancellation_code IS NOT NULL")
        )
    assert stored is not None and REASON.encode() not in bytes(stored) and b"chest" not in bytes(stored)
    assert await _history(clinic, booked["id"]) == [(None, "booked"), ("booked", "cancelled")]
    assert await _audited(clinic, booked["id"]) == ["appointment.book", "appointment.cancel"]


async def test_a_cancelled_appointment_cannot_change_again(clinic: Clinic) -> None:
    booked = await clinic.booked(start=tomorrow_at(10))
    assert (await _cancel(clinic, booked["id"])).status_code == 200
    again = await _cancel(clinic, booked["id"])
    moved = await clinic.post(f"/appointments/{booked['id']}/reschedule", {"start": tomorrow_at(11).isoformat()})
    for response in (again, moved):
        assert response.status_code == 409
        assert response.json()["code"] == "invalid_transition"


async def test_a_reschedule_takes_the_new_time_and_frees_the_old_in_one_step(clinic: Clinic) -> None:
    booked = await clinic.booked(start=tomorrow_at(10), patient=0)
    response = await clinic.post(f"/appointments/{booked['id']}/reschedule", {"start": tomorrow_at(11).isoformat()})
    assert response.status_code == 200, response.text
    moved = response.json()
    assert (moved["id"], moved["status"], moved["version"]) == (booked["id"], "booked", 2)
    assert datetime.fromisoformat(moved["start"]) == tomorrow_at(11)
    await clinic.booked(start=tomorrow_at(10), patient=1)  # the old time is free
    taken = await clinic.book(clinic.booking(start=tomorrow_at(11), patient=2))
    assert taken.status_code == 409 and taken.json()["code"] == "slot_taken"
    assert await _history(clinic, booked["id"]) == [(None, "booked"), ("booked", "booked")]
    assert await _audited(clinic, booked["id"]) == ["appointment.book", "appointment.reschedule"]


async def test_a_refused_reschedule_changes_nothing(clinic: Clinic) -> None:
    first = await clinic.booked(start=tomorrow_at(10), patient=0)
    await clinic.booked(start=tomorrow_at(11), patient=1)
    for start, code in ((tomorrow_at(11, 10), "slot_taken"), (tomorrow_at(21), "outside_availability")):
        response = await clinic.post(f"/appointments/{first['id']}/reschedule", {"start": start.isoformat()})
        assert response.status_code == 409 and response.json()["code"] == code
    off_grid = await clinic.post(f"/appointments/{first['id']}/reschedule", {"start": tomorrow_at(12, 5).isoformat()})
    assert off_grid.status_code == 422 and off_grid.json()["code"] == "not_on_slot_grid"
    unchanged = await clinic.appointment(first["id"])
    assert (unchanged["start"], unchanged["status"], unchanged["version"]) == (first["start"], "booked", 1)
    assert await _history(clinic, first["id"]) == [(None, "booked")]
    taken = await clinic.book(clinic.booking(start=tomorrow_at(10), patient=2))
    assert taken.status_code == 409  # the old time is still the first patient's


async def test_a_reschedule_may_move_to_an_equivalent_practitioner(api: Api) -> None:
    clinic = await open_clinic(api, practitioners=2)
    booked = await clinic.booked(start=tomorrow_at(10), patient=0, practitioner=0)
    response = await clinic.post(
        f"/appointments/{booked['id']}/reschedule",
        {"start": tomorrow_at(10).isoformat(), "practitioner_id": clinic.practitioner_ids[1]},
    )
    assert response.status_code == 200, response.text
    assert response.json()["practitioner_id"] == clinic.practitioner_ids[1]
    await clinic.booked(start=tomorrow_at(10), patient=1, practitioner=0)


async def test_a_stale_if_match_is_refused_with_412_and_changes_nothing(clinic: Clinic) -> None:
    booked = await clinic.booked(start=tomorrow_at(10))
    moved = await clinic.post(
        f"/appointments/{booked['id']}/reschedule", {"start": tomorrow_at(11).isoformat()}, headers=None
    )
    assert moved.status_code == 200
    stale = await clinic.api.client.post(
        f"/api/v1/appointments/{booked['id']}/cancel",
        headers={**clinic.desk.front_office, "If-Match": '"1"'},
        json={"code": "other"},
    )
    assert stale.status_code == 412 and stale.json()["code"] == "version_mismatch"
    assert (await clinic.appointment(booked["id"]))["status"] == "booked"
    current = await clinic.api.client.post(
        f"/api/v1/appointments/{booked['id']}/cancel",
        headers={**clinic.desk.front_office, "If-Match": moved.headers["ETag"]},
        json={"code": "other"},
    )
    assert current.status_code == 200, current.text


async def test_patients_change_their_own_appointments_only(clinic: Clinic) -> None:
    own = await clinic.booked(start=tomorrow_at(10), patient=0)
    someone_else = await clinic.booked(start=tomorrow_at(12), patient=1)
    patient = await clinic.patient_headers(0)
    assert (await _cancel(clinic, someone_else["id"], headers=patient)).status_code == 404
    assert (await clinic.get(f"/appointments/{someone_else['id']}", headers=patient)).status_code == 404
    moved = await clinic.post(f"/appointments/{own['id']}/reschedule", {"start": tomorrow_at(11).isoformat()}, patient)
    assert moved.status_code == 200, moved.text
    assert (await _cancel(clinic, own["id"], headers=patient)).status_code == 200
    seen = await clinic.get(f"/appointments/{own['id']}", headers=patient)
    assert seen.json()["cancellation_reason"] == REASON
    checked_in = await clinic.post(f"/appointments/{someone_else['id']}/check-in", headers=patient)
    assert checked_in.status_code == 401 and checked_in.json()["code"] == "wrong_audience"


async def test_a_doctor_reads_appointments_but_may_not_cancel_them(clinic: Clinic) -> None:
    booked = await clinic.booked(start=tomorrow_at(10))
    doctor = await clinic.desk.headers("doctor")
    assert (await clinic.get(f"/appointments/{booked['id']}", headers=doctor)).status_code == 200
    refused = await _cancel(clinic, booked["id"], headers=doctor)
    assert refused.status_code == 403
    assert (await clinic.appointment(booked["id"]))["status"] == "booked"


async def test_a_no_show_is_marked_only_once_the_appointment_has_begun(clinic: Clinic) -> None:
    booked = await clinic.booked(start=tomorrow_at(10))
    early = await clinic.post(f"/appointments/{booked['id']}/no-show")
    assert early.status_code == 409 and early.json()["code"] == "too_early"
    started = tomorrow_at(10, 15).timestamp()
    with time_machine.travel(started, tick=False):
        front_office = await clinic.desk.headers("front_office")
        response = await clinic.post(f"/appointments/{booked['id']}/no-show", headers=front_office)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "no_show"
    assert await _history(clinic, booked["id"]) == [(None, "booked"), ("booked", "no_show")]


async def test_a_check_in_happens_on_the_day_before_the_appointment_ends(clinic: Clinic) -> None:
    booked = await clinic.booked(start=tomorrow_at(10), patient=0)
    late_one = await clinic.booked(start=tomorrow_at(8), patient=1)
    early = await clinic.post(f"/appointments/{booked['id']}/check-in")
    assert early.status_code == 409 and early.json()["code"] == "too_early"
    with time_machine.travel(tomorrow_at(9, 30).timestamp(), tick=False):
        nurse = await clinic.desk.headers("nurse")
        response = await clinic.post(f"/appointments/{booked['id']}/check-in", headers=nurse)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "checked_in"
        too_late = await clinic.post(f"/appointments/{late_one['id']}/check-in", headers=nurse)
        assert too_late.status_code == 409 and too_late.json()["code"] == "too_late"
    assert await _audited(clinic, booked["id"]) == ["appointment.book", "appointment.check_in"]


async def test_reads_and_lists_of_appointments_are_audited_and_walled_by_patient(clinic: Clinic) -> None:
    own = await clinic.booked(start=tomorrow_at(10), patient=0)
    await clinic.booked(start=tomorrow_at(11), patient=1)
    staff_list = await clinic.get("/appointments", facility_id=clinic.facility_id)
    assert staff_list.status_code == 200, staff_list.text
    assert len(staff_list.json()["items"]) == 2
    patient = await clinic.patient_headers(0)
    mine = await clinic.get("/appointments", headers=patient)
    assert [item["id"] for item in mine.json()["items"]] == [own["id"]]
    async with clinic.api.unit_of_work() as session:
        listed = await session.scalar(text("SELECT count(*) FROM audit_events WHERE action = 'appointment.list'"))
    assert listed == 3  # two for the front office's page, one for the patient's


async def test_unknown_or_foreign_appointments_are_404(clinic: Clinic) -> None:
    unknown = "00000000-0000-4000-8000-000000000000"
    for path in (f"/appointments/{unknown}/cancel", f"/appointments/{unknown}/check-in"):
        response = await clinic.post(path, {"code": "other"} if path.endswith("cancel") else None)
        assert response.status_code == 404, response.text


async def test_a_reschedule_into_the_past_is_refused_like_a_booking(clinic: Clinic) -> None:
    booked = await clinic.booked(start=tomorrow_at(10))
    past = datetime.now(tomorrow_at(10).tzinfo) - timedelta(hours=2)
    response = await clinic.post(f"/appointments/{booked['id']}/reschedule", {"start": past.isoformat()})
    assert response.status_code == 409 and response.json()["code"] == "in_the_past"
    assert (await clinic.appointment(booked["id"]))["version"] == 1
