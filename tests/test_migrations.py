"""Migrations build the whole schema from an empty database on both backends, and tear it down again."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from sehat.core.db import create_engine
from sehat.core.migrate import current_revision, downgrade, head_revision, upgrade
from sehat.models import metadata
from sehat.settings import Settings
from tests.conftest import POSTGRES_SERVER, _recreate_database, _unavailable


@pytest.fixture
async def empty_database_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    if request.getfixturevalue("postgres_ready"):
        _unavailable("PostgreSQL not available")
    url = f"{POSTGRES_SERVER}/sehat_migrations_{os.getpid()}"
    await _recreate_database(url)
    yield url
    await _recreate_database(url, create=False)


async def test_upgrade_from_empty_matches_the_models_exactly_and_downgrade_removes_everything(
    empty_database_url: str,
) -> None:
    engine = create_engine(Settings(_env_file=None, database_url=empty_database_url))  # type: ignore[call-arg]
    try:
        assert await current_revision(engine) is None
        await upgrade(engine)
        assert await current_revision(engine) == head_revision()
        async with engine.connect() as connection:
            differences = await connection.run_sync(
                lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True}), metadata)
            )
        assert differences == []
        await upgrade(engine)  # running again is a no-op, not an error
        await downgrade(engine, "base")
        async with engine.connect() as connection:
            tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
        assert tables <= {"alembic_version"}
        await upgrade(engine)
        assert await current_revision(engine) == head_revision()
    finally:
        await engine.dispose()


async def test_the_app_refuses_to_start_on_an_unmigrated_database(empty_database_url: str) -> None:
    from asgi_lifespan import LifespanManager

    from sehat.app import SchemaNotReady, create_app
    from tests.conftest import MASTER_KEY

    app = create_app(Settings(_env_file=None, database_url=empty_database_url, master_key=MASTER_KEY))  # type: ignore[call-arg]
    with pytest.raises(SchemaNotReady):
        async with LifespanManager(app):
            pass
