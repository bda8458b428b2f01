"""Anomaly rules over the audit stream: access to patients outside a facility's opening hours, and one person
opening many patients in a short time. Each finding is an alert for the organization's auditors.

The rules read entries in chain order, after the sealer has sealed them, keeping a cursor on the last chain
index evaluated. Entry ids would not do: a transaction that commits late leaves a lower id behind entries
already read. The chain only ever grows at its end, and an entry is sealed only once committed, so a cursor
on it never skips one. The cursor and the alerts of a batch commit together: a crash evaluates the batch
again rather than losing or doubling its alerts. One evaluator runs at a time across servers (an advisory
lock on PostgreSQL, the write transaction on SQLite).

Row-level security: audit entries, organizations and the cursor are read in the platform scope; facilities
and alerts are read and written in the scope of the organization they belong to.
"""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import structlog
from sqlalchemy import Select, and_, func, or_, select, text
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.access.models import Alert, AnomalyCursor
from sehat.core.audit import AuditEvent, AuditSeal, Outcome
from sehat.core.clock import utcnow
from sehat.core.db import Database, driver_connection
from sehat.core.tenant_scope import enter_organization, enter_platform_scope
from sehat.settings import Settings
from sehat.tenancy.models import Facility, Organization
from sehat.tenancy.service import is_open

log = structlog.get_logger(__name__)

# Actions that open or change a patient's data. The domains that hold patient data (issue 4 on) record these
# names, with the patient's id and, where the access happens at a facility, ``details["facility_id"]``.
PATIENT_READ = "patient.read"
PATIENT_UPDATE = "patient.update"
PATIENT_EXPORT = "patient.export"
RECORD_READ_CLINICAL = "record.read_clinical"
RECORD_WRITE = "record.write"
PATIENT_ACCESS_ACTIONS: frozenset[str] = frozenset(
    {PATIENT_READ, PATIENT_UPDATE, PATIENT_EXPORT, RECORD_READ_CLINICAL, RECORD_WRITE}
)

AFTER_HOURS_ACCESS = "after_hours_access"
BULK_PATIENT_ACCESS = "bulk_patient_access"

# After-hours work comes in sessions (a night shift opening one record after another): one alert stands for
# an actor's after-hours access at one facility for this long either side of it, rather than one per read.
AFTER_HOURS_QUIET = timedelta(hours=1)
# Alerts are stamped by the evaluator's clock and entries by the clock of the server that wrote them; a
# search for recent alerts reaches back this much further so a slow clock does not hide one.
_CLOCK_SKEW = timedelta(minutes=5)
_BATCH = 1_000
# Any constant will do, as long as it differs from the sealer's: it names the evaluators' one lock.
_EVALUATOR_LOCK_ID = 0x5E4A7A0D18


@dataclass(frozen=True, slots=True)
class Evaluation:
    """What a run did: chain entries evaluated (of every kind) and alerts raised."""

    entries: int = 0
    alerts: int = 0


@dataclass(frozen=True, slots=True)
class _Access:
    chain_index: int
    event_id: int
    occurred_at: datetime
    organization_id: uuid.UUID
    actor_id: uuid.UUID
    action: str
    patient_id: uuid.UUID | None
    facility_id: uuid.UUID | None


@dataclass(frozen=True, slots=True)
class _Facility:
    timezone: str
    opening_hours: list[dict[str, Any]] | None


async def evaluate_new_entries(database: Database, settings: Settings, *, batch_size: int = _BATCH) -> Evaluation:
    """Run the rules over every entry sealed since the last run, in batches, one transaction per batch.

    Returns at once, having done nothing, while another evaluator holds the lock."""
    entries = alerts = 0
    while True:
        async with database.unit_of_work() as session:
            await enter_platform_scope(session)
            if not await _take_evaluator_lock(session):
                return Evaluation(entries, alerts)
            batch = await _evaluate_batch(session, settings, batch_size)
        entries, alerts = entries + batch.entries, alerts + batch.alerts
        if batch.alerts:
            log.info("anomaly_alerts_raised", alerts=batch.alerts, entries=batch.entries)
        if batch.entries < batch_size:
            return Evaluation(entries, alerts)


async def _take_evaluator_lock(session: AsyncSession) -> bool:
    if session.bind.dialect.name != "postgresql":  # type: ignore[union-attr]
        return True  # SQLite: the write transaction (BEGIN IMMEDIATE) already excludes other evaluators
    return bool(await session.scalar(text("SELECT pg_try_advisory_xact_lock(:lock)"), {"lock": _EVALUATOR_LOCK_ID}))


async def _evaluate_batch(session: AsyncSession, settings: Settings, batch_size: int) -> Evaluation:
    cursor = await session.get(AnomalyCursor, 1)
    after = cursor.last_chain_index if cursor is not None else 0
    head = await session.scalar(select(func.max(AuditSeal.chain_index)))
    if head is None or head <= after:
        return Evaluation()
    # The chain is dense, so a batch is a range of chain indexes, and the entries that no rule looks at
    # (sign-ins, denials, ...) never leave the database.
    upto = min(head, after + batch_size)
    accesses = await _patient_accesses(session, after, upto)
    # An entry may name an organization that does not exist (nothing ties audit entries to organizations);
    # an alert for it could never be inserted and would stop the evaluator on this batch for good.
    organizations = {access.organization_id for access in accesses}
    if organizations:
        organizations = set(
            await session.scalars(select(Organization.id).where(Organization.id.in_(list(organizations))))
        )
    accesses = [access for access in accesses if access.organization_id in organizations]
    window = timedelta(minutes=settings.anomaly_bulk_window_minutes)
    history = await _bulk_history(session, accesses, upto, window, settings.anomaly_bulk_patients)

    raised = 0
    for organization_id in sorted(organizations):
        own = [access for access in accesses if access.organization_id == organization_id]
        await enter_organization(session, organization_id)
        alerts = await _after_hours_alerts(session, organization_id, own)
        alerts += await _bulk_alerts(session, organization_id, own, history, settings, window)
        session.add_all(alerts)
        # Inserted here, in the organization's scope: row-level security admits an alert only there.
        await session.flush()
        raised += len(alerts)
    if organizations:
        await enter_platform_scope(session)
    if cursor is None:
        session.add(AnomalyCursor(id=1, last_chain_index=upto, updated_at=utcnow()))
    else:
        cursor.last_chain_index, cursor.updated_at = upto, utcnow()
    await session.flush()
    return Evaluation(entries=upto - after, alerts=raised)


def _accesses_query() -> Select[Any]:
    """Successful patient accesses by signed-in people of an organization, with their chain index."""
    return (
        select(
            AuditSeal.chain_index,
            AuditEvent.id,
            AuditEvent.occurred_at,
            AuditEvent.organization_id,
            AuditEvent.actor_id,
            AuditEvent.action,
            AuditEvent.patient_id,
            AuditEvent.details,
        )
        .join(AuditEvent, AuditEvent.id == AuditSeal.event_id)
        .where(
            AuditEvent.action.in_(PATIENT_ACCESS_ACTIONS),
            # A refused access opened nothing; the refusal is on record as its own entry.
            AuditEvent.outcome == Outcome.success.value,
            AuditEvent.actor_type == "user",
            AuditEvent.actor_id.is_not(None),
            AuditEvent.organization_id.is_not(None),
        )
    )


def _access(row: Any) -> _Access:
    details = row.details if isinstance(row.details, dict) else {}
    return _Access(
        chain_index=row.chain_index,
        event_id=row.id,
        occurred_at=row.occurred_at,
        organization_id=row.organization_id,
        actor_id=row.actor_id,
        action=row.action,
        patient_id=row.patient_id,
        facility_id=_as_uuid(details.get("facility_id")),
    )


def _as_uuid(value: Any) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value is not None else None
    except ValueError:
        return None


# The PostgreSQL form of _accesses_query over one batch, read on the session's own connection: the evaluator runs
# beside the requests it watches, and ORM rows with their JSON decoding cost several times more per entry.
_PG_ACCESSES = (
    "SELECT s.chain_index, e.id, e.occurred_at, e.organization_id, e.actor_id, e.action, e.patient_id, "
    "e.details ->> 'facility_id' AS facility_id "
    "FROM audit_seals s JOIN audit_events e ON e.id = s.event_id "
    "WHERE s.chain_index > $1 AND s.chain_index <= $2 AND e.action = ANY($3::text[]) AND e.outcome = $4 "
    "AND e.actor_type = 'user' AND e.actor_id IS NOT NULL AND e.organization_id IS NOT NULL "
    "ORDER BY s.chain_index"
)


async def _patient_accesses(session: AsyncSession, after: int, upto: int) -> list[_Access]:
    if session.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
        connection = await session.run_sync(driver_connection)
        rows = await connection.fetch(_PG_ACCESSES, after, upto, sorted(PATIENT_ACCESS_ACTIONS), Outcome.success.value)
        return [
            _Access(
                chain_index=row["chain_index"],
                event_id=row["id"],
                occurred_at=row["occurred_at"],
                organization_id=row["organization_id"],
                actor_id=row["actor_id"],
                action=row["action"],
                patient_id=row["patient_id"],
                facility_id=_as_uuid(row["facility_id"]),
            )
            for row in rows
        ]
    statement = (
        _accesses_query()
        .where(AuditSeal.chain_index > after, AuditSeal.chain_index <= upto)
        .order_by(AuditSeal.chain_index)
    )
    return [_access(row) for row in await session.execute(statement)]


# --- after-hours access ---------------------------------------------------------------------------------------


async def _after_hours_alerts(
    session: AsyncSession, organization_id: uuid.UUID, accesses: Sequence[_Access]
) -> list[Alert]:
    at_facilities = [access for access in accesses if access.facility_id is not None]
    if not at_facilities:
        return []
    rows = await session.execute(
        select(Facility.id, Facility.timezone, Facility.opening_hours).where(
            # The organization is named as well as the id: a facility of another tenant is never consulted.
            Facility.organization_id == organization_id,
            Facility.id.in_(list({access.facility_id for access in at_facilities})),
        )
    )
    facilities = {row.id: _Facility(row.timezone, row.opening_hours) for row in rows}
    earliest = min(access.occurred_at for access in at_facilities)
    actors = {access.actor_id for access in at_facilities}
    recent: dict[tuple[uuid.UUID, str], list[datetime]] = defaultdict(list)
    for alert in await _recent_alerts(
        session, organization_id, AFTER_HOURS_ACCESS, actors, earliest - AFTER_HOURS_QUIET
    ):
        when = _alert_time(alert)
        if alert.actor_id is not None and when is not None:
            recent[(alert.actor_id, str(alert.details.get("facility_id")))].append(when)

    alerts = []
    for access in at_facilities:
        facility = facilities.get(access.facility_id) if access.facility_id is not None else None
        if facility is None or facility.opening_hours is None or _is_open(facility, access.occurred_at):
            continue
        key = (access.actor_id, str(access.facility_id))
        if _covered(access.occurred_at, recent[key], AFTER_HOURS_QUIET):
            continue
        recent[key].append(access.occurred_at)
        alerts.append(
            Alert(
                organization_id=organization_id,
                kind=AFTER_HOURS_ACCESS,
                severity="warning",
                actor_id=access.actor_id,
                patient_id=access.patient_id,
                audit_event_id=access.event_id,
                details={
                    "facility_id": str(access.facility_id),
                    "action": access.action,
                    "occurred_at": access.occurred_at.isoformat(),
                    "local_time": access.occurred_at.astimezone(ZoneInfo(facility.timezone)).isoformat(),
                    "chain_index": access.chain_index,
                },
                created_at=utcnow(),
            )
        )
    return alerts


def _is_open(facility: _Facility, instant: datetime) -> bool:
    try:
        return is_open(facility.opening_hours or [], facility.timezone, instant)
    except (KeyError, TypeError, ValueError):
        # Hours or a timezone that no longer parse (edited by hand): treat them as unknown rather than let one
        # facility stop the evaluator on this batch for good.
        log.warning("facility_opening_hours_unreadable")
        return True


# --- bulk patient access --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Seen:
    chain_index: int
    event_id: int
    occurred_at: datetime
    patient_id: uuid.UUID


async def _bulk_history(
    session: AsyncSession, accesses: Sequence[_Access], upto: int, window: timedelta, threshold: int
) -> dict[uuid.UUID, list[_Seen]]:
    """For each actor with patient accesses in the batch, every sealed patient access of theirs that shares a
    window with one of those: from a window before their first to a window after their last.

    Reaching forward matters for an entry sealed late: it may complete a window that ends at a later entry,
    evaluated in an earlier batch without it."""
    spans: dict[uuid.UUID, tuple[datetime, datetime]] = {}
    for access in accesses:
        if access.patient_id is None:
            continue
        low, high = spans.get(access.actor_id, (access.occurred_at, access.occurred_at))
        spans[access.actor_id] = (min(low, access.occurred_at), max(high, access.occurred_at))
    if not spans:
        return {}
    spans = await _near_threshold(session, spans, window, threshold)
    if not spans:
        return {}
    statement = (
        _accesses_query()
        .where(
            AuditSeal.chain_index <= upto,
            AuditEvent.patient_id.is_not(None),
            _within_spans(spans, window),
        )
        .order_by(AuditEvent.occurred_at, AuditSeal.chain_index)
    )
    history: dict[uuid.UUID, list[_Seen]] = defaultdict(list)
    for row in await session.execute(statement):
        history[row.actor_id].append(_Seen(row.chain_index, row.id, row.occurred_at, row.patient_id))
    return history


def _within_spans(spans: dict[uuid.UUID, tuple[datetime, datetime]], window: timedelta) -> Any:
    """Each actor's entries from a window before their first access in the batch to a window after their last."""
    return or_(
        *(
            and_(
                AuditEvent.actor_id == actor_id,
                AuditEvent.occurred_at > low - window,
                AuditEvent.occurred_at < high + window,
            )
            for actor_id, (low, high) in spans.items()
        )
    )


async def _near_threshold(
    session: AsyncSession, spans: dict[uuid.UUID, tuple[datetime, datetime]], window: timedelta, threshold: int
) -> dict[uuid.UUID, tuple[datetime, datetime]]:
    """The actors who opened more than ``threshold`` distinct patients over their whole span (sealed entries or
    not): only they can have a crowded window. Nearly everyone is settled by this one aggregate, without
    loading their accesses; a busy integration may read thousands of times a minute about a few patients."""
    rows = await session.execute(
        select(AuditEvent.actor_id, func.count(func.distinct(AuditEvent.patient_id)))
        .where(
            AuditEvent.action.in_(PATIENT_ACCESS_ACTIONS),
            AuditEvent.outcome == Outcome.success.value,
            AuditEvent.patient_id.is_not(None),
            _within_spans(spans, window),
        )
        .group_by(AuditEvent.actor_id)
    )
    crowded = {actor_id for actor_id, patients in rows if patients > threshold}
    return {actor_id: span for actor_id, span in spans.items() if actor_id in crowded}


def _crowded_windows(seen: Sequence[_Seen], window: timedelta, threshold: int) -> Iterator[tuple[_Seen, int, datetime]]:
    """Each access (in time order) at which the window ending there, ``(t - window, t]``, holds more than
    ``threshold`` distinct patients: the access, the number of patients and the window's first access time."""
    patients: Counter[uuid.UUID] = Counter()
    inside: deque[_Seen] = deque()
    for access in seen:
        inside.append(access)
        patients[access.patient_id] += 1
        while inside[0].occurred_at <= access.occurred_at - window:
            gone = inside.popleft()
            patients[gone.patient_id] -= 1
            if not patients[gone.patient_id]:
                del patients[gone.patient_id]
        if len(patients) > threshold:
            yield access, len(patients), inside[0].occurred_at


async def _bulk_alerts(
    session: AsyncSession,
    organization_id: uuid.UUID,
    accesses: Sequence[_Access],
    history: dict[uuid.UUID, list[_Seen]],
    settings: Settings,
    window: timedelta,
) -> list[Alert]:
    first_new: dict[uuid.UUID, datetime] = {}
    for access in accesses:
        if access.patient_id is not None:
            first_new[access.actor_id] = min(first_new.get(access.actor_id, access.occurred_at), access.occurred_at)
    if not first_new:
        return []
    recent: dict[uuid.UUID, list[datetime]] = defaultdict(list)
    for alert in await _recent_alerts(
        session, organization_id, BULK_PATIENT_ACCESS, set(first_new), min(first_new.values()) - window
    ):
        when = _alert_time(alert)
        if alert.actor_id is not None and when is not None:
            recent[alert.actor_id].append(when)

    alerts = []
    for actor_id in sorted(first_new):
        # Windows wholly before this batch's first access were evaluated with everything they hold; later ones
        # are evaluated (again, for those an earlier batch saw): one alert per window keeps that idempotent.
        for access, patients, window_start in _crowded_windows(
            [seen for seen in history.get(actor_id, []) if seen.occurred_at >= first_new[actor_id] - window],
            window,
            settings.anomaly_bulk_patients,
        ):
            if access.occurred_at < first_new[actor_id] or _covered(access.occurred_at, recent[actor_id], window):
                continue
            recent[actor_id].append(access.occurred_at)
            alerts.append(
                Alert(
                    organization_id=organization_id,
                    kind=BULK_PATIENT_ACCESS,
                    severity="critical",
                    actor_id=actor_id,
                    patient_id=None,
                    audit_event_id=access.event_id,
                    details={
                        "distinct_patients": patients,
                        "threshold": settings.anomaly_bulk_patients,
                        "window_minutes": settings.anomaly_bulk_window_minutes,
                        "window_start": window_start.isoformat(),
                        "occurred_at": access.occurred_at.isoformat(),
                        "chain_index": access.chain_index,
                    },
                    created_at=utcnow(),
                )
            )
    return alerts


# --- shared ---------------------------------------------------------------------------------------------------


def _covered(instant: datetime, alerted: Iterable[datetime], span: timedelta) -> bool:
    """Whether an alert already stands for this instant: one raised for an access less than ``span`` away,
    before or after it (an entry sealed late may precede the access that was alerted)."""
    return any(abs(instant - when) < span for when in alerted)


async def _recent_alerts(
    session: AsyncSession, organization_id: uuid.UUID, kind: str, actor_ids: set[uuid.UUID], since: datetime
) -> Sequence[Alert]:
    """Alerts of one kind for these actors that may stand for accesses from ``since`` on. An alert is created
    after the access it reports, so its creation time bounds the search (with a margin for clock skew)."""
    statement = select(Alert).where(
        Alert.organization_id == organization_id,
        Alert.kind == kind,
        Alert.actor_id.in_(list(actor_ids)),
        Alert.created_at >= since - _CLOCK_SKEW,
    )
    return (await session.scalars(statement)).all()


def _alert_time(alert: Alert) -> datetime | None:
    """When the access an alert reports happened (recorded in its details)."""
    try:
        return datetime.fromisoformat(str(alert.details["occurred_at"]))
    except (KeyError, TypeError, ValueError):
        return None
