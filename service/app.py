"""The Flask application factory."""

from __future__ import annotations

import hmac
import logging
import re
import sys
import threading
import time
import uuid
from typing import Any

import orjson
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from service import metrics
from service.api.responses import problem_response
from service.api.state import AppState
from service.config import Settings, load_settings
from service.engine import REGISTRY
from service.engine.limits import Deadline
from service.errors import (
    DeadlineExceeded,
    LimitExceeded,
    ProblemError,
    ServiceUnavailable,
    Unauthorized,
)
from service.graphs import GraphCache

REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
access_log = logging.getLogger("gradserve.access")
error_log = logging.getLogger("gradserve.error")


def _configure_logging(level: str) -> None:
    for logger, stream in ((access_log, sys.stdout), (error_log, sys.stderr)):
        if not logger.handlers:
            handler = logging.StreamHandler(stream)
            handler.setFormatter(logging.Formatter("%(message)s"))
            logger.addHandler(handler)
            logger.propagate = False
    access_log.setLevel(logging.INFO)
    error_log.setLevel(level.upper())


def _log_json(logger: logging.Logger, level: int, **fields: Any) -> None:
    if logger.isEnabledFor(level):
        logger.log(level, orjson.dumps({"ts": round(time.time(), 3), **fields}).decode())


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

    from service.api import gradients, meta, mlp, oip, playground

    for blueprint in (gradients.bp, mlp.bp, meta.bp, oip.bp, playground.bp):
        app.register_blueprint(blueprint)

    _install_hooks(app, st)
    st.lifecycle["status"] = "ready" if meta.self_test() else "starting"
    return app


def _install_hooks(app: Flask, st: AppState) -> None:
    settings = st.settings
    keys = tuple(k.encode() for k in settings.all_api_keys)
    # gthread runs at most `threads` requests at once per worker; GRADSERVE_MAX_INFLIGHT below
    # that keeps a few threads free for cheap requests (health, by-id lookups while a store
    # call waits) and refuses the rest at once with a 503 instead of queueing them.
    inflight = threading.BoundedSemaphore(settings.max_inflight or max(settings.threads, 1))

    @app.before_request
    def _start() -> None:
        req, ctx = request._get_current_object(), g._get_current_object()  # type: ignore
        ctx.start = time.perf_counter()
        ctx.deadline = Deadline.after(settings.request_deadline_s)
        rid = req.headers.get("X-Request-ID", "")
        ctx.request_id = rid if REQUEST_ID_RE.match(rid) else uuid.uuid4().hex
        ctx.graph_id = ctx.cache = None
        ctx.admitted = False
        path = req.path
        if keys and _needs_key(path, settings):
            _authenticate(keys)
        if _is_api(path):
            if not inflight.acquire(blocking=False):
                metrics.REJECTED.inc()
                raise ServiceUnavailable("this worker is at its limit of in-flight requests "
                                         "(GRADSERVE_MAX_INFLIGHT); retry shortly")
            ctx.admitted = True
            metrics.INFLIGHT.inc()

    @app.teardown_request
    def _release(_exc: BaseException | None) -> None:
        if g.get("admitted"):
            g.admitted = False
            inflight.release()
            metrics.INFLIGHT.dec()

    @app.after_request
    def _finish(resp: Response) -> Response:
        req, ctx = request._get_current_object(), g._get_current_object()  # type: ignore
        elapsed = time.perf_counter() - getattr(ctx, "start", time.perf_counter())
        rule = req.url_rule
        route = rule.rule if rule is not None else "<unmatched>"
        rid = getattr(ctx, "request_id", "")
        resp.headers["X-Request-ID"] = rid
        status = resp.status_code
        metrics.REQUESTS.labels(route, req.method, str(status)).inc()
        metrics.LATENCY.labels(route).observe(elapsed)
        _log_json(access_log, logging.INFO, request_id=rid, method=req.method, route=route,
                  path=req.path[:200], status=status, latency_ms=round(elapsed * 1000, 3),
                  graph_id=getattr(ctx, "graph_id", None), cache=getattr(ctx, "cache", None),
                  bytes_in=req.content_length, bytes_out=resp.calculate_content_length())
        return resp

    @app.errorhandler(ProblemError)
    def _problem(err: ProblemError) -> Response:
        if isinstance(err, LimitExceeded):
            metrics.LIMITS.labels(err.limit).inc()
        elif isinstance(err, DeadlineExceeded):
            metrics.DEADLINES.inc()
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


def _authenticate(keys: tuple[bytes, ...]) -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    given = token.strip().encode() if scheme.lower() == "bearer" else b""
    ok = False
    for key in keys:  # compare with every key: the time taken does not depend on which
        ok |= hmac.compare_digest(given, key)
    if not ok:
        metrics.AUTH_FAILURES.inc()
        raise Unauthorized("send 'Authorization: Bearer <key>' with a valid API key",
                           headers={"WWW-Authenticate": 'Bearer realm="gradserve"'})
