"""A benchmark build of sehat: the real app plus one route that reads one record and audits the read, the way
every read of patient data does. ``SEHAT_BENCH_AUDIT=off`` serves the same route without the audit entry, so
the two can be compared on the same server code. Only the benchmark serves this module; sehat itself has no
setting that turns auditing off.

The record is a facility row, read through the same scoped query, row-level security and unit of work a
patient read goes through (the patient registry arrives in issue 4).
"""

from __future__ import annotations

import os
import uuid
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.access.anomaly import PATIENT_READ
from sehat.app import create_app
from sehat.core.actor import Actor
from sehat.core.audit import AuditEntry, Outcome
from sehat.core.errors import NotFound
from sehat.core.http import api_router, get_session
from sehat.core.scoping import scoped_select
from sehat.identity.deps import require
from sehat.identity.permissions import FACILITY_READ
from sehat.tenancy.models import Facility

AUDIT_SWITCH = "SEHAT_BENCH_AUDIT"
RECORD_PATH = "/bench/records/{record_id}"
# Stands for the patient whose record is read; the audit entry names one, as a patient read's will.
BENCH_PATIENT = uuid.UUID("00000000-0000-4000-8000-00000000be0c")


def create_bench_app() -> FastAPI:
    app = create_app()
    audited = os.environ.get(AUDIT_SWITCH, "on") == "on"
    router = api_router()

    @router.get(RECORD_PATH)
    async def read_record(
        record_id: uuid.UUID,
        request: Request,
        actor: Annotated[Actor, Depends(require(FACILITY_READ))],
        session: Annotated[AsyncSession, Depends(get_session)],
    ) -> dict[str, Any]:
        statement = scoped_select(Facility, actor).where(Facility.id == record_id)
        if audited:
            entry = AuditEntry(
                action=PATIENT_READ,
                outcome=Outcome.success,
                resource_type="facility",
                resource_id=str(record_id),
                patient_id=BENCH_PATIENT,
                details={"facility_id": str(record_id)},
            )
            statement = request.app.state.audit.attach(session, actor, entry, statement)
        record = await session.scalar(statement)
        if record is None:
            raise NotFound("Record not found.", code="record_not_found")
        return {"id": str(record.id), "name": record.name, "timezone": record.timezone}

    app.include_router(router)
    return app
