"""Revoked sessions, checked on every authenticated request without touching the database.

Embedded mode keeps them in process memory; with Redis configured every server shares them. Either way the
database stays the record (``auth_sessions.revoked_at``) and each server re-seeds the store from it at
start-up, so a restart does not bring a logged-out token back to life.
"""

from __future__ import annotations

import time
import uuid
from typing import Protocol

from redis.asyncio import Redis
from redis.exceptions import RedisError

from sehat.core.errors import ServiceUnavailable


class RevokedSessions(Protocol):
    async def revoke(self, session_id: uuid.UUID, ttl_seconds: int) -> None: ...

    async def is_revoked(self, session_id: uuid.UUID) -> bool: ...


class MemoryRevokedSessions:
    def __init__(self) -> None:
        self._until: dict[uuid.UUID, float] = {}

    async def revoke(self, session_id: uuid.UUID, ttl_seconds: int) -> None:
        now = time.time()
        if len(self._until) > 10_000:
            self._until = {sid: until for sid, until in self._until.items() if until > now}
        self._until[session_id] = max(self._until.get(session_id, 0.0), now + ttl_seconds)

    async def is_revoked(self, session_id: uuid.UUID) -> bool:
        until = self._until.get(session_id)
        return until is not None and until > time.time()


class RedisRevokedSessions:
    """Fails closed: if Redis cannot answer, the request is refused with 503 rather than let through."""

    def __init__(self, redis: Redis, prefix: str) -> None:
        self._redis = redis
        self._prefix = prefix + "revoked:"

    async def revoke(self, session_id: uuid.UUID, ttl_seconds: int) -> None:
        try:
            await self._redis.set(self._prefix + session_id.hex, b"1", ex=max(1, ttl_seconds))
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable("The session store is not answering.", code="session_store_unavailable") from exc

    async def is_revoked(self, session_id: uuid.UUID) -> bool:
        try:
            return bool(await self._redis.exists(self._prefix + session_id.hex))
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable("The session store is not answering.", code="session_store_unavailable") from exc
