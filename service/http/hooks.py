"""The request steps (``service.http.steps``) wired into Flask for every route the gateway
does not serve, and the app's error handlers (one renderer: ``service.http.problems``)."""

from __future__ import annotations

import difflib
import re

from flask import Flask, Response, current_app, g, request
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map

from service.errors import ProblemError
from service.http import steps
from service.http.access_log import error_log
from service.http.problems import internal_error, problem_response
from service.http.state import AppState
from service.runtime import metrics


def request_context() -> steps.RequestContext:
    """The current request's context (made by the before-request hook)."""
    return g._gradserve_ctx  # type: ignore[no-any-return]


def install_hooks(app: Flask, st: AppState) -> None:
    settings = st.settings
    keys, inflight = st.keys, st.inflight

    # One before/after pair does the request's bookkeeping (id, deadline, key, body, slot;
    # then slot, id header, metrics, access line); the teardown only frees a slot that an
    # after-request failure left taken.
    @app.before_request
    def _start() -> None:
        req = request._get_current_object()  # type: ignore[attr-defined]
        ctx = g._gradserve_ctx = steps.RequestContext()
        path, environ = req.path, req.environ
        steps.start_request(ctx, environ, settings)
        if keys and steps.needs_key(path, settings):
            steps.authenticate(keys, environ)
        if steps.is_api(path):
            if req.url_rule is not None and req.method == "POST":
                ctx.body = steps.read_body_in_time(ctx, environ, settings,
                                                   binary=path.startswith("/v2/"),
                                                   model=path == "/v1/graphs")
            steps.admit(ctx, inflight, settings)

    @app.after_request
    def _finish(resp: Response) -> Response:
        req = request._get_current_object()  # type: ignore[attr-defined]
        ctx = g.get("_gradserve_ctx")
        if ctx is None:  # a hook before ours failed: nothing to account
            return resp
        steps.release(ctx, inflight)
        rule = req.url_rule
        resp.headers["X-Request-ID"] = ctx.request_id
        for key, value in steps.trace_headers(ctx):
            resp.headers[key] = value
        steps.account(ctx, rule.rule if rule is not None else "<unmatched>", req.method,
                      req.path, resp.status_code, req.content_length,
                      resp.calculate_content_length())
        return resp

    @app.teardown_request
    def _teardown(_exc: BaseException | None) -> None:
        ctx = g.get("_gradserve_ctx")
        if ctx is not None:
            steps.release(ctx, inflight)
            if ctx.span is not None:  # the after-request hook did not run to its end
                ctx.span.end(500, "<unfinished>")
                ctx.span = None

    @app.errorhandler(ProblemError)
    def _problem(err: ProblemError) -> Response:
        steps.count_problem(err)
        return problem_response(err, oip=_is_oip())

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        err = http_problem(exc, settings.max_body_bytes)
        return problem_response(err, oip=_is_oip())

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        ctx = g.get("_gradserve_ctx")
        rid = ctx.request_id if ctx is not None else "-"
        error_log.exception("unhandled error in request %s", rid)
        return problem_response(internal_error(rid), oip=_is_oip())


def _is_oip() -> bool:
    """Every error under /v2 is OIP's ``{"error"}`` (what tritonclient and KServe's SDK
    parse), routed or not: a 404 for an unknown path, a 405, a 413, a 401 alike."""
    return is_oip_path(request.path)


def is_oip_path(path: str) -> bool:
    """Whether ``path`` is the Open Inference Protocol's: ``/v2`` and everything below."""
    return path == "/v2" or path.startswith("/v2/")


def http_problem(exc: HTTPException, max_body_bytes: int) -> ProblemError:
    """A Werkzeug HTTP exception (routing 404, 405, a body over MAX_CONTENT_LENGTH) as a
    ProblemError: a 404 of an unrouted path names the nearest route, a 405 the allowed
    methods (and sends ``Allow``)."""
    err = ProblemError(exc.description or exc.name)
    err.status, err.title = exc.code or 500, exc.name
    if exc.code == 413:
        err.detail = (f"body is over the limit GRADSERVE_MAX_BODY_BYTES="
                      f"{max_body_bytes:,} bytes")
        metrics.LIMITS.labels("max_body_bytes").inc()
    if exc.code == 405:
        allowed = exc.get_response().headers.get("Allow")
        if allowed:
            err.headers["Allow"] = allowed
            shown = sorted(m for m in allowed.split(", ") if m not in ("HEAD", "OPTIONS"))
            err.detail = (f"{request.method} is not allowed on {request.path[:200]}; "
                          f"allowed: {', '.join(shown or allowed.split(', '))}")
    if exc.code == 404 and request.url_rule is None:
        err.detail = _no_route(request.method, request.path)
    err.args = (err.detail,)
    return err


def _no_route(method: str, path: str) -> str:
    shown = path if len(path) <= 200 else path[:200] + "..."
    detail = f"no route {method} {shown}"
    near = nearest_route(current_app.url_map, method, path)
    if near is not None:
        route, methods = near
        detail += f" (did you mean {'/'.join(methods)} {route}?)"
    return detail + "; the routes are listed at GET /openapi.json"


def nearest_route(url_map: Map, method: str, path: str) -> tuple[str, list[str]] | None:
    """The route ``path`` most likely meant (by spelling, its variable parts filled from
    ``path``) with its methods, or None when none is close. A route that takes ``method``
    wins a tie."""
    if len(path) > 2000:
        return None
    parts = path.rstrip("/").split("/") if path != "/" else [""]
    best: tuple[float, int, str, list[str]] | None = None
    for rule in url_map.iter_rules():
        if rule.endpoint == "static" or rule.rule.startswith("/static/"):
            continue
        segments = rule.rule.split("/")
        if len(segments) == len(parts):  # fill each <variable> with the path's segment
            filled = "/".join(p if s.startswith("<") else s for s, p in zip(segments, parts))
        else:
            filled = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        score = difflib.SequenceMatcher(None, path, filled).ratio()
        methods = sorted(m for m in (rule.methods or ()) if m not in ("HEAD", "OPTIONS"))
        takes = int(method in methods)
        if score >= 0.8 and (best is None or (score, takes) > best[:2]):
            best = (score, takes, filled, methods)
    return None if best is None else (best[2], best[3])
