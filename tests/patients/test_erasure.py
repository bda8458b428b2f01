"""Erasure by crypto-shredding (GDPR Art. 17): the patient's data key and search entries are destroyed, every
encrypted column nulled, consent evidence overwritten, accounts deactivated and scrubbed; what remains is a
pseudonymous shell and the audit trail. Afterwards no API and no key left in the database recovers the data,
and a restored copy of the patients table is noise. The erasure ledger, replayed after a restore, erases
again whatever the restore brought back."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import delete, func, select, update
from typer.testing import CliRunner

from sehat import cli
from sehat.core.audit import AuditEvent
from sehat.core.crypto import DecryptionError, FieldCipher, associated_data, unwrap_data_key
from sehat.identity.models import AuthSession, User
from sehat.patients.consent import has_consent
from sehat.patients.erasure import erasure_ledger, ledger_lines, replay_erasures
from sehat.patients.models import (
    ENCRYPTED_FIELDS,
    OrganizationIndexKey,
    Patient,
    PatientConsent,
    PatientInvitation,
    PatientKey,
    PatientRegistration,
    PatientSearchEntry,
)
from sehat.patients.rights_schemas import ConsentKind
from sehat.patients.vault import INDEX_KEYS_TABLE
from tests.conftest import MASTER_KEY, Api
from tests.patients.conftest import PHONE, Desk, open_desk
from tests.patients.test_consent import CHECKBOX, SIGNATURE, checkbox, patient_headers, record, user_id
from tests.patients.test_export import add_invitation

ERASE = {"reason": "patient_request", "reference": "DSR-2026-17"}
ACCOUNT_EMAIL = "ayesha@patients.test"
WALK_IN_EMAIL = "walk-in@patients.test"
# Every identifying value of the victim, as typed and as stored; none may come back from anywhere.
SECRETS = (
    "Ayesha",
    "Siddiqui",
    "1987-04-12",
    "9812345678",
    "ayesha.siddiqui@example.org",
    "Jail Road",
    "Lahore",
    "234567890123",
    "Imran",
    "3001234567",
    "ur-PK",
    "00000001",
    "appointment reminders",
    SIGNATURE[40:80],
    ACCOUNT_EMAIL,
)
# The bystanders are deliberately unlike the victim, so finding them proves nothing about her.
BYSTANDER = {
    "given_name": "Bilal",
    "family_name": "Chaudhry",
    "birth_date": "1990-01-01",
    "phone": "+92 321 7654321",
    "email": "bilal@example.org",
    "national_id": {"kind": "cnic", "value": "35202-1234567-1"},
    "emergency_contact": None,
    "address": None,
}


def reveals(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret.lower() in text.lower()]


@dataclass
class Captured:
    """The victim as a backup taken before the erasure would hold it."""

    organization_id: uuid.UUID
    patient_id: uuid.UUID
    fields: dict[str, bytes]
    wrapped_key: bytes
    evidence: dict[uuid.UUID, bytes]


async def capture(api: Api, patient_id: str) -> Captured:
    async with api.unit_of_work() as session:
        patient = await session.get(Patient, uuid.UUID(patient_id))
        assert patient is not None
        wrapped = await session.scalar(select(PatientKey.wrapped_key).where(PatientKey.patient_id == patient.id))
        evidence = dict(
            (
                await session.execute(
                    select(PatientConsent.id, PatientConsent.evidence).where(PatientConsent.patient_id == patient.id)
                )
            ).all()
        )
    fields = {name: getattr(patient, name) for name in ENCRYPTED_FIELDS if getattr(patient, name) is not None}
    assert wrapped is not None
    return Captured(patient.organization_id, patient.id, fields, wrapped, evidence)


def ciphertexts(captured: Captured) -> list[tuple[bytes, dict[str, Any]]]:
    """Each captured ciphertext with the place it was sealed for (organization, table, column, row)."""
    places: list[tuple[bytes, dict[str, Any]]] = [
        (value, {"table": "patients", "column": name, "row_id": captured.patient_id})
        for name, value in captured.fields.items()
    ]
    places += [
        (value, {"table": "patient_consents", "column": "evidence", "row_id": consent_id})
        for consent_id, value in captured.evidence.items()
    ]
    return [(value, {"organization_id": captured.organization_id, **place}) for value, place in places]


async def remaining_ciphers(api: Api) -> list[FieldCipher]:
    """A cipher for every data key left in the database, of every organization: each patient's, and each
    organization's blind-index key."""
    vault = api.app.state.patient_vault
    async with api.unit_of_work() as session:
        patient_keys = (
            await session.execute(select(PatientKey.organization_id, PatientKey.patient_id, PatientKey.wrapped_key))
        ).all()
        index_keys = (
            await session.execute(select(OrganizationIndexKey.organization_id, OrganizationIndexKey.wrapped_key))
        ).all()
    ciphers = [
        vault.open_patient_key(organization, patient, wrapped) for organization, patient, wrapped in patient_keys
    ]
    ciphers += [
        FieldCipher(
            unwrap_data_key(
                vault.key_ring,
                wrapped,
                organization_id=organization,
                owner_table=INDEX_KEYS_TABLE,
                owner_id=organization,
            )
        )
        for organization, wrapped in index_keys
    ]
    return ciphers


async def add_matched_registration(desk: Desk, patient_id: uuid.UUID) -> uuid.UUID:
    """A self-registration matched to the patient, as the account service stores it: the typed details sealed
    under the key ring (there is no patient key yet when someone signs up)."""
    await desk.api.add_patient_account(desk.tenant.organization_id, WALK_IN_EMAIL, patient_id=None)
    registration_id = uuid.uuid4()
    details = orjson.dumps({"given_name": "Ayesha", "family_name": "Siddiqui", "phone": PHONE})
    sealed = desk.api.auth.key_ring.seal(
        details,
        associated_data("patient_registrations", "details_sealed", registration_id, desk.tenant.organization_id),
    )
    async with desk.api.unit_of_work() as session:
        session.add(
            PatientRegistration(
                id=registration_id,
                organization_id=desk.tenant.organization_id,
                user_id=await user_id(desk.api, WALK_IN_EMAIL),
                details_sealed=sealed,
                status="pending",
                matched_patient_id=patient_id,
            )
        )
    return registration_id


async def erase(desk: Desk, patient_id: str) -> dict[str, Any]:
    response = await desk.api.client.post(f"/api/v1/patients/{patient_id}/erase", headers=desk.admin, json=ERASE)
    assert response.status_code == 200, response.text
    return response.json()


async def every_api_view(desk: Desk, patient_id: str) -> dict[str, str]:
    """What every route that could show the victim answers now, by route."""
    client = desk.api.client
    searches = {
        "phone": {"phone": PHONE},
        "mrn": {"mrn": "00000001"},
        "email": {"email": "ayesha.siddiqui@example.org"},
        "national_id": {"national_id": "2345 6789 0123", "national_id_kind": "aadhaar"},
        "name": {"name": "Ayesha Siddiqui", "birth_date": "1987-04-12"},
    }
    views: dict[str, str] = {}
    for key, params in searches.items():
        response = await client.get("/api/v1/patients", headers=desk.front_office, params=params)
        assert response.status_code == 200, response.text
        assert response.json()["items"] == [], key
        views[f"search by {key}"] = response.text
    for name, path, headers in (
        ("read as front office", f"/api/v1/patients/{patient_id}", desk.front_office),
        ("read as admin", f"/api/v1/patients/{patient_id}", desk.admin),
        ("list", "/api/v1/patients", desk.admin),
        ("export", f"/api/v1/patients/{patient_id}/export", desk.admin),
        ("consents", f"/api/v1/patients/{patient_id}/consents", desk.admin),
    ):
        response = await client.get(path, headers=headers)
        assert response.status_code == 200, (name, response.text)
        views[name] = response.text
    audit = await client.get("/api/v1/audit-events", headers=desk.admin, params={"patient_id": patient_id})
    assert audit.status_code == 200, audit.text
    views["audit events"] = audit.text
    return views


async def test_after_erasure_no_api_and_no_key_left_in_the_database_recovers_the_patient(api: Api) -> None:
    desk = await open_desk(api, "alpha")
    victim = await desk.register()
    await desk.register(**BYSTANDER)
    beta = await open_desk(api, "beta")
    await beta.register()  # the same person's data in another organization, under that organization's keys
    consents = [
        await record(desk, victim["id"], checkbox("sms")),
        await record(desk, victim["id"], {**checkbox("research"), "evidence_kind": "signature", "evidence": SIGNATURE}),
    ]
    victim_id = uuid.UUID(victim["id"])
    patient_token = await patient_headers(desk, victim["id"], email=ACCOUNT_EMAIL)
    account_id = await user_id(api, ACCOUNT_EMAIL)
    pending_invitation, _ = await add_invitation(api, desk.tenant.organization_id, victim_id)
    accepted_invitation, _ = await add_invitation(api, desk.tenant.organization_id, victim_id, accepted_by=account_id)
    registration_id = await add_matched_registration(desk, victim_id)
    captured = await capture(api, victim["id"])
    assert set(captured.fields) == set(ENCRYPTED_FIELDS) and len(captured.evidence) == 2
    # The control: with the key it had, every captured ciphertext opens. What fails below fails for want of it.
    own_cipher = api.app.state.patient_vault.open_patient_key(captured.organization_id, victim_id, captured.wrapped_key)
    opened = [own_cipher.decrypt(value, **place) for value, place in ciphertexts(captured)]
    assert b"Ayesha" in opened and CHECKBOX.encode() in opened
    audit_entries_before = await _audit_count(api, victim_id)

    shell = await erase(desk, victim["id"])

    # The shell: who it was (an id), never what.
    assert shell["status"] == "erased" and shell["erased_at"] is not None
    assert shell["id"] == victim["id"] and shell["legal_hold"] is False
    assert not set(shell) & set(ENCRYPTED_FIELDS)
    async with api.unit_of_work() as session:
        stored = await session.get(Patient, victim_id)
        assert stored is not None
        assert {name: getattr(stored, name) for name in ENCRYPTED_FIELDS} == dict.fromkeys(ENCRYPTED_FIELDS)
        assert (stored.status, stored.version) == ("erased", 2)
        # The data key is destroyed, not moved: no row anywhere holds it.
        assert await session.scalar(select(PatientKey).where(PatientKey.patient_id == victim_id)) is None
        assert await session.scalar(select(PatientKey).where(PatientKey.wrapped_key == captured.wrapped_key)) is None
        assert await _count(session, PatientSearchEntry, PatientSearchEntry.patient_id == victim_id) == 0
        evidence = (
            await session.scalars(select(PatientConsent.evidence).where(PatientConsent.patient_id == victim_id))
        ).all()
        assert evidence == [b"", b""]  # the decisions stay as shells
        invitations = (
            await session.scalars(select(PatientInvitation.id).where(PatientInvitation.patient_id == victim_id))
        ).all()
        assert invitations == [accepted_invitation] and pending_invitation not in invitations
        registration = await session.get(PatientRegistration, registration_id)
        assert registration is not None and registration.details_sealed == b""
        account = await session.get(User, account_id)
        assert account is not None
        assert (account.active, account.full_name) == (False, "Erased patient")
        assert account.email == f"erased-{account_id.hex}@erased.invalid"
        open_sessions = await _count(
            session, AuthSession, AuthSession.user_id == account_id, AuthSession.revoked_at.is_(None)
        )
        assert open_sessions == 0
    # Audit entries stay: the erasure adds its own and removes none.
    assert await _audit_count(api, victim_id) == audit_entries_before + 1

    # No API gives anything back.
    views = await every_api_view(desk, victim["id"])
    assert {name: reveals(text) for name, text in views.items() if reveals(text)} == {}
    exported = orjson.loads(views["export"])
    assert exported["patient"]["status"] == "erased"
    assert [consent["evidence"] for consent in exported["consents"]] == [None, None]
    assert {consent["id"] for consent in exported["consents"]} == {consent["id"] for consent in consents}
    assert (await api.client.get("/api/v1/me/patient", headers=patient_token)).status_code == 401
    assert (await api.sign_in(ACCOUNT_EMAIL)).status_code == 401
    async with api.unit_of_work() as session:
        assert await has_consent(session, desk.tenant.organization_id, victim_id, ConsentKind.sms) is False

    # No key left in the database, of any patient or organization, opens any captured ciphertext.
    ciphers = await remaining_ciphers(api)
    assert len(ciphers) == 4  # the bystander, the other organization's patient, two index keys
    opened_now = []
    for cipher in ciphers:
        for value, place in ciphertexts(captured):
            try:
                opened_now.append(cipher.decrypt(value, **place))
            except DecryptionError:
                continue
    assert opened_now == []

    # A backup of the patients table alone, restored, is noise: the key it needs is gone with the erasure.
    async with api.unit_of_work() as session:
        await session.execute(
            update(Patient)
            .where(Patient.id == victim_id)
            .values(**captured.fields, status="active", erased_at=None)
            .execution_options(synchronize_session=False)
        )
    views = await every_api_view(desk, victim["id"])
    assert {name: reveals(text) for name, text in views.items() if reveals(text)} == {}


async def test_erasing_an_erased_patient_is_refused_with_409(desk: Desk) -> None:
    patient = await desk.register()
    await erase(desk, patient["id"])
    response = await desk.api.client.post(f"/api/v1/patients/{patient['id']}/erase", headers=desk.admin, json=ERASE)
    assert response.status_code == 409
    assert response.json()["code"] == "patient_erased"


async def test_an_erased_patient_cannot_be_changed_or_given_consent(desk: Desk) -> None:
    patient = await desk.register()
    await erase(desk, patient["id"])
    changed = await desk.api.client.patch(
        f"/api/v1/patients/{patient['id']}",
        headers={**desk.front_office, "If-Match": '"2"'},
        json={"given_name": "Ayesha"},
    )
    assert changed.status_code == 409
    consent = await desk.api.client.post(
        f"/api/v1/patients/{patient['id']}/consents", headers=desk.front_office, json=checkbox("sms")
    )
    assert consent.status_code == 409
    assert consent.json()["code"] == "patient_erased"


async def test_erasure_needs_its_permission_a_known_reason_and_the_same_organization(desk: Desk) -> None:
    patient = await desk.register()
    url = f"/api/v1/patients/{patient['id']}/erase"
    assert (await desk.api.client.post(url, headers=desk.front_office, json=ERASE)).status_code == 403
    for field, body in (
        ("reason", {"reason": "because"}),
        ("reason", {}),
        ("reference", {"reason": "other", "reference": "Ayesha asked on the phone"}),
        ("reference", {"reason": "other", "reference": "x" * 65}),
    ):
        response = await desk.api.client.post(url, headers=desk.admin, json=body)
        assert response.status_code == 422, response.text
        assert field in [error["field"] for error in response.json()["errors"]]
        assert "Ayesha" not in response.text
    other = await open_desk(desk.api, "beta")
    response = await desk.api.client.post(url, headers=other.admin, json=ERASE)
    assert response.status_code == 404
    read = await desk.api.client.get(f"/api/v1/patients/{patient['id']}", headers=desk.front_office)
    assert read.json()["status"] == "active" and read.json()["given_name"] == "Ayesha"


async def test_erasure_is_audited_with_its_reason_and_reference(desk: Desk) -> None:
    patient = await desk.register()
    await erase(desk, patient["id"])
    async with desk.api.unit_of_work() as session:
        entry = await session.scalar(
            select(AuditEvent).where(
                AuditEvent.patient_id == uuid.UUID(patient["id"]), AuditEvent.action == "patient.erase"
            )
        )
    assert entry is not None
    assert (entry.outcome, entry.actor_roles) == ("success", ["org_admin"])
    assert entry.details == {
        "facility_id": patient["registering_facility_id"],
        "reason": "patient_request",
        "reference": "DSR-2026-17",
    }


async def test_records_merged_into_the_patient_are_erased_with_it(desk: Desk) -> None:
    survivor = await desk.register()
    duplicate = await desk.register(phone="+91 98111 22233", email=None, national_id=None)
    merged = await desk.api.client.post(
        f"/api/v1/patients/{duplicate['id']}/merge", headers=desk.admin, json={"survivor_id": survivor["id"]}
    )
    assert merged.status_code == 200, merged.text
    await erase(desk, survivor["id"])
    duplicate_id = uuid.UUID(duplicate["id"])
    async with desk.api.unit_of_work() as session:
        stored = await session.get(Patient, duplicate_id)
        assert stored is not None and stored.status == "erased" and stored.given_name is None
        assert await session.scalar(select(PatientKey).where(PatientKey.patient_id == duplicate_id)) is None
        entry = await session.scalar(
            select(AuditEvent).where(AuditEvent.patient_id == duplicate_id, AuditEvent.action == "patient.erase")
        )
    assert entry is not None and entry.details["erased_with"] == survivor["id"]
    found = await desk.api.client.get("/api/v1/patients", headers=desk.front_office, params={"phone": "9811122233"})
    assert found.json()["items"] == []


# --- the erasure ledger and its replay after a restore -----------------------------------------------------


async def test_the_ledger_lists_erased_patients_of_every_organization_by_id_and_time_only(api: Api) -> None:
    alpha = await open_desk(api, "alpha")
    beta = await open_desk(api, "beta")
    erased_alpha = await alpha.register()
    await alpha.register(**BYSTANDER)  # not erased: not listed
    erased_beta = await beta.register()
    shells = [await erase(alpha, erased_alpha["id"]), await erase(beta, erased_beta["id"])]

    entries = await erasure_ledger(api.database)
    assert sorted((entry.organization_id, entry.patient_id, entry.erased_at) for entry in entries) == sorted(
        (desk.tenant.organization_id, uuid.UUID(shell["id"]), datetime.fromisoformat(shell["erased_at"]))
        for desk, shell in zip((alpha, beta), shells, strict=True)
    )
    lines = list(ledger_lines(entries))
    assert all(set(orjson.loads(line)) == {"organization_id", "patient_id", "erased_at"} for line in lines)
    assert reveals("\n".join(lines)) == []


async def test_replaying_the_ledger_after_a_restore_erases_again_what_the_restore_brought_back(
    desk: Desk,
) -> None:
    api = desk.api
    patient = await desk.register()
    patient_id = uuid.UUID(patient["id"])
    await record(desk, patient["id"], checkbox("sms"))
    await patient_headers(desk, patient["id"], email=ACCOUNT_EMAIL)
    account_id = await user_id(api, ACCOUNT_EMAIL)
    backup = await _backup(api, patient_id, account_id)
    await erase(desk, patient["id"])
    ledger = await erasure_ledger(api.database)

    # A restore from before the erasure brings everything back, key included, and the record reads again.
    await _restore(api, backup)
    read = await api.client.get(f"/api/v1/patients/{patient['id']}", headers=desk.admin)
    assert read.json()["given_name"] == "Ayesha"

    result = await replay_erasures(api.database, api.app.state.audit, ledger)
    assert (result.listed, result.present, result.reapplied) == (1, 1, [patient_id])
    views = await every_api_view(desk, patient["id"])
    assert {name: reveals(text) for name, text in views.items() if reveals(text)} == {}
    async with api.unit_of_work() as session:
        stored = await session.get(Patient, patient_id)
        assert stored is not None and stored.status == "erased"
        assert stored.erased_at == ledger[0].erased_at
        assert all(getattr(stored, name) is None for name in ENCRYPTED_FIELDS)
        assert await session.scalar(select(PatientKey).where(PatientKey.patient_id == patient_id)) is None
        assert await _count(session, PatientSearchEntry, PatientSearchEntry.patient_id == patient_id) == 0
        assert (await session.scalars(select(PatientConsent.evidence))).all() == [b""]
        account = await session.get(User, account_id)
        assert account is not None and not account.active and account.email.endswith("@erased.invalid")
        replayed = await _count(
            session, AuditEvent, AuditEvent.patient_id == patient_id, AuditEvent.action == "patient.erase.replay"
        )
    assert replayed == 1

    # Idempotent: a second replay finds nothing to do.
    again = await replay_erasures(api.database, api.app.state.audit, ledger)
    assert (again.listed, again.present, again.reapplied) == (1, 1, [])


async def test_the_cli_prints_the_ledger_and_replays_a_ledger_file(desk: Desk, tmp_path: Path) -> None:
    patient = await desk.register()
    await erase(desk, patient["id"])
    runner = CliRunner()
    environment = {"SEHAT_DATABASE_URL": desk.api.app.state.settings.database_url, "SEHAT_MASTER_KEY": MASTER_KEY}
    # The commands run their own event loop, so they run on a thread of their own here.
    printed = await asyncio.to_thread(runner.invoke, cli.app, ["patients", "erasure-ledger"], env=environment)
    assert printed.exit_code == 0, printed.output
    lines = printed.output.splitlines()
    assert [orjson.loads(line)["patient_id"] for line in lines] == [patient["id"]]

    ledger = tmp_path / "ledger.jsonl"
    ledger.write_text(printed.output)
    replayed = await asyncio.to_thread(
        runner.invoke, cli.app, ["patients", "replay-erasures", str(ledger)], env=environment
    )
    assert replayed.exit_code == 0, replayed.output
    assert "1 erasures listed, 1 of those patients present, 0 erased again" in replayed.output

    ledger.write_text(printed.output + "not a ledger line\n")
    refused = await asyncio.to_thread(
        runner.invoke, cli.app, ["patients", "replay-erasures", str(ledger)], env=environment
    )
    assert refused.exit_code == 1
    assert "Ledger line 2" in refused.output


# --- helpers -----------------------------------------------------------------------------------------------


async def _count(session: Any, model: Any, *conditions: Any) -> int:
    return int(await session.scalar(select(func.count()).select_from(model).where(*conditions)))


async def _audit_count(api: Api, patient_id: uuid.UUID) -> int:
    async with api.unit_of_work() as session:
        return await _count(session, AuditEvent, AuditEvent.patient_id == patient_id)


@dataclass
class _Backup:
    patient: dict[str, Any]
    key: dict[str, Any]
    index: list[dict[str, Any]]
    consents: dict[uuid.UUID, bytes]
    account: dict[str, Any]


def _columns(row: Any, names: Any) -> dict[str, Any]:
    return {name: getattr(row, name) for name in names}


async def _backup(api: Api, patient_id: uuid.UUID, account_id: uuid.UUID) -> _Backup:
    async with api.unit_of_work() as session:
        patient = await session.get(Patient, patient_id)
        key = await session.get(PatientKey, patient_id)
        index = (
            await session.scalars(select(PatientSearchEntry).where(PatientSearchEntry.patient_id == patient_id))
        ).all()
        consents = dict((await session.execute(select(PatientConsent.id, PatientConsent.evidence))).all())
        account = await session.get(User, account_id)
        return _Backup(
            patient=_columns(patient, (*ENCRYPTED_FIELDS, "id", "status", "erased_at")),
            key=_columns(key, ("patient_id", "organization_id", "wrapped_key", "kek_id", "created_at")),
            index=[_columns(entry, ("organization_id", "kind", "digest", "patient_id")) for entry in index],
            consents=consents,
            account=_columns(account, ("id", "email", "full_name", "active")),
        )


async def _restore(api: Api, backup: _Backup) -> None:
    """What restoring the tables from a backup taken before the erasure does to this patient's rows."""
    async with api.unit_of_work() as session:
        patient = {name: value for name, value in backup.patient.items() if name != "id"}
        await session.execute(
            update(Patient)
            .where(Patient.id == backup.patient["id"])
            .values(**patient)
            .execution_options(synchronize_session=False)
        )
        await session.execute(delete(PatientKey).where(PatientKey.patient_id == backup.key["patient_id"]))
        session.add(PatientKey(**backup.key))
        session.add_all(PatientSearchEntry(**entry) for entry in backup.index)
        for consent_id, evidence in backup.consents.items():
            await session.execute(
                update(PatientConsent)
                .where(PatientConsent.id == consent_id)
                .values(evidence=evidence)
                .execution_options(synchronize_session=False)
            )
        account = {name: value for name, value in backup.account.items() if name != "id"}
        await session.execute(
            update(User)
            .where(User.id == backup.account["id"])
            .values(**account)
            .execution_options(synchronize_session=False)
        )
