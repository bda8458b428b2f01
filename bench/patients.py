"""Issue 4 benchmark: what the patient vault costs, on PostgreSQL, against the real server (2 workers).

What is measured (``--part`` picks some; all three by default)
  create    Patients registered per second over HTTP: ``POST /api/v1/patients`` by a front-office user with
            TOTP, every request a different, realistic patient (wrk with a Lua ``request()`` hook), each create
            writing the patient, its wrapped data key, five blind-index entries, an MRN from the counter row and
            an audit entry in one transaction. Two servers of the benchmark build ``bench/patients_app.py`` run
            side by side with the same settings: one is the real app (encryption on), the other stores every
            field in plaintext with its data key unwrapped (encryption off; blind indexes unchanged). They are
            loaded in turn, alternating, after a warm-up; the figure is the ratio of the medians (target: at
            least 0.7). Ceiling, each round: ``GET /healthz`` of the same server, same connections. Beside them:
            each build with one connection, and what PostgreSQL's backends were doing during each round
            (``pg_stat_activity`` sampled every 20 ms: running, waiting for a lock, idle in a transaction).
            Needs wrk (installed with apt-get when missing): the python load generator only sends GETs.
  search    Search by phone with 100,000 patients in one organization: ``GET /api/v1/patients?phone=…`` for
            random existing numbers as a front desk types them (10 digits, no country code). A checked
            sequential run (every answer must be exactly the right patient), then wrk at concurrency 1 and at
            ``--search-connections``; ceiling: ``GET /healthz`` at the same concurrencies. Also the plan of the
            search query as the service sends it (``EXPLAIN (ANALYZE, BUFFERS)``, as the application role).
  rotation  Re-wrapping 100,000 patient data keys (``sehat.patients.rotation.rewrap_keys``) under a new master
            key, in this process and as the application role (as ``sehat keys rotate`` runs with the servers'
            settings), while ``--readers`` concurrent readers in another process read random patients over
            HTTP and check every field they get back. The server runs with the ring ``k2,k1`` (new primary
            first); the patients were registered under ``k1`` alone (later parts run with ``k2,k1`` too).
            Figures: rotation seconds (target: under 60) and failed reads (target: 0); afterwards every key
            names ``k2`` and opens with ``k2`` alone, so ``k1`` could be retired.

How
  A dedicated database (``sehat_bench_patients``) is re-created and migrated as the owner; servers connect as
  the application role, so row-level security applies as in production. An organization, an administrator, a
  facility and a front-office account with TOTP are created through the real services in this process. The
  100,000 patients are seeded in this process through the same steps ``create_patient`` takes (the
  ``PatientCreate`` schema, the service's normalization, ``PatientVault`` keys, field encryption and blind
  indexes) and loaded with COPY as the owner, with the MRN counter set after them; they are registered over
  about two years. The parts run in the order search, rotation, create, on one database: rotation needs the
  seeded patients, and the plaintext build's patients must not be in the way of either.

Output: a table on stdout and the same figures as JSON in ``bench/results/patients.json``.

    python3 dev.py bench patients                                   # all three parts
    python3 dev.py bench patients --part search --part rotation     # some of them
    python3 dev.py bench patients --part create --rounds 5 --duration 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import json
import multiprocessing
import os
import platform
import queue
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import asyncpg
import httpx
import pyotp

import auth
from harness import (
    RESULTS_DIR,
    VENV_BIN,
    BackendSampler,
    BenchmarkError,
    LoadResult,
    ServerProcess,
    app_url,
    choose_load_generator,
    free_loopback_port,
    log_step,
    owner_url,
    postgres_version,
    prepare_database,
    run_benchmark,
    run_python_load,
    run_wrk,
)
from patients_app import ENCRYPTION_SWITCH
from sehat.settings import Settings

PARTS = ("search", "rotation", "create")
PATIENTS_PATH = "/api/v1/patients"
HEALTHZ = auth.HEALTHZ
ADMIN_EMAIL = "vault-admin@bench.test"
FRONT_OFFICE_EMAIL = "front-desk@bench.test"
FACTORY = "patients_app:create_bench_app"

TARGET_CREATE_RATIO = 0.7
TARGET_SEARCH_P99_MS = 10.0
TARGET_ROTATION_SECONDS = 60.0
CONTAMINATION_CORES = 0.25
# Registrations queue for the organization's MRN counter row; one answered late is slow, not lost: its latency
# shows in the figures instead of a wrk timeout (2 s by default) counted as an error.
CREATE_TIMEOUT_SECONDS = 30.0
# How many seeded patients the search load and the readers draw from (all of them are checked on the way).
SAMPLE_SIZE = 5_000
# Registrations under load are numbered apart: run r, wrk thread k sends r * RUN_SPAN + k * LANE_SPAN + 1, + 2, ...
# (a thread sends far fewer than LANE_SPAN in one run); numbers stay below 10**8, the span of a phone number.
LANE_SPAN = 100_000
RUN_SPAN = 1_000_000

GIVEN_NAMES = ("Aarav", "Priya", "Rohan", "Ananya", "Vikram", "Sana", "Arjun", "Meera", "Kabir", "Fatima", "Ishaan")
FAMILY_NAMES = ("Sharma", "Khan", "Patel", "Iyer", "Reddy", "Das", "Singh", "Nair", "Gupta", "Ali", "Mehta", "Rao")
# Seeded patients' mobile numbers start 98, those registered under load 99: the two sets never share a number,
# so a search for a seeded number has exactly one answer whatever ran before.
SEEDED_PREFIX = "98"
CREATED_PREFIX = "99"


@dataclass(frozen=True)
class Options:
    parts: tuple[str, ...]
    database: str
    workers: int
    threads: int
    create_connections: int
    search_connections: int
    duration_seconds: float
    warmup_seconds: float
    rounds: int
    patients: int
    checked_searches: int
    readers: int
    batch_size: int
    load_generator: str
    background: str


def parse_options(arguments: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python3 dev.py bench patients", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--part", action="append", choices=PARTS, help="run only this part (repeatable); default: all three"
    )
    parser.add_argument("--database", default="sehat_bench_patients", help="PostgreSQL database to drop and re-create")
    parser.add_argument("--workers", type=int, default=2, help="worker processes per server")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--create-connections", type=int, default=32, help="concurrent clients registering patients")
    parser.add_argument("--search-connections", type=int, default=16, help="concurrent clients in the search load")
    parser.add_argument("--duration", type=float, default=8, help="seconds per measured load")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of warm-up load")
    parser.add_argument("--rounds", type=int, default=3, help="create rounds per build, alternating")
    parser.add_argument("--patients", type=int, default=100_000, help="patients seeded for search and rotation")
    parser.add_argument("--checked-searches", type=int, default=2_000, help="sequential searches checked one by one")
    parser.add_argument("--readers", type=int, default=8, help="concurrent readers during the rotation")
    parser.add_argument("--batch-size", type=int, default=1_000, help="keys re-wrapped per rotation batch")
    parser.add_argument("--load-generator", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument(
        "--background",
        choices=("worker", "server"),
        default="worker",
        help="where audit sealing and the anomaly rules run: a `sehat worker` beside servers started with "
        "SEHAT_BACKGROUND_JOBS=false (the production layout), or inside each server worker (embedded mode)",
    )
    parsed = parser.parse_args(arguments)
    chosen = set(parsed.part or PARTS)
    return Options(
        parts=tuple(part for part in PARTS if part in chosen),
        database=parsed.database,
        workers=parsed.workers,
        threads=parsed.threads,
        create_connections=parsed.create_connections,
        search_connections=parsed.search_connections,
        duration_seconds=parsed.duration,
        warmup_seconds=parsed.warmup,
        rounds=parsed.rounds,
        patients=parsed.patients,
        checked_searches=parsed.checked_searches,
        readers=parsed.readers,
        batch_size=parsed.batch_size,
        load_generator=parsed.load_generator,
        background=parsed.background,
    )


def owner_dsn(database: str) -> str:
    return owner_url(database).replace("+asyncpg", "")


# --- who registers and searches ----------------------------------------------------------------------------


@dataclass
class FrontDesk:
    """The front-office account the load runs as, with its session's tokens (access tokens live 15 minutes, so
    each part starts by refreshing)."""

    organization_id: uuid.UUID
    facility_id: uuid.UUID
    user_id: uuid.UUID
    access_token: str
    refresh_token: str

    def refresh(self, base_url: str) -> dict[str, str]:
        """A fresh access token through ``POST /auth/refresh``; returns the request headers that carry it."""
        with httpx.Client(base_url=base_url, timeout=30) as client:
            response = client.post("/api/v1/auth/refresh", json={"refresh_token": self.refresh_token})
        expect(response, 200, "token refresh")
        self.access_token = response.json()["access_token"]
        self.refresh_token = response.json()["refresh_token"]
        return self.headers

    @property
    def headers(self) -> dict[str, str]:
        return auth.bearer(self.access_token)


def expect(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise BenchmarkError(f"{what}: HTTP {response.status_code} {response.text[:500]}")


async def create_front_desk(settings: Settings) -> FrontDesk:
    """An organization with an administrator and a facility, and a front-office clerk of that facility who has
    enrolled TOTP, all through the services; the clerk's full session comes from confirming the second factor."""
    from sehat.app import build_auth
    from sehat.core.actor import Actor, Audience, Role, SystemActor, TokenScope
    from sehat.core.db import Database, create_engine
    from sehat.identity.permissions import USER_MANAGE
    from sehat.identity.schemas import OrgAdminCreate, UserCreate
    from sehat.identity.service import confirm_mfa, create_org_admin, create_user, enroll_mfa
    from sehat.tenancy.schemas import FacilityCreate, OrganizationCreate
    from sehat.tenancy.service import create_facility, create_organization

    database = Database(create_engine(settings))
    auth_runtime = build_auth(settings, None)
    system = SystemActor(name="bench")
    try:
        async with database.unit_of_work() as session:
            # The server loads this signing key at start-up; tokens minted here are the server's own.
            await auth_runtime.signing_keys.ensure_current(session)
            organization = await create_organization(
                session, system, OrganizationCreate(name="Benchmark Hospital", slug="bench-hospital")
            )
            admin = await create_org_admin(
                session,
                auth_runtime,
                system,
                organization.id,
                OrgAdminCreate(email=ADMIN_EMAIL, full_name="Vault Admin", password=auth.BENCH_PASSWORD),
            )
            as_admin = Actor(
                user_id=admin.id,
                organization_id=organization.id,
                roles=frozenset({Role.org_admin}),
                audience=Audience.staff,
                session_id=uuid.uuid4(),
                token_id="bench-setup",
                permissions=frozenset({USER_MANAGE}),
            )
            facility = await create_facility(
                session, as_admin, FacilityCreate(name="Benchmark Hospital Pune", code="PUNE", timezone="Asia/Kolkata")
            )
            clerk = await create_user(
                session,
                auth_runtime,
                as_admin,
                UserCreate(
                    email=FRONT_OFFICE_EMAIL,
                    full_name="Front Desk",
                    roles=["front_office"],
                    facility_ids=[facility.id],
                    password=auth.BENCH_PASSWORD,
                ),
            )
            as_clerk = Actor(
                user_id=clerk.id,
                organization_id=organization.id,
                roles=frozenset({Role.front_office}),
                audience=Audience.staff,
                session_id=uuid.uuid4(),
                token_id="bench-setup",
                scope=TokenScope.mfa_enrollment,
            )
            enrolment = await enroll_mfa(session, auth_runtime, as_clerk)
            tokens = await confirm_mfa(session, auth_runtime, as_clerk, pyotp.TOTP(enrolment.secret).now())
        return FrontDesk(organization.id, facility.id, clerk.id, tokens.access_token, tokens.refresh_token)
    finally:
        await database.dispose()


# --- patients as a front desk registers them ---------------------------------------------------------------


def registration_fields(number: int, phone: str) -> dict[str, str]:
    """The values that make registration ``number`` differ from the others; ``registration_lua`` computes the
    same ones in wrk."""
    return {
        "given": GIVEN_NAMES[number % len(GIVEN_NAMES)],
        "family": FAMILY_NAMES[number // len(GIVEN_NAMES) % len(FAMILY_NAMES)],
        "birth_date": f"{1940 + number % 80}-{1 + number % 12:02d}-{1 + number % 28:02d}",
        "sex": ("female", "male")[number % 2],
        "phone": phone,
        "email": f"patient{number}@example.in",
        "aadhaar": f"2{number:011d}",
        "house": str(1 + number % 500),
        "contact_phone": f"97{number % 10**8:08d}",
    }


def registration_payload(fields: Mapping[str, str], facility_id: uuid.UUID) -> dict[str, Any]:
    """A full registration at a front desk: every demographic field the registry has, so every one is sealed."""
    return {
        "registering_facility_id": str(facility_id),
        "given_name": fields["given"],
        "family_name": fields["family"],
        "birth_date": fields["birth_date"],
        "sex": fields["sex"],
        "phone": fields["phone"],
        "email": fields["email"],
        "address": {
            "line1": f"{fields['house']} MG Road",
            "city": "Pune",
            "state": "Maharashtra",
            "postal_code": "411001",
            "country": "IN",
        },
        "national_id": {"kind": "aadhaar", "value": fields["aadhaar"]},
        "emergency_contact": {"name": "Next of Kin", "relationship": "spouse", "phone": fields["contact_phone"]},
        "preferred_language": "hi-IN",
    }


def seeded_phone(number: int) -> str:
    """A distinct 10-digit mobile number per seeded patient, scattered (48271 is prime to 10**8)."""
    return f"{SEEDED_PREFIX}{number * 48271 % 10**8:08d}"


def _lua_strings(values: Sequence[str]) -> str:
    return "{" + ", ".join(json.dumps(value) for value in values) + "}"


def registration_lua(facility_id: uuid.UUID, first_number: int) -> str:
    """wrk hooks that POST a different registration each time (registration ``first_number`` + thread lane +
    count), built from the same payload as the seed: the JSON has ``{name}`` holes that Lua fills."""
    holes = {name: "{" + name + "}" for name in registration_fields(0, "")}
    template = json.dumps(registration_payload(holes, facility_id))
    return f"""
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local template = [==[{template}]==]
local given = {_lua_strings(GIVEN_NAMES)}
local family = {_lua_strings(FAMILY_NAMES)}
local lanes = 0
function setup(thread)
  thread:set("lane", lanes)
  lanes = lanes + 1
end
local count = 0
function request()
  count = count + 1
  local n = {first_number} + lane * {LANE_SPAN} + count
  local fields = {{
    given = given[n % #given + 1],
    family = family[math.floor(n / #given) % #family + 1],
    birth_date = string.format("%d-%02d-%02d", 1940 + n % 80, 1 + n % 12, 1 + n % 28),
    sex = (n % 2 == 0) and "female" or "male",
    phone = string.format("{CREATED_PREFIX}%08d", n % 100000000),
    email = string.format("patient%d@example.in", n),
    aadhaar = string.format("2%011d", n),
    house = string.format("%d", 1 + n % 500),
    contact_phone = string.format("97%08d", n % 100000000),
  }}
  return wrk.format(nil, nil, nil, (template:gsub("{{([%w_]+)}}", fields)))
end
"""


def search_lua(phones: Sequence[str]) -> str:
    """wrk hooks that search for a random number of ``phones`` each time."""
    return f"""
local phones = {_lua_strings(phones)}
function init(args)
  math.randomseed(os.time() * 1000 + (lane or 0))
end
local lanes = 0
function setup(thread)
  thread:set("lane", lanes)
  lanes = lanes + 1
end
function request()
  return wrk.format("GET", "{PATIENTS_PATH}?phone=" .. phones[math.random(#phones)])
end
"""


# --- seeding -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeededPatient:
    """What a reader or a search must get back for one seeded patient."""

    id: str
    mrn: str
    typed_phone: str
    phone: str
    given_name: str
    family_name: str
    birth_date: str


@dataclass
class SeedReport:
    patients: int
    seconds: float
    sealing_seconds: float
    copy_seconds: float
    analyze_seconds: float
    rows: dict[str, int]
    sample: list[SeededPatient] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        figures = asdict(self)
        del figures["sample"]
        return figures


_PATIENT_COLUMNS = ("id", "organization_id", "registering_facility_id", "status", "version", "created_at", "updated_at")


def _sealed_batch(
    vault: Any, index_key: bytes, desk: FrontDesk, numbers: range, now: dt.datetime
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], list[tuple[Any, ...]], list[SeededPatient]]:
    """Rows of ``patients``, ``patient_keys`` and ``patient_search_index`` for registrations ``numbers``, made
    as ``service.create_patient`` makes them, by its own helpers, so that the app reads them back as its own."""
    from sehat.core.blind_index import IndexKind
    from sehat.patients import service
    from sehat.patients.models import ENCRYPTED_FIELDS, Patient, PatientStatus
    from sehat.patients.schemas import PatientCreate

    patients, keys, entries, seeded = [], [], [], []
    for number in numbers:
        payload = registration_payload(registration_fields(number, seeded_phone(number)), desk.facility_id)
        request = PatientCreate.model_validate(payload)
        values = service.normalized_fields(
            vault, request.model_dump(mode="python", exclude={"registering_facility_id"})
        )
        values["mrn"] = service.format_mrn(number)
        patient_id = uuid.uuid4()
        cipher, key_row = vault.new_patient_key(desk.organization_id, patient_id)
        patient = Patient(id=patient_id, organization_id=desk.organization_id)
        service.encrypt_fields(cipher, patient, values)
        # Registered over about two years, oldest first, as a clinic's registry grows.
        created_at = now - dt.timedelta(minutes=10 * (numbers.stop - number))
        clear = (patient_id, desk.organization_id, desk.facility_id, PatientStatus.active.value, 1, created_at)
        patients.append((*clear, created_at, *(getattr(patient, name) for name in ENCRYPTED_FIELDS)))
        keys.append((patient_id, desk.organization_id, key_row.wrapped_key, key_row.kek_id, created_at))
        for kind, digest in vault.digests(index_key, service.index_values(values, IndexKind)):
            entries.append((desk.organization_id, kind.value, digest, patient_id))
        seeded.append(
            SeededPatient(
                id=str(patient_id),
                mrn=values["mrn"],
                typed_phone=payload["phone"],
                phone=values["phone"],
                given_name=values["given_name"],
                family_name=values["family_name"],
                birth_date=values["birth_date"].isoformat(),
            )
        )
    return patients, keys, entries, seeded


async def seed_patients(settings: Settings, desk: FrontDesk, count: int, *, batch: int = 5_000) -> SeedReport:
    """``count`` patients of the desk's organization, sealed under the ring of ``settings``, loaded with COPY as
    the owner in one transaction; then the MRN counter is set past them and the tables are analysed."""
    from sehat.core.crypto import load_key_ring
    from sehat.core.db import Database, create_engine
    from sehat.patients.models import ENCRYPTED_FIELDS
    from sehat.patients.vault import PatientVault

    vault = PatientVault(load_key_ring(settings), phone_region=settings.default_phone_region)
    database = Database(create_engine(settings))
    try:
        async with database.unit_of_work() as session:
            # Created (or read) the way the first registration would, wrapped under the ring's primary key.
            index_key = await vault.index_key(session, desk.organization_id)
    finally:
        await database.dispose()

    rng = random.Random(4)
    sample_numbers = set(rng.sample(range(1, count + 1), min(SAMPLE_SIZE, count)))
    sample: list[SeededPatient] = []
    rows = {"patients": 0, "patient_keys": 0, "patient_search_index": 0}
    sealing = copying = 0.0
    started = time.perf_counter()
    now = dt.datetime.now(dt.UTC)
    connection = await asyncpg.connect(owner_dsn(database_name(settings)), timeout=10)
    try:
        async with connection.transaction():
            for first in range(1, count + 1, batch):
                numbers = range(first, min(first + batch, count + 1))
                step = time.perf_counter()
                patients, keys, entries, seeded = _sealed_batch(vault, index_key, desk, numbers, now)
                sealing += time.perf_counter() - step
                step = time.perf_counter()
                for table, records, columns in (
                    ("patients", patients, _PATIENT_COLUMNS + ENCRYPTED_FIELDS),
                    ("patient_keys", keys, ("patient_id", "organization_id", "wrapped_key", "kek_id", "created_at")),
                    ("patient_search_index", entries, ("organization_id", "kind", "digest", "patient_id")),
                ):
                    await connection.copy_records_to_table(table, records=records, columns=list(columns))
                    rows[table] += len(records)
                copying += time.perf_counter() - step
                sample += [patient for number, patient in zip(numbers, seeded, strict=True) if number in sample_numbers]
                if (first - 1) // batch % 5 == 4:
                    log_step(f"  {numbers.stop - 1:,} of {count:,} patients sealed and copied")
            await connection.execute(
                "INSERT INTO patient_mrn_counters (organization_id, last_value) VALUES ($1, $2) "
                "ON CONFLICT (organization_id) DO UPDATE SET last_value = GREATEST("
                "patient_mrn_counters.last_value, EXCLUDED.last_value)",
                desk.organization_id,
                count,
            )
        step = time.perf_counter()
        await connection.execute("ANALYZE patients, patient_keys, patient_search_index")
        analyze = time.perf_counter() - step
    finally:
        await connection.close()
    return SeedReport(
        patients=count,
        seconds=round(time.perf_counter() - started, 1),
        sealing_seconds=round(sealing, 1),
        copy_seconds=round(copying, 1),
        analyze_seconds=round(analyze, 1),
        rows=rows,
        sample=sample,
    )


def database_name(settings: Settings) -> str:
    return settings.database_url.rsplit("/", 1)[1]


# --- load --------------------------------------------------------------------------------------------------


def load(
    wrk: str | None,
    server: ServerProcess,
    path: str,
    headers: Mapping[str, str],
    *,
    connections: int,
    threads: int,
    seconds: float,
    script: str = "",
    timeout_seconds: float | None = None,
) -> LoadResult:
    """One load run. Without wrk, the python client sends ``path`` every time instead of the script's requests
    (it cannot vary them), so callers that need variety refuse it."""
    threads = min(threads, connections)
    if wrk is not None:
        return run_wrk(
            wrk,
            server.base_url,
            path,
            threads=threads,
            connections=connections,
            duration_seconds=seconds,
            headers=headers,
            server_pid=server.pid,
            script=script,
            timeout_seconds=timeout_seconds,
        )
    return run_python_load(
        server.base_url,
        path,
        threads=threads,
        connections=connections,
        duration_seconds=seconds,
        headers=headers,
        server_pid=server.pid,
    )


async def count_rows(database: str, organization_id: uuid.UUID) -> dict[str, int]:
    connection = await asyncpg.connect(owner_dsn(database), timeout=10)
    try:
        row = await connection.fetchrow(
            "SELECT (SELECT count(*) FROM patients WHERE organization_id = $1) AS patients, "
            "(SELECT count(*) FROM audit_events WHERE organization_id = $1 AND action = 'patient.create') AS entries",
            organization_id,
        )
    finally:
        await connection.close()
    assert row is not None
    return {"patients": int(row["patients"]), "entries": int(row["entries"])}


# --- part: create ------------------------------------------------------------------------------------------


def check_one_registration(server: ServerProcess, desk: FrontDesk, database: str, *, encrypted: bool) -> None:
    """One registration through ``server``, read back over HTTP and from the table: the build's switch must
    show in the stored row (a ciphertext, or the plain E.164 number)."""
    payload = registration_payload(registration_fields(1, f"{CREATED_PREFIX}00000001"), desk.facility_id)
    with httpx.Client(base_url=server.base_url, headers=desk.headers, timeout=30) as client:
        created = client.post(PATIENTS_PATH, json=payload)
        expect(created, 201, "registering one patient")
        read = client.get(f"{PATIENTS_PATH}/{created.json()['id']}")
    expect(read, 200, "reading the registered patient back")
    if read.json()["phone"] != f"+91{CREATED_PREFIX}00000001":
        raise BenchmarkError(f"the registered patient reads back wrong: {read.json()}")

    async def stored_phone() -> bytes:
        connection = await asyncpg.connect(owner_dsn(database), timeout=10)
        try:
            value: bytes = await connection.fetchval(
                "SELECT phone FROM patients WHERE id = $1", uuid.UUID(created.json()["id"])
            )
            return value
        finally:
            await connection.close()

    is_plaintext = asyncio.run(stored_phone()) == f"+91{CREATED_PREFIX}00000001".encode()
    if is_plaintext == encrypted:
        raise BenchmarkError(f"the {'encrypted' if encrypted else 'plaintext'} build stored the wrong kind of value")


def measure_creates(
    options: Options, wrk: str | None, environment: Mapping[str, str], desk: FrontDesk
) -> dict[str, Any]:
    if wrk is None:
        raise BenchmarkError(
            "the create part needs wrk: every request registers a different patient, which the python load "
            "generator (bench/loadgen.py, GET only) cannot send"
        )
    rounds: dict[str, list[LoadResult]] = {"encrypted": [], "plaintext": []}
    ceilings: list[LoadResult] = []
    checks: list[dict[str, Any]] = []
    runs = itertools.count(1)

    def register(server: ServerProcess, seconds: float, connections: int = options.create_connections) -> LoadResult:
        script = registration_lua(desk.facility_id, next(runs) * RUN_SPAN)
        return load(
            wrk,
            server,
            PATIENTS_PATH,
            desk.headers,
            connections=connections,
            threads=options.threads,
            seconds=seconds,
            script=script,
            timeout_seconds=CREATE_TIMEOUT_SECONDS,
        )

    log_step(f"starting two benchmark servers (encryption on, off), {options.workers} workers each")
    with (
        ServerProcess(
            {**environment, ENCRYPTION_SWITCH: "on"}, port=free_loopback_port(), workers=options.workers,
            log_path=RESULTS_DIR / "patients-encrypted-server.log", factory=FACTORY,
        ) as encrypted,
        ServerProcess(
            {**environment, ENCRYPTION_SWITCH: "off"}, port=free_loopback_port(), workers=options.workers,
            log_path=RESULTS_DIR / "patients-plaintext-server.log", factory=FACTORY,
        ) as plaintext,
    ):  # fmt: skip
        servers = {"encrypted": encrypted, "plaintext": plaintext}
        desk.refresh(encrypted.base_url)
        for name, server in servers.items():
            check_one_registration(server, desk, options.database, encrypted=name == "encrypted")
            log_step(f"warming up the {name} build for {options.warmup_seconds:g} s")
            register(server, options.warmup_seconds)

        def ceiling(seconds: float) -> LoadResult:
            return load(
                wrk,
                encrypted,
                HEALTHZ,
                {},
                connections=options.create_connections,
                threads=options.threads,
                seconds=seconds,
            )

        ceiling(options.warmup_seconds)
        for number in range(options.rounds):
            for name in ("encrypted", "plaintext") if number % 2 == 0 else ("plaintext", "encrypted"):
                before = asyncio.run(count_rows(options.database, desk.organization_id))
                log_step(f"round {number + 1}: registering through the {name} build, {options.duration_seconds:g} s")
                with BackendSampler(options.database) as backends:
                    result = register(servers[name], options.duration_seconds)
                rounds[name].append(result)
                time.sleep(0.5)  # requests cut off by wrk's deadline may still be committing
                after = asyncio.run(count_rows(options.database, desk.organization_id))
                checks.append(
                    {
                        "build": name,
                        "requests": result.requests,
                        "patients_written": after["patients"] - before["patients"],
                        "audit_entries_written": after["entries"] - before["entries"],
                        "postgres_backends": backends.mean_backends,
                    }
                )
            log_step(f"round {number + 1}: ceiling, {HEALTHZ}, {options.duration_seconds:g} s")
            ceilings.append(ceiling(options.duration_seconds))
        # One client at a time: the rate that a single registration's latency allows. Close to the rate under
        # load, it says registrations of one organization run one after the other.
        one_by_one = {}
        for name, server in servers.items():
            log_step(f"registering one at a time through the {name} build, {options.duration_seconds:g} s")
            one_by_one[name] = register(server, options.duration_seconds, connections=1)

    rates = {
        name: statistics.median(result.requests_per_second for result in results) for name, results in rounds.items()
    }
    cpu = {
        name: statistics.median(result.server_cpu_us_per_request or 0.0 for result in results)
        for name, results in rounds.items()
    }
    ceiling = statistics.median(result.requests_per_second for result in ceilings)
    ratio = rates["encrypted"] / rates["plaintext"] if rates["plaintext"] else 0.0
    errors = sum(result.errors for results in rounds.values() for result in results)
    # wrk counts answered requests only; one cut off at its deadline may have committed all the same.
    writes_match = all(
        0 <= row[written] - row["requests"] <= options.create_connections
        for row in checks
        for written in ("patients_written", "audit_entries_written")
    )
    return {
        "connections": options.create_connections,
        "rounds": options.rounds,
        "encrypted": [result.to_json() for result in rounds["encrypted"]],
        "plaintext": [result.to_json() for result in rounds["plaintext"]],
        "healthz_ceiling": [result.to_json() for result in ceilings],
        "one_connection": {name: result.to_json() for name, result in one_by_one.items()},
        "encrypted_per_second_median": round(rates["encrypted"], 1),
        "plaintext_per_second_median": round(rates["plaintext"], 1),
        "healthz_per_second_median": round(ceiling, 1),
        "ratio_encrypted_to_plaintext": round(ratio, 3),
        "server_cpu_us_per_create": {name: round(value) for name, value in cpu.items()},
        "encryption_cpu_us_per_create": round(cpu["encrypted"] - cpu["plaintext"]),
        "writes_per_round": checks,
        "errors": errors,
        "in_process_sealing_us": sealing_cost_in_process(environment, desk),
        "targets": {
            "ratio": {"minimum": TARGET_CREATE_RATIO, "measured": round(ratio, 3), "met": ratio >= TARGET_CREATE_RATIO},
            "one_patient_and_one_entry_per_create": {"met": writes_match},
            "no_errors": {"measured_errors": errors, "met": errors == 0},
        },
    }


def sealing_cost_in_process(environment: Mapping[str, str], desk: FrontDesk, samples: int = 2_000) -> dict[str, float]:
    """What one registration's cryptography costs in this process (new data key, its wrapping and the twelve
    field ciphertexts), with the real vault and the plaintext one, to set beside the server's CPU per create."""
    from patients_app import PlaintextVault
    from sehat.core.crypto import KeyRing
    from sehat.patients import service
    from sehat.patients.models import Patient
    from sehat.patients.schemas import PatientCreate
    from sehat.patients.vault import PatientVault

    key_ring = KeyRing.parse(environment["SEHAT_MASTER_KEY"])
    request = PatientCreate.model_validate(
        registration_payload(registration_fields(7, f"{CREATED_PREFIX}00000007"), desk.facility_id)
    )
    values = service.normalized_fields(
        PatientVault(key_ring, phone_region="IN"),
        request.model_dump(mode="python", exclude={"registering_facility_id"}),
    )
    values["mrn"] = service.format_mrn(7)
    costs = {}
    for name, vault in (
        ("encrypted", PatientVault(key_ring, phone_region="IN")),
        ("plaintext", PlaintextVault(key_ring, phone_region="IN")),
    ):
        patients = [Patient(id=uuid.uuid4(), organization_id=desk.organization_id) for _ in range(samples)]
        started = time.perf_counter()
        for patient in patients:
            cipher, _row = vault.new_patient_key(desk.organization_id, patient.id)
            service.encrypt_fields(cipher, patient, values)
        costs[name] = round((time.perf_counter() - started) / samples * 1e6, 1)
    costs["difference"] = round(costs["encrypted"] - costs["plaintext"], 1)
    return costs


# --- part: search ------------------------------------------------------------------------------------------


def checked_searches(server: ServerProcess, desk: FrontDesk, sample: Sequence[SeededPatient], count: int) -> Any:
    """Sequential searches on one keep-alive connection, each answer checked: exactly the expected patient."""
    rng = random.Random(11)
    durations: list[float] = []
    with httpx.Client(base_url=server.base_url, headers=desk.headers, timeout=30) as client:
        for attempt in range(count + 100):
            patient = rng.choice(sample)
            started = time.perf_counter()
            response = client.get(PATIENTS_PATH, params={"phone": patient.typed_phone})
            elapsed = time.perf_counter() - started
            expect(response, 200, "search by phone")
            items = response.json()["items"]
            if [(item["id"], item["mrn"], item["given_name"]) for item in items] != [
                (patient.id, patient.mrn, patient.given_name)
            ]:
                raise BenchmarkError(f"search for a seeded phone answered {items}, not patient {patient.mrn}")
            if attempt >= 100:  # the first hundred warm the connection pools and caches
                durations.append(elapsed)
    return auth.LatencySummary.of(durations)


async def explain_search(settings: Settings, desk: FrontDesk, phone: str) -> dict[str, Any]:
    """The search query exactly as the service sends it (captured on the connection as it runs: through the
    engine on SQLAlchemy's path, from asyncpg's query log on the raw path PostgreSQL takes), explained with
    ANALYZE on the same connection, in the same tenant scope, as the application role."""
    from sqlalchemy import event

    from sehat.app import build_auth
    from sehat.core.actor import Actor, Audience, Role
    from sehat.core.db import Database, create_engine, driver_connection
    from sehat.patients.schemas import PatientSearch
    from sehat.patients.service import search_patients
    from sehat.patients.vault import PatientVault

    engine = create_engine(settings)
    database = Database(engine)
    auth_runtime = build_auth(settings, None)
    vault = PatientVault(auth_runtime.key_ring, phone_region=settings.default_phone_region)
    captured: list[tuple[str, Any]] = []

    def capture(_connection: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "patient_search_index" in statement:
            captured.append((statement, parameters))

    def capture_raw(logged: Any) -> None:
        if "patient_search_index" in logged.query:
            captured.append((logged.query, logged.args))

    event.listen(engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with database.unit_of_work() as session:
            await auth_runtime.permissions.load(session)
        actor = Actor(
            user_id=desk.user_id,
            organization_id=desk.organization_id,
            roles=frozenset({Role.front_office}),
            audience=Audience.staff,
            session_id=uuid.uuid4(),
            token_id="bench-explain",
            permissions=auth_runtime.permissions.for_roles([Role.front_office]),
        )
        async with database.unit_of_work(actor=actor) as session:
            (await session.run_sync(driver_connection)).add_query_logger(capture_raw)
            found = await search_patients(session, vault, auth_runtime.audit, actor, PatientSearch(phone=phone))
            if len(found) != 1 or not captured:
                raise BenchmarkError(f"the in-process search found {len(found)} patients, captured {len(captured)}")
            statement, parameters = captured[0]
            driver = await session.run_sync(driver_connection)
            explain = "EXPLAIN (ANALYZE, BUFFERS) " + statement
            await driver.fetch(explain, *parameters)  # the first run plans and reads cold pages
            plan = [row[0] for row in await driver.fetch(explain, *parameters)]
    finally:
        await database.dispose()
    text = "\n".join(plan)
    return {
        "statement": " ".join(statement.split()),
        "plan": plan,
        "uses_search_index": "patient_search_index" in text and "Index" in text and "Seq Scan" not in text,
        "execution_ms": _plan_figure(text, "Execution Time"),
        "planning_ms": _plan_figure(text, "Planning Time"),
    }


def _plan_figure(plan: str, label: str) -> float | None:
    found = re.search(label + r": ([0-9.]+) ms", plan)
    return float(found.group(1)) if found else None


def measure_search(
    options: Options,
    wrk: str | None,
    environment: Mapping[str, str],
    app_settings: Settings,
    desk: FrontDesk,
    seed: SeedReport,
) -> dict[str, Any]:
    phones = [patient.typed_phone for patient in seed.sample]
    log_step("explaining the search query as the service sends it")
    plan = asyncio.run(explain_search(app_settings, desk, phones[0]))
    # Without wrk, the python client repeats one search (it cannot vary the path): the figures say so.
    fixed_path = f"{PATIENTS_PATH}?phone={phones[0]}"
    log_step(f"starting `sehat serve --workers {options.workers}`")
    with ServerProcess(
        environment, port=free_loopback_port(), workers=options.workers, log_path=RESULTS_DIR / "patients-server.log"
    ) as server:
        headers = desk.refresh(server.base_url)
        log_step(f"{options.checked_searches} sequential searches, each answer checked")
        checked = checked_searches(server, desk, seed.sample, options.checked_searches)
        concurrencies = sorted({1, options.search_connections})
        searches: dict[int, LoadResult] = {}
        ceilings: dict[int, LoadResult] = {}
        for connections in concurrencies:
            log_step(f"searching at concurrency {connections} for {options.duration_seconds:g} s, then {HEALTHZ}")
            arguments = {"connections": connections, "threads": options.threads}
            load(
                wrk, server, fixed_path, headers, seconds=options.warmup_seconds, script=search_lua(phones), **arguments
            )
            searches[connections] = load(
                wrk,
                server,
                fixed_path,
                headers,
                seconds=options.duration_seconds,
                script=search_lua(phones),
                **arguments,
            )
            load(wrk, server, HEALTHZ, {}, seconds=options.warmup_seconds, **arguments)
            ceilings[connections] = load(wrk, server, HEALTHZ, {}, seconds=options.duration_seconds, **arguments)
    sequential = searches[1]
    errors = sum(result.errors for result in searches.values())
    return {
        "patients": seed.patients,
        "distinct_phones_searched": len(phones) if wrk is not None else 1,
        "checked_sequential": checked.__dict__,
        "load": {str(connections): result.to_json() for connections, result in searches.items()},
        "healthz_ceiling": {str(connections): result.to_json() for connections, result in ceilings.items()},
        "explain": plan,
        "errors": errors,
        "targets": {
            "p99_ms_at_concurrency_1": {
                "maximum": TARGET_SEARCH_P99_MS,
                "measured": sequential.latency_p99_ms,
                "met": sequential.latency_p99_ms < TARGET_SEARCH_P99_MS,
            },
            "index_lookup": {"met": plan["uses_search_index"]},
            "no_errors": {"measured_errors": errors, "met": errors == 0},
        },
    }


# --- part: rotation ----------------------------------------------------------------------------------------


def read_patients(
    base_url: str,
    token: str,
    expected: list[dict[str, str]],
    readers: int,
    stop: Any,
    ready: Any,
    results: Any,
) -> None:
    """In a process of its own: ``readers`` concurrent readers, each reading a random expected patient by id
    and checking what comes back, until ``stop`` is set. Puts one summary in ``results``."""
    outcome = asyncio.run(_read_until_stopped(base_url, token, expected, readers, stop, ready))
    results.put(outcome)


_CHECKED_FIELDS = ("id", "mrn", "phone", "given_name", "family_name", "birth_date")


async def _read_until_stopped(
    base_url: str, token: str, expected: list[dict[str, str]], readers: int, stop: Any, ready: Any
) -> dict[str, Any]:
    reads: list[tuple[float, float]] = []  # (monotonic start, seconds) of each good read
    failures: list[tuple[float, str]] = []
    limits = httpx.Limits(max_connections=readers, max_keepalive_connections=readers)
    async with httpx.AsyncClient(base_url=base_url, headers=auth.bearer(token), limits=limits, timeout=30) as client:

        async def reader(lane: int) -> None:
            rng = random.Random(lane)
            while not stop.is_set():
                patient = rng.choice(expected)
                started = time.monotonic()
                try:
                    response = await client.get(f"{PATIENTS_PATH}/{patient['id']}")
                except httpx.HTTPError as error:
                    failures.append((started, f"{type(error).__name__}"))
                    continue
                elapsed = time.monotonic() - started
                if response.status_code != 200:
                    failures.append((started, f"HTTP {response.status_code} {response.text[:200]}"))
                    continue
                body = response.json()
                wrong = [name for name in _CHECKED_FIELDS if body.get(name) != patient[name]]
                if wrong:
                    failures.append((started, f"wrong {', '.join(wrong)}"))
                else:
                    reads.append((started, elapsed))

        ready.set()
        await asyncio.gather(*(reader(lane) for lane in range(readers)))
    return {"reads": reads, "failures": failures}


def _expected_reads(sample: Sequence[SeededPatient]) -> list[dict[str, str]]:
    return [
        {
            "id": patient.id,
            "mrn": patient.mrn,
            "phone": patient.phone,
            "given_name": patient.given_name,
            "family_name": patient.family_name,
            "birth_date": patient.birth_date,
        }
        for patient in sample
    ]


async def run_rotation(settings: Settings, ring: str, batch_size: int) -> tuple[Any, list[tuple[float, int, int]]]:
    """``rewrap_keys`` under ``ring``, as ``sehat keys rotate`` runs it with the servers' settings (so as the
    application role, under row-level security); returns its report and the progress it reported."""
    from sehat.core.crypto import KeyRing
    from sehat.core.db import Database, create_engine
    from sehat.patients.rotation import rewrap_keys

    progress: list[tuple[float, int, int]] = []
    shown = [0]

    def on_progress(done: int, of: int) -> None:
        progress.append((time.monotonic(), done, of))
        if done * 10 // max(of, 1) > shown[0]:
            shown[0] = done * 10 // max(of, 1)
            log_step(f"  re-wrapped {done:,} of {of:,}")

    database = Database(create_engine(settings))
    try:
        report = await rewrap_keys(database, KeyRing.parse(ring), batch_size=batch_size, on_progress=on_progress)
    finally:
        await database.dispose()
    return report, progress


async def keys_after_rotation(database: str, new_ring: str, sample: Sequence[SeededPatient]) -> dict[str, Any]:
    """Which master keys the wrapped keys name now, and whether they open with the new key alone (so the old
    one can be retired): every sampled patient's data key, and its phone decrypted with it."""
    from sehat.core.crypto import KeyRing, open_field_cipher, unwrap_data_key
    from sehat.patients.models import PATIENTS_TABLE
    from sehat.patients.vault import INDEX_KEYS_TABLE

    new_only = KeyRing.parse(new_ring.split(",")[0])
    connection = await asyncpg.connect(owner_dsn(database), timeout=10)
    try:
        by_kek = {
            row["kek_id"]: int(row["count"])
            for row in await connection.fetch("SELECT kek_id, count(*) FROM patient_keys GROUP BY kek_id")
        }
        index_keys = await connection.fetch("SELECT organization_id, wrapped_key, kek_id FROM organization_index_keys")
        rows = await connection.fetch(
            "SELECT k.patient_id, k.organization_id, k.wrapped_key, p.phone FROM patient_keys k "
            "JOIN patients p ON p.id = k.patient_id WHERE k.patient_id = ANY($1::uuid[])",
            [uuid.UUID(patient.id) for patient in sample],
        )
    finally:
        await connection.close()
    phones = {patient.id: patient.phone for patient in sample}
    opened = 0
    for row in rows:
        cipher = open_field_cipher(
            new_only,
            row["wrapped_key"],
            organization_id=row["organization_id"],
            owner_table=PATIENTS_TABLE,
            owner_id=row["patient_id"],
        )
        phone = cipher.decrypt_text(
            row["phone"],
            organization_id=row["organization_id"],
            table=PATIENTS_TABLE,
            column="phone",
            row_id=row["patient_id"],
        )
        opened += phone == phones[str(row["patient_id"])]
    for row in index_keys:
        unwrap_data_key(
            new_only,
            row["wrapped_key"],
            organization_id=row["organization_id"],
            owner_table=INDEX_KEYS_TABLE,
            owner_id=row["organization_id"],
        )
    return {
        "patient_keys_by_master_key": by_kek,
        "index_keys_by_master_key": dict(sorted({row["kek_id"]: 1 for row in index_keys}.items())),
        "sampled_patients_opened_with_new_key_alone": opened,
        "sampled_patients": len(sample),
    }


def measure_rotation(
    options: Options,
    environment: Mapping[str, str],
    app_settings: Settings,
    desk: FrontDesk,
    seed: SeedReport,
) -> dict[str, Any]:
    """``environment`` holds the ring with the new master key first; the seed was sealed under the second."""
    try:
        import sehat.patients.rotation  # noqa: F401 - only whether it is there yet
    except ImportError as error:
        raise BenchmarkError(f"the rotation part needs sehat.patients.rotation ({error})") from None
    ring = environment["SEHAT_MASTER_KEY"]
    context = multiprocessing.get_context("spawn")
    stop, ready, results = context.Event(), context.Event(), context.Queue()
    settle = 2.0
    log_step(f"starting `sehat serve --workers {options.workers}` with the ring k2,k1 (k2 primary)")
    with ServerProcess(
        environment,
        port=free_loopback_port(),
        workers=options.workers,
        log_path=RESULTS_DIR / "patients-rotation-server.log",
    ) as server:
        desk.refresh(server.base_url)
        readers = context.Process(
            target=read_patients,
            args=(
                server.base_url,
                desk.access_token,
                _expected_reads(seed.sample),
                options.readers,
                stop,
                ready,
                results,
            ),
            daemon=True,
        )
        readers.start()
        try:
            if not ready.wait(60):
                raise BenchmarkError("the reader process did not start")
            time.sleep(settle)  # readers at full pace before the rotation begins
            log_step(f"re-wrapping {seed.patients:,} patient keys while {options.readers} readers read")
            began = time.monotonic()
            report, progress = asyncio.run(run_rotation(app_settings, ring, options.batch_size))
            ended = time.monotonic()
            time.sleep(settle)
            stop.set()
            try:
                # Read before joining: a process does not end while what it put on a queue is unread.
                outcome = results.get(timeout=60)
            except queue.Empty:
                raise BenchmarkError("the reader process sent no results") from None
        finally:
            stop.set()
            readers.join(timeout=30)
            if readers.is_alive():
                readers.kill()  # ours, by its handle: only on the way out of a failed run
    during = [(start, seconds) for start, seconds in outcome["reads"] if began <= start <= ended]
    failures_during = [reason for start, reason in outcome["failures"] if began <= start <= ended]
    after = asyncio.run(keys_after_rotation(options.database, ring, seed.sample))
    failures = len(outcome["failures"])
    wall = ended - began
    latencies = [seconds for _start, seconds in during]
    return {
        "patients": seed.patients,
        "batch_size": options.batch_size,
        "readers": options.readers,
        "rotation_seconds": round(wall, 2),
        "report": {
            "rewrapped_patient_keys": report.rewrapped_patient_keys,
            "rewrapped_index_keys": report.rewrapped_index_keys,
            "remaining": report.remaining,
            "seconds": round(report.seconds, 2),
        },
        "keys_per_second": round(report.rewrapped_patient_keys / wall, 1) if wall else 0.0,
        "progress_reports": len(progress),
        "reads_during_rotation": len(during),
        "reads_per_second_during_rotation": round(len(during) / wall, 1) if wall else 0.0,
        "read_latency_during_rotation": auth.LatencySummary.of(latencies).__dict__ if latencies else None,
        "reads_total": len(outcome["reads"]) + failures,
        "failed_reads_total": failures,
        "failed_reads_during_rotation": len(failures_during),
        "failure_examples": sorted({reason for _start, reason in outcome["failures"]})[:5],
        "after": after,
        "targets": {
            "rotation_seconds": {
                "maximum": TARGET_ROTATION_SECONDS,
                "measured": round(wall, 2),
                "met": wall < TARGET_ROTATION_SECONDS,
            },
            "no_failed_read": {"measured": failures, "met": failures == 0 and bool(during)},
            "every_key_under_new_master_key": {
                "met": set(after["patient_keys_by_master_key"]) == {"k2"}
                and set(after["index_keys_by_master_key"]) == {"k2"}
                and after["sampled_patients_opened_with_new_key_alone"] == after["sampled_patients"]
            },
        },
    }


# --- the run -----------------------------------------------------------------------------------------------


@contextlib.contextmanager
def background_worker(options: Options, environment: Mapping[str, str]) -> Iterator[None]:
    """A `sehat worker` sealing the audit entries the servers write, with the servers' own ring, for as long
    as one part runs; nothing when the servers run those passes themselves."""
    if options.background != "worker":
        yield
        return
    with (RESULTS_DIR / "patients-worker.log").open("wb") as log_file, tempfile.TemporaryDirectory() as directory:
        process = subprocess.Popen(
            [str(VENV_BIN / "sehat"), "worker"],
            env=dict(environment),
            cwd=directory,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            yield
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run(options: Options) -> dict[str, Any]:
    from sehat.core.crypto import KeyRing

    environment = auth.bench_environment(options.database, free_loopback_port())
    owner_settings = auth.settings_for(environment)
    wrk, load_generator_note = choose_load_generator(options.load_generator)
    log_step(prepare_database(options.database, environment))
    log_step("creating an organization, a facility and a front-office account with TOTP through the services")
    desk = asyncio.run(create_front_desk(owner_settings))
    # Servers connect as the application role, as in production: row-level security applies to them.
    server_environment = {**environment, "SEHAT_DATABASE_URL": app_url(options.database)}
    app_settings = Settings(_env_file=None, database_url=app_url(options.database))  # type: ignore[call-arg]
    results: dict[str, Any] = {
        "benchmark": "patients",
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_cores": os.cpu_count(),
            "python": platform.python_version(),
            "postgresql": asyncio.run(postgres_version()),
            "load_generator": load_generator_note,
        },
        "workers": options.workers,
        "threads": options.threads,
        "duration_seconds": options.duration_seconds,
    }
    try:
        seed: SeedReport | None = None
        if {"search", "rotation"} & set(options.parts):
            log_step(f"seeding {options.patients:,} patients in-process (real vault) and loading them with COPY")
            seed = asyncio.run(seed_patients(owner_settings, desk, options.patients))
            results["seed"] = seed.to_json()
        results["background_jobs"] = options.background
        if options.background == "worker":
            server_environment["SEHAT_BACKGROUND_JOBS"] = "false"
        if "search" in options.parts:
            assert seed is not None
            with background_worker(options, server_environment):
                results["search"] = measure_search(options, wrk, server_environment, app_settings, desk, seed)
        if "rotation" in options.parts:
            assert seed is not None
            # The servers of every later part need the new key as well: the index key is wrapped under it now.
            server_environment["SEHAT_MASTER_KEY"] = f"{KeyRing.generate_entry('k2')},{environment['SEHAT_MASTER_KEY']}"
            with background_worker(options, server_environment):
                results["rotation"] = measure_rotation(options, server_environment, app_settings, desk, seed)
        if "create" in options.parts:
            with background_worker(options, server_environment):
                results["create"] = measure_creates(options, wrk, server_environment, desk)
    finally:
        auth.remove_redis_keys(environment["SEHAT_REDIS_KEY_PREFIX"])
    other = [
        result.get("cpu_cores_busy", {}).get("other processes", 0.0)
        for part in ("create", "search")
        for result in _load_results(results.get(part, {}))
    ]
    results["other_processes_cores_busy_max"] = max(other, default=0.0)
    results["contaminated"] = results["other_processes_cores_busy_max"] > CONTAMINATION_CORES
    return results


def _load_results(part: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """Every load result in a part's figures, wherever it sits (lists of rounds, maps by concurrency)."""
    for value in part.values():
        candidates = value if isinstance(value, list) else value.values() if isinstance(value, dict) else []
        for candidate in candidates:
            if isinstance(candidate, dict) and "requests_per_second" in candidate:
                yield candidate


# --- report ------------------------------------------------------------------------------------------------


def _verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def _load_line(label: str, figures: Mapping[str, Any]) -> str:
    return (
        f"  {label:<34}{figures['requests_per_second']:>9,.0f}{figures['latency_p50_ms']:>9.2f}"
        f"{figures['latency_p99_ms']:>9.2f}{figures['latency_max_ms']:>9.1f}{figures['errors']:>8}"
        f"{figures['server_cpu_us_per_request'] or 0:>12,.0f}"
    )


_LOAD_HEADER = f"  {'':<34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'errors':>8}{'app µs/req':>12}"


def render_create(create: Mapping[str, Any]) -> list[str]:
    target = create["targets"]
    lines = [
        "",
        f"1. Registering patients (POST {PATIENTS_PATH}, front office, {create['connections']} connections, "
        f"{create['rounds']} rounds per build, alternating)",
        _LOAD_HEADER,
    ]
    for number, (encrypted, plaintext, ceiling) in enumerate(
        zip(create["encrypted"], create["plaintext"], create["healthz_ceiling"], strict=True), start=1
    ):
        lines += [
            _load_line(f"round {number}: encrypted (real app)", encrypted),
            _load_line(f"round {number}: plaintext build", plaintext),
            _load_line(f"round {number}: GET {HEALTHZ} (ceiling)", ceiling),
        ]
    for name, figures in create["one_connection"].items():
        lines.append(_load_line(f"one connection: {name}", figures))
    sealing, cpu = create["in_process_sealing_us"], create["server_cpu_us_per_create"]
    lines += [
        f"  medians: encrypted {create['encrypted_per_second_median']:,.0f}/s, plaintext "
        f"{create['plaintext_per_second_median']:,.0f}/s, {HEALTHZ} {create['healthz_per_second_median']:,.0f}/s",
        f"  ratio encrypted / plaintext: {create['ratio_encrypted_to_plaintext']:.2f}   target >= "
        f"{TARGET_CREATE_RATIO}: {_verdict(target['ratio']['met'])}",
        f"  app CPU per create: encrypted {cpu['encrypted']:,} µs, plaintext {cpu['plaintext']:,} µs (difference "
        f"{create['encryption_cpu_us_per_create']:,} µs)",
        f"  in this process, one registration's data key and twelve fields: {sealing['encrypted']} µs sealed, "
        f"{sealing['plaintext']} µs with the plaintext vault",
        "  per round (answered requests / patients written / audit entries written): "
        + ", ".join(
            f"{row['requests']}/{row['patients_written']}/{row['audit_entries_written']}"
            for row in create["writes_per_round"]
        )
        + f"   one of each per create: {_verdict(target['one_patient_and_one_entry_per_create']['met'])}",
        f"  errors: {create['errors']}",
        "  PostgreSQL backends of the database during each round (mean per sample, pg_stat_activity):",
    ]
    for row in create["writes_per_round"]:
        states = ", ".join(f"{state} {mean:g}" for state, mean in list(row["postgres_backends"].items())[:4])
        lines.append(f"    {row['build']:<10} {states}")
    return lines


def render_search(search: Mapping[str, Any], seed: Mapping[str, Any]) -> list[str]:
    checked, plan, target = search["checked_sequential"], search["explain"], search["targets"]
    lines = [
        "",
        f"2. Search by phone with {search['patients']:,} patients (GET {PATIENTS_PATH}?phone=…, "
        f"{search['distinct_phones_searched']:,} distinct numbers)",
        f"  seeded in {seed['seconds']:g} s (sealing {seed['sealing_seconds']:g} s, COPY {seed['copy_seconds']:g} s, "
        f"ANALYZE {seed['analyze_seconds']:g} s): "
        + ", ".join(f"{count:,} {table}" for table, count in seed["rows"].items()),
        f"  checked sequentially (httpx, {checked['samples']} searches, each answer verified): "
        f"p50 {checked['p50_ms']:.2f} ms, p99 {checked['p99_ms']:.2f} ms, max {checked['max_ms']:.1f} ms",
        _LOAD_HEADER,
    ]
    for connections, figures in search["load"].items():
        lines.append(_load_line(f"search, concurrency {connections}", figures))
        lines.append(_load_line(f"GET {HEALTHZ}, concurrency {connections}", search["healthz_ceiling"][connections]))
    lines += [
        f"  p99 at concurrency 1: {target['p99_ms_at_concurrency_1']['measured']:.2f} ms   target < "
        f"{TARGET_SEARCH_P99_MS:g} ms: {_verdict(target['p99_ms_at_concurrency_1']['met'])}",
        f"  EXPLAIN (ANALYZE, BUFFERS) of the service's query (execution {plan['execution_ms']} ms, planning "
        f"{plan['planning_ms']} ms; index lookup: {_verdict(target['index_lookup']['met'])}):",
        *(f"    {line}" for line in plan["plan"]),
        f"  errors: {search['errors']}",
    ]
    return lines


def render_rotation(rotation: Mapping[str, Any]) -> list[str]:
    target, report, after = rotation["targets"], rotation["report"], rotation["after"]
    latency = rotation["read_latency_during_rotation"] or {}
    return [
        "",
        f"3. Rotation: {rotation['patients']:,} patient keys re-wrapped under k2 (ring k2,k1), batches of "
        f"{rotation['batch_size']:,}, while {rotation['readers']} readers read patients by id",
        f"  rotation took {rotation['rotation_seconds']:.1f} s ({rotation['keys_per_second']:,.0f} keys/s; report: "
        f"{report['rewrapped_patient_keys']:,} patient keys, {report['rewrapped_index_keys']} index keys, "
        f"{report['seconds']:.1f} s, remaining {report['remaining']})   target < {TARGET_ROTATION_SECONDS:g} s: "
        f"{_verdict(target['rotation_seconds']['met'])}",
        f"  reads during it: {rotation['reads_during_rotation']:,} ({rotation['reads_per_second_during_rotation']:,.0f}"
        f"/s, p50 {latency.get('p50_ms', 0):.1f} ms, p99 {latency.get('p99_ms', 0):.1f} ms); failed reads: "
        f"{rotation['failed_reads_during_rotation']} during, {rotation['failed_reads_total']} of "
        f"{rotation['reads_total']:,} in all   target 0: {_verdict(target['no_failed_read']['met'])}",
        *(f"    failure: {example}" for example in rotation["failure_examples"]),
        f"  afterwards: patient keys by master key {after['patient_keys_by_master_key']}, index keys "
        f"{after['index_keys_by_master_key']}; {after['sampled_patients_opened_with_new_key_alone']} of "
        f"{after['sampled_patients']} sampled patients open with k2 alone: "
        f"{_verdict(target['every_key_under_new_master_key']['met'])}",
    ]


def render_report(results: Mapping[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        "",
        f"sehat benchmark: patient vault (issue 4) at {results['measured_at']}",
        f"machine: {machine['cpu_cores']} cores, Python {machine['python']}, PostgreSQL {machine['postgresql']}; "
        f"{results['workers']} workers per server; load generator: {machine['load_generator']}",
    ]
    if "search" in results:
        lines += render_search(results["search"], results["seed"])
    if "rotation" in results:
        lines += render_rotation(results["rotation"])
    if "create" in results:
        lines += render_create(results["create"])
    if results["contaminated"]:
        lines.append(
            f"WARNING: other processes kept {results['other_processes_cores_busy_max']:.2f} cores busy during a load; "
            "the figures are low. Run again on a quiet machine."
        )
    return "\n".join(lines) + "\n"


def main(arguments: list[str]) -> int:
    return run_benchmark("patients", parse_options(arguments), run, render_report)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
