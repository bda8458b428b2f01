"""Patient registry routes: thin, one service call each. Responses carry only the fields the caller's role may
see, so models are rendered without unset fields."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Query, Request, Response, status
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor, Audience
from sehat.core.audit import AuditLog
from sehat.core.http import IfMatch, api_router, expected_version, get_audit_log, get_session
from sehat.core.pagination import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page
from sehat.identity.deps import require
from sehat.identity.permissions import PATIENT_MERGE, PATIENT_READ, PATIENT_SELF, PATIENT_WRITE
from sehat.patients import service
from sehat.patients.schemas import (
    SELF_CORRECTABLE_FIELDS,
    PatientCreate,
    PatientMerge,
    PatientRead,
    PatientSearch,
    PatientSummary,
    PatientUpdate,
)
from sehat.patients.vault import PatientVault

router = api_router(prefix="/api/v1", tags=["patients"])

Session = Annotated[AsyncSession, Depends(get_session)]
Reader = Annotated[Actor, Depends(require(PATIENT_READ))]
Writer = Annotated[Actor, Depends(require(PATIENT_WRITE))]
Merger = Annotated[Actor, Depends(require(PATIENT_MERGE))]
Self = Annotated[Actor, Depends(require(PATIENT_SELF, audiences=(Audience.patient,)))]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)]
Cursor = Annotated[str | None, Query(max_length=512)]


async def get_vault(request: Request) -> PatientVault:
    return request.app.state.patient_vault


Vault = Annotated[PatientVault, Depends(get_vault)]
Audit = Annotated[AuditLog, Depends(get_audit_log)]


def _with_etag(response: Response, view: service.PatientView) -> None:
    response.headers["ETag"] = f'"{view.patient.version}"'


@router.post(
    "/patients", response_model=PatientRead, response_model_exclude_unset=True, status_code=status.HTTP_201_CREATED
)
async def create_patient(
    body: PatientCreate, actor: Writer, session: Session, vault: Vault, audit: Audit, response: Response
) -> PatientRead:
    view = await service.create_patient(session, vault, audit, actor, body)
    _with_etag(response, view)
    return service.present(actor, view)


@router.get("/patients", response_model=Page[PatientSummary])
async def find_patients(
    actor: Reader,
    session: Session,
    vault: Vault,
    audit: Audit,
    search: Annotated[PatientSearch, Query()],
    limit: Limit = DEFAULT_PAGE_SIZE,
    cursor: Cursor = None,
) -> Page[PatientSummary]:
    """Search by exactly one key (`phone`, `email`, `mrn`, `national_id` with `national_id_kind`, or `name`
    with `birth_date`) for exact matches; with no key, list the patients you may see, page by page."""
    if any(value is not None for value in search.model_dump().values()):
        found = await service.search_patients(session, vault, audit, actor, search)
        return Page[PatientSummary](items=[service.summarize(view) for view in found])
    views, next_cursor = await service.list_patients(session, vault, audit, actor, limit=limit, cursor=cursor)
    return Page[PatientSummary](items=[service.summarize(view) for view in views], next_cursor=next_cursor)


@router.get("/patients/{patient_id}", response_model=PatientRead, response_model_exclude_unset=True)
async def get_patient(
    patient_id: uuid.UUID, actor: Reader, session: Session, vault: Vault, audit: Audit, response: Response
) -> PatientRead:
    view = await service.get_patient(session, vault, audit, actor, patient_id)
    _with_etag(response, view)
    return service.present(actor, view)


@router.patch("/patients/{patient_id}", response_model=PatientRead, response_model_exclude_unset=True)
async def update_patient(
    patient_id: uuid.UUID,
    body: PatientUpdate,
    actor: Writer,
    session: Session,
    vault: Vault,
    audit: Audit,
    response: Response,
    if_match: IfMatch = None,
) -> PatientRead:
    """Correct demographics. Send the ETag you read as `If-Match`: 428 without it, 412 if it is stale."""
    view = await service.update_patient(
        session, vault, audit, actor, patient_id, body, expected_version=expected_version(if_match)
    )
    _with_etag(response, view)
    return service.present(actor, view)


@router.post("/patients/{patient_id}/merge", response_model=PatientRead, response_model_exclude_unset=True)
async def merge_patient(
    patient_id: uuid.UUID, body: PatientMerge, actor: Merger, session: Session, audit: Audit
) -> PatientRead:
    """Merge this duplicate into `survivor_id`: it stays, with its history, marked merged and pointing there."""
    duplicate = await service.merge_patients(session, audit, actor, patient_id, body)
    return service.present(actor, service.PatientView(duplicate))


@router.get("/me/patient", response_model=PatientRead, response_model_exclude_unset=True)
async def get_own_patient(actor: Self, session: Session, vault: Vault, audit: Audit, response: Response) -> PatientRead:
    view = await service.get_own_patient(session, vault, audit, actor)
    _with_etag(response, view)
    return service.present(actor, view)


@router.patch("/me/patient", response_model=PatientRead, response_model_exclude_unset=True)
async def correct_own_patient(
    body: PatientUpdate,
    actor: Self,
    session: Session,
    vault: Vault,
    audit: Audit,
    response: Response,
    if_match: IfMatch = None,
) -> PatientRead:
    """Correct your own contact details (phone, e-mail, address, emergency contact, language, gender)."""
    patient_id = await service.own_patient_id(session, actor)
    view = await service.update_patient(
        session,
        vault,
        audit,
        actor,
        patient_id,
        body,
        expected_version=expected_version(if_match),
        allowed_fields=SELF_CORRECTABLE_FIELDS,
    )
    _with_etag(response, view)
    return service.present(actor, view)
