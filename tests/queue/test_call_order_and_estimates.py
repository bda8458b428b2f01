"""Who is called next and when everyone is expected: emergency, then priority, then booked patients by
appointment time, then walk-ins by arrival; estimates move when a delay is reported and while a consultation
runs long, learn the practitioner's pace, and come out the same from a copy rebuilt from the database."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sehat.queue.live import LiveQueues
from tests.conftest import Api
from tests.queue.conftest import Opd, open_opd
from tests.scheduling.conftest import Clinic, tomorrow_at

MINUTE = 60


async def _estimates(opd: Opd) -> list[float]:
    """Each waiting token's expected call time, in minutes after the queue opened."""
    opening = opd.opening
    assert opening is not None
    return [
        (datetime.fromisoformat(token["estimated_call_at"]) - opening).total_seconds() / MINUTE
        for token in await opd.waiting()
    ]


async def test_the_call_order_is_emergency_priority_booked_by_appointment_time_then_walk_ins_by_arrival(
    api: Api, clock: Any
) -> None:
    async def book(clinic: Clinic) -> dict[str, str]:
        later = await clinic.booked(start=tomorrow_at(10), patient=1)
        sooner = await clinic.booked(start=tomorrow_at(9, 30), patient=2)
        return {"later": later["id"], "sooner": sooner["id"]}

    opd = await open_opd(api, clock, before_opening=book)
    for appointment in opd.prepared.values():
        checked_in = await opd.post(f"/appointments/{appointment}/check-in", headers=opd.nurse)
        assert checked_in.status_code == 200, checked_in.text
    arrivals: dict[str, dict[str, Any]] = {}
    arrivals["walk-in first"] = await opd.issued(0)
    clock.shift(MINUTE)
    arrivals["booked 10:00"] = await opd.issued(appointment_id=opd.prepared["later"])
    clock.shift(MINUTE)
    arrivals["booked 09:30"] = await opd.issued(appointment_id=opd.prepared["sooner"])
    clock.shift(MINUTE)
    arrivals["priority"] = await opd.issued(3, priority="priority")
    clock.shift(MINUTE)
    arrivals["emergency"] = await opd.issued(4, priority="emergency")
    clock.shift(MINUTE)
    arrivals["walk-in last"] = await opd.issued(5)
    assert arrivals["booked 10:00"]["source"] == "appointment" and arrivals["emergency"]["source"] == "emergency"
    expected = ["emergency", "priority", "booked 09:30", "booked 10:00", "walk-in first", "walk-in last"]
    by_id = {token["id"]: name for name, token in arrivals.items()}
    assert [by_id[token["id"]] for token in await opd.waiting()] == expected
    called = []
    for _ in expected:
        token = (await opd.call_next()).json()
        called.append(by_id[token["id"]])
        assert (await opd.act(token["id"], "complete")).status_code == 200
    assert called == expected


async def test_estimates_move_with_a_reported_delay_and_with_a_consultation_that_runs_long(opd: Opd) -> None:
    for patient in range(3):
        await opd.issued(patient)
    assert await _estimates(opd) == [0, 10, 20]
    delayed = await opd.post(f"/queues/{opd.queue_id}/delay", {"minutes": 20}, headers=opd.doctor)
    assert delayed.status_code == 200
    assert await _estimates(opd) == [20, 30, 40]
    await opd.post(f"/queues/{opd.queue_id}/delay", {"minutes": 0}, headers=opd.doctor)
    first = (await opd.call_next()).json()
    await opd.act(first["id"], "start")
    assert await _estimates(opd) == [10, 20]
    # Planned for 10 minutes, still going at 25: the next patient waits on, and keeps waiting as the clock runs.
    opd.clock.shift(25 * MINUTE)
    await opd.sign_in_again()
    assert await _estimates(opd) == [27, 37]
    opd.clock.shift(5 * MINUTE)
    assert await _estimates(opd) == [32, 42]
    # It took 30 minutes for a planned 10: from now on every planned length is stretched by that pace.
    await opd.act(first["id"], "complete")
    assert await _estimates(opd) == [30, 60]


async def test_a_copy_rebuilt_from_the_database_gives_the_same_order_and_estimates(opd: Opd) -> None:
    for patient in range(4):
        await opd.issued(patient, **({"priority": "priority"} if patient == 2 else {}))
        opd.clock.shift(MINUTE)
    first = (await opd.call_next()).json()
    opd.clock.shift(17 * MINUTE)
    await opd.sign_in_again()
    await opd.act(first["id"], "complete")
    await opd.call_next()
    await opd.post(f"/queues/{opd.queue_id}/delay", {"minutes": 5}, headers=opd.doctor)
    before = [(token["id"], token["estimated_call_at"]) for token in await opd.waiting()]
    # A server that starts now knows nothing in memory: it reads the queue back from its rows.
    opd.api.app.state.queues.live = LiveQueues()
    after = [(token["id"], token["estimated_call_at"]) for token in await opd.waiting()]
    assert after == before and len(before) == 2
