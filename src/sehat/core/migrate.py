"""Schema migrations through Alembic, driven over the app's own async engine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

import sehat.migrations


def alembic_config(connection: Any = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(sehat.migrations.__file__).parent))
    config.attributes["connection"] = connection
    return config


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    async with engine.begin() as connection:
        await connection.run_sync(lambda sync: command.upgrade(alembic_config(sync), revision))


async def downgrade(engine: AsyncEngine, revision: str = "base") -> None:
    async with engine.begin() as connection:
        await connection.run_sync(lambda sync: command.downgrade(alembic_config(sync), revision))


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as connection:
        return await connection.run_sync(lambda sync: MigrationContext.configure(sync).get_current_revision())


def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


async def is_up_to_date(engine: AsyncEngine) -> bool:
    return await current_revision(engine) == head_revision()


# Tables the application may only read and append to: the audit log and its seals.
APPEND_ONLY_TABLES = ("audit_events", "audit_seals")
ROLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


async def grant_app_role(engine: AsyncEngine, role: str) -> None:
    """Give the application's database role what it needs and no more, on PostgreSQL. Run by the schema owner
    after each migration (idempotent), so tables added later are covered.

    The role must not own the tables and must not be a superuser or have BYPASSRLS, or row-level security
    would not apply to it; ``check_app_role`` refuses such a connection in production."""
    if not ROLE_NAME.match(role):
        raise ValueError("the application role must be a plain lower-case identifier")
    async with engine.begin() as connection:
        if connection.dialect.name != "postgresql":
            return
        for statement in (
            f'GRANT USAGE ON SCHEMA public TO "{role}"',
            f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"',
            f'GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO "{role}"',
            f'REVOKE UPDATE, DELETE, TRUNCATE ON {", ".join(APPEND_ONLY_TABLES)} FROM "{role}"',
            f'REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON alembic_version FROM "{role}"',
        ):
            await connection.execute(text(statement))


async def check_app_role(engine: AsyncEngine) -> list[str]:
    """Why the connected role escapes row-level security, if it does: superuser, BYPASSRLS, or table owner."""
    async with engine.connect() as connection:
        if connection.dialect.name != "postgresql":
            return []
        row = (
            await connection.execute(
                text(
                    "SELECT r.rolsuper, r.rolbypassrls, EXISTS (SELECT 1 FROM pg_tables t "
                    "WHERE t.schemaname = 'public' AND t.tableowner = current_user) "
                    "FROM pg_roles r WHERE r.rolname = current_user"
                )
            )
        ).one()
    reasons = []
    if row[0]:
        reasons.append("is a superuser")
    if row[1]:
        reasons.append("has BYPASSRLS")
    if row[2]:
        reasons.append("owns tables")
    return reasons
