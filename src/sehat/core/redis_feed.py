"""What every Redis pub/sub follower in sehat does the same way (session revocations, realtime messages)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, NoReturn


class FeedSilent(ConnectionError):
    """Nothing, not even the answer to a ping, came on a pub/sub connection for too long: the connection may
    look open (a half-open TCP link, a partition, a server that dropped the client unnoticed) but is dead."""


async def await_confirmation(pubsub: Any, kind: str) -> None:
    """Wait (up to 5 s) for Redis to confirm the ``kind`` (``subscribe`` or ``psubscribe``) just sent on
    ``pubsub``: only then are messages published to it sure to arrive, so only then may a follower read the
    stored state it catches up from."""
    for _ in range(50):
        message = await pubsub.get_message(timeout=0.1)
        if message is not None and message.get("type") == kind:
            return
    raise ConnectionError("no subscription confirmation from Redis")


async def stop_follower(follower: asyncio.Task[Any] | None) -> None:
    """Cancel a follower task and wait until it has ended.

    Cancelled again every 0.1 s until it has, because one cancellation can be lost: on Python 3.11 redis-py
    sends every command under ``asyncio.wait_for`` (its default ``socket_timeout``), and that ``wait_for``
    returns normally, dropping the cancellation, when cancelled just after the send completed (fixed in 3.12).
    A follower that lost it goes on pinging and re-subscribing for ever, and the app never finishes shutting
    down. It happens after the event loop was blocked: the followers' read timeouts, their pings and the
    shutdown then all fall in the same few turns of the loop."""
    if follower is None:
        return
    while not follower.done():
        follower.cancel()
        # asyncio.wait, not ``await follower`` under suppress(CancelledError): that would also swallow a
        # cancellation of the caller itself.
        await asyncio.wait({follower}, timeout=0.1)
    if not follower.cancelled():
        follower.result()  # a follower that ended otherwise: its error is the caller's


class FeedWatch:
    """Proof that a follower's pub/sub feed is alive. A dead connection does not always raise: a follower
    that only waits for messages would wait forever. So the connection is pinged every ``ping_every``
    seconds, and a feed on which nothing (a message or a pong) has been heard for ``stale_after`` seconds
    counts as lost."""

    def __init__(self, *, ping_every: float, stale_after: float) -> None:
        self.ping_every = ping_every
        self.stale_after = stale_after
        self._last_heard = 0.0  # nothing heard yet: stale until a subscription is confirmed

    @property
    def fresh(self) -> bool:
        return time.monotonic() - self._last_heard <= self.stale_after

    async def listen(self, pubsub: Any, hand_on: Callable[[dict[str, Any]], None]) -> NoReturn:
        """Hand every message arriving on ``pubsub`` (pongs included) to ``hand_on``, pinging as it goes, until
        the feed fails: an error from the connection, or ``FeedSilent``. Called once the subscription has
        been confirmed, which counts as hearing from the feed."""
        self._last_heard = last_ping = time.monotonic()
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=self.ping_every)
            now = time.monotonic()
            if message is not None:
                self._last_heard = now
                hand_on(message)
            if now - last_ping >= self.ping_every:
                await pubsub.ping()
                last_ping = now
            if now - self._last_heard > self.stale_after:
                raise FeedSilent("the pub/sub feed went silent")
