"""Logs are one JSON object per line and never carry passwords, tokens, e-mail addresses or phone numbers."""

from __future__ import annotations

import io
import json
import logging
from typing import Any

import structlog

from sehat.core.logging import configure_logging, scrub_text
from tests.conftest import PASSWORD, build_tenant


def _records(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_sensitive_keys_and_free_text_are_masked() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    structlog.get_logger("test").info(
        "patient called from +92 300 1234567 about ayesha@example.org",
        password="hunter2-secret",
        authorization="Bearer eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl",
        phone="+44 20 7946 0958",
        user_id="0b6f2c8e-6c1f-4d5e-9a51-3f1d2a7b9c10",
    )
    logging.getLogger("thirdparty").warning("token eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl leaked")
    text = stream.getvalue()
    for secret in ("hunter2-secret", "eyJhbGciOiJFZERTQSJ9", "ayesha@example.org", "1234567", "7946"):
        assert secret not in text, secret
    first, second = _records(stream)
    assert first["user_id"] == "0b6f2c8e-6c1f-4d5e-9a51-3f1d2a7b9c10"  # our own ids stay traceable
    assert first["password"] == "[masked]"
    assert "[email]" in first["event"] and "[number]" in first["event"]
    assert "[jwt]" in second["event"]


def test_secrets_written_as_assignments_in_free_text_are_masked() -> None:
    scrubbed = scrub_text("failed: password=hunter2 token: 'abc def' otp=123456 ok")
    assert "hunter2" not in scrubbed and "abc def" not in scrubbed and "123456" not in scrubbed
    assert scrubbed.endswith(" ok")


def test_dates_times_and_small_numbers_survive_scrubbing() -> None:
    assert scrub_text("at 2026-11-21T06:14:59 took 312 ms") == "at 2026-11-21T06:14:59 took 312 ms"


def test_a_newline_in_user_input_stays_inside_one_json_record() -> None:
    stream = io.StringIO()
    configure_logging("INFO", stream=stream)
    structlog.get_logger("test").info("lookup", query='x\n{"event": "forged", "level": "critical"}')
    lines = stream.getvalue().strip().splitlines()
    assert len(lines) == 1
    assert json.loads(lines[0])["event"] == "lookup"


async def test_canaries_sent_through_sign_in_and_errors_never_reach_the_logs(start_api: Any, capsys: Any) -> None:
    canary_password = "canary-password-5531"
    async with start_api() as api:
        tenant = await build_tenant(api, "alpha", roles=())
        await api.sign_in(tenant.admin_email, canary_password)
        pair = (await api.sign_in(tenant.admin_email, PASSWORD)).json()
        await api.client.get("/api/v1/me", headers={"Authorization": "Bearer " + pair["access_token"] + "x"})
        await api.client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
        await api.client.post("/api/v1/auth/refresh", json={"refresh_token": pair["refresh_token"]})
    captured = capsys.readouterr()
    logs = captured.out + captured.err
    assert "sign_in_succeeded" in logs  # the logs were captured at all
    for canary in (canary_password, PASSWORD, tenant.admin_email, pair["access_token"][:40], pair["refresh_token"]):
        assert canary not in logs, canary
