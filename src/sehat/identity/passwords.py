"""Argon2id password hashing. Verification runs in a worker thread: it is deliberately slow and CPU-bound."""

from __future__ import annotations

import asyncio

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from sehat.settings import Settings


class Passwords:
    def __init__(self, settings: Settings) -> None:
        self._hasher = PasswordHasher(
            time_cost=settings.argon2_time_cost,
            memory_cost=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            type=Type.ID,
        )
        self.min_length = settings.password_min_length
        self.max_length = settings.password_max_length
        # Verified against when the user does not exist, so unknown and known accounts cost the same.
        self._decoy_hash = self._hasher.hash("decoy password that never matches anything")

    def hash(self, password: str) -> str:
        return self._hasher.hash(password)

    async def hash_async(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        return await asyncio.to_thread(self._verify_sync, stored_hash or self._decoy_hash, password)

    def _verify_sync(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, stored_hash: str) -> bool:
        return self._hasher.check_needs_rehash(stored_hash)

    def problems_with(self, password: str) -> str | None:
        """Why a new password is refused, or None. Length only: composition rules do not add strength."""
        if len(password) < self.min_length:
            return f"must be at least {self.min_length} characters"
        if len(password) > self.max_length:
            return f"must be at most {self.max_length} characters"
        if not password.strip():
            return "must not be blank"
        return None
