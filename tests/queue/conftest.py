"""An outpatient department for the queue tests, set up through the API: the scheduling tests' clinic (a doctor
with hours at a Karachi facility, appointment types, registered patients), tomorrow's queue with two rooms, and
the clock stopped at 09:00 tomorrow, facility time, so that estimates can be checked to the second."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pytest
import time_machine
import uvicorn

from tests.conftest import Api
from tests.scheduling.conftest import KARACHI, Clinic, open_clinic, tomorrow_at

OPENS = (9, 0)


@dataclass
class Opd:
    clinic: Clinic
    clock: Any
    queue: dict[str, Any] = field(default_factory=dict)
    front_office: dict[str, str] = field(default_factory=dict)
    doctor: dict[str, str] = field(default_factory=dict)
    nurse: dict[str, str] = field(default_factory=dict)
    admin: dict[str, str] = field(default_factory=dict)
    prepared: Any = None
    # When the clock was stopped (the queue's opening), or None on the real clock.
    opening: datetime | None = None

    @property
    def api(self) -> Api:
        return self.clinic.api

    @property
    def queue_id(self) -> str:
        return str(self.queue["id"])

    def room(self, number: int = 0) -> str:
        return str(self.queue["rooms"][number]["id"])

    async def post(self, path: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> Any:
        return await self.api.client.post(f"/api/v1{path}", headers=headers or self.front_office, json=body)

    async def get(self, path: str, headers: dict[str, str] | None = None, **params: Any) -> Any:
        return await self.api.client.get(f"/api/v1{path}", headers=headers or self.front_office, params=params)

    async def open_queue(self, headers: dict[str, str] | None = None, **overrides: Any) -> Any:
        body = {
            "facility_id": self.clinic.facility_id,
            "department_id": self.clinic.department_id,
            "practitioner_id": self.clinic.practitioner_ids[0],
            "day": tomorrow_at(0).date().isoformat(),
            "name": "General Medicine",
            "prefix": "GM",
            "rooms": ["Room 1"],
            "default_minutes": 10,
            **overrides,
        }
        return await self.post("/queues", body, headers=headers)

    async def issue(self, patient: int = 0, queue_id: str | None = None, **body: Any) -> Any:
        if "appointment_id" not in body:
            body["patient_id"] = self.clinic.patient_ids[patient]
        return await self.post(f"/queues/{queue_id or self.queue_id}/tokens", body)

    async def issued(self, patient: int = 0, **body: Any) -> dict[str, Any]:
        response = await self.issue(patient, **body)
        assert response.status_code == 201, response.text
        return dict(response.json())

    async def call_next(self, room: int = 0, queue_id: str | None = None) -> Any:
        return await self.post(
            f"/queues/{queue_id or self.queue_id}/call-next", {"room_id": self.room(room)}, headers=self.doctor
        )

    async def act(self, token_id: str, action: str, body: dict[str, Any] | None = None) -> Any:
        return await self.post(f"/tokens/{token_id}/{action}", body, headers=self.doctor)

    async def token(self, token_id: str) -> dict[str, Any]:
        response = await self.get(f"/tokens/{token_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def waiting(self) -> list[dict[str, Any]]:
        """The waiting tokens in call order, with their estimates."""
        response = await self.get(f"/queues/{self.queue_id}/tokens", status="waiting", limit=100)
        assert response.status_code == 200, response.text
        return sorted(response.json()["items"], key=lambda token: token["position"])

    async def sign_in_again(self) -> None:
        """Staff tokens live 15 minutes: after the clock moves further, sign in anew."""
        self.front_office = await self.api.headers_for(self.clinic.desk.tenant.emails["front_office"])
        self.doctor = await self.clinic.desk.headers("doctor")
        self.nurse = await self.clinic.desk.headers("nurse")
        self.admin = await self.api.headers_for(self.clinic.desk.tenant.admin_email)

    async def enrol_board(self, **body: Any) -> dict[str, Any]:
        response = await self.post(
            "/boards", {"facility_id": self.clinic.facility_id, "name": "OPD lobby", **body}, headers=self.admin
        )
        assert response.status_code == 201, response.text
        return dict(response.json())


def at_opening() -> datetime:
    return tomorrow_at(*OPENS)


async def open_opd(
    api: Api,
    clock: Any | None,
    *,
    patients: int = 6,
    rooms: int = 1,
    before_opening: Callable[[Clinic], Awaitable[Any]] | None = None,
) -> Opd:
    """With a ``clock``: tomorrow's queue, the clock stopped at its opening (``before_opening`` runs on the
    real clock first: booking tomorrow's appointments, say). Without: today's, in real time (for servers in
    other processes, whose clock a test cannot move)."""
    clinic = await open_clinic(api, patients=patients)
    opd = Opd(clinic, clock)
    if before_opening is not None:
        opd.prepared = await before_opening(clinic)
    day = datetime.now(KARACHI).date()
    if clock is not None:
        opening = at_opening()  # read before the move: "tomorrow" is relative to the clock
        clock.move_to(opening, tick=False)
        day, opd.opening = opening.date(), opening
    await opd.sign_in_again()
    response = await opd.open_queue(rooms=[f"Room {number + 1}" for number in range(rooms)], day=day.isoformat())
    assert response.status_code == 201, response.text
    opd.queue = response.json()
    return opd


@asynccontextmanager
async def serving(app: Any) -> AsyncIterator[str]:
    """The (already started) app on a real loopback port, for WebSocket clients: its host:port."""
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="off", log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture
def clock() -> Iterator[Any]:
    """Real time until a test moves it; then stopped where it was put."""
    with time_machine.travel(datetime.now().astimezone(), tick=True) as traveller:
        yield traveller


@pytest.fixture
async def opd(api: Api, clock: Any) -> Opd:
    return await open_opd(api, clock)
