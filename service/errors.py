"""The one exception hierarchy of gradserve.

The engine's kinds live in :mod:`service.engine.errors` (its messages in engine words,
which a flow may reword: see there) and are re-exported here as the very same classes;
this module adds the kinds only the HTTP layer raises. The HTTP layer turns any
:class:`ProblemError` into an RFC 9457 ``application/problem+json`` body.
"""

from __future__ import annotations

from typing import Any

from service.engine.errors import (
    BadRequest,
    ContentTooLarge,
    DeadlineExceeded,
    Detail,
    GraphError,
    LimitExceeded,
    Loc,
    NotFound,
    ProblemError,
    Ref,
    ServiceUnavailable,
    Unprocessable,
)


class Unauthorized(ProblemError):
    status, title = 401, "Unauthorized"


class RequestTimeout(ProblemError):
    """The client did not send its body within GRADSERVE_BODY_TIMEOUT_S."""

    status, title = 408, "Request Timeout"

    def __init__(self, detail: str, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        # The rest of the body may still arrive: the connection cannot carry another request.
        self.headers.setdefault("Connection", "close")


class UnsupportedMediaType(ProblemError):
    status, title = 415, "Unsupported Media Type"


__all__ = [
    "BadRequest", "ContentTooLarge", "DeadlineExceeded", "Detail", "GraphError",
    "LimitExceeded", "Loc", "NotFound", "ProblemError", "Ref", "RequestTimeout",
    "ServiceUnavailable", "Unauthorized", "Unprocessable", "UnsupportedMediaType",
]
