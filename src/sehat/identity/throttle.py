"""Sign-in throttling: failures are counted per account (from anywhere) and per client address.

An account that reached its limit refuses even the right password until its window passes; the address
limit stops one source from spraying many accounts. Keys are hashed so no e-mail address sits in Redis.
"""

from __future__ import annotations

import hashlib
import math
import time

from limits import RateLimitItemPerSecond
from limits.aio.storage import MemoryStorage, RedisStorage, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from limits.errors import StorageError

from sehat.core.errors import ServiceUnavailable, TooManyRequests
from sehat.settings import Settings


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:32]


class LoginThrottle:
    def __init__(self, settings: Settings, redis_url: str | None) -> None:
        storage: Storage
        if redis_url:
            storage = RedisStorage(
                "async+" + redis_url,
                implementation="redispy",
                key_prefix=settings.redis_key_prefix + "limits",
                wrap_exceptions=True,
            )
        else:
            storage = MemoryStorage()
        self._limiter = MovingWindowRateLimiter(storage)
        window = settings.login_failure_window_seconds
        self._per_account = RateLimitItemPerSecond(settings.login_max_failures_per_account, window)
        self._per_address = RateLimitItemPerSecond(settings.login_max_failures_per_address, window)

    async def check(self, account: str, address: str) -> None:
        """Raise 429 with Retry-After if either the account or the address has used up its failures."""
        try:
            for item, key in (
                (self._per_account, "account:" + _digest(account)),
                (self._per_address, "address:" + address),
            ):
                if not await self._limiter.test(item, "login-failures", key):
                    stats = await self._limiter.get_window_stats(item, "login-failures", key)
                    raise TooManyRequests(
                        "Too many failed sign-in attempts; wait before trying again.",
                        code="login_throttled",
                        retry_after=math.ceil(stats.reset_time - time.time()),
                    )
        except StorageError as exc:
            raise ServiceUnavailable("The throttle store is not answering.", code="throttle_unavailable") from exc

    async def record_failure(self, account: str, address: str) -> None:
        try:
            await self._limiter.hit(self._per_account, "login-failures", "account:" + _digest(account))
            await self._limiter.hit(self._per_address, "login-failures", "address:" + address)
        except StorageError as exc:
            raise ServiceUnavailable("The throttle store is not answering.", code="throttle_unavailable") from exc
