"""The OpenAPI 3.1 document of every route, generated from the Pydantic models.

The models give the fields; this module adds what code generators and contract fuzzers need
on top of them, each in one table so the models stay plain:

- ``operationId`` and a tag on every route (``ROUTES``);
- the cross-field rules JSON Schema can say (``VARIANTS``): exactly one of
  ``graph``/``expression``/``graph_id``, exactly one of ``loss``/``upstream``, ``l2`` only
  with a ``loss``, each request a ``oneOf`` of complete forms;
- the base64 alphabet of the binary tensor form;
- a valid example of every request body (``EXAMPLES``; a test posts each one).

What JSON Schema cannot say (a node argument names an input or node, shapes fit, nested
arrays are rectangular, a ``b64`` string holds shape x dtype bytes, class labels lie in
range) is in docs/api.md and answered with a 422 naming the field.
"""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

import schemas
from schemas.tensors import NESTED_ARRAY_OUT_SCHEMA, NESTED_ARRAY_SCHEMA
from service.http.openapi_oip import add_oip
from service.http.openapi_parts import (
    CROSS_FIELD,
    GRAPH_ID_PARAM,
    REF,
    TAGS,
    TEXT,
    VARIANTS,
    _get,
    _json,
    _merge,
    _name_keys,
    _post,
    _problems,
    _ref,
    _split,
)


@cache
def openapi_document() -> dict[str, Any]:
    """The document served at ``GET /openapi.json`` (built once per process)."""
    components = _components()
    paths = _v1_paths()
    add_oip(paths, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "gradserve", "version": "1.1.0",
                 "description": "Gradients by backpropagation over computational graphs. "
                                "The reference is docs/api.md in the repository."},
        "tags": TAGS,
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {
                "type": "http", "scheme": "bearer",
                "description": "required on /v1 routes when the server has API keys "
                               "(GRADSERVE_API_KEYS); otherwise not checked"}},
        },
    }


def _components() -> dict[str, Any]:
    """The schema components: the wire models, tensors, the graph spec."""
    models = [
        schemas.GradientRequest, schemas.GraphGradientRequest, schemas.RegisterRequest,
        schemas.MLPRequest, schemas.GradientResponse, schemas.GraphResponse,
        schemas.MLPResponse, schemas.OpsResponse, schemas.ReadyResponse, schemas.Problem,
        schemas.B64Tensor, schemas.GraphList, schemas.GraphStepRequest,
        schemas.MLPStepRequest, schemas.GraphStepResponse, schemas.MLPStepResponse,
    ]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    components: dict[str, Any] = defs.get("$defs", {})
    components["NestedArray"] = copy.deepcopy(NESTED_ARRAY_SCHEMA)
    components["NestedArrayOut"] = copy.deepcopy(NESTED_ARRAY_OUT_SCHEMA)
    # The graph spec the IR loader accepts, as named components (a generated client gets
    # typed graph, input and node models).
    components["GraphInput"] = {"title": "GraphInput", **copy.deepcopy(schemas.GRAPH_INPUT_SCHEMA)}
    components["GraphNode"] = {"title": "GraphNode", **copy.deepcopy(schemas.GRAPH_NODE_SCHEMA)}
    components["GraphSpec"] = {"title": "GraphSpec", **schemas.graph_json_schema(
        _ref("GraphInput"), _ref("GraphNode"))}
    for name, extra in CROSS_FIELD.items():
        _merge(components[name], extra)
    for name, forms in VARIANTS.items():
        _split(components, name, forms)
    _name_keys(components)
    return components


LIST_PARAMS = [
    {"name": "limit", "in": "query", "required": False,
     "description": "graphs per page, 1 to 1000 (default 100)",
     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100}},
    {"name": "cursor", "in": "query", "required": False,
     "description": "the 'next' of the previous page",
     "schema": {"type": "string", "pattern": "^g-[0-9a-f]{64}$"}},
]


EXPORT_PARAMS = [
    {"name": "gradients", "in": "query", "required": False,
     "description": "also write the backward graph: outputs 'grad:<input>' per wrt input",
     "schema": {"type": "boolean", "default": False}},
    {"name": "wrt", "in": "query", "required": False,
     "description": "comma-separated input names, or inputs, parameters, all",
     "schema": {"type": "string", "maxLength": 4096}},
    {"name": "loss", "in": "query", "required": False,
     "description": "the objective: this loss of the output against a 'targets' input",
     "schema": {"enum": ["softmax_cross_entropy", "hinge", "mse"]}},
    {"name": "dtype", "in": "query", "required": False,
     "description": "the model's element type (default: the graph's own)",
     "schema": {"enum": ["float64", "float32"]}},
    {"name": "shape", "in": "query", "required": False, "explode": True,
     "description": "name:d0,d1,... for an input without a declared shape (repeatable; "
                    "default: a scalar)",
     "schema": {"type": "array", "maxItems": 256, "items": {"type": "string"}}},
]


def _export(paths: dict[str, Any]) -> dict[str, Any]:
    """GET /v1/graphs/{graph_id}/onnx: the graph as an ONNX model file."""
    paths["/v1/graphs/{graph_id}/onnx"] = _get(
        "exportOnnx", "graphs", "The graph as an ONNX model (with its backward graph when "
        "gradients=true)",
        {"200": {"description": "an ONNX ModelProto", "content": {
            "application/onnx": {"schema": {"type": "string", "format": "binary"}}}},
         **_problems("401", "404", "413", "422", "503"),
         "414": {"description": "the request line is longer than the server reads (4,094 "
                                "bytes, gunicorn's limit_request_line): "
                                "fewer or shorter repeated 'shape' parameters"}},
        params=[*GRAPH_ID_PARAM, *EXPORT_PARAMS])
    return paths


def _registry(paths: dict[str, Any]) -> dict[str, Any]:
    """GET /v1/graphs and DELETE /v1/graphs/{graph_id} beside the routes of those paths."""
    paths["/v1/graphs"] |= _get(
        "listGraphs", "graphs", "The registered graphs, a page at a time (in id order)",
        {"200": _json(schemas.GraphList, "a page"), **_problems("401", "422", "503")},
        params=LIST_PARAMS)
    paths["/v1/graphs/{graph_id}"]["delete"] = {
        "operationId": "deleteGraph", "tags": ["graphs"],
        "summary": "Remove a registered graph and free its names (idempotent)",
        "parameters": GRAPH_ID_PARAM,
        "responses": {"204": {"description": "removed (or was not registered)"},
                      **_problems("401", "404", "503")}}
    return paths


def _onnx_body(path: dict[str, Any]) -> dict[str, Any]:
    """Registration also takes an ONNX model's bytes (``?name=`` beside them)."""
    op = path["post"]
    op["requestBody"]["content"]["application/onnx"] = {
        "schema": {"type": "string", "format": "binary",
                   "description": "a serialized ONNX ModelProto (GRADSERVE_MAX_MODEL_BYTES)"}}
    op["parameters"] = [{"name": "name", "in": "query", "required": False,
                         "description": "the model name (with a JSON body: in place of its "
                                        "'name', or the same)",
                         "schema": {"type": "string",
                                    "pattern": r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$"}}]
    return path
#: The training routes' request examples (each is posted by tests/http/test_openapi.py).
STEP_EXAMPLES: dict[str, dict[str, Any]] = {
    "stepGraph": {"sgd": {
        "summary": "Two SGD steps with momentum on x of (x + y) * z",
        "value": {"values": {"x": -2, "y": 5, "z": -4}, "params": ["x"],
                  "optimizer": {"type": "sgd", "lr": 0.1, "momentum": 0.9}, "steps": 2}}},
    "stepMlp": {"adam": {
        "summary": "One Adam step on a 2-layer net with softmax cross-entropy",
        "value": {"layers": [{"weight": [[0.1, -0.2], [0.3, 0.4]], "bias": [0.0, 0.1],
                              "activation": "tanh"},
                             {"weight": [[0.2, -0.1], [-0.3, 0.2]], "bias": [0.05, -0.05]}],
                  "inputs": [[1.0, 2.0], [0.5, -1.0]],
                  "loss": {"type": "softmax_cross_entropy", "targets": [1, 0]},
                  "optimizer": {"type": "adam", "lr": 0.01}}}},
}


def _v1_paths() -> dict[str, Any]:
    """The /v1 routes and the operations routes."""
    return _export(_registry({
        "/v1/gradients": _post(
            "computeGradients", "gradients", "Forward value and gradients of a graph",
            schemas.GradientRequest, schemas.GradientResponse, extra=("404",)),
        "/v1/graphs": _onnx_body(_post(
            "registerGraph", "graphs", "Register a graph or an ONNX model (idempotent)",
            schemas.RegisterRequest, schemas.GraphResponse, ok="201",
            more={"200": _json(schemas.GraphResponse, "already registered")})),
        "/v1/graphs/{graph_id}": _get(
            "getGraph", "graphs", "The canonical spec of a registered graph",
            {"200": _json(schemas.GraphResponse, "the graph"), **_problems("401", "404", "503")},
            params=GRAPH_ID_PARAM),
        "/v1/graphs/{graph_id}/gradients": _post(
            "computeGraphGradients", "graphs", "Gradients of a registered graph",
            schemas.GraphGradientRequest, schemas.GradientResponse, extra=("404",),
            params=GRAPH_ID_PARAM),
        "/v1/mlp/gradients": _post(
            "computeMlpGradients", "mlp", "Gradients of an MLP's weights and inputs",
            schemas.MLPRequest, schemas.MLPResponse),
        "/v1/graphs/{graph_id}/step": _post(
            "stepGraph", "training", "Optimizer steps on a registered graph's inputs",
            schemas.GraphStepRequest, schemas.GraphStepResponse, extra=("404",),
            params=GRAPH_ID_PARAM, examples=STEP_EXAMPLES["stepGraph"]),
        "/v1/mlp/step": _post(
            "stepMlp", "training", "Optimizer steps on an MLP's weights and biases",
            schemas.MLPStepRequest, schemas.MLPStepResponse,
            examples=STEP_EXAMPLES["stepMlp"]),
        "/v1/ops": _get(
            "listOps", "ops", "Every op with its arity, attrs and local gradient",
            {"200": _json(schemas.OpsResponse, "the op registry"), **_problems("401", "503")}),
        "/healthz": _get("healthz", "operations", "Liveness", {"200": TEXT}),
        "/readyz": _get("readyz", "operations", "Readiness (gradient self-test, store state)",
                        {"200": _json(schemas.ReadyResponse, "ready"),
                         "503": _json(schemas.ReadyResponse, "not ready")}),
        "/metrics": _get("metrics", "operations", "Prometheus metrics",
                         {"200": TEXT, **_problems("401")}),
        "/openapi.json": _get("openapi", "operations", "This document",
                              {"200": {"description": "OpenAPI 3.1", "content": {
                                  "application/json": {"schema": {"type": "object"}}}}}),
    }))
