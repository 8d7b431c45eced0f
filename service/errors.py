"""The one exception hierarchy of gradserve.

Every error a request can meet is a :class:`ProblemError`; its class attributes are its
defaults (HTTP status and title), subclasses only set them. The HTTP layer turns any of
them into an RFC 9457 ``application/problem+json`` body; the engine raises them without
knowing about HTTP (a status is just a number attached to the kind of error).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Loc = tuple[str | int, ...]


class ProblemError(Exception):
    """Base class: ``status`` and ``title`` are the defaults of each kind."""

    status: int = 500
    title: str = "Internal Server Error"

    def __init__(
        self,
        detail: str,
        *,
        loc: Sequence[str | int] | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.loc: Loc | None = tuple(loc) if loc is not None else None
        self.errors = errors
        self.headers = headers or {}

    def problem(self) -> dict[str, Any]:
        """The problem+json body of this error."""
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        elif self.loc is not None:
            # An empty loc points at nothing; the whole body is what it means.
            body["errors"] = [{"loc": list(self.loc) or ["body"], "msg": self.detail}]
        return body


class BadRequest(ProblemError):
    status, title = 400, "Bad Request"


class Unauthorized(ProblemError):
    status, title = 401, "Unauthorized"


class NotFound(ProblemError):
    status, title = 404, "Not Found"


class RequestTimeout(ProblemError):
    """The client did not send its body within GRADSERVE_BODY_TIMEOUT_S."""

    status, title = 408, "Request Timeout"

    def __init__(self, detail: str, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        # The rest of the body may still arrive: the connection cannot carry another request.
        self.headers.setdefault("Connection", "close")


class ContentTooLarge(ProblemError):
    status, title = 413, "Content Too Large"


class UnsupportedMediaType(ProblemError):
    status, title = 415, "Unsupported Media Type"


class Unprocessable(ProblemError):
    status, title = 422, "Unprocessable Content"


class ServiceUnavailable(ProblemError):
    status, title = 503, "Service Unavailable"

    def __init__(self, detail: str, *, retry_after: int = 1, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("Retry-After", str(retry_after))


class DeadlineExceeded(ServiceUnavailable):
    """A request past GRADSERVE_REQUEST_DEADLINE_S. A 503, not a 504: docs/api.md §7 reserves
    every 5xx but 503 for bugs, and "retry later, or ask for less" is what a 503 says."""


# --- engine-level kinds -------------------------------------------------------------------


class GraphError(Unprocessable):
    """A graph that cannot be compiled or run; ``node`` names the offending node or input."""

    def __init__(self, detail: str, *, node: str | None = None, **kwargs: Any) -> None:
        if node is not None and not detail.startswith(("node ", "input ")):
            detail = f"node '{node}': {detail}"
        super().__init__(detail, **kwargs)
        self.node = node


class LimitExceeded(ContentTooLarge):
    """A size or work limit; ``limit`` is the setting's name, ``value`` its configured value."""

    def __init__(self, limit: str, value: int, actual: int, what: str, **kwargs: Any) -> None:
        setting = "GRADSERVE_" + limit.upper()
        super().__init__(f"{what} is {actual:,}, over the limit {setting}={value:,}", **kwargs)
        self.limit = limit
        self.value = value
        self.actual = actual
