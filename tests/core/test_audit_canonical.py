"""The bytes an audit entry's MAC covers are the same whether they are computed from plain column values (the hot
path, ``canonical_values``) or from the stored entry (``canonical_content``, what the sealer and verifier use)."""

from __future__ import annotations

import dataclasses
import uuid
from datetime import UTC, datetime

import pytest
import time_machine
from asyncpg.pgproto import pgproto

from sehat.core.actor import Actor, Audience, Role, SystemActor
from sehat.core.audit import (
    MAC_PURPOSE,
    AuditEntry,
    AuditEvent,
    AuditLog,
    Outcome,
    canonical_content,
    canonical_values,
    entry_mac,
)
from sehat.core.crypto import KeyRing

KEY_RING = KeyRing.parse(KeyRing.generate_entry("k1"))
ORGANIZATION = uuid.UUID("7d0f9a0c-1b2c-4d3e-8f40-5a6b7c8d9e0f")
ACTOR = Actor(
    user_id=uuid.UUID("11111111-2222-4333-8444-555555555555"),
    organization_id=ORGANIZATION,
    roles=frozenset({Role.nurse, Role.doctor}),
    audience=Audience.staff,
    session_id=uuid.uuid4(),
    token_id="t",
    client_address="203.0.113.7",
    request_id="req-12345678",
)
ENTRIES = [
    AuditEntry(action="patient.read", outcome=Outcome.success, patient_id=uuid.uuid4(), resource_id="r-1"),
    AuditEntry(action="access.denied", outcome=Outcome.denied, details={"route": "/x", "status": 404}),
    AuditEntry(
        action="x.y",
        outcome=Outcome.failure,
        resource_type="facility",
        details={"zeta": [1, 2.5, None, True], "alpha": {"naïve": "ünïcødé ✓", "nested": {"b": 1, "a": 2}}},
    ),
]
# Ids read from PostgreSQL are asyncpg's own UUID subclass, which orjson does not take as a UUID.
ACTOR_FROM_DATABASE = dataclasses.replace(
    ACTOR, user_id=pgproto.UUID(str(ACTOR.user_id)), organization_id=pgproto.UUID(str(ORGANIZATION))
)
ACTORS = [ACTOR, ACTOR_FROM_DATABASE, SystemActor(name="sealer"), None]


@pytest.mark.parametrize("entry", ENTRIES)
@pytest.mark.parametrize("actor", ACTORS, ids=["staff", "staff-read-from-database", "system", "anonymous"])
def test_plain_values_and_the_stored_entry_give_the_same_bytes(entry: AuditEntry, actor: object) -> None:
    log = AuditLog(KEY_RING)
    values = log.values(actor, entry)  # type: ignore[arg-type]
    assert canonical_values(values) == canonical_content(AuditEvent(**values))


def test_a_timestamp_on_a_whole_second_gives_the_same_bytes_too() -> None:
    log = AuditLog(KEY_RING)
    with time_machine.travel(datetime(2026, 3, 29, 1, 0, 0, tzinfo=UTC), tick=False):
        values = log.values(ACTOR, ENTRIES[0], roles=())
    assert values["occurred_at"].microsecond == 0
    assert canonical_values(values) == canonical_content(AuditEvent(**values))


def test_the_mac_computed_from_plain_values_checks_out_against_the_stored_entry() -> None:
    log = AuditLog(KEY_RING)
    values = log.values(ACTOR, ENTRIES[2])
    _, key = KEY_RING.derive(MAC_PURPOSE, values["mac_kid"])
    assert values["mac"] == entry_mac(key, canonical_content(AuditEvent(**values)))
