"""No double booking, under a storm of clients, on both backends: the database refuses every overlap.

Each storm records every request's start, end and outcome, as a Jepsen-style history: afterwards every 201
has its row, no row exists without a 201, and no two active appointments of one practitioner or one patient
overlap (checked in SQL, not through the API)."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.orm import aliased

from sehat.scheduling.models import ACTIVE_STATUSES, Appointment
from tests.conftest import Api
from tests.scheduling.conftest import Clinic, open_clinic, tomorrow_at


@dataclass
class Outcome:
    started: float
    ended: float
    status: int
    body: dict[str, Any]


async def _timed(clinic: Clinic, body: dict[str, Any], **headers: str) -> Outcome:
    started = time.monotonic()
    response = await clinic.book(body, **headers)
    return Outcome(started, time.monotonic(), response.status_code, response.json())


async def _active_rows(api: Api) -> list[Appointment]:
    async with api.unit_of_work() as session:
        return list((await session.scalars(select(Appointment).where(Appointment.status.in_(ACTIVE_STATUSES)))).all())


async def _overlaps(api: Api, column: str) -> list[tuple[uuid.UUID, uuid.UUID]]:
    first, second = aliased(Appointment), aliased(Appointment)
    async with api.unit_of_work() as session:
        rows = await session.execute(
            select(first.id, second.id).where(
                and_(
                    getattr(first, column) == getattr(second, column),
                    first.id < second.id,
                    first.status.in_(ACTIVE_STATUSES),
                    second.status.in_(ACTIVE_STATUSES),
                    first.start_at < second.end_at,
                    second.start_at < first.end_at,
                )
            )
        )
        return [(a, b) for a, b in rows]


def _check_history(outcomes: list[Outcome], rows: list[Appointment]) -> None:
    created = {outcome.body["id"] for outcome in outcomes if outcome.status == 201}
    assert {str(row.id) for row in rows} == created
    assert all(outcome.status in (201, 409) for outcome in outcomes), {o.status for o in outcomes}


# Two hundred clients on one in-process server share its pool of 20 connections: a client may queue longer than
# the 5 s a production server would wait before answering 503, and that is not what these tests are about.
STORM_SETTINGS = {"database_pool_timeout_seconds": 120}


async def test_two_hundred_clients_asking_for_one_slot_get_one_201_and_199_409(start_api: Any) -> None:
    async with start_api(**STORM_SETTINGS) as api:
        await _two_hundred_clients_one_slot(api)


async def _two_hundred_clients_one_slot(api: Api) -> None:
    clinic = await open_clinic(api, patients=200)
    start = tomorrow_at(9)
    outcomes = await asyncio.gather(
        *(_timed(clinic, clinic.booking(start=start, patient=number)) for number in range(200))
    )
    statuses = sorted(outcome.status for outcome in outcomes)
    assert statuses == [201] + [409] * 199
    # Taken by the winner; or, for a loser PostgreSQL aborted twice while the winner was still deciding,
    # contended: either way a refusal, and never a second row.
    assert {outcome.body["code"] for outcome in outcomes if outcome.status == 409} <= {"slot_taken", "slot_contended"}
    rows = await _active_rows(api)
    assert len(rows) == 1
    _check_history(outcomes, rows)


async def test_a_random_storm_of_overlapping_bookings_leaves_no_overlap_for_any_practitioner_or_patient(
    start_api: Any,
) -> None:
    async with start_api(**STORM_SETTINGS) as api:
        await _random_storm(api)


async def _random_storm(api: Api) -> None:
    clinic = await open_clinic(api, patients=12, practitioners=3)
    rng = random.Random(20261121)
    bodies = [
        clinic.booking(
            start=tomorrow_at(10) + timedelta(minutes=10 * rng.randrange(0, 18)),
            patient=rng.randrange(12),
            practitioner=rng.randrange(3),
            kind=rng.choice(("new", "follow", "procedure")),
        )
        for _ in range(240)
    ]
    outcomes = await asyncio.gather(*(_timed(clinic, body) for body in bodies))
    rows = await _active_rows(api)
    assert len(rows) > 10  # the storm really booked things
    assert sum(outcome.status == 409 for outcome in outcomes) > 50  # and really collided
    assert await _overlaps(api, "practitioner_id") == []
    assert await _overlaps(api, "patient_id") == []
    _check_history(outcomes, rows)


async def test_twenty_concurrent_requests_sharing_one_idempotency_key_create_one_appointment(
    clinic: Clinic,
) -> None:
    body = clinic.booking(start=tomorrow_at(14))
    key = f"retry-{uuid.uuid4().hex}"
    outcomes = await asyncio.gather(*(_timed(clinic, body, **{"Idempotency-Key": key}) for _ in range(20)))
    assert {outcome.status for outcome in outcomes} == {201}
    assert len({outcome.body["id"] for outcome in outcomes}) == 1
    assert len(await _active_rows(clinic.api)) == 1
    # The same key with another body is refused, and books nothing.
    other = clinic.booking(start=tomorrow_at(15))
    reused = await clinic.book(other, **{"Idempotency-Key": key})
    assert reused.status_code == 422 and reused.json()["code"] == "idempotency_key_reused"
    assert len(await _active_rows(clinic.api)) == 1


async def test_a_refused_booking_leaves_no_idempotency_record_to_replay(clinic: Clinic) -> None:
    start = tomorrow_at(16)
    assert (await clinic.book(clinic.booking(start=start, patient=1))).status_code == 201
    key = f"retry-{uuid.uuid4().hex}"
    body = clinic.booking(start=start, patient=0)
    assert (await clinic.book(body, **{"Idempotency-Key": key})).status_code == 409
    # The slot frees up (the other booking is cancelled by hand here); the retry now really books.
    async with clinic.api.unit_of_work() as session:
        taken = await session.scalar(
            select(Appointment).where(Appointment.patient_id == uuid.UUID(clinic.patient_ids[1]))
        )
        taken.status = "cancelled"
    retried = await clinic.book(body, **{"Idempotency-Key": key})
    assert retried.status_code == 201, retried.text


async def test_a_storm_of_reschedules_and_bookings_into_one_slot_moves_exactly_one_and_loses_none(
    start_api: Any,
) -> None:
    async with start_api(**STORM_SETTINGS) as api:
        await _reschedule_storm(api)


async def _reschedule_storm(api: Api) -> None:
    clinic = await open_clinic(api, patients=60)
    originals = {}
    for number in range(40):  # forty appointments, 08:00-14:40 at ten-minute steps
        booked = await clinic.booked(
            start=tomorrow_at(8) + timedelta(minutes=10 * number), patient=number, kind="follow"
        )
        originals[booked["id"]] = booked["start"]
    target = tomorrow_at(18)

    async def reschedule(appointment_id: str) -> Outcome:
        started = time.monotonic()
        response = await clinic.post(f"/appointments/{appointment_id}/reschedule", {"start": target.isoformat()})
        return Outcome(started, time.monotonic(), response.status_code, response.json())

    moves = [reschedule(appointment_id) for appointment_id in originals]
    bookings = [_timed(clinic, clinic.booking(start=target, patient=number, kind="follow")) for number in range(40, 60)]
    outcomes = await asyncio.gather(*moves, *bookings)
    assert all(outcome.status in (200, 201, 409) for outcome in outcomes), {o.status for o in outcomes}
    winners = [outcome for outcome in outcomes if outcome.status in (200, 201)]
    assert len(winners) == 1
    rows = await _active_rows(api)
    at_target = [row for row in rows if row.start_at == target]
    assert [str(row.id) for row in at_target] == [winners[0].body["id"]]
    # Every appointment that lost is still booked at its own time; none was lost or duplicated.
    for row in rows:
        if str(row.id) in originals and row.start_at != target:
            assert row.start_at.isoformat().replace("+00:00", "Z") == originals[str(row.id)]
    assert len(rows) == 40 + (1 if winners[0].status == 201 else 0)
    assert await _overlaps(api, "practitioner_id") == []
    assert await _overlaps(api, "patient_id") == []


async def test_patients_and_front_office_racing_for_the_same_slots_on_both_booking_paths_never_double_book(
    start_api: Any,
) -> None:
    """On PostgreSQL a patient's own booking takes the portable path and the front office's the hot path; the
    two take the same locks in the same order and meet the same constraints."""
    async with start_api(**STORM_SETTINGS) as api:
        await _mixed_paths_storm(api)


async def _mixed_paths_storm(api: Api) -> None:
    clinic = await open_clinic(api, patients=40)
    patients = [await clinic.patient_headers(number) for number in range(20)]
    slots = [tomorrow_at(9) + timedelta(minutes=10 * step) for step in range(4)]

    async def by_patient(number: int) -> Outcome:
        body = clinic.booking(start=slots[number % 4], patient=number)
        started = time.monotonic()
        response = await api.client.post("/api/v1/appointments", headers=patients[number], json=body)
        return Outcome(started, time.monotonic(), response.status_code, response.json())

    desk = [_timed(clinic, clinic.booking(start=slots[number % 4], patient=number)) for number in range(20, 40)]
    outcomes = await asyncio.gather(*(by_patient(number) for number in range(20)), *desk)
    rows = await _active_rows(api)
    # 20-minute visits on a 10-minute grid: of the four overlapping starts, at most two fit side by side.
    assert 1 <= len(rows) <= 2
    assert sum(outcome.status == 409 for outcome in outcomes) == 40 - len(rows)
    assert await _overlaps(api, "practitioner_id") == []
    assert await _overlaps(api, "patient_id") == []
    _check_history(outcomes, rows)
