"""POST /v1/mlp/gradients (API.md §6): an MLP lowered to the graph engine."""

from __future__ import annotations

from flask import Blueprint, Response, g

from schemas import MLPRequest
from service import mlp, response_size
from service.api.body import parse
from service.api.responses import json_response
from service.api.state import state

bp = Blueprint("mlp", __name__, url_prefix="/v1/mlp")


@bp.post("/gradients")
def mlp_gradients() -> Response:
    req, _ = parse(MLPRequest)
    st = state()
    values = mlp.decode(req, st.settings)
    response_size.check_mlp(values.architecture.sizes, values.values[mlp.INPUT].shape,
                            values.wrt, req.encoding, req.dtype, st.settings.max_response_bytes)
    plan, cache = mlp.plan_for(values.architecture, st.cache)
    g.graph_id, g.cache = plan.graph_id, cache
    return json_response(mlp.gradients(values, plan, cache, req.dtype, req.encoding,
                                       st.settings, g.deadline))
