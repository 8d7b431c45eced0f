"""Typed errors of the gradserve client, built from the server's problem+json bodies."""

from __future__ import annotations

from typing import Any


class GradserveError(Exception):
    """Base class of every error the client raises."""


class ConnectionFailed(GradserveError):
    """The server could not be reached (after the configured retries): ``url`` is the
    server's base URL, ``reason`` a few words ("Connection refused")."""

    def __init__(self, message: str, *, url: str = "", reason: str = "") -> None:
        super().__init__(message)
        self.url = url
        self.reason = reason


class APIError(GradserveError):
    """An error response (RFC 9457 problem+json): ``status``, ``title``, ``detail``,
    ``errors`` (a list of ``{"loc": [...], "msg": ...}``) and the whole ``body``."""

    status: int = 0

    def __init__(self, status: int, title: str, detail: str,
                 errors: list[dict[str, Any]] | None = None,
                 body: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(f"{status} {title}: {detail}")
        self.status = status
        self.title = title
        self.detail = detail
        self.errors = errors or []
        self.body = body or {}
        self.headers = headers or {}

    @property
    def locs(self) -> list[list[str | int]]:
        """Where each error is (``["graph", "nodes", 1, "op"]``, ...)."""
        return [e.get("loc", []) for e in self.errors]


class BadRequest(APIError):
    """400: the body is not valid JSON."""


class Unauthorized(APIError):
    """401: an API key is configured on the server and this one is missing or wrong."""


class NotFound(APIError):
    """404: unknown path or graph id."""


class MethodNotAllowed(APIError):
    """405."""


class Conflict(APIError):
    """409: a model name already given to another graph."""


class ContentTooLarge(APIError):
    """413: a body, tensor, graph or amount of work over the server's limits."""


class UnsupportedMediaType(APIError):
    """415."""


class Unprocessable(APIError):
    """422: valid JSON that is not a valid request; ``errors`` names the fields."""


class ServiceUnavailable(APIError):
    """503: a backing store is unreachable, the worker is saturated or the request ran past
    its deadline. ``retry_after`` is the server's Retry-After in seconds (None if absent)."""

    @property
    def retry_after(self) -> float | None:
        value = self.headers.get("retry-after")
        try:
            return float(value) if value is not None else None
        except ValueError:
            return None


class ServerError(APIError):
    """Any other 5xx: a bug in the server (its detail carries a request id)."""


_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequest, 401: Unauthorized, 404: NotFound, 405: MethodNotAllowed, 409: Conflict,
    413: ContentTooLarge, 415: UnsupportedMediaType, 422: Unprocessable,
    503: ServiceUnavailable,
}


def error_from_response(status: int, body: Any, headers: dict[str, str]) -> APIError:
    """The typed error of a response; a body that is not problem+json still gives one."""
    cls = _BY_STATUS.get(status, ServerError if status >= 500 else APIError)
    if isinstance(body, dict):
        return cls(status, str(body.get("title", "")), str(body.get("detail", "")),
                   errors=body.get("errors") if isinstance(body.get("errors"), list) else None,
                   body=body, headers=headers)
    return cls(status, "", str(body)[:500], headers=headers)
