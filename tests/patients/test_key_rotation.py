"""Rotating the master key: every patient data key and index key is re-wrapped under the new primary while
readers keep reading, nothing changed or erased meanwhile is overwritten, servers on a key file follow the new
key by themselves, and afterwards the old master key can be dropped from the ring."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import delete, select, update

from sehat.access.models import BreakGlassGrant
from sehat.core.crypto import (
    DecryptionError,
    KeyRing,
    associated_data,
    new_data_key,
    rewrap_data_key,
    wrap_data_key,
)
from sehat.core.tenant_scope import enter_organization
from sehat.models import metadata
from sehat.patients.models import PATIENTS_TABLE, OrganizationIndexKey, PatientKey
from sehat.patients.rotation import (
    SEALED_COLUMNS,
    add_primary_key,
    next_key_id,
    read_patient_key_batch,
    reseal_values,
    rewrap_keys,
    rewrap_rows,
    write_patient_key_batch,
)
from sehat.patients.vault import KEY_FILE_RELOAD_SECONDS, PatientVault
from tests.conftest import Api, Tenant
from tests.patients.conftest import open_desk

K1 = KeyRing.generate_entry("k1")
K2 = KeyRing.generate_entry("k2")
READERS = 8
# A few hundred patients, re-wrapped in small batches, so that reads and batches interleave many times.
PATIENTS = 200
BATCH = 7


def _phone(number: int) -> str:
    """A distinct valid Indian mobile number per patient, as front office types it."""
    return f"98{number:08d}"


async def _register(
    api: Api, tenant: Tenant, headers: dict[str, str], count: int, *, first: int = 0
) -> list[dict[str, Any]]:
    async def one(number: int) -> dict[str, Any]:
        response = await api.client.post(
            "/api/v1/patients",
            headers=headers,
            json={
                "registering_facility_id": str(tenant.facility_ids[0]),
                "given_name": f"Given{number}",
                "family_name": f"Family{number}",
                "birth_date": "1980-01-01",
                "sex": "female",
                "phone": _phone(number),
            },
        )
        assert response.status_code == 201, response.text
        return dict(response.json())

    # One after another: on SQLite concurrent writers only queue for the lock, and more slowly than in turn.
    return [await one(number) for number in range(first, first + count)]


async def _kek_ids(api: Api) -> tuple[list[str], list[str]]:
    """Every patient key's and index key's master key id, read outside the tenant walls."""
    async with api.unit_of_work() as session:
        patient_keys = list(await session.scalars(select(PatientKey.kek_id)))
        index_keys = list(await session.scalars(select(OrganizationIndexKey.kek_id)))
    return patient_keys, index_keys


async def _read_correctly(api: Api, headers: dict[str, str], patient: dict[str, Any]) -> str | None:
    """None when the patient reads back whole and is found by phone; otherwise what went wrong."""
    response = await api.client.get(f"/api/v1/patients/{patient['id']}", headers=headers)
    if response.status_code != 200:
        return f"GET {patient['id']}: {response.status_code}"
    body = response.json()
    wanted = {name: patient[name] for name in ("given_name", "family_name", "phone", "mrn")}
    if {name: body.get(name) for name in wanted} != wanted:
        return f"GET {patient['id']}: wrong values"
    found = await api.client.get("/api/v1/patients", headers=headers, params={"phone": patient["phone"]})
    if found.status_code != 200:
        return f"search {patient['id']}: {found.status_code}"
    if [item["id"] for item in found.json()["items"]] != [patient["id"]]:
        return f"search {patient['id']}: wrong patients"
    return None


class _Tally:
    """Reads counted by the readers, which the test can wait on."""

    def __init__(self) -> None:
        self.count = 0
        self._waiting: list[tuple[int, asyncio.Event]] = []

    def add(self) -> None:
        self.count += 1
        for target, reached in self._waiting:
            if self.count >= target:
                reached.set()

    async def reach(self, target: int) -> None:
        reached = asyncio.Event()
        self._waiting.append((target, reached))
        if self.count >= target:
            reached.set()
        await reached.wait()


async def test_rotation_while_eight_readers_read_fails_no_read_and_then_the_old_key_can_be_retired(
    start_api: Callable[..., Any],
) -> None:
    async with start_api(master_key=K1) as api:
        desk = await open_desk(api, "alpha")
        patients = await _register(api, desk.tenant, desk.front_office, PATIENTS)
        doctor = await desk.headers("doctor")
        # A ring-sealed value bound to an organization: an emergency access reason.
        outside = await api.client.post(
            "/api/v1/patients",
            headers=desk.front_office,
            json={
                "registering_facility_id": str(desk.tenant.facility_ids[1]),
                "given_name": "Outside",
                "birth_date": "1990-05-05",
                "sex": "male",
            },
        )
        granted = await api.client.post(
            "/api/v1/break-glass",
            headers=doctor,
            json={"patient_id": outside.json()["id"], "reason": "unconscious in the emergency room"},
        )
        assert granted.status_code == 201, granted.text
        second_factors = dict(api.mfa_secrets)
        # The patients, and the one outside the doctor's facilities.
        keys = PATIENTS + 1
        assert await _kek_ids(api) == (["k1"] * keys, ["k1"])

    # Every server now runs the ring with the new key first; the old one still opens what is not re-wrapped yet.
    async with start_api(master_key=f"{K2},{K1}") as api:
        stop = asyncio.Event()
        reads = _Tally()
        failures: list[str] = []

        async def reader(offset: int) -> None:
            number = offset
            while not stop.is_set():
                failure = await _read_correctly(api, desk.front_office, patients[number % len(patients)])
                if failure is not None:
                    failures.append(failure)
                reads.add()
                number += READERS

        written: list[dict[str, Any]] = []

        async def writer() -> None:
            # Front office keeps registering: those keys are under k2 from the start, and rotation skips them.
            while not stop.is_set():
                written.extend(await _register(api, desk.tenant, desk.front_office, 1, first=PATIENTS + len(written)))

        readers = [asyncio.create_task(reader(offset * 29)) for offset in range(READERS)]
        readers.append(asyncio.create_task(writer()))
        await reads.reach(READERS)
        before = reads.count
        progress: list[tuple[int, int]] = []

        async def between_batches(done: int, total: int) -> None:
            progress.append((done, total))
            # At least one read completes between consecutive batches, whatever the backend's scheduling (SQLite
            # serializes transactions, and could otherwise run the whole rotation before a reader gets its turn).
            await reads.reach(reads.count + 1)

        report = await rewrap_keys(api.database, api.auth.key_ring, batch_size=BATCH, on_progress=between_batches)
        during = reads.count - before
        # And they go on reading keys that are all under the new key now.
        await reads.reach(reads.count + READERS)
        stop.set()
        await asyncio.gather(*readers)

        assert failures == []
        # The readers really read while keys were being re-wrapped, batch after batch.
        assert during >= READERS
        assert written
        assert report.rewrapped_patient_keys == keys
        assert report.rewrapped_index_keys == 1
        assert report.remaining == {}
        # The index key, then each batch of patient keys.
        assert progress[-1] == (keys + 1, keys + 1)
        assert len(progress) == 1 + -(-keys // BATCH)
        assert await _kek_ids(api) == (["k2"] * (keys + len(written)), ["k2"])
        for patient in written:
            assert await _read_correctly(api, desk.front_office, patient) is None

        # Signing keys, TOTP secrets and the emergency access reason are re-sealed under the new key too.
        sealed = await reseal_values(api.database, api.auth.key_ring)
        assert sealed.remaining == {}
        assert sealed.resealed["users.mfa_secret_sealed"] == len(second_factors)
        assert sealed.resealed["signing_keys.private_key_sealed"] >= 1
        assert sealed.resealed["break_glass_grants.reason_sealed"] == 1
        again = await rewrap_keys(api.database, api.auth.key_ring)
        assert (again.rewrapped_patient_keys, again.rewrapped_index_keys, again.remaining) == (0, 0, {})

    # The old master key retired: a server with the new key alone starts, signs staff in and reads everyone.
    async with start_api(master_key=K2) as api:
        api.mfa_secrets.update(second_factors)
        headers = await api.headers_for(desk.tenant.emails["front_office"])
        for patient in patients:
            assert await _read_correctly(api, headers, patient) is None
        async with api.unit_of_work() as session:
            grant = (await session.execute(select(BreakGlassGrant))).scalar_one()
        reason = KeyRing.parse(K2).open(
            grant.reason_sealed,
            associated_data("break_glass_grants", "reason_sealed", grant.id, grant.organization_id),
        )
        assert reason == b"unconscious in the emergency room"


async def test_rotation_leaves_a_key_erased_or_rewritten_after_it_was_read_as_it_is(
    start_api: Callable[..., Any],
) -> None:
    async with start_api(master_key=K1) as api:
        desk = await open_desk(api, "alpha")
        erased, rewritten, untouched = await _register(api, desk.tenant, desk.front_office, 3)
    async with start_api(master_key=f"{K2},{K1}") as api:
        ring, organization_id = api.auth.key_ring, desk.tenant.organization_id
        async with api.database.unit_of_work() as session:
            await enter_organization(session, organization_id)
            rows = await read_patient_key_batch(session, organization_id, "k2", uuid.UUID(int=0), 10)
        assert len(rows) == 3
        rewrapped = rewrap_rows(ring, organization_id, PATIENTS_TABLE, rows)
        wrapped = {str(patient_id): key for patient_id, key in rows}

        # Between the read and the write, one patient is erased (the key row goes) and another's key is
        # rewritten by someone else (another rotation run, with its own nonce).
        competing = rewrap_data_key(
            ring,
            wrapped[rewritten["id"]],
            organization_id=organization_id,
            owner_table=PATIENTS_TABLE,
            owner_id=uuid.UUID(rewritten["id"]),
        )
        async with api.database.unit_of_work() as session:
            await enter_organization(session, organization_id)
            await session.execute(delete(PatientKey).where(PatientKey.patient_id == uuid.UUID(erased["id"])))
            await session.execute(
                update(PatientKey)
                .where(PatientKey.patient_id == uuid.UUID(rewritten["id"]))
                .values(wrapped_key=competing, kek_id="k2")
            )

        async with api.database.unit_of_work() as session:
            await enter_organization(session, organization_id)
            written = await write_patient_key_batch(session, organization_id, "k2", rewrapped)
        assert written == 1

        async with api.unit_of_work() as session:
            keys = {str(row.patient_id): row for row in await session.scalars(select(PatientKey))}
        assert erased["id"] not in keys
        assert keys[rewritten["id"]].wrapped_key == competing
        ours = next(row.new for row in rewrapped if str(row.owner_id) == untouched["id"])
        assert (keys[untouched["id"]].wrapped_key, keys[untouched["id"]].kek_id) == (ours, "k2")
        assert keys[untouched["id"]].rewrapped_at is not None
        # The erased patient has no key left to open; the others read as before.
        shell = await api.client.get(f"/api/v1/patients/{erased['id']}", headers=desk.front_office)
        assert shell.status_code == 200 and "given_name" not in shell.json()
        for patient in (rewritten, untouched):
            assert await _read_correctly(api, desk.front_office, patient) is None


async def test_a_server_on_a_key_file_reloads_it_when_it_meets_the_new_key_and_keeps_reading(
    start_api: Callable[..., Any], tmp_path: Path
) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(K1 + "\n")
    key_file.chmod(0o600)
    async with start_api(master_key=None, master_key_file=key_file) as api:
        # The vault a server builds from its settings: it follows the key file.
        vault = PatientVault.for_settings(api.auth.key_ring, api.app.state.settings)
        api.app.state.patient_vault = vault
        desk = await open_desk(api, "alpha")
        before = await _register(api, desk.tenant, desk.front_office, 3)

        # `sehat keys rotate` in another process: the new key goes first in the file, then keys are re-wrapped.
        assert add_primary_key(key_file) == "k2"
        report = await rewrap_keys(api.database, KeyRing.parse(key_file.read_text()), batch_size=2)
        assert report.rewrapped_patient_keys == 3
        assert vault.key_ring.key_ids == ("k1",)

        for patient in before:
            assert await _read_correctly(api, desk.front_office, patient) is None
        assert vault.key_ring.key_ids == ("k2", "k1")
        # Patients registered from now on get keys under the new primary.
        (after,) = await _register(api, desk.tenant, desk.front_office, 1)
        async with api.unit_of_work() as session:
            kek_id = await session.scalar(
                select(PatientKey.kek_id).where(PatientKey.patient_id == uuid.UUID(after["id"]))
            )
        assert kek_id == "k2"


def test_the_key_file_is_read_again_at_most_once_a_second(tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(K1 + "\n")
    vault = PatientVault(KeyRing.parse(K1), phone_region="IN", key_file=key_file)
    organization_id, patient_id = uuid.uuid4(), uuid.uuid4()
    k3 = KeyRing.generate_entry("k3")
    wrapped = wrap_data_key(
        KeyRing.parse(k3),
        new_data_key(),
        organization_id=organization_id,
        owner_table=PATIENTS_TABLE,
        owner_id=patient_id,
    )
    # A key under a master key the file does not hold: one reload, then the read fails as any bad key does.
    with pytest.raises(DecryptionError):
        vault.open_patient_key(organization_id, patient_id, wrapped)
    # The key arrives in the file; within the second nothing reads the file again.
    key_file.write_text(f"{k3}\n{K1}\n")
    with pytest.raises(DecryptionError):
        vault.open_patient_key(organization_id, patient_id, wrapped)
    assert vault.key_ring.key_ids == ("k1",)
    time.sleep(KEY_FILE_RELOAD_SECONDS + 0.05)
    vault.open_patient_key(organization_id, patient_id, wrapped)
    assert vault.key_ring.key_ids == ("k3", "k1")


def test_a_ring_from_the_environment_is_never_reloaded() -> None:
    vault = PatientVault(KeyRing.parse(K1), phone_region="IN")
    organization_id, patient_id = uuid.uuid4(), uuid.uuid4()
    wrapped = wrap_data_key(
        KeyRing.parse(K2),
        new_data_key(),
        organization_id=organization_id,
        owner_table=PATIENTS_TABLE,
        owner_id=patient_id,
    )
    # Operators restart servers with the new ring before rotating: a key under an unknown master key fails.
    with pytest.raises(DecryptionError):
        vault.open_patient_key(organization_id, patient_id, wrapped)
    assert vault.reload_key_ring() is False
    assert vault.key_ring.key_ids == ("k1",)


@pytest.mark.parametrize(
    ("existing", "expected"),
    [(("k1",), "k2"), (("k2", "k1"), "k3"), (("test7",), "test8"), (("main",), "main1"), (("a" * 32,), "k1")],
)
def test_a_new_master_key_id_follows_the_primarys_numbering(existing: tuple[str, ...], expected: str) -> None:
    assert next_key_id(existing) == expected


# --- the commands -------------------------------------------------------------------------------------------


def _sehat(env: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sehat", *arguments], env=env, capture_output=True, text=True, timeout=120
    )


def _env(database_url: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SEHAT_")}
    environment.update(
        SEHAT_DATABASE_URL=database_url,
        # Where make_settings lets the test app write its audit checkpoints.
        SEHAT_AUDIT_CHECKPOINT_FILE=str(tmp_path / "audit-checkpoints.jsonl"),
        SEHAT_LOG_LEVEL="WARNING",
        # No terminal, as in CI: the progress bar prints its label once instead of redrawing.
        CI="true",
        **extra,
    )
    return environment


def _status(env: dict[str, str]) -> dict[str, Any]:
    result = _sehat(env, "keys", "status", "--json")
    assert result.returncode == 0, result.stderr
    return dict(json.loads(result.stdout))


async def test_keys_rotate_on_a_key_file_adds_a_key_first_rewraps_everything_and_status_says_when_k1_is_free(
    start_api: Callable[..., Any], database_url: str, tmp_path: Path
) -> None:
    key_file = tmp_path / "master.key"
    key_file.write_text(K1 + "\n")
    key_file.chmod(0o600)
    async with start_api(master_key=None, master_key_file=key_file) as api:
        desk = await open_desk(api, "alpha")
        patients = await _register(api, desk.tenant, desk.front_office, 5)
        second_factors = dict(api.mfa_secrets)
    env = _env(database_url, tmp_path, SEHAT_MASTER_KEY_FILE=str(key_file))

    before = _status(env)
    assert before["patient_keys"] == {"k1": 5}
    assert before["organization_index_keys"] == {"k1": 1}
    assert before["sealed"]["users.mfa_secret_sealed"] == {"k1": len(second_factors)}
    text = _sehat(env, "keys", "status")
    assert text.returncode == 0
    assert "master key ring: k1 (primary)" in text.stdout

    rotated = _sehat(env, "keys", "rotate", "--batch-size", "2")
    assert rotated.returncode == 0, rotated.stderr
    assert f"new master key k2 written first in {key_file}" in rotated.stdout
    assert "re-wrapping data keys under k2" in rotated.stdout
    assert "re-wrapped 5 patient data keys and 1 organization index keys under k2" in rotated.stdout
    assert "run `sehat keys rotate --no-new-key`" in rotated.stdout
    lines = key_file.read_text().splitlines()
    assert lines[0].startswith("k2:") and lines[1:] == [K1]
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600

    # Servers already running did not have k2 when they opened second factors and signing keys: those wait.
    middle = _status(env)
    assert middle["patient_keys"] == {"k2": 5}
    assert middle["organization_index_keys"] == {"k2": 1}
    assert middle["retirable"]["k1"]["servers"]["users.mfa_secret_sealed"] == len(second_factors)

    resealed = _sehat(env, "keys", "rotate", "--no-new-key")
    assert resealed.returncode == 0, resealed.stderr
    assert "no key generated: re-wrapping toward k2" in resealed.stdout
    assert f"users.mfa_secret_sealed {len(second_factors)}" in resealed.stdout
    after = _status(env)
    assert after["retirable"]["k1"]["servers"] == {}
    # The audit log cannot be re-keyed: verifying it still takes k1, and status says so.
    assert after["retirable"]["k1"]["audit"]["audit_events"] > 0
    assert "keep it where `sehat audit verify` can use it" in _sehat(env, "keys", "status").stdout

    # k1 retired from the ring: a server with k2 alone signs staff in and reads every patient.
    key_file.write_text(lines[0] + "\n")
    async with start_api(master_key=None, master_key_file=key_file) as api:
        api.mfa_secrets.update(second_factors)
        headers = await api.headers_for(desk.tenant.emails["front_office"])
        for patient in patients:
            assert await _read_correctly(api, headers, patient) is None


async def test_keys_rotate_with_the_ring_from_the_environment_generates_nothing_and_rewraps_toward_its_first_key(
    start_api: Callable[..., Any], database_url: str, tmp_path: Path
) -> None:
    async with start_api(master_key=K1) as api:
        desk = await open_desk(api, "alpha")
        await _register(api, desk.tenant, desk.front_office, 4)
    env = _env(database_url, tmp_path, SEHAT_MASTER_KEY=f"{K2},{K1}")

    refused = _sehat(env, "keys", "rotate", "--new-key")
    assert refused.returncode == 2
    assert "put the new key first in the ring of every server" in refused.stderr

    rotated = _sehat(env, "keys", "rotate", "--batch-size", "3")
    assert rotated.returncode == 0, rotated.stderr
    assert "no key generated: re-wrapping toward k2, the first key of the ring in SEHAT_MASTER_KEY" in rotated.stdout
    assert "re-wrapped 4 patient data keys and 1 organization index keys under k2" in rotated.stdout
    assert "re-sealed under k2: signing_keys.private_key_sealed" in rotated.stdout
    status = _status(env)
    assert status["patient_keys"] == {"k2": 4}
    assert all(set(counts) <= {"k2"} for counts in status["sealed"].values())
    assert status["retirable"]["k1"]["servers"] == {}


def test_every_column_sealed_under_the_ring_is_re_sealed_by_rotation() -> None:
    # A new "*_sealed" column that rotation does not know would keep the old master key needed forever.
    sealed = {f"{table.name}.{column.name}" for table in metadata.sorted_tables for column in table.columns}
    assert {name for name in sealed if name.endswith("_sealed")} == {column.name for column in SEALED_COLUMNS}
