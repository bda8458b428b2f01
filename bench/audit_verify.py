"""Issue 3 benchmark: how fast the audit log verifies, and what an idle sealing pass costs, at a million entries.

What is measured
  1. ``AuditChain.verify`` in this process, and ``sehat audit verify`` end to end (a fresh process: start-up,
     imports, key derivation, connection and the walk), each ``--rounds`` times over ``--entries`` valid,
     sealed entries: entries per second against the target of 200,000, and the CPU each side spent per entry
     (this process, PostgreSQL). Both connect as the application role, so row-level security applies.
  2. Ceiling, in the same run: reading the same rows through the same queries and connection, with the next
     batch requested ahead as the verifier does, and checking nothing.
  3. The sealer with nothing to seal: its first pass in a process (a whole-table scan, as at start-up), then
     ``--idle-passes`` passes as the background task runs them; beside them, the query the sealer ran on every
     pass before it kept a floor (unsealed entries found by ``NOT EXISTS`` over the whole table). Idle passes
     must leave the checkpoint file alone: the head did not move.

How
  A dedicated database (``sehat_bench_audit_verify``) is re-created and migrated as the owner, which grants the
  application role. Entries are made in this process with the real code (``canonical_content`` and
  ``entry_mac`` for each MAC, ``chain_step`` for each seal, ``AuditChain.write_checkpoint`` for the signed
  checkpoint) and loaded with COPY in batches, then the tables are vacuumed and analysed as autovacuum would
  have. The mix of entries follows what the application writes (patient reads, denials, failed sign-ins,
  system jobs), over the last 30 days. When processes outside this benchmark kept more than a quarter of a
  core busy during a measurement, the report says so: the figures are then low.

Output: a table on stdout and the same figures as JSON in ``bench/results/audit-verify.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from auth import settings_for
from harness import (
    APP_ROLE,
    BenchmarkError,
    CpuSnapshot,
    app_url,
    log_step,
    owner_url,
    postgres_version,
    prepare_database,
    run_benchmark,
    run_sehat_command,
    take_cpu_snapshot,
)

TARGET_ENTRIES_PER_SECOND = 200_000
# Cores used by processes outside this benchmark while it measured, above which it says so.
CONTAMINATION_CORES = 0.25
COPY_BATCH = 50_000
EVENT_COLUMNS = (
    "id",
    "event_uuid",
    "occurred_at",
    "organization_id",
    "actor_type",
    "actor_id",
    "actor_roles",
    "action",
    "resource_type",
    "resource_id",
    "patient_id",
    "outcome",
    "client_address",
    "request_id",
    "details",
    "mac_kid",
    "mac",
)
SEAL_COLUMNS = ("chain_index", "event_id", "chain_kid", "chain_hash", "sealed_at")


@dataclass(frozen=True)
class Options:
    database: str
    entries: int
    rounds: int
    idle_passes: int


def parse_options(arguments: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python3 dev.py bench audit-verify",
        description="Audit log verification and idle sealing (issue 3); see bench/audit_verify.py.",
    )
    parser.add_argument("--database", default="sehat_bench_audit_verify", help="database to drop and re-create")
    parser.add_argument("--entries", type=int, default=1_000_000, help="valid, sealed entries to verify")
    parser.add_argument("--rounds", type=int, default=3, help="timed verifications, in-process and CLI each")
    parser.add_argument("--idle-passes", type=int, default=20, help="timed sealing passes with nothing to seal")
    parsed = parser.parse_args(arguments)
    if parsed.entries < 1 or parsed.rounds < 1 or parsed.idle_passes < 1:
        parser.error("--entries, --rounds and --idle-passes must be positive")
    return Options(parsed.database, parsed.entries, parsed.rounds, parsed.idle_passes)


# --- configuration ----------------------------------------------------------------------------------------


def bench_environment(database: str, checkpoint_file: Path) -> dict[str, str]:
    """The environment of every sehat process of this run: the app role's URL, a fresh master key, the
    checkpoint file; inherited ``SEHAT_`` variables are dropped so nothing from this shell leaks in."""
    from sehat.core.crypto import KeyRing

    environment = {name: value for name, value in os.environ.items() if not name.startswith("SEHAT_")}
    environment.update(
        {
            "SEHAT_DATABASE_URL": app_url(database),
            "SEHAT_MASTER_KEY": KeyRing.generate_entry(),
            "SEHAT_AUDIT_CHECKPOINT_FILE": str(checkpoint_file),
            "SEHAT_LOG_LEVEL": "WARNING",
        }
    )
    return environment


# --- a million entries, made by the real code -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    """What ``canonical_content`` reads from an AuditEvent, without an ORM object per entry (which would make
    building a million of them take a minute instead of seconds)."""

    occurred_at: dt.datetime
    action: str
    outcome: str
    actor_type: str
    event_uuid: uuid.UUID = field(default_factory=uuid.uuid4)
    organization_id: uuid.UUID | None = None
    actor_id: uuid.UUID | None = None
    actor_roles: list[str] = field(default_factory=list)
    resource_type: str | None = None
    resource_id: str | None = None
    patient_id: uuid.UUID | None = None
    client_address: str | None = None
    request_id: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class _People:
    organizations: list[uuid.UUID]
    staff: list[tuple[uuid.UUID, uuid.UUID, list[str], str]]  # user, organization, roles, address

    @classmethod
    def make(cls, rng: random.Random) -> _People:
        organizations = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(20)]
        roles = ["doctor", "nurse", "front_office", "billing", "auditor", "org_admin"]
        staff = [
            (
                uuid.UUID(int=rng.getrandbits(128), version=4),
                rng.choice(organizations),
                sorted(rng.sample(roles, rng.randint(1, 2))),
                f"10.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
            )
            for _ in range(300)
        ]
        return cls(organizations, staff)


def _entry(number: int, at: dt.datetime, people: _People, rng: random.Random) -> _Entry:
    """The application's mix: 60% patient reads, 20% denials, 10% failed sign-ins, 10% system jobs."""
    kind = number % 10
    if kind == 8:
        return _Entry(
            at,
            "auth.sign_in",
            "failure",
            "anonymous",
            client_address=f"203.0.113.{rng.randint(1, 254)}",
            details={"reason": "invalid_credentials", "account": uuid.uuid4().hex},
        )
    if kind == 9:
        return _Entry(at, "reminder.sent", "success", "system", actor_roles=["reminders"], resource_type="appointment",
                      resource_id=str(uuid.uuid4()))  # fmt: skip
    user, organization, roles, address = people.staff[number % len(people.staff)]
    staff: dict[str, Any] = {
        "organization_id": organization,
        "actor_id": user,
        "actor_roles": roles,
        "client_address": address,
        "request_id": uuid.uuid4().hex,
    }
    if kind < 6:
        patient = uuid.uuid4()
        return _Entry(at, "patient.read", "success", "user", resource_type="patient", resource_id=str(patient),
                      patient_id=patient, details={"fields": ["demographics", "contact"], "purpose": "treatment"},
                      **staff)  # fmt: skip
    path_params = {"patient_id": str(uuid.uuid4())}
    details = {"method": "GET", "route": "/api/v1/patients/{patient_id}", "status": 403, "code": "forbidden",
               "path_params": path_params}  # fmt: skip
    return _Entry(at, "route.denied", "denied", "user", resource_type="route", details=details, **staff)


def _batches_of_rows(
    entries: int, key_ring: Any
) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]], bytes]]:
    """COPY rows of entries and of their seals, batch by batch, with the chain's head after each batch."""
    from sehat.core.audit import CHAIN_PURPOSE, GENESIS, MAC_PURPOSE, canonical_content, chain_step, entry_mac

    rng = random.Random(20_26)
    people = _People.make(rng)
    mac_kid, mac_key = key_ring.derive(MAC_PURPOSE)
    chain_kid, chain_key = key_ring.derive(CHAIN_PURPOSE)
    start = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    step_us = max(1, int(30 * 86_400 * 1_000_000 / entries))
    sealed_at = dt.datetime.now(dt.UTC)
    head = GENESIS
    for first in range(1, entries + 1, COPY_BATCH):
        events, seals = [], []
        for number in range(first, min(first + COPY_BATCH, entries + 1)):
            at = start + dt.timedelta(microseconds=number * step_us + rng.randrange(step_us))
            entry = _entry(number, at, people, rng)
            mac = entry_mac(mac_key, canonical_content(entry))  # type: ignore[arg-type]
            head = chain_step(chain_key, head, mac)
            # JSON columns hold what SQLAlchemy writes: json.dumps of the value.
            events.append((number, entry.event_uuid, at, entry.organization_id, entry.actor_type, entry.actor_id,
                           json.dumps(entry.actor_roles), entry.action, entry.resource_type, entry.resource_id,
                           entry.patient_id, entry.outcome, entry.client_address, entry.request_id,
                           json.dumps(entry.details), mac_kid, mac))  # fmt: skip
            seals.append((number, number, chain_kid, head, sealed_at))
        yield events, seals, head


async def load_entries(database: str, entries: int, key_ring: Any) -> bytes:
    """COPY the entries and their seals as the owner; the chain's head hash."""
    connection = await asyncpg.connect(owner_url(database).replace("+asyncpg", ""), timeout=10)
    head = b""
    try:
        loaded = 0
        for events, seals, batch_head in _batches_of_rows(entries, key_ring):
            head = batch_head
            await connection.copy_records_to_table("audit_events", records=events, columns=EVENT_COLUMNS)
            await connection.copy_records_to_table("audit_seals", records=seals, columns=SEAL_COLUMNS)
            loaded += len(events)
            if loaded % 200_000 < COPY_BATCH:
                log_step(f"  {loaded:,} entries loaded")
        await connection.execute("SELECT setval(pg_get_serial_sequence('audit_events', 'id'), $1)", entries)
        for table in ("audit_events", "audit_seals"):
            await connection.execute(f"VACUUM (ANALYZE) {table}")
    finally:
        await connection.close()
    return head


# --- CPU accounting -----------------------------------------------------------------------------------------


@dataclass
class Busy:
    """CPU during one measurement. ``this_process`` counts this process and any child it reaped meanwhile
    (the CLI), ``postgres`` every PostgreSQL process; ``other`` is the rest of the machine."""

    seconds: float
    this_process_cpu_seconds: float
    postgres_cpu_seconds: float
    other_cores: float

    @classmethod
    def between(cls, before: CpuSnapshot, after: CpuSnapshot) -> Busy:
        wall = max(after.wall - before.wall, 1e-9)
        # take_cpu_snapshot(os.getpid()) puts this process, with its reaped children, under "app server".
        this = after.by_group["app server"] - before.by_group["app server"]
        postgres = after.by_group["postgres"] - before.by_group["postgres"]
        redis = after.by_group["redis"] - before.by_group["redis"]
        machine = after.machine_busy - before.machine_busy
        return cls(wall, this, postgres, max(0.0, machine - this - postgres - redis) / wall)


@dataclass
class Round:
    entries: int
    seconds: float
    entries_per_second: float
    this_process_us_per_entry: float
    postgres_us_per_entry: float
    other_cores: float
    background_cores: float = 0.0
    output: str = ""

    @classmethod
    def of(cls, entries: int, busy: Busy, output: str = "") -> Round:
        return cls(
            entries=entries,
            seconds=round(busy.seconds, 3),
            entries_per_second=round(entries / busy.seconds),
            this_process_us_per_entry=round(busy.this_process_cpu_seconds / entries * 1e6, 2),
            postgres_us_per_entry=round(busy.postgres_cpu_seconds / entries * 1e6, 2),
            other_cores=round(busy.other_cores, 2),
            output=output,
        )


def snapshot() -> CpuSnapshot:
    return take_cpu_snapshot(os.getpid())


def background_cores(seconds: float = 1.0) -> float:
    """Cores the rest of the machine kept busy while this benchmark waited: PostgreSQL serving someone else
    counts here, where during a measurement it cannot be told apart from the verifier's own backend."""
    before = snapshot()
    time.sleep(seconds)
    after = snapshot()
    wall = max(after.wall - before.wall, 1e-9)
    this = after.by_group["app server"] - before.by_group["app server"]
    return max(0.0, after.machine_busy - before.machine_busy - this) / wall


# --- measurements -------------------------------------------------------------------------------------------


async def verify_in_process(settings: Any, chain: Any, entries: int) -> Round:
    from sehat.core.db import Database, create_engine

    database = Database(create_engine(settings))
    try:
        # One connection made and warmed first: a verification in a running process does not open one.
        async with database.unit_of_work() as session:
            await session.connection()
        before = snapshot()
        report = await chain.verify(database)
        after = snapshot()
    finally:
        await database.dispose()
    if not report.ok or report.sealed != entries or report.unsealed != 0:
        raise BenchmarkError(f"verification did not pass: {report.sealed} sealed, findings {report.findings[:3]}")
    return Round.of(entries, Busy.between(before, after))


def verify_by_command(environment: dict[str, str], entries: int) -> Round:
    before = snapshot()
    output = run_sehat_command(["audit", "verify"], environment, timeout=900)
    after = snapshot()
    if not output.startswith(f"OK: {entries} sealed entries, 0 awaiting a seal"):
        raise BenchmarkError(f"`sehat audit verify` did not pass:\n{output}")
    return Round.of(entries, Busy.between(before, after), output)


async def read_rows_only(settings: Any, entries: int) -> Round:
    """The ceiling: the verifier's chain queries on its connection, the next batch asked for ahead, no checks."""
    from sehat.core.audit_chain import verification_rows
    from sehat.core.db import Database, create_engine

    database = Database(create_engine(settings))
    seen = 0
    try:
        async with database.unit_of_work() as session:
            source = await verification_rows(session)
            before = snapshot()
            pending = asyncio.ensure_future(source.chain_after(None))
            while rows := await pending:
                pending = asyncio.ensure_future(source.chain_after(rows[-1][0]))
                seen += len(rows)
            after = snapshot()
    finally:
        await database.dispose()
    if seen != entries:
        raise BenchmarkError(f"read {seen} rows, expected {entries}")
    return Round.of(entries, Busy.between(before, after))


@dataclass
class IdleSealing:
    first_pass_ms: float
    idle_pass_ms: list[float] = field(default_factory=list)
    previous_query_ms: list[float] = field(default_factory=list)
    scanned_above: int | None = None
    checkpoint_lines_added: int = 0
    other_cores: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "first_pass_ms_whole_table": round(self.first_pass_ms, 1),
            "idle_pass_ms_median": round(statistics.median(self.idle_pass_ms), 2),
            "idle_pass_ms_max": round(max(self.idle_pass_ms), 2),
            "previous_idle_query_ms_median": round(statistics.median(self.previous_query_ms), 1),
            "idle_passes": len(self.idle_pass_ms),
            "scanned_above_id": self.scanned_above,
            "checkpoint_lines_added_by_idle_passes": self.checkpoint_lines_added,
            "other_cores": round(self.other_cores, 2),
        }


async def idle_sealing(settings: Any, key_ring: Any, checkpoint_file: Path, passes: int) -> IdleSealing:
    """The background sealer's passes with nothing to seal, as the app role, with the default settle time."""
    from sqlalchemy import exists, select

    from sehat.core.audit import AuditEvent, AuditSeal
    from sehat.core.audit_chain import AuditChain
    from sehat.core.clock import utcnow
    from sehat.core.db import Database, create_engine
    from sehat.core.tenant_scope import enter_platform_scope

    database = Database(create_engine(settings))
    chain = AuditChain(key_ring, checkpoint_file, settings.audit_seal_settle_seconds)
    try:
        started = time.perf_counter()
        first = await chain.seal_pass(database)
        result = IdleSealing(first_pass_ms=(time.perf_counter() - started) * 1000)
        if first.sealed or first.refused:
            raise BenchmarkError(f"the first sealing pass found work: {first}")
        before = snapshot()
        for _ in range(passes):
            started = time.perf_counter()
            done = await chain.seal_pass(database)
            result.idle_pass_ms.append((time.perf_counter() - started) * 1000)
            result.scanned_above = done.scanned_above
        after = snapshot()
        result.other_cores = Busy.between(before, after).other_cores
        # What every pass ran before the sealer kept a floor: the unsealed, settled entries, over the whole table.
        previous = (
            select(AuditEvent)
            .where(~exists().where(AuditSeal.event_id == AuditEvent.id))
            .where(AuditEvent.occurred_at <= utcnow() - chain.settle)
            .order_by(AuditEvent.id)
            .limit(5_000)
        )
        for _ in range(min(passes, 5)):
            async with database.unit_of_work() as session:
                await enter_platform_scope(session)
                started = time.perf_counter()
                (await session.scalars(previous)).all()
                result.previous_query_ms.append((time.perf_counter() - started) * 1000)
    finally:
        await database.dispose()
    return result


# --- the run ------------------------------------------------------------------------------------------------


def _summary(rounds: list[Round]) -> dict[str, Any]:
    rates = [item.entries_per_second for item in rounds]
    return {
        "entries_per_second": rates,
        "median_entries_per_second": round(statistics.median(rates)),
        "ratio_to_target": round(statistics.median(rates) / TARGET_ENTRIES_PER_SECOND, 2),
        "rounds": [item.__dict__ for item in rounds],
    }


def run(options: Options) -> dict[str, Any]:
    from sehat.core.audit_chain import AuditChain
    from sehat.core.crypto import KeyRing

    with tempfile.TemporaryDirectory(prefix="sehat-bench-audit-") as scratch:
        checkpoint_file = Path(scratch) / "audit-checkpoints.jsonl"
        environment = bench_environment(options.database, checkpoint_file)
        settings = settings_for(environment)
        key_ring = KeyRing.parse(environment["SEHAT_MASTER_KEY"])

        log_step(prepare_database(options.database, environment))

        log_step(f"making {options.entries:,} entries with the real MAC and chain code, loading them with COPY")
        started = time.perf_counter()
        head = asyncio.run(load_entries(options.database, options.entries, key_ring))
        chain = AuditChain(key_ring, checkpoint_file, settings.audit_seal_settle_seconds)
        chain.write_checkpoint(options.entries, head)
        load_seconds = time.perf_counter() - started

        log_step("ceiling: reading the verifier's rows without checking them")
        background = background_cores()
        ceiling = asyncio.run(read_rows_only(settings, options.entries))
        ceiling.background_cores = round(background, 2)
        in_process, by_command = [], []
        for number in range(1, options.rounds + 1):
            log_step(f"round {number}: AuditChain.verify in-process, then `sehat audit verify`")
            background = background_cores()
            in_process.append(asyncio.run(verify_in_process(settings, chain, options.entries)))
            in_process[-1].background_cores = round(background, 2)
            background = background_cores()
            by_command.append(verify_by_command(environment, options.entries))
            by_command[-1].background_cores = round(background, 2)

        log_step(f"sealer: a first pass (whole table), then {options.idle_passes} idle passes")
        lines_before = len(checkpoint_file.read_bytes().splitlines())
        idle = asyncio.run(idle_sealing(settings, key_ring, checkpoint_file, options.idle_passes))
        idle.checkpoint_lines_added = len(checkpoint_file.read_bytes().splitlines()) - lines_before

    measured = [ceiling, *in_process, *by_command]
    other = max(max(max(item.other_cores, item.background_cores) for item in measured), idle.other_cores)
    return {
        "benchmark": "audit-verify",
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_cores": os.cpu_count(),
            "python": platform.python_version(),
            "postgresql": asyncio.run(postgres_version()),
        },
        "database": options.database,
        "connects_as": APP_ROLE,
        "entries": options.entries,
        "load_seconds": round(load_seconds, 1),
        "target_entries_per_second": TARGET_ENTRIES_PER_SECOND,
        "in_process": _summary(in_process),
        "cli": _summary(by_command),
        "ceiling_rows_only": ceiling.__dict__,
        "idle_sealing": idle.to_json(),
        "other_processes_cores_busy_max": other,
        "contaminated": other > CONTAMINATION_CORES,
    }


# --- report -------------------------------------------------------------------------------------------------


def _verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def render_report(results: dict[str, Any]) -> str:
    machine = results["machine"]
    target = results["target_entries_per_second"]
    ceiling = results["ceiling_rows_only"]
    idle = results["idle_sealing"]
    lines = [
        "",
        f"sehat benchmark: audit log verification (issue 3) at {results['measured_at']}",
        f"machine: {machine['cpu_cores']} cores, Python {machine['python']}, PostgreSQL {machine['postgresql']}",
        f"{results['entries']:,} valid sealed entries (made and loaded in {results['load_seconds']} s); "
        f"verification connects as {results['connects_as']} (row-level security applies)",
        "",
        f"{'Verification':<44}{'entries/s':>11}{'seconds':>9}{'this µs/e':>11}{'pg µs/e':>9}{'other cores':>13}"
        f"{'before':>8}",
    ]
    for label, summary in (
        ("AuditChain.verify, in-process", results["in_process"]),
        ("sehat audit verify", results["cli"]),
    ):
        for number, item in enumerate(summary["rounds"], start=1):
            lines.append(
                f"  {label + f', round {number}':<42}{item['entries_per_second']:>11,}{item['seconds']:>9.2f}"
                f"{item['this_process_us_per_entry']:>11.2f}{item['postgres_us_per_entry']:>9.2f}"
                f"{item['other_cores']:>13.2f}{item['background_cores']:>8.2f}"
            )
    lines += [
        f"  {'ceiling: the same rows read, not checked':<42}{ceiling['entries_per_second']:>11,}"
        f"{ceiling['seconds']:>9.2f}{ceiling['this_process_us_per_entry']:>11.2f}"
        f"{ceiling['postgres_us_per_entry']:>9.2f}{ceiling['other_cores']:>13.2f}{ceiling['background_cores']:>8.2f}",
        "  (µs/e: CPU per entry of this process, the CLI child included, and of all PostgreSQL processes;",
        "   other cores: the rest of the machine during the round; before: the whole machine but this process",
        "   while the benchmark waited 1 s just before it)",
        "",
        f"{'Targets':<44}{'median':>11}  {'target':<16}{'ratio':>7}  verdict",
    ]
    for label, summary in (("in-process", results["in_process"]), ("CLI, end to end", results["cli"])):
        median = summary["median_entries_per_second"]
        lines.append(
            f"  {'verify ' + label:<42}{median:>11,}  {'>= ' + format(target, ','):<16}"
            f"{summary['ratio_to_target']:>7.2f}  {_verdict(median >= target)}"
        )
    lines += [
        "",
        "Sealer with nothing to seal (settle time at its default):",
        f"  first pass in a process, whole table:           {idle['first_pass_ms_whole_table']:>9.1f} ms",
        f"  idle pass, median of {idle['idle_passes']:<3} (max {idle['idle_pass_ms_max']:.1f} ms):"
        f"          {idle['idle_pass_ms_median']:>9.2f} ms  (looked above id {idle['scanned_above_id']})",
        f"  before: the query every pass ran (whole table):  {idle['previous_idle_query_ms_median']:>9.1f} ms",
        f"  checkpoint lines written by idle passes: {idle['checkpoint_lines_added_by_idle_passes']} "
        "(the head did not move)",
    ]
    if results["contaminated"]:
        lines.append(
            f"  WARNING: other processes kept {results['other_processes_cores_busy_max']:.2f} cores busy during a "
            "measurement: the machine was busy and these figures are low. Run again when it is quiet."
        )
    lines.append("")
    return "\n".join(lines)


def main(arguments: list[str]) -> int:
    failures = (BenchmarkError, subprocess.SubprocessError, asyncpg.PostgresError, OSError)
    return run_benchmark("audit-verify", parse_options(arguments), run, render_report, failures=failures)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
