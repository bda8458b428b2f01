"""A benchmark build of sehat: the real app plus one route that reads one record and audits the read, the way
every read of patient data does. ``SEHAT_BENCH_AUDIT=off`` serves the same route without the audit entry, so
the two can be compared on the same server code. Only the benchmark serves this module; sehat itself has no
setting that turns auditing off.

The record is a facility row, read the way a hot patient read goes (the patient registry arrives in issue 4):
one statement on the request's connection, inside its unit of work and tenant scope, with the audit entry's
INSERT travelling in the same statement (``AuditLog.fetch_with_entry``).
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
from sehat.core.db import driver_connection
from sehat.core.errors import NotFound
from sehat.core.http import api_router, get_session
from sehat.identity.deps import require
from sehat.identity.permissions import FACILITY_READ

AUDIT_SWITCH = "SEHAT_BENCH_AUDIT"
RECORD_PATH = "/bench/records/{record_id}"
# Stands for the patient whose record is read; the audit entry names one, as a patient read's will.
BENCH_PATIENT = uuid.UUID("00000000-0000-4000-8000-00000000be0c")
# A patient read's shape: one row by id within the caller's organization (row-level security applies too).
READ_SQL = "SELECT id, name, timezone FROM facilities WHERE id = $1 AND organization_id = $2"


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
        # The same one statement both ways, on the request's connection inside its transaction (scope set).
        arguments = (record_id, actor.organization_id)
        if audited:
            entry = AuditEntry(
                action=PATIENT_READ,
                outcome=Outcome.success,
                resource_type="facility",
                resource_id=str(record_id),
                patient_id=BENCH_PATIENT,
                details={"facility_id": str(record_id)},
            )
            rows = await request.app.state.audit.fetch_with_entry(session, actor, entry, READ_SQL, *arguments)
        else:
            driver = await session.run_sync(driver_connection)
            rows = await driver.fetch(READ_SQL, *arguments)
        if not rows:
            raise NotFound("Record not found.", code="record_not_found")
        record = rows[0]
        return {"id": str(record["id"]), "name": record["name"], "timezone": record["timezone"]}

    app.include_router(router)
    return app
