"""The one source of 'now'. Tests move time with time-machine, which patches what this reads."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def epoch_seconds() -> int:
    return int(utcnow().timestamp())
