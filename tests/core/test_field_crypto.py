"""Field encryption under per-patient data keys: ciphertexts and wrapped keys only open where they were made."""

from __future__ import annotations

import uuid

import pytest

from sehat.core.crypto import (
    DecryptionError,
    FieldCipher,
    KeyRing,
    new_data_key,
    open_field_cipher,
    rewrap_data_key,
    unwrap_data_key,
    wrap_data_key,
    wrapped_key_id,
)

ORG = uuid.uuid4()
OTHER_ORG = uuid.uuid4()
PATIENT = uuid.uuid4()
OTHER_PATIENT = uuid.uuid4()
PLACE = {"organization_id": ORG, "table": "patients", "column": "phone_enc", "row_id": PATIENT}


@pytest.fixture
def cipher() -> FieldCipher:
    return FieldCipher(new_data_key())


def test_text_and_bytes_round_trip(cipher: FieldCipher) -> None:
    assert cipher.decrypt_text(cipher.encrypt("+91 98123 45678 · José", **PLACE), **PLACE) == "+91 98123 45678 · José"
    assert cipher.decrypt(cipher.encrypt(b"\x00\xfflab report", **PLACE), **PLACE) == b"\x00\xfflab report"
    assert cipher.decrypt_text(cipher.encrypt("", **PLACE), **PLACE) == ""


def test_same_value_encrypts_differently_each_time(cipher: FieldCipher) -> None:
    assert cipher.encrypt("same", **PLACE) != cipher.encrypt("same", **PLACE)


def test_ciphertext_starts_with_its_format_version_and_hides_the_plaintext(cipher: FieldCipher) -> None:
    ciphertext = cipher.encrypt("9812345678", **PLACE)
    assert ciphertext[0] == 1
    assert b"9812345678" not in ciphertext
    assert len(ciphertext) == 1 + 12 + len("9812345678") + 16


@pytest.mark.parametrize(
    "moved",
    [
        {"row_id": OTHER_PATIENT},
        {"column": "email_enc"},
        {"table": "contacts"},
        {"organization_id": OTHER_ORG},
    ],
    ids=["other-row", "other-column", "other-table", "other-organization"],
)
def test_ciphertext_moved_elsewhere_fails_with_decryption_error(cipher: FieldCipher, moved: dict[str, object]) -> None:
    ciphertext = cipher.encrypt("secret", **PLACE)
    with pytest.raises(DecryptionError):
        cipher.decrypt(ciphertext, **{**PLACE, **moved})  # type: ignore[arg-type]


def test_ids_cannot_be_shifted_across_the_separator(cipher: FieldCipher) -> None:
    ciphertext = cipher.encrypt("secret", organization_id="o", table="a|b", column="c", row_id="r")
    with pytest.raises(DecryptionError):
        cipher.decrypt(ciphertext, organization_id="o", table="a", column="b|c", row_id="r")


@pytest.mark.parametrize("position", [0, 1, 13, -1])
def test_a_flipped_byte_fails_with_decryption_error(cipher: FieldCipher, position: int) -> None:
    ciphertext = bytearray(cipher.encrypt("secret", **PLACE))
    ciphertext[position] ^= 0x01
    with pytest.raises(DecryptionError):
        cipher.decrypt(bytes(ciphertext), **PLACE)


def test_truncated_or_empty_ciphertext_fails_with_decryption_error(cipher: FieldCipher) -> None:
    ciphertext = cipher.encrypt("secret", **PLACE)
    for broken in (b"", ciphertext[:20], ciphertext[:-1]):
        with pytest.raises(DecryptionError):
            cipher.decrypt(broken, **PLACE)


def test_another_patients_data_key_does_not_decrypt(cipher: FieldCipher) -> None:
    ciphertext = cipher.encrypt("secret", **PLACE)
    with pytest.raises(DecryptionError):
        FieldCipher(new_data_key()).decrypt(ciphertext, **PLACE)


def test_decryption_errors_carry_no_data(cipher: FieldCipher) -> None:
    ciphertext = cipher.encrypt("9812345678", **PLACE)
    with pytest.raises(DecryptionError) as caught:
        cipher.decrypt(ciphertext, **{**PLACE, "row_id": OTHER_PATIENT})  # type: ignore[arg-type]
    assert "9812345678" not in str(caught.value)
    assert str(OTHER_PATIENT) not in str(caught.value)
    assert caught.value.__suppress_context__


def test_bytes_that_are_not_text_fail_decrypt_text_without_content(cipher: FieldCipher) -> None:
    ciphertext = cipher.encrypt(b"\xff\xfe", **PLACE)
    with pytest.raises(DecryptionError):
        cipher.decrypt_text(ciphertext, **PLACE)


def test_none_is_never_encrypted_and_a_missing_id_is_refused(cipher: FieldCipher) -> None:
    with pytest.raises(TypeError):
        cipher.encrypt(None, **PLACE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="missing"):
        cipher.encrypt("x", **{**PLACE, "row_id": None})  # type: ignore[arg-type]


def test_data_keys_are_32_random_bytes_and_never_shown() -> None:
    first, second = new_data_key(), new_data_key()
    assert len(first) == 32 and first != second
    assert first.hex() not in repr(FieldCipher(first))
    with pytest.raises(ValueError):
        FieldCipher(first[:16])


# --- wrapping --------------------------------------------------------------------------------------------------

OWNER = {"organization_id": ORG, "owner_table": "patients", "owner_id": PATIENT}


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.parse(KeyRing.generate_entry("k1"))


def test_wrapped_data_key_unwraps_for_its_owner_and_names_its_master_key(ring: KeyRing) -> None:
    dek = new_data_key()
    wrapped = wrap_data_key(ring, dek, **OWNER)
    assert dek not in wrapped
    assert unwrap_data_key(ring, wrapped, **OWNER) == dek
    assert wrapped_key_id(wrapped) == "k1"


@pytest.mark.parametrize(
    "moved",
    [{"owner_id": OTHER_PATIENT}, {"organization_id": OTHER_ORG}, {"owner_table": "documents"}],
    ids=["other-patient", "other-organization", "other-table"],
)
def test_wrapped_data_key_moved_to_another_owner_fails(ring: KeyRing, moved: dict[str, object]) -> None:
    wrapped = wrap_data_key(ring, new_data_key(), **OWNER)
    with pytest.raises(DecryptionError):
        unwrap_data_key(ring, wrapped, **{**OWNER, **moved})  # type: ignore[arg-type]


def test_field_ciphertext_is_not_accepted_as_a_wrapped_key(ring: KeyRing) -> None:
    with pytest.raises(DecryptionError):
        unwrap_data_key(ring, FieldCipher(new_data_key()).encrypt(new_data_key(), **PLACE), **OWNER)


def test_wrapped_key_under_an_unknown_master_key_fails(ring: KeyRing) -> None:
    wrapped = wrap_data_key(KeyRing.parse(KeyRing.generate_entry("k9")), new_data_key(), **OWNER)
    with pytest.raises(DecryptionError):
        unwrap_data_key(ring, wrapped, **OWNER)


def test_malformed_wrapped_key_has_no_key_id() -> None:
    for broken in (b"", b"\x01", b"\x02\x02k1" + bytes(40), b"\x01\x02k1"):
        with pytest.raises(DecryptionError):
            wrapped_key_id(broken)


def test_rewrap_under_a_new_primary_keeps_old_ciphertexts_readable_and_retires_the_old_master_key() -> None:
    old_entry, new_entry = KeyRing.generate_entry("k1"), KeyRing.generate_entry("k2")
    old_ring = KeyRing.parse(old_entry)
    dek = new_data_key()
    wrapped = wrap_data_key(old_ring, dek, **OWNER)
    ciphertext = FieldCipher(dek).encrypt("9812345678", **PLACE)
    del dek

    rotating_ring = KeyRing.parse(f"{new_entry},{old_entry}")  # new primary first, old still present
    rewrapped = rewrap_data_key(rotating_ring, wrapped, **OWNER)
    assert wrapped_key_id(wrapped) == "k1"
    assert wrapped_key_id(rewrapped) == "k2"
    assert open_field_cipher(rotating_ring, rewrapped, **OWNER).decrypt_text(ciphertext, **PLACE) == "9812345678"

    retired_ring = KeyRing.parse(new_entry)
    assert open_field_cipher(retired_ring, rewrapped, **OWNER).decrypt_text(ciphertext, **PLACE) == "9812345678"
    with pytest.raises(DecryptionError):
        unwrap_data_key(retired_ring, wrapped, **OWNER)


def test_rewrap_refuses_a_wrapped_key_of_another_owner(ring: KeyRing) -> None:
    wrapped = wrap_data_key(ring, new_data_key(), **OWNER)
    with pytest.raises(DecryptionError):
        rewrap_data_key(ring, wrapped, **{**OWNER, "owner_id": OTHER_PATIENT})  # type: ignore[arg-type]


def test_erasing_the_wrapped_key_leaves_ciphertexts_that_no_remaining_key_opens(ring: KeyRing) -> None:
    dek = new_data_key()
    wrapped = wrap_data_key(ring, dek, **OWNER)
    ciphertext = FieldCipher(dek).encrypt("9812345678", **PLACE)
    del wrapped, dek  # crypto-shredding: the only copy of the data key is gone
    replacement = wrap_data_key(ring, new_data_key(), **OWNER)
    with pytest.raises(DecryptionError):
        open_field_cipher(ring, replacement, **OWNER).decrypt(ciphertext, **PLACE)
