"""The fast verifier reads raw rows, yet it judges every entry exactly as ``canonical_content`` and the original
walk would; the sealer's idle pass looks only above a floor, yet never skips an entry that commits late."""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import time_machine
from sqlalchemy import event, select, text
from sqlalchemy.orm import Session

from sehat.core import audit_chain
from sehat.core.actor import SystemActor
from sehat.core.audit import (
    MAC_PURPOSE,
    AuditEntry,
    AuditEvent,
    Outcome,
    canonical_content,
    chain_step,
    entry_mac,
)
from sehat.core.audit_chain import AuditChain, PreparedHmac, verification_rows
from sehat.core.tenant_scope import enter_platform_scope
from tests.core.test_audit_log import _record, forge_entry, superuser


@pytest.fixture
async def log_api(start_api: Any, tmp_path: Any) -> AsyncIterator[Any]:
    async with start_api(
        audit_checkpoint_file=tmp_path / "checkpoints.jsonl",
        audit_seal_settle_seconds=0,
        audit_seal_interval_seconds=3600,  # the background sealer stays out of the way
    ) as api:
        yield api


def _chain(api: Any, **options: Any) -> AuditChain:
    """A sealer of its own, so each test starts from a fresh floor."""
    return AuditChain(api.auth.key_ring, api.app.state.audit_chain.checkpoint_file, 0, **options)


# --- the same bytes as canonical_content --------------------------------------------------------------------

NASTY_DETAILS: list[dict[str, Any]] = [
    {},
    {"name": "Zoë Ærø 患者 🩺", "rtl": "مريض", "combining": "e\u0301"},
    {"controls": "line\nbreak\ttab\u0000nul\u001f\u007f\u2028\u2029", "quotes": '"quoted" \\ back/slash'},
    {"b": [1, {"z": None, "a": [True, False]}], "A": {"y": 1.5, "x": -0.0}, "": "empty key"},
    {"big": 2**63 - 1, "negative": -(2**63), "unsigned": 2**64 - 1, "zero": 0, "minus_zero": -0},
    {"floats": [0.1, 1e-7, 5e-324, 1.7976931348623157e308, 123456789.123456789, -2.5e-300, 1.0, 100.0]},
    {"b": 1, "a": 2, "B": 3, "é": 4, "e": 5, "10": 6, "9": 7, "aa": 8, "a\u0000": 9},
    {"deep": [[[[{"x": [[[["leaf"]]]]}]]]]},
]


def _nasty_events(key: bytes, kid: str) -> list[AuditEvent]:
    """Entries as the application would write them, over every shape a field can take."""
    organization = uuid.uuid4()
    shapes: list[dict[str, Any]] = [
        # Every optional field empty.
        {"actor_type": "anonymous", "actor_roles": []},
        # Every field set, with text that is not ASCII.
        {
            "organization_id": organization,
            "actor_type": "user",
            "actor_id": uuid.uuid4(),
            "actor_roles": ["doctor"],
            "resource_type": "patient",
            "resource_id": "Ω-42/ü",
            "patient_id": uuid.uuid4(),
            "client_address": "2001:db8::1",
            "request_id": "req-ß-" + uuid.uuid4().hex[:8],
        },
        # Roles stored out of order: the MAC covers them sorted.
        {
            "organization_id": organization,
            "actor_type": "user",
            "actor_id": uuid.uuid4(),
            "actor_roles": ["nurse", "doctor", "billing", "auditor"],
        },
        {"actor_type": "system", "actor_roles": ["reminders"]},
    ]
    moments = [
        datetime.now(UTC),
        datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC),  # no fraction: isoformat() leaves it out
        datetime(2026, 3, 4, 5, 6, 7, 100000, tzinfo=UTC),  # a fraction with trailing zeros
        datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),  # a three-digit year
        datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
    ]
    events = []
    for number, details in enumerate(NASTY_DETAILS * 2):
        event = AuditEvent(
            event_uuid=uuid.uuid4(),
            occurred_at=moments[number % len(moments)],
            action=f"edge.case.{number}",
            outcome=Outcome.success.value,
            details=details,
            mac_kid=kid,
            **{"actor_type": "system", "actor_roles": [], **shapes[number % len(shapes)]},
        )
        event.mac = entry_mac(key, canonical_content(event))
        events.append(event)
    return events


async def _write_nasty_events(api: Any) -> dict[int, bytes]:
    """The edge cases, written through the ORM; the bytes canonical_content gives for each as read back."""
    kid, key = api.auth.key_ring.derive(MAC_PURPOSE)
    async with api.unit_of_work() as session:
        await enter_platform_scope(session)
        session.add_all(_nasty_events(key, kid))
    async with api.database.unit_of_work() as session:
        await enter_platform_scope(session)
        events = (await session.scalars(select(AuditEvent).order_by(AuditEvent.id))).all()
        return {event.id: canonical_content(event) for event in events}


async def test_the_verifier_renders_every_row_to_the_bytes_canonical_content_gives(log_api: Any, backend: str) -> None:
    api = log_api
    await _record(api, 3)
    await _write_nasty_events(api)
    # The same values stored as other JSON texts than json.dumps wrote (no spaces, keys in another order, \u
    # escapes, line breaks, roles in another order): SQLAlchemy loads the same values, so the MACs still hold.
    async with superuser(api) as connection:
        for action, column, document in (
            ("edge.case.3", "details", '{"b":[1,{"z":null,"a":[true,false]}],"A":{"x":-0.0,"y":1.5},"":"empty key"}'),
            (
                "edge.case.1",
                "details",
                '{\n "rtl" : "\\u0645\\u0631\\u064a\\u0636", "name": "Zo\\u00eb \u00c6r\u00f8 '
                '\u60a3\u8005 \U0001fa7a",\n "combining": "e\u0301"}',
            ),
            ("edge.case.2", "actor_roles", '["auditor","nurse","billing","doctor"]'),
        ):
            await connection.execute(
                text(f"UPDATE audit_events SET {column} = :document WHERE action = :action"),  # noqa: S608
                {"document": document, "action": action},
            )
    async with api.database.unit_of_work() as session:
        await enter_platform_scope(session)
        events = (await session.scalars(select(AuditEvent).order_by(AuditEvent.id))).all()
        expected = {event.id: canonical_content(event) for event in events}

    async def rendered(read: str) -> dict[int, bytes]:
        async with api.database.unit_of_work() as session:
            source = await verification_rows(session)
            if read == "unsealed":
                rows = [row async for batch in source.unsealed_within([(-(2**63), 2**63 - 1)]) for row in batch]
            else:
                rows = await source.chain_after(None)
            if backend == "postgresql":
                # The fast path really ran: the content came as text, not as typed values.
                assert all(isinstance(row[7], str) and isinstance(row[20], str) for row in rows)
            return {row[4]: source.content(row) for row in rows}

    assert await rendered("unsealed") == expected
    assert await _chain(api).seal(api.database) == len(expected)
    assert await rendered("sealed") == expected
    report = await api.app.state.audit_chain.verify(api.database)
    assert report.ok, report.findings
    assert (report.sealed, report.unsealed) == (len(expected), 0)


def _text_row(roles: str, details: str, at: str = "2026-01-02T03:04:05.000006+00:00") -> tuple[Any, ...]:
    """A verification row as PostgreSQL renders it (see audit_chain._PG_CONTENT_COLUMNS)."""
    seal_and_mac = (1, 1, "k1", b"h" * 32, 1, "k1", b"m" * 32)
    return (*seal_and_mac, str(uuid.uuid4()), at, None, "system", None, roles, "test", None, None, None, "success",
            None, None, details)  # fmt: skip


def _as_sqlalchemy_reads_it(row: tuple[Any, ...]) -> bytes | str:
    """canonical_content's list, with the JSON columns read by json.loads as SQLAlchemy reads them."""
    fields = list(row[7:])
    fields[1] = datetime.fromisoformat(fields[1]).isoformat()
    fields[5], fields[13] = json.loads(fields[5]), json.loads(fields[13])
    try:
        fields[5] = sorted(fields[5])
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError) as error:
        return f"refused: {type(error).__name__}"


def _as_the_verifier_reads_it(row: tuple[Any, ...]) -> bytes | str:
    try:
        return audit_chain.text_canonicalizer()(row)
    except (TypeError, orjson.JSONEncodeError) as error:
        return f"refused: {type(error).__name__}"


def test_json_columns_are_read_as_sqlalchemy_reads_them() -> None:
    """orjson reads JSON faster than json.loads, and to the same values wherever the verifier lets it."""
    rng = random.Random(7)
    documents = [json.dumps(details) for details in NASTY_DETAILS]
    documents += [json.dumps({"f": rng.uniform(-1e6, 1e6), "g": rng.random() * 10 ** rng.randint(-300, 300)})
                  for _ in range(2_000)]  # fmt: skip
    documents += [json.dumps({"i": rng.randint(-(2**70), 2**70) >> rng.randint(0, 70)}) for _ in range(2_000)]
    documents += [
        '{"a": 1, "a": 2}',  # a repeated key: the last one wins in both
        '{"n": NaN, "i": Infinity, "m": -Infinity}',
        '{"huge": 1e400, "tiny": 1e-400}',
        '{"tiny": 2.4703282292062327e-324, "least": 2.4703282292062328e-324, "most": 1.7976931348623158e308}',
        '{"bigint": 123456789012345678901234567890}',
        '{"edges": [9223372036854775807, 9223372036854775808, 18446744073709551615, 18446744073709551616]}',
        '{"edges": [-9223372036854775808, -9223372036854775809]}',
        '{"long": ' + "1" + "0" * 400 + "}",
        '{"x": 1.00000000000000011102230246251565404236316680908203125}',
        '{"x": 0.30000000000000004441, "s": "a string with e+ in it"}',
        '{"s": "\\ud800"}',
        '{"d": ' + "[" * 200 + "]" * 200 + "}",
    ]
    for document in documents:
        # With and without a fraction of a second: the timestamp's "+" moves, and only what follows it counts.
        for at in ("2026-01-02T03:04:05.000006+00:00", "2026-01-02T03:04:05.000000+00:00"):
            row = _text_row('["b", "a"]', document, at)
            assert _as_the_verifier_reads_it(row) == _as_sqlalchemy_reads_it(row), document
    for roles in ('["nurse", "doctor"]', "[]", '["x", 18446744073709551616]', '["x", 1e400]', '{"b": 1, "a": 2}'):
        row = _text_row(roles, "{}")
        assert _as_the_verifier_reads_it(row) == _as_sqlalchemy_reads_it(row), roles


def test_the_prepared_hmac_is_hmac_sha256() -> None:
    rng = random.Random(3)
    for key_length in (0, 1, 32, 63, 64, 65, 100):
        key = rng.randbytes(key_length)
        prepared = PreparedHmac(key)
        for length in (0, 1, 55, 56, 64, 360, 5_000):
            message = rng.randbytes(length)
            assert prepared.digest(message) == entry_mac(key, message)
        previous, mac = rng.randbytes(32), rng.randbytes(32)
        assert prepared.digest(previous + mac) == chain_step(key, previous, mac)


# --- findings: the same as the original walk, whatever the batch size --------------------------------------


async def _tamper_across_batches(api: Any, ids: list[int]) -> None:
    async with superuser(api) as connection:
        # An edit, two seals removed at once, a forged entry below the sealed ids and one above them.
        await connection.execute(text("UPDATE audit_events SET outcome = 'denied' WHERE id = :id"), {"id": ids[8]})
        await connection.execute(text("DELETE FROM audit_seals WHERE chain_index IN (13, 14)"))
        for new_id, marker in ((-5, "1"), (ids[-1] + 50, "2")):
            await forge_entry(connection, new_id=new_id, event_uuid="0" * 31 + marker, copy_of=ids[0])


def _summary(report: Any) -> tuple[Any, ...]:
    return (
        report.sealed,
        report.unsealed,
        report.checkpoint_index,
        [(finding.kind, finding.chain_index, finding.event_id, finding.message) for finding in report.findings],
    )


async def test_findings_and_their_order_do_not_depend_on_the_batch_size(
    log_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = log_api
    ids = await _record(api, 25)
    assert await _chain(api).seal(api.database) == 25
    await _tamper_across_batches(api, ids)
    whole = await api.app.state.audit_chain.verify(api.database)
    monkeypatch.setattr(audit_chain, "_VERIFY_BATCH", 4)
    monkeypatch.setattr(audit_chain, "_VERIFY_CHUNK", 3)
    batched = await api.app.state.audit_chain.verify(api.database)
    assert _summary(batched) == _summary(whole)
    sealed, unsealed, checkpoint, findings = _summary(whole)
    assert (sealed, unsealed, checkpoint) == (23, 4, 25)
    # The original walk's order: the chain in order, then entries never sealed by id.
    assert [finding[:3] for finding in findings] == [
        ("edited", 9, ids[8]),
        ("deleted", 13, None),
        ("inserted", None, -5),
        ("inserted", None, ids[-1] + 50),
    ]
    assert findings[1][3] == "chain entries 13-14 were deleted"


async def test_an_unsealed_entry_in_a_hole_between_sealed_ids_is_found(log_api: Any) -> None:
    """The search for entries without a seal looks only where the chain left ids out: holes left by
    transactions that rolled back, or by ids given out of order, are among those places."""
    api = log_api
    ids = await _record(api, 3)
    async with api.unit_of_work() as session:
        await enter_platform_scope(session)
        far = api.app.state.audit.record(
            session, SystemActor(name="test"), AuditEntry(action="test.far", outcome=Outcome.success)
        )
        far.id = ids[-1] + 10  # the MAC does not cover the id: a valid entry, ten ids further on
    await _record(api, 2, start=3)
    assert await _chain(api).seal(api.database) == 6
    async with superuser(api) as connection:
        await forge_entry(
            connection, new_id=ids[-1] + 5, event_uuid=str(uuid.UUID(int=5)), copy_of=ids[0], action="forged"
        )
    report = await api.app.state.audit_chain.verify(api.database)
    assert (report.sealed, report.unsealed) == (6, 1)
    assert [(finding.kind, finding.event_id) for finding in report.findings] == [("inserted", ids[-1] + 5)]


async def test_a_row_sehat_cannot_have_written_is_reported_not_raised(log_api: Any, backend: str) -> None:
    api = log_api
    ids = await _record(api, 6)
    assert await _chain(api).seal(api.database) == 6
    async with superuser(api) as connection:
        for statement, event_id in (
            ("UPDATE audit_events SET details = '{\"n\": 123456789012345678901234567890}' WHERE id = :id", ids[0]),
            ("UPDATE audit_events SET actor_roles = '[1, \"a\"]' WHERE id = :id", ids[1]),
            ("UPDATE audit_events SET mac_kid = 'no-such-key' WHERE id = :id", ids[2]),
            ("UPDATE audit_seals SET chain_kid = 'no-such-key' WHERE event_id = :id", ids[4]),
        ):
            await connection.execute(text(statement), {"id": event_id})
        if backend == "postgresql":
            # A timestamp Python cannot hold (the ORM could not even load this row).
            await connection.execute(
                text("UPDATE audit_events SET occurred_at = 'infinity' WHERE id = :id"), {"id": ids[3]}
            )
    report = await api.app.state.audit_chain.verify(api.database)
    found = [(finding.kind, finding.chain_index) for finding in report.findings]
    expected = [("edited", 1), ("edited", 2), ("edited", 3)]
    expected += [("edited", 4)] if backend == "postgresql" else []
    expected += [("reordered", 5)]
    assert found == expected
    assert "chain key the key ring does not hold" in report.findings[-1].message


# --- the sealer: a floor, and never a skipped entry ---------------------------------------------------------


async def test_an_idle_pass_looks_only_above_what_is_sealed(log_api: Any) -> None:
    api = log_api
    chain = _chain(api)
    ids = await _record(api, 5)
    first = await chain.seal_pass(api.database)
    assert (first.sealed, first.refused, first.scanned_above) == (5, 0, None)
    idle = await chain.seal_pass(api.database)
    assert (idle.sealed, idle.refused, idle.scanned_above) == (0, 0, ids[-1])
    later = await _record(api, 3, start=5)
    busy = await chain.seal_pass(api.database)
    assert (busy.sealed, busy.scanned_above) == (3, ids[-1])
    assert (await chain.seal_pass(api.database)).scanned_above == later[-1]
    assert (await api.app.state.audit_chain.verify(api.database)).ok


async def test_entries_still_settling_hold_the_floor_until_they_are_sealed(log_api: Any) -> None:
    api = log_api
    chain = AuditChain(api.auth.key_ring, api.app.state.audit_chain.checkpoint_file, 60)
    old = await _record(api, 2)
    with time_machine.travel(datetime.now(UTC) + timedelta(minutes=5)):
        assert (await chain.seal_pass(api.database)).sealed == 2
    fresh = await _record(api, 3, start=2)
    for _ in range(2):
        done = await chain.seal_pass(api.database)
        assert (done.sealed, done.scanned_above) == (0, old[-1])
    with time_machine.travel(datetime.now(UTC) + timedelta(minutes=5)):
        assert (await chain.seal_pass(api.database)).sealed == 3
        assert (await chain.seal_pass(api.database)).scanned_above == fresh[-1]


async def test_refused_entries_neither_stall_the_sealer_nor_add_checkpoints(
    log_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = log_api
    monkeypatch.setattr(audit_chain, "_SEAL_BATCH", 3)
    chain = _chain(api)
    ids = await _record(api, 4)
    assert (await chain.seal_pass(api.database)).sealed == 4
    lines = chain.checkpoint_file.read_text().splitlines()
    assert len(lines) == 2  # one per batch of 3 that moved the head
    async with superuser(api) as connection:
        # Seven entries the application did not write: more than a batch of them, one after another.
        for offset in range(1, 8):
            await forge_entry(
                connection,
                new_id=ids[-1] + offset,
                event_uuid=str(uuid.UUID(int=offset)),
                copy_of=ids[0],
                action="forged",
            )
    done = await chain.seal_pass(api.database)
    assert (done.sealed, done.refused) == (0, 7)
    assert (await chain.seal_pass(api.database)).refused == 0  # known: below the floor now
    assert chain.checkpoint_file.read_text().splitlines() == lines  # the head never moved
    # The periodic pass over the whole table looks at them again, whatever the floor.
    rescanning = _chain(api, full_scan_seconds=0)
    for _ in range(2):
        done = await rescanning.seal_pass(api.database)
        assert (done.sealed, done.refused, done.scanned_above) == (0, 7, None)
    kinds = [finding.kind for finding in (await api.app.state.audit_chain.verify(api.database)).findings]
    assert kinds == ["inserted"] * 7


async def test_every_transaction_of_the_sealer_and_the_verifier_enters_the_platform_scope_first(
    log_api: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = log_api
    await _record(api, 7)
    monkeypatch.setattr(audit_chain, "_SEAL_BATCH", 3)
    entered: list[Any] = []
    real = audit_chain.enter_platform_scope

    async def spy(session: Any) -> None:
        assert not session.in_transaction(), "entered before the transaction reads anything"
        entered.append(session.sync_session)
        await real(session)

    begun: list[Any] = []

    def on_begin(session: Session, *_: Any) -> None:
        begun.append(session)

    monkeypatch.setattr(audit_chain, "enter_platform_scope", spy)
    event.listen(Session, "after_begin", on_begin)
    try:
        await _chain(api).seal_pass(api.database)  # batches of 3, 3 and 1: three transactions
        assert (await api.app.state.audit_chain.verify(api.database)).ok
    finally:
        event.remove(Session, "after_begin", on_begin)
    assert len(entered) == 4
    # Each of those sessions began exactly one transaction, after its scope was entered.
    assert [session for session in begun if any(session is other for other in entered)] == entered
