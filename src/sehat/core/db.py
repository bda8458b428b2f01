"""Engine, declarative base, column types and the unit of work.

One unit of work is one session and one transaction: it commits once at the end and rolls back on error.
Callbacks registered with ``after_commit`` run only once the commit succeeded, so an event or a realtime
message is never sent for work that was rolled back.
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import DateTime, MetaData, event
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.types import TypeDecorator

from sehat.core.actor import Actor, SystemActor
from sehat.core.clock import utcnow
from sehat.core.tenant_scope import bind_actor, enter_organization, share_scope
from sehat.settings import Settings

log = structlog.get_logger(__name__)

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

AFTER_COMMIT_KEY = "sehat.after_commit"
SQLITE_BEGIN_OPTION = "sehat_sqlite_begin"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware in, timezone-aware (UTC) out, on every backend; SQLite stores naive UTC text."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; attach a timezone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime()}


class IdMixin:
    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


def _install_sqlite_pragmas(engine: AsyncEngine) -> None:
    # pysqlite's own transaction handling issues BEGIN late and never IMMEDIATE; take it over so a
    # write transaction holds the write lock from its first statement (no upgrade failures under WAL).
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=15000")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        mode = connection.get_execution_options().get(SQLITE_BEGIN_OPTION, "DEFERRED")
        connection.exec_driver_sql(f"BEGIN {mode}")


# Room for every request an embedded clinic has under way at once, and the side transactions some of them open
# (eight readers, a key rotation and their audit writes hang a pool of 8); the wait is at least as long as
# SQLite's own busy timeout (15 s), which a writer would otherwise have spent polling.
_SQLITE_POOL_SIZE = 32
_SQLITE_POOL_TIMEOUT_SECONDS = 15.0


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.is_sqlite:
        # A few connections, and everyone else waits for one in the pool's line. SQLite admits one writer at a
        # time, and its busy handler is no line: each connection polls, backing off up to 100 ms between tries,
        # so with hundreds at once (500 token issues) a few lost every race for 15 s and failed. Waiting in
        # the pool is first come, first served. Connections opened per use (NullPool) are what made that crowd.
        engine = create_async_engine(
            settings.database_url,
            pool_size=_SQLITE_POOL_SIZE,
            max_overflow=0,
            pool_timeout=max(settings.database_pool_timeout_seconds, _SQLITE_POOL_TIMEOUT_SECONDS),
        )
        _install_sqlite_pragmas(engine)
        return engine
    connect_args: dict[str, Any] = {"server_settings": {"application_name": "sehat"}}
    if settings.database_statement_timeout_ms:
        connect_args["server_settings"]["statement_timeout"] = str(settings.database_statement_timeout_ms)
    return create_async_engine(
        settings.database_url,
        # No overflow: overflow connections are closed when returned, so under load they churn new
        # PostgreSQL backends (measured: 140 new connections in 10 s). A request briefly waits for a pooled
        # connection instead, and gets a 503 after pool_timeout.
        pool_size=settings.database_pool_size,
        max_overflow=0,
        pool_timeout=settings.database_pool_timeout_seconds,
        pool_pre_ping=False,
        connect_args=connect_args,
    )


# Each engine's Database, so code holding only a session can reach its side pool (issue_counter_value).
_databases: weakref.WeakKeyDictionary[Any, Database] = weakref.WeakKeyDictionary()
_SIDE_POOL_SIZE = 4


class Database:
    """Holds the engine and the session factories."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._side_engine: AsyncEngine | None = None
        _databases[engine.sync_engine] = self
        self.is_sqlite = engine.dialect.name == "sqlite"
        # On SQLite every unit of work takes the write lock as it begins, reads included: a read of patient
        # data writes its audit entry, and a transaction that starts as a reader cannot safely become a
        # writer under WAL (if another writer committed meanwhile, the upgrade fails at once, whatever the
        # busy timeout). Embedded mode serves one clinic; serialized transactions are its price.
        session_engine = engine.execution_options(**{SQLITE_BEGIN_OPTION: "IMMEDIATE"}) if self.is_sqlite else engine
        self._sessions = async_sessionmaker(session_engine, expire_on_commit=False, autoflush=True)

    def session(self) -> AsyncSession:
        return self._sessions()

    @asynccontextmanager
    async def unit_of_work(self, *, actor: Actor | SystemActor | None = None) -> AsyncIterator[AsyncSession]:
        """For code outside a request (CLI, worker, tests): commit at the end, roll back on error.

        With an actor, the transaction works in the actor's tenant scope (``core.tenant_scope``); without one it
        sees no tenant rows on PostgreSQL until the code enters a scope itself."""
        session = self.session()
        keep = False
        try:
            if actor is not None:
                await bind_actor(session, actor)
            yield session
            keep = True
        finally:
            await finish(session, keep=keep)

    @asynccontextmanager
    async def snapshot(self, organization_id: uuid.UUID) -> AsyncIterator[AsyncSession]:
        """A read-only transaction for one organization that sees one snapshot of the database throughout:
        REPEATABLE READ on PostgreSQL; on SQLite a deferred transaction, which under WAL reads one snapshot
        without taking the write lock (a unit of work would queue behind every writer for it)."""
        session = AsyncSession(self.engine, expire_on_commit=False)
        try:
            await enter_organization(session, organization_id)
            if not self.is_sqlite:
                await session.connection(
                    execution_options={"isolation_level": "REPEATABLE READ", "postgresql_readonly": True}
                )
            yield session
        finally:
            await finish(session, keep=False)

    def side_engine(self) -> AsyncEngine:
        """A few connections of their own for short side transactions (see ``issue_counter_value``)."""
        if self._side_engine is None:
            self._side_engine = create_async_engine(
                self.engine.url,
                pool_size=_SIDE_POOL_SIZE,
                max_overflow=0,
                pool_timeout=self.engine.pool.timeout(),  # type: ignore[attr-defined]
                # One-row statements: anything slower is stuck, and must not hold a request for long.
                connect_args={"server_settings": {"application_name": "sehat-side", "statement_timeout": "5000"}},
            )
        return self._side_engine

    async def dispose(self) -> None:
        if self._side_engine is not None:
            await self._side_engine.dispose()
        await self.engine.dispose()


def after_commit(session: AsyncSession, callback: Callable[[], Awaitable[None]]) -> None:
    session.info.setdefault(AFTER_COMMIT_KEY, []).append(callback)


@dataclass(frozen=True)
class SessionOnDemand:
    """A unit of work's session, opened only when ``open`` is awaited, and the engine it would use, known without
    opening it: for a hot path that usually finishes on a pooled driver connection and then never needs the
    session (building one, with its tenant scope, was about 6 % of a booking's time in the server)."""

    engine: AsyncEngine
    open: Callable[[], Awaitable[AsyncSession]]

    @classmethod
    def already_open(cls, session: AsyncSession) -> SessionOnDemand:
        async def opened() -> AsyncSession:
            return session

        return cls(session.bind, opened)  # type: ignore[arg-type]


async def finish(session: AsyncSession, *, keep: bool) -> None:
    """Commit (or roll back) and close the session, then run its after-commit callbacks if it committed.

    Both steps happen in one hop into SQLAlchemy's synchronous layer, or none when the session was never
    used: each hop is a greenlet switch, and on a hot path those switches cost more than the statements.
    """
    callbacks: list[Callable[[], Awaitable[None]]] = session.info.pop(AFTER_COMMIT_KEY, [])
    if session.in_transaction() or session.new or session.dirty or session.deleted:
        await session.run_sync(_end, keep)
    # Otherwise nothing went through this session (a read served on its own connection, like GET /me): no
    # connection to return and nothing to commit, so no hop into SQLAlchemy's synchronous layer either.
    if not keep:
        return
    for callback in callbacks:
        try:
            await callback()
        except Exception:
            # The transaction is durable; a failed side effect is logged for the relay to retry, never
            # turned into an error for a request whose work is already committed.
            log.exception("after_commit_callback_failed")


def _end(sync_session: Session, keep: bool) -> None:
    try:
        if keep:
            sync_session.commit()
        else:
            sync_session.rollback()
    finally:
        sync_session.close()


def driver_connection(sync_session: Session) -> Any:
    """The session's own database connection as the driver sees it (asyncpg's), for ``run_sync``."""
    return sync_session.connection().connection.driver_connection


def _dialect_insert(session: AsyncSession, model: Any) -> Any:
    # Both dialects spell ON CONFLICT alike, but SQLAlchemy gives each its own insert construct.
    if session.get_bind().dialect.name == "postgresql":
        return postgresql_insert(model)
    return sqlite_insert(model)


async def insert_ignoring_conflicts(
    session: AsyncSession, model: Any, values: dict[str, Any], conflict_columns: list[str]
) -> bool:
    """``INSERT … ON CONFLICT DO NOTHING``: the row exists afterwards, whoever inserted it. True when this
    statement inserted it."""
    statement = (
        _dialect_insert(session, model)
        .values(**values)
        .on_conflict_do_nothing(index_elements=conflict_columns)
        .returning(getattr(model, conflict_columns[0]))
    )
    return (await session.execute(statement)).first() is not None


async def next_counter_value(session: AsyncSession, model: Any, key: dict[str, Any], counter_column: str) -> int:
    """Advance a counter row by one and return the new value in one statement, creating the row at 1.

    The row lock it takes serializes issuers of the same counter until commit; a rolled-back value is
    simply skipped, so numbers are unique and never reused (not gapless)."""
    column = getattr(model, counter_column)
    statement = (
        _dialect_insert(session, model)
        .values(**key, **{counter_column: 1})
        .on_conflict_do_update(index_elements=list(key), set_={counter_column: column + 1})
        .returning(column)
    )
    value: int = (await session.execute(statement)).scalar_one()
    return value


async def issue_counter_value(session: AsyncSession, model: Any, key: dict[str, Any], counter_column: str) -> int:
    """``next_counter_value`` for a number that may have gaps (an MRN, not an invoice number).

    On PostgreSQL the counter advances in a short transaction of its own, in the same tenant scope, so its row
    lock is held for one statement instead of for the caller's whole transaction: issuers of one counter no
    longer queue behind each other's work. The side transaction runs on a small pool of its own: borrowing a
    second connection from the requests' pool could deadlock it once every pooled connection belongs to a
    request waiting for a second one. A caller that rolls back leaves its number unused, never reused.
    SQLite serializes every write transaction anyway, so there the caller's own transaction is used."""
    bind = session.bind
    database = _databases.get(bind.sync_engine) if isinstance(bind, AsyncEngine) else None
    if database is None or database.is_sqlite:
        return await next_counter_value(session, model, key, counter_column)
    side = AsyncSession(bind=database.side_engine(), expire_on_commit=False)
    await share_scope(session, side)
    try:
        value = await next_counter_value(side, model, key, counter_column)
        await side.commit()
    finally:
        await side.close()
    return value
