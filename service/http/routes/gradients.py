"""POST /v1/gradients and the graph registry of docs/api.md §5."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, url_for

from schemas import GradientRequest, GraphGradientRequest, RegisterRequest
from service.engine import Plan
from service.errors import NotFound, Unprocessable
from service.flows.driver import run
from service.flows.gradients import GradientsFlow, register, size_gate
from service.http.body import M, parse, read_json, validate
from service.http.hooks import request_context
from service.http.responses import json_response
from service.http.state import state
from service.store.cache import GRAPH_ID_RE, check_name

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
    req = _parse(RegisterRequest, st.settings)
    if req.name is not None:
        check_name(req.name)  # before any work: a malformed name is a 422 whatever the graph
    plan, created = register(req, st.cache, st.settings)
    request_context().note(plan.graph_id, None)
    body = _graph_body(plan)
    if req.name is not None:
        st.cache.name_graph(req.name, plan.graph_id)  # 409 when another graph has the name
        body["name"] = req.name
    location = url_for("gradients.get_graph", graph_id=plan.graph_id)
    return json_response(body, status=201 if created else 200,
                         headers={"Location": location})


@bp.get("/graphs/<graph_id>")
def get_graph(graph_id: str) -> Response:
    st = state()
    _check_id(graph_id)
    plan, cache = st.cache.plan_for_id(graph_id)
    request_context().note(plan.graph_id, cache)
    return json_response(_graph_body(plan))


@bp.post("/graphs/<graph_id>/gradients")
def graph_gradients(graph_id: str) -> Response:
    _check_id(graph_id)
    req, _ = parse(GraphGradientRequest)
    st = state()
    return json_response(run(GradientsFlow(req, graph_id), st.env(request_context())))


def _parse(model: type[M], settings: Any) -> M:
    raw = read_json()
    size_gate(raw, settings)
    if not isinstance(raw, dict):
        raise Unprocessable("the body must be a JSON object", loc=("body",))
    return validate(model, raw)


def _check_id(graph_id: str) -> None:
    if GRAPH_ID_RE.fullmatch(graph_id) is None:  # one regex call (a per-char loop: ~4 µs)
        raise NotFound(f"'{graph_id[:80]}' is not a graph id (g- and 64 hex digits)",
                       loc=("graph_id",))


def _graph_body(plan: Plan) -> dict[str, Any]:
    return {"graph_id": plan.graph_id, **plan.canonical}
