"""Who accessed this patient's record, for the organization's auditors: GET /patients/{id}/access-log lists the
accesses newest first, in plain words, with the person's name, roles and id and the outcome (issue 3, part 6,
staff side; issue 4 adds the patient actions' wording)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

from sehat.access.service import PATIENT_PERSPECTIVE, STAFF_PERSPECTIVE, describe_access
from sehat.core.audit import AuditEvent, Outcome
from tests.access.test_patient_access_log import REASON, _record, _user_id
from tests.conftest import Api
from tests.patients.conftest import Desk, open_desk
from tests.patients.test_patient_invitations import PATIENT_EMAIL, open_account

ITEM_KEYS = {"occurred_at", "action", "description", "actor_name", "actor_roles", "outcome", "actor_id"}


def path(patient: dict[str, Any]) -> str:
    return f"/api/v1/patients/{patient['id']}/access-log"


@pytest.fixture
async def desk(api: Api) -> Desk:
    return await open_desk(api, "alpha", roles=("front_office", "doctor", "nurse", "auditor"))


def _summary(items: list[dict[str, Any]]) -> list[tuple[str, list[str], str, str, str]]:
    return [
        (item["actor_name"], item["actor_roles"], item["action"], item["description"], item["outcome"])
        for item in items
    ]


async def test_an_auditor_sees_who_accessed_a_record_in_plain_words_newest_first(desk: Desk) -> None:
    api, emails = desk.api, desk.tenant.emails
    patient = await desk.register()
    patient_id = desk.patient_id(patient)
    doctor = await desk.headers("doctor")
    assert (await api.client.get(f"/api/v1/patients/{patient['id']}", headers=doctor)).status_code == 200
    await _record(api, emails["nurse"], patient_id, "patient.read", Outcome.denied)
    grant = await api.client.post(
        "/api/v1/break-glass", headers=doctor, json={"patient_id": patient["id"], "reason": REASON}
    )
    assert grant.status_code == 201
    await _record(api, desk.tenant.organization_id, patient_id, "appointment.remind", Outcome.failure)

    response = await api.client.get(path(patient), headers=await desk.headers("auditor"))
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert all(set(item) == ITEM_KEYS for item in items)
    assert _summary(items) == [
        ("sehat (automatic)", [], "appointment.remind", "tried to access the patient's record (failed)", "failure"),
        ("doctor person", ["doctor"], "access.break_glass", "emergency access to the patient's record", "success"),
        ("nurse person", ["nurse"], "patient.read", "tried to view the patient's record (refused)", "denied"),
        ("doctor person", ["doctor"], "patient.read", "viewed the patient's record", "success"),
        (
            "front_office person",
            ["front_office"],
            "patient.create",
            "registered the patient with the clinic",
            "success",
        ),
    ]
    doctor_id = str(await _user_id(api, emails["doctor"]))
    assert [item["actor_id"] for item in items] == [
        None,
        doctor_id,
        str(await _user_id(api, emails["nurse"])),
        doctor_id,
        str(await _user_id(api, emails["front_office"])),
    ]
    # What stays with /audit-events: addresses, request ids, details, the sealed break-glass reason.
    for hidden in ("203.0.113.10", "allergies", REASON, "Ayesha"):
        assert hidden not in response.text, hidden


async def test_pages_are_newest_first_and_following_next_cursor_shows_each_access_once(desk: Desk) -> None:
    patient = await desk.register()
    steps = [f"patient.step_{number}" for number in range(5)]
    for action in steps:
        await _record(desk.api, desk.tenant.emails["doctor"], desk.patient_id(patient), action, Outcome.success)
    auditor = await desk.headers("auditor")

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await desk.api.client.get(path(patient), headers=auditor, params=params)
        assert response.status_code == 200, response.text
        seen.extend(item["action"] for item in response.json()["items"])
        pages += 1
        cursor = response.json()["next_cursor"]
        if cursor is None:
            break
    # Each page's own read is recorded as it goes, and never joins the walk it is part of.
    assert seen == [*reversed(steps), "patient.create"]
    assert pages == 3


async def test_the_patients_own_actions_are_named_as_the_patient_and_other_patients_by_their_account(
    desk: Desk,
) -> None:
    api = desk.api
    patient = await desk.register()
    headers = await open_account(desk, patient)
    assert (await api.client.get("/api/v1/me/patient", headers=headers)).status_code == 200
    assert (await api.client.get("/api/v1/me/access-log", headers=headers)).status_code == 200
    await api.add_patient_account(desk.tenant.organization_id, "other@alpha.test")
    await _record(api, "other@alpha.test", desk.patient_id(patient), "patient.read", Outcome.denied)

    items = await api.all_pages(path(patient), await desk.headers("auditor"))
    assert _summary(items)[:5] == [
        ("Patient", ["patient"], "patient.read", "tried to view the patient's record (refused)", "denied"),
        ("the patient", ["patient"], "audit.read_own", "viewed the patient's access log", "success"),
        ("the patient", ["patient"], "patient.read", "viewed the patient's record", "success"),
        ("the patient", ["patient"], "patient.account.open", "opened the patient's online account", "success"),
        (
            "front_office person",
            ["front_office"],
            "patient.invite",
            "invited the patient to open an online account",
            "success",
        ),
    ]
    assert items[0]["actor_id"] == str(await _user_id(api, "other@alpha.test"))
    assert items[1]["actor_id"] == str(await _user_id(api, PATIENT_EMAIL))


async def test_reading_the_log_is_audited_and_the_patient_sees_that_it_was_reviewed(desk: Desk) -> None:
    api = desk.api
    patient = await desk.register()
    patient_headers = await open_account(desk, patient)
    auditor = await desk.headers("auditor")
    first = await api.client.get(path(patient), headers={**auditor, "X-Request-ID": "review-0001"}, params={"limit": 3})
    assert first.status_code == 200
    assert "audit.read_patient_log" not in [item["action"] for item in first.json()["items"]]
    second = await api.client.get(path(patient), headers=auditor)
    assert _summary(second.json()["items"])[0] == (
        "auditor person",
        ["auditor"],
        "audit.read_patient_log",
        "viewed who accessed the patient's record",
        "success",
    )

    async with api.unit_of_work() as session:
        reads = (
            await session.scalars(
                select(AuditEvent).where(AuditEvent.action == "audit.read_patient_log").order_by(AuditEvent.id)
            )
        ).all()
    assert len(reads) == 2
    assert (reads[0].patient_id, reads[0].organization_id, reads[0].actor_roles) == (
        desk.patient_id(patient),
        desk.tenant.organization_id,
        ["auditor"],
    )
    assert (reads[0].resource_type, reads[0].request_id) == ("access_log", "review-0001")
    assert reads[0].details == {"filters": {}, "limit": 3, "continued": False}

    own = await api.all_pages("/api/v1/me/access-log", patient_headers)
    assert (own[0]["actor_name"], own[0]["description"]) == ("auditor person", "viewed who accessed your record")


async def test_only_auditors_and_org_admins_read_it_and_another_organization_gets_404(desk: Desk) -> None:
    api = desk.api
    patient = await desk.register()
    patient_headers = await open_account(desk, patient)
    assert (await api.client.get(path(patient), headers=desk.admin)).status_code == 200
    for role in ("front_office", "doctor", "nurse"):
        refused = await api.client.get(path(patient), headers=await desk.headers(role))
        assert (refused.status_code, refused.json()["code"]) == (403, "permission_denied"), role
    wrong = await api.client.get(path(patient), headers=patient_headers)
    assert (wrong.status_code, wrong.json()["code"]) == (401, "wrong_audience")
    assert (await api.client.get(path(patient))).status_code == 401

    beta = await open_desk(api, "beta", roles=("front_office", "auditor"))
    for headers in (beta.admin, await beta.headers("auditor")):
        hidden = await api.client.get(path(patient), headers=headers)
        assert (hidden.status_code, hidden.json()["code"]) == (404, "patient_not_found")
        assert "person" not in hidden.text and "Ayesha" not in hidden.text
    assert (await api.client.get(path({"id": uuid.uuid4()}), headers=desk.admin)).status_code == 404
    # The patient is the path's: a query naming another one is refused, never obeyed.
    named = await api.client.get(path(patient), headers=desk.admin, params={"patient_id": str(uuid.uuid4())})
    assert named.status_code == 422


ACCOUNT_AND_VAULT_ACTIONS = (
    "patient.create",
    "patient.search",
    "patient.merge",
    "patient.erase",
    "patient.legal_hold.place",
    "patient.legal_hold.lift",
    "consent.read",
    "consent.record",
    "patient.invite",
    "patient.account.open",
    "patient.registration.match",
    "audit.read_patient_log",
)


def test_every_patient_action_has_its_own_wording_for_the_patient_and_for_staff() -> None:
    general = {describe_access("some.unknown_action", outcome) for outcome in Outcome}
    for action in ACCOUNT_AND_VAULT_ACTIONS:
        for outcome in Outcome:
            mine = describe_access(action, outcome, PATIENT_PERSPECTIVE)
            theirs = describe_access(action, outcome, STAFF_PERSPECTIVE)
            assert mine not in general, action
            assert "you" in mine and "you" not in theirs and "the patient" in theirs, (action, mine, theirs)
            assert "{" not in mine + theirs
