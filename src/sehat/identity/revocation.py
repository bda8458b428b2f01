"""Revoked sessions, checked on every authenticated request in memory: no round trip to anything.

Embedded mode keeps them in process memory. With Redis configured, every server still answers from its
own memory, kept current through Redis: a revocation is stored as a key (expiring when the session's last
access token would) and announced on a pub/sub channel; each server subscribes first and then loads the
stored keys, so nothing announced in between is missed. The subscription is pinged twice a second; a
server whose feed has been silent for two seconds cannot know of new revocations, so it refuses every
check with 503 (fail closed) until it has re-subscribed and reloaded. Other servers normally learn of a
revocation within milliseconds, and never later than that two-second bound.

The database stays the record (``auth_sessions.revoked_at``): each server re-seeds its memory from it at
start-up and periodically, so a restart does not bring a logged-out token back to life.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from typing import Any, Protocol

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

from sehat.core.errors import ServiceUnavailable
from sehat.core.redis_feed import FeedWatch, await_confirmation, stop_follower

log = structlog.get_logger(__name__)

_PRUNE_ABOVE = 10_000
_RECONNECT_DELAY_SECONDS = 0.5
# The feed is pinged this often; a server that has heard nothing on it for FEED_STALE_AFTER_SECONDS (a
# silently dead connection, a partition) refuses checks until it has re-subscribed and reloaded. This is
# the longest a revocation made elsewhere can go unseen by a server.
_PING_EVERY_SECONDS = 0.5
FEED_STALE_AFTER_SECONDS = 2.0


def _unavailable() -> ServiceUnavailable:
    return ServiceUnavailable("The session store is not answering.", code="session_store_unavailable")


class RevokedSessions(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def revoke(self, session_id: uuid.UUID, ttl_seconds: int) -> None:
        """Revoke everywhere: this server at once, the others through the shared store."""

    async def remember(self, session_id: uuid.UUID, ttl_seconds: int) -> None:
        """Note a revocation already recorded elsewhere (the database), in this server's memory only."""

    async def is_revoked(self, session_id: uuid.UUID) -> bool: ...


class MemoryRevokedSessions:
    def __init__(self) -> None:
        self._until: dict[uuid.UUID, float] = {}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def revoke(self, session_id: uuid.UUID, ttl_seconds: int) -> None:
        self.add(session_id, ttl_seconds)

    async def remember(self, session_id: uuid.UUID, ttl_seconds: int) -> None:
        self.add(session_id, ttl_seconds)

    def add(self, session_id: uuid.UUID, ttl_seconds: int) -> None:
        now = time.time()
        if len(self._until) > _PRUNE_ABOVE:
            self._until = {sid: until for sid, until in self._until.items() if until > now}
        self._until[session_id] = max(self._until.get(session_id, 0.0), now + ttl_seconds)

    async def is_revoked(self, session_id: uuid.UUID) -> bool:
        return self.revoked_now(session_id)

    def revoked_now(self, session_id: uuid.UUID) -> bool:
        until = self._until.get(session_id)
        return until is not None and until > time.time()


class RedisRevokedSessions:
    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._key_prefix = prefix + "revoked:"
        self._channel = prefix + "revocations"
        self._memory = MemoryRevokedSessions()
        self._in_sync = False
        self._feed = FeedWatch(ping_every=_PING_EVERY_SECONDS, stale_after=FEED_STALE_AFTER_SECONDS)
        self._follower: asyncio.Task[None] | None = None
        self._first_sync = asyncio.Event()

    async def start(self) -> None:
        self._follower = asyncio.create_task(self._follow())
        # Give the first subscription a moment so a healthy start answers at once; a dead Redis does not
        # hold up start-up (checks fail closed until it answers).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._first_sync.wait(), timeout=2)

    async def stop(self) -> None:
        # Not a single cancel() and await: the follower can lose a cancellation (see stop_follower).
        await stop_follower(self._follower)

    @property
    def in_sync(self) -> bool:
        return self._in_sync and self._feed.fresh

    async def revoke(self, session_id: uuid.UUID, ttl_seconds: int) -> None:
        ttl = max(1, ttl_seconds)
        try:
            await self._redis.set(self._key_prefix + session_id.hex, b"1", ex=ttl)
            await self._redis.publish(self._channel, f"{session_id.hex}:{ttl}")
        except (RedisError, OSError) as exc:
            raise _unavailable() from exc
        self._memory.add(session_id, ttl)

    async def remember(self, session_id: uuid.UUID, ttl_seconds: int) -> None:
        self._memory.add(session_id, ttl_seconds)

    async def is_revoked(self, session_id: uuid.UUID) -> bool:
        if not self.in_sync:
            raise _unavailable()
        return self._memory.revoked_now(session_id)

    async def _follow(self) -> None:
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(self._channel)
                await await_confirmation(pubsub, "subscribe")
                await self._load_stored()
                # listen() counts the feed as heard before it first awaits: in sync with a fresh feed.
                self._in_sync = True
                self._first_sync.set()
                await self._feed.listen(pubsub, self._on_message)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._in_sync:
                    log.warning("revocation_subscription_lost", exc_type=type(exc).__name__)
                self._in_sync = False
                await asyncio.sleep(_RECONNECT_DELAY_SECONDS)
            finally:
                self._in_sync = False
                with contextlib.suppress(Exception):
                    await pubsub.aclose()

    async def _load_stored(self) -> None:
        async for key in self._redis.scan_iter(match=self._key_prefix + "*", count=1000):
            ttl = await self._redis.ttl(key)
            if ttl > 0:
                name = key.decode() if isinstance(key, bytes) else str(key)
                self._memory.add(uuid.UUID(hex=name.removeprefix(self._key_prefix)), ttl)

    def _on_message(self, message: dict[str, Any]) -> None:
        if message.get("type") == "message":
            self._apply(message["data"])

    def _apply(self, data: bytes | str) -> None:
        text = data.decode() if isinstance(data, bytes) else data
        session_hex, _, ttl = text.partition(":")
        try:
            self._memory.add(uuid.UUID(hex=session_hex), int(ttl))
        except ValueError:
            log.warning("revocation_message_malformed")
