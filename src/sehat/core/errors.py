"""RFC 9457 problem details: the domain raises these, the app renders them as application/problem+json."""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_TYPE_BASE = "https://sehat.dev/problems/"


class Problem(Exception):
    """A failure the caller can act on. ``detail`` must never carry patient data or secrets."""

    status: int = 400
    title: str = "Bad request"
    default_code: ClassVar[str] = "bad_request"

    def __init__(
        self,
        detail: str | None = None,
        *,
        code: str | None = None,
        status: int | None = None,
        title: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        keep_changes: bool = False,
    ) -> None:
        if status is not None:
            self.status = status
        if title is not None:
            self.title = title
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.code = code or self.default_code
        self.extra = extra or {}
        self.headers = headers or {}
        # Some refusals must still persist what led to them (a revoked token family, a lockout).
        self.keep_changes = keep_changes

    def body(self) -> dict[str, Any]:
        return {
            "type": PROBLEM_TYPE_BASE + self.code.replace("_", "-"),
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
            **self.extra,
        }


class InvalidInput(Problem):
    status = 422
    title = "Invalid input"
    default_code = "invalid_input"


class Unauthenticated(Problem):
    status = 401
    title = "Not authenticated"
    default_code = "not_authenticated"

    def __init__(self, detail: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": "Bearer"})
        super().__init__(detail, **kwargs)


class Forbidden(Problem):
    status = 403
    title = "Forbidden"
    default_code = "forbidden"


class NotFound(Problem):
    status = 404
    title = "Not found"
    default_code = "not_found"


class MethodNotAllowed(Problem):
    status = 405
    title = "Method not allowed"
    default_code = "method_not_allowed"


class Conflict(Problem):
    status = 409
    title = "Conflict"
    default_code = "conflict"


class PreconditionFailed(Problem):
    status = 412
    title = "Precondition failed"
    default_code = "precondition_failed"


class PayloadTooLarge(Problem):
    status = 413
    title = "Request body too large"
    default_code = "payload_too_large"


class TooManyRequests(Problem):
    status = 429
    title = "Too many requests"
    default_code = "too_many_requests"

    def __init__(self, detail: str | None = None, *, retry_after: int, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"Retry-After": str(max(1, retry_after))})
        super().__init__(detail, **kwargs)


class ServiceUnavailable(Problem):
    status = 503
    title = "Service unavailable"
    default_code = "service_unavailable"


class InternalError(Problem):
    status = 500
    title = "Internal server error"
    default_code = "internal_error"


_BY_STATUS: dict[int, type[Problem]] = {
    cls.status: cls
    for cls in (
        InvalidInput,
        Unauthenticated,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PreconditionFailed,
        PayloadTooLarge,
        ServiceUnavailable,
        InternalError,
    )
}


def problem_for_status(status: int, detail: str | None = None) -> Problem:
    """Map a bare HTTP status (from the framework's own errors) to our problem type."""
    cls = _BY_STATUS.get(status)
    if cls is not None:
        return cls(detail)
    return Problem(detail, status=status, title="HTTP error", code=f"http_{status}")
