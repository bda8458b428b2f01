"""Two servers working one queue in turns: each keeps its in-memory line by catching up on the tokens the other
changed (``queue_tokens.changed_version``), and after every step its line, its estimates and its call order
are the ones a copy freshly built from the database gives."""

from __future__ import annotations

from typing import Any

from sehat.queue.live import LiveQueues
from tests.conftest import Api
from tests.queue.conftest import Opd, open_opd

MINUTE = 60


async def _line(opd: Opd, api: Api, *, fresh: bool) -> list[tuple[int, str, str]]:
    """The waiting line as ``api`` shows it; ``fresh``: from a copy built from the rows for this read alone (the
    server's own copies are left as they were, stale ones included, for its next operation to catch up)."""
    runtime = api.app.state.queues
    kept = runtime.live
    if fresh:
        runtime.live = LiveQueues()
    try:
        response = await api.client.get(
            f"/api/v1/queues/{opd.queue_id}/tokens", headers=opd.front_office, params={"status": "waiting"}
        )
    finally:
        runtime.live = kept
    assert response.status_code == 200, response.text
    return sorted((t["position"], t["label"], t["estimated_call_at"]) for t in response.json()["items"])


async def test_two_servers_taking_turns_on_one_queue_keep_the_same_line_as_the_database(
    api: Api, clock: Any, start_api: Any
) -> None:
    opd = await open_opd(api, clock, patients=8, rooms=2)
    async with start_api() as other:
        servers = [api, other]

        async def step(number: int, path: str, body: dict[str, Any] | None, headers: dict[str, str]) -> Any:
            server = servers[number % 2]
            response = await server.client.post(f"/api/v1{path}", headers=headers, json=body)
            assert response.status_code in (200, 201), f"{path}: {response.text}"
            clock.shift(MINUTE / 2)  # a line that moves; the staff tokens (15 minutes) outlive the test
            # The server that acted reads from its own copy, caught up and changed in step with the rows; the
            # other one builds a copy from scratch.
            assert await _line(opd, server, fresh=False) == await _line(opd, servers[(number + 1) % 2], fresh=True)
            return response.json()

        issue = f"/queues/{opd.queue_id}/tokens"
        call = f"/queues/{opd.queue_id}/call-next"
        tokens = [
            await step(number, issue, {"patient_id": opd.clinic.patient_ids[number]}, opd.front_office)
            for number in range(5)
        ]
        first = await step(5, call, {"room_id": opd.room(0)}, opd.doctor)
        second = await step(6, call, {"room_id": opd.room(1)}, opd.doctor)
        await step(7, f"/tokens/{second['id']}/skip", None, opd.doctor)
        await step(8, call, {"room_id": opd.room(1)}, opd.doctor)
        await step(9, f"/tokens/{second['id']}/recall", None, opd.doctor)
        await step(10, f"/tokens/{first['id']}/start", None, opd.doctor)
        await step(11, f"/queues/{opd.queue_id}/delay", {"minutes": 10}, opd.doctor)
        await step(12, f"/tokens/{first['id']}/complete", None, opd.doctor)
        await step(13, issue, {"patient_id": opd.clinic.patient_ids[5], "priority": "emergency"}, opd.front_office)
        await step(14, call, {"room_id": opd.room(0)}, opd.doctor)
        await step(15, f"/tokens/{tokens[4]['id']}/cancel", None, opd.front_office)
        await step(16, f"/queues/{opd.queue_id}/pause", {}, opd.doctor)
        await step(17, issue, {"patient_id": opd.clinic.patient_ids[6]}, opd.front_office)
        await step(18, f"/queues/{opd.queue_id}/resume", None, opd.doctor)
        # And both still call the same next patient: the recalled one, who arrived before everyone left.
        assert (await _line(opd, api, fresh=True))[0][1] == second["label"]
