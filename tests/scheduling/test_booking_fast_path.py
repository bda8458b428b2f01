"""On PostgreSQL a front-office booking is decided by the hot path (booking_pg) without the portable path, and
leaves exactly what the portable path leaves: the row, its history row and its audit entry; refusals it cannot
name itself (an unknown id) still reach the portable path's precise answer."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from sehat.core.audit import AuditEvent
from sehat.scheduling import service
from sehat.scheduling.models import Appointment, AppointmentHistory
from tests.scheduling.conftest import Clinic, tomorrow_at


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
