"""Slot search: the practitioner's hours on their grid, minus what is booked, within the asked range; every
slot offered can be booked."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tests.conftest import Api
from tests.scheduling.conftest import Clinic, open_clinic, tomorrow_at


async def _slots(clinic: Clinic, start: datetime, end: datetime, kind: str = "new") -> Any:
    return await clinic.api.client.get(
        "/api/v1/slots",
        headers=clinic.desk.front_office,
        params={
            "practitioner_id": clinic.practitioner_ids[0],
            "facility_id": clinic.facility_id,
            "appointment_type_id": clinic.type_ids[kind],
            "from": start.isoformat(),
            "to": end.isoformat(),
        },
    )


async def test_free_slots_follow_the_hours_and_leave_out_booked_time(clinic: Clinic) -> None:
    start, end = tomorrow_at(9), tomorrow_at(11)
    response = await _slots(clinic, start, end)
    assert response.status_code == 200, response.text
    starts = [datetime.fromisoformat(slot["start"]) for slot in response.json()]
    # 20-minute visits on a 10-minute grid, ending by 11:00: 09:00, 09:10, ... 10:40.
    assert starts == [start + timedelta(minutes=10 * step) for step in range(11)]
    assert (await clinic.book(clinic.booking(start=tomorrow_at(10)))).status_code == 201
    after = [datetime.fromisoformat(slot["start"]) for slot in (await _slots(clinic, start, end)).json()]
    # 09:50 and 10:10 would overlap the 10:00-10:20 booking; 10:00 itself is taken.
    assert after == [moment for moment in starts if not tomorrow_at(9, 50) <= moment <= tomorrow_at(10, 10)]


async def test_every_slot_offered_can_be_booked(clinic: Clinic) -> None:
    slots = (await _slots(clinic, tomorrow_at(15), tomorrow_at(16), kind="follow")).json()
    assert len(slots) == 6
    for number, slot in enumerate(slots[:3]):
        body = clinic.booking(start=datetime.fromisoformat(slot["start"]), patient=number, kind="follow")
        assert (await clinic.book(body)).status_code == 201


async def test_a_search_over_31_days_or_without_offsets_is_refused_with_422(clinic: Clinic) -> None:
    too_long = await _slots(clinic, tomorrow_at(9), tomorrow_at(9) + timedelta(days=32))
    assert too_long.status_code == 422
    naive = await clinic.api.client.get(
        "/api/v1/slots",
        headers=clinic.desk.front_office,
        params={
            "practitioner_id": clinic.practitioner_ids[0],
            "facility_id": clinic.facility_id,
            "appointment_type_id": clinic.type_ids["new"],
            "from": tomorrow_at(9).replace(tzinfo=None).isoformat(),
            "to": tomorrow_at(11).isoformat(),
        },
    )
    assert naive.status_code == 422
    assert "query.from" in [error["field"] for error in naive.json()["errors"]]


async def test_a_department_or_specialty_search_merges_its_practitioners_slots_in_time_order(api: Api) -> None:
    clinic = await open_clinic(api, practitioners=3, specialties=("cardiology", "cardiology", "dermatology"))
    await clinic.booked(start=tomorrow_at(9), practitioner=0)
    window = {"facility_id": clinic.facility_id, "appointment_type_id": clinic.type_ids["new"]}
    window |= {"from": tomorrow_at(9).isoformat(), "to": tomorrow_at(9, 30).isoformat()}
    cardiology = await clinic.get("/slots", specialty="cardiology", **window)
    assert cardiology.status_code == 200, cardiology.text
    found = [(slot["practitioner_id"], datetime.fromisoformat(slot["start"])) for slot in cardiology.json()]
    # The first cardiologist is booked 09:00-09:20; the second is free; the dermatologist is not asked.
    assert found == [
        (clinic.practitioner_ids[1], tomorrow_at(9)),
        (clinic.practitioner_ids[1], tomorrow_at(9, 10)),
    ]
    department = await clinic.get("/slots", department_id=clinic.department_id, **window)
    assert {slot["practitioner_id"] for slot in department.json()} == set(clinic.practitioner_ids[1:])
    both = await clinic.get("/slots", specialty="cardiology", department_id=clinic.department_id, **window)
    assert both.status_code == 422
    unknown = await clinic.get("/slots", department_id="00000000-0000-4000-8000-000000000000", **window)
    assert unknown.status_code == 404


async def test_a_practitioner_who_lists_types_is_searched_and_booked_for_those_only(clinic: Clinic) -> None:
    admin = clinic.desk.admin
    user = await clinic.api.client.post(
        "/api/v1/users",
        headers=admin,
        json={
            "email": "surgeon@clinic.test",
            "full_name": "Surgeon",
            "roles": ["doctor"],
            "facility_ids": [clinic.facility_id],
            "password": "correct horse battery staple",
        },
    )
    assert user.status_code == 201, user.text
    created = await clinic.post(
        "/practitioners",
        {
            "user_id": user.json()["id"],
            "display_name": "Dr. Surgeon",
            "specialty": "surgery",
            "facility_ids": [clinic.facility_id],
            "appointment_type_ids": [clinic.type_ids["procedure"]],
        },
        headers=admin,
    )
    assert created.status_code == 201, created.text
    surgeon = created.json()
    assert surgeon["appointment_type_ids"] == [clinic.type_ids["procedure"]]
    hours = await clinic.post(
        f"/practitioners/{surgeon['id']}/availability",
        {
            "facility_id": clinic.facility_id,
            "weekday": tomorrow_at(9).weekday(),
            "starts": "08:00",
            "ends": "12:00",
            "slot_minutes": 20,
        },
        headers=admin,
    )
    assert hours.status_code == 201, hours.text
    window = {"from": tomorrow_at(8).isoformat(), "to": tomorrow_at(12).isoformat(), "facility_id": clinic.facility_id}
    offered = await clinic.get(
        "/slots", practitioner_id=surgeon["id"], appointment_type_id=clinic.type_ids["procedure"], **window
    )
    assert offered.status_code == 200 and len(offered.json()) > 0
    not_offered = await clinic.get(
        "/slots", practitioner_id=surgeon["id"], appointment_type_id=clinic.type_ids["new"], **window
    )
    assert not_offered.status_code == 422 and not_offered.json()["code"] == "appointment_type_not_offered"
    body = clinic.booking(start=tomorrow_at(9), kind="new") | {"practitioner_id": surgeon["id"]}
    refused = await clinic.book(body)
    assert refused.status_code == 422 and refused.json()["code"] == "appointment_type_not_offered"
    by_specialty = await clinic.get("/slots", specialty="surgery", appointment_type_id=clinic.type_ids["new"], **window)
    assert by_specialty.json() == []


async def test_practitioners_are_listed_by_facility_department_or_specialty(api: Api) -> None:
    clinic = await open_clinic(api, practitioners=3, specialties=("cardiology", "cardiology", "dermatology"))
    everyone = await clinic.get("/practitioners")
    assert everyone.status_code == 200, everyone.text
    assert sorted(item["id"] for item in everyone.json()["items"]) == sorted(clinic.practitioner_ids)
    assert all(item["facility_ids"] == [clinic.facility_id] for item in everyone.json()["items"])
    cardiology = await clinic.get("/practitioners", specialty="cardiology")
    assert sorted(item["id"] for item in cardiology.json()["items"]) == sorted(clinic.practitioner_ids[:2])
    in_department = await clinic.get("/practitioners", department_id=clinic.department_id, limit=2)
    assert len(in_department.json()["items"]) == 2 and in_department.json()["next_cursor"]
    elsewhere = await clinic.get("/practitioners", facility_id=str(clinic.desk.tenant.facility_ids[1]))
    assert elsewhere.json()["items"] == []
    patient = await clinic.patient_headers(0)
    assert (await clinic.get("/practitioners", headers=patient)).status_code == 200
