"""The one error renderer: a ProblemError as RFC 9457 ``application/problem+json`` (every
route but the Open Inference Protocol's) or as OIP's ``{"error": "..."}``, as WSGI parts
(the gateway) or as a Flask response (everything else)."""

from __future__ import annotations

import orjson
from flask import Response

from service.errors import ProblemError

PROBLEM_JSON = "application/problem+json"


def render(err: ProblemError, *, oip: bool = False
           ) -> tuple[int, bytes, list[tuple[str, str]]]:
    """Status, body and headers of ``err``'s answer."""
    if oip:
        payload, content_type = orjson.dumps({"error": err.detail}), "application/json"
    else:
        payload, content_type = orjson.dumps(err.problem()), PROBLEM_JSON
    headers = [("Content-Type", content_type), ("Content-Length", str(len(payload)))]
    headers.extend(err.headers.items())
    return err.status, payload, headers


def problem_response(err: ProblemError, *, oip: bool = False) -> Response:
    """:func:`render` as a Flask response."""
    status, payload, headers = render(err, oip=oip)
    return Response(payload, status=status, headers=headers)


def internal_error(request_id: str) -> ProblemError:
    """The answer to a bug: a 500 that names the request id to look for in the log."""
    return ProblemError(f"internal error; request id {request_id}")
