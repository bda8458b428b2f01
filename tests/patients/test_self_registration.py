"""A patient signs up on their own; front office sees the sign-up with the records it matches (through the
blind indexes) and links it to the right one, or turns it down (issue 4, item 5)."""

from __future__ import annotations

import uuid
from typing import Any

import orjson
from sqlalchemy import select, text

from sehat.core.audit import AuditEvent
from sehat.core.crypto import DecryptionError, associated_data
from sehat.identity.models import User
from sehat.patients.models import PatientRegistration
from tests.conftest import PASSWORD, Api
from tests.patients.conftest import PHONE, PHONE_E164, Desk, open_desk
from tests.patients.test_patient_invitations import invite, sign_in_patient

REGISTRATIONS = "/api/v1/patient-registrations"
PENDING = f"{REGISTRATIONS}/pending"
EMAIL = "ayesha.s@example.org"


def sign_up_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "organization": "alpha",
        "email": EMAIL,
        "password": PASSWORD,
        "given_name": "Ayesha",
        "family_name": "Siddiqui",
        "birth_date": "1987-04-12",
        "phone": PHONE,
    }
    body.update(overrides)
    return body


async def sign_up(api: Api, **overrides: Any) -> dict[str, Any]:
    response = await api.client.post(REGISTRATIONS, json=sign_up_body(**overrides))
    assert response.status_code == 202, response.text
    return response.json()


async def pending(desk: Desk, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    return await desk.api.all_pages(PENDING, headers or desk.front_office)


async def test_a_sign_up_opens_an_unlinked_account_and_keeps_what_was_typed_sealed(desk: Desk) -> None:
    registration = await sign_up(desk.api)
    assert set(registration) == {"id", "status"} and registration["status"] == "pending"

    headers = await sign_in_patient(desk.api, EMAIL)
    own = await desk.api.client.get("/api/v1/me/patient", headers=headers)
    assert (own.status_code, own.json()["code"]) == (404, "patient_not_linked")

    async with desk.api.unit_of_work() as session:
        raw = (await session.execute(text("SELECT * FROM patient_registrations"))).all()
        user = await session.scalar(select(User).where(User.email == EMAIL))
        row = await session.scalar(select(PatientRegistration))
    assert user is not None and row is not None
    assert (user.roles, user.patient_id, user.organization_id) == (["patient"], None, desk.tenant.organization_id)
    assert "Ayesha" not in user.full_name
    stored = repr(raw).encode() + b"".join(bytes(v) for v in raw[0] if isinstance(v, bytes | memoryview))
    for plaintext in (b"Ayesha", b"Siddiqui", b"1987-04-12", PHONE_E164.encode(), b"98123"):
        assert plaintext not in stored, plaintext
    ring = desk.api.auth.key_ring
    place = associated_data("patient_registrations", "details_sealed", row.id, row.organization_id)
    assert orjson.loads(ring.open(row.details_sealed, place)) == {
        "given_name": "Ayesha",
        "family_name": "Siddiqui",
        "birth_date": "1987-04-12",
        "phone": PHONE_E164,
    }
    # Bound to its row: the same ciphertext does not open as another registration's.
    other_place = associated_data("patient_registrations", "details_sealed", uuid.uuid4(), row.organization_id)
    try:
        ring.open(row.details_sealed, other_place)
    except DecryptionError:
        pass
    else:
        raise AssertionError("a sealed registration opened under another row's associated data")


async def test_bad_sign_ups_are_422_naming_the_field_without_repeating_the_value(desk: Desk) -> None:
    cases = {
        "phone": {"phone": "12345"},
        "birth_date": {"birth_date": "2999-01-01"},
        "organization": {"organization": "no-such-clinic"},
        "given_name": {"given_name": ""},
        "email": {"email": "not-an-address"},
        "password": {"password": "short"},
    }
    for field, overrides in cases.items():
        response = await desk.api.client.post(
            REGISTRATIONS, json=sign_up_body(**{"email": f"{field}@example.org", **overrides})
        )
        assert response.status_code == 422, (field, response.text)
        assert field in [error["field"] for error in response.json()["errors"]], response.text
        assert "12345" not in response.text and "no-such-clinic" not in response.text
    unknown = await desk.api.client.post(REGISTRATIONS, json={**sign_up_body(), "roles": ["org_admin"]})
    assert unknown.status_code == 422
    async with desk.api.unit_of_work() as session:
        assert (await session.scalar(select(User.id).where(User.email == EMAIL))) is None
        assert (await session.scalar(select(PatientRegistration.id))) is None


async def test_an_email_address_with_an_account_is_409(desk: Desk) -> None:
    taken = await desk.api.client.post(REGISTRATIONS, json=sign_up_body(email=desk.tenant.emails["doctor"]))
    assert (taken.status_code, taken.json()["code"]) == (409, "email_taken")


async def test_front_office_sees_pending_sign_ups_with_the_records_matching_phone_or_name_and_birth_date(
    desk: Desk,
) -> None:
    by_phone = await desk.register(given_name="Imran", birth_date="1980-01-01", email=None, national_id=None)
    by_name = await desk.register(phone="+92 300 7654321", email=None, national_id=None)
    by_both = await desk.register(email=None, national_id=None)
    await desk.register(given_name="Zara", phone="+92 321 0000001", email=None, national_id=None)
    await invite(desk, by_both)  # an open invitation is no account
    registration = await sign_up(desk.api)
    await sign_up(desk.api, email="nobody@example.org", given_name="Nobody", phone="+92 333 1111111")

    items = await pending(desk)
    assert len(items) == 2
    first = items[0]
    assert first["id"] == registration["id"]
    assert {key: first[key] for key in ("email", "given_name", "family_name", "birth_date", "phone", "status")} == {
        "email": EMAIL,
        "given_name": "Ayesha",
        "family_name": "Siddiqui",
        "birth_date": "1987-04-12",
        "phone": PHONE_E164,
        "status": "pending",
    }
    found = {candidate["patient"]["id"]: candidate for candidate in first["candidates"]}
    assert set(found) == {by_phone["id"], by_name["id"], by_both["id"]}
    assert found[by_phone["id"]]["matched_on"] == ["phone"]
    assert found[by_name["id"]]["matched_on"] == ["name_and_birth_date"]
    assert sorted(found[by_both["id"]]["matched_on"]) == ["name_and_birth_date", "phone"]
    assert not any(candidate["has_account"] for candidate in found.values())
    # Summaries only: enough to tell patients apart at a desk.
    assert set(found[by_both["id"]]["patient"]) <= {
        "id",
        "status",
        "mrn",
        "given_name",
        "family_name",
        "birth_date",
        "registering_facility_id",
        "merged_into_id",
    }
    assert items[1]["candidates"] == []

    async with desk.api.unit_of_work() as session:
        reads = (
            await session.execute(
                select(AuditEvent.patient_id, AuditEvent.details).where(
                    AuditEvent.action == "patient.read", AuditEvent.details["via"].as_string() == "registration_review"
                )
            )
        ).all()
        listing = await session.scalar(
            select(AuditEvent.details).where(AuditEvent.action == "patient.registration.list")
        )
    # Each suggested record was read once, and the read is on record.
    assert sorted(str(patient_id) for patient_id, _ in reads) == sorted([by_phone["id"], by_name["id"], by_both["id"]])
    assert listing == {"count": 2, "continued": False}


async def test_matching_links_the_account_so_the_patient_reads_their_record(desk: Desk) -> None:
    patient = await desk.register()
    registration = await sign_up(desk.api)
    path = f"{REGISTRATIONS}/{registration['id']}/match"
    matched = await desk.api.client.post(path, headers=desk.front_office, json={"patient_id": patient["id"]})
    assert matched.status_code == 200, matched.text
    assert (matched.json()["status"], matched.json()["matched_patient_id"]) == ("matched", patient["id"])
    assert matched.json()["decided_at"] is not None
    assert await pending(desk) == []

    headers = await sign_in_patient(desk.api, EMAIL)
    own = await desk.api.client.get("/api/v1/me/patient", headers=headers)
    assert own.status_code == 200, own.text
    assert (own.json()["id"], own.json()["given_name"], own.json()["phone"]) == (patient["id"], "Ayesha", PHONE_E164)
    log = await desk.api.all_pages("/api/v1/me/access-log", headers)
    assert ("front_office person", "patient.registration.match", "linked an online account to your record") in [
        (item["actor_name"], item["action"], item["description"]) for item in log
    ]

    again = await desk.api.client.post(path, headers=desk.front_office, json={"patient_id": patient["id"]})
    assert (again.status_code, again.json()["code"]) == (409, "registration_decided")
    invitation = await desk.api.client.post(f"/api/v1/patients/{patient['id']}/invitations", headers=desk.front_office)
    assert (invitation.status_code, invitation.json()["code"]) == (409, "patient_has_account")


async def test_a_record_with_an_account_cannot_be_matched_and_a_match_supersedes_open_invitations(desk: Desk) -> None:
    patient = await desk.register()
    token = (await invite(desk, patient))["token"]
    first = await sign_up(desk.api)
    second = await sign_up(desk.api, email="second@example.org")
    linked = await desk.api.client.post(
        f"{REGISTRATIONS}/{first['id']}/match", headers=desk.front_office, json={"patient_id": patient["id"]}
    )
    assert linked.status_code == 200, linked.text
    # The invitation sent before lapsed: the record has its account now.
    late = await desk.api.client.post(
        "/api/v1/patient-accounts", json={"token": token, "email": "late@example.org", "password": PASSWORD}
    )
    assert (late.status_code, late.json()["code"]) == (422, "invalid_invitation")

    [listed] = await pending(desk)
    assert [candidate["has_account"] for candidate in listed["candidates"]] == [True]
    taken = await desk.api.client.post(
        f"{REGISTRATIONS}/{second['id']}/match", headers=desk.front_office, json={"patient_id": patient["id"]}
    )
    assert (taken.status_code, taken.json()["code"]) == (409, "patient_has_account")
    unknown = await desk.api.client.post(
        f"{REGISTRATIONS}/{second['id']}/match", headers=desk.front_office, json={"patient_id": str(uuid.uuid4())}
    )
    assert unknown.status_code == 422
    assert [error["field"] for error in unknown.json()["errors"]] == ["patient_id"]


async def test_rejecting_a_sign_up_disables_its_account(desk: Desk) -> None:
    registration = await sign_up(desk.api)
    path = f"{REGISTRATIONS}/{registration['id']}/reject"
    rejected = await desk.api.client.post(path, headers=desk.front_office)
    assert rejected.status_code == 200, rejected.text
    assert (rejected.json()["status"], rejected.json()["matched_patient_id"]) == ("rejected", None)
    assert (await desk.api.sign_in(EMAIL)).status_code == 401
    assert await pending(desk) == []
    again = await desk.api.client.post(path, headers=desk.front_office)
    assert (again.status_code, again.json()["code"]) == (409, "registration_decided")
    async with desk.api.unit_of_work() as session:
        entries = (
            await session.execute(
                select(AuditEvent.action, AuditEvent.actor_roles)
                .where(AuditEvent.action.in_(["patient.registration.create", "patient.registration.reject"]))
                .order_by(AuditEvent.id)
            )
        ).all()
    assert [tuple(entry) for entry in entries] == [
        ("patient.registration.create", ["patient"]),
        ("patient.registration.reject", ["front_office"]),
    ]


async def test_sign_ups_stay_in_their_organization(desk: Desk) -> None:
    beta = await open_desk(desk.api, "beta")
    registration = await sign_up(desk.api, organization="beta")
    assert await pending(desk) == []
    assert [item["id"] for item in await pending(beta)] == [registration["id"]]
    patient = await desk.register()
    for action, body in (("match", {"patient_id": patient["id"]}), ("reject", None)):
        response = await desk.api.client.post(
            f"{REGISTRATIONS}/{registration['id']}/{action}", headers=desk.front_office, json=body
        )
        assert (response.status_code, response.json()["code"]) == (404, "registration_not_found"), action
    # Nor can beta link its sign-up to alpha's patient.
    cross = await desk.api.client.post(
        f"{REGISTRATIONS}/{registration['id']}/match", headers=beta.front_office, json={"patient_id": patient["id"]}
    )
    assert cross.status_code == 422
    assert "Ayesha" not in cross.text


async def test_only_roles_with_patient_invite_review_sign_ups(desk: Desk) -> None:
    registration = await sign_up(desk.api)
    for role in ("doctor", "nurse", "billing", "auditor"):
        headers = await desk.headers(role)
        assert (await desk.api.client.get(PENDING, headers=headers)).status_code == 403, role
        refused = await desk.api.client.post(f"{REGISTRATIONS}/{registration['id']}/reject", headers=headers)
        assert refused.status_code == 403, role
    patient = await sign_in_patient(desk.api, EMAIL)
    wrong = await desk.api.client.get(PENDING, headers=patient)
    assert (wrong.status_code, wrong.json()["code"]) == (401, "wrong_audience")
    assert [item["id"] for item in await pending(desk, desk.admin)] == [registration["id"]]


async def test_sign_ups_are_throttled_by_address(start_api: Any) -> None:
    async with start_api(client_address="198.51.100.30", login_max_failures_per_account=2) as api:
        await open_desk(api, "alpha")
        await sign_up(api, email="one@example.org")
        taken = await api.client.post(REGISTRATIONS, json=sign_up_body(email="one@example.org"))
        assert taken.status_code == 409
        blocked = await api.client.post(REGISTRATIONS, json=sign_up_body(email="three@example.org"))
        assert (blocked.status_code, blocked.json()["code"]) == (429, "too_many_attempts")
        assert 0 < int(blocked.headers["retry-after"]) <= 900
