"""GET /v1/ops, /healthz, /readyz, /metrics and /openapi.json."""

from __future__ import annotations

import numpy as np
from flask import Blueprint, Response

from service.engine import REGISTRY, compile_graph, execute, parse_expression
from service.http.openapi import openapi_document
from service.http.responses import json_response
from service.http.state import state
from service.runtime import metrics

bp = Blueprint("meta", __name__)

_SELF_TEST = compile_graph(parse_expression("(x + y) * z", REGISTRY).graph, REGISTRY)
_SELF_TEST_VALUES = {"x": np.float64(-2.0), "y": np.float64(5.0), "z": np.float64(-4.0)}


def self_test() -> bool:
    """The lecture's first example must come out -12 with gradients -4, -4, 3."""
    try:
        r = execute(_SELF_TEST, _SELF_TEST_VALUES)
        grads = [float(r.gradients[n]) for n in ("x", "y", "z")]
        return float(r.output) == -12.0 and grads == [-4.0, -4.0, 3.0]
    except Exception:  # noqa: BLE001 - readiness must answer, whatever broke
        return False


@bp.get("/v1/ops")
def ops() -> Response:
    return json_response({"ops": [op.describe() for op in REGISTRY],
                          "backend": REGISTRY.backend, "device": REGISTRY.device})


@bp.get("/healthz")
def healthz() -> Response:
    return Response("ok\n", mimetype="text/plain")


@bp.get("/readyz")
def readyz() -> Response:
    st = state()
    store_ok = st.store is None or st.store.ping()
    status = st.lifecycle["status"]
    if status == "ready" and not self_test():
        status = "starting"
    body = {"status": status, "store": "ok" if store_ok else "degraded",
            "store_backend": getattr(st.store, "name", "none"),
            "backend": REGISTRY.backend, "device": REGISTRY.device}
    return json_response(body, status=200 if status == "ready" else 503)


@bp.get("/metrics")
def metrics_endpoint() -> Response:
    data, content_type = metrics.render()
    return Response(data, content_type=content_type)


@bp.get("/openapi.json")
def openapi() -> Response:
    return json_response(openapi_document())
