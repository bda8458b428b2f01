"""Slot search: the practitioner's hours on their grid, minus what is booked, within the asked range; every
slot offered can be booked."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from tests.scheduling.conftest import Clinic, tomorrow_at


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
