"""The export (GDPR Art. 15 and 20): everything held on one patient, in full, as one JSON document.

What it holds: every demographic field decrypted (the national id whole, whatever the caller's role sees
elsewhere), the record's status and merges, the legal hold flag, every consent decision with its evidence,
invitations (dates and status, never tokens), the patient's sign-in accounts, and every access to the record
from the audit log. An erased patient's export is the shell that remains.

The export is a disclosure of the whole record, so it is audited as ``patient.export`` (which the anomaly
rules count as an access), and break-glass does not open it: emergency access is for care, not for copies.
"""

from __future__ import annotations

import uuid

from sqlalchemy import String, cast, not_, or_
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.access.anomaly import PATIENT_EXPORT
from sehat.access.service import SYSTEM_ACTOR_NAME, UNNAMED_STAFF_NAME, UNSIGNED_ACTOR_NAME, describe_access
from sehat.core.actor import Actor, Role
from sehat.core.audit import AuditEvent, AuditLog, Outcome
from sehat.core.clock import utcnow
from sehat.core.errors import Problem
from sehat.core.scoping import scoped_select
from sehat.identity.models import User
from sehat.patients import consent, policy, service
from sehat.patients.models import ENCRYPTED_FIELDS, Patient, PatientInvitation
from sehat.patients.rights_schemas import AccessExport, AccountExport, InvitationExport, PatientExport
from sehat.patients.vault import PatientVault


def _invitation_status(invitation: PatientInvitation) -> str:
    if invitation.accepted_at is not None:
        return "accepted"
    return "expired" if invitation.expires_at <= utcnow() else "pending"


async def _accesses(
    session: AsyncSession, actor: Actor, patient_id: uuid.UUID, account_ids: list[uuid.UUID]
) -> list[AccessExport]:
    """Every audit entry about the patient, oldest first, with the name of whoever acted."""
    people = scoped_select(User, actor).with_only_columns(User.id, User.full_name).subquery()
    rows = (
        await session.execute(
            scoped_select(AuditEvent, actor)
            .with_only_columns(
                AuditEvent.occurred_at,
                AuditEvent.actor_type,
                AuditEvent.actor_roles,
                AuditEvent.action,
                AuditEvent.outcome,
                people.c.full_name,
            )
            .outerjoin(people, people.c.id == AuditEvent.actor_id)
            .where(
                AuditEvent.patient_id == patient_id,
                # Another patient's attempt on this record would name that patient (and that they are a patient
                # here) in this one's copy: left out, as in the patient's own access log.
                or_(
                    AuditEvent.actor_id.in_(account_ids),
                    not_(cast(AuditEvent.actor_roles, String).like(f'%"{Role.patient.value}"%')),
                ),
            )
            .order_by(AuditEvent.id)
        )
    ).all()
    accesses = []
    for row in rows:
        roles: list[str] = sorted(row.actor_roles)
        if row.actor_type == "system":
            # A system actor's "role" is a job's internal name, of no meaning to a patient.
            name, roles = SYSTEM_ACTOR_NAME, []
        elif row.actor_type == "user":
            name = row.full_name or UNNAMED_STAFF_NAME
        else:
            name, roles = UNSIGNED_ACTOR_NAME, []
        accesses.append(
            AccessExport(
                occurred_at=row.occurred_at,
                actor_name=name,
                actor_roles=roles,
                action=row.action,
                description=describe_access(row.action, Outcome(row.outcome)),
                outcome=row.outcome,
            )
        )
    return accesses


async def export_patient(
    session: AsyncSession, vault: PatientVault, audit_log: AuditLog, actor: Actor, patient_id: uuid.UUID
) -> PatientExport:
    policy.ensure_can_export(actor)
    patient, wrapped, emergency = await consent.open_patient(session, actor, patient_id)
    if emergency:
        raise Problem(
            "Emergency access lets you treat this patient, not export their record.",
            status=403,
            title="Forbidden",
            code="outside_your_facilities",
        )
    values = await service.open_fields(session, vault, audit_log, actor, patient, wrapped, ENCRYPTED_FIELDS)
    merged_from_ids = list(
        (
            await session.scalars(
                scoped_select(Patient, actor)
                .with_only_columns(Patient.id)
                .where(Patient.merged_into_id == patient.id)
                .order_by(Patient.created_at, Patient.id)
            )
        ).all()
    )
    consents = await consent.read_history(session, vault, audit_log, actor, patient, wrapped)
    invitations = (
        await session.scalars(
            scoped_select(PatientInvitation, actor)
            .where(PatientInvitation.patient_id == patient.id)
            .order_by(PatientInvitation.created_at)
        )
    ).all()
    accounts = (
        await session.scalars(scoped_select(User, actor).where(User.patient_id == patient.id).order_by(User.created_at))
    ).all()
    # Read before this export's own entry is added: the copy lists the accesses that came before it.
    accesses = await _accesses(session, actor, patient.id, [account.id for account in accounts])
    service.audit_access(audit_log, session, actor, PATIENT_EXPORT, patient)
    return PatientExport(
        exported_at=utcnow(),
        patient=service.present_in_full(patient, values),
        merged_from_ids=merged_from_ids,
        legal_hold_since=patient.legal_hold_since,
        consents=consents,
        invitations=[
            InvitationExport(
                id=invitation.id,
                created_at=invitation.created_at,
                expires_at=invitation.expires_at,
                accepted_at=invitation.accepted_at,
                status=_invitation_status(invitation),
            )
            for invitation in invitations
        ],
        accounts=[
            AccountExport(email=account.email, created_at=account.created_at, active=account.active)
            for account in accounts
        ],
        accesses=accesses,
    )
