"""A token's life through the API: issued with the queue's next label, called to a room, started, completed;
a patient who does not come is skipped and may be recalled; every step is kept in the token's history and the
audit log, and a refused step (404 or 409 with its code) changes nothing."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select

from sehat.core.audit import AuditEvent
from sehat.queue.models import TokenHistory
from tests.queue.conftest import Opd


async def _history(opd: Opd, token_id: str) -> list[tuple[str, str | None, str]]:
    import uuid

    async with opd.api.unit_of_work() as session:
        rows = await session.execute(
            select(TokenHistory.action, TokenHistory.from_status, TokenHistory.to_status)
            .where(TokenHistory.token_id == uuid.UUID(token_id))
            .order_by(TokenHistory.version)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def _audited(opd: Opd, token_id: str) -> list[str]:
    async with opd.api.unit_of_work() as session:
        rows = await session.scalars(
            select(AuditEvent.action).where(AuditEvent.resource_id == token_id).order_by(AuditEvent.id)
        )
        return [action for action in rows if not action.endswith((".read", ".list"))]


async def test_a_token_is_issued_called_started_and_completed_with_history_and_audit(opd: Opd) -> None:
    token = await opd.issued(0)
    assert (token["number"], token["label"], token["status"], token["source"]) == (1, "GM-001", "waiting", "walk_in")
    assert token["position"] == 1
    called = await opd.call_next()
    assert called.status_code == 200, called.text
    assert (called.json()["id"], called.json()["status"], called.json()["room_id"]) == (
        token["id"],
        "called",
        opd.room(),
    )
    started = await opd.act(token["id"], "start")
    assert started.status_code == 200 and started.json()["status"] == "in_consultation"
    opd.clock.shift(12 * 60)
    completed = await opd.act(token["id"], "complete")
    assert completed.status_code == 200 and completed.json()["status"] == "completed"
    assert await _history(opd, token["id"]) == [
        ("queue.token.issue", None, "waiting"),
        ("queue.token.call", "waiting", "called"),
        ("queue.token.start", "called", "in_consultation"),
        ("queue.token.complete", "in_consultation", "completed"),
    ]
    assert await _audited(opd, token["id"]) == [
        "queue.token.issue",
        "queue.token.call",
        "queue.token.start",
        "queue.token.complete",
    ]
    metrics = await opd.get(f"/queues/{opd.queue_id}/metrics")
    assert metrics.status_code == 200
    assert (metrics.json()["completed"], metrics.json()["average_consultation_seconds"]) == (1, 12 * 60)


async def test_a_skipped_patient_frees_the_room_and_a_recall_puts_them_back_in_their_place(opd: Opd) -> None:
    first = await opd.issued(0)
    opd.clock.shift(60)
    second = await opd.issued(1)
    await opd.call_next()
    skipped = await opd.act(first["id"], "skip")
    assert skipped.status_code == 200 and skipped.json()["status"] == "skipped"
    recalled = await opd.act(first["id"], "recall")
    assert recalled.status_code == 200 and recalled.json()["status"] == "waiting"
    # They arrived first, so they are first again.
    assert [token["id"] for token in await opd.waiting()] == [first["id"], second["id"]]
    again = await opd.call_next()
    assert again.json()["id"] == first["id"]
    # Skipped a second time and never back: closed as a no-show, which a waiting token cannot be.
    await opd.act(first["id"], "skip")
    assert (await opd.act(second["id"], "no-show")).json()["code"] == "invalid_transition"
    no_show = await opd.act(first["id"], "no-show")
    assert no_show.status_code == 200 and no_show.json()["status"] == "no_show"
    assert (await opd.act(first["id"], "recall")).json()["code"] == "invalid_transition"


async def _unchanged(opd: Opd, token: dict[str, Any]) -> None:
    now = await opd.token(token["id"])
    assert (now["status"], now["version"]) == (token["status"], token["version"])


async def test_refused_steps_answer_with_their_code_and_change_nothing(opd: Opd) -> None:
    empty = await opd.call_next()
    assert empty.status_code == 409 and empty.json()["code"] == "queue_empty"
    token = await opd.issued(0)
    never_called = await opd.act(token["id"], "complete")
    assert never_called.status_code == 409 and never_called.json()["code"] == "token_not_called"
    await _unchanged(opd, token)
    second = await opd.issue(0)
    assert second.status_code == 409 and second.json()["code"] == "token_already_active"
    paused = await opd.post(f"/queues/{opd.queue_id}/pause", {}, headers=opd.doctor)
    assert paused.status_code == 200 and paused.json()["paused"] is True
    refused = await opd.call_next()
    assert refused.status_code == 409 and refused.json()["code"] == "queue_paused"
    await _unchanged(opd, token)
    assert (await opd.post(f"/queues/{opd.queue_id}/resume", headers=opd.doctor)).status_code == 200
    assert (await opd.call_next()).json()["id"] == token["id"]
    busy = await opd.issued(1)
    room_busy = await opd.call_next()
    assert room_busy.status_code == 409 and room_busy.json()["code"] == "room_busy"
    await _unchanged(opd, busy)
    missing = await opd.act("0b7e7f2c-6d1a-4c0e-9a39-3f7d0d1f1a11", "start")
    assert missing.status_code == 404 and missing.json()["code"] == "token_not_found"
    # Numbers refused issues did not use are not lost: the next issue follows on.
    assert (await opd.issued(2))["number"] == 3


async def test_the_front_office_may_issue_but_not_call_and_a_doctor_may_call_but_not_issue(opd: Opd) -> None:
    await opd.issued(0)
    by_front_office = await opd.post(f"/queues/{opd.queue_id}/call-next", {"room_id": opd.room()})
    assert by_front_office.status_code == 403
    by_doctor = await opd.post(
        f"/queues/{opd.queue_id}/tokens", {"patient_id": opd.clinic.patient_ids[1]}, headers=opd.doctor
    )
    assert by_doctor.status_code == 403
    assert (await opd.call_next()).status_code == 200
