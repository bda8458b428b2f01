"""The lobby board's page (``/boards/{id}``) and its WebSocket (``/ws/boards/{id}``).

The page is a shell: its one inline script reads the display key from the address's fragment (which browsers
never send to a server), keeps it, and opens the socket. The socket accepts, then closes with 1008 (policy
violation) unless the connection comes from this server's own origin (or from a client that sends no Origin:
a signage player, not a browser) and its first message carries the board's own display key. From then on it
sends the board's whole state after every change, with the board's sequence number; a screen that reconnects
says the last sequence it has and gets the current state at once if it is behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import uuid
from importlib.resources import files
from string import Template
from urllib.parse import urlsplit

import orjson
import structlog
from fastapi import APIRouter, Request, WebSocket, WebSocketDisconnect, status
from starlette.responses import HTMLResponse

from sehat.core.realtime import Broadcaster, Subscription
from sehat.queue.boards import BoardAnnouncer, board_channel
from sehat.web.pages import csp_hash

router = APIRouter(include_in_schema=False)
log = structlog.get_logger(__name__)

# A screen must say its key promptly; an idle socket holding a slot open is refused.
HELLO_TIMEOUT_SECONDS = 10.0
_MAX_HELLO_BYTES = 1024

_PAGE = Template((files("sehat.web") / "templates" / "board.html").read_text(encoding="utf-8"))
_STYLE = re.findall(r"<style>(.*?)</style>", _PAGE.template, re.DOTALL)
_SCRIPT = re.findall(r"<script>(.*?)</script>", _PAGE.template, re.DOTALL)
if len(_STYLE) != 1 or len(_SCRIPT) != 1:
    raise RuntimeError("board.html must hold exactly one <style> and one <script>: their hashes are its policy")


def _page_policy(host: str) -> str:
    return "; ".join(
        (
            "default-src 'none'",
            f"script-src {csp_hash(_SCRIPT[0])}",
            f"style-src {csp_hash(_STYLE[0])}",
            # Its own socket only; named with both schemes because older browsers do not read 'self' as ws(s).
            f"connect-src 'self' ws://{host} wss://{host}",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


@router.get("/boards/{board_id}")
async def board_page(board_id: uuid.UUID, request: Request) -> HTMLResponse:
    """The same shell for every id: what a board shows is only ever sent to the holder of its key."""
    host = request.headers.get("host", "localhost")
    page = _PAGE.substitute(board_id=html.escape(str(board_id)))
    headers = {"Content-Security-Policy": _page_policy(host), "Cache-Control": "no-store"}
    return HTMLResponse(page, headers=headers)


def _same_origin(websocket: WebSocket) -> bool:
    origin = websocket.headers.get("origin")
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == websocket.headers.get("host", "").lower()


async def _hello(websocket: WebSocket) -> tuple[str, int | None] | None:
    """The screen's first message: ``{"key": ..., "seen": last sequence or null}``."""
    try:
        text = await asyncio.wait_for(websocket.receive_text(), timeout=HELLO_TIMEOUT_SECONDS)
        if len(text) > _MAX_HELLO_BYTES:
            return None
        hello = orjson.loads(text)
        key, seen = hello["key"], hello.get("seen")
    except (TimeoutError, WebSocketDisconnect, KeyError, TypeError, ValueError, RuntimeError):
        return None
    if not isinstance(key, str) or not (seen is None or (isinstance(seen, int) and not isinstance(seen, bool))):
        return None
    return key, seen


async def _refuse(websocket: WebSocket, reason: str) -> None:
    log.info("board_socket_refused", reason=reason)
    with contextlib.suppress(RuntimeError, WebSocketDisconnect):
        await websocket.close(code=status.WS_1008_POLICY_VIOLATION)


@router.websocket("/ws/boards/{board_id}")
async def board_socket(websocket: WebSocket, board_id: uuid.UUID) -> None:
    await websocket.accept()
    if not _same_origin(websocket):
        await _refuse(websocket, "foreign_origin")
        return
    hello = await _hello(websocket)
    if hello is None:
        await _refuse(websocket, "no_hello")
        return
    key, seen = hello
    announcer: BoardAnnouncer = websocket.app.state.boards
    board = await announcer.open_board(board_id, key)
    if board is None:
        await _refuse(websocket, "wrong_key")
        return
    await announcer.ensure_published(board)
    broadcaster: Broadcaster = websocket.app.state.realtime
    async with broadcaster.subscribe(board_channel(board.id), seen=seen) as updates:
        sender = asyncio.create_task(_send_each(websocket, updates))
        try:
            # A screen sends nothing after its hello; reading is how its going away is noticed.
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
        finally:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await sender


async def _send_each(websocket: WebSocket, updates: Subscription) -> None:
    async for envelope in updates:
        await websocket.send_text(envelope.text)
