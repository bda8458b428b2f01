"""Staff invite a patient to open an online account: a one-time link that expires, stored only as a hash; the
patient opens the account with it, signs in like anyone else and reaches their own record (issue 4, item 5)."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import time_machine
from sqlalchemy import select, text

from sehat.core.audit import AuditEvent
from sehat.core.clock import utcnow
from sehat.identity.models import User
from sehat.patients.models import PatientInvitation
from tests.conftest import PASSWORD, Api
from tests.identity.test_permissions_as_data import _grant, _grants_restored, _reload_through_the_session
from tests.patients.conftest import Desk, open_desk

ACCOUNTS = "/api/v1/patient-accounts"
PATIENT_EMAIL = "ayesha@example.org"


def invitations_path(patient: dict[str, Any]) -> str:
    return f"/api/v1/patients/{patient['id']}/invitations"


async def invite(desk: Desk, patient: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    response = await desk.api.client.post(invitations_path(patient), headers=headers or desk.front_office)
    assert response.status_code == 201, response.text
    return response.json()


async def accept(api: Api, token: str, email: str = PATIENT_EMAIL, password: str = PASSWORD) -> httpx.Response:
    return await api.client.post(ACCOUNTS, json={"token": token, "email": email, "password": password})


async def sign_in_patient(api: Api, email: str) -> dict[str, str]:
    response = await api.sign_in(email)
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


async def open_account(desk: Desk, patient: dict[str, Any], email: str = PATIENT_EMAIL) -> dict[str, str]:
    """The whole path: front office invites, the patient accepts and signs in. Returns the patient's headers."""
    opened = await accept(desk.api, (await invite(desk, patient))["token"], email)
    assert opened.status_code == 201, opened.text
    return await sign_in_patient(desk.api, email)


def _client_from(api: Api, address: str) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=api.client._transport.app, client=(address, 40000))  # type: ignore[attr-defined]
    return httpx.AsyncClient(transport=transport, base_url="http://sehat.test")


async def test_an_invited_patient_opens_an_account_signs_in_without_a_second_factor_and_reads_their_record(
    desk: Desk,
) -> None:
    patient = await desk.register()
    before = utcnow()
    invitation = await invite(desk, patient)
    assert set(invitation) == {"id", "expires_at", "token", "url"}
    expires_at = datetime.fromisoformat(invitation["expires_at"])
    assert timedelta(hours=72) <= expires_at - before <= timedelta(hours=72, minutes=1)
    # The link carries the token in its fragment, which browsers do not send to servers or in Referer headers.
    assert invitation["url"] == f"http://127.0.0.1:8000/portal/invitation#token={invitation['token']}"
    organization_hex, _, secret = invitation["token"].partition(".")
    assert organization_hex == desk.tenant.organization_id.hex and len(secret) >= 43

    opened = await accept(desk.api, invitation["token"], "Ayesha@Example.org")
    assert opened.status_code == 201, opened.text
    assert opened.json()["email"] == PATIENT_EMAIL

    signed_in = await desk.api.sign_in(PATIENT_EMAIL)
    assert signed_in.status_code == 200, signed_in.text
    assert signed_in.json()["scope"] == "full"
    headers = {"Authorization": f"Bearer {signed_in.json()['access_token']}"}
    own = await desk.api.client.get("/api/v1/me/patient", headers=headers)
    assert own.status_code == 200, own.text
    assert (own.json()["id"], own.json()["given_name"]) == (patient["id"], "Ayesha")

    async with desk.api.unit_of_work() as session:
        user = await session.scalar(select(User).where(User.email == PATIENT_EMAIL))
        stored = await session.scalar(
            select(PatientInvitation).where(PatientInvitation.id == uuid.UUID(invitation["id"]))
        )
    assert user is not None and stored is not None
    assert (user.roles, user.patient_id, user.organization_id) == (
        ["patient"],
        uuid.UUID(patient["id"]),
        desk.tenant.organization_id,
    )
    assert str(user.id) == opened.json()["user_id"]
    # The account carries no name in clear: the patient's name lives in the vault only.
    assert "Ayesha" not in user.full_name
    assert stored.token_hash == hashlib.sha256(invitation["token"].encode()).digest()
    assert (stored.accepted_at is not None, stored.user_id) == (True, user.id)


async def test_only_the_tokens_hash_is_stored(desk: Desk) -> None:
    invitation = await invite(desk, await desk.register())
    secret = invitation["token"].partition(".")[2]
    async with desk.api.unit_of_work() as session:
        rows = (await session.execute(text("SELECT * FROM patient_invitations"))).all()
    assert len(rows) == 1
    stored = b"|".join(
        bytes(value) if isinstance(value, bytes | memoryview) else str(value).encode() for value in rows[0]
    )
    assert secret.encode() not in stored and invitation["token"].encode() not in stored
    assert hashlib.sha256(invitation["token"].encode()).digest() in stored


async def test_unknown_expired_used_superseded_and_malformed_tokens_all_get_the_same_answer(start_api: Any) -> None:
    # More wrong tokens than the default throttle allows from one address (that has a test of its own).
    async with start_api(login_max_failures_per_account=20) as api:
        await _every_bad_token_gets_the_same_answer(await open_desk(api, "alpha"))


async def _every_bad_token_gets_the_same_answer(desk: Desk) -> None:
    patient = await desk.register()
    superseded = (await invite(desk, patient))["token"]
    current = (await invite(desk, patient))["token"]
    other = await open_desk(desk.api, "beta")
    other_organization = other.tenant.organization_id.hex
    secret = current.partition(".")[2]

    answers = []
    for token in (
        superseded,
        f"{desk.tenant.organization_id.hex}.{'A' * 43}",  # well formed, unknown
        f"{other_organization}.{secret}",  # the right secret under another organization
        "garbage",
        "",
        current + "x",
    ):
        response = await accept(desk.api, token)
        assert response.status_code == 422, (token, response.text)
        answers.append(response.json())
    assert (await accept(desk.api, current)).status_code == 201
    used = await accept(desk.api, current, "someone.else@example.org")
    assert used.status_code == 422
    answers.append(used.json())

    expiring = (await invite(desk, await desk.register(phone=None, email=None, national_id=None)))["token"]
    with time_machine.travel(utcnow() + timedelta(hours=72, seconds=1), tick=False):
        expired = await accept(desk.api, expiring, "late@example.org")
    assert expired.status_code == 422
    answers.append(expired.json())

    assert answers[0]["code"] == "invalid_invitation"
    assert [error["field"] for error in answers[0]["errors"]] == ["token"]
    assert all(answer == answers[0] for answer in answers), answers
    async with desk.api.unit_of_work() as session:
        accounts = (await session.scalars(select(User.email))).all()
        failures = (
            await session.scalars(
                select(AuditEvent.patient_id).where(
                    AuditEvent.action == "patient.account.open", AuditEvent.outcome == "failure"
                )
            )
        ).all()
    assert "someone.else@example.org" not in accounts and "late@example.org" not in accounts
    # Attempts with a token that was the patient's are filed under the patient; the others under nobody.
    assert sorted(str(patient_id) for patient_id in failures if patient_id) == sorted(
        [patient["id"], patient["id"], str(await _invitation_patient(desk, expiring))]
    )
    assert len(failures) == len(answers)


async def _invitation_patient(desk: Desk, token: str) -> uuid.UUID:
    async with desk.api.unit_of_work() as session:
        patient_id = await session.scalar(
            select(PatientInvitation.patient_id).where(
                PatientInvitation.token_hash == hashlib.sha256(token.encode()).digest()
            )
        )
    assert patient_id is not None
    return patient_id


async def test_a_patient_with_an_account_is_not_invited_again(desk: Desk) -> None:
    patient = await desk.register()
    await open_account(desk, patient)
    again = await desk.api.client.post(invitations_path(patient), headers=desk.front_office)
    assert (again.status_code, again.json()["code"]) == (409, "patient_has_account")


async def test_an_email_address_already_taken_is_409_and_the_invitation_stays_usable(desk: Desk) -> None:
    token = (await invite(desk, await desk.register()))["token"]
    taken = await accept(desk.api, token, desk.tenant.emails["doctor"])
    assert (taken.status_code, taken.json()["code"]) == (409, "email_taken")
    weak = await accept(desk.api, token, password="short")
    assert weak.status_code == 422
    assert [error["field"] for error in weak.json()["errors"]] == ["password"]
    assert (await accept(desk.api, token)).status_code == 201


async def test_a_patient_merged_away_after_the_invitation_cannot_open_an_account_with_it(desk: Desk) -> None:
    duplicate = await desk.register(phone=None, email=None, national_id=None)
    survivor = await desk.register()
    token = (await invite(desk, duplicate))["token"]
    merged = await desk.api.client.post(
        f"/api/v1/patients/{duplicate['id']}/merge", headers=desk.admin, json={"survivor_id": survivor["id"]}
    )
    assert merged.status_code == 200, merged.text
    refused = await accept(desk.api, token)
    assert (refused.status_code, refused.json()["code"]) == (422, "invalid_invitation")
    again = await desk.api.client.post(invitations_path(duplicate), headers=desk.front_office)
    assert (again.status_code, again.json()["code"]) == (409, "patient_merged")


async def test_wrong_tokens_are_throttled_by_address_and_other_addresses_are_not(start_api: Any) -> None:
    async with start_api(client_address="198.51.100.20", login_max_failures_per_account=3) as api:
        desk = await open_desk(api, "alpha")
        token = (await invite(desk, await desk.register()))["token"]
        guesses = [
            (await accept(api, f"{desk.tenant.organization_id.hex}.{str(n) * 43}")).status_code for n in range(3)
        ]
        assert guesses == [422, 422, 422]
        blocked = await accept(api, token)
        assert (blocked.status_code, blocked.json()["code"]) == (429, "too_many_attempts")
        assert 0 < int(blocked.headers["retry-after"]) <= 900
        async with _client_from(api, "203.0.113.77") as elsewhere:
            opened = await elsewhere.post(ACCOUNTS, json={"token": token, "email": PATIENT_EMAIL, "password": PASSWORD})
        assert opened.status_code == 201, opened.text


async def test_of_concurrent_acceptances_of_one_token_exactly_one_opens_an_account(desk: Desk) -> None:
    patient = await desk.register()
    token = (await invite(desk, patient))["token"]
    responses = await asyncio.gather(*(accept(desk.api, token, f"racer{n}@example.org") for n in range(4)))
    statuses = sorted(response.status_code for response in responses)
    assert statuses[0] == 201 and statuses.count(201) == 1, [response.text for response in responses]
    assert set(statuses[1:]) <= {409, 422}
    async with desk.api.unit_of_work() as session:
        linked = (await session.scalars(select(User.email).where(User.patient_id == uuid.UUID(patient["id"])))).all()
    assert len(linked) == 1


async def test_inviting_needs_patient_invite_and_a_patient_the_caller_may_open_without_break_glass(
    desk: Desk,
) -> None:
    here = await desk.register()
    elsewhere = await desk.register(
        registering_facility_id=str(desk.tenant.facility_ids[1]), phone=None, email=None, national_id=None
    )
    doctor = await desk.headers("doctor")
    refused = await desk.api.client.post(invitations_path(here), headers=doctor)
    assert (refused.status_code, refused.json()["code"]) == (403, "permission_denied")
    async with _grants_restored(desk.api):
        await _grant(desk.api, "doctor", "patient.invite")
        await _reload_through_the_session(desk.api)
        assert (await desk.api.client.post(invitations_path(here), headers=doctor)).status_code == 201
        outside = await desk.api.client.post(invitations_path(elsewhere), headers=doctor)
        assert (outside.status_code, outside.json()["code"]) == (403, "outside_your_facilities")
        grant = await desk.api.client.post(
            "/api/v1/break-glass",
            headers=doctor,
            json={"patient_id": elsewhere["id"], "reason": "Collapsed in the waiting area, needs history"},
        )
        assert grant.status_code == 201
        # Emergency access is for care, not for handing out accounts.
        still = await desk.api.client.post(invitations_path(elsewhere), headers=doctor)
        assert (still.status_code, still.json()["code"]) == (403, "outside_your_facilities")
    await _reload_through_the_session(desk.api)

    beta = await open_desk(desk.api, "beta")
    hidden = await desk.api.client.post(invitations_path(here), headers=beta.front_office)
    assert hidden.status_code == 404
    assert "Ayesha" not in hidden.text


async def test_inviting_and_opening_the_account_are_audited_and_the_patient_sees_both(desk: Desk) -> None:
    patient = await desk.register()
    invitation = await invite(desk, patient)
    headers = await sign_in_after_accepting(desk, invitation["token"])
    async with desk.api.unit_of_work() as session:
        entries = (
            await session.scalars(
                select(AuditEvent)
                .where(AuditEvent.action.in_(["patient.invite", "patient.account.open"]))
                .order_by(AuditEvent.id)
            )
        ).all()
        account_id = await session.scalar(select(User.id).where(User.email == PATIENT_EMAIL))
    assert [(entry.action, entry.outcome, entry.actor_roles) for entry in entries] == [
        ("patient.invite", "success", ["front_office"]),
        ("patient.account.open", "success", ["patient"]),
    ]
    assert all(entry.patient_id == uuid.UUID(patient["id"]) for entry in entries)
    assert entries[0].resource_id == invitation["id"]
    assert (entries[1].actor_type, entries[1].actor_id, entries[1].client_address) == (
        "user",
        account_id,
        "203.0.113.10",
    )
    # Neither the token nor its secret ends up in the audit log.
    assert invitation["token"].partition(".")[2] not in str([entry.details for entry in entries])

    log = await desk.api.all_pages("/api/v1/me/access-log", headers)
    assert [(item["actor_name"], item["action"], item["description"]) for item in log[:2]] == [
        ("you", "patient.account.open", "opened your online account"),
        ("front_office person", "patient.invite", "invited you to open an online account"),
    ]


async def sign_in_after_accepting(desk: Desk, token: str, email: str = PATIENT_EMAIL) -> dict[str, str]:
    opened = await accept(desk.api, token, email)
    assert opened.status_code == 201, opened.text
    return await sign_in_patient(desk.api, email)
