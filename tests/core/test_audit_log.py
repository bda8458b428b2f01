"""The audit log is append-only, and every kind of tampering by a database superuser is found and located."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError

from sehat.core.actor import SystemActor
from sehat.core.audit import AuditEntry, AuditEvent, AuditSeal, Outcome

ENTRIES = 10


@asynccontextmanager
async def superuser(api: Any) -> AsyncIterator[Any]:
    """A connection that bypasses the append-only triggers, foreign keys and row-level security, as an attacker
    with full database rights would."""
    async with (api.owner_database or api.database).engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            await connection.execute(text("SET session_replication_role = replica"))
        else:
            await connection.execute(text("COMMIT"))
            await connection.execute(text("PRAGMA foreign_keys = OFF"))
            for table in ("audit_events", "audit_seals"):
                for operation in ("update", "delete"):
                    await connection.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_{operation}"))
            await connection.execute(text("BEGIN"))
        yield connection
        await connection.commit()


ENTRY_COLUMNS = (
    "occurred_at", "organization_id", "actor_type", "actor_id", "actor_roles", "action", "resource_type",
    "resource_id", "patient_id", "outcome", "client_address", "request_id", "details", "mac_kid", "mac",
)  # fmt: skip


async def forge_entry(
    connection: Any, *, new_id: int, event_uuid: str, copy_of: int, action: str | None = None
) -> None:
    """As a superuser, insert a copy of entry ``copy_of`` under a new id and uuid, its MAC copied along (and, if
    given, another action): a plausible-looking entry that sehat did not write."""
    selected = [":action" if column == "action" and action is not None else column for column in ENTRY_COLUMNS]
    await connection.execute(
        text(
            # Test-owned constants only: nothing here comes from input.
            f"INSERT INTO audit_events (id, event_uuid, {', '.join(ENTRY_COLUMNS)}) "  # noqa: S608
            f"SELECT :new_id, :uuid, {', '.join(selected)} FROM audit_events WHERE id = :id"
        ),
        {"new_id": new_id, "uuid": event_uuid, "id": copy_of, **({"action": action} if action else {})},
    )


async def _record(api: Any, count: int, start: int = 0) -> list[int]:
    ids = []
    async with api.unit_of_work() as session:
        for number in range(start, start + count):
            event = api.app.state.audit.record(
                session, SystemActor(name="test"), AuditEntry(action=f"test.event.{number}", outcome=Outcome.success)
            )
            await session.flush()
            ids.append(event.id)
    return ids


@pytest.fixture
async def sealed_log(start_api: Any, tmp_path: Any) -> AsyncIterator[tuple[Any, list[int]]]:
    async with start_api(
        audit_checkpoint_file=tmp_path / "checkpoints.jsonl",
        audit_seal_settle_seconds=0,
        audit_seal_interval_seconds=3600,
    ) as api:
        ids = await _record(api, ENTRIES)
        assert await api.app.state.audit_chain.seal(api.database) == ENTRIES
        yield api, ids


async def _verify(api: Any) -> Any:
    return await api.app.state.audit_chain.verify(api.database)


async def test_an_untouched_log_verifies_and_later_entries_extend_the_same_chain(sealed_log: Any) -> None:
    api, _ = sealed_log
    await _record(api, 3, start=ENTRIES)
    assert await api.app.state.audit_chain.seal(api.database) == 3
    report = await _verify(api)
    assert report.ok, report.findings
    assert (report.sealed, report.unsealed, report.checkpoint_index) == (ENTRIES + 3, 0, ENTRIES + 3)


async def test_the_application_cannot_change_or_delete_an_entry(sealed_log: Any) -> None:
    api, ids = sealed_log
    for statement in (
        "UPDATE audit_events SET action = 'x' WHERE id = :id",
        "DELETE FROM audit_events WHERE id = :id",
        "UPDATE audit_seals SET chain_hash = chain_hash WHERE event_id = :id",
    ):
        with pytest.raises(DBAPIError, match="append-only"):
            async with api.unit_of_work() as session:
                await session.execute(text(statement), {"id": ids[0]})
    assert (await _verify(api)).ok


async def test_an_edited_entry_is_located(sealed_log: Any) -> None:
    api, ids = sealed_log
    async with superuser(api) as connection:
        await connection.execute(text("UPDATE audit_events SET outcome = 'denied' WHERE id = :id"), {"id": ids[4]})
    first = (await _verify(api)).first
    assert (first.kind, first.chain_index, first.event_id) == ("edited", 5, ids[4])


async def test_a_deleted_entry_is_located_whether_or_not_its_seal_went_too(sealed_log: Any) -> None:
    api, ids = sealed_log
    async with superuser(api) as connection:
        await connection.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": ids[3]})
    first = (await _verify(api)).first
    assert (first.kind, first.chain_index) == ("deleted", 4)
    async with superuser(api) as connection:
        await connection.execute(text("DELETE FROM audit_seals WHERE event_id = :id"), {"id": ids[6]})
        await connection.execute(text("DELETE FROM audit_events WHERE id = :id"), {"id": ids[6]})
    kinds = {(finding.kind, finding.chain_index) for finding in (await _verify(api)).findings}
    assert {("deleted", 4), ("deleted", 7)} <= kinds


async def test_swapped_entries_are_located_at_the_first_moved_position(sealed_log: Any) -> None:
    api, ids = sealed_log
    async with superuser(api) as connection:
        await connection.execute(text("UPDATE audit_events SET id = -1 WHERE id = :id"), {"id": ids[2]})
        await connection.execute(
            text("UPDATE audit_events SET id = :old WHERE id = :new"), {"old": ids[2], "new": ids[3]}
        )
        await connection.execute(text("UPDATE audit_events SET id = :new WHERE id = -1"), {"new": ids[3]})
    first = (await _verify(api)).first
    assert (first.kind, first.chain_index) == ("reordered", 3)


async def test_a_forged_entry_is_found_sealed_or_not(sealed_log: Any) -> None:
    api, ids = sealed_log
    async with superuser(api) as connection:
        # A plausible-looking row, with a MAC copied from a real one: it cannot match its new content.
        await forge_entry(connection, new_id=ids[-1] + 100, event_uuid="0" * 31 + "1", copy_of=ids[0])
    report = await _verify(api)
    assert (report.first.kind, report.first.event_id) == ("inserted", ids[-1] + 100)
    # The sealer refuses to seal it, so it cannot be laundered into the chain either.
    assert await api.app.state.audit_chain.seal(api.database) == 1
    async with api.unit_of_work() as session:
        assert await session.scalar(select(func.count()).select_from(AuditSeal)) == ENTRIES
    async with superuser(api) as connection:
        await connection.execute(
            text(
                "INSERT INTO audit_seals (chain_index, event_id, chain_kid, chain_hash, sealed_at) "
                "SELECT :index, :event, chain_kid, chain_hash, sealed_at FROM audit_seals WHERE chain_index = 1"
            ),
            {"index": ENTRIES + 1, "event": ids[-1] + 100},
        )
    findings = {(finding.kind, finding.chain_index) for finding in (await _verify(api)).findings}
    assert ("edited", ENTRIES + 1) in findings


async def test_truncation_is_caught_against_the_signed_checkpoint(sealed_log: Any) -> None:
    api, _ = sealed_log
    async with superuser(api) as connection:
        for table in ("audit_seals", "audit_events"):
            await connection.execute(text(f"DELETE FROM {table} WHERE 1 = 1"))  # noqa: S608 - fixed table names
    report = await _verify(api)
    assert report.first.kind == "truncated"
    assert report.checkpoint_index == ENTRIES


async def test_cutting_the_end_of_the_chain_is_caught_too(sealed_log: Any) -> None:
    api, ids = sealed_log
    async with superuser(api) as connection:
        await connection.execute(text("DELETE FROM audit_seals WHERE chain_index > 7"))
        await connection.execute(text("DELETE FROM audit_events WHERE id > :id"), {"id": ids[6]})
    first = (await _verify(api)).first
    assert (first.kind, first.chain_index) == ("truncated", 8)


async def test_a_checkpoint_file_edited_by_hand_is_reported(sealed_log: Any) -> None:
    api, _ = sealed_log
    path = api.app.state.audit_chain.checkpoint_file
    path.write_text(path.read_text().replace('"chain_index":10', '"chain_index":12'))
    kinds = [finding.kind for finding in (await _verify(api)).findings]
    assert "bad_checkpoint" in kinds


async def test_concurrent_sealers_never_seal_an_entry_twice(sealed_log: Any) -> None:
    api, _ = sealed_log
    await _record(api, 40, start=ENTRIES)
    chain = api.app.state.audit_chain
    results = await asyncio.gather(*(chain.seal(api.database) for _ in range(4)), return_exceptions=True)
    assert not [result for result in results if isinstance(result, BaseException)], results
    async with api.unit_of_work() as session:
        indices = list((await session.scalars(select(AuditSeal.chain_index).order_by(AuditSeal.chain_index))).all())
        events = await session.scalar(select(func.count()).select_from(AuditEvent))
    assert indices == list(range(1, ENTRIES + 41))
    assert events == ENTRIES + 40
    assert (await _verify(api)).ok
