"""Blind indexes: exact-match search over encrypted fields without decrypting anyone (DESIGN §4, issue 4).

A blind index is ``HMAC-SHA256(index_key, kind | normalized value)`` truncated to 16 bytes, stored next to the
ciphertext and looked up with an ordinary B-tree index. Design choices:

* **A separate key per organization.** The index key never encrypts anything and no encryption key ever
  computes an index, so a leaked index table gives nothing to decrypt with. Per organization, so the same phone
  number in two tenants has unrelated index values: one tenant's table cannot be joined to another's, and a
  leaked table of one tenant cannot be used to test guesses against another's.
* **Derivation.** ``KeyRing.derive("blind-index", kid)`` gives a root that exists only with the master key; the
  organization's key is HKDF-Expand of that root with the organization id in ``info``. HKDF rather than a bare
  HMAC because it is the standard construction for sub-keys from a uniform key and makes the purpose label
  explicit; nothing per organization has to be stored or backed up.
* **Named master key.** A key derived from the ring's *primary* would change at every master-key rotation and
  silently orphan every stored index (searches would find nobody). So :func:`index_key` takes the master key id
  explicitly and returns it with the key; the id is stored with the indexes (per organization or per row), and
  the master key it names must stay in the ring until the indexes are recomputed under a new id. Re-indexing
  needs the plaintexts, so it is a deliberate job (decrypt, normalize, re-index), unlike DEK re-wrapping.
* **Domain separation by kind.** The kind is part of the MAC input, so "12345" as an MRN and as a national id
  give different values, and an index of one kind cannot be replayed as another.
* **16 bytes.** 128 bits keep accidental collisions out of reach for any registry size while halving the
  index; exact-match lookups still verify the decrypted value when it matters.

Blind indexes reveal equality within an organization (two patients sharing a phone share its index) and are
only as strong as the guessing space of the value: phone numbers are guessable offline by whoever holds the
index key, which is why the key lives only under the master key ring.

Normalizers decide what "the same value" means; index and search must use the same one. They raise
``ValueError`` with a fixed message that never repeats the input, since inputs are personal data and messages
end up in logs and responses.
"""

from __future__ import annotations

import datetime
import hmac
import re
import unicodedata
import uuid
from enum import StrEnum
from hashlib import sha256

import phonenumbers
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from sehat.core.crypto import KeyRing

BLIND_INDEX_BYTES = 16
_PURPOSE = "blind-index"
_LABEL = b"sehat/blind-index/v1"
_MAX_INPUT_CHARS = 256
_EMAIL_MAX_CHARS = 254
_NATIONAL_ID_PATTERN = re.compile(r"^[A-Z0-9]{1,64}$")
_NATIONAL_ID_KIND_PATTERN = re.compile(r"^[a-z0-9_]{1,32}$")
_MRN_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9/-]{0,63}$")
_SEPARATOR = "\x1f"  # unit separator: rejected inside names, so it cannot be forged by a name


class IndexKind(StrEnum):
    PHONE = "phone"
    NATIONAL_ID = "national_id"
    MRN = "mrn"
    EMAIL = "email"
    NAME_DOB = "name_dob"


def index_key(key_ring: KeyRing, organization_id: uuid.UUID | str, kid: str) -> tuple[str, bytes]:
    """The organization's index key under the master key ``kid``; returns ``(kid, key)`` to store the id with it.

    Pass ``key_ring.primary_kid`` only when creating an organization's indexes for the first time; afterwards
    pass the stored id. A kid missing from the ring raises :class:`~sehat.core.crypto.DecryptionError`.
    """
    kid, root = key_ring.derive(_PURPOSE, kid)
    info = _LABEL + b"/org/" + str(organization_id).encode()
    return kid, HKDFExpand(algorithm=hashes.SHA256(), length=32, info=info).derive(root)


def blind_index(key: bytes, kind: IndexKind | str, normalized_value: str) -> bytes:
    kind = IndexKind(kind)  # an unknown kind is a programming error: ValueError from the enum
    kind_bytes, value_bytes = kind.value.encode(), normalized_value.encode()
    message = _LABEL + len(kind_bytes).to_bytes(1, "big") + kind_bytes + value_bytes
    return hmac.new(key, message, sha256).digest()[:BLIND_INDEX_BYTES]


def _bounded(value: str, what: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be text")
    if len(value) > _MAX_INPUT_CHARS:
        raise ValueError(f"{what} is too long")
    return value


def normalize_phone(value: str, default_region: str) -> str:
    """E.164 (``+919812345678``); local numbers are read in ``default_region`` (ISO 3166 alpha-2, e.g. "IN")."""
    value = _bounded(value, "phone number")
    try:
        parsed = phonenumbers.parse(value, default_region.upper())
    except phonenumbers.NumberParseException:
        # from None: the library's exception is not shown, whatever it may one day say about the input.
        raise ValueError("not a phone number") from None
    if not phonenumbers.is_valid_number(parsed):
        raise ValueError("not a valid phone number")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def normalize_email(value: str) -> str:
    """Trimmed and lower-cased. The local part is case-folded too: nobody relies on case in a mailbox name, and
    a search that misses the patient because of case is worse than the theoretical collision."""
    value = _bounded(value, "email address").strip().lower()
    local, at, domain = value.rpartition("@")
    if (
        not at
        or not local
        or "@" in local
        or "." not in domain
        or domain.startswith(".")
        or domain.endswith(".")
        or len(value) > _EMAIL_MAX_CHARS
        or any(character.isspace() or unicodedata.category(character) == "Cc" for character in value)
    ):
        raise ValueError("not a valid email address")
    return value


def normalize_national_id(kind: str, value: str) -> str:
    """``kind:VALUE`` with spaces and dashes removed and upper-cased; the id's kind (``aadhaar``, ``abha``, ``nhi``)
    is part of the value, so the same digits in two numbering schemes are different identities."""
    kind = _bounded(kind, "national id kind").strip().lower()
    if not _NATIONAL_ID_KIND_PATTERN.match(kind):
        raise ValueError("not a valid national id kind")
    cleaned = re.sub(r"[\s-]+", "", _bounded(value, "national id")).upper()
    if not _NATIONAL_ID_PATTERN.match(cleaned):
        raise ValueError("not a valid national id")
    return f"{kind}:{cleaned}"


def normalize_mrn(value: str) -> str:
    """Trimmed and upper-cased; inner characters are kept as issued (MRNs come from our own counter)."""
    cleaned = _bounded(value, "medical record number").strip().upper()
    if not _MRN_PATTERN.match(cleaned):
        raise ValueError("not a valid medical record number")
    return cleaned


def _normalize_name(value: str, what: str) -> str:
    value = _bounded(value, what)
    if any(unicodedata.category(character) == "Cc" and not character.isspace() for character in value):
        raise ValueError(f"{what} contains control characters")
    # NFKC, fold, NFKC again: case folding can produce sequences that are no longer in normal form.
    folded = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold())
    return " ".join(folded.split())


def normalize_name_and_birth_date(given: str, family: str, birth_date: datetime.date | str) -> str:
    """Given and family name (NFKC, case-folded, whitespace collapsed, accents kept) with the ISO birth date.

    Accents are kept because "José" and "Jose" may be different people and folding them would merge their
    search results; one of the two names may be empty (single-name patients are common)."""
    given_name, family_name = _normalize_name(given, "given name"), _normalize_name(family, "family name")
    if not given_name and not family_name:
        raise ValueError("a name is required")
    if isinstance(birth_date, datetime.datetime):
        raise ValueError("birth date must be a date without a time")
    if isinstance(birth_date, str):
        try:
            birth_date = datetime.date.fromisoformat(_bounded(birth_date, "birth date").strip())
        except ValueError:
            raise ValueError("birth date must be an ISO date (YYYY-MM-DD)") from None
    if not isinstance(birth_date, datetime.date):
        raise ValueError("birth date must be a date")
    return _SEPARATOR.join((given_name, family_name, birth_date.isoformat()))
