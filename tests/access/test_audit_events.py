"""Auditors and organization administrators read their own organization's audit log, and that read is
audited too (issue 3, part 6, staff side)."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
from sqlalchemy import select

from sehat.core.actor import SystemActor
from sehat.core.audit import AuditEntry, AuditEvent, Outcome
from sehat.identity import service as identity_service
from sehat.identity.models import User
from tests.conftest import PASSWORD, build_tenant

PATH = "/api/v1/audit-events"
ITEM_KEYS = {
    "id", "occurred_at", "actor_type", "actor_id", "actor_roles", "action", "resource_type", "resource_id",
    "patient_id", "outcome", "client_address", "request_id", "details",
}  # fmt: skip
WRONG_PASSWORD = "not the password at all"


async def _user_id(api: Any, email: str) -> uuid.UUID:
    async with api.unit_of_work() as session:
        user_id = await session.scalar(select(User.id).where(User.email == email))
    assert user_id is not None, email
    return user_id


async def _entry_ids_in_database(api: Any, organization_id: uuid.UUID | None) -> list[int]:
    """Newest first, as the route lists them; read straight from the table to check the route against."""
    async with api.unit_of_work() as session:
        rows = await session.scalars(
            select(AuditEvent.id)
            .where(
                AuditEvent.organization_id.is_(None)
                if organization_id is None
                else AuditEvent.organization_id == organization_id
            )
            .order_by(AuditEvent.id.desc())
        )
        return list(rows.all())


async def _list(api: Any, headers: dict[str, str], **params: Any) -> list[dict[str, Any]]:
    return await api.all_pages(PATH, headers, **params)


def _time(item: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(item["occurred_at"])


def _cursor_of(value: Any) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")


async def test_auditor_and_org_admin_list_their_organizations_entries_newest_first_without_the_mac(
    api: Any,
) -> None:
    tenant = await build_tenant(api, "alpha", roles=("auditor",))
    auditor = await api.headers_for(tenant.emails["auditor"])
    admin = await api.headers_for(tenant.admin_email)

    for headers in (auditor, admin):
        response = await api.client.get(PATH, headers=headers)
        assert response.status_code == 200, response.text
        items = response.json()["items"]
        assert {item["action"] for item in items} >= {"auth.sign_in"}
        assert all(set(item) == ITEM_KEYS for item in items)
        assert '"mac"' not in response.text
        ids = [item["id"] for item in items]
        assert ids == sorted(ids, reverse=True)
        times = [_time(item) for item in items]
        assert times == sorted(times, reverse=True)
        assert all(time.utcoffset() == timedelta(0) for time in times)


async def test_roles_without_audit_read_are_refused_and_a_patient_token_is_the_wrong_audience(api: Any) -> None:
    roles = ("front_office", "doctor", "nurse", "billing")
    tenant = await build_tenant(api, "alpha", roles=roles)
    for role in roles:
        response = await api.client.get(PATH, headers=await api.headers_for(tenant.emails[role]))
        assert (response.status_code, response.json()["code"]) == (403, "permission_denied"), role

    async with api.unit_of_work() as session:
        await identity_service.create_platform_admin(
            session, api.auth, SystemActor(name="test"), "root@platform.test", "Platform Admin", PASSWORD
        )
    platform = await api.client.get(PATH, headers=await api.headers_for("root@platform.test"))
    assert (platform.status_code, platform.json()["code"]) == (403, "permission_denied")

    await api.add_patient_account(tenant.organization_id, "patient@alpha.test")
    patient_token = (await api.sign_in("patient@alpha.test")).json()["access_token"]
    patient = await api.client.get(PATH, headers={"Authorization": f"Bearer {patient_token}"})
    assert (patient.status_code, patient.json()["code"]) == (401, "wrong_audience")

    assert (await api.client.get(PATH)).status_code == 401


async def test_entries_of_another_organization_or_of_no_organization_never_appear(api: Any) -> None:
    alpha = await build_tenant(api, "alpha", roles=("auditor", "doctor"))
    beta = await build_tenant(api, "beta", roles=("auditor", "doctor"))
    alpha_auditor = await api.headers_for(alpha.emails["auditor"])
    beta_auditor = await api.headers_for(beta.emails["auditor"])
    await api.headers_for(alpha.emails["doctor"])
    await api.headers_for(beta.emails["doctor"])
    await api.headers_for(beta.admin_email)
    assert (await api.sign_in(beta.emails["doctor"], WRONG_PASSWORD)).status_code == 401
    assert (await api.sign_in("nobody@beta.test", WRONG_PASSWORD)).status_code == 401
    beta_people = {str(await _user_id(api, email)) for email in (beta.admin_email, *beta.emails.values())}

    alpha_ids = await _entry_ids_in_database(api, alpha.organization_id)
    beta_ids = await _entry_ids_in_database(api, beta.organization_id)
    unowned_ids = await _entry_ids_in_database(api, None)
    assert alpha_ids and beta_ids and unowned_ids

    listed = await _list(api, alpha_auditor)
    assert [item["id"] for item in listed] == alpha_ids
    assert not {item["actor_id"] for item in listed} & beta_people
    assert not {item["resource_id"] for item in listed} & beta_people

    # And the wall holds the other way round: beta's auditor sees beta's entries, alpha's first read not.
    assert [item["id"] for item in await _list(api, beta_auditor)] == beta_ids


async def test_filters_narrow_by_action_actor_outcome_and_patient(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("auditor", "doctor", "nurse"))
    auditor = await api.headers_for(tenant.emails["auditor"])
    await api.headers_for(tenant.emails["doctor"])
    await api.headers_for(tenant.emails["nurse"])
    assert (await api.sign_in(tenant.emails["doctor"], WRONG_PASSWORD)).status_code == 401
    doctor_id = await _user_id(api, tenant.emails["doctor"])
    patient_id, other_patient_id = uuid.uuid4(), uuid.uuid4()
    async with api.unit_of_work() as session:
        for patient in (patient_id, other_patient_id, patient_id):
            api.app.state.audit.record(
                session,
                SystemActor(name="test"),
                AuditEntry(
                    action="patient.read",
                    outcome=Outcome.success,
                    resource_type="patient",
                    resource_id=str(patient),
                    patient_id=patient,
                ),
                organization_id=tenant.organization_id,
            )

    sign_ins = await _list(api, auditor, action="auth.sign_in")
    assert len(sign_ins) == 4  # auditor, doctor and nurse signed in, and the doctor failed once
    assert {item["action"] for item in sign_ins} == {"auth.sign_in"}

    by_doctor = await _list(api, auditor, actor_id=str(doctor_id))
    assert len(by_doctor) == 1
    assert (by_doctor[0]["action"], by_doctor[0]["outcome"]) == ("auth.sign_in", "success")

    failures = await _list(api, auditor, outcome="failure")
    assert [(item["resource_id"], item["details"]["reason"]) for item in failures] == [
        (str(doctor_id), "invalid_credentials")
    ]

    about_patient = await _list(api, auditor, patient_id=str(patient_id))
    assert [item["patient_id"] for item in about_patient] == [str(patient_id)] * 2

    combined = await _list(api, auditor, action="auth.sign_in", outcome="success", actor_id=str(doctor_id))
    assert [item["id"] for item in combined] == [by_doctor[0]["id"]]
    assert await _list(api, auditor, action="no.such_action") == []


async def test_time_window_includes_from_excludes_to_and_honours_offsets(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("auditor", "doctor", "nurse", "billing"))
    auditor = await api.headers_for(tenant.emails["auditor"])
    for role in ("doctor", "nurse", "billing"):
        await api.headers_for(tenant.emails[role])
    everything = await _list(api, auditor, action="auth.sign_in")
    assert len(everything) == 4

    start, end = _time(everything[-2]), _time(everything[0])
    # The same instant written at +05:00: the server compares instants, not wall-clock text.
    start_at_plus_five = start.astimezone(timezone(timedelta(hours=5))).isoformat()
    window = await _list(api, auditor, action="auth.sign_in", **{"from": start_at_plus_five, "to": end.isoformat()})

    expected = [item["id"] for item in everything if start <= _time(item) < end]
    assert [item["id"] for item in window] == expected
    assert everything[-2]["id"] in expected
    assert everything[0]["id"] not in expected


async def test_pages_of_two_follow_next_cursor_and_show_every_entry_once_newest_first(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("auditor", "doctor", "nurse"))
    auditor = await api.headers_for(tenant.emails["auditor"])
    for role in ("doctor", "nurse"):
        await api.headers_for(tenant.emails[role])
        assert (await api.sign_in(tenant.emails[role], WRONG_PASSWORD)).status_code == 401
    in_database = await _entry_ids_in_database(api, tenant.organization_id)
    assert len(in_database) >= 5

    seen: list[int] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        response = await api.client.get(PATH, headers=auditor, params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        assert len(page["items"]) <= 2
        seen.extend(item["id"] for item in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break

    # Each page's own audit.read entry is newer than the cursor, so it never joins the walk it records.
    assert seen == in_database
    assert pages == -(-len(in_database) // 2)


async def test_a_cursor_this_server_did_not_issue_is_refused_and_the_refused_read_is_not_recorded(
    api: Any,
) -> None:
    tenant = await build_tenant(api, "alpha", roles=("auditor",))
    auditor = await api.headers_for(tenant.emails["auditor"])
    users_cursor = _cursor_of([datetime.now(UTC).isoformat(), str(uuid.uuid4())])
    for cursor in (
        "garbage",
        "!!!",
        users_cursor,
        _cursor_of(["audit-events", "12"]),
        _cursor_of(["audit-events", True]),
        _cursor_of(["audit-events", 0]),
        _cursor_of(["audit-events", 2**63]),
        _cursor_of({"audit-events": 1}),
    ):
        response = await api.client.get(PATH, headers=auditor, params={"cursor": cursor})
        assert response.status_code == 422, cursor
        assert response.json()["code"] == "invalid_cursor"

    assert await _list(api, auditor, action="audit.read") == []


async def test_times_without_an_offset_and_windows_that_end_before_they_start_are_refused_naming_the_field(
    api: Any,
) -> None:
    tenant = await build_tenant(api, "alpha", roles=("auditor",))
    auditor = await api.headers_for(tenant.emails["auditor"])
    for params, field in (
        ({"from": "2030-01-01T00:00:00"}, "query.from"),
        ({"to": "2030-01-01T00:00:00"}, "query.to"),
        ({"from": "2030-01-02T00:00:00Z", "to": "2030-01-01T00:00:00Z"}, "query.to"),
        ({"from": "0001-01-01T00:00:00+05:00"}, "query.from"),
        ({"limit": 0}, "query.limit"),
        ({"limit": 101}, "query.limit"),
        ({"outcome": "maybe"}, "query.outcome"),
        ({"actor_id": "not-a-uuid"}, "query.actor_id"),
        ({"action": "Ali Khan +92 300"}, "query.action"),
        ({"actor": str(uuid.uuid4())}, "query.actor"),  # a misspelt filter must not silently list everything
    ):
        response = await api.client.get(PATH, headers=auditor, params=params)
        assert response.status_code == 422, params
        assert field in {error["field"] for error in response.json()["errors"]}, (params, response.json())


async def test_reading_the_log_records_an_audit_read_entry_with_the_filters_used(api: Any) -> None:
    tenant = await build_tenant(api, "alpha", roles=("auditor",))
    auditor = await api.headers_for(tenant.emails["auditor"])
    auditor_id = await _user_id(api, tenant.emails["auditor"])
    patient_id = uuid.uuid4()

    first = await api.client.get(
        PATH,
        headers={**auditor, "X-Request-ID": "audit-read-test-1"},
        params={"action": "auth.sign_in", "patient_id": str(patient_id), "limit": 5},
    )
    assert first.status_code == 200, first.text
    assert all(item["action"] != "audit.read" for item in first.json()["items"])

    (read,) = (await api.client.get(PATH, headers=auditor, params={"action": "audit.read"})).json()["items"]
    assert (read["actor_type"], read["actor_id"], read["actor_roles"]) == ("user", str(auditor_id), ["auditor"])
    assert (read["outcome"], read["resource_type"], read["request_id"]) == ("success", "audit_log", "audit-read-test-1")
    assert read["client_address"] == "203.0.113.10"
    assert read["patient_id"] is None
    assert read["details"] == {
        "filters": {"action": "auth.sign_in", "patient_id": str(patient_id)},
        "limit": 5,
        "continued": False,
    }
    async with api.unit_of_work() as session:
        stored = await session.get(AuditEvent, read["id"])
        assert stored is not None
        assert stored.organization_id == tenant.organization_id
