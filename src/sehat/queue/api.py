"""OPD queue routes: thin, one service call each. The lobby board's page and socket are in ``web.boards``."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Annotated

from fastapi import Depends, Query, Request, status
from sqlalchemy.ext.asyncio import AsyncSession

from sehat.core.actor import Actor, Audience
from sehat.core.audit import AuditLog
from sehat.core.http import api_router, get_audit_log, get_session
from sehat.core.pagination import Page
from sehat.identity.deps import require
from sehat.identity.permissions import (
    BOARD_MANAGE,
    QUEUE_ISSUE,
    QUEUE_MANAGE,
    QUEUE_READ,
    QUEUE_READ_OWN,
    QUEUE_SERVE,
    QUEUE_TRANSFER,
)
from sehat.queue import boards, service
from sehat.queue.models import DisplayBoard, TokenStatus
from sehat.queue.schemas import (
    BoardCreate,
    BoardEnrolled,
    BoardRead,
    CallNext,
    Delay,
    OwnTokenRead,
    Pause,
    QueueCreate,
    QueueMetrics,
    QueueRead,
    TokenCreate,
    TokenRead,
    Transfer,
)
from sehat.queue.service import MAX_TOKEN_PAGE, QueueRuntime

router = api_router(prefix="/api/v1", tags=["queue"])

Session = Annotated[AsyncSession, Depends(get_session)]
Audit = Annotated[AuditLog, Depends(get_audit_log)]
Reader = Annotated[Actor, Depends(require(QUEUE_READ))]
Manager = Annotated[Actor, Depends(require(QUEUE_MANAGE))]
Issuer = Annotated[Actor, Depends(require(QUEUE_ISSUE))]
Server = Annotated[Actor, Depends(require(QUEUE_SERVE))]
Transferrer = Annotated[Actor, Depends(require(QUEUE_TRANSFER))]
OwnReader = Annotated[Actor, Depends(require(QUEUE_READ_OWN, audiences=(Audience.patient,)))]
BoardManager = Annotated[Actor, Depends(require(BOARD_MANAGE))]


async def get_runtime(request: Request) -> QueueRuntime:
    runtime: QueueRuntime = request.app.state.queues
    return runtime


Runtime = Annotated[QueueRuntime, Depends(get_runtime)]


@router.post("/queues", response_model=QueueRead, status_code=status.HTTP_201_CREATED)
async def open_queue(body: QueueCreate, actor: Manager, session: Session, runtime: Runtime) -> QueueRead:
    """Open a queue for a facility (a department or a practitioner), a day and a session, with its rooms."""
    return await service.open_queue(session, runtime, actor, body)


@router.get("/queues", response_model=list[QueueRead])
async def list_queues(
    actor: Reader, session: Session, facility_id: uuid.UUID, day: date | None = None
) -> list[QueueRead]:
    """A facility's queues of one day: the facility's today unless `day` is given."""
    return await service.list_queues(session, actor, facility_id, day)


@router.get("/queues/{queue_id}", response_model=QueueRead)
async def get_queue(queue_id: uuid.UUID, actor: Reader, session: Session) -> QueueRead:
    return await service.get_queue(session, actor, queue_id)


@router.get("/queues/{queue_id}/metrics", response_model=QueueMetrics)
async def queue_metrics(queue_id: uuid.UUID, actor: Reader, session: Session) -> QueueMetrics:
    """Waiting count, longest wait so far, average consultation (call to completion)."""
    return await service.metrics(session, actor, queue_id)


@router.post("/queues/{queue_id}/tokens", response_model=TokenRead, status_code=status.HTTP_201_CREATED)
async def issue_token(
    queue_id: uuid.UUID, body: TokenCreate, actor: Issuer, session: Session, runtime: Runtime
) -> TokenRead:
    """The queue's next number for a walk-in (`patient_id`) or a checked-in appointment (`appointment_id`); 409
    `token_already_active` if the patient already holds one here."""
    return await service.issue_token(session, runtime, actor, queue_id, body)


@router.get("/queues/{queue_id}/tokens", response_model=Page[TokenRead])
async def list_tokens(
    queue_id: uuid.UUID,
    actor: Reader,
    session: Session,
    runtime: Runtime,
    status: TokenStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=MAX_TOKEN_PAGE)] = 50,
    cursor: Annotated[str | None, Query(max_length=20)] = None,
) -> Page[TokenRead]:
    items, next_cursor = await service.list_tokens(
        session, runtime, actor, queue_id, status=status, limit=limit, cursor=cursor
    )
    return Page[TokenRead](items=items, next_cursor=next_cursor)


@router.post("/queues/{queue_id}/call-next", response_model=TokenRead)
async def call_next(
    queue_id: uuid.UUID, body: CallNext, actor: Server, session: Session, runtime: Runtime
) -> TokenRead:
    """Call the next token to a room; 409 `queue_empty`, `queue_paused` or `room_busy`."""
    return await service.call_next(session, runtime, actor, queue_id, body.room_id)


@router.post("/queues/{queue_id}/pause", response_model=QueueRead)
async def pause_queue(queue_id: uuid.UUID, body: Pause, actor: Server, session: Session, runtime: Runtime) -> QueueRead:
    return await service.pause_queue(session, runtime, actor, queue_id, body)


@router.post("/queues/{queue_id}/resume", response_model=QueueRead)
async def resume_queue(queue_id: uuid.UUID, actor: Server, session: Session, runtime: Runtime) -> QueueRead:
    return await service.resume_queue(session, runtime, actor, queue_id)


@router.post("/queues/{queue_id}/delay", response_model=QueueRead)
async def report_delay(
    queue_id: uuid.UUID, body: Delay, actor: Server, session: Session, runtime: Runtime
) -> QueueRead:
    """ "Running N minutes late": every estimate moves; 0 withdraws the delay."""
    return await service.report_delay(session, runtime, actor, queue_id, body)


@router.get("/tokens/{token_id}", response_model=TokenRead)
async def get_token(token_id: uuid.UUID, actor: Reader, session: Session, runtime: Runtime) -> TokenRead:
    return await service.get_token(session, runtime, actor, token_id)


@router.post("/tokens/{token_id}/start", response_model=TokenRead)
async def start_token(token_id: uuid.UUID, actor: Server, session: Session, runtime: Runtime) -> TokenRead:
    return await service.take_step(session, runtime, actor, token_id, service.START_STEP)


@router.post("/tokens/{token_id}/complete", response_model=TokenRead)
async def complete_token(token_id: uuid.UUID, actor: Server, session: Session, runtime: Runtime) -> TokenRead:
    """409 `token_not_called` for a token still waiting."""
    return await service.take_step(session, runtime, actor, token_id, service.COMPLETE_STEP)


@router.post("/tokens/{token_id}/skip", response_model=TokenRead)
async def skip_token(token_id: uuid.UUID, actor: Server, session: Session, runtime: Runtime) -> TokenRead:
    return await service.take_step(session, runtime, actor, token_id, service.SKIP_STEP)


@router.post("/tokens/{token_id}/recall", response_model=TokenRead)
async def recall_token(token_id: uuid.UUID, actor: Server, session: Session, runtime: Runtime) -> TokenRead:
    return await service.take_step(session, runtime, actor, token_id, service.RECALL_STEP)


@router.post("/tokens/{token_id}/no-show", response_model=TokenRead)
async def mark_token_no_show(token_id: uuid.UUID, actor: Server, session: Session, runtime: Runtime) -> TokenRead:
    """A skipped patient who never came back."""
    return await service.take_step(session, runtime, actor, token_id, service.NO_SHOW_STEP)


@router.post("/tokens/{token_id}/cancel", response_model=TokenRead)
async def cancel_token(token_id: uuid.UUID, actor: Issuer, session: Session, runtime: Runtime) -> TokenRead:
    return await service.take_step(session, runtime, actor, token_id, service.CANCEL_STEP)


@router.post("/tokens/{token_id}/transfer", response_model=TokenRead)
async def transfer_token(
    token_id: uuid.UUID, body: Transfer, actor: Transferrer, session: Session, runtime: Runtime
) -> TokenRead:
    """Move the patient to another queue keeping their arrival time; the answer is the new token."""
    return await service.transfer_token(session, runtime, actor, token_id, body)


@router.get("/me/tokens", response_model=list[OwnTokenRead])
async def own_tokens(actor: OwnReader, session: Session, runtime: Runtime) -> list[OwnTokenRead]:
    """A patient's own tokens still in a line: place and estimated call time (poll it, or watch the board)."""
    return await service.own_tokens(session, runtime, actor)


@router.post("/boards", response_model=BoardEnrolled, status_code=status.HTTP_201_CREATED)
async def enrol_board(body: BoardCreate, actor: BoardManager, session: Session, audit: Audit) -> BoardEnrolled:
    """A lobby board and its display key, shown once: open `page_url` on the screen."""
    board, key = await boards.enrol_board(session, audit, actor, body)
    return _enrolled(board, key)


def _enrolled(board: DisplayBoard, key: str) -> BoardEnrolled:
    read = BoardRead.model_validate(board)
    return BoardEnrolled(**read.model_dump(), display_key=key, page_url=f"/boards/{board.id}#key={key}")


@router.post("/boards/{board_id}/key", response_model=BoardEnrolled)
async def replace_board_key(board_id: uuid.UUID, actor: BoardManager, session: Session, audit: Audit) -> BoardEnrolled:
    """A new display key for the board: the old one opens nothing from now on (a lost or replaced screen)."""
    board, key = await boards.replace_key(session, audit, actor, board_id)
    return _enrolled(board, key)


@router.get("/boards", response_model=list[BoardRead])
async def list_boards(actor: BoardManager, session: Session) -> list[BoardRead]:
    return await boards.list_boards(session, actor)
