"""The Open Inference Protocol (KServe v2) under /v2: registered graphs as models.

Errors here are OIP's ``{"error": "..."}`` (what tritonclient and KServe's SDK parse), with
the statuses of docs/api.md §7, rendered by the app's one error renderer
(``service.http.problems``); auth and admission are the app's hooks, as for /v1.
"""

from __future__ import annotations

import orjson
from flask import Blueprint, Response, request

from service.flows import oip
from service.flows.oip import InferFlow
from service.flows.oip_codec import HEADER_LENGTH, oip_buffer
from service.flows.oip_step import run_infer
from service.http.body import parse_json
from service.http.hooks import request_context
from service.http.reader import read_body
from service.http.routes.meta import self_test
from service.http.state import state

bp = Blueprint("oip", __name__, url_prefix="/v2")


def _json(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status=status, mimetype="application/json")


# --- server ------------------------------------------------------------------------------


@bp.get("")
def server_metadata() -> Response:
    return _json(oip.server_metadata())


@bp.get("/health/live")
def live() -> Response:
    return _json({"live": True})


@bp.get("/health/ready")
def ready() -> Response:
    ok = state().lifecycle["status"] == "ready" and self_test()
    return _json({"ready": ok}, 200 if ok else 503)


# --- models ------------------------------------------------------------------------------


# Every model path has a versioned twin, /v2/models/{name}/versions/{version}/...: the same
# answer for version "1" (a model's only one), a 404 for any other.


def _plan(name: str, version: str | None):  # type: ignore[no-untyped-def]
    st = state()
    plan, cache = st.cache.plan_for_id(st.cache.graph_id_of(name))
    request_context().note(plan.graph_id, cache)
    oip.check_version(name, version)
    return plan


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None) -> Response:
    return _json(oip.model_metadata(name, _plan(name, version)))


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None) -> Response:
    _plan(name, version)
    return _json({"name": name, "ready": True})


@bp.get("/models/<name>/config")
@bp.get("/models/<name>/versions/<version>/config")
def model_config(name: str, version: str | None = None) -> Response:
    return _json(oip.model_config(name, _plan(name, version)))


@bp.post("/repository/index")
def repository_index() -> Response:
    body = request_context().body
    if body is None:  # the app's hook reads it; outside a request flow that did, here
        body = read_body(state().settings.body_timeout_s, into=oip_buffer(None))
    text = bytes(body)
    # An empty body is no filter; any JSON sent (null too) must be an object.
    raw = parse_json(text, state().settings.limits) if text.strip() else {}
    names = state().cache.model_names(oip.MAX_INDEX)
    return _json(oip.repository_index(names, raw))


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None) -> Response:
    st = state()
    ctx = request_context()
    body = ctx.body
    if body is None:  # the app's hook reads it; outside a request flow that did, here
        body = read_body(st.settings.body_timeout_s,
                         into=oip_buffer(request.headers.get(HEADER_LENGTH)))
    flow = InferFlow(name, body, request.headers.get(HEADER_LENGTH),
                     request.headers.get("Content-Encoding", "identity"), version)
    ctx.body = None
    out, header_length = run_infer(flow, st.env(ctx))  # a step when it names an optimizer
    if header_length is None:
        return Response(out, mimetype="application/json")
    resp = Response(out, mimetype="application/octet-stream")
    resp.headers[HEADER_LENGTH] = str(header_length)
    return resp
