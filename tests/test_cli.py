"""The `sehat` command: serve and demo start a real server; migrate, admin and key commands do their job."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pyotp
import pytest

from sehat.core.actor import Role
from sehat.core.crypto import KeyRing
from sehat.core.migrate import head_revision
from tests.identity.test_permissions_as_data import DEFAULT_GRANTS


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SEHAT_")}
    environment.update(
        SEHAT_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}",
        SEHAT_MASTER_KEY_FILE=str(tmp_path / "master.key"),
        SEHAT_ARGON2_TIME_COST="1",
        SEHAT_ARGON2_MEMORY_KIB="8",
        SEHAT_ARGON2_PARALLELISM="1",
        SEHAT_LOG_LEVEL="WARNING",
    )
    return environment


def _sehat(env: dict[str, str], *arguments: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sehat", *arguments], env=env, input=stdin, capture_output=True, text=True, timeout=60
    )


@contextmanager
def _running(env: dict[str, str], *arguments: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "sehat", *arguments, "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        else:
            pytest.fail("the server did not answer /healthz within 30 s")
        yield base, process
    finally:
        process.terminate()
        process.wait(timeout=15)


def test_help_lists_every_command() -> None:
    result = _sehat(dict(os.environ), "--help")
    assert result.returncode == 0
    for command in ("serve", "worker", "migrate", "demo", "admin", "keys", "permissions"):
        assert command in result.stdout
    for group, command in (
        ("admin", "create-platform-admin"),
        ("keys", "rotate-signing"),
        ("keys", "rotate"),
        ("keys", "status"),
        ("permissions", "list"),
    ):
        # The whole name: "rotate" must be listed itself, not only inside "rotate-signing".
        assert re.search(rf"\s{re.escape(command)}\s", _sehat(dict(os.environ), group, "--help").stdout)


def test_serve_migrates_a_fresh_sqlite_database_and_answers_health_checks(cli_env: dict[str, str]) -> None:
    with _running(cli_env, "serve") as (base, _):
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok"}


def test_serve_refuses_several_workers_without_redis(cli_env: dict[str, str]) -> None:
    result = _sehat(cli_env, "serve", "--workers", "2")
    assert result.returncode == 2
    assert "SEHAT_REDIS_URL" in result.stderr


def test_migrate_reports_the_revision_and_is_repeatable(cli_env: dict[str, str]) -> None:
    first = _sehat(cli_env, "migrate")
    again = _sehat(cli_env, "migrate")
    assert first.returncode == again.returncode == 0
    assert f"revision {head_revision()}" in first.stdout


def test_permissions_list_prints_every_role_with_the_grants_in_the_database(cli_env: dict[str, str]) -> None:
    assert _sehat(cli_env, "migrate").returncode == 0
    listed = _sehat(cli_env, "permissions", "list")
    assert listed.returncode == 0, listed.stderr
    grants = {line.split()[0]: line.split()[1:] for line in listed.stdout.splitlines()}
    # The CLI prints what the database holds, sorted: the defaults the migrations grant.
    assert grants == {role: sorted(granted) for role, granted in DEFAULT_GRANTS.items()}
    assert set(grants) == {role.value for role in Role}


def test_create_platform_admin_reads_the_password_from_stdin_and_that_admin_can_sign_in(
    cli_env: dict[str, str],
) -> None:
    assert _sehat(cli_env, "migrate").returncode == 0
    created = _sehat(
        cli_env,
        "admin",
        "create-platform-admin",
        "--email",
        "Root@Example.org",
        "--password-stdin",
        stdin="a long enough passphrase\n",
    )
    assert created.returncode == 0, created.stderr
    assert "a long enough passphrase" not in created.stdout + created.stderr
    duplicate = _sehat(
        cli_env,
        "admin",
        "create-platform-admin",
        "--email",
        "root@example.org",
        "--password-stdin",
        stdin="another long passphrase\n",
    )
    assert duplicate.returncode == 1
    assert "already exists" in duplicate.stderr
    weak = _sehat(
        cli_env, "admin", "create-platform-admin", "--email", "x@example.org", "--password-stdin", stdin="short\n"
    )
    assert weak.returncode == 1
    with _running(cli_env, "serve") as (base, _):
        signed_in = httpx.post(
            f"{base}/api/v1/auth/token", data={"username": "root@example.org", "password": "a long enough passphrase"}
        )
    assert signed_in.status_code == 200
    assert signed_in.json()["scope"] == "mfa_enroll"


def test_rotate_signing_adds_a_key_that_a_restarted_server_signs_with(cli_env: dict[str, str]) -> None:
    import jwt

    assert _sehat(cli_env, "migrate").returncode == 0
    _sehat(cli_env, "admin", "create-platform-admin", "--email", "r@example.org", "--password-stdin", stdin="p" * 14)
    rotated = _sehat(cli_env, "keys", "rotate-signing")
    assert rotated.returncode == 0, rotated.stderr
    new_kid = rotated.stdout.split("new signing key ")[1].split()[0]
    with _running(cli_env, "serve") as (base, _):
        token = httpx.post(f"{base}/api/v1/auth/token", data={"username": "r@example.org", "password": "p" * 14})
    assert jwt.get_unverified_header(token.json()["access_token"])["kid"] == new_kid


def test_demo_prints_its_accounts_and_they_sign_in_with_their_second_factor(cli_env: dict[str, str]) -> None:
    from sehat.demo import DEMO_PASSWORD, DEMO_TOTP_SECRET

    with _running(cli_env, "demo") as (base, _):
        doctor = httpx.post(
            f"{base}/api/v1/auth/token",
            data={
                "username": "doctor@demo.sehat.local",
                "password": DEMO_PASSWORD,
                "otp": pyotp.TOTP(DEMO_TOTP_SECRET).now(),
            },
        )
        assert doctor.status_code == 200, doctor.text
        headers = {"Authorization": f"Bearer {doctor.json()['access_token']}"}
        facilities = httpx.get(f"{base}/api/v1/facilities", headers=headers).json()["items"]
        assert sorted(f["timezone"] for f in facilities) == ["Asia/Karachi", "Europe/London"]
        # The registry has patients, found by phone, and the demo patient's account opens its own record.
        found = httpx.get(f"{base}/api/v1/patients", headers=headers, params={"phone": "+923214445566"}).json()
        assert [(hit["given_name"], hit["family_name"]) for hit in found["items"]] == [("Zainab", "Hussain")]
        # The doctor has a schedule with two bookings on it.
        booked = httpx.get(f"{base}/api/v1/appointments", headers=headers).json()["items"]
        assert [appointment["status"] for appointment in booked] == ["booked", "booked"]
        patient = httpx.post(
            f"{base}/api/v1/auth/token", data={"username": "patient@demo.sehat.local", "password": DEMO_PASSWORD}
        )
        assert patient.status_code == 200, patient.text
        own = httpx.get(
            f"{base}/api/v1/me/patient", headers={"Authorization": f"Bearer {patient.json()['access_token']}"}
        )
        assert own.status_code == 200 and own.json()["given_name"] == "Imran"
    # Running the demo again reuses its data instead of failing on duplicates.
    with _running(cli_env, "demo") as (base, process):
        assert httpx.get(f"{base}/healthz").status_code == 200
    output = process.stdout.read() if process.stdout else ""
    assert "doctor@demo.sehat.local" in output
    assert DEMO_PASSWORD in output


def test_demo_is_refused_in_production(cli_env: dict[str, str]) -> None:
    production = {
        **cli_env,
        "SEHAT_ENVIRONMENT": "production",
        "SEHAT_MASTER_KEY": KeyRing.generate_entry(),
        "SEHAT_TRUSTED_PROXIES": "127.0.0.1",
    }
    result = _sehat(production, "demo")
    assert result.returncode == 2
    assert "refused in production" in result.stderr


def test_audit_verify_reports_ok_then_names_the_first_tampered_entry(cli_env: dict[str, str], tmp_path: Path) -> None:
    import sqlite3

    env = {
        **cli_env,
        "SEHAT_AUDIT_CHECKPOINT_FILE": str(tmp_path / "checkpoints.jsonl"),
        "SEHAT_AUDIT_SEAL_SETTLE_SECONDS": "0",
    }
    assert _sehat(env, "migrate").returncode == 0
    _sehat(env, "admin", "create-platform-admin", "--email", "r@example.org", "--password-stdin", stdin="p" * 14)
    with _running(env, "serve") as (base, _):
        for password in ("p" * 14, "wrong password", "p" * 14):
            httpx.post(f"{base}/api/v1/auth/token", data={"username": "r@example.org", "password": password})
    assert "sealed 3 entries" in _sehat(env, "audit", "seal").stdout
    clean = _sehat(env, "audit", "verify")
    assert clean.returncode == 0, clean.stderr
    assert clean.stdout.startswith("OK: 3 sealed entries")
    database = sqlite3.connect(env["SEHAT_DATABASE_URL"].removeprefix("sqlite+aiosqlite:///"))
    database.execute("DROP TRIGGER audit_events_no_update")
    database.execute("UPDATE audit_events SET outcome = 'success' WHERE id = 2")
    database.commit()
    database.close()
    tampered = _sehat(env, "audit", "verify")
    assert tampered.returncode == 1
    assert "TAMPERED: the entry sealed at 2 was edited" in tampered.stderr


def test_servers_without_background_jobs_leave_sealing_to_the_worker(cli_env: dict[str, str], tmp_path: Path) -> None:
    env = {
        **cli_env,
        "SEHAT_AUDIT_CHECKPOINT_FILE": str(tmp_path / "checkpoints.jsonl"),
        "SEHAT_AUDIT_SEAL_SETTLE_SECONDS": "0",
        "SEHAT_AUDIT_SEAL_INTERVAL_SECONDS": "0.2",
    }
    assert _sehat(env, "migrate").returncode == 0
    with _running({**env, "SEHAT_BACKGROUND_JOBS": "false"}, "serve") as (base, _):
        for _attempt in range(3):
            httpx.post(f"{base}/api/v1/auth/token", data={"username": "nobody@example.org", "password": "x" * 14})
        time.sleep(1)
    # The server sealed nothing in the background: all three entries are still there to seal.
    assert _sehat(env, "audit", "seal").stdout.strip() == "sealed 3 entries"
    with _running({**env, "SEHAT_BACKGROUND_JOBS": "false"}, "serve") as (base, _):
        for _attempt in range(2):
            httpx.post(f"{base}/api/v1/auth/token", data={"username": "nobody@example.org", "password": "x" * 14})
    worker = subprocess.Popen(
        [sys.executable, "-m", "sehat", "worker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        time.sleep(4)
    finally:
        worker.terminate()
        worker.wait(timeout=15)
    assert _sehat(env, "audit", "seal").stdout.strip() == "sealed 0 entries"
    assert _sehat(env, "audit", "verify").returncode == 0
