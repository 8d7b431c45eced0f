"""Request bodies as data: JSON parsing and Pydantic validation, with messages that name the
field. Reading the bytes is ``service.http.reader``'s."""

from __future__ import annotations

import difflib
import json
import time
import types
from math import isfinite
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import orjson
from flask import current_app, g, has_app_context
from pydantic import BaseModel, Tag, ValidationError

from schemas.errors import CrossFieldError
from schemas.requests import UNION_TAGS
from service.engine.limits import DEFAULT_LIMITS, Limits
from service.errors import BadRequest, Unprocessable
from service.flows.bounds import check_bounds, check_structure
from service.http.reader import read_body

M = TypeVar("M", bound=BaseModel)


class _Bad:
    """A NaN or Infinity literal met while locating it (json's hook returns one)."""

    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        self.token = token


#: Locating a non-finite number walks the parsed body at most this long; past it, the
#: answer names no field (a huge body costs a bounded extra, never a slow 422).
LOCATE_BUDGET_S = 0.25


def read_json() -> Any:
    """The body as JSON, parsed once with orjson (its depth limit keeps the stack safe).

    The body itself was read by the app's hook before the request took a compute slot
    (the request context's ``body``); outside a request flow that did, it is read here."""
    ctx = g.get("_gradserve_ctx")
    body = ctx.body if ctx is not None else None
    settings = current_app.extensions["gradserve"].settings
    if body is None:
        body = read_body(settings.body_timeout_s)
    return parse_json(body, settings.limits)


def parse_json(body: bytes, limits: Limits = DEFAULT_LIMITS) -> Any:
    """A body's bytes as JSON: a 413 for more arrays and objects than ``limits`` allow
    (counted before parsing), a 400 naming the syntax error, a 422 naming the first
    non-finite number (NaN, Infinity, or one such as 1e999 that overflows float64)."""
    check_structure(body, limits)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        msg = str(exc)
        if "infinity when parsed" in msg:
            # Valid JSON, but a number (1e999, a 5,000-digit integer) overflows float64.
            raise _non_finite_problem(body, "a number is out of the float64 range "
                                      "(non-finite numbers are not allowed in requests)"
                                      ) from None
        if b"NaN" in body or b"Infinity" in body:
            _reject_non_finite(body)
        raise BadRequest(f"body is not valid JSON: {msg}") from None


def _reject_non_finite(body: bytes) -> None:
    """NaN/Infinity literals (or 1e999) are a 422 (docs/api.md §1), not a parse error."""
    found = _locate_non_finite(body)
    if found is not None:
        raise _non_finite_problem(body, "", found) from None


Found = tuple[list[str | int] | None, str]


def _non_finite_problem(body: bytes, fallback: str, found: Found | None = None
                        ) -> Unprocessable:
    if found is None:
        found = _locate_non_finite(body)
    if found is None or found[0] is None:
        return Unprocessable(fallback or "non-finite numbers (NaN, Infinity) are not allowed "
                             "in requests")
    loc, what = found
    return Unprocessable(f"{_path_text(loc)}: {what} (non-finite numbers are not allowed in "
                         "requests: send a finite float64 number)", loc=tuple(loc) or ("body",))


def _path_text(loc: list[str | int]) -> str:
    """``["values", "x", 1]`` → ``values.x[1]``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            text = str(part)[:128]
            out += f".{text}" if out else text
    return out or "body"


def _token(value: Any) -> str | None:
    """What is wrong with a non-finite number, else None."""
    if type(value) is _Bad:
        return f"{value.token} is not a number"
    if type(value) is float and not isfinite(value):
        return "the number is beyond the float64 range (about ±1.8e308)"
    return None


def _locate_non_finite(body: bytes) -> Found | None:
    """Where the first non-finite number of ``body`` is, in document order (a loc and its
    text); None when the body has none or is not JSON. The loc is None when the walk ran
    past ``LOCATE_BUDGET_S`` (the number is there, its place unsaid).

    Parsing stays in C: NaN/Infinity become markers, integers floats (``float`` takes any
    length: ``int`` refuses over 4,300 digits) and 1e999 is inf. A list of numbers is
    checked whole with ``map(isfinite, ...)``; only lists holding anything else are walked
    item by item."""
    try:
        data = json.loads(body, parse_constant=_Bad, parse_int=float)
    except (ValueError, RecursionError):
        return None
    token = _token(data)
    if token is not None:
        return [], token
    if not isinstance(data, dict | list):
        return None
    deadline = time.perf_counter() + LOCATE_BUDGET_S
    path: list[str | int] = []
    stack = [_children(data)]
    seen = 0
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            if path:
                path.pop()
            continue
        key, value = item
        token = _token(value)
        if token is not None:
            return [*path, key], token
        kind = type(value)
        if kind is dict or (kind is list and not _all_finite(value)):
            path.append(key)
            stack.append(_children(value))
        seen += 1
        if not seen & 0x3FFF and time.perf_counter() > deadline:
            return None, ""
    return None


def _all_finite(items: list[Any]) -> bool:
    """Whether ``items`` are all finite numbers (False: something else is there too)."""
    try:
        return all(map(isfinite, items))
    except TypeError:
        return False


def _children(node: Any) -> Any:
    return iter(node.items()) if type(node) is dict else _list_items(node)


def _list_items(items: list[Any], chunk: int = 4096) -> Any:
    """``enumerate(items)``, less the runs of finite numbers (checked in C, a chunk at a
    time): a tensor's million numbers cost no Python step each."""
    for start in range(0, len(items), chunk):
        part = items[start:start + chunk]
        if not _all_finite(part):
            yield from enumerate(part, start)


def validate(model: type[M], data: Any, limits: Limits | None = None) -> M:
    """Pydantic validation, once every list and map the model declares is within its bound
    (``limits``: the settings' limits; default: the app's, outside one the defaults);
    errors become a 422 listing the first :data:`MAX_ERRORS` ``loc`` and ``msg`` and
    counting the rest."""
    if limits is None:
        limits = (current_app.extensions["gradserve"].settings.limits if has_app_context()
                  else DEFAULT_LIMITS)
    check_bounds(model, data, limits)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_problem(exc, model) from None
    except RecursionError:
        raise Unprocessable("request is nested too deeply") from None


_PREFIXES = ("Value error, ", "Assertion failed, ")
#: Errors an answer lists (the detail counts the rest): what a client can act on, in a
#: bounded time and size whatever the number of bad items.
MAX_ERRORS = 40
MAX_LOC_PARTS = 32


def validation_problem(exc: ValidationError, model: type[BaseModel] | None = None
                       ) -> Unprocessable:
    """A 422 listing the first :data:`MAX_ERRORS` ``loc`` and ``msg`` (the detail says how
    many more): no Pydantic prefixes, a ``loc`` that always names a field (a cross-field
    rule says which), and for an unknown field the allowed ones and the likely intended
    one."""
    errors = []
    total = exc.error_count()
    raw = exc.errors(include_url=False, include_input=False)[:MAX_ERRORS]
    meant = _meant_by_extras(raw, model)
    for e in raw:
        loc = [p for p in e["loc"] if p not in UNION_TAGS]
        msg = e["msg"]
        if e["type"] == "missing" and tuple(loc) in meant:
            msg += f" (the body has '{meant[tuple(loc)]}' instead: rename it)"
        for prefix in _PREFIXES:
            msg = msg.removeprefix(prefix)
        cause = (e.get("ctx") or {}).get("error")
        if isinstance(cause, CrossFieldError):
            loc = [*loc, *cause.loc]
        if e["type"] == "extra_forbidden" and model is not None and loc:
            msg = _unknown_field(model, loc)
        # A loc holds the client's own keys (an unknown field's name can be megabytes
        # long): each part is cut, so the answer stays small whatever was sent.
        loc = [p[:128] if isinstance(p, str) else p for p in loc[:MAX_LOC_PARTS]]
        errors.append({"loc": loc or ["body"], "msg": msg[:500]})
    first = errors[0] if errors else {"loc": ["body"], "msg": "invalid request"}
    where = ".".join(str(p) for p in first["loc"])
    detail = f"{where}: {first['msg']}"
    if total > 1:
        detail += f" (and {total - 1:,} more"
        detail += f"; the first {len(errors)} are listed)" if total > len(errors) else ")"
    return Unprocessable(detail, errors=errors)


#: Unknown field -> (the field meant, why), for names that mean a field without being
#: spelled like it: the words of other APIs (Triton/OIP's ``inputs``, PyTorch's
#: ``grad_outputs``) and of the maths. Used only where the field meant is allowed there.
SYNONYMS: dict[str, tuple[str, str]] = {}
for _names, _field, _why in (
    (("inputs", "input", "data", "feeds", "feed_dict"), "values",
     "on /v1 a value for every input goes in 'values': name -> tensor ('inputs' with "
     "name/shape/datatype/data is the Open Inference Protocol's form, for "
     "/v2/models/{name}/infer)"),
    (("expr", "formula", "equation", "function", "func", "text", "source"), "expression",
     "a graph written as text, e.g. \"(x + y) * z\""),
    (("grad", "grads", "gradient", "gradients", "with_respect_to", "respect_to",
      "differentiate"), "wrt",
     "the inputs to differentiate with respect to, e.g. [\"x\"]; by default every "
     "differentiable input, and the answer's 'gradients' holds them"),
    (("spec", "graph_spec", "graphspec", "network", "nodes"), "graph",
     "a graph spec: {\"inputs\", \"nodes\", \"output\"}"),
    (("id", "graphid", "model_id", "hash"), "graph_id",
     "a graph registered with POST /v1/graphs"),
    (("model_name", "alias"), "name", "the model name of the registered graph"),
    (("grad_output", "grad_outputs", "output_grad", "output_gradient", "seed", "cotangent",
      "cotangents", "dy", "dout", "grad_out"), "upstream",
     "dL/d(output), shaped like the output"),
    (("direction", "directions", "tangent", "jvp"), "tangents",
     "forward mode: input -> direction"),
    (("hessian_vector", "hessian_vector_product", "hvp_direction"), "hvp",
     "a direction for the Hessian-vector product"),
    (("format", "wire_format", "response_encoding"), "encoding", "\"json\" or \"b64\""),
    (("precision", "float_type"), "dtype", "\"float64\" or \"float32\""),
    (("labels", "targets", "target", "y"), "loss",
     "targets go inside 'loss': {\"type\": ..., \"targets\": ...}"),
    (("x", "X", "batch", "features", "values"), "inputs", "the network's input batch"),
    (("act", "activation_function", "nonlinearity", "non_linearity"), "activation",
     "relu, sigmoid, tanh or identity"),
):
    for _name in _names:
        SYNONYMS.setdefault(_name, (_field, _why))
SYNONYMS["values"] = ("inputs", "an MLP's input batch goes in 'inputs'")
SYNONYMS["inputs"] = SYNONYMS["input"]
del _names, _field, _why, _name


def _unknown_field(model: type[BaseModel], loc: list[str | int]) -> str:
    name = str(loc[-1])
    allowed = _fields_at(model, loc[:-1])
    if not allowed:
        return f"unknown field '{name}'"
    return f"unknown field '{name}'{_hint(name, allowed)}; allowed: {', '.join(allowed)}"


def _meant_by_extras(errors: list[Any], model: type[BaseModel] | None
                     ) -> dict[tuple[Any, ...], str]:
    """A missing field's loc -> the unknown field sent in its place (by meaning or
    spelling), so that "field required" says what to rename."""
    if model is None:
        return {}
    missing = {tuple(e["loc"]) for e in errors if e["type"] == "missing"}
    found: dict[tuple[Any, ...], str] = {}
    for e in errors:
        loc = list(e["loc"])
        if e["type"] != "extra_forbidden" or not loc or not missing:
            continue
        name = str(loc[-1])
        target = _meant(name, _fields_at(model, loc[:-1]))
        if target is not None and (*loc[:-1], target) in missing:
            found[(*loc[:-1], target)] = name[:80]
    return found


def _meant(name: str, allowed: list[str]) -> str | None:
    hint = _hint(name, allowed)
    return hint.split("'")[1] if hint else None


def _hint(name: str, allowed: list[str]) -> str:
    """`` (did you mean 'x'? why)`` by meaning first, then by spelling; '' if neither."""
    for key in (name, name.lower(), name.lower().replace("-", "_")):
        meant = SYNONYMS.get(key)
        if meant is not None and meant[0] in allowed:
            return f" (did you mean '{meant[0]}'? {meant[1]})"
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


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
