"""``GET /v1/graphs/{graph_id}/onnx``: a registered graph as an ONNX model file."""

from __future__ import annotations

from flask import Blueprint, Response, request

from schemas import ExportQuery
from service.errors import NotFound, Unprocessable
from service.flows.onnx_export import export_graph
from service.http.body import validate
from service.http.hooks import request_context
from service.http.state import state
from service.store.names import GRAPH_ID_RE

bp = Blueprint("onnx_export", __name__, url_prefix="/v1")

ONNX_TYPE = "application/onnx"
#: The query parameters a request may repeat (every other one is given once).
REPEATABLE = ("shape",)


@bp.get("/graphs/<graph_id>/onnx")
def export_onnx(graph_id: str) -> Response:
    if GRAPH_ID_RE.fullmatch(graph_id) is None:
        raise NotFound(f"'{graph_id[:80]}' is not a graph id (g- and 64 hex digits)",
                       loc=("graph_id",))
    raw: dict[str, object] = {}
    for key in request.args:
        values = request.args.getlist(key)
        if key in REPEATABLE:
            raw[key] = values
        elif len(values) > 1:
            raise Unprocessable(f"{key[:80]}: given {len(values)} times; give it once",
                                loc=(key[:128],))
        else:
            raw[key] = values[0]
    req = validate(ExportQuery, raw)
    body = export_graph(graph_id, req, state().env(request_context()))
    suffix = "-grad" if req.gradients else ""
    return Response(body, mimetype=ONNX_TYPE, headers={
        "Content-Disposition": f'attachment; filename="{graph_id}{suffix}.onnx"'})
