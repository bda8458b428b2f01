"""Issue 5 benchmark: what booking an appointment and searching for free slots cost, on PostgreSQL, against
the real server (2 workers), with PostgreSQL's own ceiling measured in the same run.

What is measured (``--part`` picks some; all four by default)
  distinct   Bookings per second with ``--clients`` (64) concurrent clients booking distinct free slots:
             ``POST /api/v1/appointments`` by a front-office user with TOTP, each with its own Idempotency-Key.
             Client k books for practitioner k only, walking that practitioner's 10-minute grid slot after slot
             (tomorrow onwards), with its own patients in turn, so no booking meets another: every answer should
             be 201, and anything else is counted. A warm-up (``--warmup``) comes first; afterwards the
             appointments of those practitioners are counted in the table (one per 201, nothing more).
  contended  The same clients hammering ``--contended-slots`` (4) slots: client k books slot k mod 4 (each slot
             belongs to a practitioner of its own, at a time of its own) for patient after patient of its own,
             for ``--duration`` seconds. Counts of 201 and of 409 by problem ``code`` (``slot_taken``,
             ``slot_contended``, ...); afterwards SQL must find exactly one active appointment per slot. A
             client whose patient won a slot leaves that patient out of its later attempts.
  search     ``GET /api/v1/slots`` for one practitioner over 31 days (``from``/``to`` RFC 3339 with the
             facility's offset, 20-minute visits on the 10-minute grid, 08:00-20:00 every day), whose calendar is
             about 40 % booked (follow-ups, new visits and procedures seeded over HTTP before the loads), so the
             search subtracts several hundred bookings. ``--searches`` sequential searches from one client
             (httpx, one keep-alive connection) for p50/p99, the first answer checked slot by slot against the
             schedule that was seeded; then ``--search-connections`` concurrent clients.
  ceiling    ``pgbench -N`` (the built-in simple-update script, ``-M prepared``, ``--pgbench-clients`` clients,
             2 threads) on the same PostgreSQL, in a scratch database initialised with ``pgbench -i -s 10``: once
             before the server starts and once after it stopped (the server's pools and pgbench's 64 clients do
             not fit in max_connections together). The figure is their mean; the ratio is distinct bookings per
             second over it.

  statement  The booking's own write with no application in front of it: pgbench (``-M prepared``, one client per
             connection the server's pools hold, 2 threads) calling ``sehat_book_appointment`` as the application
             role, with the arguments the server would send (the distinct-slot clients' practitioners and patients,
             an Idempotency-Key, the answer, an audit entry), one call per transaction, on distinct slots far in
             the future, after the server stopped. What PostgreSQL alone can do for this write on this machine:
             how close the HTTP figure gets to it, and how it compares with pgbench's own simple update.

Targets: distinct bookings >= 0.25 x pgbench tps with p99 < 100 ms; slot search over 31 days p99 < 20 ms
(sequential). Beside the figures: the app server's CPU per request and how busy each process group kept the two
cores (from /proc), PostgreSQL transactions per request (``pg_stat_database``), what the database's backends
were doing during each load (``pg_stat_activity`` sampled every 20 ms: running, waiting for a lock, idle in a
transaction), and the statements on the wire per booking and per search, counted in this process with asyncpg's
query logger on the app that ``create_app`` builds (BEGIN and COMMIT included).

How
  A dedicated database (``sehat_bench_scheduling``) is re-created and migrated as the owner; the server
  (``sehat serve --workers 2``) connects as the application role, so row-level security applies as in
  production, and a ``sehat worker`` seals audit entries beside it (``--background``). The organization, its
  administrator, the facility (Asia/Kolkata) and the front-office account with TOTP come from
  ``bench/patients.py``'s ``create_front_desk``; the patients from its ``seed_patients`` (the real vault, COPY).
  Over HTTP, as the administrator (signed in with TOTP): one doctor user and practice profile per practitioner
  (``--clients`` + ``--contended-slots`` + 2), each with hours 08:00-20:00 every day on a 10-minute grid, and three
  appointment types (10, 20 and 40 minutes); bookings use the 10-minute one.
  The load generator is a python asyncio client (uvloop) in a process of its own, speaking raw HTTP/1.1 on one
  keep-alive connection per client, timing each request with ``perf_counter``; it shares the two cores with the
  server and PostgreSQL, and its own CPU is shown. Connections are opened before the clock starts.

Output: a table on stdout and the same figures as JSON in ``bench/results/scheduling.json``.

    python3 dev.py bench scheduling                                  # all five parts
    python3 dev.py bench scheduling --part distinct --part ceiling   # some of them
    python3 dev.py bench scheduling --duration 20 --clients 32
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import multiprocessing
import os
import platform
import queue
import random
import re
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pyotp

import auth
from harness import (
    APP_ROLE,
    POSTGRES_ADMIN_DSN,
    RESULTS_DIR,
    BackendSampler,
    BenchmarkError,
    LoadResult,
    ServerProcess,
    app_url,
    count_wire_statements,
    cpu_usage_between,
    free_loopback_port,
    log_step,
    percentile,
    postgres_database_counters,
    postgres_version,
    prepare_database,
    recreate_database,
    run_benchmark,
    take_cpu_snapshot,
)
from harness import _read_process_times as read_process_times
from loadgen import _content_length
from patients import (
    ADMIN_EMAIL,
    FrontDesk,
    _verdict,
    background_worker,
    create_front_desk,
    expect,
    owner_dsn,
    seed_patients,
)
from sehat.settings import Settings

PARTS = ("distinct", "contended", "search", "statement", "ceiling")
APPOINTMENTS_PATH = "/api/v1/appointments"
SLOTS_PATH = "/api/v1/slots"

TARGET_DISTINCT_RATIO = 0.25
TARGET_DISTINCT_P99_MS = 100.0
TARGET_SEARCH_P99_MS = 20.0
CONTAMINATION_CORES = 0.25

# Every practitioner keeps the same hours, every day, on the facility's wall clock.
OPENS, CLOSES = dt.time(8), dt.time(20)
SLOT = dt.timedelta(minutes=10)
SEARCH_DAYS = 31
# (code, name, minutes): bookings under load are follow-ups, one slot long, so a client's bookings never overlap;
# the search looks for new-patient visits, two slots long.
APPOINTMENT_TYPES = (("follow", "Follow-up", 10), ("new", "New patient", 20), ("procedure", "Procedure", 40))
MINUTES = {code: minutes for code, _name, minutes in APPOINTMENT_TYPES}
BOOKED_TYPE = "follow"
SEARCH_TYPE = "new"
# The searched calendar: at each free slot a visit starts with this chance, of a kind drawn with these weights.
SEARCH_BOOKING_CHANCE = 0.3
SEARCH_KIND_WEIGHTS = {"follow": 5, "new": 4, "procedure": 1}
# Patients: each distinct-slot client's own, each contended client's own, the searched calendar's, the probe's.
PATIENTS_PER_CLIENT = 16
PATIENTS_PER_CONTENDER = 8
SEARCH_PATIENTS = 200
PROBE_PATIENTS = 20
# A distinct-slot client gets at most this many slots per load (it books far fewer in one).
SLOTS_PER_LOAD = 1_000
ROUND_TRIP_SAMPLES = 30
DOCTOR_PASSWORD = auth.BENCH_PASSWORD


@dataclass(frozen=True)
class Options:
    parts: tuple[str, ...]
    database: str
    pgbench_database: str
    workers: int
    clients: int
    contended_slots: int
    duration_seconds: float
    warmup_seconds: float
    searches: int
    search_connections: int
    pgbench_scale: int
    pgbench_clients: int
    pgbench_seconds: float
    background: str


def parse_options(arguments: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python3 dev.py bench scheduling", description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", action="append", choices=PARTS, help="run only this part (repeatable); default: all")
    parser.add_argument("--database", default="sehat_bench_scheduling", help="PostgreSQL database to re-create")
    parser.add_argument("--pgbench-database", default="sehat_bench_pgbench", help="scratch database for pgbench")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--clients", type=int, default=64, help="concurrent booking clients")
    parser.add_argument("--contended-slots", type=int, default=4, help="slots the contended part fights over")
    parser.add_argument("--duration", type=float, default=10, help="seconds per measured load")
    parser.add_argument(
        "--warmup",
        type=float,
        default=10,
        help="seconds of warm-up bookings (each pooled connection's backend compiles the booking function and "
        "plans its statements on first use; 3 s left part of that inside the measured 10 s)",
    )
    parser.add_argument("--searches", type=int, default=500, help="sequential slot searches timed")
    parser.add_argument("--search-connections", type=int, default=16, help="concurrent clients searching")
    parser.add_argument("--pgbench-scale", type=int, default=10, help="pgbench -i scale factor")
    parser.add_argument("--pgbench-clients", type=int, default=64, help="pgbench -c")
    parser.add_argument("--pgbench-seconds", type=float, default=10, help="pgbench -T, per run")
    parser.add_argument(
        "--background",
        choices=("worker", "server"),
        default="worker",
        help="where audit sealing and the anomaly rules run: a `sehat worker` beside a server started with "
        "SEHAT_BACKGROUND_JOBS=false (the production layout), or inside each server worker",
    )
    parsed = parser.parse_args(arguments)
    chosen = set(parsed.part or PARTS)
    if parsed.clients < parsed.contended_slots or parsed.contended_slots < 1:
        parser.error("--contended-slots must be at least 1 and at most --clients")
    return Options(
        parts=tuple(part for part in PARTS if part in chosen),
        database=parsed.database,
        pgbench_database=parsed.pgbench_database,
        workers=parsed.workers,
        clients=parsed.clients,
        contended_slots=parsed.contended_slots,
        duration_seconds=parsed.duration,
        warmup_seconds=parsed.warmup,
        searches=parsed.searches,
        search_connections=parsed.search_connections,
        pgbench_scale=parsed.pgbench_scale,
        pgbench_clients=parsed.pgbench_clients,
        pgbench_seconds=parsed.pgbench_seconds,
        background=parsed.background,
    )


# --- the clinic --------------------------------------------------------------------------------------------


@dataclass
class Clinic:
    """Who books what: the front desk, the facility's timezone, the practitioners by role in the benchmark and
    the patients by the client that books for them."""

    desk: FrontDesk
    timezone: ZoneInfo
    type_ids: dict[str, str]
    lanes: list[str]  # practitioner of each distinct-slot client
    contended: list[str]  # practitioner of each contended slot
    searched: str
    probe: str  # booked and searched in this process, to count statements
    lane_patients: list[tuple[str, ...]]
    contender_patients: list[tuple[str, ...]]
    search_patients: tuple[str, ...]
    probe_patients: tuple[str, ...]
    first_day: dt.date = field(init=False)

    def __post_init__(self) -> None:
        # Tomorrow on the facility's calendar: every slot from then on is in the future for the whole run.
        self.first_day = dt.datetime.now(self.timezone).date() + dt.timedelta(days=1)

    @property
    def facility_id(self) -> str:
        return str(self.desk.facility_id)

    def at(self, day: int, moment: dt.time) -> dt.datetime:
        """``moment`` on the facility's wall clock, ``day`` days after the first bookable day."""
        return dt.datetime.combine(self.first_day + dt.timedelta(days=day), moment, tzinfo=self.timezone)

    def grid(self, first: int, days: int) -> list[dt.datetime]:
        """Every slot start of the practitioners' hours, day ``first`` to ``first + days - 1``."""
        starts = []
        for day in range(first, first + days):
            moment, closes = self.at(day, OPENS), self.at(day, CLOSES)
            while moment < closes:
                starts.append(moment)
                moment += SLOT
        return starts

    def search_window(self) -> tuple[dt.datetime, dt.datetime]:
        start = self.at(0, dt.time(0))
        return start, start + dt.timedelta(days=SEARCH_DAYS)

    def search_path(self, practitioner_id: str | None = None) -> str:
        """The 31-day search for the searched practitioner's (or another's) free new-patient slots."""
        start, end = self.search_window()
        query = {
            "practitioner_id": practitioner_id or self.searched,
            "facility_id": self.facility_id,
            "appointment_type_id": self.type_ids[SEARCH_TYPE],
            "from": start.isoformat(),
            "to": end.isoformat(),
        }
        return f"{SLOTS_PATH}?{urllib.parse.urlencode(query)}"


def patients_needed(options: Options) -> int:
    return options.clients * (PATIENTS_PER_CLIENT + PATIENTS_PER_CONTENDER) + SEARCH_PATIENTS + PROBE_PATIENTS


async def seeded_patient_ids(database: str, organization_id: uuid.UUID) -> list[str]:
    connection = await asyncpg.connect(owner_dsn(database), timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT id FROM patients WHERE organization_id = $1 ORDER BY created_at, id", organization_id
        )
    finally:
        await connection.close()
    return [str(row["id"]) for row in rows]


async def facility_timezone(database: str, facility_id: uuid.UUID) -> ZoneInfo:
    connection = await asyncpg.connect(owner_dsn(database), timeout=10)
    try:
        name = await connection.fetchval("SELECT timezone FROM facilities WHERE id = $1", facility_id)
    finally:
        await connection.close()
    if name is None:
        raise BenchmarkError(f"facility {facility_id} not found")
    return ZoneInfo(name)


def admin_headers(base_url: str) -> dict[str, str]:
    """The administrator that ``create_front_desk`` made, signed in over HTTP; enrolling TOTP on the way when
    staff need a second factor (they do by default)."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        signed_in = client.post(auth.SIGN_IN, data={"username": ADMIN_EMAIL, "password": auth.BENCH_PASSWORD})
        expect(signed_in, 200, "administrator sign-in")
        token = signed_in.json()["access_token"]
        if signed_in.json()["scope"] == "mfa_enroll":
            enrolment = client.post("/api/v1/auth/mfa/enroll", headers=auth.bearer(token))
            expect(enrolment, 200, "administrator MFA enrolment")
            code = pyotp.TOTP(enrolment.json()["secret"]).now()
            confirmed = client.post("/api/v1/auth/mfa/confirm", json={"otp": code}, headers=auth.bearer(token))
            expect(confirmed, 200, "administrator MFA confirmation")
            token = confirmed.json()["access_token"]
    return auth.bearer(token)


async def open_practices(
    base_url: str, admin: Mapping[str, str], facility_id: uuid.UUID, count: int
) -> tuple[list[str], dict[str, str]]:
    """``count`` practitioners (a doctor user each, then the practice profile, then hours every day) and the
    appointment types, over HTTP as the administrator; four at a time, since each user's password is hashed."""
    limits = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    async with httpx.AsyncClient(base_url=base_url, headers=dict(admin), timeout=60, limits=limits) as client:
        type_ids = {}
        for code, name, minutes in APPOINTMENT_TYPES:
            created = await client.post(
                "/api/v1/appointment-types", json={"name": name, "code": code, "duration_minutes": minutes}
            )
            expect(created, 201, f"creating appointment type {code}")
            type_ids[code] = created.json()["id"]
        gate = asyncio.Semaphore(4)

        async def practitioner(number: int) -> str:
            async with gate:
                user = await client.post(
                    "/api/v1/users",
                    json={
                        "email": f"doctor{number}@bench.test",
                        "full_name": f"Doctor {number}",
                        "roles": ["doctor"],
                        "facility_ids": [str(facility_id)],
                        "password": DOCTOR_PASSWORD,
                    },
                )
                expect(user, 201, f"creating doctor {number}")
                profile = await client.post(
                    "/api/v1/practitioners",
                    json={
                        "user_id": user.json()["id"],
                        "display_name": f"Dr. Bench {number}",
                        "specialty": "general_medicine",
                        "languages": ["hi", "en"],
                        "facility_ids": [str(facility_id)],
                        "department_ids": [],
                    },
                )
                expect(profile, 201, f"creating practitioner {number}")
                practitioner_id = str(profile.json()["id"])
                for weekday in range(7):
                    hours = await client.post(
                        f"/api/v1/practitioners/{practitioner_id}/availability",
                        json={
                            "facility_id": str(facility_id),
                            "weekday": weekday,
                            "starts": OPENS.strftime("%H:%M"),
                            "ends": CLOSES.strftime("%H:%M"),
                            "slot_minutes": SLOT.seconds // 60,
                            "buffer_minutes": 0,
                        },
                    )
                    expect(hours, 201, f"adding hours of practitioner {number}")
                return practitioner_id

        practitioner_ids = list(await asyncio.gather(*(practitioner(number) for number in range(count))))
    return practitioner_ids, type_ids


def open_clinic(options: Options, server: ServerProcess, desk: FrontDesk, patient_ids: Sequence[str]) -> Clinic:
    count = options.clients + options.contended_slots + 2
    log_step(f"creating {count} practitioners with hours every day and 3 appointment types over HTTP")
    practitioners, type_ids = asyncio.run(
        open_practices(server.base_url, admin_headers(server.base_url), desk.facility_id, count)
    )
    pool = iter(patient_ids)

    def take(number: int) -> tuple[str, ...]:
        taken = tuple(next(pool) for _ in range(number))
        if len(taken) < number:
            raise BenchmarkError("fewer seeded patients than the clients need")
        return taken

    lanes, practitioners = practitioners[: options.clients], practitioners[options.clients :]
    contended, (searched, probe) = practitioners[: options.contended_slots], practitioners[options.contended_slots :]
    return Clinic(
        desk=desk,
        timezone=asyncio.run(facility_timezone(options.database, desk.facility_id)),
        type_ids=type_ids,
        lanes=lanes,
        contended=contended,
        searched=searched,
        probe=probe,
        lane_patients=[take(PATIENTS_PER_CLIENT) for _ in range(options.clients)],
        contender_patients=[take(PATIENTS_PER_CONTENDER) for _ in range(options.clients)],
        search_patients=take(SEARCH_PATIENTS),
        probe_patients=take(PROBE_PATIENTS),
    )


def booking_body(
    clinic: Clinic, practitioner_id: str, patient_id: str, start: dt.datetime, kind: str
) -> dict[str, str]:
    return {
        "patient_id": patient_id,
        "practitioner_id": practitioner_id,
        "facility_id": clinic.facility_id,
        "appointment_type_id": clinic.type_ids[kind],
        "start": start.isoformat(),
    }


# --- the searched calendar ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Visit:
    start: dt.datetime
    kind: str

    @property
    def end(self) -> dt.datetime:
        return self.start + dt.timedelta(minutes=MINUTES[self.kind])


def searched_calendar(clinic: Clinic) -> list[Visit]:
    """A realistic calendar over the 31 searched days: walking each day's grid, at each free slot a visit starts
    with a fixed chance, a follow-up, a new patient or a procedure; about 40 % of the time ends up booked."""
    rng = random.Random(5)
    kinds, weights = list(SEARCH_KIND_WEIGHTS), list(SEARCH_KIND_WEIGHTS.values())
    visits: list[Visit] = []
    for day in range(SEARCH_DAYS):
        moment, closes = clinic.at(day, OPENS), clinic.at(day, CLOSES)
        while moment < closes:
            if rng.random() < SEARCH_BOOKING_CHANCE:
                visit = Visit(moment, rng.choices(kinds, weights)[0])
                if visit.end <= closes:
                    visits.append(visit)
                    moment = visit.end
                    continue
            moment += SLOT
    return visits


async def book_calendar(base_url: str, clinic: Clinic, visits: Sequence[Visit]) -> None:
    """The calendar booked over HTTP by the front desk, eight at a time; patients in turn through the time-sorted
    visits, so one patient's visits are hundreds of visits apart and never overlap."""
    limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
    async with httpx.AsyncClient(base_url=base_url, headers=clinic.desk.headers, timeout=60, limits=limits) as client:
        gate = asyncio.Semaphore(8)

        async def book(number: int, visit: Visit) -> None:
            patient = clinic.search_patients[number % len(clinic.search_patients)]
            async with gate:
                response = await client.post(
                    APPOINTMENTS_PATH,
                    json=booking_body(clinic, clinic.searched, patient, visit.start, visit.kind),
                    headers={"Idempotency-Key": f"calendar-{number:06d}"},
                )
            expect(response, 201, f"booking the searched calendar at {visit.start.isoformat()}")

        await asyncio.gather(*(book(number, visit) for number, visit in enumerate(visits)))


def expected_free_slots(clinic: Clinic, visits: Sequence[Visit]) -> list[dt.datetime]:
    """What the search should answer: every 20-minute visit on the grid within the hours that meets no booking."""
    duration = dt.timedelta(minutes=MINUTES[SEARCH_TYPE])
    by_day: dict[dt.date, list[Visit]] = {}
    for visit in visits:
        by_day.setdefault(visit.start.date(), []).append(visit)
    free = []
    for start in clinic.grid(0, SEARCH_DAYS):
        end = start + duration
        if end > dt.datetime.combine(start.date(), CLOSES, tzinfo=clinic.timezone):
            continue
        if not any(visit.start < end and visit.end > start for visit in by_day.get(start.date(), [])):
            free.append(start)
    return free


# --- load --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lane:
    """What one client sends, one request after the other on one keep-alive connection: bookings of
    ``practitioner_id`` at ``starts`` in order (the same slots again and again when ``repeat``), for
    ``patient_ids`` in turn; or, with ``path``, that GET every time."""

    practitioner_id: str = ""
    patient_ids: tuple[str, ...] = ()
    starts: tuple[str, ...] = ()
    repeat: bool = False
    path: str = ""


@dataclass(frozen=True)
class LoadJob:
    port: int
    token: str
    facility_id: str
    appointment_type_id: str
    lanes: tuple[Lane, ...]
    seconds: float
    tag: str  # Idempotency-Key of request n of client k: tag-k-n


@dataclass
class _LaneTally:
    samples: list[tuple[int, int, str]] = field(default_factory=list)  # (latency µs, status, problem code)
    sent: int = 0
    socket_errors: int = 0
    exhausted: bool = False


def run_client_loop(main: Coroutine[Any, Any, Any]) -> Any:
    """Run a load generator's coroutine on uvloop when it is installed (a cheaper client), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


def generate_load(job: LoadJob, ready: Any, go: Any, results: Any) -> None:
    """In a process of its own: connect every client, say so (``ready``), wait for ``go``, then load for
    ``job.seconds``; puts one summary in ``results``."""
    results.put(run_client_loop(_generate(job, ready, go)))


async def _generate(job: LoadJob, ready: Any, go: Any) -> dict[str, Any]:
    # Paced, so that the server's workers take turns accepting: asyncio accepts every pending connection in
    # one wake-up, and 64 connections opened at once can all land on one worker (seen: one worker busy, the
    # other idle, throughput halved). The per-worker CPU split in the report shows how they spread.
    connections = []
    for _ in job.lanes:
        connections.append(await asyncio.open_connection("127.0.0.1", job.port))
        await asyncio.sleep(0.005)
    ready.set()
    await asyncio.to_thread(go.wait)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    deadline = started + job.seconds
    tallies = await asyncio.gather(
        *(_drive(job, number, lane, connection, deadline) for number, (lane, connection) in enumerate(
            zip(job.lanes, connections, strict=True)
        ))
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    used = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "elapsed_seconds": elapsed,
        "cpu_seconds": used.ru_utime + used.ru_stime - usage.ru_utime - usage.ru_stime,
        "samples": [sample for tally in tallies for sample in tally.samples],
        "sent": [tally.sent for tally in tallies],
        "socket_errors": sum(tally.socket_errors for tally in tallies),
        "exhausted_lanes": sum(tally.exhausted for tally in tallies),
    }


async def _drive(
    job: LoadJob,
    number: int,
    lane: Lane,
    connection: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    deadline: float,
) -> _LaneTally:
    reader, writer = connection
    tally = _LaneTally()
    patients = list(lane.patient_ids)
    head = f"Host: 127.0.0.1:{job.port}\r\nAuthorization: Bearer {job.token}\r\n"
    fixed = f"GET {lane.path} HTTP/1.1\r\n{head}\r\n".encode("latin-1") if lane.path else b""
    while time.perf_counter() < deadline:
        patient = ""
        if lane.path:
            request = fixed
        else:
            if tally.sent >= len(lane.starts) and not lane.repeat:
                tally.exhausted = True
                break
            patient = patients[tally.sent % len(patients)]
            body = json.dumps(
                {
                    "patient_id": patient,
                    "practitioner_id": lane.practitioner_id,
                    "facility_id": job.facility_id,
                    "appointment_type_id": job.appointment_type_id,
                    "start": lane.starts[tally.sent % len(lane.starts)],
                }
            ).encode()
            request = (
                f"POST {APPOINTMENTS_PATH} HTTP/1.1\r\n{head}Content-Type: application/json\r\n"
                f"Idempotency-Key: {job.tag}-{number}-{tally.sent}\r\nContent-Length: {len(body)}\r\n\r\n"
            ).encode("latin-1") + body
        tally.sent += 1
        began = time.perf_counter()
        try:
            writer.write(request)
            answer = await reader.readuntil(b"\r\n\r\n")
            content = await reader.readexactly(_content_length(answer))
        except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            tally.socket_errors += 1
            writer.close()
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", job.port)
            except OSError:
                await asyncio.sleep(0.05)
            continue
        latency = time.perf_counter() - began
        status = int(answer[9:12])
        code = ""
        if status >= 400:
            try:
                code = str(json.loads(content).get("code", ""))
            except (ValueError, AttributeError):
                code = "?"
        tally.samples.append((round(latency * 1e6), status, code))
        if status == 201 and lane.repeat and len(patients) > 1:
            patients.remove(patient)  # it holds the slot now; it would only be told patient_busy
    writer.close()
    return tally


@dataclass
class LoadRun:
    result: LoadResult
    statuses: dict[str, int]
    problems: dict[str, int]
    sent_per_client: list[int]
    exhausted_clients: int
    postgres_backends: dict[str, float]
    server_workers_cores: list[float]

    def count(self, status: int) -> int:
        return self.statuses.get(str(status), 0)

    def to_json(self) -> dict[str, Any]:
        return {
            **self.result.to_json(),
            "statuses": self.statuses,
            "problem_codes": self.problems,
            "exhausted_clients": self.exhausted_clients,
            "postgres_backends": self.postgres_backends,
            "server_workers_cores": self.server_workers_cores,
        }


def recount_cores(cores: Mapping[str, float], changes: Mapping[str, float | None]) -> dict[str, float]:
    """``cores`` with ``changes`` applied (None removes a group), "other processes" worked out again: the whole
    machine less every group named."""
    recounted = {name: value for name, value in cores.items() if name not in {"other processes", "whole machine"}}
    for name, value in changes.items():
        recounted.pop(name, None)
        if value is not None:
            recounted[name] = round(value, 2)
    machine = cores["whole machine"]
    recounted["other processes"] = round(max(0.0, machine - sum(recounted.values())), 2)
    recounted["whole machine"] = machine
    return recounted


def process_cpu_seconds(server: ServerProcess) -> dict[str, float]:
    """CPU seconds so far, from /proc, of each of the server's worker processes (uvicorn's workers share the
    listening socket and each keeps the connections it accepted, so an uneven split shows in the tail latency)
    and of the `sehat worker` beside the server, which ``patients.background_worker`` starts as a child of this
    process in a session of its own, out of the server's process tree."""
    found: dict[str, float] = {"background worker": 0.0}
    for process in read_process_times().values():
        if process.parent_pid == server.pid:
            found[f"server worker {process.pid}"] = process.cpu_seconds
        elif process.parent_pid == os.getpid() and process.pid != server.pid and process.command == "sehat":
            found["background worker"] += process.cpu_seconds
    return found


def cores_between(before: Mapping[str, float], after: Mapping[str, float], wall: float) -> dict[str, float]:
    return {name: (after[name] - before.get(name, 0.0)) / wall for name in after}


@dataclass(frozen=True)
class GeneratorRun:
    """What a load generator process returned, and what the server, its workers and PostgreSQL did meanwhile."""

    outcome: dict[str, Any]
    usage: Any  # harness.CpuUsage of the server and the machine
    processes: dict[str, float]  # cores busy per server worker and for the background worker
    transactions: int
    new_connections: int
    postgres_backends: dict[str, float]


def run_generator(server: ServerProcess, database: str, target: Any, job: Any, label: str) -> GeneratorRun:
    """One load: ``target(job, ready, go, results)`` in a process of its own connects its clients, then the
    clock, the CPU accounting, the database counters and the backend sampler start together with it."""
    context = multiprocessing.get_context("spawn")
    ready, go, results = context.Event(), context.Event(), context.Queue()
    process = context.Process(target=target, args=(job, ready, go, results), daemon=True)
    process.start()
    try:
        if not ready.wait(60):
            raise BenchmarkError(f"the load generator did not connect (exit code {process.exitcode})")
        counters_before = asyncio.run(postgres_database_counters(database))
        with BackendSampler(database) as backends:
            before, processes_before = take_cpu_snapshot(server.pid), process_cpu_seconds(server)
            go.set()
            try:
                # Read before joining: a process does not end while what it put on a queue is unread.
                outcome = results.get(timeout=job.seconds + 60)
            except queue.Empty:
                raise BenchmarkError(f"the load generator sent no results ({label})") from None
            process.join(timeout=30)
            after, processes_after = take_cpu_snapshot(server.pid), process_cpu_seconds(server)
        time.sleep(auth.POSTGRES_STATISTICS_DELAY_SECONDS)  # backends report their counters when idle
        counters_after = asyncio.run(postgres_database_counters(database))
    finally:
        if process.is_alive():
            process.kill()  # ours, by its handle: only on the way out of a failed run
            process.join(timeout=5)
    if not outcome["samples"]:
        raise BenchmarkError(f"no request completed ({label}); server log:\n{server.log_tail()}")
    return GeneratorRun(
        outcome=outcome,
        usage=cpu_usage_between(before, after),
        processes=cores_between(processes_before, processes_after, after.wall - before.wall),
        transactions=counters_after["transactions"] - counters_before["transactions"],
        new_connections=counters_after["sessions"] - counters_before["sessions"],
        postgres_backends=backends.mean_backends,
    )


def worker_cores(processes: Mapping[str, float]) -> list[float]:
    """Cores busy per server worker, busiest first (multiprocessing's resource tracker, idle, left out)."""
    return sorted(
        (round(value, 2) for name, value in processes.items() if name.startswith("server worker") and value > 0.01),
        reverse=True,
    )


def run_lanes(server: ServerProcess, database: str, job: LoadJob, label: str) -> LoadRun:
    """One booking or search load (``run_generator``), summed up."""
    run = run_generator(server, database, generate_load, job, label)
    outcome, usage, processes = run.outcome, run.usage, run.processes
    samples = outcome["samples"]
    latencies = [latency / 1e6 for latency, _status, _code in samples]
    elapsed = outcome["elapsed_seconds"]
    # The generator's own CPU while loading (its start-up and imports are left out).
    cores = recount_cores(
        usage.cores_busy,
        {
            "load generator (wrk)": None,
            "load generator (python)": outcome["cpu_seconds"] / elapsed,
            "background worker": processes["background worker"],
        },
    )
    statuses = Counter(str(status) for _latency, status, _code in samples)
    problems = Counter(code for _latency, _status, code in samples if code)
    requests = len(samples)
    result = LoadResult(
        url_path=label,
        tool="python asyncio client, raw HTTP/1.1 keep-alive, own process",
        connections=len(job.lanes),
        duration_seconds=round(elapsed, 2),
        requests=requests,
        requests_per_second=round(requests / elapsed, 1),
        latency_p50_ms=round(percentile(latencies, 50) * 1000, 2),
        latency_p90_ms=round(percentile(latencies, 90) * 1000, 2),
        latency_p99_ms=round(percentile(latencies, 99) * 1000, 2),
        latency_max_ms=round(max(latencies) * 1000, 2),
        non_2xx_3xx=sum(count for status, count in statuses.items() if int(status) >= 400),
        socket_errors=outcome["socket_errors"],
        cpu_cores_busy=cores,
        server_cpu_us_per_request=round(usage.server_cpu_seconds / requests * 1e6, 1),
        backend_per_request={
            "postgres_transactions": round(run.transactions / requests, 3),
            "postgres_new_connections_total": run.new_connections,
        },
    )
    return LoadRun(
        result=result,
        statuses=dict(sorted(statuses.items())),
        problems=dict(problems.most_common()),
        sent_per_client=outcome["sent"],
        exhausted_clients=outcome["exhausted_lanes"],
        postgres_backends=run.postgres_backends,
        server_workers_cores=worker_cores(processes),
    )


def booking_job(server: ServerProcess, clinic: Clinic, lanes: Sequence[Lane], seconds: float) -> LoadJob:
    return LoadJob(
        port=server.port,
        token=clinic.desk.access_token,
        facility_id=clinic.facility_id,
        appointment_type_id=clinic.type_ids[BOOKED_TYPE],
        lanes=tuple(lanes),
        seconds=seconds,
        tag=secrets.token_hex(4),
    )


async def active_appointments(database: str, practitioner_ids: Sequence[str]) -> dict[tuple[str, dt.datetime], int]:
    """Active appointments of these practitioners, by practitioner and start."""
    from sehat.scheduling.models import ACTIVE_STATUSES

    connection = await asyncpg.connect(owner_dsn(database), timeout=10)
    try:
        rows = await connection.fetch(
            "SELECT practitioner_id, start_at, count(*) AS count FROM appointments "
            "WHERE practitioner_id = ANY($1::uuid[]) AND status = ANY($2::text[]) GROUP BY 1, 2",
            [uuid.UUID(value) for value in practitioner_ids],
            [str(status) for status in ACTIVE_STATUSES],
        )
    finally:
        await connection.close()
    return {(str(row["practitioner_id"]), row["start_at"]): int(row["count"]) for row in rows}


# --- part: distinct ----------------------------------------------------------------------------------------


def measure_distinct(options: Options, server: ServerProcess, clinic: Clinic) -> dict[str, Any]:
    grid = [start.isoformat() for start in clinic.grid(0, SEARCH_DAYS)]
    cursor = [0] * options.clients  # the next slot of each client's practitioner

    def book(seconds: float, label: str) -> LoadRun:
        lanes = [
            Lane(
                practitioner_id=clinic.lanes[number],
                patient_ids=clinic.lane_patients[number],
                starts=tuple(grid[cursor[number] : cursor[number] + SLOTS_PER_LOAD]),
            )
            for number in range(options.clients)
        ]
        run = run_lanes(server, options.database, booking_job(server, clinic, lanes, seconds), label)
        for number, sent in enumerate(run.sent_per_client):
            cursor[number] += sent
        return run

    log_step(f"distinct slots: warming up for {options.warmup_seconds:g} s with {options.clients} clients")
    warmup = book(options.warmup_seconds, "distinct slots, warm-up")
    log_step(f"distinct slots: {options.clients} clients booking for {options.duration_seconds:g} s")
    measured = book(options.duration_seconds, "distinct slots")
    booked = asyncio.run(active_appointments(options.database, clinic.lanes))
    answered_201 = warmup.count(201) + measured.count(201)
    written = sum(booked.values())
    not_created = measured.result.requests - measured.count(201)
    return {
        "clients": options.clients,
        "warmup": warmup.to_json(),
        "load": measured.to_json(),
        "slots_booked_per_client": {
            "min": min(cursor),
            "max": max(cursor),
            "median": statistics.median(cursor),
        },
        "appointments_written": written,
        "answered_201": answered_201,
        "not_201": not_created,
        "checks": {
            "one_appointment_per_201": {"measured": [written, answered_201], "met": written == answered_201},
            "every_booking_201": {"measured": not_created, "met": not_created == 0},
            "no_client_ran_out_of_slots": {
                "measured": warmup.exhausted_clients + measured.exhausted_clients,
                "met": warmup.exhausted_clients + measured.exhausted_clients == 0,
            },
        },
    }


# --- part: contended ---------------------------------------------------------------------------------------


def measure_contended(options: Options, server: ServerProcess, clinic: Clinic) -> dict[str, Any]:
    # Day 2, mid-morning, ten minutes apart: a patient who won one slot may try another without overlapping it.
    slots = [clinic.at(2, dt.time(10)) + SLOT * number for number in range(options.contended_slots)]
    lanes = [
        Lane(
            practitioner_id=clinic.contended[number % options.contended_slots],
            patient_ids=clinic.contender_patients[number],
            starts=(slots[number % options.contended_slots].isoformat(),),
            repeat=True,
        )
        for number in range(options.clients)
    ]
    log_step(
        f"contended: {options.clients} clients on {options.contended_slots} slots for {options.duration_seconds:g} s"
    )
    job = booking_job(server, clinic, lanes, options.duration_seconds)
    run = run_lanes(server, options.database, job, "contended slots")
    booked = asyncio.run(active_appointments(options.database, clinic.contended))
    per_slot = {
        f"{practitioner[:8]} {start.isoformat()}": booked.get((practitioner, start.astimezone(dt.UTC)), 0)
        for practitioner, start in zip(clinic.contended, slots, strict=True)
    }
    unexpected = {status: count for status, count in run.statuses.items() if status not in {"201", "409"}}
    return {
        "clients": options.clients,
        "slots": options.contended_slots,
        "load": run.to_json(),
        "answered_201": run.count(201),
        "answered_409": run.count(409),
        "active_appointments_per_slot": per_slot,
        "active_appointments_of_these_practitioners": sum(booked.values()),
        "checks": {
            "exactly_one_active_appointment_per_slot": {
                "measured": list(per_slot.values()),
                "met": all(count == 1 for count in per_slot.values())
                and sum(booked.values()) == options.contended_slots,
            },
            "one_201_per_slot": {
                "measured": run.count(201),
                "met": run.count(201) == options.contended_slots,
            },
            "only_201_and_409": {"measured": unexpected, "met": not unexpected and run.result.socket_errors == 0},
        },
    }


# --- part: search ------------------------------------------------------------------------------------------


def timed_searches(
    server: ServerProcess, clinic: Clinic, count: int, expected: Sequence[dt.datetime]
) -> dict[str, Any]:
    """Sequential searches on one keep-alive connection: the first answer compared with ``expected`` slot by
    slot, each later one must have as many slots; returns the latencies and what the server spent."""
    path = clinic.search_path()
    durations: list[float] = []
    with httpx.Client(base_url=server.base_url, headers=clinic.desk.headers, timeout=30) as client:
        first = client.get(path)
        expect(first, 200, "slot search")
        answered = [dt.datetime.fromisoformat(slot["start"]) for slot in first.json()]
        for _ in range(20):  # warm: the path's code and statements
            expect(client.get(path), 200, "slot search")
        before, processes_before = take_cpu_snapshot(server.pid), process_cpu_seconds(server)
        for _ in range(count):
            started = time.perf_counter()
            response = client.get(path)
            durations.append(time.perf_counter() - started)
            expect(response, 200, "slot search")
            if len(response.json()) != len(answered):
                raise BenchmarkError(f"slot search answered {len(response.json())} slots, then {len(answered)}")
        after, processes_after = take_cpu_snapshot(server.pid), process_cpu_seconds(server)
    usage = cpu_usage_between(before, after)
    worker_cores = cores_between(processes_before, processes_after, after.wall - before.wall)["background worker"]
    missing = sorted(set(expected) - set(answered))
    extra = sorted(set(answered) - set(expected))
    return {
        "latency": auth.LatencySummary.of(durations).__dict__,
        "server_cpu_us_per_search": round(usage.server_cpu_seconds / count * 1e6, 1),
        "cpu_cores_busy": recount_cores(
            usage.cores_busy, {"load generator (wrk)": None, "background worker": worker_cores}
        ),
        "slots_answered": len(answered),
        "slots_expected": len(expected),
        "response_bytes": len(first.content),
        "missing_examples": [moment.isoformat() for moment in missing[:3]],
        "unexpected_examples": [moment.isoformat() for moment in extra[:3]],
        "answer_as_expected": not missing and not extra,
    }


async def _analyze(database: str, table: str) -> None:
    connection = await asyncpg.connect(owner_dsn(database), timeout=10)
    try:
        await connection.execute(f"ANALYZE {table}")
    finally:
        await connection.close()


def measure_search(options: Options, server: ServerProcess, clinic: Clinic, visits: Sequence[Visit]) -> dict[str, Any]:
    expected = expected_free_slots(clinic, visits)
    # The booking parts just added thousands of rows; autovacuum would analyze the table within a minute or so,
    # and the search is measured in that steady state. Without fresh statistics the planner took the table for
    # tiny and walked a GiST index for the practitioner's bookings (7 ms instead of 1 ms, seen).
    asyncio.run(_analyze(options.database, "appointments"))
    log_step(f"search: {options.searches} sequential searches over {SEARCH_DAYS} days")
    sequential = timed_searches(server, clinic, options.searches, expected)
    concurrent = None
    if options.search_connections > 1:
        log_step(f"search: {options.search_connections} clients for {options.duration_seconds:g} s")
        lanes = [Lane(path=clinic.search_path()) for _ in range(options.search_connections)]
        job = booking_job(server, clinic, lanes, options.duration_seconds)
        concurrent = run_lanes(server, options.database, job, "slot search").to_json()
    window = clinic.search_window()
    minutes_open = (CLOSES.hour - OPENS.hour) * 60 * SEARCH_DAYS
    minutes_booked = sum((visit.end - visit.start).total_seconds() / 60 for visit in visits)
    p99 = sequential["latency"]["p99_ms"]
    return {
        "window": {"from": window[0].isoformat(), "to": window[1].isoformat(), "days": SEARCH_DAYS},
        "appointment_type_minutes": MINUTES[SEARCH_TYPE],
        "bookings_in_window": len(visits),
        "bookings_by_kind": dict(Counter(visit.kind for visit in visits)),
        "share_of_time_booked": round(minutes_booked / minutes_open, 3),
        "sequential": sequential,
        "concurrent": concurrent,
        "targets": {
            "p99_ms_sequential": {"maximum": TARGET_SEARCH_P99_MS, "measured": p99, "met": p99 < TARGET_SEARCH_P99_MS},
            "answer_as_expected": {"met": sequential["answer_as_expected"]},
        },
    }


# --- statements per request, in this process ---------------------------------------------------------------


async def count_statements(settings: Settings, clinic: Clinic) -> dict[str, Any]:
    """Statements on the wire per booking and per 31-day search, counted on the app that ``create_app`` builds,
    through an in-process transport, as the front desk: bookings walk the probe practitioner's grid, searches
    its calendar. Every statement SQLAlchemy executes (``before_cursor_execute``: it runs them as prepared
    statements, which asyncpg's query logger does not see) plus every one asyncpg logs outside those (BEGIN,
    COMMIT, savepoints, and anything a hot path sends on the raw connection)."""
    from asgi_lifespan import LifespanManager

    from sehat.app import create_app

    app = create_app(settings)
    starts = clinic.grid(0, 2)
    search = clinic.search_path(clinic.probe)
    figures: dict[str, Any] = {"samples": ROUND_TRIP_SAMPLES}
    async with LifespanManager(app) as manager:
        statements, stop_counting = count_wire_statements(app.state.database.engine.sync_engine)
        transport = httpx.ASGITransport(app=manager.app)
        async with httpx.AsyncClient(
            transport=transport, base_url=settings.public_base_url, headers=clinic.desk.headers
        ) as client:
            booked = 0

            async def book() -> None:
                nonlocal booked
                patient = clinic.probe_patients[booked % len(clinic.probe_patients)]
                body = booking_body(clinic, clinic.probe, patient, starts[booked], BOOKED_TYPE)
                response = await client.post(
                    APPOINTMENTS_PATH, json=body, headers={"Idempotency-Key": f"probe-{booked:04d}"}
                )
                expect(response, 201, "in-process booking")
                booked += 1

            for name, request in (("booking", book), ("search", lambda: _search(client, search))):
                for _ in range(3):  # warm: pool connections open, statements prepared
                    await request()
                statements.clear()
                started = time.perf_counter()
                for _ in range(ROUND_TRIP_SAMPLES):
                    await request()
                seconds = time.perf_counter() - started
                figures[name] = {
                    "statements": round(sum(statements.values()) / ROUND_TRIP_SAMPLES, 2),
                    "in_process_ms": round(seconds / ROUND_TRIP_SAMPLES * 1000, 2),
                    "statement_texts": {text: round(n / ROUND_TRIP_SAMPLES, 2) for text, n in statements.items()},
                }
        stop_counting()
    return figures


async def _search(client: httpx.AsyncClient, path: str) -> None:
    expect(await client.get(path), 200, "in-process slot search")


# --- part: ceiling -----------------------------------------------------------------------------------------


def pgbench_binary() -> str:
    found = shutil.which("pgbench") or ("/usr/bin/pgbench" if os.access("/usr/bin/pgbench", os.X_OK) else None)
    if found is None:
        raise BenchmarkError("pgbench is not installed (Debian: postgresql-contrib or postgresql-client)")
    return found


def _pgbench(arguments: Sequence[str], timeout: float, user: str = "postgres") -> str:
    command = [pgbench_binary(), "-h", "127.0.0.1", "-p", "5432", "-U", user, *arguments]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if completed.returncode != 0:
        raise BenchmarkError(f"`{' '.join(command)}` failed:\n{completed.stdout}{completed.stderr}")
    asyncio.run(_pgbench_backends_gone())
    return completed.stdout + completed.stderr


async def _pgbench_backends_gone(seconds: float = 5.0) -> None:
    """Wait until the backends of pgbench's connections have exited (and so been reaped, their CPU counted in
    the postmaster's): read earlier, their CPU is missing from PostgreSQL's figure and shows as other processes."""
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=10)
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            left = await connection.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'pgbench'")
            if not left:
                break
            await asyncio.sleep(0.02)
    finally:
        await connection.close()
    await asyncio.sleep(0.05)  # the postmaster reaps a backend a moment after it is gone from pg_stat_activity


def init_pgbench(options: Options) -> dict[str, Any]:
    log_step(f"initialising pgbench (scale {options.pgbench_scale}) in {options.pgbench_database}")
    asyncio.run(recreate_database(options.pgbench_database))
    started = time.perf_counter()
    _pgbench(["-i", "-q", "-s", str(options.pgbench_scale), options.pgbench_database], timeout=300)
    return {"scale": options.pgbench_scale, "seconds": round(time.perf_counter() - started, 1)}


def run_pgbench(options: Options, moment: str) -> dict[str, Any]:
    """``pgbench -N`` (simple update: three updates, a select and an insert per transaction) for
    ``--pgbench-seconds``; its tps excludes connection set-up."""
    log_step(f"pgbench -N -c {options.pgbench_clients} -j 2 -T {options.pgbench_seconds:g} -M prepared ({moment})")
    arguments = ["-N", "-c", str(options.pgbench_clients), "-j", "2", "-T", f"{options.pgbench_seconds:g}"]
    # This process as the "server": pgbench is its child, reaped before the second snapshot.
    before = take_cpu_snapshot(os.getpid())
    output = _pgbench([*arguments, "-M", "prepared", options.pgbench_database], timeout=options.pgbench_seconds + 120)
    after = take_cpu_snapshot(os.getpid())
    cores = cpu_usage_between(before, after).cores_busy
    # pgbench, a child of this process, is in the reaped children's figure; "app server" is this process.
    pgbench_cores = cores["load generator (wrk)"]
    return {
        "moment": moment,
        "command": f"pgbench {' '.join(arguments)} -M prepared",
        **_pgbench_figures(output),
        "cpu_cores_busy": recount_cores(
            cores, {"app server": None, "load generator (wrk)": None, "pgbench": pgbench_cores}
        ),
    }


# --- part: statement ---------------------------------------------------------------------------------------

# One call per transaction, as the server sends it: its arguments come from the pgbench variables ``-D`` sets,
# the client's practitioner and patient (looked up once per client, on its first transaction) and a per-client
# counter, so that every call books a slot of its own. The audit entry is built in SQL here (the
# server builds it in Python), which puts a little more on PostgreSQL than the server does.
_STATEMENT_SCRIPT = """
\\set n :n + 1
\\if :n = 1
SELECT practitioner, patient FROM bench_statement_parties WHERE client = :client_id \\gset
\\endif
SELECT sehat_book_appointment(
  :organization::uuid, :desk::uuid, false, :epoch::bigint,
  ARRAY[hashtextextended(:practitioner::text, 1), hashtextextended(:patient::text, 2)],
  'bench-statement-' || :client_id || '-' || :n, 'POST /api/v1/appointments',
  sha256(('bench-statement-' || :client_id || '-' || :n)::bytea), :answer,
  gen_random_uuid(), :facility::uuid, :practitioner::uuid, :patient::uuid, :appointment_type::uuid,
  timestamptz '2040-01-01' + ((:client_id * 1000000 + :n) * interval '10 minutes'),
  timestamptz '2040-01-01' + ((:client_id * 1000000 + :n + 1) * interval '10 minutes'),
  'booked', NULL, now(), gen_random_uuid(),
  json_build_object(
    'event_uuid', gen_random_uuid(), 'occurred_at', now(), 'organization_id', :organization::uuid,
    'actor_type', 'user', 'actor_id', :desk::uuid, 'actor_roles', json_build_array('front_office'),
    'action', 'appointment.book', 'resource_type', 'appointment', 'resource_id', gen_random_uuid(),
    'patient_id', :patient::uuid, 'outcome', 'success', 'client_address', '127.0.0.1', 'request_id', md5(:n::text),
    'details', json_build_object('facility_id', :facility::uuid, 'practitioner_id', :practitioner::uuid),
    'mac_kid', 'k1', 'mac', '\\x' || encode(sha256(:n::text::bytea), 'hex')));
"""
# An answer of the size the server stores with an Idempotency-Key (about 400 bytes of JSON).
_STATEMENT_ANSWER = json.dumps(
    {
        "id": "00000000-0000-4000-8000-000000000000",
        "patient_id": "00000000-0000-4000-8000-000000000001",
        "practitioner_id": "00000000-0000-4000-8000-000000000002",
        "facility_id": "00000000-0000-4000-8000-000000000003",
        "appointment_type_id": "00000000-0000-4000-8000-000000000004",
        "start": "2040-01-01T00:00:00Z",
        "end": "2040-01-01T00:10:00Z",
        "status": "booked",
        "hold_expires_at": None,
        "version": 1,
        "cancellation_code": None,
    },
    separators=(",", ":"),
)


async def _prepare_statement_run(database: str, clinic: Clinic, clients: int) -> int:
    """The table of each pgbench client's practitioner and patient (the distinct-slot lanes'), readable by the
    application role; the organization's schedule epoch, which the statement checks."""
    connection = await asyncpg.connect(owner_dsn(database), timeout=10)
    try:
        await connection.execute(
            "DROP TABLE IF EXISTS bench_statement_parties;"
            "CREATE TABLE bench_statement_parties (client int PRIMARY KEY, practitioner uuid, patient uuid);"
            f'GRANT SELECT ON bench_statement_parties TO "{APP_ROLE}"'
        )
        lanes = len(clinic.lanes)
        await connection.executemany(
            "INSERT INTO bench_statement_parties VALUES ($1, $2, $3)",
            [
                (client, uuid.UUID(clinic.lanes[client % lanes]), uuid.UUID(clinic.lane_patients[client % lanes][0]))
                for client in range(clients)
            ],
        )
        epoch = await connection.fetchval(
            "SELECT epoch FROM schedule_epochs WHERE organization_id = $1", clinic.desk.organization_id
        )
    finally:
        await connection.close()
    return int(epoch or 0)


async def _statement_bookings(database: str) -> int:
    connection = await asyncpg.connect(owner_dsn(database), timeout=10)
    try:
        return int(
            await connection.fetchval(
                "SELECT count(*) FROM appointments WHERE start_at >= '2040-01-01' AND status = 'booked'"
            )
        )
    finally:
        await connection.close()


def run_booking_statement(options: Options, settings: Settings, clinic: Clinic) -> dict[str, Any]:
    """pgbench calling ``sehat_book_appointment`` as the server would, with as many clients as the server's
    pools hold connections, for ``--duration`` seconds."""
    clients = options.workers * settings.database_pool_size
    if clients > len(clinic.lanes):
        clients = len(clinic.lanes)  # one practitioner and one patient per client, so that no call meets another
    epoch = asyncio.run(_prepare_statement_run(options.database, clinic, clients))
    log_step(f"the booking statement alone: pgbench, {clients} clients, -M prepared, {options.duration_seconds:g} s")
    variables = {
        "n": "0",
        "organization": str(clinic.desk.organization_id),
        "desk": str(clinic.desk.user_id),
        "facility": clinic.facility_id,
        "appointment_type": clinic.type_ids[BOOKED_TYPE],
        "epoch": str(epoch),
        "answer": _STATEMENT_ANSWER,
    }
    before_rows = asyncio.run(_statement_bookings(options.database))
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="sehat-bench-statement-", delete=False) as script:
        script.write(_STATEMENT_SCRIPT)
    try:
        arguments = ["-n", "-c", str(clients), "-j", "2", "-T", f"{options.duration_seconds:g}", "-M", "prepared"]
        definitions = [argument for name, value in variables.items() for argument in ("-D", f"{name}={value}")]
        before = take_cpu_snapshot(os.getpid())
        output = _pgbench(
            [*arguments, *definitions, "-f", script.name, options.database],
            timeout=options.duration_seconds + 120,
            user=APP_ROLE,
        )
        after = take_cpu_snapshot(os.getpid())
    finally:
        os.unlink(script.name)
    figures = _pgbench_figures(output)
    booked = asyncio.run(_statement_bookings(options.database)) - before_rows
    cores = cpu_usage_between(before, after).cores_busy
    return {
        "command": f"pgbench {' '.join(arguments)} -f <sehat_book_appointment, one call> (as {APP_ROLE})",
        "clients": clients,
        **figures,
        "booked_rows": booked,
        "cpu_cores_busy": recount_cores(
            cores, {"app server": None, "load generator (wrk)": None, "pgbench": cores["load generator (wrk)"]}
        ),
    }


def _pgbench_figures(output: str) -> dict[str, Any]:
    tps = re.search(r"tps = ([0-9.]+) \((?:without initial connection time|excluding connections)", output)
    latency = re.search(r"latency average = ([0-9.]+) ms", output)
    processed = re.search(r"number of transactions actually processed: ([0-9]+)", output)
    failed = re.search(r"number of failed transactions: ([0-9]+)", output)
    if tps is None:
        raise BenchmarkError(f"no tps in pgbench's output:\n{output}")
    return {
        "tps": round(float(tps.group(1)), 1),
        "latency_average_ms": float(latency.group(1)) if latency else None,
        "transactions": int(processed.group(1)) if processed else None,
        "failed_transactions": int(failed.group(1)) if failed else 0,
    }


async def drop_database(name: str) -> None:
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=10)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


# --- the run -----------------------------------------------------------------------------------------------


def run(options: Options) -> dict[str, Any]:
    started = time.perf_counter()
    environment = auth.bench_environment(options.database, free_loopback_port())
    owner_settings = auth.settings_for(environment)
    log_step(prepare_database(options.database, environment))
    log_step("creating an organization, a facility and a front-office account with TOTP through the services")
    desk = asyncio.run(create_front_desk(owner_settings))
    count = patients_needed(options)
    log_step(f"seeding {count:,} patients in-process (real vault) and loading them with COPY")
    seed = asyncio.run(seed_patients(owner_settings, desk, count))
    patient_ids = asyncio.run(seeded_patient_ids(options.database, desk.organization_id))
    server_environment = {**environment, "SEHAT_DATABASE_URL": app_url(options.database)}
    if options.background == "worker":
        server_environment["SEHAT_BACKGROUND_JOBS"] = "false"
    # As the server sees it, for the app built in this process; its background passes stay off here.
    app_settings = Settings(_env_file=None, database_url=app_url(options.database), background_jobs=False)  # type: ignore[call-arg]
    results: dict[str, Any] = {
        "benchmark": "scheduling",
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_cores": os.cpu_count(),
            "python": platform.python_version(),
            "postgresql": asyncio.run(postgres_version()),
            "load_generator": "python asyncio client (uvloop) in a process of its own, raw HTTP/1.1, one keep-alive "
            "connection per client, on the same cores as the server and PostgreSQL",
        },
        "workers": options.workers,
        "background_jobs": options.background,
        "duration_seconds": options.duration_seconds,
        "seed": seed.to_json(),
    }
    pgbench: list[dict[str, Any]] = []
    try:
        if "ceiling" in options.parts:
            results["pgbench_init"] = init_pgbench(options)
            pgbench.append(run_pgbench(options, "before the server started"))
        served = bool(set(options.parts) & {"distinct", "contended", "search", "statement"})
        if served:
            clinic = run_http_parts(options, server_environment, app_settings, desk, patient_ids, results, started)
            if "statement" in options.parts:
                results["statement"] = run_booking_statement(options, app_settings, clinic)
        if "ceiling" in options.parts:
            pgbench.append(run_pgbench(options, "after the server stopped" if served else "second run"))
            results["ceiling"] = {
                "runs": pgbench,
                "tps_mean": round(statistics.fmean(run["tps"] for run in pgbench), 1),
            }
    finally:
        auth.remove_redis_keys(environment["SEHAT_REDIS_KEY_PREFIX"])
        if "ceiling" in options.parts:
            asyncio.run(drop_database(options.pgbench_database))
    results["targets"] = targets(results)
    other = [
        load.get("cpu_cores_busy", {}).get("other processes", 0.0)
        for load in (
            results.get("distinct", {}).get("load"),
            results.get("contended", {}).get("load"),
            (results.get("search") or {}).get("sequential"),
            (results.get("search") or {}).get("concurrent"),
        )
        if load
    ]
    results["other_processes_cores_busy_max"] = max(other, default=0.0)
    results["contaminated"] = results["other_processes_cores_busy_max"] > CONTAMINATION_CORES
    results["total_seconds"] = round(time.perf_counter() - started, 1)
    return results


def run_http_parts(
    options: Options,
    server_environment: Mapping[str, str],
    app_settings: Settings,
    desk: FrontDesk,
    patient_ids: Sequence[str],
    results: dict[str, Any],
    started: float,
) -> Clinic:
    """The server (and its worker) up, the clinic opened, the HTTP parts measured, the statements counted; the
    clinic, for what is measured after the server stopped."""
    log_step(f"starting `sehat serve --workers {options.workers}`")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)  # the worker's log goes there before the server's
    with (
        # patients.py's helper reads only ``options.background``; its log is bench/results/patients-worker.log.
        background_worker(options, server_environment),  # type: ignore[arg-type]
        ServerProcess(
            server_environment,
            port=free_loopback_port(),
            workers=options.workers,
            log_path=RESULTS_DIR / "scheduling-server.log",
        ) as server,
    ):
        desk.refresh(server.base_url)
        clinic = open_clinic(options, server, desk, patient_ids)
        visits = searched_calendar(clinic)
        if "search" in options.parts:
            log_step(f"booking the searched practitioner's calendar: {len(visits)} visits over {SEARCH_DAYS} days")
            asyncio.run(book_calendar(server.base_url, clinic, visits))
        results["setup_seconds"] = round(time.perf_counter() - started, 1)
        results["clinic"] = {
            "practitioners": len(clinic.lanes) + len(clinic.contended) + 2,
            "hours": f"{OPENS:%H:%M}-{CLOSES:%H:%M} every day, {SLOT.seconds // 60}-minute grid",
            "timezone": str(clinic.timezone),
            "first_day": clinic.first_day.isoformat(),
            "patients": len(patient_ids),
        }
        if "distinct" in options.parts:
            results["distinct"] = measure_distinct(options, server, clinic)
        if "contended" in options.parts:
            results["contended"] = measure_contended(options, server, clinic)
        if "search" in options.parts:
            results["search"] = measure_search(options, server, clinic, visits)
        log_step("counting statements per booking and per search in this process")
        results["statements_per_request"] = asyncio.run(count_statements(app_settings, clinic))
    return clinic


def targets(results: Mapping[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    distinct, ceiling = results.get("distinct"), results.get("ceiling")
    if distinct:
        p99 = distinct["load"]["latency_p99_ms"]
        found["distinct_p99_ms"] = {
            "maximum": TARGET_DISTINCT_P99_MS,
            "measured": p99,
            "met": p99 < TARGET_DISTINCT_P99_MS,
        }
        if ceiling:
            ratio = distinct["load"]["requests_per_second"] / ceiling["tps_mean"]
            found["distinct_to_pgbench_ratio"] = {
                "minimum": TARGET_DISTINCT_RATIO,
                "measured": round(ratio, 3),
                "met": ratio >= TARGET_DISTINCT_RATIO,
            }
    if results.get("search"):
        found["search_p99_ms"] = results["search"]["targets"]["p99_ms_sequential"]
    return found


# --- report ------------------------------------------------------------------------------------------------

_HEADER = (
    f"  {'':<36}{'req/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'2xx':>7}{'409':>7}{'other':>7}{'app µs/req':>12}"
)


def _line(label: str, load: Mapping[str, Any]) -> str:
    statuses = load["statuses"]
    ok = sum(count for status, count in statuses.items() if status.startswith("2"))
    conflicts = statuses.get("409", 0)
    other = load["requests"] - ok - conflicts + load["socket_errors"]
    return (
        f"  {label:<36}{load['requests_per_second']:>8,.0f}{load['latency_p50_ms']:>9.2f}{load['latency_p99_ms']:>9.2f}"
        f"{load['latency_max_ms']:>9.1f}{ok:>7}{conflicts:>7}{other:>7}{load['server_cpu_us_per_request'] or 0:>12,.0f}"
    )


def _cores(cores: Mapping[str, float]) -> str:
    return ", ".join(
        f"{name} {value:.2f}" for name, value in cores.items() if value >= 0.005 or name == "whole machine"
    )


def _backends(states: Mapping[str, float]) -> str:
    return ", ".join(f"{state} {mean:g}" for state, mean in list(states.items())[:5]) or "none active"


def _check(name: str, check: Mapping[str, Any]) -> str:
    measured = f" ({check['measured']})" if "measured" in check else ""
    return f"  check {name.replace('_', ' ')}{measured}: {'yes' if check['met'] else 'NO'}"


def render_load_details(load: Mapping[str, Any]) -> list[str]:
    backend = load["backend_per_request"]
    return [
        f"    PostgreSQL transactions per request {backend['postgres_transactions']:g}, new connections "
        f"{backend['postgres_new_connections_total']}; problem codes: {load['problem_codes'] or 'none'}",
        f"    cores busy: {_cores(load['cpu_cores_busy'])}; per server worker: "
        + " / ".join(f"{value:.2f}" for value in load["server_workers_cores"]),
        f"    PostgreSQL backends (mean per 20 ms sample): {_backends(load['postgres_backends'])}",
    ]


def render_report(results: Mapping[str, Any]) -> str:
    machine = results["machine"]
    lines = [
        "",
        f"sehat benchmark: scheduling (issue 5) at {results['measured_at']}",
        f"machine: {machine['cpu_cores']} cores, Python {machine['python']}, PostgreSQL {machine['postgresql']}; "
        f"{results['workers']} server workers, background jobs in a {results['background_jobs']}",
        f"load generator: {machine['load_generator']}",
    ]
    if "clinic" in results:
        clinic = results["clinic"]
        lines.append(
            f"clinic: {clinic['practitioners']} practitioners, {clinic['hours']} ({clinic['timezone']}), bookings from "
            f"{clinic['first_day']}; {clinic['patients']:,} patients seeded in {results['seed']['seconds']:g} s; "
            f"setup took {results.get('setup_seconds', 0):g} s"
        )
    lines += ["", _HEADER]
    if "distinct" in results:
        distinct = results["distinct"]
        lines += [
            _line(f"1. distinct slots, {distinct['clients']} clients, warm-up", distinct["warmup"]),
            _line(f"1. distinct slots, {distinct['clients']} clients", distinct["load"]),
            *render_load_details(distinct["load"]),
            f"    slots booked per client over both: median {distinct['slots_booked_per_client']['median']:g}, "
            f"{distinct['slots_booked_per_client']['min']}-{distinct['slots_booked_per_client']['max']}",
        ]
        lines += [_check(name, check) for name, check in distinct["checks"].items()]
    if "contended" in results:
        contended = results["contended"]
        lines += [
            _line(f"2. contended: {contended['slots']} slots, {contended['clients']} clients", contended["load"]),
            *render_load_details(contended["load"]),
            f"    active appointments per slot: {contended['active_appointments_per_slot']}",
        ]
        lines += [_check(name, check) for name, check in contended["checks"].items()]
    if "search" in results:
        search = results["search"]
        sequential, latency = search["sequential"], search["sequential"]["latency"]
        lines += [
            f"  3. slot search, {search['window']['days']} days, {search['appointment_type_minutes']}-minute visits, "
            f"{search['bookings_in_window']} bookings in the window ({search['share_of_time_booked']:.0%} of the "
            f"hours booked), {sequential['slots_answered']:,} free slots answered ({sequential['response_bytes']:,} "
            "bytes)",
            f"    sequential, one client, {latency['samples']} searches: p50 {latency['p50_ms']:.2f} ms, p99 "
            f"{latency['p99_ms']:.2f} ms, max {latency['max_ms']:.1f} ms; app CPU "
            f"{sequential['server_cpu_us_per_search']:,.0f} µs per search",
            "    first answer equals the seeded calendar's free slots: "
            + (
                "yes"
                if sequential["answer_as_expected"]
                else f"NO (expected {sequential['slots_expected']}, missing e.g. {sequential['missing_examples']}, "
                f"unexpected e.g. {sequential['unexpected_examples']})"
            ),
        ]
        if search["concurrent"]:
            lines += [
                _line(f"3. slot search, {search['concurrent']['connections']} clients", search["concurrent"]),
                *render_load_details(search["concurrent"]),
            ]
    if "statement" in results:
        statement = results["statement"]
        lines.append(
            f"  4. the booking statement alone, {statement['command']}: {statement['tps']:,.0f} tps, latency average "
            f"{statement['latency_average_ms']} ms, failed {statement['failed_transactions']}, appointments booked "
            f"{statement['booked_rows']:,} of {statement['transactions']:,} calls; cores busy: "
            f"{_cores(statement['cpu_cores_busy'])}"
        )
    if "ceiling" in results:
        ceiling = results["ceiling"]
        for pgbench in ceiling["runs"]:
            lines.append(
                f"  5. {pgbench['command']} ({pgbench['moment']}): {pgbench['tps']:,.0f} tps, latency average "
                f"{pgbench['latency_average_ms']} ms, failed {pgbench['failed_transactions']}; cores busy: "
                f"{_cores(pgbench['cpu_cores_busy'])}"
            )
        lines.append(f"     pgbench mean: {ceiling['tps_mean']:,.0f} tps")
    if "statements_per_request" in results:
        statements = results["statements_per_request"]
        lines.append("  statements on the wire per request (in this process, BEGIN and COMMIT included):")
        for name in ("booking", "search"):
            figures = statements[name]
            lines.append(f"    {name}: {figures['statements']:g} ({figures['in_process_ms']:.1f} ms each in-process)")
            lines += [f"      {count:g} x {text}" for text, count in figures["statement_texts"].items()]
    found = results["targets"]
    lines += ["", "targets:"]
    if "distinct_to_pgbench_ratio" in found:
        target = found["distinct_to_pgbench_ratio"]
        lines.append(
            f"  distinct bookings / pgbench tps = {results['distinct']['load']['requests_per_second']:,.0f} / "
            f"{results['ceiling']['tps_mean']:,.0f} = {target['measured']:.3f}   target >= {TARGET_DISTINCT_RATIO:g}: "
            f"{_verdict(target['met'])}"
        )
    if "distinct_p99_ms" in found:
        target = found["distinct_p99_ms"]
        lines.append(
            f"  distinct bookings p99 {target['measured']:.1f} ms   target < {TARGET_DISTINCT_P99_MS:g} ms: "
            f"{_verdict(target['met'])}"
        )
    if "search_p99_ms" in found:
        target = found["search_p99_ms"]
        lines.append(
            f"  slot search over {SEARCH_DAYS} days p99 {target['measured']:.2f} ms   target < "
            f"{TARGET_SEARCH_P99_MS:g} ms: {_verdict(target['met'])}"
        )
    statement, distinct = results.get("statement"), results.get("distinct")
    if statement and distinct:
        lines += ["", "beside the targets:"]
        if "ceiling" in results:
            lines.append(
                f"  the booking statement alone / pgbench tps = {statement['tps']:,.0f} / "
                f"{results['ceiling']['tps_mean']:,.0f} = {statement['tps'] / results['ceiling']['tps_mean']:.3f}"
                " (what PostgreSQL by itself does for a booking's write, against its simple update)"
            )
        lines.append(
            f"  distinct bookings over HTTP / the booking statement alone = "
            f"{distinct['load']['requests_per_second']:,.0f} / {statement['tps']:,.0f} = "
            f"{distinct['load']['requests_per_second'] / statement['tps']:.3f}"
        )
    if results["contaminated"]:
        lines.append(
            f"WARNING: other processes kept {results['other_processes_cores_busy_max']:.2f} cores busy during a load; "
            "the figures are low. Run again on a quiet machine."
        )
    lines.append(f"whole run: {results['total_seconds']:g} s")
    return "\n".join(lines) + "\n"


def main(arguments: list[str]) -> int:
    return run_benchmark("scheduling", parse_options(arguments), run, render_report)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
