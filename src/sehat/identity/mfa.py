"""TOTP second factor (RFC 6238) with single use: a code's time step must be newer than the last one used."""

from __future__ import annotations

import hmac

import pyotp

from sehat.core.clock import utcnow

ISSUER = "sehat"
# One step either side absorbs clock drift between the phone and the server.
_DRIFT_STEPS = (0, -1, 1)


def new_secret() -> str:
    return pyotp.random_base32()


def provisioning_uri(secret: str, account_name: str) -> str:
    return pyotp.TOTP(secret).provisioning_uri(name=account_name, issuer_name=ISSUER)


def matching_step(secret: str, code: str) -> int | None:
    """The time step whose code equals ``code`` within the drift window, or None."""
    if not (code.isdigit() and len(code) == 6):
        return None
    totp = pyotp.TOTP(secret)
    current = totp.timecode(utcnow())
    for offset in _DRIFT_STEPS:
        step = current + offset
        if hmac.compare_digest(totp.generate_otp(step), code):
            return step
    return None


def code_for_step(secret: str, step: int) -> str:
    return pyotp.TOTP(secret).generate_otp(step)
