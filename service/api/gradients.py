"""POST /v1/gradients and the graph registry of docs/api.md §5."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, g, url_for

from schemas import GradientOptions, GradientRequest, GraphGradientRequest, RegisterRequest
from service import compute
from service.api.body import parse, read_json, validate
from service.api.responses import json_response
from service.api.state import state
from service.engine import Plan
from service.errors import NotFound
from service.graphs import GraphCache, alias_key, check_name

bp = Blueprint("gradients", __name__, url_prefix="/v1")


@bp.post("/gradients")
def gradients() -> Response:
    st = state()
    raw = read_json()
    plan = _known_inline_graph(raw, st.cache)
    if plan is not None:
        # The exact graph JSON compiled before, so it was valid: skip re-validating it
        # (Pydantic costs ~5 µs a node; this keeps an L1 hit on a big graph cheap).
        opts = validate(GradientOptions, {k: v for k, v in raw.items() if k != "graph"})
        g.graph_id, g.cache = plan.graph_id, "hit"
        return json_response(compute.gradients(plan, "hit", opts, st.settings, g.deadline))
    compute.check_graph_size(raw, st.settings)
    req = validate(GradientRequest, raw)
    with compute.expression_errors(req.expression, st.settings):
        plan, cache = compute.resolve_plan(req, raw, st.cache, st.settings)
        g.graph_id, g.cache = plan.graph_id, cache
        body = compute.gradients(plan, cache, req, st.settings, g.deadline)
    return json_response(body)


@bp.post("/graphs")
def register_graph() -> Response:
    st = state()
    raw = read_json()
    compute.check_graph_size(raw, st.settings)
    req = validate(RegisterRequest, raw)
    if req.name is not None:
        check_name(req.name)  # before any work: a malformed name is a 422 whatever the graph
    with compute.expression_errors(req.expression, st.settings):
        plan, created = compute.register(req, raw, st.cache, st.settings)
    g.graph_id = plan.graph_id
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
    g.graph_id, g.cache = plan.graph_id, cache
    return json_response(_graph_body(plan))


@bp.post("/graphs/<graph_id>/gradients")
def graph_gradients(graph_id: str) -> Response:
    _check_id(graph_id)
    req, _ = parse(GraphGradientRequest)
    st = state()
    plan, cache = st.cache.plan_for_id(graph_id)
    g.graph_id, g.cache = plan.graph_id, cache
    return json_response(compute.gradients(plan, cache, req, st.settings, g.deadline))


def _known_inline_graph(raw: Any, cache: GraphCache) -> Plan | None:
    if not isinstance(raw, dict) or not isinstance(raw.get("graph"), dict):
        return None
    if "expression" in raw or "graph_id" in raw:
        return None
    return cache.peek(alias_key("spec", raw["graph"]))


def _check_id(graph_id: str) -> None:
    if len(graph_id) != 66 or not graph_id.startswith("g-") or \
            any(c not in "0123456789abcdef" for c in graph_id[2:]):
        raise NotFound(f"'{graph_id[:80]}' is not a graph id (g- and 64 hex digits)",
                       loc=("graph_id",))


def _graph_body(plan: Plan) -> dict[str, Any]:
    return {"graph_id": plan.graph_id, **plan.canonical}
