"""Shared benchmark machinery: a throw-away PostgreSQL database, the real server as a subprocess, a load
generator on loopback (wrk, or the small asyncio client in ``bench/loadgen.py`` when wrk cannot be had) and
CPU accounting.

Nothing here knows about a particular endpoint; a benchmark module (``bench/auth.py``) composes these parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import asyncpg
import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
POSTGRES_ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"
# The servers connect as this role, as in production: neither superuser nor owner, so row-level security
# applies. Migrations run as postgres, which owns the schema and grants this role its rights.
APP_ROLE = "sehat_app"
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
_WRK_RESULT_MARKER = "BENCH_RESULT_JSON "

# wrk calls done() once at the end; with no request()/response() hooks it keeps its fast C path.
_WRK_REPORT_SCRIPT = """
done = function(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    '%s{"requests":%d,"duration_us":%d,"bytes":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"mean_us":%.1f,'
      .. '"max_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,"status_errors":%d,'
      .. '"timeouts":%d}\\n',
    '%MARKER%', summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.mean, latency.max,
    errors.connect, errors.read, errors.write, errors.status, errors.timeout))
end
"""


class BenchmarkError(RuntimeError):
    """The benchmark could not be set up or run; the message says what to look at."""


def log_step(message: str) -> None:
    print(f"[bench] {message}", flush=True)


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def percentile(values: Sequence[float], wanted: float) -> float:
    """Nearest-rank percentile: with few samples p99 is simply the slowest one, never an interpolation."""
    if not values:
        raise ValueError("no samples")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(wanted / 100 * len(ordered) + 0.4999)))
    return ordered[rank - 1]


# --- database --------------------------------------------------------------------------------------------


async def recreate_database(name: str) -> None:
    """Drop (terminating leftover connections) and create an empty database on the local server."""
    if not name.replace("_", "").isalnum():
        raise BenchmarkError(f"refusing an unusual database name {name!r}")
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=10)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()


async def ensure_app_role() -> None:
    """Create the application role once per PostgreSQL server (roles are server-wide)."""
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=10)
    try:
        await connection.execute(
            f"DO $$ BEGIN CREATE ROLE {APP_ROLE} LOGIN NOSUPERUSER NOBYPASSRLS; "
            "EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; END $$"
        )
    finally:
        await connection.close()


def owner_url(database: str) -> str:
    return f"postgresql+asyncpg://postgres@127.0.0.1:5432/{database}"


def app_url(database: str) -> str:
    return f"postgresql+asyncpg://{APP_ROLE}@127.0.0.1:5432/{database}"


async def postgres_database_counters(name: str) -> dict[str, int]:
    """Cumulative sessions (connections opened) and transactions of one database, from pg_stat_database.

    Backends report these when they go idle, at most once a second: read them a moment after the load.
    """
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=10)
    try:
        row = await connection.fetchrow(
            "SELECT sessions, xact_commit + xact_rollback AS transactions FROM pg_stat_database WHERE datname = $1",
            name,
        )
    finally:
        await connection.close()
    if row is None:
        raise BenchmarkError(f"database {name} has no statistics row")
    return {"sessions": int(row["sessions"]), "transactions": int(row["transactions"])}


async def postgres_version() -> str:
    connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=10)
    try:
        return str(await connection.fetchval("SHOW server_version"))
    finally:
        await connection.close()


class BackendSampler:
    """What one database's client backends are doing while a load runs, sampled from ``pg_stat_activity`` every
    ``interval`` seconds on a connection and a thread of its own: running, waiting (for a lock, on I/O, ...) or
    idle in a transaction, which means waiting for the application. ``mean_backends`` is the mean number of
    backends in each state per sample: it shows where a request's time goes on the database side, such as
    transactions queueing for one row lock.

        with BackendSampler("sehat_bench") as sampler:
            ...load...
        sampler.mean_backends  # {"running": 0.8, "waiting: Lock/transactionid": 12.1, ...}
    """

    def __init__(self, database: str, *, interval: float = 0.02) -> None:
        self.database = database
        self.interval = interval
        self.samples = 0
        self._counts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._sample()), daemon=True)
        self._error: BaseException | None = None

    def __enter__(self) -> BackendSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if self._error is not None:
            raise BenchmarkError(f"sampling pg_stat_activity failed: {self._error}")

    @property
    def mean_backends(self) -> dict[str, float]:
        samples = max(self.samples, 1)
        ordered = sorted(self._counts.items(), key=lambda item: -item[1])
        return {state: round(count / samples, 2) for state, count in ordered}

    async def _sample(self) -> None:
        try:
            connection = await asyncpg.connect(POSTGRES_ADMIN_DSN, timeout=10)
        except (OSError, asyncpg.PostgresError) as error:
            self._error = error
            return
        try:
            while not self._stop.is_set():
                rows = await connection.fetch(
                    "SELECT state, wait_event_type, wait_event FROM pg_stat_activity "
                    "WHERE datname = $1 AND backend_type = 'client backend' AND state <> 'idle'",
                    self.database,
                )
                self.samples += 1
                for row in rows:
                    state = self._state(row["state"], row["wait_event_type"], row["wait_event"])
                    self._counts[state] = self._counts.get(state, 0) + 1
                await asyncio.sleep(self.interval)
        except (OSError, asyncpg.PostgresError) as error:
            self._error = error
        finally:
            await connection.close()

    @staticmethod
    def _state(state: str, wait_type: str | None, wait_event: str | None) -> str:
        if state != "active":
            return state  # "idle in transaction": the transaction waits for the application
        # A backend reading from its client is waiting for the next statement of its transaction, not working.
        if wait_type is None or (wait_type, wait_event) == ("Client", "ClientRead"):
            return "running" if wait_type is None else "active, reading from the client"
        return f"waiting: {wait_type}/{wait_event}"


def run_sehat_command(arguments: Sequence[str], environment: Mapping[str, str], *, timeout: float = 120) -> str:
    completed = subprocess.run(
        [str(VENV_BIN / "sehat"), *arguments],
        env=dict(environment),
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if completed.returncode != 0:
        raise BenchmarkError(f"`sehat {' '.join(arguments)}` failed:\n{completed.stdout}{completed.stderr}")
    return completed.stdout.strip()


def prepare_database(database: str, environment: Mapping[str, str]) -> str:
    """Re-create ``database`` and migrate it as the owner (postgres), granting the application role its rights, as
    an operator would; returns what ``sehat migrate`` printed."""
    log_step(f"re-creating database {database}, migrating it as the owner, granting the app role")
    asyncio.run(ensure_app_role())
    asyncio.run(recreate_database(database))
    owner = {**environment, "SEHAT_DATABASE_URL": owner_url(database), "SEHAT_DATABASE_APP_ROLE": APP_ROLE}
    return run_sehat_command(["migrate"], owner)


def write_results(name: str, results: Mapping[str, object]) -> Path:
    """The figures as JSON in bench/results/NAME.json (git-ignored)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    output = RESULTS_DIR / f"{name}.json"
    output.write_text(json.dumps(results, indent=2) + "\n")
    return output


# --- the server under test -------------------------------------------------------------------------------


class ServerProcess:
    """``sehat serve`` in its own process group; stopped (SIGTERM, then SIGKILL) on exit, bounded in time."""

    def __init__(
        self,
        environment: Mapping[str, str],
        *,
        port: int,
        workers: int,
        log_path: Path,
        factory: str | None = None,
    ) -> None:
        """``factory`` (``module:function`` in bench/) serves a benchmark build of the app instead of
        ``sehat serve``'s, with uvicorn's options the same."""
        self.factory = factory
        self.port = port
        self.workers = workers
        self.base_url = f"http://127.0.0.1:{port}"
        self._environment = dict(environment)
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None
        self._working_directory = tempfile.TemporaryDirectory(prefix="sehat-bench-")

    @property
    def pid(self) -> int:
        if self._process is None:
            raise BenchmarkError("the server is not running")
        return self._process.pid

    def __enter__(self) -> ServerProcess:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._log_path.open("wb") as log_file:
            address = ["--host", "127.0.0.1", "--port", str(self.port), "--workers", str(self.workers)]
            command = (
                [str(VENV_BIN / "sehat"), "serve", *address]
                if self.factory is None
                else [
                    str(VENV_BIN / "python"), "-m", "uvicorn", "--factory", self.factory,
                    "--app-dir", str(REPO_ROOT / "bench"), "--no-access-log", "--log-level", "warning", *address,
                ]
            )  # fmt: skip
            self._process = subprocess.Popen(
                command,
                env=self._environment,
                # An empty directory: no stray .env or key file is picked up, none is left behind.
                cwd=self._working_directory.name,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            self._wait_until_healthy(timeout=60)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    def _wait_until_healthy(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(base_url=self.base_url, timeout=2) as client:
            while time.monotonic() < deadline:
                if self._process is not None and self._process.poll() is not None:
                    raise BenchmarkError(f"the server exited with {self._process.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.HTTPError):
                    if client.get("/healthz").status_code == 200:
                        return
                time.sleep(0.2)
        raise BenchmarkError(f"the server did not answer /healthz within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self._log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no server log)"

    def stop(self, *, grace_seconds: float = 15) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            # The group holds exactly the processes this server started (its workers); it is ours by id.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
        self._working_directory.cleanup()


# --- CPU accounting --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ProcessTimes:
    pid: int
    parent_pid: int
    command: str
    cpu_seconds: float


def _read_process_times() -> dict[int, _ProcessTimes]:
    found: dict[int, _ProcessTimes] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            raw = Path(entry.path, "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        command = raw[raw.index("(") + 1 : raw.rindex(")")]
        fields = raw[raw.rindex(")") + 2 :].split()
        # After the command: state ppid ... utime stime cutime cstime (indices 11-14). The c- fields hold the
        # CPU of children that exited and were reaped, such as PostgreSQL backends of closed connections.
        cpu_seconds = sum(int(value) for value in fields[11:15]) / CLOCK_TICKS_PER_SECOND
        found[int(entry.name)] = _ProcessTimes(int(entry.name), int(fields[1]), command, cpu_seconds)
    return found


def _descendants_and_self(root_pid: int, processes: Mapping[int, _ProcessTimes]) -> set[int]:
    members = {root_pid}
    grew = True
    while grew:
        grew = False
        for process in processes.values():
            if process.parent_pid in members and process.pid not in members:
                members.add(process.pid)
                grew = True
    return members & processes.keys()


def _machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    values = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # user nice system idle iowait irq softirq steal
    return (total - idle) / CLOCK_TICKS_PER_SECOND, total / CLOCK_TICKS_PER_SECOND


@dataclass(frozen=True)
class CpuSnapshot:
    wall: float
    by_group: dict[str, float]
    machine_busy: float
    children: float


def take_cpu_snapshot(server_pid: int) -> CpuSnapshot:
    processes = _read_process_times()
    server_members = _descendants_and_self(server_pid, processes)
    groups = {"app server": 0.0, "postgres": 0.0, "redis": 0.0}
    for process in processes.values():
        if process.pid in server_members:
            groups["app server"] += process.cpu_seconds
        elif process.command == "postgres":
            groups["postgres"] += process.cpu_seconds
        elif process.command.startswith("redis-server"):
            groups["redis"] += process.cpu_seconds
    own = resource.getrusage(resource.RUSAGE_SELF)
    groups["benchmark process"] = own.ru_utime + own.ru_stime
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy, _total = _machine_busy_seconds()
    return CpuSnapshot(time.monotonic(), groups, busy, children.ru_utime + children.ru_stime)


@dataclass
class CpuUsage:
    """CPU spent during one measurement, in cores busy (CPU seconds per wall second)."""

    cores_busy: dict[str, float]
    server_cpu_seconds: float


def cpu_usage_between(before: CpuSnapshot, after: CpuSnapshot) -> CpuUsage:
    wall = max(after.wall - before.wall, 1e-9)
    # A process that exits unreaped takes its CPU with it, so a group's delta can dip below zero: floor it.
    cores = {name: max(0.0, after.by_group[name] - before.by_group[name]) / wall for name in after.by_group}
    # The load generator, when it is wrk, is a child that was reaped meanwhile: RUSAGE_CHILDREN has it.
    cores["load generator (wrk)"] = (after.children - before.children) / wall
    machine = (after.machine_busy - before.machine_busy) / wall
    # Whatever else ran meanwhile (another job on this machine, the kernel's own work) competed for the
    # same cores: a large share here means the run is contaminated and its figures are low.
    cores["other processes"] = max(0.0, machine - sum(cores.values()))
    cores["whole machine"] = machine
    server_seconds = after.by_group["app server"] - before.by_group["app server"]
    return CpuUsage({name: round(value, 2) for name, value in cores.items()}, server_seconds)


# --- load generation -------------------------------------------------------------------------------------


@dataclass
class LoadResult:
    url_path: str
    tool: str
    connections: int
    duration_seconds: float
    requests: int
    requests_per_second: float
    latency_p50_ms: float
    latency_p90_ms: float
    latency_p99_ms: float
    latency_max_ms: float
    non_2xx_3xx: int
    socket_errors: int
    cpu_cores_busy: dict[str, float] = field(default_factory=dict)
    server_cpu_us_per_request: float | None = None
    # Filled in by the caller: what the backing services saw per request (PostgreSQL, Redis).
    backend_per_request: dict[str, float] = field(default_factory=dict)

    @property
    def errors(self) -> int:
        return self.non_2xx_3xx + self.socket_errors

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "errors": self.errors}


def ensure_wrk() -> tuple[str | None, str]:
    """The wrk binary, installing Debian's package when missing; (None, reason) when that is not possible."""
    found = shutil.which("wrk")
    if found:
        return found, "found on PATH"
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return None, "wrk is missing and apt-get cannot be run here"
    log_step("wrk is missing; installing it with apt-get")
    attempts = (["apt-get", "install", "-y", "-qq", "wrk"], ["apt-get", "update", "-qq"])
    for command in (attempts[0], attempts[1], attempts[0]):
        with contextlib.suppress(subprocess.TimeoutExpired):
            subprocess.run(
                command,
                capture_output=True,
                timeout=300,
                check=False,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
        found = shutil.which("wrk")
        if found:
            return found, "installed with apt-get"
    return None, "apt-get could not install wrk"


def choose_load_generator(choice: str) -> tuple[str | None, str]:
    """wrk unless ``choice`` is "python" or wrk cannot be had (refused when ``choice`` is "wrk"): the binary,
    or None for the asyncio client, and a line saying which for the report."""
    if choice == "python":
        return None, "python asyncio client, bench/loadgen.py (asked for with --load-generator python)"
    wrk, how = ensure_wrk()
    if wrk is None:
        if choice == "wrk":
            raise BenchmarkError(f"wrk is not available: {how}")
        note = f"FALLBACK python asyncio client, bench/loadgen.py: {how}"
        log_step(note)
        return None, note
    return wrk, f"{wrk_version(wrk)} ({how})"


def wrk_version(wrk: str) -> str:
    completed = subprocess.run([wrk, "--version"], capture_output=True, text=True, timeout=10, check=False)
    return (
        (completed.stdout or completed.stderr).splitlines()[0].strip()
        if (completed.stdout or completed.stderr)
        else "?"
    )


def run_wrk(
    wrk: str,
    base_url: str,
    url_path: str,
    *,
    threads: int,
    connections: int,
    duration_seconds: float,
    headers: Mapping[str, str],
    server_pid: int,
    script: str = "",
    timeout_seconds: float | None = None,
) -> LoadResult:
    """``script``: Lua run before the report hook, for requests that vary (wrk's ``setup``/``init``/``request``
    hooks: another path or body each time). A ``request()`` hook takes wrk off its fast C path, which costs wrk
    a little CPU per request; set ``wrk.method``/``wrk.body`` alone for a fixed request that keeps it.

    ``timeout_seconds``: how long wrk waits for a response before counting a timeout (wrk's default: 2 s), for
    requests that may queue longer than that and must still be counted as answered, with their latency."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", prefix="sehat-bench-", delete=False) as script_file:
        script_file.write(script + "\n" + _WRK_REPORT_SCRIPT.replace("%MARKER%", _WRK_RESULT_MARKER))
        script_path = script_file.name
    command = [wrk, f"-t{threads}", f"-c{connections}", f"-d{duration_seconds:g}s", "--latency", "-s", script_path]
    if timeout_seconds is not None:
        command.append(f"--timeout={timeout_seconds:g}s")
    for name, value in headers.items():
        command += ["-H", f"{name}: {value}"]
    command.append(base_url + url_path)
    try:
        before = take_cpu_snapshot(server_pid)
        completed = subprocess.run(command, capture_output=True, text=True, timeout=duration_seconds + 60, check=False)
        after = take_cpu_snapshot(server_pid)
    finally:
        os.unlink(script_path)
    report_lines = [line for line in completed.stdout.splitlines() if line.startswith(_WRK_RESULT_MARKER)]
    if completed.returncode != 0 or not report_lines:
        raise BenchmarkError(f"wrk failed ({completed.returncode}):\n{completed.stdout}{completed.stderr}")
    report = json.loads(report_lines[-1][len(_WRK_RESULT_MARKER) :])
    usage = cpu_usage_between(before, after)
    seconds = report["duration_us"] / 1e6
    return LoadResult(
        url_path=url_path,
        tool="wrk",
        connections=connections,
        duration_seconds=round(seconds, 2),
        requests=report["requests"],
        requests_per_second=round(report["requests"] / seconds, 1),
        latency_p50_ms=report["p50_us"] / 1000,
        latency_p90_ms=report["p90_us"] / 1000,
        latency_p99_ms=report["p99_us"] / 1000,
        latency_max_ms=report["max_us"] / 1000,
        non_2xx_3xx=report["status_errors"],
        socket_errors=report["connect_errors"] + report["read_errors"] + report["write_errors"] + report["timeouts"],
        cpu_cores_busy=usage.cores_busy,
        server_cpu_us_per_request=round(usage.server_cpu_seconds / max(report["requests"], 1) * 1e6, 1),
    )


def run_python_load(
    base_url: str,
    url_path: str,
    *,
    threads: int,
    connections: int,
    duration_seconds: float,
    headers: Mapping[str, str],
    server_pid: int,
) -> LoadResult:
    """Fallback load generator (``bench/loadgen.py``): one asyncio process per thread, keep-alive connections.

    Python spends far more CPU per request than wrk and competes with the server for the same cores, so its
    figures are a floor for the server, not a ceiling; the CPU table shows what it took.
    """
    split = [connections // threads + (1 if index < connections % threads else 0) for index in range(threads)]
    host_and_port = base_url.removeprefix("http://")
    host, _, port = host_and_port.partition(":")
    header_arguments = [argument for name, value in headers.items() for argument in ("--header", f"{name}: {value}")]
    before = take_cpu_snapshot(server_pid)
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(Path(__file__).with_name("loadgen.py")),
                "--host",
                host,
                "--port",
                port,
                "--path",
                url_path,
                "--connections",
                str(share),
                "--duration",
                str(duration_seconds),
                *header_arguments,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for share in split
        if share > 0
    ]
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=duration_seconds + 60)
            if process.returncode != 0:
                raise BenchmarkError(f"the load generator failed ({process.returncode}):\n{stderr}")
            outputs.append(json.loads(stdout))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=5)
    after = take_cpu_snapshot(server_pid)
    usage = cpu_usage_between(before, after)
    usage.cores_busy["load generator (python)"] = usage.cores_busy.pop("load generator (wrk)")
    latencies = [latency / 1e6 for output in outputs for latency in output["latencies_us"]]
    if not latencies:
        raise BenchmarkError(f"no request to {url_path} completed")
    elapsed = max(output["elapsed_seconds"] for output in outputs)
    return LoadResult(
        url_path=url_path,
        tool="FALLBACK python asyncio client (bench/loadgen.py)",
        connections=connections,
        duration_seconds=round(elapsed, 2),
        requests=len(latencies),
        requests_per_second=round(len(latencies) / elapsed, 1),
        latency_p50_ms=percentile(latencies, 50) * 1000,
        latency_p90_ms=percentile(latencies, 90) * 1000,
        latency_p99_ms=percentile(latencies, 99) * 1000,
        latency_max_ms=max(latencies) * 1000,
        non_2xx_3xx=sum(output["bad_status"] for output in outputs),
        socket_errors=sum(output["socket_errors"] for output in outputs),
        cpu_cores_busy=usage.cores_busy,
        server_cpu_us_per_request=round(usage.server_cpu_seconds / len(latencies) * 1e6, 1),
    )


@contextlib.contextmanager
def stop_on_sigterm() -> Iterator[None]:
    """Turn SIGTERM into SystemExit so that cleanup (stopping the server) runs when the run is cancelled."""

    def leave(_signal: int, _frame: object) -> None:
        raise SystemExit(143)

    previous = signal.signal(signal.SIGTERM, leave)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_benchmark(
    name: str,
    options: Any,
    run: Callable[[Any], Mapping[str, object]],
    render_report: Callable[[Mapping[str, object]], str],
    failures: tuple[type[BaseException], ...] = (BenchmarkError,),
) -> int:
    """A benchmark's ``main``: run it (stopping cleanly on SIGTERM), print its report, write its figures."""
    with stop_on_sigterm():
        try:
            results = run(options)
        except failures as error:
            print(f"[bench] FAILED: {error}", file=sys.stderr)
            return 1
    print(render_report(results))
    output = write_results(name, results)
    print(f"[bench] figures written to {output.relative_to(RESULTS_DIR.parent.parent)}")
    return 0


def count_wire_statements(sync_engine: Any) -> tuple[Counter[str], Callable[[], None]]:
    """From now on, count every statement the engine's connections send, by its first 110 characters: through
    SQLAlchemy, or straight on a pooled asyncpg connection (a hot path's), each once. Returns the live counter
    and the function that stops the counting."""
    from sqlalchemy import event

    statements: Counter[str] = Counter()
    logged: set[int] = set()
    in_cursor: set[int] = set()  # driver connections inside a SQLAlchemy execution (counted there already)

    def shortened(statement: str) -> str:
        return " ".join(statement.split())[:110]

    def on_checkout(dbapi_connection: Any, *_: Any) -> None:
        driver = dbapi_connection.driver_connection
        if id(driver) not in logged:
            logged.add(id(driver))

            def on_query(record: Any) -> None:
                if id(driver) not in in_cursor:
                    statements[shortened(record.query)] += 1

            driver.add_query_logger(on_query)

    def before_execute(connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        in_cursor.add(id(connection.connection.driver_connection))
        statements[shortened(statement)] += 1

    def after_execute(connection: Any, *_: Any) -> None:
        in_cursor.discard(id(connection.connection.driver_connection))

    def on_error(context: Any) -> None:
        if context.connection is not None:
            in_cursor.discard(id(context.connection.connection.driver_connection))

    listeners = (
        ("checkout", on_checkout),
        ("before_cursor_execute", before_execute),
        ("after_cursor_execute", after_execute),
        ("handle_error", on_error),
    )
    for name, listener in listeners:
        event.listen(sync_engine, name, listener)

    def stop() -> None:
        for name, listener in listeners:
            event.remove(sync_engine, name, listener)

    return statements, stop
