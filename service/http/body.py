"""Request bodies as data: JSON parsing and Pydantic validation, with messages that name the
field. Reading the bytes is ``service.http.reader``'s."""

from __future__ import annotations

import difflib
import json
import types
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import orjson
from flask import current_app, g
from pydantic import BaseModel, Tag, ValidationError

from schemas.errors import CrossFieldError
from service.errors import BadRequest, Unprocessable
from service.http.reader import read_body

M = TypeVar("M", bound=BaseModel)


def _non_finite(token: str) -> Any:
    raise ValueError(f"non-finite number {token}")


def read_json() -> Any:
    """The body as JSON, parsed once with orjson (its depth limit keeps the stack safe).

    The body itself was read by the app's hook before the request took a compute slot
    (the request context's ``body``); outside a request flow that did, it is read here."""
    ctx = g.get("_gradserve_ctx")
    body = ctx.body if ctx is not None else None
    if body is None:
        body = read_body(current_app.extensions["gradserve"].settings.body_timeout_s)
    return parse_json(body)


def parse_json(body: bytes) -> Any:
    """A body's bytes as JSON: a 400 naming the syntax error, a 422 for non-finite numbers."""
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
    """NaN/Infinity literals (or 1e999) are a 422 (docs/api.md §1), not a parse error."""
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
        raise validation_problem(exc, model) from None
    except RecursionError:
        raise Unprocessable("request is nested too deeply") from None


_PREFIXES = ("Value error, ", "Assertion failed, ")


def validation_problem(exc: ValidationError, model: type[BaseModel] | None = None
                       ) -> Unprocessable:
    """A 422 listing every ``loc`` and ``msg``: no Pydantic prefixes, a ``loc`` that always
    names a field (a cross-field rule says which), and for an unknown field the allowed ones
    and the likely intended one."""
    errors = []
    for e in exc.errors(include_url=False, include_input=False):
        loc = list(e["loc"])
        msg = e["msg"]
        for prefix in _PREFIXES:
            msg = msg.removeprefix(prefix)
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, CrossFieldError):
            loc = [*loc, *cause.loc]
        if e["type"] == "extra_forbidden" and model is not None and loc:
            msg = _unknown_field(model, loc)
        # A loc holds the client's own keys (an unknown field's name can be megabytes
        # long): each part is cut, so the answer stays small whatever was sent.
        loc = [p[:128] if isinstance(p, str) else p for p in loc]
        errors.append({"loc": loc or ["body"], "msg": msg[:500]})
    first = errors[0] if errors else {"loc": ["body"], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    detail = f"{where}: {first['msg']}"
    if len(errors) > 1:
        detail += f" (and {len(errors) - 1} more)"
    return Unprocessable(detail, errors=errors[:50])


def _unknown_field(model: type[BaseModel], loc: list[str | int]) -> str:
    name = str(loc[-1])
    allowed = _fields_at(model, loc[:-1])
    if not allowed:
        return f"unknown field '{name}'"
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown field '{name}'{hint}; allowed: {', '.join(allowed)}"


def _fields_at(model: type[BaseModel], path: list[str | int]) -> list[str]:
    """The field names of the model found at ``path`` inside ``model`` ([] if none)."""
    tp: Any = model
    for part in path:
        tp = _step(tp, part)
        if tp is None:
            return []
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return list(tp.model_fields)
    return []


def _strip(tp: Any) -> Any:
    """Annotated[X, ...] and X | None → X (when one type is left)."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
            continue
        if get_origin(tp) in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            if len(members) == 1:
                tp = members[0]
                continue
        return tp


def _step(tp: Any, part: str | int) -> Any:
    tp = _strip(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(str(part))
        return field.annotation if field is not None else None
    origin = get_origin(tp)
    if origin is list and isinstance(part, int):
        return get_args(tp)[0]
    if origin is dict:
        return get_args(tp)[1]
    if origin in (Union, types.UnionType):
        # A discriminated union's loc names the member by its tag ('flat', 'b64').
        for member in get_args(tp):
            tags = [m.tag for m in getattr(member, "__metadata__", ()) if isinstance(m, Tag)]
            if part in tags:
                return member
    return None


def parse(model: type[M]) -> tuple[M, Any]:
    """Read and validate the body; returns the model and the raw parsed JSON."""
    data = read_json()
    if not isinstance(data, dict):
        raise Unprocessable("the body must be a JSON object", loc=("body",))
    return validate(model, data), data
