"""Configuration: production is explicit about its keys and TLS; development makes a key file once."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from sehat.core.crypto import DecryptionError, KeyRing, KeyRingError, associated_data, load_key_ring
from sehat.settings import Settings


def test_production_without_a_master_key_refuses_to_start() -> None:
    with pytest.raises(ValueError, match=r"MASTER_KEY"):
        Settings(_env_file=None, environment="production", trusted_proxies="127.0.0.1")  # type: ignore[call-arg]


def test_production_without_tls_or_a_trusted_proxy_refuses_to_start() -> None:
    with pytest.raises(ValueError, match="TLS"):
        Settings(_env_file=None, environment="production", master_key=KeyRing.generate_entry())  # type: ignore[call-arg]


def test_production_never_generates_a_missing_key_file(tmp_path: Path) -> None:
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, environment="production", master_key_file=tmp_path / "absent.key", trusted_proxies="10.0.0.1"
    )
    with pytest.raises(KeyRingError, match="never generates"):
        load_key_ring(settings)
    assert not (tmp_path / "absent.key").exists()


def test_development_creates_a_private_key_file_once_and_reuses_it(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, master_key_file=tmp_path / "dev.key")  # type: ignore[call-arg]
    first = load_key_ring(settings)
    assert stat.S_IMODE(os.stat(tmp_path / "dev.key").st_mode) == 0o600
    sealed = first.seal(b"hello", b"ctx")
    assert load_key_ring(settings).open(sealed, b"ctx") == b"hello"


def test_production_refuses_a_key_file_readable_by_others(tmp_path: Path) -> None:
    path = tmp_path / "loose.key"
    path.write_text(KeyRing.generate_entry())
    path.chmod(0o644)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, environment="production", master_key_file=path, trusted_proxies="10.0.0.1"
    )
    with pytest.raises(KeyRingError, match="chmod 600"):
        load_key_ring(settings)


@pytest.mark.parametrize("ring", ["", "nokid", "k1:short", "bad id!:" + "A" * 43, "k1:" + "A" * 43 + ",k1:" + "B" * 43])
def test_malformed_key_rings_are_refused(ring: str) -> None:
    with pytest.raises(KeyRingError):
        KeyRing.parse(ring)


def test_sealed_values_open_only_in_their_own_place_and_untampered() -> None:
    ring = KeyRing.parse(KeyRing.generate_entry("k1"))
    here = associated_data("users", "mfa_secret_sealed", "row-1")
    sealed = ring.seal(b"secret", here)
    assert ring.open(sealed, here) == b"secret"
    with pytest.raises(DecryptionError):
        ring.open(sealed, associated_data("users", "mfa_secret_sealed", "row-2"))
    tampered = bytearray(sealed)
    tampered[-1] ^= 1
    with pytest.raises(DecryptionError):
        ring.open(bytes(tampered), here)
    with pytest.raises(DecryptionError):
        KeyRing.parse(KeyRing.generate_entry("k2")).open(sealed, here)


def test_a_new_primary_key_still_opens_values_sealed_under_the_old_one() -> None:
    old_entry, new_entry = KeyRing.generate_entry("k1"), KeyRing.generate_entry("k2")
    sealed = KeyRing.parse(old_entry).seal(b"v", b"c")
    rotated = KeyRing.parse(f"{new_entry}\n{old_entry}")
    assert rotated.primary_kid == "k2"
    assert rotated.open(sealed, b"c") == b"v"
    assert rotated.seal(b"v", b"c")[2:4] == b"k2"


def test_ten_thousand_seals_use_distinct_nonces() -> None:
    ring = KeyRing.parse(KeyRing.generate_entry("k1"))
    nonces = {ring.seal(b"x", b"c")[4:16] for _ in range(10_000)}
    assert len(nonces) == 10_000
