"""Structured JSON logs that cannot carry patient identifiers or credentials.

Every record, ours or a library's, passes ``mask_sensitive`` before it is rendered: values under sensitive
keys are replaced, and free text is scrubbed of e-mail addresses, phone-like digit runs, bearer tokens and
JWTs. Over-masking a harmless number is an acceptable price for never leaking a phone number.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import Any

import orjson
import structlog

MASK = "[masked]"

_SENSITIVE_KEY = re.compile(
    r"pass(word|wd)?|secret|token|authori[sz]ation|cookie|otp|api[_-]?key|credential|email|phone|mobile|"
    r"national|ssn|name|birth|address|signature",
    re.IGNORECASE,
)
# Keys that merely contain a sensitive word but hold safe metadata.
_SAFE_KEYS = frozenset(
    {
        "event",
        "logger",
        "level",
        "timestamp",
        "request_id",
        "route",
        "method",
        "status",
        "duration_ms",
        "logger_name",
        "code",
        "kid",
        "token_type",
        "exc_type",
    }
)

_SECRET_ASSIGNMENT = re.compile(
    r"(?i)\b(pass(?:word|wd)?|secret|token|otp|api[_-]?key|authorization)(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|\S+)"
)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
_BEARER = re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+")
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
_UUID = re.compile(r"\b[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}\b")
_DIGIT_RUN = re.compile(r"(?<![\w])\+?\(?\d[\d\s().-]{5,}\d(?![\w])")
_ISO_DATE_OR_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?$")


def _mask_digit_run(match: re.Match[str]) -> str:
    text = match.group(0)
    if _ISO_DATE_OR_TIME.match(text.strip()):
        return text
    return "[number]" if sum(ch.isdigit() for ch in text) >= 7 else text


def scrub_text(text: str) -> str:
    text = _JWT.sub("[jwt]", text)
    text = _SECRET_ASSIGNMENT.sub(lambda match: match.group(1) + match.group(2) + MASK, text)
    text = _BEARER.sub(r"\1 [masked]", text)
    text = _EMAIL.sub("[email]", text)
    # UUIDs are our own random ids, safe and needed to trace a request; keep them out of the digit rule.
    placeholders: list[str] = []

    def _hold(match: re.Match[str]) -> str:
        placeholders.append(match.group(0))
        return f"\x00{len(placeholders) - 1}\x00"

    text = _UUID.sub(_hold, text)
    text = _DIGIT_RUN.sub(_mask_digit_run, text)
    for index, original in enumerate(placeholders):
        text = text.replace(f"\x00{index}\x00", original)
    return text


def _mask_value(key: str | None, value: Any) -> Any:
    if key is not None and key not in _SAFE_KEYS and _SENSITIVE_KEY.search(key):
        return MASK
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {k: _mask_value(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_mask_value(None, item) for item in value]
    if isinstance(value, int | float | bool) or value is None:
        return value
    return scrub_text(str(value))


def mask_sensitive(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return {key: _mask_value(key, value) for key, value in event_dict.items()}


def _render(_logger: Any, _method: str, event_dict: dict[str, Any]) -> str:
    return orjson.dumps(event_dict, default=str).decode()


class _CurrentStderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the moment of each record (it may be swapped after start-up)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


_configured = False


def configure_logging(level: str = "INFO", stream: Any = None) -> None:
    """Idempotent: route structlog and the standard library through one masking JSON pipeline."""
    global _configured
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.format_exc_info,
        mask_sensitive,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    structlog.configure(
        processors=[structlog.stdlib.filter_by_level, *shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _render],
    )
    handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderrHandler()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # Uvicorn's own access log prints raw query strings; ours logs the route template instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    _configured = True
