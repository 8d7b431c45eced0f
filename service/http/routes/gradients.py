"""POST /v1/gradients, the graph registry of docs/api.md §5, and a registered graph's
training step (docs/training.md)."""

from __future__ import annotations

import difflib
from typing import Any

from flask import Blueprint, Response, request, url_for

from schemas import GradientRequest, GraphGradientRequest, RegisterRequest
from schemas.steps import GraphStepRequest
from service.errors import NotFound, Unprocessable
from service.flows.driver import run
from service.flows.gradients import GradientsFlow, register, size_gate
from service.flows.models import graph_body, register_onnx
from service.flows.step import GraphStepFlow, run_step
from service.http.body import M, parse, read_json, validate
from service.http.hooks import request_context
from service.http.responses import json_response
from service.http.state import state
from service.http.steps import ONNX_MEDIA
from service.store.names import GRAPH_ID_RE, check_name

bp = Blueprint("gradients", __name__, url_prefix="/v1")


@bp.post("/gradients")
def gradients() -> Response:
    # One validator for the graph: the model passes it through as JSON, the IR loader
    # checks it on an L1 miss (a repeat of a big graph costs a hash, not a validation).
    st = state()
    req = _parse(GradientRequest, st.settings)
    return json_response(run(GradientsFlow(req), st.env(request_context())))


@bp.post("/graphs")
def register_graph() -> Response:
    st = state()
    name = _onnx_params()  # ?name= (any body form): checked before any work, as the body's
    if name is not None:
        check_name(name)
    if request.mimetype == ONNX_MEDIA:  # the model's bytes as the body, ?name= beside
        plan, created = register_onnx(request_context().body or b"", st.cache, st.settings)
    else:
        req = _parse(RegisterRequest, st.settings)
        if req.name is not None:
            check_name(req.name)  # a malformed name is a 422 whatever the graph
            if name is not None and name != req.name:
                raise Unprocessable(f"name: the body says {req.name!r} and the query "
                                    f"{name[:80]!r}; give one", loc=("name",))
            name = req.name
        plan, created = register(req, st.cache, st.settings)
    request_context().note(plan.graph_id, None)
    body = graph_body(plan)
    if name is not None:
        st.cache.name_graph(name, plan.graph_id)  # 409 when another graph has the name
        body["name"] = name
    location = url_for("gradients.get_graph", graph_id=plan.graph_id)
    return json_response(body, status=201 if created else 200,
                         headers={"Location": location})


#: GET /v1/graphs: the page size when none is asked for, and the largest one.
LIST_LIMIT, LIST_MAX = 100, 1000
_LIST_PARAMS = ("cursor", "limit")


@bp.get("/graphs")
def list_graphs() -> Response:
    cursor, limit = _list_params()
    graphs, cursor = state().cache.list_graphs(cursor, limit)
    return json_response({"graphs": graphs, "next": cursor})


@bp.delete("/graphs/<graph_id>")
def delete_graph(graph_id: str) -> Response:
    _check_id(graph_id)
    state().cache.remove(graph_id)  # an unknown id is no error: DELETE is idempotent
    request_context().note(graph_id, None)
    return Response(status=204)


def _list_params() -> tuple[str | None, int]:
    args = request.args
    for key in args:
        if key not in _LIST_PARAMS:
            close = difflib.get_close_matches(key, _LIST_PARAMS, n=1, cutoff=0.5)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise Unprocessable(f"{key[:80]}: unknown query parameter{hint}; allowed: "
                                f"{', '.join(_LIST_PARAMS)}", loc=("query", key[:128]))
    raw = args.get("limit")
    limit = LIST_LIMIT
    if raw is not None:
        text = raw.strip()
        limit = int(text) if text.isascii() and text.isdigit() and len(text) <= 9 else 0
        if not 1 <= limit <= LIST_MAX:
            raise Unprocessable(f"limit: {raw[:40]!r} is not a page size: an integer from 1 "
                                f"to {LIST_MAX} (default {LIST_LIMIT})", loc=("limit",))
    cursor = args.get("cursor")  # "" is no cursor either: a 422, as the schema says
    if cursor is not None and GRAPH_ID_RE.fullmatch(cursor) is None:
        raise Unprocessable(f"cursor: {cursor[:80]!r} is not a cursor: pass the 'next' of "
                            "the previous page as it is", loc=("cursor",))
    return cursor, limit


@bp.get("/graphs/<graph_id>")
def get_graph(graph_id: str) -> Response:
    st = state()
    _check_id(graph_id)
    plan, cache = st.cache.plan_for_id(graph_id)
    request_context().note(plan.graph_id, cache)
    return json_response(graph_body(plan))


@bp.post("/graphs/<graph_id>/gradients")
def graph_gradients(graph_id: str) -> Response:
    _check_id(graph_id)
    req, _ = parse(GraphGradientRequest)
    st = state()
    return json_response(run(GradientsFlow(req, graph_id), st.env(request_context())))


@bp.post("/graphs/<graph_id>/step")
def graph_step(graph_id: str) -> Response:
    _check_id(graph_id)
    req, _ = parse(GraphStepRequest)
    st = state()
    return json_response(run_step(GraphStepFlow(req, graph_id), st.env(request_context())))


def _parse(model: type[M], settings: Any) -> M:
    raw = read_json()
    size_gate(raw, settings)
    if not isinstance(raw, dict):
        raise Unprocessable("the body must be a JSON object", loc=("body",))
    return validate(model, raw)


def _check_id(graph_id: str) -> None:
    if GRAPH_ID_RE.fullmatch(graph_id) is None:  # one regex call (a per-char loop: ~4 µs)
        raise NotFound(f"'{graph_id[:80]}' is not a graph id (g- and 64 hex digits; "
                       "GET /v1/graphs lists the registered ones with their names)",
                       loc=("graph_id",))


def _onnx_params() -> str | None:
    for key in request.args:
        if key != "name":
            raise Unprocessable(f"{key[:80]}: unknown query parameter; allowed: name",
                                loc=("query", key[:128]))
    return request.args.get("name")
