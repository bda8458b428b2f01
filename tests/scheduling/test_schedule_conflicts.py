"""Schedule changes over booked appointments: leave, a facility holiday or removed hours flag each appointment
they leave outside working time as needs_reschedule (never cancelled; it keeps its time), with the next free
slots of the same or an equivalent practitioner, a history row, an audit entry and an outbox event; the free
slots of that time disappear."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from sehat.core.audit import AuditEvent
from sehat.core.events import OutboxEvent
from sehat.scheduling.models import AppointmentHistory
from tests.conftest import Api
from tests.scheduling.conftest import Clinic, open_clinic, tomorrow_at


async def _leave(clinic: Clinic, practitioner: int, start: datetime, end: datetime, **extra: Any) -> Any:
    body = {"starts": start.isoformat(), "ends": end.isoformat(), "reason": "conference", **extra}
    return await clinic.post(
        f"/practitioners/{clinic.practitioner_ids[practitioner]}/leave", body, headers=clinic.desk.admin
    )


async def _events(clinic: Clinic, kind: str) -> list[dict[str, Any]]:
    async with clinic.api.unit_of_work() as session:
        rows = await session.scalars(
            select(OutboxEvent.payload).where(OutboxEvent.kind == kind).order_by(OutboxEvent.created_at)
        )
        return list(rows)


async def _slot_starts(clinic: Clinic, practitioner: int, start: datetime, end: datetime) -> list[datetime]:
    response = await clinic.get(
        "/slots",
        practitioner_id=clinic.practitioner_ids[practitioner],
        facility_id=clinic.facility_id,
        appointment_type_id=clinic.type_ids["new"],
        **{"from": start.isoformat(), "to": end.isoformat()},
    )
    assert response.status_code == 200, response.text
    return [datetime.fromisoformat(slot["start"]) for slot in response.json()]


async def test_leave_over_a_booking_flags_it_with_offers_and_cancels_nothing(api: Api) -> None:
    clinic = await open_clinic(api, practitioners=2)
    inside = await clinic.booked(start=tomorrow_at(10), patient=0)
    outside = await clinic.booked(start=tomorrow_at(15), patient=1)
    response = await _leave(clinic, 0, tomorrow_at(9), tomorrow_at(12))
    assert response.status_code == 201, response.text
    flagged = response.json()["needs_reschedule"]
    assert [entry["appointment_id"] for entry in flagged] == [inside["id"]]
    offers = flagged[0]["offers"]
    assert offers, "the patient is offered somewhere to go"
    starts = [datetime.fromisoformat(offer["start"]) for offer in offers]
    assert starts == sorted(starts) and starts[0] >= datetime.now(tomorrow_at(0).tzinfo)
    assert {offer["practitioner_id"] for offer in offers} <= set(clinic.practitioner_ids)
    for offer in offers:
        if offer["practitioner_id"] == clinic.practitioner_ids[0]:
            assert not tomorrow_at(9) <= datetime.fromisoformat(offer["start"]) < tomorrow_at(12)

    flagged_now = await clinic.appointment(inside["id"])
    assert (flagged_now["status"], flagged_now["version"]) == ("needs_reschedule", 2)
    assert (await clinic.appointment(outside["id"]))["status"] == "booked"
    # It keeps its time until it is moved: the patient is still busy then.
    busy = await clinic.book(clinic.booking(start=tomorrow_at(10), patient=0, practitioner=1))
    assert busy.status_code == 409 and busy.json()["code"] == "patient_busy"
    [event] = await _events(clinic, "appointment.needs_reschedule")
    assert event["appointment_id"] == inside["id"] and event["offers"] == offers
    async with clinic.api.unit_of_work() as session:
        statuses = (
            await session.scalars(
                select(AppointmentHistory.to_status).where(AppointmentHistory.appointment_id == uuid.UUID(inside["id"]))
            )
        ).all()
    assert sorted(statuses) == ["booked", "needs_reschedule"]

    moved = await clinic.post(
        f"/appointments/{inside['id']}/reschedule",
        {"start": offers[-1]["start"], "practitioner_id": offers[-1]["practitioner_id"]},
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["status"] == "booked"


async def test_leave_removes_its_time_from_the_slots(clinic: Clinic) -> None:
    assert (await _leave(clinic, 0, tomorrow_at(10), tomorrow_at(11))).status_code == 201
    starts = await _slot_starts(clinic, 0, tomorrow_at(9), tomorrow_at(12))
    assert starts and not any(tomorrow_at(9, 50) <= start < tomorrow_at(11) for start in starts)
    refused = await clinic.book(clinic.booking(start=tomorrow_at(10)))
    assert refused.status_code == 409 and refused.json()["code"] == "outside_availability"


async def test_a_facility_holiday_closes_the_day_for_everyone(api: Api) -> None:
    clinic = await open_clinic(api, practitioners=2)
    first = await clinic.booked(start=tomorrow_at(10), patient=0, practitioner=0)
    second = await clinic.booked(start=tomorrow_at(17), patient=1, practitioner=1)
    response = await clinic.post(
        "/holidays",
        {"facility_id": clinic.facility_id, "day": tomorrow_at(0).date().isoformat(), "name": "Iqbal Day"},
        headers=clinic.desk.admin,
    )
    assert response.status_code == 201, response.text
    assert sorted(entry["appointment_id"] for entry in response.json()["needs_reschedule"]) == sorted(
        [first["id"], second["id"]]
    )
    assert await _slot_starts(clinic, 1, tomorrow_at(8), tomorrow_at(20)) == []
    again = await clinic.post(
        "/holidays",
        {"facility_id": clinic.facility_id, "day": tomorrow_at(0).date().isoformat(), "name": "Again"},
        headers=clinic.desk.admin,
    )
    assert again.status_code == 409 and again.json()["code"] == "holiday_exists"


async def test_removing_weekly_hours_flags_the_future_appointments_in_them(clinic: Clinic) -> None:
    booked = await clinic.booked(start=tomorrow_at(10))
    rules = await clinic.get(f"/practitioners/{clinic.practitioner_ids[0]}/availability")
    weekday = tomorrow_at(10).weekday()
    [rule] = [rule for rule in rules.json() if rule["weekday"] == weekday]
    removed = await clinic.api.client.delete(
        f"/api/v1/practitioners/{clinic.practitioner_ids[0]}/availability/{rule['id']}", headers=clinic.desk.admin
    )
    assert removed.status_code == 200, removed.text
    assert [entry["appointment_id"] for entry in removed.json()["needs_reschedule"]] == [booked["id"]]
    assert (await clinic.appointment(booked["id"]))["status"] == "needs_reschedule"
    listed = await clinic.get("/appointments", status="needs_reschedule")
    assert [item["id"] for item in listed.json()["items"]] == [booked["id"]]


async def test_a_hold_in_the_leave_is_released_not_flagged(clinic: Clinic) -> None:
    hold = await clinic.post("/slot-holds", clinic.booking(start=tomorrow_at(10)))
    assert hold.status_code == 201
    response = await _leave(clinic, 0, tomorrow_at(9), tomorrow_at(12))
    assert response.json()["needs_reschedule"] == []
    assert (await clinic.appointment(hold.json()["id"]))["status"] == "expired"


async def test_an_extra_session_adds_bookable_time(clinic: Clinic) -> None:
    evening = await clinic.post(
        f"/practitioners/{clinic.practitioner_ids[0]}/extra-sessions",
        {"facility_id": clinic.facility_id, "starts": tomorrow_at(20).isoformat(), "ends": tomorrow_at(22).isoformat()},
        headers=clinic.desk.admin,
    )
    assert evening.status_code == 201, evening.text
    assert tomorrow_at(21) in await _slot_starts(clinic, 0, tomorrow_at(19), tomorrow_at(23))
    await clinic.booked(start=tomorrow_at(21))
    listed = await clinic.get(f"/practitioners/{clinic.practitioner_ids[0]}/exceptions")
    assert [entry["kind"] for entry in listed.json()] == ["extra"]


async def test_only_administrators_change_schedules_and_bad_ranges_are_422(clinic: Clinic) -> None:
    refused = await clinic.post(
        f"/practitioners/{clinic.practitioner_ids[0]}/leave",
        {"starts": tomorrow_at(9).isoformat(), "ends": tomorrow_at(12).isoformat()},
    )
    assert refused.status_code == 403
    backwards = await _leave(clinic, 0, tomorrow_at(12), tomorrow_at(9))
    assert backwards.status_code == 422
    naive = await clinic.post(
        f"/practitioners/{clinic.practitioner_ids[0]}/leave",
        {"starts": "2030-01-01T09:00:00", "ends": "2030-01-01T12:00:00"},
        headers=clinic.desk.admin,
    )
    assert naive.status_code == 422
    elsewhere = await _leave(clinic, 0, tomorrow_at(9), tomorrow_at(12), facility_id=str(uuid.uuid4()))
    assert elsewhere.status_code == 422 and elsewhere.json()["code"] == "facility_not_of_practitioner"
    too_long = await _leave(clinic, 0, tomorrow_at(9), tomorrow_at(9) + timedelta(days=400))
    assert too_long.status_code == 422


async def test_looking_at_reschedule_options_is_an_audited_read_walled_like_any_other(clinic: Clinic) -> None:
    own = await clinic.booked(start=tomorrow_at(10), patient=0)
    someone_else = await clinic.booked(start=tomorrow_at(12), patient=1)
    options = await clinic.get(f"/appointments/{own['id']}/reschedule-options")
    assert options.status_code == 200, options.text
    assert options.json() and all(offer["practitioner_id"] == clinic.practitioner_ids[0] for offer in options.json())
    patient = await clinic.patient_headers(0)
    hidden = await clinic.get(f"/appointments/{someone_else['id']}/reschedule-options", headers=patient)
    assert hidden.status_code == 404
    async with clinic.api.unit_of_work() as session:
        reads = (
            await session.scalars(select(AuditEvent.resource_id).where(AuditEvent.action == "appointment.read"))
        ).all()
    assert reads == [own["id"]]
