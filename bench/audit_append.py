"""Issue 3 benchmark: what writing an audit entry costs a read of patient data, with 32 concurrent clients.

What is measured
  ``GET /bench/records/{id}`` (bench/audit_app.py): a signed-in organization administrator reads one record
  through the scoped query, row-level security and the request's unit of work, exactly as a patient read
  will, and the read is audited in the same transaction. Two servers of the same benchmark build run side by
  side: one audits (``SEHAT_BENCH_AUDIT=on``), one does not (``off``). Each is loaded in turn, alternating
  (on, off, on, off, ...), with ``wrk -t2 -c32`` after a warm-up, and the ratio audited ÷ not audited of
  requests per second is the figure (target: at least 0.8). Every audited request must have left exactly
  one entry: the entries written during each audited round are counted against the requests answered.
  Ceiling, measured in the same run: ``pgbench`` with 32 clients running the same transaction shape
  directly against PostgreSQL (set the scope, read the row, insert an entry, commit).

How
  A dedicated database (``sehat_bench_audit``) is re-created and migrated as the owner; the servers connect
  as the application role (row-level security applies). Redis gets its own key prefix, removed at the end.
  One organization, an administrator with TOTP and one facility are created through the real services.

Output: a table on stdout and JSON in ``bench/results/audit-append.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import platform
import re
import statistics
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg

import auth
from audit_app import AUDIT_SWITCH, RECORD_PATH
from harness import (
    RESULTS_DIR,
    BenchmarkError,
    LoadResult,
    ServerProcess,
    app_url,
    choose_load_generator,
    free_loopback_port,
    log_step,
    postgres_version,
    prepare_database,
    stop_on_sigterm,
    write_results,
)

TARGET_MIN_RATIO = 0.8
CONTAMINATION_CORES = 0.25


@dataclass(frozen=True)
class Options:
    database: str
    workers: int
    threads: int
    connections: int
    duration_seconds: float
    warmup_seconds: float
    rounds: int
    load_generator: str


def parse_options(arguments: list[str]) -> Options:
    parser = argparse.ArgumentParser(prog="bench audit-append", description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", default="sehat_bench_audit")
    parser.add_argument("--workers", type=int, default=2, help="server processes per server")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32, help="concurrent clients (the issue asks for 32)")
    parser.add_argument("--duration", type=float, default=8, help="seconds of load per round")
    parser.add_argument("--warmup", type=float, default=3)
    parser.add_argument("--rounds", type=int, default=3, help="rounds per server, alternating")
    parser.add_argument("--load-generator", choices=("auto", "wrk", "python"), default="auto")
    parsed = parser.parse_args(arguments)
    return Options(
        database=parsed.database,
        workers=parsed.workers,
        threads=parsed.threads,
        connections=parsed.connections,
        duration_seconds=parsed.duration,
        warmup_seconds=parsed.warmup,
        rounds=parsed.rounds,
        load_generator=parsed.load_generator,
    )


async def create_record(settings: Any) -> str:
    """One facility of the benchmark organization, created by its administrator through the service."""
    from sqlalchemy import select

    from sehat.core.actor import Actor, Audience, Role
    from sehat.core.db import Database, create_engine
    from sehat.identity.models import User
    from sehat.tenancy.schemas import FacilityCreate
    from sehat.tenancy.service import create_facility

    database = Database(create_engine(settings))
    try:
        async with database.unit_of_work() as session:
            admin = await session.scalar(select(User).where(User.email == auth.MFA_USER_EMAIL))
        if admin is None:
            raise BenchmarkError("the benchmark administrator was not created")
        actor = Actor(
            user_id=admin.id,
            organization_id=admin.organization_id,
            roles=frozenset({Role.org_admin}),
            audience=Audience.staff,
            session_id=uuid.uuid4(),
            token_id="bench",
        )
        async with database.unit_of_work(actor=actor) as session:
            facility = await create_facility(
                session, actor, FacilityCreate(name="Benchmark Clinic North", code="NORTH", timezone="Asia/Karachi")
            )
            return str(facility.id)
    finally:
        await database.dispose()


async def count_entries(database: str) -> int:
    connection = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}", timeout=10)
    try:
        return int(await connection.fetchval("SELECT count(*) FROM audit_events WHERE action = 'patient.read'"))
    finally:
        await connection.close()


def pgbench_ceiling(options: Options, organization_id: str, record_id: str) -> dict[str, Any]:
    """The same transaction straight against PostgreSQL as the application role, 32 clients: the database's
    own rate for an audited read, with no Python in the way."""
    # Values arrive as pgbench variables (-D), bound as parameters with -M prepared.
    script = (
        "BEGIN;\n"
        "SELECT set_config('sehat.organization_id', :organization, true), "
        "set_config('sehat.scope', 'organization', true);\n"
        "SELECT id, name, timezone FROM facilities "
        "WHERE id = :record::uuid AND organization_id = :organization::uuid;\n"
        "INSERT INTO audit_events (event_uuid, occurred_at, organization_id, actor_type, actor_id, actor_roles, "
        "action, resource_type, resource_id, patient_id, outcome, client_address, request_id, details, mac_kid, mac) "
        "VALUES (gen_random_uuid(), now(), :organization::uuid, 'user', gen_random_uuid(), '[\"org_admin\"]', "
        "'pgbench.read', 'facility', :record, gen_random_uuid(), 'success', '127.0.0.1', 'pgbench', '{}', 'x', "
        "'\\x00');\n"
        "COMMIT;\n"
    )
    with tempfile.NamedTemporaryFile("w", suffix=".sql", prefix="sehat-bench-", delete=False) as handle:
        handle.write(script)
        path = handle.name
    try:
        completed = subprocess.run(
            [
                "pgbench", "-h", "127.0.0.1", "-U", "sehat_app", "-n", "-M", "prepared",
                "-c", str(options.connections), "-j", str(options.threads), "-T", f"{options.duration_seconds:g}",
                "-D", f"organization={uuid.UUID(organization_id)}", "-D", f"record={uuid.UUID(record_id)}",
                "-f", path, options.database,
            ],
            capture_output=True, text=True, timeout=options.duration_seconds + 60, check=False,
        )  # fmt: skip
    finally:
        os.unlink(path)
    match = re.search(r"tps = ([0-9.]+)", completed.stdout)
    if completed.returncode != 0 or match is None:
        raise BenchmarkError(f"pgbench failed ({completed.returncode}):\n{completed.stdout}{completed.stderr}")
    return {"transactions_per_second": round(float(match.group(1)), 1), "clients": options.connections}


def run(options: Options) -> dict[str, Any]:
    ports = {"on": free_loopback_port(), "off": free_loopback_port()}
    # The owner's URL, for setting up; the servers connect as the application role.
    environment = auth.bench_environment(options.database, ports["on"])
    settings = auth.settings_for(environment)
    wrk, load_generator_note = choose_load_generator(options.load_generator)
    log_step(prepare_database(options.database, environment))
    asyncio.run(auth.create_accounts(settings))
    record_id = asyncio.run(create_record(settings))
    path = RECORD_PATH.format(record_id=record_id)

    server_environment = {**environment, "SEHAT_DATABASE_URL": app_url(options.database)}
    rounds: dict[str, list[LoadResult]] = {"on": [], "off": []}
    entries: list[dict[str, int]] = []
    try:
        log_step(f"starting two benchmark servers (audit on, audit off), {options.workers} workers each")
        with (
            ServerProcess(
                {**server_environment, AUDIT_SWITCH: "on", "SEHAT_PUBLIC_BASE_URL": f"http://127.0.0.1:{ports['on']}"},
                port=ports["on"], workers=options.workers, log_path=RESULTS_DIR / "audit-on-server.log",
                factory="audit_app:create_bench_app",
            ) as audited,
            ServerProcess(
                {**server_environment, AUDIT_SWITCH: "off"},
                port=ports["off"], workers=options.workers, log_path=RESULTS_DIR / "audit-off-server.log",
                factory="audit_app:create_bench_app",
            ) as unaudited,
        ):  # fmt: skip
            token = auth.full_access_token_with_totp(audited.base_url)
            headers = auth.bearer(token)
            servers = {"on": audited, "off": unaudited}
            for name, server in servers.items():
                log_step(f"warming up audit {name} for {options.warmup_seconds:g} s")
                auth.run_load(options, wrk, server, path, headers, options.warmup_seconds)
            for number in range(options.rounds):
                for name in ("on", "off") if number % 2 == 0 else ("off", "on"):
                    before = asyncio.run(count_entries(options.database)) if name == "on" else 0
                    log_step(f"round {number + 1}: audit {name}, {options.duration_seconds:g} s")
                    result = auth.run_load(options, wrk, servers[name], path, headers, options.duration_seconds)
                    rounds[name].append(result)
                    if name == "on":
                        time.sleep(0.5)  # requests cut off by the deadline may still be committing
                        written = asyncio.run(count_entries(options.database)) - before
                        entries.append({"requests": result.requests, "entries_written": written})
        log_step(f"pgbench ceiling: the same transaction, {options.connections} clients")
        identifiers = asyncio.run(_organization_of(options.database, record_id))
        ceiling = pgbench_ceiling(options, identifiers, record_id)
    finally:
        auth.remove_redis_keys(environment["SEHAT_REDIS_KEY_PREFIX"])

    on_rate = statistics.median(result.requests_per_second for result in rounds["on"])
    off_rate = statistics.median(result.requests_per_second for result in rounds["off"])
    ratio = on_rate / off_rate if off_rate else 0.0
    errors = sum(result.errors for results in rounds.values() for result in results)
    other_load = max(
        result.cpu_cores_busy.get("other processes", 0.0) for results in rounds.values() for result in results
    )
    # wrk counts only answered requests; one cut off at the deadline may have committed its entry anyway.
    entries_match = all(0 <= row["entries_written"] - row["requests"] <= options.connections for row in entries)
    return {
        "benchmark": "audit-append",
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_cores": os.cpu_count(),
            "python": platform.python_version(),
            "postgresql": asyncio.run(postgres_version()),
            "load_generator": load_generator_note,
        },
        "load": {
            "path": RECORD_PATH,
            "connections": options.connections,
            "threads": options.threads,
            "workers_per_server": options.workers,
            "duration_seconds": options.duration_seconds,
            "rounds": options.rounds,
        },
        "audited": [result.to_json() for result in rounds["on"]],
        "not_audited": [result.to_json() for result in rounds["off"]],
        "audited_requests_per_second_median": round(on_rate, 1),
        "not_audited_requests_per_second_median": round(off_rate, 1),
        "ratio_audited_to_not_audited": round(ratio, 3),
        "entries_per_audited_round": entries,
        "pgbench_ceiling": ceiling,
        "audited_to_pgbench_ceiling": round(on_rate / ceiling["transactions_per_second"], 3),
        "errors": errors,
        "other_processes_cores_busy_max": other_load,
        "contaminated": other_load > CONTAMINATION_CORES,
        "targets": {
            "ratio": {"minimum": TARGET_MIN_RATIO, "measured": round(ratio, 3), "met": ratio >= TARGET_MIN_RATIO},
            "one_entry_per_audited_request": {"met": entries_match},
            "no_errors": {"measured_errors": errors, "met": errors == 0},
        },
    }


async def _organization_of(database: str, record_id: str) -> str:
    connection = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:5432/{database}", timeout=10)
    try:
        query = "SELECT organization_id FROM facilities WHERE id = $1"
        organization = await connection.fetchval(query, uuid.UUID(record_id))
        return str(organization)
    finally:
        await connection.close()


def render_report(results: dict[str, Any]) -> str:
    machine, load, targets = results["machine"], results["load"], results["targets"]

    def rates(name: str) -> str:
        return ", ".join(f"{round['requests_per_second']:,.0f}" for round in results[name])

    def latency(name: str) -> str:
        return ", ".join(f"{round['latency_p99_ms']:.1f}" for round in results[name])

    lines = [
        "",
        f"audit append benchmark, {results['measured_at']}",
        f"machine: {machine['cpu_cores']} cores, Python {machine['python']}, PostgreSQL {machine['postgresql']}",
        f"load: {machine['load_generator']}, {load['connections']} connections, {load['duration_seconds']:g} s per "
        f"round, {load['rounds']} rounds each, {load['workers_per_server']} workers per server",
        f"  audited      req/s per round: {rates('audited')}   p99 ms: {latency('audited')}",
        f"  not audited  req/s per round: {rates('not_audited')}   p99 ms: {latency('not_audited')}",
        f"  ratio audited / not audited (medians): {results['ratio_audited_to_not_audited']:.2f}"
        f"   target >= {targets['ratio']['minimum']}: {'MET' if targets['ratio']['met'] else 'NOT MET'}",
        f"  pgbench ceiling (same transaction, {results['pgbench_ceiling']['clients']} clients): "
        f"{results['pgbench_ceiling']['transactions_per_second']:,.0f} tps; audited requests reach "
        f"{results['audited_to_pgbench_ceiling']:.2f} of it",
        "  entries written per audited round (requests answered, entries): "
        + ", ".join(f"{row['requests']}/{row['entries_written']}" for row in results["entries_per_audited_round"])
        + f"   one per request: {'MET' if targets['one_entry_per_audited_request']['met'] else 'NOT MET'}",
        f"  errors: {results['errors']}",
    ]
    if results["contaminated"]:
        lines.append(
            f"  WARNING: other processes kept {results['other_processes_cores_busy_max']:.2f} cores busy during the "
            "load; these figures are contaminated, run again on a quiet machine"
        )
    return "\n".join(lines)


def main(arguments: list[str]) -> int:
    options = parse_options(arguments)
    with stop_on_sigterm():
        results = run(options)
    write_results("audit-append", results)
    print(render_report(results))
    return 0
