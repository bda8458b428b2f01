"""Master key ring and AES-256-GCM sealing with associated data.

A sealed value is ``b"\\x01" | len(kid) | kid | nonce(12) | ciphertext+tag``. The key id travels with the
ciphertext so that a new primary key can be introduced without re-encrypting everything at once, and the
associated data names where the value lives (table, column, row), so a ciphertext copied elsewhere fails.
The master keys themselves never encrypt data: each is stretched with HKDF into a key-encryption key.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import stat
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from sehat.settings import Settings

_FORMAT_VERSION = 1
_NONCE_BYTES = 12
_KID_PATTERN = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


class KeyRingError(RuntimeError):
    """The master key configuration is missing or malformed. Raised at start-up, never per request."""


class DecryptionError(RuntimeError):
    """A sealed value did not open: wrong key, wrong place, or tampered. Carries no data."""


def _hkdf(master_key: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master_key)


def _derive_kek(master_key: bytes, kid: str) -> AESGCM:
    return AESGCM(_hkdf(master_key, b"sehat/kek/" + kid.encode()))


@dataclass(frozen=True)
class KeyRing:
    primary_kid: str
    _ciphers: dict[str, AESGCM]
    _masters: dict[str, bytes]

    @classmethod
    def parse(cls, text: str) -> KeyRing:
        entries = [part.strip() for part in re.split(r"[,\n]", text) if part.strip() and not part.startswith("#")]
        if not entries:
            raise KeyRingError("the master key ring is empty")
        ciphers: dict[str, AESGCM] = {}
        masters: dict[str, bytes] = {}
        for entry in entries:
            kid, sep, encoded = entry.partition(":")
            if not sep or not _KID_PATTERN.match(kid):
                raise KeyRingError("each master key entry must look like 'kid:base64url-key'")
            try:
                key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            except ValueError as exc:
                raise KeyRingError(f"master key {kid!r} is not base64url") from exc
            if len(key) != 32:
                raise KeyRingError(f"master key {kid!r} must be 32 bytes")
            if kid in ciphers:
                raise KeyRingError(f"master key id {kid!r} appears twice")
            ciphers[kid] = _derive_kek(key, kid)
            masters[kid] = key
        return cls(primary_kid=entries[0].partition(":")[0], _ciphers=ciphers, _masters=masters)

    @staticmethod
    def generate_entry(kid: str = "k1") -> str:
        return f"{kid}:{base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip('=')}"

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(self._ciphers)

    def derive(self, purpose: str, kid: str | None = None) -> tuple[str, bytes]:
        """A 32-byte key for one purpose (an HMAC key, a signing seed), from the primary or a named master key.

        Keys for different purposes are independent, and none of them can be computed without the master key.
        """
        kid = kid or self.primary_kid
        master = self._masters.get(kid)
        if master is None:
            raise DecryptionError("no master key with that id in the ring")
        return kid, _hkdf(master, f"sehat/{purpose}/{kid}".encode())

    def seal(self, plaintext: bytes, associated_data: bytes) -> bytes:
        kid = self.primary_kid.encode()
        nonce = os.urandom(_NONCE_BYTES)
        body = self._ciphers[self.primary_kid].encrypt(nonce, plaintext, kid + b"|" + associated_data)
        return bytes([_FORMAT_VERSION, len(kid)]) + kid + nonce + body

    def open(self, sealed: bytes, associated_data: bytes) -> bytes:
        if len(sealed) < 2 or sealed[0] != _FORMAT_VERSION:
            raise DecryptionError("unknown sealed format")
        kid_end = 2 + sealed[1]
        kid = sealed[2:kid_end]
        cipher = self._ciphers.get(kid.decode(errors="replace"))
        if cipher is None:
            raise DecryptionError("sealed under a key that is not in the ring")
        nonce, body = sealed[kid_end : kid_end + _NONCE_BYTES], sealed[kid_end + _NONCE_BYTES :]
        try:
            return cipher.decrypt(nonce, body, kid + b"|" + associated_data)
        except InvalidTag as exc:
            raise DecryptionError("sealed value failed authentication") from exc


def load_key_ring(settings: Settings) -> KeyRing:
    """Production takes the ring from the environment or a file; development creates a file once."""
    if settings.master_key is not None:
        return KeyRing.parse(settings.master_key.get_secret_value())
    path = settings.default_master_key_path()
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if settings.is_production and mode & 0o077:
            raise KeyRingError(f"{path} must not be readable by group or others (chmod 600)")
        return KeyRing.parse(path.read_text())
    if settings.is_production:
        raise KeyRingError(f"master key file {path} does not exist; production never generates keys")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(KeyRing.generate_entry() + "\n")
    return KeyRing.parse(path.read_text())


def associated_data(table: str, column: str, row_id: object, organization_id: object | None = None) -> bytes:
    return f"{organization_id or '-'}|{table}|{column}|{row_id}".encode()
