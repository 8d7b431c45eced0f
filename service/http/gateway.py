"""The hot routes, served without Flask's per-request machinery.

``POST /v1/gradients`` and ``POST /v1/graphs/{id}/gradients`` carry most of the traffic, and
for a small graph Flask's share of a request (request and app contexts, URL matching, the
before/after/teardown hooks, six blinker signals, the session interface, a ``Response``
object and its header rewriting) costs more than the gradient itself. The gateway is one
WSGI middleware in front of Flask: it recognises those two routes by method and path and
runs the very steps the Flask hooks and views run (``service.http.steps``: ``start_request``,
``authenticate``, ``read_body_in_time``, ``admit``, ``release``, ``count_problem`` and
``account``; the body's JSON and model validation from ``service.http.body``;
``service.flows.driver.run`` for the work), then answers with the same status line, headers and body
Flask would. Every other request, and
any path that does not match exactly (a malformed graph id, a trailing slash), goes to Flask
unchanged. ``tests/http/test_gateway.py`` holds the two paths to the same answers.
"""

from __future__ import annotations

import logging
from typing import Any

import orjson
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.wsgi import get_content_length

from schemas import GradientRequest, GraphGradientRequest
from service.errors import ProblemError, Unprocessable
from service.flows.driver import run
from service.flows.gradients import GradientsFlow, size_gate
from service.http import steps
from service.http.body import parse_json, validate
from service.http.problems import internal_error, render
from service.http.state import AppState
from service.http.steps import RequestContext
from service.store.names import GRAPH_ID_RE

error_log = logging.getLogger("gradserve.error")

# The Flask endpoints the gateway serves in their views' place (their rules come from the
# app's URL map, so the two cannot drift apart).
GRADIENTS_ENDPOINT = "gradients.gradients"
BY_ID_ENDPOINT = "gradients.graph_gradients"
_OPTS = orjson.OPT_SERIALIZE_NUMPY


class Gateway:
    """WSGI middleware: the two gradient routes here, everything else to ``app.wsgi_app``."""

    def __init__(self, app: Any, st: AppState) -> None:
        self.app = app
        self.flask = app.wsgi_app
        self.st = st
        self.hooks = self._hook_count()
        rules = {rule.endpoint: rule.rule for rule in app.url_map.iter_rules()}
        self.gradients_route = rules[GRADIENTS_ENDPOINT]  # /v1/gradients
        self.by_id_route = rules[BY_ID_ENDPOINT]  # /v1/graphs/<graph_id>/gradients
        self.by_id_prefix, _, self.by_id_suffix = self.by_id_route.partition("<graph_id>")
        self.status_lines = {code: f"{code} {phrase}"
                             for code, phrase in HTTP_STATUS_CODES.items()}

    def _hook_count(self) -> int:
        app = self.app
        return sum(len(funcs) for hooks in (app.before_request_funcs, app.after_request_funcs,
                                            app.teardown_request_funcs,
                                            app.url_value_preprocessors)
                   for funcs in hooks.values())

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        # A hook added to the app after it was built (an extension's, a test's) must see
        # every request: then Flask serves them all.
        if environ.get("REQUEST_METHOD") == "POST" and self._hook_count() == self.hooks:
            path = environ.get("PATH_INFO", "")
            if path == self.gradients_route:
                return self.serve(environ, start_response, path, path, None)
            prefix, suffix = self.by_id_prefix, self.by_id_suffix
            if path.startswith(prefix) and path.endswith(suffix):
                graph_id = path[len(prefix):len(path) - len(suffix)]
                if GRAPH_ID_RE.fullmatch(graph_id) is not None:
                    return self.serve(environ, start_response, path, self.by_id_route,
                                      graph_id)
        return self.flask(environ, start_response)

    def serve(self, environ: dict[str, Any], start_response: Any, path: str, route: str,
              graph_id: str | None) -> list[bytes]:
        st = self.st
        settings = st.settings
        ctx = RequestContext()
        steps.start_request(ctx, environ, settings)
        headers: list[tuple[str, str]]
        try:
            try:
                if st.keys:
                    steps.authenticate(st.keys, environ)
                ctx.body = steps.read_body_in_time(ctx, environ, settings)
                steps.admit(ctx, st.inflight, settings)
                payload = orjson.dumps(self.compute(ctx, graph_id), option=_OPTS)
            finally:
                steps.release(ctx, st.inflight)
            status = 200
            headers = [("Content-Type", "application/json"),
                       ("Content-Length", str(len(payload)))]
        except ProblemError as err:
            steps.count_problem(err)
            status, payload, headers = render(err)
        except Exception:  # noqa: BLE001 - the answer Flask's catch-all handler gives
            error_log.exception("unhandled error in request %s", ctx.request_id)
            status, payload, headers = render(internal_error(ctx.request_id))
        headers.append(("X-Request-ID", ctx.request_id))
        if ctx.trace is not None or ctx.span is not None:
            headers += steps.trace_headers(ctx)
        ctx.body = None
        steps.account(ctx, route, "POST", path, status, get_content_length(environ),
                      len(payload))
        start_response(self.status_lines.get(status, f"{status} UNKNOWN"), headers)
        return [payload]

    def compute(self, ctx: RequestContext, graph_id: str | None) -> dict[str, Any]:
        """The views' steps: JSON, size gate, model, then the one flow driver."""
        st = self.st
        settings = st.settings
        raw = parse_json(ctx.body, settings.limits)
        if graph_id is None:
            size_gate(raw, settings)
        if not isinstance(raw, dict):
            raise Unprocessable("the body must be a JSON object", loc=("body",))
        model = GradientRequest if graph_id is None else GraphGradientRequest
        req = validate(model, raw, settings.limits)  # type: ignore[type-var]
        return run(GradientsFlow(req, graph_id), st.env(ctx))  # type: ignore[arg-type]
