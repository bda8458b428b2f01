"""Who looked at my record: a patient lists, through their own token, which staff accessed their record, in
which role, when and with which outcome (issue 3, part 6, patient side)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import time_machine
from sqlalchemy import select

from sehat.core.actor import SystemActor
from sehat.core.audit import AuditEntry, AuditEvent, Outcome
from sehat.identity.models import User
from tests.conftest import _actor_for, build_tenant

PATH = "/api/v1/me/access-log"
ITEM_KEYS = {"occurred_at", "action", "description", "actor_name", "actor_roles", "outcome"}
REASON = "Unconscious arrival in emergency, needs allergy history"


async def _user_id(api: Any, email: str) -> uuid.UUID:
    async with api.unit_of_work() as session:
        user_id = await session.scalar(select(User.id).where(User.email == email))
    assert user_id is not None, email
    return user_id


async def _patient(api: Any, organization_id: uuid.UUID, email: str, **link: Any) -> tuple[dict[str, str], Any]:
    """A signed-in patient account: its headers and the patient id it is linked to."""
    patient_id = await api.add_patient_account(organization_id, email, **link)
    response = await api.sign_in(email)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}, patient_id


async def _break_glass(api: Any, email: str, patient_id: uuid.UUID) -> None:
    response = await api.client.post(
        "/api/v1/break-glass",
        headers=await api.headers_for(email),
        json={"patient_id": str(patient_id), "reason": REASON},
    )
    assert response.status_code == 201, response.text


async def _record(
    api: Any,
    by: str | uuid.UUID,
    patient_id: uuid.UUID,
    action: str,
    outcome: Outcome,
) -> None:
    """An entry as the patient domain (issue 4) will write it: by the user with that e-mail address, or by a
    system job working for the organization with that id."""
    if isinstance(by, uuid.UUID):
        actor: Any = SystemActor(name="reminders")
        organization_id: uuid.UUID | None = by
    else:
        actor, organization_id = await _actor_for(api, await _user_id(api, by)), None
    async with api.unit_of_work() as session:
        api.app.state.audit.record(
            session,
            actor,
            AuditEntry(
                action=action,
                outcome=outcome,
                resource_type="patient",
                resource_id=str(patient_id),
                patient_id=patient_id,
                details={"fields": ["allergies"]},
            ),
            organization_id=organization_id,
        )


async def _list(api: Any, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    return await api.all_pages(PATH, headers, **params)


def _summary(items: list[dict[str, Any]]) -> list[tuple[str, list[str], str, str, str]]:
    return [
        (item["actor_name"], item["actor_roles"], item["action"], item["description"], item["outcome"])
        for item in items
    ]


async def test_a_patient_sees_who_accessed_their_record_by_name_and_role_including_refused_attempts(
    api: Any,
) -> None:
    tenant = await build_tenant(api, "alpha", roles=("doctor", "nurse"))
    headers, patient_id = await _patient(api, tenant.organization_id, "patient@alpha.test")
    await _record(api, tenant.emails["doctor"], patient_id, "patient.read", Outcome.success)
    await _record(api, tenant.emails["nurse"], patient_id, "patient.read", Outcome.denied)
    await _break_glass(api, tenant.emails["doctor"], patient_id)
    await _record(api, tenant.organization_id, patient_id, "appointment.remind", Outcome.failure)

    response = await api.client.get(PATH, headers={**headers, "X-Request-ID": "patient-log-request-1"})
    assert response.status_code == 200, response.text
    items = response.json()["items"]
    assert all(set(item) == ITEM_KEYS for item in items)
    assert _summary(items) == [
        ("sehat (automatic)", [], "appointment.remind", "tried to access your record (failed)", "failure"),
        ("doctor person", ["doctor"], "access.break_glass", "emergency access to your record", "success"),
        ("nurse person", ["nurse"], "patient.read", "tried to view your record (refused)", "denied"),
        ("doctor person", ["doctor"], "patient.read", "viewed your record", "success"),
    ]
    times = [datetime.fromisoformat(item["occurred_at"]) for item in items]
    assert times == sorted(times, reverse=True)
    assert all(time.utcoffset() == timedelta(0) for time in times)
    # What stays with the auditors: addresses, request ids, entry and resource ids, details, the sealed reason.
    doctor_id = await _user_id(api, tenant.emails["doctor"])
    for hidden in ("203.0.113.10", "patient-log-request-1", str(doctor_id), str(patient_id), "allergies", REASON):
        assert hidden not in response.text, hidden


async def test_pages_are_newest_first_and_following_next_cursor_shows_each_access_once(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("doctor",))
    headers, patient_id = await _patient(api, tenant.organization_id, "patient@alpha.test")
    actions = [f"patient.step_{number}" for number in range(5)]
    for action in actions:
        await _record(api, tenant.emails["doctor"], patient_id, action, Outcome.success)

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await api.client.get(PATH, headers=headers, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen.extend(item["action"] for item in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    # Each page's own read is recorded as it goes, and never joins the walk.
    assert seen == list(reversed(actions))
    assert pages == 3


async def test_accesses_to_other_patients_and_attempts_by_other_patients_are_never_shown(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("doctor",))
    headers, patient_id = await _patient(api, tenant.organization_id, "patient@alpha.test")
    other_headers, other_patient_id = await _patient(api, tenant.organization_id, "other@alpha.test")
    await _break_glass(api, tenant.emails["doctor"], other_patient_id)
    await _record(api, tenant.emails["doctor"], other_patient_id, "patient.read", Outcome.success)
    # Another patient trying this patient's record: that person's name is not this patient's to see.
    await _record(api, "other@alpha.test", patient_id, "patient.read", Outcome.denied)
    await _record(api, "other@alpha.test", patient_id, "patient.read", Outcome.success)
    await _record(api, tenant.emails["doctor"], patient_id, "patient.read", Outcome.success)
    # The patient's own reads of their record are theirs to see, named as themselves.
    await _record(api, "patient@alpha.test", patient_id, "patient.read", Outcome.success)

    assert _summary(await _list(api, headers)) == [
        ("you", ["patient"], "patient.read", "viewed your record", "success"),
        ("doctor person", ["doctor"], "patient.read", "viewed your record", "success"),
    ]
    assert _summary(await _list(api, other_headers)) == [
        ("doctor person", ["doctor"], "patient.read", "viewed your record", "success"),
        ("doctor person", ["doctor"], "access.break_glass", "emergency access to your record", "success"),
    ]


async def test_another_organization_is_never_shown_even_for_the_same_patient_id(api: Any) -> None:
    alpha = await build_tenant(api, "alpha", roles=("doctor",))
    beta = await build_tenant(api, "beta", roles=("doctor", "nurse"))
    shared_id = uuid.uuid4()
    alpha_headers, _ = await _patient(api, alpha.organization_id, "patient@alpha.test", patient_id=shared_id)
    beta_headers, _ = await _patient(api, beta.organization_id, "patient@beta.test", patient_id=shared_id)
    await _break_glass(api, beta.emails["doctor"], shared_id)
    await _record(api, beta.emails["nurse"], shared_id, "patient.read", Outcome.denied)
    await _record(api, alpha.emails["doctor"], shared_id, "patient.read", Outcome.success)

    alpha_log = await _list(api, alpha_headers)
    assert _summary(alpha_log) == [("doctor person", ["doctor"], "patient.read", "viewed your record", "success")]
    assert "nurse" not in str(alpha_log)
    assert _summary(await _list(api, beta_headers)) == [
        ("nurse person", ["nurse"], "patient.read", "tried to view your record (refused)", "denied"),
        ("doctor person", ["doctor"], "access.break_glass", "emergency access to your record", "success"),
    ]


async def test_the_time_window_includes_from_excludes_to_and_compares_instants(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("doctor",))
    headers, patient_id = await _patient(api, tenant.organization_id, "patient@alpha.test")
    start = datetime(2024, 3, 1, 9, 0, tzinfo=UTC)
    for hours in range(4):
        with time_machine.travel(start + timedelta(hours=hours), tick=False):
            await _record(api, tenant.emails["doctor"], patient_id, f"patient.hour_{hours}", Outcome.success)

    # 10:00 UTC written as 15:00 at +05:00: the same instant, so the 10:00 entry is in.
    window = await _list(
        api,
        headers,
        **{
            "from": (start + timedelta(hours=1)).astimezone(timezone(timedelta(hours=5))).isoformat(),
            "to": (start + timedelta(hours=3)).isoformat(),
        },
    )
    assert [item["action"] for item in window] == ["patient.hour_2", "patient.hour_1"]
    assert [datetime.fromisoformat(item["occurred_at"]) for item in window] == [
        start + timedelta(hours=2),
        start + timedelta(hours=1),
    ]
    assert [item["action"] for item in await _list(api, headers, to=start.isoformat())] == []

    for params, field in (
        ({"from": "2024-03-01T10:00:00"}, "query.from"),
        ({"from": "2024-03-02T00:00:00Z", "to": "2024-03-01T00:00:00Z"}, "query.to"),
        ({"limit": 101}, "query.limit"),
        # The patient is always the caller's own: a query naming one is refused, never obeyed or ignored.
        ({"patient_id": str(uuid.uuid4())}, "query.patient_id"),
        ({"cursor": "garbage"}, None),
    ):
        response = await api.client.get(PATH, headers=headers, params=params)
        assert response.status_code == 422, params
        if field is not None:
            assert field in {error["field"] for error in response.json()["errors"]}, (params, response.json())


async def test_an_account_not_linked_to_a_patient_record_gets_an_empty_list(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("doctor",))
    headers, patient_id = await _patient(api, tenant.organization_id, "patient@alpha.test", patient_id=None)
    assert patient_id is None
    await _break_glass(api, tenant.emails["doctor"], uuid.uuid4())
    async with api.unit_of_work() as session:
        # Entries with no patient at all (sign-ins, denials) must not match an account with no patient.
        unowned = await session.scalar(
            select(AuditEvent.id).where(
                AuditEvent.organization_id == tenant.organization_id, AuditEvent.patient_id.is_(None)
            )
        )
    assert unowned is not None

    response = await api.client.get(PATH, headers=headers)
    assert response.status_code == 200, response.text
    assert response.json() == {"items": [], "next_cursor": None}


async def test_each_read_is_audited_as_audit_read_own_and_kept_out_of_the_list(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("doctor", "auditor"))
    headers, patient_id = await _patient(api, tenant.organization_id, "patient@alpha.test")
    patient_user_id = await _user_id(api, "patient@alpha.test")
    await _break_glass(api, tenant.emails["doctor"], patient_id)

    for _ in range(2):
        response = await api.client.get(
            PATH, headers={**headers, "X-Request-ID": "own-log-1"}, params={"from": "2020-01-01T00:00:00Z"}
        )
        assert response.status_code == 200, response.text
        assert [item["action"] for item in response.json()["items"]] == ["access.break_glass"]

    async with api.unit_of_work() as session:
        reads = list(
            (
                await session.scalars(
                    select(AuditEvent).where(AuditEvent.action == "audit.read_own").order_by(AuditEvent.id)
                )
            ).all()
        )
    assert len(reads) == 2
    for read in reads:
        assert (read.actor_type, read.actor_id, read.actor_roles) == ("user", patient_user_id, ["patient"])
        assert (read.organization_id, read.patient_id, read.outcome) == (tenant.organization_id, patient_id, "success")
        assert (read.resource_type, read.request_id, read.client_address) == ("access_log", "own-log-1", "203.0.113.10")
        assert read.details == {"filters": {"from": "2020-01-01T00:00:00Z"}, "limit": 50, "continued": False}

    # The organization's auditors see those reads like any other entry about the patient.
    auditor = await api.headers_for(tenant.emails["auditor"])
    about_patient = await api.all_pages("/api/v1/audit-events", auditor, patient_id=str(patient_id))
    assert [item["action"] for item in about_patient] == ["audit.read_own", "audit.read_own", "access.break_glass"]


async def test_staff_tokens_are_refused_as_the_wrong_audience_and_a_patient_token_on_staff_routes(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("doctor", "auditor"))
    for email in (tenant.emails["doctor"], tenant.emails["auditor"], tenant.admin_email):
        response = await api.client.get(PATH, headers=await api.headers_for(email))
        assert (response.status_code, response.json()["code"]) == (401, "wrong_audience"), email
    assert (await api.client.get(PATH)).status_code == 401

    headers, _ = await _patient(api, tenant.organization_id, "patient@alpha.test")
    staff_route = await api.client.get("/api/v1/audit-events", headers=headers)
    assert (staff_route.status_code, staff_route.json()["code"]) == (401, "wrong_audience")
