"""Field encryption under per-record data keys (DESIGN §4), the foundation of the patient vault.

Each record owner (a patient, later perhaps a document) has its own random 32-byte data key (DEK). Field values
are encrypted with AES-256-GCM under that DEK; the DEK itself is stored only wrapped by the master key ring
(``KeyRing.seal``), whose output names the key-encryption key that wrapped it. Two consequences follow:

* Rotation re-wraps one small value per owner (:func:`rewrap_data_key`) instead of re-encrypting every field,
  and can run online because the old master key keeps unwrapping until every DEK names the new one
  (:func:`wrapped_key_id` tells the rotation job which rows are left).
* Erasure (crypto-shredding) destroys the wrapped DEK; every ciphertext of that owner becomes noise, including
  copies in backups of the field tables.

A field ciphertext is ``version(1) | nonce(12) | ciphertext+tag``. It carries no key id because its key is
found through its owner row, and the owner row is bound into the associated data together with organization,
table and column: a ciphertext copied into another row, column, table or organization fails authentication.
The wrapped DEK is bound the same way to its organization, owner table and owner row.

Associated data is built from length-prefixed parts under a fixed label, so no choice of ids can make two
different places encode to the same bytes and a field ciphertext can never be accepted as a wrapped key.

``None`` is never encrypted: a missing value is stored as SQL NULL by the caller, which does reveal that the
field is empty, and decrypting NULL is the caller's business too (there is nothing to authenticate).

Keys are never logged and never appear in exception messages; every failure to decrypt is a
:class:`~sehat.core.crypto.DecryptionError` with a fixed message. Python cannot reliably wipe memory, so the
discipline is to keep a DEK only as long as a unit of work needs it: :func:`open_field_cipher` unwraps straight
into a :class:`FieldCipher`, which keeps only the AES context, not the raw key bytes.
"""

from __future__ import annotations

import os
import secrets
import uuid

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sehat.core.crypto import DecryptionError, KeyRing

DATA_KEY_BYTES = 32
_FIELD_FORMAT_VERSION = 1
_NONCE_BYTES = 12
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
