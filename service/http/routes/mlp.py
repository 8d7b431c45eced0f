"""POST /v1/mlp/gradients (docs/api.md §6): an MLP lowered to the graph engine; and
POST /v1/mlp/graphs, which registers an architecture's graph (for the OIP endpoints); and
POST /v1/mlp/step, the network's training step (docs/training.md)."""

from __future__ import annotations

from flask import Blueprint, Response, url_for

from schemas import MLPRequest
from schemas.oip import MLPGraphRequest
from schemas.steps import MLPStepRequest
from service.flows import mlp_graph as lowering
from service.flows.driver import run
from service.flows.mlp import MLPFlow
from service.flows.step import MLPStepFlow, run_step
from service.http.body import parse
from service.http.hooks import request_context
from service.http.responses import json_response
from service.http.state import state
from service.store.names import check_name

bp = Blueprint("mlp", __name__, url_prefix="/v1/mlp")


@bp.post("/gradients")
def mlp_gradients() -> Response:
    req, _ = parse(MLPRequest)
    st = state()
    return json_response(run(MLPFlow(req), st.env(request_context())))


@bp.post("/step")
def mlp_step() -> Response:
    req, _ = parse(MLPStepRequest)
    st = state()
    return json_response(run_step(MLPStepFlow(req), st.env(request_context())))


@bp.post("/graphs")
def mlp_graph() -> Response:
    req, _ = parse(MLPGraphRequest)
    st = state()
    if req.name is not None:
        check_name(req.name)
    plan, created = lowering.register(lowering.architecture_of(req), st.cache, req.name)
    request_context().note(plan.graph_id, None)
    body = {"graph_id": plan.graph_id, **plan.canonical}
    if req.name is not None:
        body["name"] = req.name
    location = url_for("gradients.get_graph", graph_id=plan.graph_id)
    return json_response(body, status=201 if created else 200, headers={"Location": location})
