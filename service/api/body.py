"""Request bodies: content type, size, JSON parsing and Pydantic validation, in that order."""

from __future__ import annotations

import difflib
import json
import socket
import threading
import time
import types
from collections.abc import Iterator
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

import orjson
from flask import current_app, g, request
from pydantic import BaseModel, Tag, ValidationError
from werkzeug.http import parse_options_header
from werkzeug.wsgi import get_content_length

from schemas.errors import CrossFieldError
from service.errors import (
    BadRequest,
    ContentTooLarge,
    ProblemError,
    RequestTimeout,
    Unprocessable,
    UnsupportedMediaType,
)

M = TypeVar("M", bound=BaseModel)


def _non_finite(token: str) -> Any:
    raise ValueError(f"non-finite number {token}")


def read_body(timeout_s: float, *, into: Any = None) -> Any:
    """The current Flask request's body: :func:`read_environ_body` with the app's limit."""
    return read_environ_body(request.environ, current_app.config["MAX_CONTENT_LENGTH"],
                             timeout_s, into=into)


def read_environ_body(environ: dict[str, Any], limit: int, timeout_s: float, *,
                      into: Any = None) -> Any:
    """The whole body in memory, after the content type and declared size are checked.

    Under gunicorn every socket read gets what is left of ``timeout_s``: a client that
    stops half-way is answered 408 instead of holding the thread (and, since the app
    takes its compute slot only after this returns, never a slot).

    ``into`` (the Open Inference Protocol's binary bodies): a function that, given the
    declared length, returns a writable memoryview of that length to read into (an aligned
    buffer, so that binary tensors are views); the body may then be any content type, and
    a declared length over the limit is read and dropped (up to twice the limit) before the
    413, so a pooled client connection survives.
    """
    length = get_content_length(environ)
    # The common exact header first: werkzeug's full header parse costs a few µs a request.
    if into is None and environ.get("CONTENT_TYPE") != "application/json":
        mimetype = parse_options_header(environ.get("CONTENT_TYPE", ""))[0].lower()
        if mimetype != "application/json" and not mimetype.endswith("+json"):
            raise UnsupportedMediaType(
                f"send the body as application/json (got {mimetype or 'no Content-Type'})")
    if length is not None and length > limit:
        if into is not None and length <= 2 * limit:
            _discard(environ, length, timeout_s)
        raise ContentTooLarge(f"body is {min(length, 1 << 64):,} bytes, over the limit "
                              f"GRADSERVE_MAX_BODY_BYTES={limit:,}")
    if into is not None and length is not None:
        view = into(length)
        got = _read_with_deadline(environ, length, timeout_s, sink=view)
        if got != length:
            raise BadRequest(f"body ended after {got:,} of the "
                             f"{length:,} bytes its Content-Length declares")
        return view
    # The declared length, or for a chunked body one byte more than the limit (werkzeug
    # would stop silently at the limit and hand over a truncated body: a misleading 400).
    want = length if length is not None else limit + 1
    body = _read_with_deadline(environ, want, timeout_s)
    if length is not None and len(body) != length:
        raise BadRequest(f"body ended after {len(body):,} of the "
                         f"{length:,} bytes its Content-Length declares")
    if length is None and len(body) > limit:
        del body
        _discard(environ, limit, timeout_s)
        raise ContentTooLarge(f"body is over the limit GRADSERVE_MAX_BODY_BYTES={limit:,}")
    return body


def _discard(environ: dict[str, Any], most: int, timeout_s: float) -> None:
    """Read and drop up to ``most`` more bytes of a chunked body that is over the limit, so
    that a client still sending it gets its 413 instead of a reset connection (gunicorn
    drains only 64 KiB before it closes). Bounded in bytes and by the body deadline; never
    held in memory."""
    try:
        _read_with_deadline(environ, most, timeout_s, keep=False)
    except ProblemError:
        pass


_CHUNK = 1 << 20


def _read_with_deadline(environ: dict[str, Any], want: int, timeout_s: float,
                        keep: bool = True, sink: Any = None) -> Any:
    """``want`` bytes of the body (fewer if the client ends it) as bytes; with ``sink`` (a
    writable memoryview) written into it instead, returning the count read."""
    stream = environ["wsgi.input"]
    sock = environ.get("gunicorn.socket")
    timed = sock is not None and hasattr(sock, "settimeout")
    if not timed and sink is None:
        # Not under gunicorn (tests, another server): one read of the declared length
        # straight from the stream (werkzeug's get_data copies chunk by chunk).
        return stream.read(want) if keep else b""
    parts: list[bytes] = []
    got = 0
    for part in _chunks(stream, sock if timed else None, want, timeout_s):
        if sink is not None:
            sink[got:got + len(part)] = part
        elif keep:
            parts.append(part)
        got += len(part)
    if sink is not None:
        return got
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _chunks(stream: Any, sock: Any, want: int, timeout_s: float) -> Iterator[bytes]:
    """The body's bytes in chunks of at most 1 MiB, until ``want`` or the client's end;
    RequestTimeout past ``timeout_s`` (``sock``: the socket to time, None outside gunicorn)."""
    deadline = time.monotonic() + timeout_s
    prior = sock.gettimeout() if sock is not None else None
    got = 0
    # The socket timeout ends a read that gets no byte at all; a client that trickles a byte
    # now and then restarts it on every recv, so the watchdog ends those at the deadline.
    token = _WATCHDOG.watch(sock, deadline) if sock is not None else None
    try:
        while got < want:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            if sock is not None:
                sock.settimeout(left)
            part = stream.read(min(_CHUNK, want - got))
            if not part or time.monotonic() > deadline:
                raise TimeoutError if time.monotonic() > deadline else _Ended
            got += len(part)
            yield part
    except (TimeoutError, OSError, _Ended) as exc:
        if time.monotonic() > deadline or isinstance(exc, TimeoutError):
            raise RequestTimeout(f"the body did not arrive within GRADSERVE_BODY_TIMEOUT_S="
                                 f"{timeout_s:g} s (got {got:,} bytes)") from None
        if isinstance(exc, _Ended):
            return  # the caller reports the short body
        raise
    except Exception as exc:  # noqa: BLE001 - the server's own framing errors (bad chunks)
        raise BadRequest(f"the body could not be read: {type(exc).__name__} after "
                         f"{got:,} bytes") from None
    finally:
        if token is not None:
            _WATCHDOG.cancel(token)
            try:
                sock.settimeout(prior)
            except OSError:
                pass


class _Ended(Exception):
    """The client closed its side before the declared length arrived."""


class _BodyWatchdog:
    """One thread per process that shuts the read side of a socket whose body deadline has
    passed (a recv blocked on it then returns at once). Started on first use."""

    TICK_S = 0.25

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[int, tuple[float, Any]] = {}
        self._next = 0
        self._thread: threading.Thread | None = None

    def watch(self, sock: Any, deadline: float) -> int:
        with self._lock:
            self._next += 1
            self._watched[self._next] = (deadline, sock)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="body-watchdog",
                                                daemon=True)
                self._thread.start()
            return self._next

    def cancel(self, token: int) -> None:
        with self._lock:
            self._watched.pop(token, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.TICK_S)
            now = time.monotonic()
            with self._lock:
                late = [k for k, (at, _) in self._watched.items() if at < now]
                socks = [self._watched.pop(k)[1] for k in late]
            for sock in socks:
                try:
                    sock.shutdown(socket.SHUT_RD)
                except OSError:
                    pass


_WATCHDOG = _BodyWatchdog()


def read_json() -> Any:
    """The body as JSON, parsed once with orjson (its depth limit keeps the stack safe).

    The body itself was read by the app's hook before the request took a compute slot
    (``g.body``); outside a request flow that did, it is read here."""
    body = g.get("body")
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
