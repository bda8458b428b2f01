"""Holds: a held slot blocks everyone else exactly like a booking, confirming turns it into one, and a hold
that runs out frees its time (the clock is moved with time_machine)."""

from __future__ import annotations

import time
from typing import Any

import time_machine

from tests.scheduling.conftest import Clinic, tomorrow_at


async def _hold(clinic: Clinic, body: dict[str, Any]) -> Any:
    return await clinic.api.client.post("/api/v1/slot-holds", headers=clinic.desk.front_office, json=body)


async def _confirm(clinic: Clinic, hold_id: str) -> Any:
    return await clinic.api.client.post(f"/api/v1/slot-holds/{hold_id}/confirm", headers=clinic.desk.front_office)


async def test_a_hold_blocks_others_and_confirming_books_it(clinic: Clinic) -> None:
    start = tomorrow_at(10)
    hold = await _hold(clinic, clinic.booking(start=start, patient=0))
    assert hold.status_code == 201, hold.text
    assert hold.json()["status"] == "held" and hold.json()["hold_expires_at"] is not None
    taken = await clinic.book(clinic.booking(start=start, patient=1))
    assert taken.status_code == 409 and taken.json()["code"] == "slot_taken"
    confirmed = await _confirm(clinic, hold.json()["id"])
    assert confirmed.status_code == 200, confirmed.text
    assert confirmed.json()["status"] == "booked" and confirmed.json()["hold_expires_at"] is None
    assert (await _confirm(clinic, hold.json()["id"])).json()["code"] == "not_a_hold"


async def test_an_expired_hold_frees_its_time_and_cannot_be_confirmed(clinic: Clinic) -> None:
    start = tomorrow_at(12)
    hold = await _hold(clinic, clinic.booking(start=start, patient=0))
    assert hold.status_code == 201
    with time_machine.travel(time.time() + 6 * 60, tick=False):
        late = await _confirm(clinic, hold.json()["id"])
        assert late.status_code == 409 and late.json()["code"] == "hold_expired"
        other = await clinic.book(clinic.booking(start=start, patient=1))
        assert other.status_code == 201, other.text
