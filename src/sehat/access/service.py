"""Reading the audit log. Services never commit: the unit of work does."""

from __future__ import annotations

import base64
from typing import Any

import orjson
from sqlalchemy import Select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from sehat.access import policy
from sehat.access.schemas import AuditEventQuery
from sehat.core.actor import Actor
from sehat.core.audit import AuditEntry, AuditEvent, AuditLog, Outcome
from sehat.core.errors import InvalidInput
from sehat.core.scoping import scoped_select

AUDIT_READ_ACTION = "audit.read"
# Entry ids are BIGINT on PostgreSQL: a cursor naming a larger one would fail in the driver, not here.
_MAX_ENTRY_ID = 2**63 - 1
_CURSOR_KIND = "audit-events"


def encode_cursor(last_entry_id: int) -> str:
    raw = orjson.dumps([_CURSOR_KIND, last_entry_id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The id of the last entry the previous page showed; the next page starts below it."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        kind, entry_id = orjson.loads(raw)
    except (ValueError, TypeError, orjson.JSONDecodeError) as exc:
        raise InvalidInput("The cursor is not one this server issued.", code="invalid_cursor") from exc
    # bool is an int in Python; a cursor of [kind, true] is not one we wrote.
    if kind != _CURSOR_KIND or type(entry_id) is not int or not 1 <= entry_id <= _MAX_ENTRY_ID:
        raise InvalidInput("The cursor is not one this server issued.", code="invalid_cursor")
    return entry_id


def _filtered(statement: Select[Any], query: AuditEventQuery) -> Select[Any]:
    if query.patient_id is not None:
        statement = statement.where(AuditEvent.patient_id == query.patient_id)
    if query.actor_id is not None:
        statement = statement.where(AuditEvent.actor_id == query.actor_id)
    if query.action is not None:
        statement = statement.where(AuditEvent.action == query.action)
    if query.outcome is not None:
        statement = statement.where(AuditEvent.outcome == query.outcome.value)
    if query.occurred_from is not None:
        statement = statement.where(AuditEvent.occurred_at >= query.occurred_from)
    if query.occurred_to is not None:
        statement = statement.where(AuditEvent.occurred_at < query.occurred_to)
    return statement


async def list_audit_events(
    session: AsyncSession, audit_log: AuditLog, actor: Actor, query: AuditEventQuery
) -> tuple[list[AuditEvent], str | None]:
    """One page of the caller's organization's audit entries, newest first (keyset over the entry id).

    The read is itself audited, in the same transaction, with the filters used. It lists what was there
    before it: its own entry shows up from the next read on."""
    policy.ensure_can_read_audit_log(actor)
    before_id = decode_cursor(query.cursor) if query.cursor else None
    own_entry = audit_log.record(
        session,
        actor,
        AuditEntry(
            action=AUDIT_READ_ACTION,
            outcome=Outcome.success,
            resource_type="audit_log",
            details={"filters": query.filters_used(), "limit": query.limit, "continued": before_id is not None},
        ),
    )
    # Written before anything is read. A GET's transaction on SQLite starts deferred: a read first and a
    # write second would have to upgrade its lock, which fails at once if another writer committed meanwhile.
    await session.flush()

    statement = (
        _filtered(scoped_select(AuditEvent, actor), query)
        .where(AuditEvent.id != own_entry.id)
        # The MAC never leaves the database for this route; raiseload makes any accidental use loud.
        .options(defer(AuditEvent.mac, raiseload=True), defer(AuditEvent.mac_kid, raiseload=True))
        .order_by(AuditEvent.id.desc())
        .limit(query.limit + 1)
    )
    if before_id is not None:
        statement = statement.where(AuditEvent.id < before_id)
    rows = list((await session.scalars(statement)).all())
    if len(rows) <= query.limit:
        return rows, None
    return rows[: query.limit], encode_cursor(rows[query.limit - 1].id)
