"""Issue 2 benchmark: what authentication costs a request, measured against the real server in one run.

What is measured
  1. Sign-in latency, i.e. the Argon2id cost: N sequential ``POST /api/v1/auth/token`` (form username and
     password) for a staff account without a second factor, so each sign-in is one password verification
     plus opening a session. Beside it, the bare ``Passwords.verify`` time measured in this process with
     the same (production-default) Argon2id parameters, so the HTTP and database overhead shows.
  2. Under a load generator on loopback (``wrk -t2 -c64 -d10s --latency``, after a warm-up):
     ``GET /healthz`` (the bare ceiling of this server on this machine, measured in the same run because
     these machines are noisy) and ``GET /api/v1/me`` with a full bearer token: requests/s, p50/p99
     latency, non-2xx responses and socket errors, and the ratio me/healthz.
  3. CPU: the app server's CPU microseconds per request, and how busy the machine's cores were (app
     server, PostgreSQL, Redis, load generator, anything else) while each endpoint was under load, read
     from /proc. When other processes took a noticeable share, the report says the run is contaminated.
  4. Round trips per ``GET /api/v1/me``: every database statement on the wire (BEGIN and COMMIT
     included), counted in this process with asyncpg's query logger on the app built by ``create_app``
     (same database, same token), and Redis commands per request from ``INFO commandstats``; during the
     load run, PostgreSQL transactions per request and new connections (``pg_stat_database``) and Redis
     commands per request and new connections.
  5. One token check in-process: EdDSA signature and claims verification for distinct tokens (uncached),
     the cached path that a repeated token takes, and the revocation look-up.

How
  A dedicated PostgreSQL database (``sehat_bench``) is dropped, re-created and migrated with
  ``sehat migrate`` as the owner, which grants the application role ``sehat_app``; the server connects as
  that role, so row-level security applies to every request as in production. For comparison, ``/me`` is
  loaded once more from a server connected as the owner (a superuser, which row-level security skips).
  Redis gets a unique key prefix, removed at the end. One organization and two staff
  accounts are created through the real services. The benchmark signs the first one in, enrols TOTP
  (``/auth/mfa/enroll`` then ``/auth/mfa/confirm`` with pyotp) and loads ``/me`` with the resulting full
  access token; the second one is used for the sign-in timings. The server is
  ``sehat serve --workers 2`` on a free loopback port with every ``SEHAT_`` setting at its default
  except the database, Redis, master key, public URL and ``SEHAT_LOG_LEVEL=WARNING`` (inherited
  ``SEHAT_`` variables and ``.env`` files are ignored). It is stopped at the end, also on error.
  When wrk is missing and cannot be installed with apt-get, a small asyncio client (``bench/loadgen.py``,
  one process per thread) replaces it and the output says so; its figures are then a floor, since it
  spends more CPU per request than wrk on the same two cores.

Output: a table on stdout and the same figures as JSON in ``bench/results/auth.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import functools
import os
import platform
import secrets
import statistics
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any

import httpx
import pyotp
import redis

from harness import (
    RESULTS_DIR,
    BenchmarkError,
    LoadResult,
    ServerProcess,
    app_url,
    choose_load_generator,
    free_loopback_port,
    log_step,
    percentile,
    postgres_database_counters,
    postgres_version,
    prepare_database,
    run_benchmark,
    run_python_load,
    run_wrk,
)
from sehat.settings import Settings

REDIS_URL = "redis://127.0.0.1:6379/0"
BENCH_PASSWORD = "bench-password-" + "x" * 12
MFA_USER_EMAIL = "mfa-staff@bench.test"
PASSWORD_ONLY_USER_EMAIL = "password-only-staff@bench.test"
HEALTHZ = "/healthz"
ME = "/api/v1/me"
SIGN_IN = "/api/v1/auth/token"

TARGET_MIN_RATIO = 0.3
TARGET_AIM_RATIO = 0.5
TARGET_ME_P99_MS = 50.0
POSTGRES_STATISTICS_DELAY_SECONDS = 1.5
TOKEN_VERIFY_SAMPLES = 500
# Cores used by processes outside this benchmark while it loaded the server, above which it says so.
CONTAMINATION_CORES = 0.25


@dataclass(frozen=True)
class Options:
    database: str
    workers: int
    threads: int
    connections: int
    duration_seconds: float
    warmup_seconds: float
    login_samples: int
    round_trip_samples: int
    load_generator: str


def parse_options(arguments: list[str]) -> Options:
    parser = argparse.ArgumentParser(
        prog="python3 dev.py bench", description="Authentication benchmark (issue 2); see bench/auth.py."
    )
    parser.add_argument("--database", default="sehat_bench", help="PostgreSQL database to drop and re-create")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=64, help="concurrent connections under load")
    parser.add_argument("--duration", type=float, default=10, help="seconds of load per endpoint")
    parser.add_argument("--warmup", type=float, default=3, help="seconds of warm-up load per endpoint")
    parser.add_argument("--login-samples", type=int, default=30, help="sequential sign-ins to time")
    parser.add_argument("--round-trip-samples", type=int, default=50, help="in-process /me requests to count")
    parser.add_argument(
        "--load-generator", choices=("auto", "wrk", "python"), default="auto", help="auto: wrk, else python"
    )
    parsed = parser.parse_args(arguments)
    return Options(
        database=parsed.database,
        workers=parsed.workers,
        threads=parsed.threads,
        connections=parsed.connections,
        duration_seconds=parsed.duration,
        warmup_seconds=parsed.warmup,
        login_samples=parsed.login_samples,
        round_trip_samples=parsed.round_trip_samples,
        load_generator=parsed.load_generator,
    )


# --- configuration and setup -----------------------------------------------------------------------------


def bench_environment(database: str, port: int) -> dict[str, str]:
    """The process environment for every sehat process of this run, here and in the server."""
    from sehat.core.crypto import KeyRing

    environment = {name: value for name, value in os.environ.items() if not name.startswith("SEHAT_")}
    environment.update(
        {
            "SEHAT_DATABASE_URL": f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}",
            "SEHAT_REDIS_URL": REDIS_URL,
            "SEHAT_REDIS_KEY_PREFIX": f"benchauth-{secrets.token_hex(4)}:",
            "SEHAT_MASTER_KEY": KeyRing.generate_entry(),
            "SEHAT_PUBLIC_BASE_URL": f"http://127.0.0.1:{port}",
            "SEHAT_LOG_LEVEL": "WARNING",
        }
    )
    return environment


def settings_for(environment: dict[str, str]) -> Settings:
    """Settings as the server will read them: this process takes the same ``SEHAT_`` variables, no .env file."""
    for name in [name for name in os.environ if name.startswith("SEHAT_")]:
        del os.environ[name]
    os.environ.update({name: value for name, value in environment.items() if name.startswith("SEHAT_")})
    return Settings(_env_file=None)  # type: ignore[call-arg]


async def create_accounts(settings: Settings) -> None:
    """One organization and two staff accounts, through the real services (as `sehat admin` would)."""
    from sehat.app import build_auth
    from sehat.core.actor import SystemActor
    from sehat.core.db import Database, create_engine
    from sehat.identity.schemas import OrgAdminCreate
    from sehat.identity.service import create_org_admin
    from sehat.tenancy.schemas import OrganizationCreate
    from sehat.tenancy.service import create_organization

    database = Database(create_engine(settings))
    system = SystemActor(name="bench")
    try:
        async with database.unit_of_work() as session:
            auth = build_auth(settings, None)
            organization = await create_organization(
                session, system, OrganizationCreate(name="Benchmark Clinic", slug="bench-clinic")
            )
            for email, full_name in ((MFA_USER_EMAIL, "MFA Staff"), (PASSWORD_ONLY_USER_EMAIL, "Password Staff")):
                await create_org_admin(
                    session,
                    auth,
                    system,
                    organization.id,
                    OrgAdminCreate(email=email, full_name=full_name, password=BENCH_PASSWORD),
                )
    finally:
        await database.dispose()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def full_access_token_with_totp(base_url: str) -> str:
    """Sign in, enrol TOTP and confirm it: the access token that comes back has the full scope."""
    with httpx.Client(base_url=base_url, timeout=30) as client:
        signed_in = client.post(SIGN_IN, data={"username": MFA_USER_EMAIL, "password": BENCH_PASSWORD})
        _expect(signed_in, 200, "sign-in before enrolment")
        if signed_in.json()["scope"] != "mfa_enroll":
            raise BenchmarkError(f"expected an enrolment-only token, got {signed_in.json()['scope']!r}")
        enrolment_token = signed_in.json()["access_token"]
        enrolment = client.post("/api/v1/auth/mfa/enroll", headers=bearer(enrolment_token))
        _expect(enrolment, 200, "MFA enrolment")
        code = pyotp.TOTP(enrolment.json()["secret"]).now()
        confirmed = client.post("/api/v1/auth/mfa/confirm", json={"otp": code}, headers=bearer(enrolment_token))
        _expect(confirmed, 200, "MFA confirmation")
        if confirmed.json()["scope"] != "full":
            raise BenchmarkError(f"expected a full token after enrolment, got {confirmed.json()['scope']!r}")
        return str(confirmed.json()["access_token"])


def check_me_answers(base_url: str, token: str, moment: str) -> dict[str, Any]:
    with httpx.Client(base_url=base_url, timeout=10) as client:
        response = client.get(ME, headers=bearer(token))
    _expect(response, 200, f"GET {ME} {moment}")
    body: dict[str, Any] = response.json()
    if body.get("scope") != "full" or body.get("email") != MFA_USER_EMAIL:
        raise BenchmarkError(f"unexpected /me body {moment}: {body}")
    return body


def _expect(response: httpx.Response, status: int, what: str) -> None:
    if response.status_code != status:
        raise BenchmarkError(f"{what}: HTTP {response.status_code} {response.text[:500]}")


# --- sign-in cost ----------------------------------------------------------------------------------------


@dataclass
class LatencySummary:
    samples: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: list[float]) -> LatencySummary:
        return cls(
            samples=len(seconds),
            p50_ms=round(percentile(seconds, 50) * 1000, 2),
            p99_ms=round(percentile(seconds, 99) * 1000, 2),
            mean_ms=round(statistics.fmean(seconds) * 1000, 2),
            min_ms=round(min(seconds) * 1000, 2),
            max_ms=round(max(seconds) * 1000, 2),
        )


def time_bare_password_verify(settings: Settings, samples: int) -> LatencySummary:
    """``Passwords.verify`` (Argon2id in a worker thread, as the server runs it), in this process."""
    from sehat.identity.passwords import Passwords

    passwords = Passwords(settings)
    stored_hash = passwords.hash(BENCH_PASSWORD)

    async def measure() -> list[float]:
        durations = []
        for _ in range(samples):
            started = time.perf_counter()
            if not await passwords.verify(stored_hash, BENCH_PASSWORD):
                raise BenchmarkError("the benchmark password did not verify against its own hash")
            durations.append(time.perf_counter() - started)
        return durations

    return LatencySummary.of(asyncio.run(measure()))


def time_sign_ins(base_url: str, samples: int, warmup: int = 3) -> LatencySummary:
    """Sequential password sign-ins on one keep-alive connection; only successes are accepted."""
    durations = []
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for attempt in range(warmup + samples):
            started = time.perf_counter()
            response = client.post(SIGN_IN, data={"username": PASSWORD_ONLY_USER_EMAIL, "password": BENCH_PASSWORD})
            elapsed = time.perf_counter() - started
            _expect(response, 200, "timed sign-in")
            if attempt >= warmup:
                durations.append(elapsed)
    return LatencySummary.of(durations)


# --- round trips per request -----------------------------------------------------------------------------


def redis_command_calls(client: redis.Redis) -> Counter[str]:
    """Calls per Redis command so far, leaving out INFO itself (the counter reads it)."""
    stats: dict[str, dict[str, Any]] = client.info("commandstats")  # type: ignore[assignment]
    return Counter(
        {
            name.removeprefix("cmdstat_"): int(values["calls"])
            for name, values in stats.items()
            if name != "cmdstat_info"
        }
    )


def per_request(before: Counter[str], after: Counter[str], requests: int) -> dict[str, float]:
    difference = after - before
    return {name: round(count / max(requests, 1), 3) for name, count in sorted(difference.items())}


def _shorten_sql(statement: str) -> str:
    return " ".join(statement.split())[:110]


async def inspect_me_in_process(settings: Settings, token: str, samples: int) -> dict[str, Any]:
    """On the app that ``create_app`` builds (same database, Redis and token), in this process:

    round trips per ``GET /me`` (every statement on the wire, counted with asyncpg's query logger, Redis
    commands from INFO commandstats) and what one token check costs (signature verification without and
    with the verified-token cache, and the revocation look-up).
    """
    from asgi_lifespan import LifespanManager
    from sqlalchemy import event

    from sehat.app import create_app

    app = create_app(settings)
    statements: Counter[str] = Counter()
    logged_connections: set[int] = set()

    def on_query(record: Any) -> None:
        statements[_shorten_sql(record.query)] += 1

    def on_checkout(dbapi_connection: Any, *_: Any) -> None:
        # asyncpg's own query logger sees every statement sent on the wire, including the BEGIN and COMMIT
        # that SQLAlchemy's adapter issues and the raw statements hot paths send past SQLAlchemy.
        driver = dbapi_connection.driver_connection
        if id(driver) not in logged_connections:
            logged_connections.add(id(driver))
            driver.add_query_logger(on_query)

    redis_client = redis.Redis.from_url(REDIS_URL)
    try:
        async with LifespanManager(app) as manager:
            sync_engine = app.state.database.engine.sync_engine
            event.listen(sync_engine, "checkout", on_checkout)
            transport = httpx.ASGITransport(app=manager.app)
            async with httpx.AsyncClient(transport=transport, base_url=settings.public_base_url) as client:
                for _ in range(3):  # warm: pool connections open, prepared statements cached
                    _expect(await client.get(ME, headers=bearer(token)), 200, "in-process /me warm-up")
                statements.clear()
                redis_before = redis_command_calls(redis_client)
                for _ in range(samples):
                    _expect(await client.get(ME, headers=bearer(token)), 200, "in-process /me")
                redis_after = redis_command_calls(redis_client)
            event.remove(sync_engine, "checkout", on_checkout)
            token_verification = await time_token_checks(app.state.auth, TOKEN_VERIFY_SAMPLES)
    finally:
        redis_client.close()
    statements_per_request = sum(statements.values()) / samples
    redis_per_request = per_request(redis_before, redis_after, samples)
    round_trips = {
        "samples": samples,
        "database_round_trips": round(statements_per_request, 3),
        "database_statement_texts": {text: round(count / samples, 3) for text, count in statements.items()},
        "redis_commands": round(sum(redis_per_request.values()), 3),
        "redis_commands_by_name": redis_per_request,
    }
    return {"round_trips_per_me": round_trips, "token_verification": token_verification}


async def time_token_checks(auth: Any, samples: int) -> dict[str, float | str]:
    """Microseconds per access-token check, in-process: each of ``samples`` distinct tokens verified twice."""
    from sehat.core.actor import Audience, TokenScope
    from sehat.core.clock import utcnow

    not_after = utcnow() + dt.timedelta(hours=1)
    session_ids = [uuid.uuid4() for _ in range(samples)]
    tokens = [
        auth.tokens.issue(
            user_id=uuid.uuid4(),
            organization_id=uuid.uuid4(),
            roles=["doctor"],
            audience=Audience.staff,
            session_id=session_id,
            scope=TokenScope.full,
            not_after=not_after,
        ).token
        for session_id in session_ids
    ]
    timings: dict[str, float | str] = {}
    for label in ("signature_verify_uncached_us", "verify_cached_us"):
        started = time.perf_counter()
        for issued in tokens:
            auth.tokens.verify(issued)
        timings[label] = round((time.perf_counter() - started) / samples * 1e6, 1)
    started = time.perf_counter()
    for session_id in session_ids:
        await auth.revoked.is_revoked(session_id)
    timings["revocation_check_us"] = round((time.perf_counter() - started) / samples * 1e6, 1)
    timings["revocation_store"] = type(auth.revoked).__name__
    return timings


def remove_redis_keys(prefix: str) -> int:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        keys = list(client.scan_iter(match=prefix + "*", count=1000))
        if keys:
            client.delete(*keys)
        return len(keys)
    finally:
        client.close()


# --- load ------------------------------------------------------------------------------------------------


def measure_endpoint(
    options: Options, wrk: str | None, server: ServerProcess, path: str, headers: dict[str, str]
) -> LoadResult:
    """One measured load run, with what PostgreSQL and Redis saw during it, per request."""
    redis_client = redis.Redis.from_url(REDIS_URL)
    try:
        postgres_before = asyncio.run(postgres_database_counters(options.database))
        redis_before = redis_command_calls(redis_client)
        redis_connections_before = int(redis_client.info("stats")["total_connections_received"])
        result = run_load(options, wrk, server, path, headers, options.duration_seconds)
        time.sleep(POSTGRES_STATISTICS_DELAY_SECONDS)
        postgres_after = asyncio.run(postgres_database_counters(options.database))
        redis_after = redis_command_calls(redis_client)
        redis_connections_after = int(redis_client.info("stats")["total_connections_received"])
    finally:
        redis_client.close()
    requests = max(result.requests, 1)
    result.backend_per_request = {
        "postgres_transactions": round(
            (postgres_after["transactions"] - postgres_before["transactions"]) / requests, 3
        ),
        "postgres_new_connections_total": postgres_after["sessions"] - postgres_before["sessions"],
        "redis_commands": round(sum(per_request(redis_before, redis_after, requests).values()), 3),
        "redis_new_connections_total": redis_connections_after - redis_connections_before,
    }
    return result


def run_load(
    options: Options, wrk: str | None, server: ServerProcess, path: str, headers: dict[str, str], seconds: float
) -> LoadResult:
    generate = functools.partial(run_wrk, wrk) if wrk is not None else run_python_load
    return generate(
        server.base_url,
        path,
        threads=options.threads,
        connections=options.connections,
        duration_seconds=seconds,
        headers=headers,
        server_pid=server.pid,
    )


# --- the run ---------------------------------------------------------------------------------------------


def run(options: Options) -> dict[str, Any]:
    port = free_loopback_port()
    environment = bench_environment(options.database, port)
    settings = settings_for(environment)
    redis_prefix = environment["SEHAT_REDIS_KEY_PREFIX"]

    wrk, load_generator_note = choose_load_generator(options.load_generator)
    log_step(prepare_database(options.database, environment))
    log_step("creating an organization and two staff accounts through the services")
    asyncio.run(create_accounts(settings))
    # The servers connect as the application role, as in production: row-level security applies to them.
    owner_environment = dict(environment)
    environment = {**environment, "SEHAT_DATABASE_URL": app_url(options.database)}
    app_settings = Settings(_env_file=None, database_url=app_url(options.database))  # type: ignore[call-arg]

    log_step(f"timing {options.login_samples} bare Argon2id verifications in-process")
    bare_verify = time_bare_password_verify(settings, options.login_samples)

    try:
        log_step(f"starting `sehat serve --workers {options.workers}` on 127.0.0.1:{port}")
        with ServerProcess(
            environment, port=port, workers=options.workers, log_path=RESULTS_DIR / "auth-server.log"
        ) as server:
            token = full_access_token_with_totp(server.base_url)
            check_me_answers(server.base_url, token, "before the load")

            log_step(f"timing {options.login_samples} sequential sign-ins")
            sign_ins = time_sign_ins(server.base_url, options.login_samples)

            log_step(f"warming up: {options.warmup_seconds:g} s of load on each endpoint")
            run_load(options, wrk, server, HEALTHZ, {}, options.warmup_seconds)
            run_load(options, wrk, server, ME, bearer(token), options.warmup_seconds)

            log_step(f"loading {HEALTHZ} for {options.duration_seconds:g} s")
            healthz = measure_endpoint(options, wrk, server, HEALTHZ, {})
            log_step(f"loading {ME} for {options.duration_seconds:g} s")
            me = measure_endpoint(options, wrk, server, ME, bearer(token))
            check_me_answers(server.base_url, token, "after the load")

            log_step(f"counting round trips of {options.round_trip_samples} in-process /me requests")
            in_process = asyncio.run(inspect_me_in_process(app_settings, token, options.round_trip_samples))
            log_step("stopping the server")
        # The same /me with row-level security out of the way: a server connected as the owner (a superuser).
        log_step(f"for comparison: {ME} from a server connected as the owner, for {options.duration_seconds:g} s")
        with ServerProcess(
            owner_environment, port=port, workers=options.workers, log_path=RESULTS_DIR / "auth-owner-server.log"
        ) as owner_server:
            run_load(options, wrk, owner_server, ME, bearer(token), options.warmup_seconds)
            me_as_owner = measure_endpoint(options, wrk, owner_server, ME, bearer(token))
    finally:
        remove_redis_keys(redis_prefix)

    ratio = me.requests_per_second / healthz.requests_per_second if healthz.requests_per_second else 0.0
    other_load = max(result.cpu_cores_busy.get("other processes", 0.0) for result in (healthz, me))
    return {
        "benchmark": "auth",
        "measured_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpu_cores": os.cpu_count(),
            "python": platform.python_version(),
            "postgresql": asyncio.run(postgres_version()),
            "load_generator": load_generator_note,
        },
        "server": {
            "command": f"sehat serve --host 127.0.0.1 --port {port} --workers {options.workers}",
            "log_level": settings.log_level,
            "argon2id": {
                "time_cost": settings.argon2_time_cost,
                "memory_kib": settings.argon2_memory_kib,
                "parallelism": settings.argon2_parallelism,
            },
            "staff_mfa_required": settings.staff_mfa_required,
            "database": options.database,
        },
        "load": {
            "threads": options.threads,
            "connections": options.connections,
            "duration_seconds": options.duration_seconds,
            "warmup_seconds": options.warmup_seconds,
        },
        "sign_in": {
            "bare_argon2id_verify_in_process": bare_verify.__dict__,
            "post_auth_token_sequential": sign_ins.__dict__,
            "overhead_over_hash_p50_ms": round(sign_ins.p50_ms - bare_verify.p50_ms, 2),
        },
        "healthz": healthz.to_json(),
        "me": me.to_json(),
        "me_as_owner_without_row_level_security": me_as_owner.to_json(),
        "me_row_level_security_to_owner_ratio": round(
            me.requests_per_second / me_as_owner.requests_per_second if me_as_owner.requests_per_second else 0.0, 3
        ),
        "me_to_healthz_ratio": round(ratio, 3),
        "other_processes_cores_busy_max": other_load,
        "contaminated": other_load > CONTAMINATION_CORES,
        "round_trips_per_me": in_process["round_trips_per_me"],
        "token_verification_in_process": in_process["token_verification"],
        "targets": {
            "me_to_healthz_ratio": {
                "minimum": TARGET_MIN_RATIO,
                "aim": TARGET_AIM_RATIO,
                "measured": round(ratio, 3),
                "met": ratio >= TARGET_MIN_RATIO,
                "aim_met": ratio >= TARGET_AIM_RATIO,
            },
            "me_p99_ms": {
                "maximum": TARGET_ME_P99_MS,
                "measured": me.latency_p99_ms,
                "met": me.latency_p99_ms < TARGET_ME_P99_MS,
            },
            "me_without_errors": {"measured_errors": me.errors, "met": me.errors == 0},
        },
    }


# --- report ----------------------------------------------------------------------------------------------


# Display order of the CPU groups, by the first eight characters of their names.
_CPU_GROUP_ORDER = ["app serv", "postgres", "redis", "load gen", "benchmar", "other pr", "whole ma"]


def _verdict(met: bool) -> str:
    return "MET" if met else "NOT MET"


def render_report(results: dict[str, Any]) -> str:
    machine, server, load = results["machine"], results["server"], results["load"]
    argon = server["argon2id"]
    bare = results["sign_in"]["bare_argon2id_verify_in_process"]
    sign_in = results["sign_in"]["post_auth_token_sequential"]
    healthz, me = results["healthz"], results["me"]
    trips = results["round_trips_per_me"]
    targets = results["targets"]
    lines = [
        "",
        f"sehat benchmark: authentication (issue 2) at {results['measured_at']}",
        f"machine: {machine['cpu_cores']} cores, Python {machine['python']}, PostgreSQL {machine['postgresql']}",
        f"load generator: {machine['load_generator']}",
        f"server: {server['command']}, Argon2id t={argon['time_cost']} m={argon['memory_kib']} KiB "
        f"p={argon['parallelism']}, log level {server['log_level']}",
        "",
        f"{'Sign-in (Argon2id cost)':<46}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'min ms':>9}{'n':>5}",
    ]
    for label, figures in (
        ("bare Argon2id verify, in-process", bare),
        (f"POST {SIGN_IN}, sequential", sign_in),
    ):
        lines.append(
            f"  {label:<44}{figures['p50_ms']:>9.1f}{figures['p99_ms']:>9.1f}{figures['mean_ms']:>9.1f}"
            f"{figures['min_ms']:>9.1f}{figures['samples']:>5}"
        )
    lines += [
        f"  {'sign-in overhead beyond the hash (p50)':<44}{results['sign_in']['overhead_over_hash_p50_ms']:>9.1f}",
        "  (p99 of n samples is the nearest rank: with n < 100 it is the slowest sample)",
        "",
        f"Load: {load['threads']} threads, {load['connections']} connections, {load['duration_seconds']:g} s each "
        f"after {load['warmup_seconds']:g} s warm-up, tool: {healthz['tool']}",
        f"  {'endpoint':<18}{'req/s':>10}{'p50 ms':>9}{'p90 ms':>9}{'p99 ms':>9}{'max ms':>9}{'requests':>10}"
        f"{'errors':>8}{'app CPU µs/req':>16}",
    ]
    for label, figures in ((f"GET {HEALTHZ}", healthz), (f"GET {ME}", me)):
        lines.append(
            f"  {label:<18}{figures['requests_per_second']:>10.0f}{figures['latency_p50_ms']:>9.2f}"
            f"{figures['latency_p90_ms']:>9.2f}{figures['latency_p99_ms']:>9.2f}{figures['latency_max_ms']:>9.1f}"
            f"{figures['requests']:>10}{figures['errors']:>8}{figures['server_cpu_us_per_request']:>16.0f}"
        )
    lines += [
        f"  errors = non-2xx/3xx {healthz['non_2xx_3xx']} / {me['non_2xx_3xx']}, "
        f"socket errors {healthz['socket_errors']} / {me['socket_errors']} (healthz / me)",
        f"  ratio me/healthz (req/s): {results['me_to_healthz_ratio']:.2f}",
        f"  GET {ME} from a server connected as the owner (row-level security bypassed): "
        f"{results['me_as_owner_without_row_level_security']['requests_per_second']:.0f} req/s; "
        f"as the application role ÷ as the owner: {results['me_row_level_security_to_owner_ratio']:.2f}",
        "",
        "CPU cores busy under load (of " + str(machine["cpu_cores"]) + "):",
    ]
    for label, figures in ((HEALTHZ, healthz), (ME, me)):
        groups = sorted(figures["cpu_cores_busy"].items(), key=lambda item: _CPU_GROUP_ORDER.index(item[0][:8]))
        busy = ", ".join(f"{name} {value:.2f}" for name, value in groups)
        lines.append(f"  {label:<14} {busy}")
    if results["contaminated"]:
        lines.append(
            f"  WARNING: other processes kept {results['other_processes_cores_busy_max']:.2f} cores busy during the "
            "load; the server had less CPU than the machine has, so these figures are low. Run again when quiet."
        )
    lines.append("Seen by PostgreSQL and Redis during the load (Redis counts every client of that server):")
    for label, figures in ((HEALTHZ, healthz), (ME, me)):
        backend = figures["backend_per_request"]
        lines.append(
            f"  {label:<14} per request: {backend['postgres_transactions']:g} PostgreSQL transactions, "
            f"{backend['redis_commands']:g} Redis commands; new connections in the run: "
            f"PostgreSQL {backend['postgres_new_connections_total']}, Redis {backend['redis_new_connections_total']}"
        )
    verification = results["token_verification_in_process"]
    lines += [
        "",
        f"Round trips per GET {ME} (in-process, {trips['samples']} requests, asyncpg's query logger):",
        f"  database: {trips['database_round_trips']:g} round trips (statements on the wire, BEGIN and COMMIT "
        "included):",
    ]
    lines += [f"    {count:g} x {text}" for text, count in trips["database_statement_texts"].items()]
    lines += [
        f"  redis: {trips['redis_commands']:g} command(s) {trips['redis_commands_by_name']}",
        f"Token check, in-process ({TOKEN_VERIFY_SAMPLES} distinct tokens): EdDSA signature and claims "
        f"{verification['signature_verify_uncached_us']} µs uncached, {verification['verify_cached_us']} µs "
        f"cached; revocation look-up ({verification['revocation_store']}) {verification['revocation_check_us']} µs",
        "  (under load every request carries the same token, so the server takes the cached path)",
        "",
        f"{'Targets':<48}{'measured':>12}  {'target':<22}verdict",
        f"  {'/me ÷ /healthz throughput':<46}{targets['me_to_healthz_ratio']['measured']:>12.2f}  "
        f"{'>= 0.30 (aim 0.50)':<22}{_verdict(targets['me_to_healthz_ratio']['met'])}"
        f"{' (aim met)' if targets['me_to_healthz_ratio']['aim_met'] else ''}",
        f"  {'/me p99, 64 connections, 2 workers':<46}{targets['me_p99_ms']['measured']:>9.2f} ms  "
        f"{'< 50 ms':<22}{_verdict(targets['me_p99_ms']['met'])}",
        f"  {'/me answered 200 throughout':<46}{targets['me_without_errors']['measured_errors']:>6} errors  "
        f"{'0 errors':<22}{_verdict(targets['me_without_errors']['met'])}",
        "",
    ]
    return "\n".join(lines)


def main(arguments: list[str]) -> int:
    return run_benchmark("auth", parse_options(arguments), run, render_report)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
