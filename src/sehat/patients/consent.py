"""Consent: a patient's decisions, kind by kind (treatment, data sharing, SMS, e-mail, research), each granted
or withdrawn, with when, by whom and the evidence (a signature or the ticked wording).

Decisions are never changed or deleted: a new decision of a kind supersedes the last one, and the latest of
each kind is the current state (:func:`current_consents`, :func:`has_consent`). The evidence is encrypted
under the patient's own data key, so erasing the patient shreds it while the decisions stay as a shell.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor
from sehat.core.audit import AuditLog
from sehat.core.clock import utcnow
from sehat.core.crypto import DecryptionError, FieldCipher
from sehat.core.errors import Conflict, Forbidden
from sehat.core.scoping import scoped_select
from sehat.identity.permissions import CONSENT_READ, CONSENT_WRITE
from sehat.patients import service
from sehat.patients.models import Patient, PatientConsent, PatientStatus
from sehat.patients.rights_schemas import ConsentCreate, ConsentKind, ConsentRead, ConsentsRead, ConsentState
from sehat.patients.vault import PatientVault

CONSENTS_TABLE = "patient_consents"
EVIDENCE_COLUMN = "evidence"
CONSENT_READ_ACTION = "consent.read"
CONSENT_RECORD_ACTION = "consent.record"
# What erasure leaves in place of the evidence: the column is NOT NULL, and nothing decrypts from nothing.
SHREDDED_EVIDENCE = b""


def _ensure(actor: Actor, permission: str, message: str) -> None:
    # Checked here as well as by the route: a service may be called from a job or the CLI.
    if actor.organization_id is None or not actor.has(permission):
        raise Forbidden(message, code="permission_denied")


async def open_patient(
    session: AsyncSession, actor: Actor, patient_id: uuid.UUID
) -> tuple[Patient, bytes | None, bool]:
    """The patient, its wrapped key and whether only break-glass lets the caller in. Another organization's
    patient, and for a patient token anyone but themselves, is 404; staff outside the patient's facilities
    get the registry's 403 unless they hold emergency access."""
    patient, wrapped = await service.load_patient(session, actor, patient_id)
    emergency = await service.ensure_may_open(session, actor, patient)
    return patient, wrapped, emergency


async def patient_cipher(
    session: AsyncSession,
    vault: PatientVault,
    audit_log: AuditLog,
    actor: Actor,
    patient: Patient,
    wrapped: bytes | None,
) -> FieldCipher | None:
    """The patient's cipher, None once erased; a key that does not open fails the request as the registry does."""
    try:
        return service.patient_cipher(vault, patient, wrapped)
    except DecryptionError:
        await service.fail_unreadable(session, audit_log, actor, patient)


def _seal_evidence(cipher: FieldCipher, consent: PatientConsent, evidence: str) -> bytes:
    return cipher.encrypt(
        evidence,
        organization_id=consent.organization_id,
        table=CONSENTS_TABLE,
        column=EVIDENCE_COLUMN,
        row_id=consent.id,
    )


def _open_evidence(cipher: FieldCipher, consent: PatientConsent) -> str:
    return cipher.decrypt_text(
        consent.evidence,
        organization_id=consent.organization_id,
        table=CONSENTS_TABLE,
        column=EVIDENCE_COLUMN,
        row_id=consent.id,
    )


def _read(consent: PatientConsent, evidence: str | None) -> ConsentRead:
    return ConsentRead(
        id=consent.id,
        patient_id=consent.patient_id,
        kind=ConsentKind(consent.kind),
        granted=consent.granted,
        recorded_at=consent.recorded_at,
        recorded_by_id=consent.recorded_by_id,
        evidence_kind=consent.evidence_kind,
        evidence=evidence,
    )


def _current_of(decisions: Iterable[tuple[str, bool, datetime, uuid.UUID | None]]) -> dict[ConsentKind, ConsentState]:
    """The latest decision per kind, from decisions listed newest first."""
    current: dict[ConsentKind, ConsentState] = {}
    known = {kind.value for kind in ConsentKind}
    for kind, granted, recorded_at, recorded_by_id in decisions:
        # A kind this release does not know (written by a newer one during a rolling deploy) is left out.
        if kind in known and ConsentKind(kind) not in current:
            current[ConsentKind(kind)] = ConsentState(
                granted=granted, recorded_at=recorded_at, recorded_by_id=recorded_by_id
            )
    return current


async def read_history(
    session: AsyncSession,
    vault: PatientVault,
    audit_log: AuditLog,
    actor: Actor,
    patient: Patient,
    wrapped: bytes | None,
) -> list[ConsentRead]:
    """Every decision on the patient, newest first, evidence decrypted (None once erased). Not audited here:
    the caller audits the read it is part of."""
    consents: Sequence[PatientConsent] = (
        await session.scalars(
            scoped_select(PatientConsent, actor)
            .where(PatientConsent.patient_id == patient.id)
            .order_by(PatientConsent.recorded_at.desc(), PatientConsent.id)
        )
    ).all()
    cipher = await patient_cipher(session, vault, audit_log, actor, patient, wrapped) if consents else None
    history = []
    for consent in consents:
        evidence = None
        if cipher is not None and consent.evidence != SHREDDED_EVIDENCE:
            try:
                evidence = _open_evidence(cipher, consent)
            except DecryptionError:
                await service.fail_unreadable(session, audit_log, actor, patient)
        history.append(_read(consent, evidence))
    return history


async def record_consent(
    session: AsyncSession,
    vault: PatientVault,
    audit_log: AuditLog,
    actor: Actor,
    patient_id: uuid.UUID,
    request: ConsentCreate,
) -> ConsentRead:
    """Record one decision. Staff record for patients they may open; a patient records only their own."""
    _ensure(actor, CONSENT_WRITE, "Your role may not record consents.")
    patient, wrapped, emergency = await open_patient(session, actor, patient_id)
    if patient.status in (PatientStatus.merged, PatientStatus.erased):
        # A merged record's decisions belong on the survivor; an erased one has no key to seal evidence with.
        raise Conflict(f"Consent cannot be recorded on a {patient.status} patient.", code=f"patient_{patient.status}")
    cipher = await patient_cipher(session, vault, audit_log, actor, patient, wrapped)
    if cipher is None:
        raise Conflict("Consent cannot be recorded on an erased patient.", code="patient_erased")
    consent = PatientConsent(
        id=uuid.uuid4(),
        organization_id=patient.organization_id,
        patient_id=patient.id,
        kind=request.kind.value,
        granted=request.granted,
        recorded_at=utcnow(),
        recorded_by_id=actor.user_id,
        evidence_kind=request.evidence_kind.value,
    )
    consent.evidence = _seal_evidence(cipher, consent, request.evidence)
    session.add(consent)
    service.audit_access(
        audit_log,
        session,
        actor,
        CONSENT_RECORD_ACTION,
        patient,
        kind=request.kind.value,
        granted=request.granted,
        **({"break_glass": True} if emergency else {}),
    )
    await session.flush()
    return _read(consent, request.evidence)


async def list_consents(
    session: AsyncSession, vault: PatientVault, audit_log: AuditLog, actor: Actor, patient_id: uuid.UUID
) -> ConsentsRead:
    """The current state of every kind ever decided, and the whole history with its evidence."""
    _ensure(actor, CONSENT_READ, "Your role may not read consents.")
    patient, wrapped, emergency = await open_patient(session, actor, patient_id)
    history = await read_history(session, vault, audit_log, actor, patient, wrapped)
    current = _current_of((item.kind.value, item.granted, item.recorded_at, item.recorded_by_id) for item in history)
    service.audit_access(
        audit_log,
        session,
        actor,
        CONSENT_READ_ACTION,
        patient,
        kinds=sorted(kind.value for kind in current),
        **({"break_glass": True} if emergency else {}),
    )
    return ConsentsRead(current=current, history=history)


async def current_consents(
    session: AsyncSession, organization_id: uuid.UUID, patient_id: uuid.UUID
) -> dict[ConsentKind, ConsentState]:
    """The latest decision of each kind ever decided, in one query; for the system's own checks (a reminder
    about to be sent), so neither an actor nor an audit entry: no patient data is disclosed to anyone."""
    rows = (
        await session.execute(
            select(
                PatientConsent.kind, PatientConsent.granted, PatientConsent.recorded_at, PatientConsent.recorded_by_id
            )
            .where(PatientConsent.organization_id == organization_id, PatientConsent.patient_id == patient_id)
            .order_by(PatientConsent.recorded_at.desc(), PatientConsent.id)
        )
    ).all()
    return _current_of(rows)


async def has_consent(
    session: AsyncSession, organization_id: uuid.UUID, patient_id: uuid.UUID, kind: ConsentKind
) -> bool:
    """Whether the latest decision of ``kind`` grants it; never decided is no. An erased patient consents to
    nothing: their shell keeps its decisions as history, but there is no one left to act on."""
    granted = await session.scalar(
        select(PatientConsent.granted)
        .join(Patient, Patient.id == PatientConsent.patient_id)
        .where(
            PatientConsent.organization_id == organization_id,
            PatientConsent.patient_id == patient_id,
            PatientConsent.kind == kind.value,
            Patient.organization_id == organization_id,
            Patient.status != PatientStatus.erased.value,
        )
        .order_by(PatientConsent.recorded_at.desc(), PatientConsent.id)
        .limit(1)
    )
    return bool(granted)
