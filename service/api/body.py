"""Request bodies: content type, size, JSON parsing and Pydantic validation, in that order."""

from __future__ import annotations

import json
from typing import Any, TypeVar

import orjson
from flask import current_app, request
from pydantic import BaseModel, ValidationError

from service.errors import BadRequest, ContentTooLarge, Unprocessable, UnsupportedMediaType

M = TypeVar("M", bound=BaseModel)


def _non_finite(token: str) -> Any:
    raise ValueError(f"non-finite number {token}")


def read_json() -> Any:
    """The body as JSON, parsed once with orjson (its depth limit keeps the stack safe)."""
    mimetype = request.mimetype or ""
    if mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"send the body as application/json (got {mimetype or 'no Content-Type'})")
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is not None:
        if request.content_length > limit:
            raise ContentTooLarge(f"body is {request.content_length:,} bytes, over the limit "
                                  f"GRADSERVE_MAX_BODY_BYTES={limit:,}")
        # One read of the declared length straight from the server's stream: werkzeug's
        # get_data copies a big body chunk by chunk (~4 ms per 10 MB here).
        body = request.environ["wsgi.input"].read(request.content_length)
        if len(body) != request.content_length:
            raise BadRequest(f"body ended after {len(body):,} of the "
                             f"{request.content_length:,} bytes its Content-Length declares")
    else:
        # Chunked: werkzeug would stop silently at the limit and hand over a truncated body
        # (a misleading 400); read one byte more than the limit to tell.
        body = request.environ["wsgi.input"].read(limit + 1)
        if len(body) > limit:
            raise ContentTooLarge(f"body is over the limit GRADSERVE_MAX_BODY_BYTES={limit:,}")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        msg = str(exc)
        if "infinity when parsed" in msg:
            # Valid JSON, but a number (1e999, a 5,000-digit integer) overflows float64.
            raise Unprocessable("a number is out of the float64 range (non-finite numbers "
                                "are not allowed in requests)") from None
        if b"NaN" in body or b"Infinity" in body:
            _reject_non_finite(body)
        raise BadRequest(f"body is not valid JSON: {msg}") from None


def _reject_non_finite(body: bytes) -> None:
    """NaN/Infinity literals (or 1e999) are a 422 (API.md §1), not a parse error."""
    try:
        json.loads(body, parse_constant=_non_finite)
    except ValueError as exc:
        if "non-finite" in str(exc):
            raise Unprocessable("non-finite numbers (NaN, Infinity) are not allowed in "
                                "requests") from None
    except RecursionError:
        pass


def validate(model: type[M], data: Any) -> M:
    """Pydantic validation; errors become a 422 listing every ``loc`` and ``msg``."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc) from None
    except RecursionError:
        raise Unprocessable("request is nested too deeply") from None


def validation_problem(exc: ValidationError) -> Unprocessable:
    errors = [
        {"loc": [p for p in e["loc"]], "msg": e["msg"]}
        for e in exc.errors(include_url=False, include_context=False, include_input=False)
    ]
    first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    detail = f"{where}: {first['msg']}" if where else first["msg"]
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return Unprocessable(detail, errors=errors[:50])


def parse(model: type[M]) -> tuple[M, Any]:
    """Read and validate the body; returns the model and the raw parsed JSON."""
    data = read_json()
    if not isinstance(data, dict):
        raise Unprocessable("the body must be a JSON object", loc=())
    return validate(model, data), data
