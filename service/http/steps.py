"""The steps of one request, in the order they run, for the Flask hooks and the gateway
alike: :func:`start_request` (id, clock, deadline), :func:`authenticate`,
:func:`read_body_in_time`, :func:`admit` (a compute slot), the flow, :func:`release`,
:func:`account` (metrics and the access line). They take the WSGI environ, never Flask's
request object, so one copy of each serves both paths."""

from __future__ import annotations

import hmac
import os
import threading
import time
from typing import Any

from service.config import Settings
from service.engine.limits import Deadline
from service.errors import (
    DeadlineExceeded,
    LimitExceeded,
    ProblemError,
    RequestTimeout,
    ServiceUnavailable,
    Unauthorized,
)
from service.flows.oip_codec import HEADER_LENGTH, oip_buffer
from service.http.access_log import REQUEST_ID_RE, new_request_id, write_access_line
from service.http.reader import read_environ_body
from service.runtime import metrics, tracing
from service.runtime.intake import Verdict
from service.runtime.worker import body_verdict, close_after_response, queued_at

_HEADER_LENGTH_KEY = "HTTP_" + HEADER_LENGTH.upper().replace("-", "_")


class RequestContext:
    """One request's bookkeeping (Flask's ``g`` holds one for its routes, the gateway makes
    its own): what the steps write and the access line reads."""

    __slots__ = ("start", "deadline", "request_id", "graph_id", "cache", "body", "admitted",
                 "trace", "span")

    def __init__(self) -> None:
        self.start = 0.0
        self.deadline: Deadline | None = None
        self.request_id = ""
        self.graph_id: str | None = None
        self.cache: str | None = None
        self.body: Any = None
        self.admitted = False
        self.trace: tuple[str, str, str] | None = None  # the caller's (trace, span, flags)
        self.span: tracing.RequestSpan | None = None  # ours, when spans are exported

    def note(self, graph_id: str, cache: str | None) -> None:
        """The graph a request resolved to (logged with it, even when it fails later)."""
        self.graph_id, self.cache = graph_id, cache


def count_problem(err: ProblemError) -> None:
    """The metric an error answer counts in: a limit (by name) or the deadline."""
    if isinstance(err, LimitExceeded):
        metrics.LIMITS.labels(err.limit).inc()
    elif isinstance(err, DeadlineExceeded):
        metrics.DEADLINES.inc()


def start_request(ctx: RequestContext, environ: dict[str, Any], settings: Settings) -> None:
    """Request id, start time and deadline. Under gradserve's gunicorn worker the clock
    starts when the connection was queued, so time spent waiting for a thread counts."""
    now = time.monotonic()
    queued = queued_at()
    start = now if queued is None or queued > now else queued
    ctx.start = time.perf_counter() - (now - start)
    ctx.deadline = Deadline.after(settings.request_deadline_s, start=start)
    rid = environ.get("HTTP_X_REQUEST_ID", "")  # the header, without Headers' lookup
    ctx.request_id = rid if rid and REQUEST_ID_RE.match(rid) else new_request_id()
    ctx.graph_id = ctx.cache = ctx.body = None
    ctx.admitted = False
    traceparent = environ.get("HTTP_TRACEPARENT")
    ctx.trace = tracing.parse_traceparent(traceparent) if traceparent else None
    ctx.span = None if tracing.TRACER is None else tracing.start(
        traceparent if ctx.trace else None, environ.get("REQUEST_METHOD", ""),
        environ.get("PATH_INFO", ""))


def trace_headers(ctx: RequestContext) -> list[tuple[str, str]]:
    """The answer's ``traceresponse`` (W3C Trace Context level 2): the caller's trace id and
    this server's span id, for a request that sent a valid ``traceparent``."""
    if ctx.trace is None:
        if ctx.span is None:
            return []
        sc = ctx.span.span.get_span_context()
        return [("traceresponse", f"00-{sc.trace_id:032x}-{sc.span_id:016x}-01")]
    trace_id, _, flags = ctx.trace
    span_id = ctx.span.span_id if ctx.span is not None else os.urandom(8).hex()
    return [("traceresponse", f"00-{trace_id}-{span_id}-{flags}")]


ONNX_MEDIA = "application/onnx"


def _is_onnx(environ: dict[str, Any]) -> bool:
    return str(environ.get("CONTENT_TYPE", "")).split(";")[0].strip().lower() == ONNX_MEDIA


def read_body_in_time(ctx: RequestContext, environ: dict[str, Any], settings: Settings, *,
                      binary: bool = False, model: bool = False) -> Any:
    """The body, read before a compute slot is taken, within GRADSERVE_BODY_TIMEOUT_S (and
    what is left of the request deadline). ``binary``: an Open Inference Protocol body (JSON
    or JSON + binary tensors), read into a buffer that aligns its binary part. ``model``: a
    registration, whose body may be an ONNX model's bytes (``application/onnx``)."""
    left = ctx.deadline.at - time.monotonic()
    if left <= 0:  # spent waiting for a thread already: 503, and the body is left unread
        close_after_response()
        ctx.deadline.check()
    verdict = body_verdict()  # how the worker's event loop gathered it (None: not there)
    if verdict is Verdict.OVER_BUDGET:
        close_after_response()  # unread: the connection cannot carry another request
        raise ServiceUnavailable(
            "this worker holds its limit of request-body bytes already "
            f"(GRADSERVE_BODY_BYTES_IN_FLIGHT={settings.body_bytes_in_flight:,}); "
            "retry shortly", retry_after=1)
    if verdict is Verdict.OVERDUE:
        close_after_response()
        raise RequestTimeout(f"the body did not arrive within GRADSERVE_BODY_TIMEOUT_S="
                             f"{settings.body_timeout_s:g} s")
    try:
        into = oip_buffer(environ.get(_HEADER_LENGTH_KEY)) if binary else None
        if model and _is_onnx(environ):  # a model's bytes: their own limit
            return read_environ_body(environ, settings.limits.max_model_bytes,
                                     min(settings.body_timeout_s, left), media=ONNX_MEDIA,
                                     setting="GRADSERVE_MAX_MODEL_BYTES")
        return read_environ_body(environ, settings.max_body_bytes,
                                 min(settings.body_timeout_s, left), into=into)
    except RequestTimeout:
        close_after_response()  # the rest of the body may still come: not on this thread
        raise


def admit(ctx: RequestContext, inflight: threading.BoundedSemaphore, settings: Settings) -> None:
    """Take a compute slot, waiting at most GRADSERVE_ADMISSION_WAIT_S (and never past the
    deadline); a 503 with Retry-After when none frees up in time."""
    ctx.deadline.check()  # spent already (queued too long): a 503 naming the deadline
    wait = min(settings.admission_wait_s, ctx.deadline.at - time.monotonic())
    if wait <= 0 or not inflight.acquire(timeout=wait):
        metrics.REJECTED.inc()
        raise ServiceUnavailable("this worker is at its limit of in-flight requests "
                                 f"(GRADSERVE_MAX_INFLIGHT={settings.max_inflight}) and none "
                                 f"freed up within GRADSERVE_ADMISSION_WAIT_S="
                                 f"{settings.admission_wait_s:g} s; retry shortly")
    ctx.admitted = True
    metrics.TALLY.inflight(1)


def release(ctx: RequestContext, inflight: threading.BoundedSemaphore) -> None:
    """Give back the compute slot that :func:`admit` took (once, whoever calls first)."""
    if ctx.admitted:
        ctx.admitted = False
        inflight.release()
        metrics.TALLY.inflight(-1)


# JSON numbers in the access log stay within 64 bits (orjson refuses bigger ints).
_MAX_LOGGED_INT = 2**63 - 1


def account(ctx: RequestContext, route: str, method: str, path: str, status: int,
            bytes_in: int | None, bytes_out: int | None) -> None:
    """A finished request's metrics (bounded label values) and its JSON access-log line."""
    elapsed = time.perf_counter() - ctx.start
    metrics.TALLY.record(route, metrics.method_label(method), str(status), elapsed)
    if bytes_in is not None:
        bytes_in = min(bytes_in, _MAX_LOGGED_INT)
    trace = ctx.trace
    span = ctx.span
    if span is not None:
        ctx.span = None
        span.end(status, route)
    write_access_line({
        "ts": round(time.time(), 3), "request_id": ctx.request_id,
        "method": method[:32], "route": route, "path": path[:200], "status": status,
        "latency_ms": round(elapsed * 1000, 3), "graph_id": ctx.graph_id,
        "cache": ctx.cache, "bytes_in": bytes_in, "bytes_out": bytes_out,
        "trace_id": trace[0] if trace is not None else None})


def is_api(path: str) -> bool:
    """/v1 and the Open Inference Protocol's /v2, but not its health probes (they are
    /healthz and /readyz under OIP's names: no key, no admission slot)."""
    if path.startswith("/v1/"):
        return True
    return (path == "/v2" or path.startswith("/v2/")) and not path.startswith("/v2/health/")


def needs_key(path: str, settings: Settings) -> bool:
    if is_api(path):
        return True
    return path == "/metrics" and settings.metrics_require_key


def authenticate(keys: tuple[bytes, ...], environ: dict[str, Any]) -> None:
    """A 401 unless the request's bearer token is one of ``keys``."""
    header = environ.get("HTTP_AUTHORIZATION", "")
    scheme, _, token = header.partition(" ")
    given = token.strip().encode() if scheme.lower() == "bearer" else b""
    ok = False
    for key in keys:  # compare with every key: the time taken does not depend on which
        ok |= hmac.compare_digest(given, key)
    if not ok:
        metrics.AUTH_FAILURES.inc()
        raise Unauthorized("send 'Authorization: Bearer <key>' with a valid API key",
                           headers={"WWW-Authenticate": 'Bearer realm="gradserve"'})
