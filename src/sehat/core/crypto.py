"""Master key ring and AES-256-GCM sealing with associated data.

A sealed value is ``b"\\x01" | len(kid) | kid | nonce(12) | ciphertext+tag``. The key id travels with the
ciphertext so that a new primary key can be introduced without re-encrypting everything at once, and the
associated data names where the value lives (table, column, row), so a ciphertext copied elsewhere fails.
The master keys themselves never encrypt data: each is stretched with HKDF into a key-encryption key.

Field encryption under per-record data keys lives here too (see the section header below), so patients,
records, messages and documents share one cipher.
"""

from __future__ import annotations

import base64
import os
import re
import secrets
import stat
import uuid
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


# --- field encryption under per-record data keys ----------------------------------------------------------
# Field encryption under per-record data keys (DESIGN §4), the foundation of the patient vault.
#
# Each record owner (a patient, later perhaps a document) has its own random 32-byte data key (DEK). Field values
# are encrypted with AES-256-GCM under that DEK; the DEK itself is stored only wrapped by the master key ring
# (``KeyRing.seal``), whose output names the key-encryption key that wrapped it. Two consequences follow:
#
# * Rotation re-wraps one small value per owner (:func:`rewrap_data_key`) instead of re-encrypting every field,
#   and can run online because the old master key keeps unwrapping until every DEK names the new one
#   (:func:`wrapped_key_id` tells the rotation job which rows are left).
# * Erasure (crypto-shredding) destroys the wrapped DEK; every ciphertext of that owner becomes noise, including
#   copies in backups of the field tables.
#
# A field ciphertext is ``version(1) | nonce(12) | ciphertext+tag``. It carries no key id because its key is
# found through its owner row, and the owner row is bound into the associated data together with organization,
# table and column: a ciphertext copied into another row, column, table or organization fails authentication.
# The wrapped DEK is bound the same way to its organization, owner table and owner row.
#
# Associated data is built from length-prefixed parts under a fixed label, so no choice of ids can make two
# different places encode to the same bytes and a field ciphertext can never be accepted as a wrapped key.
#
# ``None`` is never encrypted: a missing value is stored as SQL NULL by the caller, which does reveal that the
# field is empty, and decrypting NULL is the caller's business too (there is nothing to authenticate).
#
# Keys are never logged and never appear in exception messages; every failure to decrypt is a
# :class:`~sehat.core.crypto.DecryptionError` with a fixed message. Python cannot reliably wipe memory, so the
# discipline is to keep a DEK only as long as a unit of work needs it: :func:`open_field_cipher` unwraps straight
# into a :class:`FieldCipher`, which keeps only the AES context, not the raw key bytes.

DATA_KEY_BYTES = 32
_FIELD_FORMAT_VERSION = 1
_TAG_BYTES = 16
_FIELD_LABEL = b"sehat/field/v1"
_DATA_KEY_LABEL = b"sehat/data-key/v1"

Identifier = uuid.UUID | int | str


def _encode_place(label: bytes, *parts: Identifier) -> bytes:
    """Length-prefixed encoding: ``'a|b', 'c'`` and ``'a', 'b|c'`` must not collide as ``associated_data`` would."""
    encoded = [label]
    for part in parts:
        if part is None or isinstance(part, bool):
            # A None id would silently bind to the text "None", shared by every row missing its id.
            raise ValueError("an identifier for associated data is missing")
        raw = str(part).encode()
        encoded.append(len(raw).to_bytes(4, "big") + raw)
    return b"".join(encoded)


def new_data_key() -> bytes:
    return secrets.token_bytes(DATA_KEY_BYTES)


def _data_key_place(organization_id: Identifier, owner_table: str, owner_id: Identifier) -> bytes:
    return _encode_place(_DATA_KEY_LABEL, organization_id, owner_table, owner_id)


def wrap_data_key(
    key_ring: KeyRing, dek: bytes, *, organization_id: Identifier, owner_table: str, owner_id: Identifier
) -> bytes:
    """Seal a DEK under the primary master key, bound to its owner row so it cannot be moved to another owner."""
    if len(dek) != DATA_KEY_BYTES:
        raise ValueError("a data key must be 32 bytes")
    return key_ring.seal(dek, _data_key_place(organization_id, owner_table, owner_id))


def unwrap_data_key(
    key_ring: KeyRing, wrapped: bytes, *, organization_id: Identifier, owner_table: str, owner_id: Identifier
) -> bytes:
    dek = key_ring.open(wrapped, _data_key_place(organization_id, owner_table, owner_id))
    if len(dek) != DATA_KEY_BYTES:
        raise DecryptionError("wrapped data key has the wrong length")
    return dek


def rewrap_data_key(
    key_ring: KeyRing, wrapped: bytes, *, organization_id: Identifier, owner_table: str, owner_id: Identifier
) -> bytes:
    """Unwrap with whichever master key the value names and wrap again under the primary; the DEK is unchanged,
    so every field ciphertext of the owner still decrypts. Always re-seals (fresh nonce) and always verifies, so a
    rotation job that skips rows already under the primary should do so by :func:`wrapped_key_id` first."""
    place = _data_key_place(organization_id, owner_table, owner_id)
    dek = key_ring.open(wrapped, place)
    if len(dek) != DATA_KEY_BYTES:
        raise DecryptionError("wrapped data key has the wrong length")
    return key_ring.seal(dek, place)


def wrapped_key_id(wrapped: bytes) -> str:
    """The master key id a wrapped DEK names, read without any key: rotation progress is a count of these."""
    # Mirrors the header KeyRing.seal writes: version(1) | len(kid) | kid | ...
    if len(wrapped) < 2 or wrapped[0] != 1 or len(wrapped) < 2 + wrapped[1] + _NONCE_BYTES + _TAG_BYTES:
        raise DecryptionError("unknown wrapped data key format")
    try:
        return wrapped[2 : 2 + wrapped[1]].decode("ascii")
    except UnicodeDecodeError:
        raise DecryptionError("unknown wrapped data key format") from None


class FieldCipher:
    """AES-256-GCM over the fields of one owner. Create per unit of work; do not cache across requests."""

    __slots__ = ("_aead",)

    def __init__(self, dek: bytes) -> None:
        if len(dek) != DATA_KEY_BYTES:
            raise ValueError("a data key must be 32 bytes")
        self._aead = AESGCM(dek)

    def __repr__(self) -> str:
        return "FieldCipher(<key hidden>)"

    @staticmethod
    def _place(organization_id: Identifier, table: str, column: str, row_id: Identifier) -> bytes:
        # The version byte is bound too, so a future format cannot be downgraded into this one.
        return _encode_place(_FIELD_LABEL + bytes([_FIELD_FORMAT_VERSION]), organization_id, table, column, row_id)

    def encrypt(
        self, value: str | bytes, *, organization_id: Identifier, table: str, column: str, row_id: Identifier
    ) -> bytes:
        if isinstance(value, str):
            plaintext = value.encode()
        elif isinstance(value, bytes | bytearray | memoryview):
            plaintext = bytes(value)
        else:
            # None in particular: NULL is the caller's to store, never a ciphertext of "None".
            raise TypeError("only str or bytes values are encrypted")
        nonce = os.urandom(_NONCE_BYTES)
        body = self._aead.encrypt(nonce, plaintext, self._place(organization_id, table, column, row_id))
        return bytes([_FIELD_FORMAT_VERSION]) + nonce + body

    def decrypt(
        self, ciphertext: bytes, *, organization_id: Identifier, table: str, column: str, row_id: Identifier
    ) -> bytes:
        if len(ciphertext) < 1 + _NONCE_BYTES + _TAG_BYTES or ciphertext[0] != _FIELD_FORMAT_VERSION:
            raise DecryptionError("unknown field ciphertext format")
        nonce, body = ciphertext[1 : 1 + _NONCE_BYTES], ciphertext[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, self._place(organization_id, table, column, row_id))
        except InvalidTag:
            raise DecryptionError("field ciphertext failed authentication") from None

    def decrypt_text(
        self, ciphertext: bytes, *, organization_id: Identifier, table: str, column: str, row_id: Identifier
    ) -> str:
        plaintext = self.decrypt(ciphertext, organization_id=organization_id, table=table, column=column, row_id=row_id)
        try:
            return plaintext.decode()
        except UnicodeDecodeError:
            # Authentic but not text: a bytes field read as text. Say nothing about its content.
            raise DecryptionError("field does not hold text") from None


def open_field_cipher(
    key_ring: KeyRing, wrapped: bytes, *, organization_id: Identifier, owner_table: str, owner_id: Identifier
) -> FieldCipher:
    """Unwrap an owner's DEK straight into a cipher, so the raw key bytes never reach the caller."""
    return FieldCipher(
        unwrap_data_key(key_ring, wrapped, organization_id=organization_id, owner_table=owner_table, owner_id=owner_id)
    )
