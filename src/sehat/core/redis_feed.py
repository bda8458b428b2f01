"""What every Redis pub/sub follower in sehat does the same way (session revocations, realtime messages)."""

from __future__ import annotations

from typing import Any


async def await_confirmation(pubsub: Any, kind: str) -> None:
    """Wait (up to 5 s) for Redis to confirm the ``kind`` (``subscribe`` or ``psubscribe``) just sent on
    ``pubsub``: only then are messages published to it sure to arrive, so only then may a follower read the
    stored state it catches up from."""
    for _ in range(50):
        message = await pubsub.get_message(timeout=0.1)
        if message is not None and message.get("type") == kind:
            return
    raise ConnectionError("no subscription confirmation from Redis")
