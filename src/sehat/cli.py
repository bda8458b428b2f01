"""The `sehat` command: serve, migrate, demo, administration and key management."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from sehat.settings import Settings

app = typer.Typer(help="sehat: outpatient care for clinics and hospital networks.", no_args_is_help=True)
admin_app = typer.Typer(help="Platform administration.", no_args_is_help=True)
keys_app = typer.Typer(help="Key management.", no_args_is_help=True)
permissions_app = typer.Typer(help="Roles and the permissions they grant.", no_args_is_help=True)
app.add_typer(admin_app, name="admin")
app.add_typer(keys_app, name="keys")
app.add_typer(permissions_app, name="permissions")

Host = Annotated[str, typer.Option(help="Address to listen on.")]
Port = Annotated[int, typer.Option(help="Port to listen on.")]


def _settings() -> Settings:
    try:
        return Settings()
    except ValueError as exc:
        typer.secho(f"configuration error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc


async def _migrate(settings: Settings) -> str | None:
    from sehat.core.db import create_engine
    from sehat.core.migrate import current_revision, grant_app_role, upgrade

    engine = create_engine(settings)
    try:
        await upgrade(engine)
        if settings.database_app_role:
            await grant_app_role(engine, settings.database_app_role)
        return await current_revision(engine)
    finally:
        await engine.dispose()


def _run_server(settings: Settings, host: str, port: int, workers: int) -> None:
    import uvicorn

    if workers > 1 and not settings.redis_url:
        typer.secho(
            "several workers share sessions and throttles through Redis: set SEHAT_REDIS_URL or use --workers 1",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(2)
    if settings.should_auto_migrate:
        asyncio.run(_migrate(settings))
    uvicorn.run(
        "sehat.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=None,
        access_log=False,
        proxy_headers=bool(settings.trusted_proxies),
        forwarded_allow_ips=settings.trusted_proxies or "127.0.0.1",
        ssl_certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
        ssl_keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None,
        server_header=False,
    )


@app.command()
def serve(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Worker processes (more than one needs Redis).")] = 1,
) -> None:
    """Run the API server. On SQLite the schema is migrated first (set SEHAT_AUTO_MIGRATE to change that)."""
    _run_server(_settings(), host, port, workers)


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (safe to run repeatedly)."""
    revision = asyncio.run(_migrate(_settings()))
    typer.echo(f"database schema at revision {revision}")


@app.command()
def demo(host: Host = "127.0.0.1", port: Port = 8000) -> None:
    """Serve with demo data: one organization, two facilities in two timezones, one user per role."""
    from sehat.demo import DEMO_PASSWORD, DEMO_TOTP_SECRET

    settings = _settings()
    if settings.is_production:
        typer.secho("the demo is refused in production", fg=typer.colors.RED, err=True)
        raise typer.Exit(2)
    asyncio.run(_migrate(settings))
    accounts = asyncio.run(_seed_demo(settings))
    base = f"http://{host}:{port}"
    lines = [
        "",
        f"sehat demo is starting at {base}  (API docs: {base}/docs, health: {base}/healthz)",
        f"database: {settings.database_url}",
        "",
        f"every demo account's password: {DEMO_PASSWORD}",
        f"staff sign in with a one-time code too; TOTP secret {DEMO_TOTP_SECRET}",
        f"  (current code: {sys.executable} -c \"import pyotp; print(pyotp.TOTP('{DEMO_TOTP_SECRET}').now())\")",
        "",
    ]
    lines += [f"  {account.role.value:<15} {account.email}" for account in accounts]
    typer.echo("\n".join([*lines, ""]))
    _run_server(settings, host, port, 1)


@app.command()
def worker() -> None:
    """Seal audit entries and run the anomaly rules, with no HTTP: run one (or more) beside app servers
    started with SEHAT_BACKGROUND_JOBS=false, so those passes never delay a request."""
    settings = _settings()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how a foreground worker is stopped
        asyncio.run(_run_worker(settings))


async def _run_worker(settings: Settings) -> None:
    from sehat.app import SchemaNotReady, keep_evaluating_anomalies, keep_sealing
    from sehat.core.audit_chain import AuditChain
    from sehat.core.crypto import load_key_ring
    from sehat.core.db import Database, create_engine
    from sehat.core.migrate import is_up_to_date

    database = Database(create_engine(settings))
    try:
        if not await is_up_to_date(database.engine):
            raise SchemaNotReady("the database schema is not current; run `sehat migrate` first")
        chain = AuditChain(load_key_ring(settings), settings.audit_checkpoint_file, settings.audit_seal_settle_seconds)
        interval = settings.audit_seal_interval_seconds
        typer.echo(f"sehat worker: sealing and anomaly rules every {interval:g} s")
        await asyncio.gather(
            keep_sealing(database, chain, interval), keep_evaluating_anomalies(database, settings, interval)
        )
    finally:
        await database.dispose()


async def _seed_demo(settings: Settings) -> list:  # type: ignore[type-arg]
    from sehat.app import build_auth
    from sehat.core.actor import SystemActor
    from sehat.core.db import Database, create_engine
    from sehat.demo import seed_demo

    database = Database(create_engine(settings))
    try:
        async with database.unit_of_work(actor=SystemActor(name="demo")) as session:
            return await seed_demo(session, build_auth(settings, None), SystemActor(name="demo"))
    finally:
        await database.dispose()


@admin_app.command("create-platform-admin")
def create_platform_admin(
    email: Annotated[str, typer.Option(help="Sign-in e-mail address.")],
    name: Annotated[str, typer.Option(help="Full name.")] = "Platform Administrator",
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
) -> None:
    """Create a platform administrator (no route can): the password comes from a prompt or stdin."""
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    asyncio.run(_create_platform_admin(_settings(), email, name, password))
    typer.echo("platform administrator created; they enrol a second factor at first sign-in")


async def _create_platform_admin(settings: Settings, email: str, name: str, password: str) -> None:
    from sehat.app import build_auth
    from sehat.core.actor import SystemActor
    from sehat.core.db import Database, create_engine
    from sehat.core.errors import Problem
    from sehat.identity.service import create_platform_admin as create

    database = Database(create_engine(settings))
    try:
        async with database.unit_of_work(actor=SystemActor(name="cli")) as session:
            await create(session, build_auth(settings, None), SystemActor(name="cli"), email, name, password)
    except Problem as problem:
        typer.secho(f"refused: {problem.detail}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from problem
    finally:
        await database.dispose()


@keys_app.command("rotate-signing")
def rotate_signing() -> None:
    """Add a new token-signing key and make it current; tokens signed before stay valid until they expire."""
    kid = asyncio.run(_rotate_signing(_settings()))
    typer.echo(f"new signing key {kid} is current; servers pick it up within SEHAT_SIGNING_KEY_REFRESH_SECONDS")


async def _rotate_signing(settings: Settings) -> str:
    from sehat.core.crypto import load_key_ring
    from sehat.core.db import Database, create_engine
    from sehat.identity.tokens import SigningKeys

    database = Database(create_engine(settings))
    try:
        async with database.unit_of_work() as session:
            return await SigningKeys(load_key_ring(settings), settings).add_key(session)
    finally:
        await database.dispose()


BatchSize = Annotated[int, typer.Option(min=1, max=50_000, help="Keys re-wrapped per transaction.")]


@keys_app.command("rotate")
def rotate_master_key(
    batch_size: BatchSize = 1000,
    new_key: Annotated[
        bool | None,
        typer.Option(
            "--new-key/--no-new-key",
            help="Generate a master key first in the key file (default in development with a key file); "
            "--no-new-key resumes toward the current primary.",
        ),
    ] = None,
    reseal: Annotated[
        bool | None,
        typer.Option(
            "--reseal/--no-reseal",
            help="Also re-seal signing keys, TOTP secrets and other ring-sealed values (default: unless this run "
            "generated the key, which servers already running do not have).",
        ),
    ] = None,
) -> None:
    """Make a new master key primary and re-wrap every patient data key and index key under it, online."""
    from sehat.core.crypto import KeyRingError, load_key_ring
    from sehat.patients.rotation import add_primary_key

    settings = _settings()
    from_file = settings.master_key is None
    may_generate = from_file and not settings.is_production
    if new_key and not may_generate:
        typer.secho(
            "a master key is generated only in development with a key file: put the new key first in the ring of "
            "every server, restart them, then run `sehat keys rotate` (docs/operations.md)",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(2)
    generate = may_generate if new_key is None else new_key
    try:
        key_ring = load_key_ring(settings)
        if generate:
            path = settings.default_master_key_path()
            kid = add_primary_key(path)
            key_ring = load_key_ring(settings)
            typer.echo(f"new master key {kid} written first in {path} (mode 0600); older keys kept")
        else:
            source = "SEHAT_MASTER_KEY" if not from_file else str(settings.default_master_key_path())
            typer.echo(
                f"no key generated: re-wrapping toward {key_ring.primary_kid}, the first key of the ring in {source}; "
                "every server must already run this ring"
            )
    except KeyRingError as exc:
        typer.secho(f"key ring error: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(2) from exc
    # Servers already running do not have a key this run generated, and they open the ring-sealed values
    # themselves (a TOTP secret at sign-in): re-sealing those waits for a run after they restarted.
    do_reseal = not generate if reseal is None else reseal
    complete = asyncio.run(_rotate_master_key(settings, key_ring, batch_size, reseal=do_reseal))
    if not do_reseal:
        typer.echo(
            "signing keys, TOTP secrets and other values sealed under the ring were not re-sealed: once every "
            "server runs the new ring (restart them; patient reads pick it up from the key file by themselves), "
            "run `sehat keys rotate --no-new-key`"
        )
    if not complete:
        raise typer.Exit(1)


class _ProgressBar:
    """A progress bar opened at the first report, when the total is known; plain text without a terminal."""

    def __init__(self, label: str) -> None:
        self._label = label
        self._bar: Any = None
        self._shown = 0

    def __call__(self, done: int, total: int) -> None:
        if self._bar is None:
            self._bar = typer.progressbar(length=total, label=self._label, show_pos=True)
            self._bar.__enter__()
        self._bar.length = total  # grows when servers add keys under an old master key meanwhile
        self._bar.update(done - self._shown)
        self._shown = done

    def close(self) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


async def _rotate_master_key(settings: Settings, key_ring: Any, batch_size: int, *, reseal: bool) -> bool:
    from sehat.core.db import Database, create_engine
    from sehat.patients.rotation import key_usage, reseal_values, retirement_lines, rewrap_keys

    database = Database(create_engine(settings))
    progress = _ProgressBar(f"re-wrapping data keys under {key_ring.primary_kid}")
    try:
        try:
            report = await rewrap_keys(database, key_ring, batch_size=batch_size, on_progress=progress)
        finally:
            progress.close()
        typer.echo(
            f"re-wrapped {report.rewrapped_patient_keys} patient data keys and {report.rewrapped_index_keys} "
            f"organization index keys under {key_ring.primary_kid} in {report.seconds:.2f} s"
        )
        complete = not report.remaining
        if report.remaining:
            left = ", ".join(f"{kid} {count}" for kid, count in sorted(report.remaining.items()))
            typer.secho(f"still under an older key: {left} (run again; `sehat keys status`)", fg=typer.colors.RED)
        if reseal:
            sealed = await reseal_values(database, key_ring)
            done = ", ".join(f"{name} {count}" for name, count in sealed.resealed.items() if count) or "none needed"
            typer.echo(f"re-sealed under {key_ring.primary_kid}: {done}")
            for name, counts in sorted(sealed.remaining.items()):
                complete = False
                left = ", ".join(f"{kid} {count}" for kid, count in sorted(counts.items()))
                typer.secho(f"{name} still sealed under an older key: {left}", fg=typer.colors.RED)
        usage = await key_usage(database, key_ring, checkpoint_file=settings.audit_checkpoint_file)
        for line in retirement_lines(usage):
            typer.echo(line)
        return complete
    finally:
        await database.dispose()


@keys_app.command("status")
def key_status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")] = False,
) -> None:
    """Count what each master key still wraps or seals, and whether an old one can be retired."""
    import orjson

    from sehat.patients.rotation import status_lines

    usage = asyncio.run(_key_usage(_settings()))
    if as_json:
        typer.echo(orjson.dumps(usage.as_json(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())
        return
    for line in status_lines(usage):
        typer.echo(line)


async def _key_usage(settings: Settings) -> Any:
    from sehat.core.crypto import load_key_ring
    from sehat.core.db import Database, create_engine
    from sehat.patients.rotation import key_usage

    database = Database(create_engine(settings))
    try:
        return await key_usage(database, load_key_ring(settings), checkpoint_file=settings.audit_checkpoint_file)
    finally:
        await database.dispose()


@permissions_app.command("list")
def list_permissions() -> None:
    """Print each role with the permissions the database grants it (servers reload them periodically)."""
    from sehat.core.actor import Role

    grants = asyncio.run(_read_grants(_settings()))
    # Every known role is listed, so a role with no grants shows up as denied rather than missing.
    roles = [role.value for role in Role] + sorted(set(grants) - {role.value for role in Role})
    width = max(len(role) for role in roles)
    for role in roles:
        typer.echo(f"{role:<{width}}  {' '.join(grants.get(role, [])) or '(none)'}")


async def _read_grants(settings: Settings) -> dict[str, list[str]]:
    from sehat.core.db import Database, create_engine
    from sehat.identity.permissions import read_grants

    database = Database(create_engine(settings))
    try:
        async with database.unit_of_work() as session:
            return await read_grants(session)
    finally:
        await database.dispose()


audit_app = typer.Typer(help="The tamper-evident audit log.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@audit_app.command("seal")
def audit_seal() -> None:
    """Seal settled audit entries into the chain now (servers also do this in the background)."""
    done = asyncio.run(_audit(_settings(), verify=False))
    typer.echo(f"sealed {done.sealed} entries")
    if done.refused:
        typer.secho(
            f"refused {done.refused} entries without a valid MAC: `sehat audit verify` locates them",
            fg=typer.colors.RED,
            err=True,
        )


@audit_app.command("verify")
def audit_verify() -> None:
    """Check every audit entry, the chain and the signed checkpoints; name the first place tampered with."""
    started = time.perf_counter()
    report = asyncio.run(_audit(_settings(), verify=True))
    elapsed = time.perf_counter() - started
    if report.ok:
        checked = report.sealed + report.unsealed
        typer.echo(
            f"OK: {report.sealed} sealed entries, {report.unsealed} awaiting a seal, "
            f"last checkpoint at {report.checkpoint_index} "
            f"({checked} entries checked in {elapsed:.2f} s, {checked / max(elapsed, 1e-9):,.0f} per second)"
        )
        return
    first = report.first
    typer.secho(f"TAMPERED: {first.message}", fg=typer.colors.RED, err=True)
    for finding in report.findings[:20]:
        typer.echo(
            f"  {finding.kind:<14} chain index {finding.chain_index}  event id {finding.event_id}: {finding.message}"
        )
    raise typer.Exit(1)


async def _audit(settings: Settings, *, verify: bool) -> Any:
    from sehat.core.audit_chain import AuditChain
    from sehat.core.crypto import load_key_ring
    from sehat.core.db import Database, create_engine

    database = Database(create_engine(settings))
    chain = AuditChain(load_key_ring(settings), settings.audit_checkpoint_file, settings.audit_seal_settle_seconds)
    try:
        # A one-off pass from the command line starts with no floor, so it scans the whole table.
        return await (chain.verify(database) if verify else chain.seal_pass(database))
    finally:
        await database.dispose()


patients_app = typer.Typer(help="Patient data kept erased across backups and restores.", no_args_is_help=True)
app.add_typer(patients_app, name="patients")


@patients_app.command("erasure-ledger")
def patients_erasure_ledger() -> None:
    """Print every erased patient as JSON lines (organization id, patient id, erasure time; no patient data).
    Store the output outside the database backups, and replay it after any restore."""
    for line in asyncio.run(_erasure_ledger(_settings())):
        typer.echo(line)


async def _erasure_ledger(settings: Settings) -> list[str]:
    from sehat.core.db import Database, create_engine
    from sehat.patients.erasure import erasure_ledger, ledger_lines

    database = Database(create_engine(settings))
    try:
        return list(ledger_lines(await erasure_ledger(database)))
    finally:
        await database.dispose()


@patients_app.command("replay-erasures")
def patients_replay_erasures(
    ledger: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="A file `erasure-ledger` wrote.")
    ],
) -> None:
    """After restoring a backup, before serving traffic: erase again every listed patient the restore brought
    back (data keys, search index entries, encrypted fields, consent evidence, accounts). Safe to repeat."""
    from sehat.core.errors import Problem
    from sehat.patients.erasure import parse_ledger

    try:
        entries = parse_ledger(ledger.read_text().splitlines())
    except Problem as problem:
        typer.secho(f"refused: {problem.detail}", fg=typer.colors.RED, err=True)
        raise typer.Exit(1) from problem
    result = asyncio.run(_replay_erasures(_settings(), entries))
    typer.echo(
        f"{result.listed} erasures listed, {result.present} of those patients present, "
        f"{len(result.reapplied)} erased again"
    )


async def _replay_erasures(settings: Settings, entries: list[Any]) -> Any:
    from sehat.core.audit import AuditLog
    from sehat.core.crypto import load_key_ring
    from sehat.core.db import Database, create_engine
    from sehat.patients.erasure import replay_erasures

    database = Database(create_engine(settings))
    try:
        return await replay_erasures(database, AuditLog(load_key_ring(settings)), entries)
    finally:
        await database.dispose()


def main() -> None:
    app()
