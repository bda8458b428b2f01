"""Reading the audit log. Services never commit: the unit of work does."""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Select, String, cast, not_, or_
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import defer

from sehat.access import policy
from sehat.access.break_glass import BREAK_GLASS_ACTION
from sehat.access.schemas import (
    AccessLogEntryRead,
    AccessLogQuery,
    AuditEventQuery,
    PatientAccessLogEntryRead,
    PatientAccessLogQuery,
    TimeWindowQuery,
)
from sehat.core.actor import Actor, Audience, Role
from sehat.core.audit import AuditEntry, AuditEvent, AuditLog, Outcome
from sehat.core.errors import Forbidden, InvalidInput, NotFound
from sehat.core.scoping import scoped_select
from sehat.identity.models import User
from sehat.identity.permissions import AUDIT_READ_OWN
from sehat.patients.models import Patient

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


# --- Who accessed a patient's record: the patient's own view, and the auditors' ---------------------------

AUDIT_READ_OWN_ACTION = "audit.read_own"
# Auditors reading one patient's access log (GET /patients/{id}/access-log).
AUDIT_READ_PATIENT_LOG_ACTION = "audit.read_patient_log"
SYSTEM_ACTOR_NAME = "sehat (automatic)"
SELF_ACTOR_NAME = "you"
# The patient's own account, as staff see it (patient accounts carry no name; the vault holds it).
PATIENT_ACTOR_NAME = "the patient"
# A person acting outside any organization (a platform administrator) has no row among the organization's users.
UNNAMED_STAFF_NAME = "a staff member"
UNSIGNED_ACTOR_NAME = "someone not signed in"


@dataclass(frozen=True)
class Perspective:
    """Whose eyes an access log is worded for: the wordings below say "{you}" and "{your}"."""

    you: str
    your: str


PATIENT_PERSPECTIVE = Perspective(you=SELF_ACTOR_NAME, your="your")
STAFF_PERSPECTIVE = Perspective(you=PATIENT_ACTOR_NAME, your="the patient's")

# What was done, and what was attempted, in plain words; by action. The domains that read and write patient
# data (issue 4 on) add their actions here; any other action gets the general wording.
_ACCESS_WORDING: dict[str, tuple[str, str]] = {
    "patient.create": ("registered {you} with the clinic", "tried to register {you} with the clinic"),
    "patient.read": ("viewed {your} record", "tried to view {your} record"),
    "patient.search": ("searched for {you}", "tried to search for {you}"),
    "patient.update": ("changed {your} record", "tried to change {your} record"),
    "patient.merge": (
        "merged a duplicate record with {your} record",
        "tried to merge a duplicate record with {your} record",
    ),
    "patient.export": ("exported {your} record", "tried to export {your} record"),
    "patient.erase": ("erased {your} record", "tried to erase {your} record"),
    "patient.legal_hold.place": (
        "placed a legal hold on {your} record",
        "tried to place a legal hold on {your} record",
    ),
    "patient.legal_hold.lift": (
        "lifted the legal hold on {your} record",
        "tried to lift the legal hold on {your} record",
    ),
    "consent.read": ("viewed {your} consents", "tried to view {your} consents"),
    "consent.record": ("recorded {your} consent decision", "tried to record {your} consent decision"),
    "patient.invite": ("invited {you} to open an online account", "tried to invite {you} to open an online account"),
    "patient.account.open": ("opened {your} online account", "tried to open {your} online account"),
    "patient.registration.match": (
        "linked an online account to {your} record",
        "tried to link an online account to {your} record",
    ),
    "record.read_clinical": ("viewed {your} clinical notes", "tried to view {your} clinical notes"),
    "record.write": ("wrote in {your} clinical notes", "tried to write in {your} clinical notes"),
    BREAK_GLASS_ACTION: ("emergency access to {your} record", "tried emergency access to {your} record"),
    AUDIT_READ_OWN_ACTION: ("viewed {your} access log", "tried to view {your} access log"),
    AUDIT_READ_PATIENT_LOG_ACTION: ("viewed who accessed {your} record", "tried to view who accessed {your} record"),
}
_GENERAL_WORDING = ("accessed {your} record", "tried to access {your} record")
_OUTCOME_SUFFIX = {Outcome.denied: " (refused)", Outcome.failure: " (failed)"}


def describe_access(action: str, outcome: Outcome, perspective: Perspective = PATIENT_PERSPECTIVE) -> str:
    """The plain-words label of one entry. Refused attempts are listed too, labelled as refused: that a nurse
    tried to open the record and was stopped is exactly what a patient (or an auditor) looking here wants to
    know."""
    done, attempted = _ACCESS_WORDING.get(action, _GENERAL_WORDING)
    text = done if outcome is Outcome.success else attempted + _OUTCOME_SUFFIX[outcome]
    return text.format(you=perspective.you, your=perspective.your)


def _ensure_can_read_own_access_log(actor: Actor) -> None:
    # The route admits patient tokens only; checked again because a service may be called from elsewhere.
    if actor.audience is not Audience.patient or not actor.has(AUDIT_READ_OWN):
        raise Forbidden("Only a patient may read their own access log.", code="permission_denied")


def _access_log_fields(row: Any, self_id: uuid.UUID | None, perspective: Perspective) -> dict[str, Any]:
    """One entry as an access log shows it; ``self_id`` is the account the log is about (named ``you`` or
    "the patient"), if any."""
    roles: list[str] = sorted(row.actor_roles)
    if row.actor_type == "system":
        # A system actor's "role" is the job's internal name, of no meaning to a reader.
        name, roles = SYSTEM_ACTOR_NAME, []
    elif self_id is not None and row.actor_id == self_id:
        name = perspective.you
    elif row.actor_type == "user":
        name = row.full_name or UNNAMED_STAFF_NAME
    else:
        name, roles = UNSIGNED_ACTOR_NAME, []
    outcome = Outcome(row.outcome)
    return {
        "occurred_at": row.occurred_at,
        "action": row.action,
        "description": describe_access(row.action, outcome, perspective),
        "actor_name": name,
        "actor_roles": roles,
        "outcome": outcome,
    }


def _access_log_statement(
    actor: Actor, patient_id: uuid.UUID, query: TimeWindowQuery, before_id: int | None
) -> Select[Any]:
    """One page (and one more row, to know whether another page follows) of the entries about a patient,
    newest first, each with the acting person's name."""
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
        .where(AuditEvent.patient_id == patient_id)
        .order_by(AuditEvent.id.desc())
        .limit(query.limit + 1)
    )
    if query.occurred_from is not None:
        statement = statement.where(AuditEvent.occurred_at >= query.occurred_from)
    if query.occurred_to is not None:
        statement = statement.where(AuditEvent.occurred_at < query.occurred_to)
    if before_id is not None:
        statement = statement.where(AuditEvent.id < before_id)
    return statement


async def _access_log_page(session: AsyncSession, statement: Select[Any], limit: int) -> tuple[list[Any], str | None]:
    rows = list((await session.execute(statement)).all())
    next_cursor = encode_cursor(rows[limit - 1].id) if len(rows) > limit else None
    return rows[:limit], next_cursor


def _record_log_read(
    session: AsyncSession,
    audit_log: AuditLog,
    actor: Actor,
    action: str,
    patient_id: uuid.UUID | None,
    query: TimeWindowQuery,
    before_id: int | None,
) -> AuditEvent:
    return audit_log.record(
        session,
        actor,
        AuditEntry(
            action=action,
            outcome=Outcome.success,
            resource_type="access_log",
            patient_id=patient_id,
            details={"filters": query.filters_used(), "limit": query.limit, "continued": before_id is not None},
        ),
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
    _record_log_read(session, audit_log, actor, AUDIT_READ_OWN_ACTION, patient_id, query, before_id)
    await session.flush()
    if patient_id is None:
        return [], None
    statement = _access_log_statement(actor, patient_id, query, before_id).where(
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
    rows, next_cursor = await _access_log_page(session, statement, query.limit)
    return [
        AccessLogEntryRead(**_access_log_fields(row, actor.user_id, PATIENT_PERSPECTIVE)) for row in rows
    ], next_cursor


async def list_patient_access_log(
    session: AsyncSession, audit_log: AuditLog, actor: Actor, patient_id: uuid.UUID, query: PatientAccessLogQuery
) -> tuple[list[PatientAccessLogEntryRead], str | None]:
    """Who accessed one patient's record, for the organization's auditors: the same entries and wording as the
    patient's own log, worded for staff, with every actor (other patients' attempts and the patient's own
    reads of their log included) and each actor's id, so that ``/audit-events`` can follow one person.

    The read is audited as ``audit.read_patient_log`` under the patient (so the patient sees that the log was
    reviewed); like ``/audit-events``, a page leaves out its own read, which later reads show."""
    policy.ensure_can_read_audit_log(actor)
    before_id = decode_cursor(query.cursor) if query.cursor else None
    exists = await session.scalar(
        scoped_select(Patient, actor).with_only_columns(Patient.id).where(Patient.id == patient_id)
    )
    if exists is None:
        raise NotFound("Patient not found.", code="patient_not_found")
    own_entry = _record_log_read(session, audit_log, actor, AUDIT_READ_PATIENT_LOG_ACTION, patient_id, query, before_id)
    # Flushed first for its id: the page below leaves the read's own entry out.
    await session.flush()
    account_id = await session.scalar(
        scoped_select(User, actor).with_only_columns(User.id).where(User.patient_id == patient_id)
    )
    statement = _access_log_statement(actor, patient_id, query, before_id).where(AuditEvent.id != own_entry.id)
    rows, next_cursor = await _access_log_page(session, statement, query.limit)
    items = [
        PatientAccessLogEntryRead(**_access_log_fields(row, account_id, STAFF_PERSPECTIVE), actor_id=row.actor_id)
        for row in rows
    ]
    return items, next_cursor
