"""A patient's rights over their data: consents, the export, legal holds and erasure. Thin routes, one
service call each; a patient token reaches the consent and export routes for its own record only."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor, Audience
from sehat.core.crypto import KeyRing
from sehat.core.http import api_router, get_key_ring, get_session
from sehat.identity.deps import Require
from sehat.identity.permissions import (
    CONSENT_READ,
    CONSENT_WRITE,
    PATIENT_ERASE,
    PATIENT_EXPORT,
    PATIENT_LEGAL_HOLD,
)
from sehat.identity.runtime import AuthRuntime
from sehat.patients import consent, erasure, export, service
from sehat.patients.api import Audit, Vault
from sehat.patients.models import Patient
from sehat.patients.rights_schemas import (
    ConsentCreate,
    ConsentRead,
    ConsentsRead,
    LegalHoldPlace,
    LegalHoldRead,
    PatientErase,
    PatientExport,
)
from sehat.patients.schemas import PatientRead

router = api_router(prefix="/api/v1", tags=["patients"])

_STAFF_OR_PATIENT = (Audience.staff, Audience.patient)
Session = Annotated[AsyncSession, Depends(get_session)]
ConsentReader = Annotated[Actor, Depends(Require(CONSENT_READ, audiences=_STAFF_OR_PATIENT))]
ConsentWriter = Annotated[Actor, Depends(Require(CONSENT_WRITE, audiences=_STAFF_OR_PATIENT))]
Exporter = Annotated[Actor, Depends(Require(PATIENT_EXPORT, audiences=_STAFF_OR_PATIENT))]
HoldKeeper = Annotated[Actor, Depends(Require(PATIENT_LEGAL_HOLD))]
Eraser = Annotated[Actor, Depends(Require(PATIENT_ERASE))]


async def get_auth(request: Request) -> AuthRuntime:
    return request.app.state.auth


Auth = Annotated[AuthRuntime, Depends(get_auth)]
Keys = Annotated[KeyRing, Depends(get_key_ring)]


def _hold(patient: Patient) -> LegalHoldRead:
    return LegalHoldRead(
        patient_id=patient.id,
        legal_hold=patient.legal_hold_since is not None,
        legal_hold_since=patient.legal_hold_since,
    )


@router.post("/patients/{patient_id}/consents", response_model=ConsentRead, status_code=status.HTTP_201_CREATED)
async def record_consent(
    patient_id: uuid.UUID, body: ConsentCreate, actor: ConsentWriter, session: Session, vault: Vault, audit: Audit
) -> ConsentRead:
    """Record a decision: consent of one kind granted or withdrawn, with its evidence (the ticked wording, or
    a signature image as a data URL). The latest decision of each kind is the current state."""
    return await consent.record_consent(session, vault, audit, actor, patient_id, body)


@router.get("/patients/{patient_id}/consents", response_model=ConsentsRead)
async def list_consents(
    patient_id: uuid.UUID, actor: ConsentReader, session: Session, vault: Vault, audit: Audit
) -> ConsentsRead:
    """The current decision of every kind ever decided, and the whole history, newest first."""
    return await consent.list_consents(session, vault, audit, actor, patient_id)


@router.get("/patients/{patient_id}/export", response_model=PatientExport)
async def export_patient(
    patient_id: uuid.UUID, actor: Exporter, session: Session, vault: Vault, audit: Audit, response: Response
) -> PatientExport:
    """Everything held on the patient, in full (GDPR Art. 15 and 20), as a JSON attachment. Audited."""
    document = await export.export_patient(session, vault, audit, actor, patient_id)
    response.headers["Content-Disposition"] = f'attachment; filename="patient-{patient_id}.json"'
    return document


@router.put("/patients/{patient_id}/legal-hold", response_model=LegalHoldRead)
async def place_legal_hold(
    patient_id: uuid.UUID, body: LegalHoldPlace, actor: HoldKeeper, session: Session, keys: Keys, audit: Audit
) -> LegalHoldRead:
    """Hold the patient's data: erasure is refused (409) until the hold is lifted. The reason is sealed."""
    return _hold(await erasure.place_legal_hold(session, keys, audit, actor, patient_id, body))


@router.delete("/patients/{patient_id}/legal-hold", response_model=LegalHoldRead)
async def lift_legal_hold(patient_id: uuid.UUID, actor: HoldKeeper, session: Session, audit: Audit) -> LegalHoldRead:
    return _hold(await erasure.lift_legal_hold(session, audit, actor, patient_id))


@router.post("/patients/{patient_id}/erase", response_model=PatientRead, response_model_exclude_unset=True)
async def erase_patient(
    patient_id: uuid.UUID, body: PatientErase, actor: Eraser, session: Session, auth: Auth, audit: Audit
) -> PatientRead:
    """Erase the patient by destroying their data key (GDPR Art. 17), with the records merged into it. What
    remains is a pseudonymous shell, returned here. 409 `legal_hold` while a legal hold is on."""
    patient = await erasure.erase_patient(session, auth, audit, actor, patient_id, body)
    return service.present(actor, service.PatientView(patient))
