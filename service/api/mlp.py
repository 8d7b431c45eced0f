"""POST /v1/mlp/gradients (API.md §6): an MLP lowered to the graph engine."""

from __future__ import annotations

from flask import Blueprint, Response, g

from schemas import MLPRequest
from service import compute
from service.api.body import parse
from service.api.responses import json_response
from service.api.state import state
from service.engine import Plan

bp = Blueprint("mlp", __name__, url_prefix="/v1/mlp")


def _note(plan: Plan, cache: str) -> None:
    g.graph_id, g.cache = plan.graph_id, cache


@bp.post("/gradients")
def mlp_gradients() -> Response:
    req, _ = parse(MLPRequest)
    st = state()
    return json_response(compute.mlp_request(req, st.cache, st.settings, g.deadline,
                                             note=_note))
