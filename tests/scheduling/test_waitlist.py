"""The waitlist: when a cancellation frees matching time, the first patient in line gets a hold on it at once
and a waitlist.hold_offered event goes to the outbox; a patient busy then is passed over; confirming books the
hold; a hold that runs out frees the time; leaving the list releases a hold it was offered."""

from __future__ import annotations

import time
from typing import Any

import time_machine
from sqlalchemy import select

from sehat.core.events import OutboxEvent
from tests.conftest import Api
from tests.scheduling.conftest import Clinic, open_clinic, tomorrow_at


def _wait_for(clinic: Clinic, patient: int, *, department: bool = False, kind: str = "new") -> dict[str, Any]:
    day = tomorrow_at(0).date().isoformat()
    target = {"department_id": clinic.department_id} if department else {"practitioner_id": clinic.practitioner_ids[0]}
    return {
        "patient_id": clinic.patient_ids[patient],
        "facility_id": clinic.facility_id,
        "appointment_type_id": clinic.type_ids[kind],
        "from_date": day,
        "to_date": day,
        **target,
    }


async def _join(clinic: Clinic, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = await clinic.post("/waitlist", body, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def _cancel(clinic: Clinic, appointment_id: str) -> None:
    response = await clinic.post(f"/appointments/{appointment_id}/cancel", {"code": "patient_request"})
    assert response.status_code == 200, response.text


async def _entries(clinic: Clinic) -> dict[str, dict[str, Any]]:
    response = await clinic.get("/waitlist")
    assert response.status_code == 200, response.text
    return {entry["patient_id"]: entry for entry in response.json()["items"]}


async def _offered_events(clinic: Clinic) -> list[dict[str, Any]]:
    async with clinic.api.unit_of_work() as session:
        rows = await session.scalars(select(OutboxEvent.payload).where(OutboxEvent.kind == "waitlist.hold_offered"))
        return list(rows)


async def test_a_cancellation_gives_the_first_in_line_a_hold_and_emits_an_event(api: Api) -> None:
    clinic = await open_clinic(api, patients=4)
    booked = await clinic.booked(start=tomorrow_at(10), patient=0)
    first = await _join(clinic, _wait_for(clinic, 1))
    second = await _join(clinic, _wait_for(clinic, 2, department=True))
    assert first["status"] == second["status"] == "waiting"
    await _cancel(clinic, booked["id"])

    entries = await _entries(clinic)
    offered = entries[clinic.patient_ids[1]]
    assert offered["status"] == "offered" and offered["hold_id"] is not None
    assert entries[clinic.patient_ids[2]]["status"] == "waiting"
    hold = await clinic.appointment(offered["hold_id"])
    assert (hold["status"], hold["patient_id"], hold["start"]) == ("held", clinic.patient_ids[1], booked["start"])
    [event] = await _offered_events(clinic)
    assert event["appointment_id"] == hold["id"] and event["waitlist_entry_id"] == first["id"]
    assert set(event) == {
        "waitlist_entry_id",
        "appointment_id",
        "patient_id",
        "practitioner_id",
        "facility_id",
        "start",
        "end",
        "hold_expires_at",
    }, "ids and times only: no name or phone travels to the broker"
    # The hold blocks others like a booking; the patient confirms it with their own token.
    taken = await clinic.book(clinic.booking(start=tomorrow_at(10), patient=3))
    assert taken.status_code == 409 and taken.json()["code"] == "slot_taken"
    patient = await clinic.patient_headers(1)
    confirmed = await clinic.post(f"/slot-holds/{hold['id']}/confirm", headers=patient)
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "booked"
    assert (await _entries(clinic))[clinic.patient_ids[1]]["status"] == "booked"


async def test_a_patient_busy_at_the_freed_time_is_passed_over(api: Api) -> None:
    clinic = await open_clinic(api, patients=3, practitioners=2)
    booked = await clinic.booked(start=tomorrow_at(10), patient=0, practitioner=0)
    await clinic.booked(start=tomorrow_at(10), patient=1, practitioner=1)  # patient 1 is busy at 10:00
    await _join(clinic, _wait_for(clinic, 1))
    await _join(clinic, _wait_for(clinic, 2))
    await _cancel(clinic, booked["id"])
    entries = await _entries(clinic)
    assert entries[clinic.patient_ids[1]]["status"] == "waiting"
    assert entries[clinic.patient_ids[2]]["status"] == "offered"


async def test_freed_time_too_short_for_the_waiting_type_offers_nothing(clinic: Clinic) -> None:
    booked = await clinic.booked(start=tomorrow_at(10), patient=0, kind="follow")  # 10 minutes
    await clinic.booked(start=tomorrow_at(10, 10), patient=2)  # 10:10-10:30
    await clinic.booked(start=tomorrow_at(9, 40), patient=2)  # 09:40-10:00
    await _join(clinic, _wait_for(clinic, 1, kind="new"))  # needs 20 minutes
    await _cancel(clinic, booked["id"])
    assert (await _entries(clinic))[clinic.patient_ids[1]]["status"] == "waiting"
    assert await _offered_events(clinic) == []


async def test_a_waitlist_hold_that_runs_out_frees_the_time(clinic: Clinic) -> None:
    booked = await clinic.booked(start=tomorrow_at(10), patient=0)
    await _join(clinic, _wait_for(clinic, 1))
    await _cancel(clinic, booked["id"])
    hold_id = (await _entries(clinic))[clinic.patient_ids[1]]["hold_id"]
    minutes = clinic.api.app.state.settings.waitlist_hold_minutes
    with time_machine.travel(time.time() + (minutes + 1) * 60, tick=False):
        front_office = await clinic.desk.headers("front_office")
        late = await clinic.post(f"/slot-holds/{hold_id}/confirm", headers=front_office)
        assert late.status_code == 409 and late.json()["code"] == "hold_expired"
        again = await clinic.api.client.post(
            "/api/v1/appointments", headers=front_office, json=clinic.booking(start=tomorrow_at(10), patient=2)
        )
        assert again.status_code == 201, again.text


async def test_leaving_the_waitlist_releases_the_offered_hold(clinic: Clinic) -> None:
    booked = await clinic.booked(start=tomorrow_at(10), patient=0)
    entry = await _join(clinic, _wait_for(clinic, 1))
    await _cancel(clinic, booked["id"])
    left = await clinic.api.client.delete(f"/api/v1/waitlist/{entry['id']}", headers=clinic.desk.front_office)
    assert left.status_code == 200, left.text
    assert left.json()["status"] == "withdrawn"
    await clinic.booked(start=tomorrow_at(10), patient=2)


async def test_patients_join_for_themselves_only_and_not_twice(clinic: Clinic) -> None:
    patient = await clinic.patient_headers(0)
    await _join(clinic, _wait_for(clinic, 0), headers=patient)
    twice = await clinic.post("/waitlist", _wait_for(clinic, 0), headers=patient)
    assert twice.status_code == 409 and twice.json()["code"] == "already_waiting"
    for_another = await clinic.post("/waitlist", _wait_for(clinic, 1), headers=patient)
    assert for_another.status_code == 404
    mine = await clinic.get("/waitlist", headers=patient)
    assert [entry["patient_id"] for entry in mine.json()["items"]] == [clinic.patient_ids[0]]


async def test_bad_waitlist_input_is_422(clinic: Clinic) -> None:
    both = {**_wait_for(clinic, 0), "department_id": clinic.department_id}
    neither = {key: value for key, value in _wait_for(clinic, 0).items() if key != "practitioner_id"}
    backwards = {**_wait_for(clinic, 0), "from_date": "2030-01-02", "to_date": "2030-01-01"}
    past = {**_wait_for(clinic, 0), "from_date": "2020-01-01", "to_date": "2020-01-02"}
    for body in (both, neither, backwards, past):
        response = await clinic.post("/waitlist", body)
        assert response.status_code == 422, response.text
