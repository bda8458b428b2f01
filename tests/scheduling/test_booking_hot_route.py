"""POST /api/v1/appointments is served ahead of FastAPI's routing (``scheduling.api.HOT_ROUTES``); every request
it declines gets the FastAPI route's own answer, refusals are audited once, and the documented contract is
the route's."""

from __future__ import annotations

from sqlalchemy import func, select

from sehat.core.audit import AuditEvent
from sehat.scheduling.models import Appointment
from tests.scheduling.conftest import Clinic, tomorrow_at

PATH = "/api/v1/appointments"


async def _denials(clinic: Clinic) -> int:
    async with clinic.api.unit_of_work() as session:
        return int(await session.scalar(select(func.count()).where(AuditEvent.action == "access.denied")) or 0)


async def _appointments(clinic: Clinic) -> int:
    async with clinic.api.unit_of_work() as session:
        return int(await session.scalar(select(func.count()).select_from(Appointment)) or 0)


async def test_a_booking_and_its_replay_are_the_routes_answers(clinic: Clinic) -> None:
    body = clinic.booking(start=tomorrow_at(10))
    first = await clinic.book(body, **{"Idempotency-Key": "hot-route-0001"})
    again = await clinic.book(body, **{"Idempotency-Key": "hot-route-0001"})
    assert first.status_code == again.status_code == 201
    assert first.headers["content-type"] == "application/json"
    assert first.json() == again.json() == await clinic.appointment(first.json()["id"])
    assert first.headers["x-content-type-options"] == "nosniff" and first.headers["x-request-id"]


async def test_a_missing_or_refused_token_is_refused_once_and_audited_once(clinic: Clinic) -> None:
    body = clinic.booking(start=tomorrow_at(10))
    before = await _denials(clinic)
    missing = await clinic.api.client.post(PATH, json=body)
    forged = await clinic.api.client.post(PATH, json=body, headers={"Authorization": "Bearer not.a.token"})
    for response in (missing, forged):
        assert response.status_code == 401 and response.json()["code"] == "invalid_token"
        assert response.headers["content-type"] == "application/problem+json"
    assert await _denials(clinic) == before + 2
    assert await _appointments(clinic) == 0


async def test_bodies_and_headers_it_does_not_take_get_the_routes_422(clinic: Clinic) -> None:
    headers = clinic.desk.front_office
    malformed = await clinic.api.client.post(
        PATH, content=b'{"start": ', headers={**headers, "Content-Type": "application/json"}
    )
    assert malformed.status_code == 422
    missing_field = clinic.booking(start=tomorrow_at(10))
    del missing_field["patient_id"]
    incomplete = await clinic.api.client.post(PATH, json=missing_field, headers=headers)
    assert incomplete.status_code == 422
    assert [error["field"] for error in incomplete.json()["errors"]] == ["patient_id"]
    short_key = await clinic.book(clinic.booking(start=tomorrow_at(10)), **{"Idempotency-Key": "short"})
    assert short_key.status_code == 422
    assert [error["field"] for error in short_key.json()["errors"]] == ["header.idempotency-key"]
    as_text = await clinic.api.client.post(
        PATH, content=b"patient=1", headers={**headers, "Content-Type": "text/plain"}
    )
    assert as_text.status_code == 422
    assert await _appointments(clinic) == 0
