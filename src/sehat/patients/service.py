"""The patient registry: register, read, correct, list, search and merge patients, every identifying field
encrypted under the patient's own data key. Only the unit of work commits.

Every access to a patient is audited in the same transaction (``patient.read`` per patient returned, with
the registering facility, so the anomaly rules can judge it). A ciphertext that does not open is never shown
as data: the read fails with a generic 500, and an alert and an audit entry record it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, NoReturn

import orjson
import structlog
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from sehat.access.anomaly import PATIENT_READ, PATIENT_UPDATE
from sehat.access.break_glass import has_emergency_access
from sehat.access.models import Alert
from sehat.core.actor import Actor, Audience
from sehat.core.audit import AuditEntry, AuditLog, Outcome
from sehat.core.blind_index import (
    IndexKind,
    blind_index,
    normalize_email,
    normalize_mrn,
    normalize_name_and_birth_date,
    normalize_national_id,
    normalize_phone,
)
from sehat.core.clock import utcnow
from sehat.core.crypto import DecryptionError, FieldCipher
from sehat.core.db import driver_connection, issue_counter_value
from sehat.core.errors import Conflict, InternalError, InvalidInput, NotFound, PreconditionFailed, Problem
from sehat.core.pagination import paginate
from sehat.core.scoping import scoped_select
from sehat.identity.models import User
from sehat.patients import policy
from sehat.patients.models import (
    PATIENTS_TABLE,
    MrnCounter,
    Patient,
    PatientKey,
    PatientSearchEntry,
    PatientStatus,
)
from sehat.patients.schemas import (
    PatientCreate,
    PatientMerge,
    PatientRead,
    PatientSearch,
    PatientSummary,
    PatientUpdate,
)
from sehat.patients.vault import PatientVault
from sehat.tenancy import service as tenancy_service
from sehat.tenancy.models import Facility

log = structlog.get_logger(__name__)

PATIENT_CREATE = "patient.create"
PATIENT_SEARCH = "patient.search"
PATIENT_MERGE = "patient.merge"
UNREADABLE_ALERT = "patient_data_unreadable"

_JSON_FIELDS = frozenset({"address", "national_id", "emergency_contact"})
_REQUIRED_FIELDS = frozenset({"given_name", "birth_date", "sex"})
_INDEXED_BY = {
    IndexKind.PHONE: ("phone",),
    IndexKind.EMAIL: ("email",),
    IndexKind.NATIONAL_ID: ("national_id",),
    IndexKind.NAME_DOB: ("given_name", "family_name", "birth_date"),
}
_SEARCH_LIMIT = 50


@dataclass
class PatientView:
    """A patient row with the fields this unit of work decrypted, as Python values (absent: not decrypted)."""

    patient: Patient
    values: dict[str, Any] = field(default_factory=dict)
    via_emergency_access: bool = False


def format_mrn(number: int) -> str:
    return f"{number:08d}"


# --- encoding --------------------------------------------------------------------------------------------


def _plain(name: str, value: Any) -> bytes:
    if name in _JSON_FIELDS:
        return orjson.dumps(value)
    if isinstance(value, date):
        return value.isoformat().encode()
    return str(value).encode()


def _from_plain(name: str, raw: bytes) -> Any:
    if name in _JSON_FIELDS:
        return orjson.loads(raw)
    if name == "birth_date":
        return date.fromisoformat(raw.decode())
    return raw.decode()


def encrypt_fields(cipher: FieldCipher, patient: Patient, values: dict[str, Any]) -> None:
    for name, value in values.items():
        ciphertext = None
        if value is not None:
            ciphertext = cipher.encrypt(
                _plain(name, value),
                organization_id=patient.organization_id,
                table=PATIENTS_TABLE,
                column=name,
                row_id=patient.id,
            )
        setattr(patient, name, ciphertext)


def _decrypt(cipher: FieldCipher, patient: Patient, names: Iterable[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for name in names:
        ciphertext = getattr(patient, name)
        if ciphertext is None:
            values[name] = None
            continue
        raw = cipher.decrypt(
            ciphertext, organization_id=patient.organization_id, table=PATIENTS_TABLE, column=name, row_id=patient.id
        )
        values[name] = _from_plain(name, raw)
    return values


def _field_errors(errors: list[tuple[str, str]]) -> InvalidInput:
    return InvalidInput(
        "The request has invalid fields.",
        extra={"errors": [{"field": name, "message": message, "type": "value_error"} for name, message in errors]},
    )


def normalized_fields(vault: PatientVault, values: dict[str, Any]) -> dict[str, Any]:
    """Phone numbers in E.164, e-mail lower-cased, national ids without spaces or dashes. Errors name the
    field and never repeat the value."""
    errors: list[tuple[str, str]] = []
    result = dict(values)
    if result.get("phone") is not None:
        try:
            result["phone"] = normalize_phone(result["phone"], vault.phone_region)
        except ValueError as exc:
            errors.append(("phone", str(exc)))
    contact = result.get("emergency_contact")
    if contact is not None:
        try:
            result["emergency_contact"] = {**contact, "phone": normalize_phone(contact["phone"], vault.phone_region)}
        except ValueError as exc:
            errors.append(("emergency_contact.phone", str(exc)))
    if result.get("email") is not None:
        try:
            result["email"] = normalize_email(result["email"])
        except ValueError as exc:
            errors.append(("email", str(exc)))
    national_id = result.get("national_id")
    if national_id is not None:
        try:
            kind, _, cleaned = normalize_national_id(str(national_id["kind"]), national_id["value"]).partition(":")
            result["national_id"] = {"kind": kind, "value": cleaned}
        except ValueError as exc:
            errors.append(("national_id.value", str(exc)))
    for name in ("sex",):
        if result.get(name) is not None:
            result[name] = str(result[name])
    if errors:
        raise _field_errors(errors)
    return result


def index_values(values: dict[str, Any], kinds: Iterable[IndexKind]) -> list[tuple[IndexKind, str]]:
    """The normalized value each blind index of ``kinds`` is computed over, for the kinds with a value."""
    indexed: list[tuple[IndexKind, str]] = []
    for kind in kinds:
        if kind is IndexKind.MRN:
            indexed.append((kind, normalize_mrn(values["mrn"])))
        elif kind is IndexKind.NAME_DOB:
            full_name = " ".join(filter(None, (values.get("given_name"), values.get("family_name"))))
            indexed.append((kind, normalize_name_and_birth_date(full_name, "", values["birth_date"])))
        elif kind is IndexKind.NATIONAL_ID:
            if values.get("national_id") is not None:
                national_id = values["national_id"]
                indexed.append((kind, normalize_national_id(national_id["kind"], national_id["value"])))
        elif values.get(kind.value) is not None:
            indexed.append((kind, values[kind.value]))
    return indexed


def _search_entries(
    organization_id: uuid.UUID, patient_id: uuid.UUID, key: bytes, indexed: Sequence[tuple[IndexKind, str]]
) -> list[PatientSearchEntry]:
    return [
        PatientSearchEntry(
            organization_id=organization_id,
            kind=kind.value,
            digest=blind_index(key, kind, value),
            patient_id=patient_id,
        )
        for kind, value in indexed
    ]


# --- auditing and failures ---------------------------------------------------------------------------------


def audit_access(
    audit_log: AuditLog,
    session: AsyncSession,
    actor: Actor,
    action: str,
    patient: Patient,
    outcome: Outcome = Outcome.success,
    **details: Any,
) -> None:
    audit_log.record(session, actor, access_entry(action, patient, outcome, **details))


def access_entry(action: str, patient: Patient, outcome: Outcome = Outcome.success, **details: Any) -> AuditEntry:
    """An access to one patient, with the registering facility the anomaly rules judge it by."""
    return AuditEntry(
        action=action,
        outcome=outcome,
        resource_type="patient",
        resource_id=str(patient.id),
        patient_id=patient.id,
        details={"facility_id": str(patient.registering_facility_id), **details},
    )


async def fail_unreadable(session: AsyncSession, audit_log: AuditLog, actor: Actor, patient: Patient) -> NoReturn:
    """A ciphertext or wrapped key that does not open: tampering, a wrong key, or a bug. Never garbage data,
    never a partial record; the alert and the failed access are kept although the request fails."""
    log.error("patient_data_unreadable", patient_id=str(patient.id))
    assert actor.organization_id is not None
    session.add(
        Alert(
            organization_id=actor.organization_id,
            kind=UNREADABLE_ALERT,
            severity="critical",
            actor_id=actor.user_id,
            patient_id=patient.id,
            details={"reason": "decryption_failed"},
            created_at=utcnow(),
        )
    )
    audit_access(audit_log, session, actor, PATIENT_READ, patient, Outcome.failure, reason="decryption_failed")
    raise InternalError("Something went wrong on our side; it has been logged.", keep_changes=True)


# --- loading and access ------------------------------------------------------------------------------------


async def load_patient(session: AsyncSession, actor: Actor, patient_id: uuid.UUID) -> tuple[Patient, bytes | None]:
    row = (
        await session.execute(
            scoped_select(Patient, actor)
            .add_columns(PatientKey.wrapped_key)
            .outerjoin(PatientKey, PatientKey.patient_id == Patient.id)
            .where(Patient.id == patient_id)
        )
    ).first()
    if row is None:
        raise NotFound("Patient not found.", code="patient_not_found")
    return row[0], row[1]


def patient_cipher(vault: PatientVault, patient: Patient, wrapped: bytes | None) -> FieldCipher | None:
    """The patient's cipher, or None for an erased patient (no key left to open). Raises DecryptionError."""
    if wrapped is None:
        return None
    return vault.open_patient_key(patient.organization_id, patient.id, wrapped)


async def own_patient_id(session: AsyncSession, actor: Actor) -> uuid.UUID:
    """The record a patient account is linked to; a patient not yet matched to a record has none."""
    patient_id = await session.scalar(
        scoped_select(User, actor).with_only_columns(User.patient_id).where(User.id == actor.user_id)
    )
    if patient_id is None:
        raise NotFound("Your account is not linked to a patient record yet.", code="patient_not_linked")
    return patient_id


async def ensure_may_open(session: AsyncSession, actor: Actor, patient: Patient) -> bool:
    """Whether the caller may open this patient; returns True when only break-glass lets them."""
    if actor.audience is Audience.patient:
        if await own_patient_id(session, actor) != patient.id:
            raise NotFound("Patient not found.", code="patient_not_found")
        return False
    if policy.reads_every_facility(actor):
        return False
    if await tenancy_service.works_at(session, actor, patient.registering_facility_id):
        return False
    if await has_emergency_access(session, actor, patient.id):
        return True
    raise Problem(
        "This patient is registered outside your facilities; use emergency access if care requires it.",
        status=403,
        title="Forbidden",
        code="outside_your_facilities",
    )


async def open_fields(
    session: AsyncSession,
    vault: PatientVault,
    audit_log: AuditLog,
    actor: Actor,
    patient: Patient,
    wrapped: bytes | None,
    names: Iterable[str],
) -> dict[str, Any]:
    try:
        cipher = patient_cipher(vault, patient, wrapped)
        if cipher is None:
            return {}
        return _decrypt(cipher, patient, names)
    except DecryptionError:
        await fail_unreadable(session, audit_log, actor, patient)


# --- the operations ----------------------------------------------------------------------------------------


async def _ensure_facility(session: AsyncSession, actor: Actor, facility_id: uuid.UUID) -> None:
    found = await session.scalar(
        scoped_select(Facility, actor).with_only_columns(Facility.id).where(Facility.id == facility_id, Facility.active)
    )
    if found is None:
        # As for departments: a facility the caller cannot see is absent, whoever else it may belong to.
        raise NotFound("Facility not found.", code="facility_not_found")


async def create_patient(
    session: AsyncSession, vault: PatientVault, audit_log: AuditLog, actor: Actor, request: PatientCreate
) -> PatientView:
    policy.ensure_can_write(actor)
    organization_id = actor.organization_id
    assert organization_id is not None
    await _ensure_facility(session, actor, request.registering_facility_id)
    values = normalized_fields(vault, request.model_dump(mode="python", exclude={"registering_facility_id"}))
    values["mrn"] = format_mrn(
        await issue_counter_value(session, MrnCounter, {"organization_id": organization_id}, "last_value")
    )
    patient_id = uuid.uuid4()
    cipher, key_row = vault.new_patient_key(organization_id, patient_id)
    now = utcnow()
    patient = Patient(
        id=patient_id,
        organization_id=organization_id,
        registering_facility_id=request.registering_facility_id,
        status=PatientStatus.active.value,
        created_at=now,
        updated_at=now,
    )
    encrypt_fields(cipher, patient, values)
    index_key = await vault.index_key(session, organization_id)
    # One flush for all four tables: the unit of work orders the INSERTs by their foreign keys.
    session.add(patient)
    session.add(key_row)
    session.add_all(_search_entries(organization_id, patient_id, index_key, index_values(values, IndexKind)))
    audit_access(audit_log, session, actor, PATIENT_CREATE, patient)
    await session.flush()
    return PatientView(patient, values)


async def get_patient(
    session: AsyncSession, vault: PatientVault, audit_log: AuditLog, actor: Actor, patient_id: uuid.UUID
) -> PatientView:
    if actor.audience is not Audience.patient:
        policy.ensure_can_read(actor)
    patient, wrapped = await load_patient(session, actor, patient_id)
    emergency = await ensure_may_open(session, actor, patient)
    values = await open_fields(session, vault, audit_log, actor, patient, wrapped, policy.visible_fields(actor))
    audit_access(audit_log, session, actor, PATIENT_READ, patient, **({"break_glass": True} if emergency else {}))
    return PatientView(patient, values, via_emergency_access=emergency)


async def get_own_patient(session: AsyncSession, vault: PatientVault, audit_log: AuditLog, actor: Actor) -> PatientView:
    policy.ensure_is_own_patient(actor)
    return await get_patient(session, vault, audit_log, actor, await own_patient_id(session, actor))


async def update_patient(
    session: AsyncSession,
    vault: PatientVault,
    audit_log: AuditLog,
    actor: Actor,
    patient_id: uuid.UUID,
    request: PatientUpdate,
    *,
    expected_version: int | None,
    allowed_fields: frozenset[str] | None = None,
) -> PatientView:
    """Change some fields of a patient, if the caller read the current version (``If-Match``)."""
    if allowed_fields is None:
        policy.ensure_can_write(actor)
    else:
        policy.ensure_is_own_patient(actor)
    # Whether the patient is there for the caller is answered first, so nothing below tells a stranger more.
    patient, wrapped = await load_patient(session, actor, patient_id)
    await ensure_may_open(session, actor, patient)
    if expected_version is None:
        raise Problem(
            "Send the version you read as If-Match, so a change made meanwhile is not overwritten.",
            status=428,
            title="Precondition required",
            code="if_match_required",
        )
    changes = request.model_dump(mode="python", exclude_unset=True)
    refused = sorted(set(changes) - allowed_fields) if allowed_fields is not None else []
    if refused:
        raise _field_errors([(name, "you may not change this field; ask the front desk") for name in refused])
    cleared = sorted(name for name in _REQUIRED_FIELDS | {"status"} if name in changes and changes[name] is None)
    if cleared:
        raise _field_errors([(name, "this field is required and cannot be cleared") for name in cleared])
    if patient.status in (PatientStatus.merged, PatientStatus.erased):
        raise Conflict(f"A {patient.status} patient cannot be changed.", code=f"patient_{patient.status}")
    if patient.version != expected_version:
        raise PreconditionFailed("The patient changed since you read it; read it again.", code="version_mismatch")
    status = changes.pop("status", None)
    values = normalized_fields(vault, changes)
    touched = {kind for kind, names in _INDEXED_BY.items() if set(names) & set(values)}
    # Index values may combine changed and unchanged fields (name and birth date): read what is needed.
    needed = set(policy.visible_fields(actor)) | {name for kind in touched for name in _INDEXED_BY[kind]}
    try:
        cipher = patient_cipher(vault, patient, wrapped)
        if cipher is None:
            raise Conflict("An erased patient cannot be changed.", code="patient_erased")
        current = _decrypt(cipher, patient, needed - set(values))
    except DecryptionError:
        await fail_unreadable(session, audit_log, actor, patient)
    encrypt_fields(cipher, patient, values)
    if status is not None:
        patient.status = status
    patient.updated_at = utcnow()
    try:
        # Now, before anything else is written: the UPDATE carries "WHERE version = <read>", and a concurrent
        # writer that got there first makes it match no row.
        await session.flush()
    except StaleDataError:
        raise PreconditionFailed(
            "The patient changed since you read it; read it again.", code="version_mismatch"
        ) from None
    merged = {**current, **values}
    if touched:
        await session.execute(
            delete(PatientSearchEntry).where(
                PatientSearchEntry.organization_id == patient.organization_id,
                PatientSearchEntry.patient_id == patient.id,
                PatientSearchEntry.kind.in_([kind.value for kind in touched]),
            )
        )
        index_key = await vault.index_key(session, patient.organization_id)
        session.add_all(_search_entries(patient.organization_id, patient.id, index_key, index_values(merged, touched)))
    audit_access(
        audit_log, session, actor, PATIENT_UPDATE, patient, fields=sorted([*values, *(["status"] if status else [])])
    )
    await session.flush()
    return PatientView(patient, {name: merged[name] for name in policy.visible_fields(actor) if name in merged})


async def search_patients(
    session: AsyncSession, vault: PatientVault, audit_log: AuditLog, actor: Actor, query: PatientSearch
) -> list[PatientView]:
    """Exact match on one blind index: one index lookup, and only the patients found are decrypted."""
    policy.ensure_can_read(actor)
    organization_id = actor.organization_id
    assert organization_id is not None
    kind, value = _search_key(vault, query)
    digest = blind_index(await vault.index_key(session, organization_id), kind, value)
    if session.bind.dialect.name == "postgresql":  # type: ignore[union-attr]
        rows = await _search_rows_postgresql(session, organization_id, kind, digest)
    else:
        rows = (
            await session.execute(
                scoped_select(Patient, actor)
                .add_columns(PatientKey.wrapped_key)
                .join(PatientSearchEntry, PatientSearchEntry.patient_id == Patient.id)
                .outerjoin(PatientKey, PatientKey.patient_id == Patient.id)
                .where(
                    PatientSearchEntry.organization_id == organization_id,
                    PatientSearchEntry.kind == kind.value,
                    PatientSearchEntry.digest == digest,
                )
                .order_by(Patient.created_at, Patient.id)
                .limit(_SEARCH_LIMIT)
            )
        ).all()
    views = [
        PatientView(
            patient, await open_fields(session, vault, audit_log, actor, patient, wrapped, policy.SUMMARY_FIELDS)
        )
        for patient, wrapped in rows
    ]
    entries = [access_entry(PATIENT_READ, view.patient, via="search") for view in views] or [
        AuditEntry(action=PATIENT_SEARCH, outcome=Outcome.success, details={"kind": kind.value, "hits": 0})
    ]
    await audit_log.record_many(session, actor, entries)
    return views


# The search a front desk runs for every walk-in: on the request's own asyncpg connection, without the ORM.
# The organization is named explicitly and row-level security applies as well.
_PG_SEARCH = """
SELECT p.id, p.organization_id, p.registering_facility_id, p.status, p.merged_into_id, p.version,
       p.legal_hold_since, p.erased_at, p.created_at, p.updated_at,
       p.mrn, p.given_name, p.family_name, p.birth_date, k.wrapped_key
FROM patient_search_index s
JOIN patients p ON p.organization_id = s.organization_id AND p.id = s.patient_id
LEFT JOIN patient_keys k ON k.patient_id = p.id
WHERE s.organization_id = $1 AND s.kind = $2 AND s.digest = $3
ORDER BY p.created_at, p.id
LIMIT $4
"""
_SEARCHED_COLUMNS = (
    "id",
    "organization_id",
    "registering_facility_id",
    "status",
    "merged_into_id",
    "version",
    "legal_hold_since",
    "erased_at",
    "created_at",
    "updated_at",
    "mrn",
    "given_name",
    "family_name",
    "birth_date",
)


async def _search_rows_postgresql(
    session: AsyncSession, organization_id: uuid.UUID, kind: IndexKind, digest: bytes
) -> list[tuple[Patient, bytes | None]]:
    driver = await session.run_sync(driver_connection)
    found = await driver.fetch(_PG_SEARCH, organization_id, kind.value, digest, _SEARCH_LIMIT)
    # Transient objects, never added to the session: read-only carriers for decryption and presentation.
    # asyncpg's UUIDs are a subclass; the associated data is built from str(), identical either way.
    return [(Patient(**{name: row[name] for name in _SEARCHED_COLUMNS}), row["wrapped_key"]) for row in found]


def _search_key(vault: PatientVault, query: PatientSearch) -> tuple[IndexKind, str]:
    given = {name for name, value in query.model_dump().items() if value is not None}
    keys = {
        frozenset({"phone"}): IndexKind.PHONE,
        frozenset({"email"}): IndexKind.EMAIL,
        frozenset({"mrn"}): IndexKind.MRN,
        frozenset({"national_id", "national_id_kind"}): IndexKind.NATIONAL_ID,
        frozenset({"name", "birth_date"}): IndexKind.NAME_DOB,
    }
    kind = keys.get(frozenset(given))
    if kind is None:
        raise InvalidInput(
            "Search by exactly one of: phone, email, mrn, national_id with national_id_kind, name with birth_date.",
            code="invalid_search",
        )
    try:
        if kind is IndexKind.PHONE:
            return kind, normalize_phone(query.phone or "", vault.phone_region)
        if kind is IndexKind.EMAIL:
            return kind, normalize_email(query.email or "")
        if kind is IndexKind.MRN:
            return kind, normalize_mrn(query.mrn or "")
        if kind is IndexKind.NATIONAL_ID:
            assert query.national_id_kind is not None
            return kind, normalize_national_id(query.national_id_kind.value, query.national_id or "")
        return kind, normalize_name_and_birth_date(query.name or "", "", query.birth_date or date.min)
    except ValueError as exc:
        # Named as the query parameters they came in, like the framework names its own query errors.
        field_name = {IndexKind.NAME_DOB: "name", IndexKind.NATIONAL_ID: "national_id"}.get(kind, kind.value)
        raise _field_errors([(f"query.{field_name}", str(exc))]) from None


async def list_patients(
    session: AsyncSession,
    vault: PatientVault,
    audit_log: AuditLog,
    actor: Actor,
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[PatientView], str | None]:
    """Newest registrations last, summaries only; staff limited to their facilities see only theirs."""
    policy.ensure_can_read(actor)
    statement = scoped_select(Patient, actor)
    if not policy.reads_every_facility(actor):
        statement = statement.where(Patient.registering_facility_id.in_(tenancy_service.facilities_worked_at(actor)))
    patients, next_cursor = await paginate(session, statement, Patient, limit=limit, cursor=cursor)
    keys: dict[uuid.UUID, bytes] = {}
    if patients:
        keys = dict(
            (
                await session.execute(
                    select(PatientKey.patient_id, PatientKey.wrapped_key).where(
                        PatientKey.organization_id == actor.organization_id,
                        PatientKey.patient_id.in_([patient.id for patient in patients]),
                    )
                )
            ).all()
        )
    views = []
    for patient in patients:
        values = await open_fields(
            session, vault, audit_log, actor, patient, keys.get(patient.id), policy.SUMMARY_FIELDS
        )
        views.append(PatientView(patient, values))
        audit_access(audit_log, session, actor, PATIENT_READ, patient, via="list")
    return views, next_cursor


async def merge_patients(
    session: AsyncSession, audit_log: AuditLog, actor: Actor, duplicate_id: uuid.UUID, request: PatientMerge
) -> Patient:
    """Fold a duplicate registration into the surviving record. Nothing is deleted: the duplicate keeps its
    data and history and points to the survivor; a patient account linked to it moves to the survivor if the
    survivor has none."""
    policy.ensure_can_merge(actor)
    duplicate, _ = await load_patient(session, actor, duplicate_id)
    if duplicate_id == request.survivor_id:
        raise _field_errors([("survivor_id", "a patient cannot be merged into itself")])
    try:
        survivor, _ = await load_patient(session, actor, request.survivor_id)
    except NotFound:
        raise _field_errors([("survivor_id", "no patient with this id")]) from None
    for patient in (duplicate, survivor):
        if patient.status in (PatientStatus.merged, PatientStatus.erased):
            raise Conflict(f"A {patient.status} patient cannot take part in a merge.", code=f"patient_{patient.status}")
    duplicate.status = PatientStatus.merged.value
    duplicate.merged_into_id = survivor.id
    duplicate.updated_at = utcnow()
    linked = await session.scalar(
        scoped_select(User, actor).with_only_columns(User.id).where(User.patient_id == survivor.id)
    )
    if linked is None:
        await session.execute(
            update(User)
            .where(User.organization_id == actor.organization_id, User.patient_id == duplicate.id)
            .values(patient_id=survivor.id)
        )
    audit_access(audit_log, session, actor, PATIENT_MERGE, duplicate, survivor_id=str(survivor.id))
    audit_access(audit_log, session, actor, PATIENT_MERGE, survivor, duplicate_id=str(duplicate.id))
    await session.flush()
    return duplicate


# --- what a caller sees ------------------------------------------------------------------------------------


def present(actor: Actor, view: PatientView) -> PatientRead:
    """The patient as the caller's role may see it: fields outside the role are left out (absent, not null),
    and the national id is cut to its last four characters for roles that do not need it whole."""
    visible = {name: view.values[name] for name in policy.visible_fields(actor) if name in view.values}
    return _patient_read(view.patient, visible, full_national_id=policy.sees_full_national_id(actor))


def present_in_full(patient: Patient, values: dict[str, Any]) -> PatientRead:
    """Every decrypted field, unmasked: the export is the patient's own copy."""
    return _patient_read(patient, values, full_national_id=True)


def _patient_read(patient: Patient, values: dict[str, Any], *, full_national_id: bool) -> PatientRead:
    shown: dict[str, Any] = {
        "id": patient.id,
        "status": patient.status,
        "version": patient.version,
        "registering_facility_id": patient.registering_facility_id,
        "merged_into_id": patient.merged_into_id,
        "created_at": patient.created_at,
        "updated_at": patient.updated_at,
        "legal_hold": patient.legal_hold_since is not None,
        "erased_at": patient.erased_at,
        **values,
    }
    national_id = values.get("national_id")
    if national_id is not None:
        value = national_id["value"]
        shown["national_id"] = {"kind": national_id["kind"], "last4": value[-4:]}
        if full_national_id:
            shown["national_id"]["value"] = value
    return PatientRead(**shown)


def summarize(view: PatientView) -> PatientSummary:
    patient = view.patient
    return PatientSummary(
        id=patient.id,
        status=patient.status,
        registering_facility_id=patient.registering_facility_id,
        merged_into_id=patient.merged_into_id,
        **{name: view.values.get(name) for name in policy.SUMMARY_FIELDS},
    )


# --- for patient accounts (patients/accounts.py) -----------------------------------------------------------


def normalize_contact(vault: PatientVault, values: dict[str, Any]) -> dict[str, Any]:
    """Contact details as the registry stores them (phone in E.164, e-mail lower-cased); 422 naming the field."""
    return normalized_fields(vault, values)


async def load_for_account(session: AsyncSession, actor: Actor, patient_id: uuid.UUID) -> Patient:
    """A patient the caller may give an online account to: one they may open without emergency access
    (break-glass is for care, not for handing out accounts), neither merged nor erased."""
    patient, _ = await load_patient(session, actor, patient_id)
    if await ensure_may_open(session, actor, patient):
        raise Problem(
            "This patient is registered outside your facilities.",
            status=403,
            title="Forbidden",
            code="outside_your_facilities",
        )
    if patient.status in (PatientStatus.merged, PatientStatus.erased):
        raise Conflict(f"A {patient.status} patient cannot have an account.", code=f"patient_{patient.status}")
    return patient


@dataclass
class Candidate:
    """A patient whose blind indexes match details someone typed, and by which of them."""

    view: PatientView
    matched_on: list[IndexKind]


_CANDIDATE_KINDS = (IndexKind.PHONE, IndexKind.NAME_DOB)


async def find_candidates(
    session: AsyncSession,
    vault: PatientVault,
    audit_log: AuditLog,
    actor: Actor,
    wanted: Sequence[dict[str, Any]],
    *,
    via: str,
) -> list[list[Candidate]]:
    """For each set of typed details (normalized ``phone``, ``given_name``, ``family_name``, ``birth_date``), the
    patients whose phone, or name and birth date, match exactly. One index lookup serves all of them; only the
    patients found are decrypted (summaries), each audited once as a read. Merged records are left out: nothing
    may link to them. The caller has checked that the actor may see candidates."""
    organization_id = actor.organization_id
    assert organization_id is not None
    key = await vault.index_key(session, organization_id)
    wanted_entries: list[set[tuple[str, bytes]]] = []
    for values in wanted:
        entries: set[tuple[str, bytes]] = set()
        for kind in _CANDIDATE_KINDS:
            try:
                indexed = index_values(values, (kind,))
            except (KeyError, ValueError):
                continue  # a detail missing or not indexable finds nobody by that key
            entries.update((kind.value, blind_index(key, kind, value)) for _, value in indexed)
        wanted_entries.append(entries)
    every_digest = {digest for entries in wanted_entries for _, digest in entries}
    if not every_digest:
        return [[] for _ in wanted]
    rows = (
        await session.execute(
            scoped_select(Patient, actor)
            .add_columns(PatientKey.wrapped_key, PatientSearchEntry.kind, PatientSearchEntry.digest)
            .join(PatientSearchEntry, PatientSearchEntry.patient_id == Patient.id)
            .outerjoin(PatientKey, PatientKey.patient_id == Patient.id)
            .where(
                PatientSearchEntry.organization_id == organization_id,
                PatientSearchEntry.kind.in_([kind.value for kind in _CANDIDATE_KINDS]),
                PatientSearchEntry.digest.in_(every_digest),
                Patient.status != PatientStatus.merged.value,
            )
            .order_by(Patient.created_at, Patient.id)
            .limit(_SEARCH_LIMIT * len(wanted))
        )
    ).all()
    views: dict[uuid.UUID, PatientView] = {}
    found: dict[uuid.UUID, set[tuple[str, bytes]]] = {}
    for patient, wrapped, kind, digest in rows:
        if patient.id not in views:
            values = await open_fields(session, vault, audit_log, actor, patient, wrapped, policy.SUMMARY_FIELDS)
            views[patient.id] = PatientView(patient, values)
            audit_access(audit_log, session, actor, PATIENT_READ, patient, via=via)
        found.setdefault(patient.id, set()).add((kind, digest))
    return [
        [
            Candidate(view, sorted(IndexKind(kind) for kind, _ in found[patient_id] & entries))
            for patient_id, view in views.items()
            if found[patient_id] & entries
        ]
        for entries in wanted_entries
    ]
