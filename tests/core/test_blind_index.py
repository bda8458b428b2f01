"""Blind indexes and their normalizers: one value, one index per organization and kind; bad input named, not echoed."""

from __future__ import annotations

import datetime
import uuid

import pytest

from sehat.core.blind_index import (
    IndexKind,
    blind_index,
    index_key,
    normalize_email,
    normalize_mrn,
    normalize_name_and_birth_date,
    normalize_national_id,
    normalize_phone,
)
from sehat.core.crypto import DecryptionError, KeyRing

ORG = uuid.uuid4()
OTHER_ORG = uuid.uuid4()


@pytest.fixture
def ring() -> KeyRing:
    return KeyRing.parse(KeyRing.generate_entry("k1"))


def test_blind_index_is_16_bytes_and_stable_for_the_same_key_kind_and_value(ring: KeyRing) -> None:
    _, key = index_key(ring, ORG, ring.primary_kid)
    phone = normalize_phone("98123 45678", "IN")
    assert len(blind_index(key, IndexKind.PHONE, phone)) == 16
    assert blind_index(key, IndexKind.PHONE, phone) == blind_index(index_key(ring, ORG, "k1")[1], "phone", phone)


def test_same_phone_in_two_organizations_gives_different_blind_indexes(ring: KeyRing) -> None:
    phone = normalize_phone("+91 98123 45678", "IN")
    _, key = index_key(ring, ORG, "k1")
    _, other_key = index_key(ring, OTHER_ORG, "k1")
    assert key != other_key
    assert blind_index(key, IndexKind.PHONE, phone) != blind_index(other_key, IndexKind.PHONE, phone)


def test_same_value_in_two_kinds_gives_different_blind_indexes(ring: KeyRing) -> None:
    _, key = index_key(ring, ORG, "k1")
    values = {blind_index(key, kind, "12345") for kind in IndexKind}
    assert len(values) == len(IndexKind)


def test_unknown_kind_is_refused(ring: KeyRing) -> None:
    _, key = index_key(ring, ORG, "k1")
    with pytest.raises(ValueError):
        blind_index(key, "passport", "12345")


def test_index_key_is_separate_from_every_other_derived_key(ring: KeyRing) -> None:
    kid, key = index_key(ring, ORG, "k1")
    assert kid == "k1"
    assert key != ring.derive("blind-index", "k1")[1]
    assert key != ring.derive("audit-chain", "k1")[1]


def test_index_key_survives_a_new_primary_master_key_when_its_kid_is_named() -> None:
    old_entry = KeyRing.generate_entry("k1")
    before = index_key(KeyRing.parse(old_entry), ORG, "k1")
    rotated = KeyRing.parse(f"{KeyRing.generate_entry('k2')},{old_entry}")
    assert rotated.primary_kid == "k2"
    assert index_key(rotated, ORG, "k1") == before
    assert index_key(rotated, ORG, rotated.primary_kid)[0] == "k2"
    assert index_key(rotated, ORG, "k2")[1] != before[1]


def test_index_key_for_a_master_key_no_longer_in_the_ring_fails(ring: KeyRing) -> None:
    with pytest.raises(DecryptionError):
        index_key(ring, ORG, "k0")


# --- phone ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "written", ["98123 45678", "098123-45678", "+91 98123 45678", "0091 9812345678", "+919812345678"]
)
def test_local_and_international_forms_of_one_phone_give_the_same_e164(written: str) -> None:
    assert normalize_phone(written, "IN") == "+919812345678"


def test_international_number_ignores_the_default_region() -> None:
    assert normalize_phone("+64 21 123 4567", "IN") == normalize_phone("021 123 4567", "NZ") == "+64211234567"


@pytest.mark.parametrize("bad", ["12345", "call Asha", "", "+91 12345 67890 12345", "98123 45678x" * 30])
def test_invalid_phones_raise_value_error_without_echoing_the_value(bad: str) -> None:
    with pytest.raises(ValueError) as caught:
        normalize_phone(bad, "IN")
    assert not bad or bad not in str(caught.value)
    assert caught.value.__cause__ is None


def test_local_phone_with_an_unknown_region_is_refused() -> None:
    with pytest.raises(ValueError, match="not a phone number"):
        normalize_phone("98123 45678", "ZZ")


# --- email, national id, MRN ----------------------------------------------------------------------------------


def test_email_is_trimmed_and_lower_cased() -> None:
    assert normalize_email("  Asha.Rao@Example.ORG \n") == "asha.rao@example.org"


@pytest.mark.parametrize(
    "bad", ["asha", "asha@", "@example.org", "asha@example", "asha rao@example.org", "a@b@c.org", ""]
)
def test_invalid_emails_raise_value_error_without_echoing_the_value(bad: str) -> None:
    with pytest.raises(ValueError) as caught:
        normalize_email(bad)
    assert not bad or bad not in str(caught.value)


def test_national_id_drops_spaces_and_dashes_upper_cases_and_keeps_its_kind() -> None:
    assert normalize_national_id("ABHA", " 91-1234-5678-9012 ") == "abha:91123456789012"
    assert normalize_national_id("nhi", "abc 1234") == "nhi:ABC1234"
    assert normalize_national_id("aadhaar", "1234") != normalize_national_id("abha", "1234")


@pytest.mark.parametrize(("kind", "value"), [("abha", ""), ("abha", "12/34"), ("", "1234"), ("ab ha", "1234")])
def test_invalid_national_ids_raise_value_error_without_echoing_the_value(kind: str, value: str) -> None:
    with pytest.raises(ValueError) as caught:
        normalize_national_id(kind, value)
    assert not value or value not in str(caught.value)


def test_mrn_is_trimmed_and_upper_cased() -> None:
    assert normalize_mrn("  mrn-000123 ") == "MRN-000123"
    with pytest.raises(ValueError, match="medical record number"):
        normalize_mrn("MRN 000123")


# --- name and birth date --------------------------------------------------------------------------------------


def test_name_normalization_folds_case_and_spacing() -> None:
    expected = normalize_name_and_birth_date("Asha", "Rao", datetime.date(1990, 4, 1))
    assert normalize_name_and_birth_date("  ASHA ", "rao\t", "1990-04-01") == expected
    assert normalize_name_and_birth_date("Anna  Maria", "Van\u00a0Der  Berg", "1990-04-01") == (
        normalize_name_and_birth_date("anna maria", "van der berg", "1990-04-01")
    )
    assert normalize_name_and_birth_date("STRAßE", "x", "1990-04-01") == (
        normalize_name_and_birth_date("strasse", "x", "1990-04-01")
    )


def test_name_normalization_keeps_accents_but_unifies_their_encoding() -> None:
    composed = normalize_name_and_birth_date("Jos\u00e9", "Pérez", "1990-04-01")
    decomposed = normalize_name_and_birth_date("Jose\u0301", "Pe\u0301rez", "1990-04-01")
    assert composed == decomposed
    assert composed != normalize_name_and_birth_date("Jose", "Perez", "1990-04-01")


def test_name_fields_cannot_be_shifted_into_each_other() -> None:
    assert normalize_name_and_birth_date("anna maria", "rao", "1990-04-01") != (
        normalize_name_and_birth_date("anna", "maria rao", "1990-04-01")
    )


def test_single_name_patients_are_indexed_and_birth_date_is_iso() -> None:
    assert normalize_name_and_birth_date("", "Sukarno", "1901-06-06").endswith("sukarno\x1f1901-06-06")


@pytest.mark.parametrize(
    ("given", "family", "birth_date"),
    [
        ("", " ", "1990-04-01"),
        ("Asha", "Rao", "01/04/1990"),
        ("Asha", "Rao", datetime.datetime(1990, 4, 1, tzinfo=datetime.UTC)),
        ("As\x00ha", "Rao", "1990-04-01"),
    ],
)
def test_invalid_name_or_birth_date_raises_value_error_without_echoing_it(
    given: str, family: str, birth_date: datetime.date | str
) -> None:
    with pytest.raises(ValueError) as caught:
        normalize_name_and_birth_date(given, family, birth_date)
    assert "Asha" not in str(caught.value) and "01/04/1990" not in str(caught.value)
