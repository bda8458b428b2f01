"""Lobby boards over a real WebSocket: a screen with its board's display key gets the board's state at once and
again after every change; any other key, no key or a foreign origin is closed with 1008; a display key opens
nothing else; and nothing a board is sent names or identifies a patient."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import Api
from tests.patients.conftest import patient_body
from tests.queue.conftest import Opd, open_opd, serving

WAIT = 10.0
MARKER = "Zzqmarker"


class Screen:
    """A board's socket as a screen sees it: each message's sequence and state."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.texts: list[str] = []

    async def next(self) -> tuple[int, dict[str, Any]]:
        text = await asyncio.wait_for(self.socket.recv(), WAIT)
        assert isinstance(text, str)
        self.texts.append(text)
        message = json.loads(text)
        return message["sequence"], message["state"]

    async def until(self, condition: Any) -> dict[str, Any]:
        """The first state (from now) that meets ``condition``."""
        while True:
            _, state = await self.next()
            if condition(state):
                return state

    async def silent(self, seconds: float = 0.3) -> bool:
        try:
            await asyncio.wait_for(self.socket.recv(), seconds)
        except TimeoutError:
            return True
        return False


@asynccontextmanager
async def screen(
    host: str, board: dict[str, Any], *, key: str | None = None, seen: int | None = None, **options: Any
) -> AsyncIterator[Screen]:
    async with connect(f"ws://{host}/ws/boards/{board['id']}", open_timeout=WAIT, **options) as socket:
        await socket.send(json.dumps({"key": board["display_key"] if key is None else key, "seen": seen}))
        yield Screen(socket)


async def closed_with(socket: ClientConnection) -> int | None:
    try:
        await asyncio.wait_for(socket.recv(), WAIT)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd is not None else None
    return None


def rooms(state: dict[str, Any]) -> dict[str, str | None]:
    return {room["room"]: room["token"] for queue in state["queues"] for room in queue["rooms"]}


@pytest.fixture
async def opd(api: Api, clock: Any) -> Opd:
    return await open_opd(api, clock, rooms=2)


async def test_a_board_socket_gets_the_current_state_at_once_and_the_new_state_after_call_next(opd: Opd) -> None:
    board = await opd.enrol_board()
    first = await opd.issued(0)
    await opd.issued(1)
    async with serving(opd.api.app) as host, screen(host, board) as lobby:
        sequence, state = await lobby.next()
        assert [token["token"] for token in state["queues"][0]["next"]] == ["GM-001", "GM-002"]
        assert rooms(state) == {"Room 1": None, "Room 2": None}
        called = await opd.call_next(room=1)
        assert called.status_code == 200 and called.json()["id"] == first["id"]
        after, state = await lobby.next()
        assert after == sequence + 1
        assert rooms(state) == {"Room 1": None, "Room 2": "GM-001"}
        assert [token["token"] for token in state["queues"][0]["next"]] == ["GM-002"]


async def test_a_screen_reconnecting_with_the_current_sequence_waits_and_one_behind_gets_the_state_at_once(
    opd: Opd,
) -> None:
    board = await opd.enrol_board()
    await opd.issued(0)
    async with serving(opd.api.app) as host:
        async with screen(host, board) as lobby:
            sequence, _ = await lobby.next()
        async with screen(host, board, seen=sequence) as lobby:
            assert await lobby.silent()
            await opd.issued(1)
            assert (await lobby.next())[0] == sequence + 1
        async with screen(host, board, seen=sequence) as lobby:
            again, state = await lobby.next()
            assert again == sequence + 1 and state["queues"][0]["waiting_count"] == 2


async def test_a_socket_without_its_boards_key_or_from_another_origin_is_closed_with_1008(opd: Opd) -> None:
    board = await opd.enrol_board()
    other = await opd.enrol_board(name="Second lobby")
    async with serving(opd.api.app) as host:
        wrong_keys = [
            other["display_key"],  # a real key, of another board
            board["display_key"][:-4] + "AAAA",
            "not-a-key",
            "",
        ]
        for key in wrong_keys:
            async with screen(host, board, key=key) as lobby:
                assert await closed_with(lobby.socket) == 1008, key
        async with connect(f"ws://{host}/ws/boards/{board['id']}") as socket:
            await socket.send("this is not a hello")
            assert await closed_with(socket) == 1008
        # Refused before it may say anything: a page on another site must not even try keys.
        async with connect(f"ws://{host}/ws/boards/{board['id']}", origin="https://evil.example") as socket:  # type: ignore[arg-type]
            assert await closed_with(socket) == 1008
        async with screen(host, board, origin=f"http://{host}") as lobby:  # type: ignore[arg-type]
            _, state = await lobby.next()
            assert state["board"] == "OPD lobby"


async def test_a_replaced_display_key_opens_nothing_and_the_new_one_opens_the_board(opd: Opd) -> None:
    board = await opd.enrol_board()
    replaced = await opd.post(f"/boards/{board['id']}/key", headers=opd.admin)
    assert replaced.status_code == 200, replaced.text
    fresh = replaced.json()
    assert fresh["id"] == board["id"] and fresh["display_key"] != board["display_key"]
    async with serving(opd.api.app) as host:
        async with screen(host, board) as lobby:
            assert await closed_with(lobby.socket) == 1008
        async with screen(host, fresh) as lobby:
            _, state = await lobby.next()
            assert state["board"] == "OPD lobby"
    refused = await opd.post(f"/boards/{board['id']}/key", headers=opd.front_office)
    assert refused.status_code == 403


async def test_a_display_key_opens_its_board_and_nothing_else(opd: Opd) -> None:
    board = await opd.enrol_board()
    await opd.issued(0)
    as_display = {"Authorization": f"Bearer {board['display_key']}"}
    call = await opd.post(f"/queues/{opd.queue_id}/call-next", {"room_id": opd.room()}, headers=as_display)
    assert call.status_code == 401
    for path in (f"/queues/{opd.queue_id}/tokens", f"/queues/{opd.queue_id}", "/boards"):
        assert (await opd.get(path, headers=as_display)).status_code == 401, path
    assert (await opd.call_next()).status_code == 200  # the queue itself works: only the key was refused


async def test_no_board_message_names_or_identifies_a_patient(api: Api, clock: Any) -> None:
    opd = await open_opd(api, clock, rooms=2, patients=0)
    patients = []
    for number in range(4):
        body = patient_body(
            opd.clinic.desk.tenant,
            given_name=f"{MARKER}{number}",
            family_name=f"{MARKER}Family",
            phone=f"+9198777{number:05d}",
            email=f"{MARKER.lower()}{number}@example.test",
            national_id=None,
        )
        registered = await opd.post("/patients", body)
        assert registered.status_code == 201, registered.text
        patients.append(registered.json())
    opd.clinic.patient_ids = [patient["id"] for patient in patients]
    board = await opd.enrol_board()
    async with serving(opd.api.app) as host, screen(host, board) as lobby:
        await lobby.next()
        tokens = [await opd.issued(number) for number in range(4)]
        await opd.call_next(room=0)
        await opd.call_next(room=1)
        await opd.act(tokens[0]["id"], "start")
        await opd.act(tokens[0]["id"], "complete")
        await opd.act(tokens[1]["id"], "skip")
        await opd.post(f"/queues/{opd.queue_id}/delay", {"minutes": 15}, headers=opd.doctor)
        await lobby.until(lambda state: state["queues"][0]["delayed_until"] is not None)
    secrets = [MARKER, MARKER.lower(), "+9198777", *opd.clinic.patient_ids, *(token["id"] for token in tokens)]
    assert len(lobby.texts) >= 8
    leaked = [secret for secret in secrets for text in lobby.texts if secret in text]
    assert leaked == []
    # The board did show the queue: labels, not people.
    assert any("GM-004" in text for text in lobby.texts)
