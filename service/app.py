"""The Flask application factory."""

from __future__ import annotations

import hmac
import itertools
import logging
import os
import re
import sys
import threading
import time
from typing import Any

import orjson
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from service.config import Settings, load_settings
from service.engine import REGISTRY
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
from service.http.reader import read_environ_body
from service.http.responses import problem_response
from service.http.state import AppState
from service.runtime import metrics
from service.runtime.worker import close_after_response, queued_at
from service.store.cache import GraphCache

_HEADER_LENGTH_KEY = "HTTP_" + HEADER_LENGTH.upper().replace("-", "_")

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
access_log = logging.getLogger("gradserve.access")
error_log = logging.getLogger("gradserve.error")


class _JsonLines(logging.StreamHandler):  # type: ignore[type-arg]
    """The access log's own handler: one JSON object a line on stdout.

    While it is the access logger's only handler, :func:`write_access_line` skips the
    logging machinery (record, formatter, handler lock, flush: ~30 µs a request) and writes
    the line to the stream's file descriptor in one ``os.write``; any other handler (a test's,
    an operator's) gets every line through ``logging`` as before."""

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.setFormatter(logging.Formatter("%(message)s"))
        try:
            stream.flush()
            self.fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # a stream without a descriptor
            self.fd = None


def _configure_logging(level: str) -> None:
    for logger, stream in ((access_log, sys.stdout), (error_log, sys.stderr)):
        if not logger.handlers:
            if logger is access_log:
                handler: logging.Handler = _JsonLines(stream)
            else:
                handler = logging.StreamHandler(stream)
                handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            logger.propagate = False
    access_log.setLevel(logging.INFO)
    error_log.setLevel(level.upper())


def write_access_line(fields: dict[str, Any]) -> None:
    """One JSON access-log line: straight to stdout's descriptor when the access logger has
    only its own handler (see :class:`_JsonLines`), else through ``logging``."""
    handlers = access_log.handlers
    if len(handlers) == 1 and type(handlers[0]) is _JsonLines and handlers[0].fd is not None \
            and not access_log.disabled:
        data = orjson.dumps(fields, option=orjson.OPT_APPEND_NEWLINE)
        fd = handlers[0].fd
        try:
            while data:  # one call for a line under PIPE_BUF; a signal may split a longer one
                data = data[os.write(fd, data):]
        except OSError:  # a closed stdout must not fail the request
            pass
        return
    if access_log.isEnabledFor(logging.INFO):
        access_log.info(orjson.dumps(fields).decode())


# Request ids: 32 hex digits as before (uuid4's format), but a per-process random prefix and
# a counter instead of a getrandom call and a UUID object per request; unique across
# workers, restarts and replicas as long as the 64-bit prefix is.
_request_ids = itertools.count(1)
_id_prefix = ""


def _new_id_prefix() -> None:
    global _id_prefix, _request_ids
    _id_prefix = os.urandom(8).hex()
    _request_ids = itertools.count(1)


_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


def new_request_id() -> str:
    """A request id: this process's random prefix and its next count, 32 hex digits."""
    return f"{_id_prefix}{next(_request_ids):016x}"


def create_app(settings: Settings | None = None, *, store: Any = None) -> Flask:
    """Build the app. ``store`` overrides the configured graph store (tests)."""
    settings = settings or load_settings()
    _configure_logging(settings.log_level)
    app = Flask("gradserve")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    if store is None:
        from service.store import make_store

        store = make_store(settings)
    cache = GraphCache(REGISTRY, settings.limits, store=store, l1_size=settings.l1_size)
    st = AppState(settings=settings, cache=cache, store=store)
    app.extensions["gradserve"] = st

    from service.http.routes import gradients, meta, mlp, oip, playground

    for blueprint in (gradients.bp, mlp.bp, meta.bp, oip.bp, playground.bp):
        app.register_blueprint(blueprint)

    _install_hooks(app, st)
    if settings.gateway:
        from service.http.gateway import Gateway

        # The hot routes skip Flask's per-request machinery (service/http/gateway.py); the test
        # client, gunicorn and any WSGI server all enter through it.
        app.wsgi_app = Gateway(app, st)  # type: ignore[method-assign]
    st.lifecycle["status"] = "ready" if meta.self_test() else "starting"
    return app


def _install_hooks(app: Flask, st: AppState) -> None:
    settings = st.settings
    keys, inflight = st.keys, st.inflight

    # One before/after pair does the request's bookkeeping (id, deadline, key, body, slot;
    # then slot, id header, metrics, access line); the teardown only frees a slot that an
    # after-request failure left taken.
    @app.before_request
    def _start() -> None:
        req, ctx = request._get_current_object(), g._get_current_object()  # type: ignore
        path, environ = req.path, req.environ
        start_request(ctx, environ, settings)
        if keys and _needs_key(path, settings):
            authenticate(keys, environ)
        if _is_api(path):
            if req.url_rule is not None and req.method == "POST":
                ctx.body = read_body_in_time(ctx, environ, settings,
                                             binary=path.startswith("/v2/"))
            admit(ctx, inflight, settings)

    def _release(ctx: Any) -> None:
        release(ctx, inflight)

    @app.after_request
    def _finish(resp: Response) -> Response:
        req, ctx = request._get_current_object(), g._get_current_object()  # type: ignore
        _release(ctx)
        return finish_request(resp, req, ctx)

    @app.teardown_request
    def _teardown(_exc: BaseException | None) -> None:
        _release(g._get_current_object())  # type: ignore[attr-defined]

    @app.errorhandler(ProblemError)
    def _problem(err: ProblemError) -> Response:
        count_problem(err)
        return problem_response(err)

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        err = ProblemError(exc.description or exc.name)
        err.status, err.title = exc.code or 500, exc.name
        if exc.code == 413:
            err.detail = (f"body is over the limit GRADSERVE_MAX_BODY_BYTES="
                          f"{settings.max_body_bytes:,} bytes")
            metrics.LIMITS.labels("max_body_bytes").inc()
        resp = problem_response(err)
        if exc.code == 405:
            allowed = exc.get_response().headers.get("Allow")
            if allowed:
                resp.headers["Allow"] = allowed
        return resp

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        rid = g.get("request_id", "-")
        error_log.exception("unhandled error in request %s", rid)
        err = ProblemError(f"internal error; request id {rid}")
        return problem_response(err)


def count_problem(err: ProblemError) -> None:
    """The metric an error answer counts in: a limit (by name) or the deadline."""
    if isinstance(err, LimitExceeded):
        metrics.LIMITS.labels(err.limit).inc()
    elif isinstance(err, DeadlineExceeded):
        metrics.DEADLINES.inc()


def start_request(ctx: Any, environ: dict[str, Any], settings: Settings) -> None:
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


def read_body_in_time(ctx: Any, environ: dict[str, Any], settings: Settings, *,
                      binary: bool = False) -> Any:
    """The body, read before a compute slot is taken, within GRADSERVE_BODY_TIMEOUT_S (and
    what is left of the request deadline). ``binary``: an Open Inference Protocol body (JSON
    or JSON + binary tensors), read into a buffer that aligns its binary part."""
    left = ctx.deadline.at - time.monotonic()
    if left <= 0:  # spent waiting for a thread already: 503, and the body is left unread
        close_after_response()
        ctx.deadline.check()
    try:
        into = oip_buffer(environ.get(_HEADER_LENGTH_KEY)) if binary else None
        return read_environ_body(environ, settings.max_body_bytes,
                                 min(settings.body_timeout_s, left), into=into)
    except RequestTimeout:
        close_after_response()  # the rest of the body may still come: not on this thread
        raise


def admit(ctx: Any, inflight: threading.BoundedSemaphore, settings: Settings) -> None:
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


def release(ctx: Any, inflight: threading.BoundedSemaphore) -> None:
    """Give back the compute slot that :func:`admit` took (once, whoever calls first)."""
    if getattr(ctx, "admitted", False):
        ctx.admitted = False
        inflight.release()
        metrics.TALLY.inflight(-1)


# JSON numbers in the access log stay within 64 bits (orjson refuses bigger ints).
_MAX_LOGGED_INT = 2**63 - 1


def finish_request(resp: Response, req: Any, ctx: Any) -> Response:
    """Request id header, then :func:`account` for a Flask response."""
    rule = req.url_rule
    resp.headers["X-Request-ID"] = getattr(ctx, "request_id", "")
    account(ctx, rule.rule if rule is not None else "<unmatched>", req.method, req.path,
            resp.status_code, req.content_length, resp.calculate_content_length())
    return resp


def account(ctx: Any, route: str, method: str, path: str, status: int,
            bytes_in: int | None, bytes_out: int | None) -> None:
    """A finished request's metrics (bounded label values) and its JSON access-log line."""
    elapsed = time.perf_counter() - getattr(ctx, "start", time.perf_counter())
    metrics.TALLY.record(route, metrics.method_label(method), str(status), elapsed)
    if bytes_in is not None:
        bytes_in = min(bytes_in, _MAX_LOGGED_INT)
    write_access_line({
        "ts": round(time.time(), 3), "request_id": getattr(ctx, "request_id", ""),
        "method": method[:32], "route": route, "path": path[:200], "status": status,
        "latency_ms": round(elapsed * 1000, 3), "graph_id": getattr(ctx, "graph_id", None),
        "cache": getattr(ctx, "cache", None), "bytes_in": bytes_in, "bytes_out": bytes_out})


# A worker's start: at most this many registered graphs, within this many seconds.
WARM_GRAPHS = 64
WARM_BUDGET_S = 2.0


def warm_cache(app: Flask, n: int = WARM_GRAPHS, budget_s: float = WARM_BUDGET_S) -> int:
    """Load the ``n`` most recently registered graphs from the store into this worker's L1
    (gunicorn's ``post_worker_init``), so that a recycled worker's first by-id requests are
    hits. Bounded by the L1's size and ``budget_s``; a store that fails only leaves the
    worker cold. Returns the count loaded."""
    st = app.extensions.get("gradserve") if isinstance(app, Flask) else None
    if st is None or st.store is None:
        return 0
    stop = time.monotonic() + budget_s
    try:
        ids = st.store.recent(min(n, st.settings.l1_size))
    except Exception as exc:  # noqa: BLE001 - a cold worker still serves
        error_log.warning("L1 warm-up skipped: %s", exc)
        return 0
    loaded = 0
    for graph_id in reversed(ids):  # oldest first: the newest end up the most recently used
        if time.monotonic() > stop:
            break
        try:
            st.cache.plan_for_id(graph_id)
            loaded += 1
        except Exception:  # noqa: BLE001,S112 - expired, corrupt or unreachable: skip it
            continue
    return loaded


def mark_draining(app: Flask) -> None:
    """Called from gunicorn's SIGTERM handler: /readyz answers 503 from now on."""
    st = app.extensions.get("gradserve") if isinstance(app, Flask) else None
    if st is not None:
        st.lifecycle["status"] = "draining"


def _is_api(path: str) -> bool:
    """/v1 and the Open Inference Protocol's /v2, but not its health probes (they are
    /healthz and /readyz under OIP's names: no key, no admission slot)."""
    if path.startswith("/v1/"):
        return True
    return (path == "/v2" or path.startswith("/v2/")) and not path.startswith("/v2/health/")


def _needs_key(path: str, settings: Settings) -> bool:
    if _is_api(path):
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
