"""Erasure by crypto-shredding (GDPR Art. 17), legal holds that refuse it, and the erasure ledger that keeps
an erasure erased when backups are restored.

Erasing a patient destroys their data key (the ``patient_keys`` row) and their blind-index entries, and
nulls every encrypted column: whatever copies of the ciphertexts survive (replicas, backups of the patients
table) are noise without the key. What other records reference stays as a pseudonymous shell: the patient
row (id, organization, facility, status ``erased``, times), the consent decisions (their evidence, sealed
under the same key, overwritten), the audit entries (append-only, and free of patient data by design). The
patient's sign-in accounts are deactivated, stripped of e-mail and name, and their sessions ended; invitations
not yet accepted are deleted; self-registrations matched to the patient lose the details they were sealed
with (those are sealed under the key ring, not the patient's key, so shredding the key would not reach them).

A record merged into the erased one holds the same person's data under its own key: it is erased with it.

Backups: a restored ``patient_keys`` backup would bring an erased key back. The ledger (ids and times only)
is exported outside the database backups and replayed after any restore (docs/operations.md, "Erasure and
backups"); :func:`replay_erasures` re-applies the shredding idempotently.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import orjson
from sqlalchemy import ColumnElement, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from sehat.core.actor import Actor, SystemActor
from sehat.core.audit import AuditEntry, AuditLog, Outcome
from sehat.core.clock import utcnow
from sehat.core.crypto import KeyRing, associated_data
from sehat.core.db import Database
from sehat.core.errors import Conflict, InvalidInput
from sehat.core.scoping import scoped_select
from sehat.core.tenant_scope import enter_organization, enter_platform_scope
from sehat.identity.models import AuthSession, User
from sehat.identity.runtime import AuthRuntime
from sehat.identity.service import _revoke_sessions
from sehat.patients import policy, service
from sehat.patients.consent import SHREDDED_EVIDENCE
from sehat.patients.models import (
    ENCRYPTED_FIELDS,
    PATIENTS_TABLE,
    Patient,
    PatientConsent,
    PatientInvitation,
    PatientKey,
    PatientRegistration,
    PatientSearchEntry,
    PatientStatus,
)
from sehat.patients.rights_schemas import ErasureLedgerEntry, LegalHoldPlace, PatientErase
from sehat.tenancy.models import Organization

ERASE_ACTION = "patient.erase"
ERASE_REPLAY_ACTION = "patient.erase.replay"
HOLD_PLACE_ACTION = "patient.legal_hold.place"
HOLD_LIFT_ACTION = "patient.legal_hold.lift"
HOLD_REASON_COLUMN = "legal_hold_reason_sealed"
SESSION_END_REASON = "patient_erased"
# What an erased patient's account keeps instead of a name and an e-mail address. The .invalid top-level
# domain is reserved (RFC 2606): nothing is ever delivered there.
ERASED_ACCOUNT_NAME = "Erased patient"
ERASED_EMAIL_DOMAIN = "erased.invalid"
# Registration details are NOT NULL; an empty value opens to nothing.
SHREDDED_DETAILS = b""
_REPLAY_BATCH = 500


def erased_account_email(user_id: uuid.UUID) -> str:
    # Unique like the address it replaces (the column is), and derived from nothing but the account's id.
    return f"erased-{user_id.hex}@{ERASED_EMAIL_DOMAIN}"


def hold_reason_place(patient: Patient) -> bytes:
    return associated_data(PATIENTS_TABLE, HOLD_REASON_COLUMN, patient.id, patient.organization_id)


async def _flush_versioned(session: AsyncSession) -> None:
    """Flush a change to a patient row; a change made meanwhile (another hold, an edit, an erasure) wins."""
    try:
        await session.flush()
    except StaleDataError:
        raise Conflict("The patient changed meanwhile; read it again and retry.", code="patient_changed") from None


# --- legal holds -------------------------------------------------------------------------------------------


async def place_legal_hold(
    session: AsyncSession,
    key_ring: KeyRing,
    audit_log: AuditLog,
    actor: Actor,
    patient_id: uuid.UUID,
    request: LegalHoldPlace,
) -> Patient:
    """Hold the patient's data against erasure. Placing it again replaces the reason and keeps the date the
    hold began."""
    policy.ensure_can_hold(actor)
    patient, _ = await service.load_patient(session, actor, patient_id)
    if patient.status == PatientStatus.erased:
        raise Conflict("An erased patient holds nothing to keep.", code="patient_erased")
    renewed = patient.legal_hold_since is not None
    now = utcnow()
    patient.legal_hold_since = patient.legal_hold_since or now
    # The reason may name a case or a court: sealed under the key ring (not the patient's key, so that it
    # outlives an erasure the hold was later lifted for) and bound to this row.
    patient.legal_hold_reason_sealed = key_ring.seal(request.reason.encode(), hold_reason_place(patient))
    patient.updated_at = now
    service.audit_access(audit_log, session, actor, HOLD_PLACE_ACTION, patient, renewed=renewed)
    await _flush_versioned(session)
    return patient


async def lift_legal_hold(session: AsyncSession, audit_log: AuditLog, actor: Actor, patient_id: uuid.UUID) -> Patient:
    """Lift the hold; lifting one that is not there changes nothing (and is recorded as such)."""
    policy.ensure_can_hold(actor)
    patient, _ = await service.load_patient(session, actor, patient_id)
    was_held = patient.legal_hold_since is not None
    if was_held:
        patient.legal_hold_since = None
        patient.legal_hold_reason_sealed = None
        patient.updated_at = utcnow()
    service.audit_access(audit_log, session, actor, HOLD_LIFT_ACTION, patient, was_held=was_held)
    await _flush_versioned(session)
    return patient


def read_hold_reason(key_ring: KeyRing, patient: Patient) -> str | None:
    """The sealed reason, for the operators and tooling that review holds. Raises DecryptionError."""
    if patient.legal_hold_reason_sealed is None:
        return None
    return key_ring.open(patient.legal_hold_reason_sealed, hold_reason_place(patient)).decode()


# --- erasure -----------------------------------------------------------------------------------------------


async def _merged_family(session: AsyncSession, actor: Actor, patient: Patient) -> list[Patient]:
    """The patient and every record merged into it, however many merges deep (a survivor may later have
    been merged itself): the same person's data, each under its own key. Erased ones are left out."""
    family = [patient]
    frontier = [patient.id]
    seen = {patient.id}
    while frontier:
        found = (
            await session.scalars(
                scoped_select(Patient, actor).where(
                    Patient.merged_into_id.in_(frontier), Patient.status != PatientStatus.erased.value
                )
            )
        ).all()
        fresh = [duplicate for duplicate in found if duplicate.id not in seen]
        seen.update(duplicate.id for duplicate in fresh)
        family.extend(fresh)
        frontier = [duplicate.id for duplicate in fresh]
    return family


def _shell(patient: Patient, now: datetime) -> None:
    for name in ENCRYPTED_FIELDS:
        setattr(patient, name, None)
    patient.status = PatientStatus.erased.value
    patient.erased_at = now
    patient.updated_at = now


async def _shred(
    session: AsyncSession, organization_id: uuid.UUID, patient_ids: Sequence[uuid.UUID]
) -> list[uuid.UUID]:
    """Everything but the patient rows themselves: keys, index entries, consent evidence, pending
    invitations, registration details and the patients' accounts. Idempotent. Returns the account ids."""
    await session.execute(
        delete(PatientKey).where(PatientKey.organization_id == organization_id, PatientKey.patient_id.in_(patient_ids))
    )
    await session.execute(
        delete(PatientSearchEntry).where(
            PatientSearchEntry.organization_id == organization_id, PatientSearchEntry.patient_id.in_(patient_ids)
        )
    )
    await session.execute(
        update(PatientConsent)
        .where(
            PatientConsent.organization_id == organization_id,
            PatientConsent.patient_id.in_(patient_ids),
            PatientConsent.evidence != SHREDDED_EVIDENCE,
        )
        .values(evidence=SHREDDED_EVIDENCE)
        .execution_options(synchronize_session=False)
    )
    # An accepted invitation is history (when the account was opened); one still open would let someone
    # open an account on the shell.
    await session.execute(
        delete(PatientInvitation).where(
            PatientInvitation.organization_id == organization_id,
            PatientInvitation.patient_id.in_(patient_ids),
            PatientInvitation.accepted_at.is_(None),
        )
    )
    account_ids = list(
        (
            await session.scalars(
                select(User.id).where(User.organization_id == organization_id, User.patient_id.in_(patient_ids))
            )
        ).all()
    )
    for account_id in account_ids:
        await session.execute(
            update(User)
            .where(
                User.id == account_id,
                # Already scrubbed (a replay): left alone, so a second replay changes nothing.
                or_(User.active, User.email != erased_account_email(account_id)),
            )
            .values(
                active=False,
                email=erased_account_email(account_id),
                full_name=ERASED_ACCOUNT_NAME,
                mfa_secret_sealed=None,
                mfa_enabled=False,
            )
            .execution_options(synchronize_session=False)
        )
    matched = PatientRegistration.matched_patient_id.in_(patient_ids)
    await session.execute(
        update(PatientRegistration)
        .where(
            PatientRegistration.organization_id == organization_id,
            or_(matched, PatientRegistration.user_id.in_(account_ids)) if account_ids else matched,
            PatientRegistration.details_sealed != SHREDDED_DETAILS,
        )
        .values(details_sealed=SHREDDED_DETAILS)
        .execution_options(synchronize_session=False)
    )
    return account_ids


async def erase_patient(
    session: AsyncSession,
    auth: AuthRuntime,
    audit_log: AuditLog,
    actor: Actor,
    patient_id: uuid.UUID,
    request: PatientErase,
) -> Patient:
    """Erase the patient (and the records merged into it) in this transaction; returns the shell."""
    policy.ensure_can_erase(actor)
    organization_id = actor.organization_id
    assert organization_id is not None
    patient, _ = await service.load_patient(session, actor, patient_id)
    if patient.status == PatientStatus.erased:
        raise Conflict("This patient has already been erased.", code="patient_erased")
    family = await _merged_family(session, actor, patient)
    if any(member.legal_hold_since is not None for member in family):
        raise Conflict("A legal hold on this patient's data refuses erasure; lift it first.", code="legal_hold")
    now = utcnow()
    for member in family:
        _shell(member, now)
    # The patient rows first: their version check fails here, before anything is destroyed, if a hold was
    # placed (or the record changed) since it was read.
    await _flush_versioned(session)
    account_ids = await _shred(session, organization_id, [member.id for member in family])
    if account_ids:
        open_sessions = (
            await session.scalars(
                select(AuthSession).where(AuthSession.user_id.in_(account_ids), AuthSession.revoked_at.is_(None))
            )
        ).all()
        await _revoke_sessions(session, auth, open_sessions, reason=SESSION_END_REASON)
    for member in family:
        details: dict[str, str] = {"reason": request.reason.value}
        if request.reference is not None:
            details["reference"] = request.reference
        if member is not patient:
            details["erased_with"] = str(patient.id)
        service.audit_access(audit_log, session, actor, ERASE_ACTION, member, **details)
    await session.flush()
    return patient


# --- the ledger, for backups -------------------------------------------------------------------------------


async def erasure_ledger(database: Database) -> list[ErasureLedgerEntry]:
    """Every erased patient of every organization: ids and erasure times, no patient data.

    Row-level security admits patient rows only to their own organization's scope, so the organizations are
    listed in the platform scope and each is read in its own."""
    async with database.unit_of_work() as session:
        await enter_platform_scope(session)
        organization_ids = (await session.scalars(select(Organization.id).order_by(Organization.id))).all()
    entries: list[ErasureLedgerEntry] = []
    for organization_id in organization_ids:
        async with database.unit_of_work() as session:
            await enter_organization(session, organization_id)
            rows = await session.execute(
                select(Patient.id, Patient.erased_at)
                .where(Patient.organization_id == organization_id, Patient.status == PatientStatus.erased.value)
                .order_by(Patient.erased_at, Patient.id)
            )
            entries.extend(
                ErasureLedgerEntry(organization_id=organization_id, patient_id=patient_id, erased_at=erased_at)
                for patient_id, erased_at in rows
                if erased_at is not None
            )
    return entries


def ledger_lines(entries: Iterable[ErasureLedgerEntry]) -> Iterable[str]:
    for entry in entries:
        yield orjson.dumps(entry.model_dump(mode="json"), option=orjson.OPT_SORT_KEYS).decode()


def parse_ledger(lines: Iterable[str]) -> list[ErasureLedgerEntry]:
    """Ledger lines as :func:`ledger_lines` writes them; blank lines are skipped. A malformed line is refused
    with its number, so a damaged ledger is noticed rather than half-replayed."""
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entries.append(ErasureLedgerEntry.model_validate_json(line))
        except ValueError:
            raise InvalidInput(f"Ledger line {number} is not an erasure entry.", code="invalid_ledger") from None
    return entries


@dataclass
class ReplayResult:
    listed: int = 0
    # Listed patients found in the database (a restore older than a registration does not hold it).
    present: int = 0
    # Present patients with something to shred again: a key, index entries, a field, status not erased.
    reapplied: list[uuid.UUID] = field(default_factory=list)


def _not_fully_erased(organization_id: uuid.UUID, patient_ids: Sequence[uuid.UUID]) -> ColumnElement[bool]:
    keys = select(PatientKey.patient_id).where(
        PatientKey.organization_id == organization_id, PatientKey.patient_id.in_(patient_ids)
    )
    index = select(PatientSearchEntry.patient_id).where(
        PatientSearchEntry.organization_id == organization_id, PatientSearchEntry.patient_id.in_(patient_ids)
    )
    return or_(
        Patient.status != PatientStatus.erased.value,
        Patient.id.in_(keys),
        Patient.id.in_(index),
        *(getattr(Patient, name).is_not(None) for name in ENCRYPTED_FIELDS),
    )


async def replay_erasures(
    database: Database, audit_log: AuditLog, entries: Sequence[ErasureLedgerEntry]
) -> ReplayResult:
    """Re-apply every listed erasure to whatever a restore brought back: keys, index entries, fields,
    evidence, invitations, accounts, registration details. Idempotent: a second run finds nothing to do.
    One transaction per organization and batch, in that organization's scope."""
    result = ReplayResult(listed=len(entries))
    by_organization: dict[uuid.UUID, dict[uuid.UUID, datetime]] = defaultdict(dict)
    for entry in entries:
        by_organization[entry.organization_id][entry.patient_id] = entry.erased_at
    system = SystemActor(name="erasure-replay")
    for organization_id, erased in by_organization.items():
        listed = list(erased)
        for start in range(0, len(listed), _REPLAY_BATCH):
            batch = listed[start : start + _REPLAY_BATCH]
            async with database.unit_of_work() as session:
                await enter_organization(session, organization_id)
                present = (
                    await session.execute(
                        select(Patient.id, _not_fully_erased(organization_id, batch)).where(
                            Patient.organization_id == organization_id, Patient.id.in_(batch)
                        )
                    )
                ).all()
                result.present += len(present)
                ids = [patient_id for patient_id, _ in present]
                if not ids:
                    continue
                stale = [patient_id for patient_id, remains in present if remains]
                now = utcnow()
                for patient_id in stale:
                    # The ledger's time, not now: the erasure happened then; the restore only undid it.
                    await session.execute(
                        update(Patient)
                        .where(Patient.organization_id == organization_id, Patient.id == patient_id)
                        .values(
                            {
                                **{name: None for name in ENCRYPTED_FIELDS},
                                "status": PatientStatus.erased.value,
                                "erased_at": erased[patient_id],
                                "updated_at": now,
                                "version": Patient.version + 1,
                            }
                        )
                        .execution_options(synchronize_session=False)
                    )
                account_ids = await _shred(session, organization_id, ids)
                if account_ids:
                    await session.execute(
                        update(AuthSession)
                        .where(AuthSession.user_id.in_(account_ids), AuthSession.revoked_at.is_(None))
                        .values(revoked_at=now, revoked_reason=SESSION_END_REASON)
                        .execution_options(synchronize_session=False)
                    )
                for patient_id in stale:
                    audit_log.record(
                        session,
                        system,
                        AuditEntry(
                            action=ERASE_REPLAY_ACTION,
                            outcome=Outcome.success,
                            resource_type="patient",
                            resource_id=str(patient_id),
                            patient_id=patient_id,
                            details={"erased_at": erased[patient_id].isoformat()},
                        ),
                        organization_id=organization_id,
                    )
                result.reapplied.extend(stale)
    return result
