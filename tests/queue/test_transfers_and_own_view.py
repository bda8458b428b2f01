"""A transfer moves a patient to another queue without sending them to the back: the new token keeps their
arrival; a queue the caller cannot reach is 404 and changes nothing. A patient sees their own token's place
and expected time, and nothing of anybody else."""

from __future__ import annotations

from datetime import datetime

from tests.queue.conftest import Opd

MINUTE = 60


async def _second_queue(opd: Opd, **overrides: str) -> str:
    response = await opd.open_queue(
        name="ENT",
        prefix="EN",
        practitioner_id=None,
        department_id=None,
        day=opd.queue["day"],
        **overrides,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_a_transferred_patient_keeps_their_arrival_and_goes_ahead_of_later_arrivals(opd: Opd) -> None:
    ent = await _second_queue(opd)
    moving = await opd.issued(0)
    opd.clock.shift(5 * MINUTE)
    later = await opd.issue(1, queue_id=ent)
    assert later.status_code == 201
    response = await opd.act(moving["id"], "transfer", {"queue_id": ent})
    assert response.status_code == 200, response.text
    moved = response.json()
    assert (moved["queue_id"], moved["label"], moved["source"], moved["status"]) == (
        ent,
        "EN-002",
        "transfer",
        "waiting",
    )
    assert moved["arrived_at"] == moving["arrived_at"]
    assert moved["position"] == 1
    assert (await opd.token(moving["id"]))["status"] == "transferred"
    called = await opd.call_next(queue_id=ent)
    assert called.status_code == 404  # the ENT queue has its own rooms, not General Medicine's
    ent_room = (await opd.get(f"/queues/{ent}")).json()["rooms"][0]["id"]
    first_called = await opd.post(f"/queues/{ent}/call-next", {"room_id": ent_room}, headers=opd.doctor)
    assert first_called.json()["id"] == moved["id"]


async def test_a_transfer_that_cannot_be_made_is_refused_and_changes_nothing(opd: Opd) -> None:
    token = await opd.issued(0)
    same = await opd.act(token["id"], "transfer", {"queue_id": opd.queue_id})
    assert same.status_code == 409 and same.json()["code"] == "same_queue"
    # A queue at the organization's second facility, where the staff of this desk do not work.
    elsewhere = await opd.open_queue(
        headers=opd.admin,
        facility_id=str(opd.clinic.desk.tenant.facility_ids[1]),
        practitioner_id=None,
        department_id=None,
        prefix="FAR",
    )
    assert elsewhere.status_code == 201, elsewhere.text
    refused = await opd.act(token["id"], "transfer", {"queue_id": elsewhere.json()["id"]})
    assert refused.status_code == 404 and refused.json()["code"] == "queue_not_found"
    ent = await _second_queue(opd)
    assert (await opd.issue(0, queue_id=ent)).status_code == 201
    taken = await opd.act(token["id"], "transfer", {"queue_id": ent})
    assert taken.status_code == 409 and taken.json()["code"] == "token_already_active"
    after = await opd.token(token["id"])
    assert (after["status"], after["version"], after["position"]) == ("waiting", 1, 1)


async def test_a_patient_sees_their_own_place_and_time_and_nothing_of_others(opd: Opd) -> None:
    await opd.issued(1)
    own = await opd.issued(0)
    patient = await opd.clinic.patient_headers(0)
    response = await opd.get("/me/tokens", headers=patient)
    assert response.status_code == 200, response.text
    (view,) = response.json()
    assert (view["id"], view["label"], view["position"], view["status"]) == (own["id"], "GM-002", 2, "waiting")
    assert datetime.fromisoformat(view["estimated_call_at"]) == datetime.fromisoformat(own["estimated_call_at"])
    assert set(view) == {"id", "queue_id", "queue_name", "label", "status", "room", "position", "estimated_call_at"}
    await opd.call_next()
    await opd.call_next()  # the room is busy: refused, nothing changes
    assert (await opd.get("/me/tokens", headers=patient)).json()[0]["position"] == 1
    # Each audience keeps to its own door.
    assert (await opd.get(f"/tokens/{own['id']}", headers=patient)).json()["code"] == "wrong_audience"
    assert (await opd.get("/me/tokens")).json()["code"] == "wrong_audience"
