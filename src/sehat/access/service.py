"""Reading the audit log. Services never commit: the unit of work does."""

from __future__ import annotations

import base64
import uuid
from typing import Any

import orjson
from sqlalchemy import Select, String, cast, not_, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from sehat.access import policy
from sehat.access.break_glass import BREAK_GLASS_ACTION
from sehat.access.schemas import AccessLogEntryRead, AccessLogQuery, AuditEventQuery
from sehat.core.actor import Actor, Audience, Role
from sehat.core.audit import AuditEntry, AuditEvent, AuditLog, Outcome
from sehat.core.errors import Forbidden, InvalidInput
from sehat.core.scoping import scoped_select
from sehat.identity.models import User
from sehat.identity.permissions import AUDIT_READ_OWN

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
    # Flushed first for its id: the page below leaves the read's own entry out.
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


# --- A patient's own access log: who looked at my record --------------------------------------------------

AUDIT_READ_OWN_ACTION = "audit.read_own"
SYSTEM_ACTOR_NAME = "sehat (automatic)"
SELF_ACTOR_NAME = "you"
# A person acting outside any organization (a platform administrator) has no row among the organization's users.
UNNAMED_STAFF_NAME = "a staff member"
UNSIGNED_ACTOR_NAME = "someone not signed in"

# What was done, and what was attempted, in words a patient reads; by action. The domains that read and
# write patient data (issue 4 on) add their actions here; any other action gets the general wording.
_ACCESS_WORDING: dict[str, tuple[str, str]] = {
    "patient.read": ("viewed your record", "tried to view your record"),
    "patient.update": ("changed your record", "tried to change your record"),
    "patient.export": ("exported your record", "tried to export your record"),
    "patient.erase": ("erased your record", "tried to erase your record"),
    "record.read_clinical": ("viewed your clinical notes", "tried to view your clinical notes"),
    "record.write": ("wrote in your clinical notes", "tried to write in your clinical notes"),
    BREAK_GLASS_ACTION: ("emergency access to your record", "tried emergency access to your record"),
}
_GENERAL_WORDING = ("accessed your record", "tried to access your record")
_OUTCOME_SUFFIX = {Outcome.denied: " (refused)", Outcome.failure: " (failed)"}


def describe_access(action: str, outcome: Outcome) -> str:
    """The patient-friendly label of one entry. Refused attempts are listed too, labelled as refused: that
    a nurse tried to open the record and was stopped is exactly what a patient looking here wants to know."""
    done, attempted = _ACCESS_WORDING.get(action, _GENERAL_WORDING)
    if outcome is Outcome.success:
        return done
    return attempted + _OUTCOME_SUFFIX[outcome]


def _ensure_can_read_own_access_log(actor: Actor) -> None:
    # The route admits patient tokens only; checked again because a service may be called from elsewhere.
    if actor.audience is not Audience.patient or not actor.has(AUDIT_READ_OWN):
        raise Forbidden("Only a patient may read their own access log.", code="permission_denied")


def _access_log_item(row: Any, caller_id: uuid.UUID) -> AccessLogEntryRead:
    roles: list[str] = sorted(row.actor_roles)
    if row.actor_type == "system":
        # A system actor's "role" is the job's internal name, of no meaning to a patient.
        name, roles = SYSTEM_ACTOR_NAME, []
    elif row.actor_id == caller_id:
        name = SELF_ACTOR_NAME
    elif row.actor_type == "user":
        name = row.full_name or UNNAMED_STAFF_NAME
    else:
        name, roles = UNSIGNED_ACTOR_NAME, []
    outcome = Outcome(row.outcome)
    return AccessLogEntryRead(
        occurred_at=row.occurred_at,
        action=row.action,
        description=describe_access(row.action, outcome),
        actor_name=name,
        actor_roles=roles,
        outcome=outcome,
    )


async def list_own_access_log(
    session: AsyncSession, audit_log: AuditLog, actor: Actor, query: AccessLogQuery
) -> tuple[list[AccessLogEntryRead], str | None]:
    """One page of the audit entries about the caller's own patient record, newest first (keyset over the
    entry id, the same cursor as the audit-events list), each with the name of the staff member who acted.

    A patient account not linked to a record yet sees an empty list. The read is itself audited as
    ``audit.read_own`` with the patient's id, and those entries are left out of the list."""
    _ensure_can_read_own_access_log(actor)
    before_id = decode_cursor(query.cursor) if query.cursor else None
    patient_id = await session.scalar(
        scoped_select(User, actor).with_only_columns(User.patient_id).where(User.id == actor.user_id)
    )
    audit_log.record(
        session,
        actor,
        AuditEntry(
            action=AUDIT_READ_OWN_ACTION,
            outcome=Outcome.success,
            resource_type="access_log",
            patient_id=patient_id,
            details={"filters": query.filters_used(), "limit": query.limit, "continued": before_id is not None},
        ),
    )
    await session.flush()
    if patient_id is None:
        return [], None

    # Names come from the organization's own users only: an actor id never resolves across the tenant wall.
    people = scoped_select(User, actor).with_only_columns(User.id, User.full_name).subquery()
    statement = (
        scoped_select(AuditEvent, actor)
        .with_only_columns(
            AuditEvent.id,
            AuditEvent.occurred_at,
            AuditEvent.actor_type,
            AuditEvent.actor_id,
            AuditEvent.actor_roles,
            AuditEvent.action,
            AuditEvent.outcome,
            people.c.full_name,
        )
        .outerjoin(people, people.c.id == AuditEvent.actor_id)
        .where(
            AuditEvent.patient_id == patient_id,
            # Only the patient reads their own log, so these are all theirs: reading it is not an access.
            AuditEvent.action != AUDIT_READ_OWN_ACTION,
            # Another patient's attempt on this record would show that patient's name (and that they are a
            # patient here) to this one. Roles are a JSON list; its text holds "patient" quoted exactly when a
            # patient acted, on both backends, which keeps the test portable without a JSON operator.
            or_(
                AuditEvent.actor_id == actor.user_id,
                not_(cast(AuditEvent.actor_roles, String).like(f'%"{Role.patient.value}"%')),
            ),
        )
        .order_by(AuditEvent.id.desc())
        .limit(query.limit + 1)
    )
    if query.occurred_from is not None:
        statement = statement.where(AuditEvent.occurred_at >= query.occurred_from)
    if query.occurred_to is not None:
        statement = statement.where(AuditEvent.occurred_at < query.occurred_to)
    if before_id is not None:
        statement = statement.where(AuditEvent.id < before_id)
    rows = list((await session.execute(statement)).all())
    next_cursor = encode_cursor(rows[query.limit - 1].id) if len(rows) > query.limit else None
    return [_access_log_item(row, actor.user_id) for row in rows[: query.limit]], next_cursor
