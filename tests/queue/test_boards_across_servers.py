"""Two server processes with Redis: a lobby board connected to one sees a change made through the other."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from tests.conftest import APP_POSTGRES_URL, Api
from tests.queue.conftest import open_opd
from tests.queue.test_lobby_boards import rooms, screen

START_TIMEOUT = 30.0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@asynccontextmanager
async def server_process(api: Api) -> AsyncIterator[str]:
    """``sehat serve`` in a process of its own, on the test's database and Redis (same key prefix)."""
    settings = api.app.state.settings
    port = _free_port()
    environment = {
        **os.environ,
        "SEHAT_DATABASE_URL": APP_POSTGRES_URL,
        "SEHAT_MASTER_KEY": settings.master_key.get_secret_value(),
        "SEHAT_REDIS_URL": settings.redis_url,
        "SEHAT_REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "SEHAT_BACKGROUND_JOBS": "false",
        "SEHAT_LOG_LEVEL": "warning",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sehat",
        "serve",
        "--port",
        str(port),
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    host = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.returncode is not None:
                raise AssertionError("the server exited")
            try:
                async with httpx.AsyncClient() as probe:
                    ready = await probe.get(f"http://{host}/readyz", timeout=1)
                if ready.status_code == 200 and ready.json()["checks"].get("realtime") == "ok":
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("the server did not become ready")
            # Waiting without blocking: this test's own app keeps its Redis feeds alive meanwhile.
            await asyncio.sleep(0.1)
        yield host
    finally:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


@pytest.mark.parametrize("backend", ["postgresql"], indirect=True)
async def test_a_board_on_one_server_process_receives_a_call_made_through_another_with_redis(
    start_api: Any, redis_url: str
) -> None:
    async with start_api(redis_url=redis_url) as api:
        opd = await open_opd(api, None, rooms=2)
        board = await opd.enrol_board()
        first = await opd.issued(0)
        await opd.issued(1)
        async with server_process(api) as server_a, server_process(api) as server_b, screen(server_a, board) as lobby:
            sequence, state = await lobby.next()
            assert rooms(state) == {"Room 1": None, "Room 2": None}
            async with httpx.AsyncClient(base_url=f"http://{server_b}") as through_b:
                called = await through_b.post(
                    f"/api/v1/queues/{opd.queue_id}/call-next", json={"room_id": opd.room(1)}, headers=opd.doctor
                )
                assert called.status_code == 200, called.text
                assert called.json()["id"] == first["id"]
                after, state = await lobby.next()
                assert after > sequence
                assert rooms(state) == {"Room 1": None, "Room 2": "GM-001"}
            # A change through A itself reaches its screen too, after B's copy of the line was the last to move.
            async with httpx.AsyncClient(base_url=f"http://{server_a}") as through_a:
                completed = await through_a.post(f"/api/v1/tokens/{first['id']}/complete", headers=opd.doctor)
                assert completed.status_code == 200, completed.text
                _, state = await lobby.next()
                assert rooms(state) == {"Room 1": None, "Room 2": None}
                assert state["queues"][0]["waiting_count"] == 1
