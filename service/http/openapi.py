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

REF = "#/components/schemas/{model}"
PROBLEM = "application/problem+json"

ERRORS = {
    "400": "body is not valid JSON",
    "401": "an API key is configured and the request lacks a valid one",
    "404": "unknown path or graph id",
    "405": "wrong method",
    "413": "body, tensor, graph or estimated work over the configured limits",
    "415": "not application/json",
    "409": "the name is already another graph's",
    "422": "valid JSON that is not a valid request",
    "503": "a needed backing store is unreachable, the worker is saturated or the request ran "
           "past its deadline (with Retry-After)",
}

TAGS = [
    {"name": "gradients", "description": "Forward values and gradients of a graph"},
    {"name": "graphs", "description": "Registered graphs, addressed by content hash"},
    {"name": "mlp", "description": "Gradients of a multi-layer perceptron"},
    {"name": "ops", "description": "The op registry"},
    {"name": "operations", "description": "Health, readiness, metrics and this document"},
    {"name": "oip", "description": "The Open Inference Protocol (KServe v2): registered "
                                   "graphs as models, gradients as outputs"},
]



#: Requests that take exactly one of some fields: published as a ``oneOf`` of one complete
#: object schema per choice (its field required and not null, the others absent or null, as
#: the server reads a null), so a generated client gets one full model per form. A form's
#: field keeps the model's own schema for it, minus the null; ``also`` adds rules to a form's
#: other fields.
VARIANTS: dict[str, dict[str, dict[str, Any]]] = {
    "GradientRequest": {"graph": {"name": "GradientRequestGraph"},
                        "expression": {"name": "GradientRequestExpression"},
                        "graph_id": {"name": "GradientRequestGraphId"}},
    "RegisterRequest": {"graph": {"name": "RegisterRequestGraph"},
                        "expression": {"name": "RegisterRequestExpression"}},
    "MLPRequest": {"loss": {"name": "MLPRequestLoss"},
                   # l2 adds to a loss: with upstream it must stay 0.
                   "upstream": {"name": "MLPRequestUpstream", "also": {"l2": {"maximum": 0}}}},
}

#: Rules merged into the models' own schemas.
CROSS_FIELD: dict[str, dict[str, Any]] = {
    # Standard base64 (no whitespace, no URL-safe alphabet), padded to a multiple of 4.
    "B64Tensor": {"properties": {"b64": {
        "type": "string", "pattern": "^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|"
        "[A-Za-z0-9+/]{3}=)?$",
        "description": "base64 of the raw little-endian row-major bytes: exactly "
                       "prod(shape) x itemsize(dtype) bytes"}}},
}


def _name_keys(node: Any) -> None:
    """Pydantic writes a dict with a key pattern as ``patternProperties``, which lets keys that
    do not match through as additional properties; the server refuses them. Say it as
    ``propertyNames`` (the key rule) and ``additionalProperties`` (the value schema), which
    code generators read as a typed mapping."""
    if isinstance(node, dict):
        patterns = node.get("patternProperties")
        if isinstance(patterns, dict) and len(patterns) == 1 and "properties" not in node:
            (pattern, value), = patterns.items()
            del node["patternProperties"]
            node["propertyNames"] = {**node.get("propertyNames", {}), "pattern": pattern}
            node["additionalProperties"] = value
        for child in node.values():
            _name_keys(child)
    elif isinstance(node, list):
        for child in node:
            _name_keys(child)


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``X | None`` as Pydantic writes it (``anyOf: [X, null]``, default null) → ``X``."""
    keep = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
    members = [m for m in schema.get("anyOf", []) if m != {"type": "null"}]
    if not members:
        return copy.deepcopy(schema)
    inner = members[0] if len(members) == 1 else {"anyOf": members}
    return {**copy.deepcopy(inner), **keep}


def _split(components: dict[str, Any], model: str, forms: dict[str, dict[str, Any]]) -> None:
    base = components.pop(model)
    for field, form in forms.items():
        variant = copy.deepcopy(base)
        variant["title"] = form["name"]
        props = variant["properties"]
        for other in forms:
            if other != field:
                props[other] = {"type": "null", "description": f"only with another form; "
                                f"absent or null here ({form['name']} gives '{field}')"}
        props[field] = _not_null(props[field])
        for name, rule in form.get("also", {}).items():
            props[name].update(rule)
        variant["required"] = sorted({*variant.get("required", []), field})
        components[form["name"]] = variant
    components[model] = {
        "title": model,
        "description": base.get("description", ""),
        "oneOf": [{"$ref": REF.format(model=f["name"])} for f in forms.values()],
    }


_SIGMOID = "1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))"
_SIGMOID_VALUES = {"w0": 2, "x0": -1, "w1": -3, "x1": -2, "w2": -3}
_MATMUL_GRAPH = {
    "inputs": {"W": {"shape": [2, 2]}, "x": {"shape": [2]}},
    "nodes": [
        {"id": "q", "op": "matmul", "args": ["W", "x"]},
        {"id": "q2", "op": "square", "args": ["q"]},
        {"id": "f", "op": "sum", "args": ["q2"]},
    ],
    "output": "f",
}
_MATMUL_VALUES = {"W": [[0.1, 0.5], [-0.3, 0.8]], "x": [0.2, 0.4]}
_LAYERS = [
    {"weight": [[0.1, -0.2], [0.3, 0.4], [-0.5, 0.6]], "bias": [0.0, 0.1, -0.1],
     "activation": "relu"},
    {"weight": [[0.2, -0.1, 0.5], [-0.3, 0.2, 0.1]], "bias": [0.05, -0.05],
     "activation": "identity"},
]

#: Request body examples: every one is a valid request (tests post each of them).
EXAMPLES: dict[str, dict[str, dict[str, Any]]] = {
    "computeGradients": {
        "expression": {"summary": "The lecture's sigmoid neuron, as an expression",
                       "value": {"expression": _SIGMOID, "values": _SIGMOID_VALUES}},
        "graph": {"summary": "sum((W @ x) ** 2) as a graph spec",
                  "value": {"graph": _MATMUL_GRAPH, "values": _MATMUL_VALUES,
                            "wrt": ["W", "x"]}},
        "upstream": {"summary": "A non-scalar output needs upstream (dL/d output)",
                     "value": {"expression": "W @ x", "values": _MATMUL_VALUES,
                               "upstream": [1.0, -1.0], "encoding": "json"}},
        "jacobian": {"summary": "Full Jacobians, float32",
                     "value": {"expression": "tanh(x) * 2", "values": {"x": [0.5, -1.0]},
                               "jacobian": True, "dtype": "float32"}},
    },
    "registerGraph": {
        "expression": {"summary": "Register an expression",
                       "value": {"expression": "q = W @ x; f = sum(q ** 2)"}},
        "graph": {"summary": "Register a graph spec", "value": {"graph": _MATMUL_GRAPH}},
    },
    "computeGraphGradients": {
        "values": {"summary": "Values for every input of the registered graph",
                   "value": {"values": {"x": -2, "y": 5, "z": -4}, "trace": True}},
    },
    "computeMlpGradients": {
        "loss": {"summary": "A 2-layer ReLU net with softmax cross-entropy",
                 "value": {"layers": _LAYERS, "inputs": [[1.0, 2.0], [0.5, -1.0]],
                           "loss": {"type": "softmax_cross_entropy", "targets": [1, 0]},
                           "wrt": ["weights", "inputs"]}},
        "upstream": {"summary": "No loss: upstream shaped like the output (batch, out)",
                     "value": {"layers": _LAYERS, "inputs": [[1.0, 2.0]],
                               "upstream": [[1.0, 0.0]]}},
        "mse_l2": {"summary": "mse with l2 weight decay, one example without a batch axis",
                   "value": {"layers": _LAYERS, "inputs": [1.0, 2.0],
                             "loss": {"type": "mse", "targets": [0.5, -0.5]}, "l2": 0.01}},
    },
}


def _ref(model: type | str) -> dict[str, str]:
    return {"$ref": REF.format(model=model if isinstance(model, str) else model.__name__)}


def _problems(*codes: str) -> dict[str, Any]:
    return {c: {"description": ERRORS[c], "content": {PROBLEM: {"schema": _ref(schemas.Problem)}}}
            for c in codes}


def _json(model: type, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


TEXT = {"description": "plain text", "content": {"text/plain": {"schema": {"type": "string"}}}}
GRAPH_ID_PARAM = [{
    "name": "graph_id", "in": "path", "required": True,
    "description": "a graph id as returned by POST /v1/graphs: g- and 64 hex digits",
    "schema": {"type": "string", "pattern": "^g-[0-9a-f]{64}$"},
}]


def _post(op_id: str, tag: str, summary: str, req: type, resp: type, ok: str = "200",
          extra: tuple[str, ...] = (), params: list[dict[str, Any]] | None = None,
          more: dict[str, Any] | None = None,
          examples: dict[str, Any] | None = None) -> dict[str, Any]:
    responses = {ok: _json(resp, "success"), **(more or {}),
                 **_problems("400", "401", "413", "415", "422", "503", *extra)}
    op: dict[str, Any] = {
        "operationId": op_id, "tags": [tag], "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {
            "schema": _ref(req), "examples": examples or EXAMPLES[op_id]}}},
        "responses": responses,
    }
    if params:
        op["parameters"] = params
    return {"post": op}


def _get(op_id: str, tag: str, summary: str, responses: dict[str, Any],
         params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    op: dict[str, Any] = {"operationId": op_id, "tags": [tag], "summary": summary,
                          "responses": responses}
    if params:
        op["parameters"] = params
    return {"get": op}


def _merge(schema: dict[str, Any], extra: dict[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(schema.get(key), dict):
            _merge(schema[key], value)
        else:
            schema[key] = copy.deepcopy(value)


@cache
def openapi_document() -> dict[str, Any]:
    """The document served at ``GET /openapi.json`` (built once per process)."""
    components = _components()
    paths = _v1_paths()
    _add_oip(paths, components)
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
        schemas.B64Tensor, schemas.GraphList,
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


def _v1_paths() -> dict[str, Any]:
    """The /v1 routes and the operations routes."""
    return _registry({
        "/v1/gradients": _post(
            "computeGradients", "gradients", "Forward value and gradients of a graph",
            schemas.GradientRequest, schemas.GradientResponse, extra=("404",)),
        "/v1/graphs": _post(
            "registerGraph", "graphs", "Register a graph (idempotent)",
            schemas.RegisterRequest, schemas.GraphResponse, ok="201",
            more={"200": _json(schemas.GraphResponse, "already registered")}),
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
    })


# --- the Open Inference Protocol (/v2) and POST /v1/mlp/graphs: kept apart from the v1 block

#: Valid request bodies of the /v2 block (the infer example needs a model named "neuron").
EXAMPLES_OIP: dict[str, dict[str, dict[str, Any]]] = {
    "oipModelInfer": {
        "json": {"summary": "Output and every gradient of (x + y) * z, JSON tensors",
                 "value": {"inputs": [
                     {"name": n, "shape": [], "datatype": "FP64", "data": [v]}
                     for n, v in (("x", -2.0), ("y", 5.0), ("z", -4.0))]}},
    },
    "oipRepositoryIndex": {
        "all": {"summary": "Every named model", "value": {}},
        "ready": {"summary": "The ready ones (all of them)", "value": {"ready": True}},
    },
    "registerMlpGraph": {
        "mlp": {"summary": "A 2-layer ReLU net with softmax cross-entropy, named",
                "value": {"layers": [
                    {"in_features": 2, "out_features": 3, "activation": "relu"},
                    {"in_features": 3, "out_features": 2, "activation": "identity"}],
                    "loss": "softmax_cross_entropy", "name": "mlp-2-3-2"}},
    },
}


def _add_oip(paths: dict[str, Any], components: dict[str, Any]) -> None:
    """The /v2 paths (errors there are OIP's {"error"} body), /v1/mlp/graphs, and the 409
    of a model name already taken on /v1/graphs."""
    from schemas import oip

    models = [oip.InferRequest, oip.InferResponse, oip.ModelMetadata, oip.ServerMetadata,
              oip.OIPError, oip.ModelReady, oip.ServerHealth, oip.MLPGraphRequest,
              oip.ModelConfig, oip.RepositoryIndexRequest, oip.RepositoryIndexEntry,
              schemas.GraphResponse, schemas.Problem]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)

    def errors(*codes: str) -> dict[str, Any]:
        return {c: {"description": ERRORS[c], "content": {
            "application/json": {"schema": _ref(oip.OIPError)}}} for c in codes}

    name = [{"name": "name", "in": "path", "required": True,
             "description": "a graph id, or the name given when the graph was registered",
             "schema": {"type": "string"}}]
    versioned = name + [{"name": "version", "in": "path", "required": True,
                         "description": 'the model\'s version: "1", its only one (any '
                                        'other is a 404)',
                         "schema": {"type": "string"}}]
    binary = {"application/octet-stream": {"schema": {
        "type": "string", "format": "binary",
        "description": "the JSON part (its length in the Inference-Header-Content-Length "
                       "header) followed by the raw little-endian tensor bytes"}}}
    paths["/v1/graphs"]["post"]["responses"].update(_problems("409"))
    tag = "oip"
    paths |= {
        "/v2": _get("oipServerMetadata", tag, "OIP server metadata",
                    {"200": _json(oip.ServerMetadata, "server metadata"), **errors("401")}),
        "/v2/health/live": _get("oipServerLive", tag, "OIP liveness",
                                {"200": _json(oip.ServerHealth, "live")}),
        "/v2/health/ready": _get("oipServerReady", tag, "OIP readiness",
                                 {"200": _json(oip.ServerHealth, "ready"),
                                  "503": _json(oip.ServerHealth, "not ready")}),
        "/v2/repository/index": {"post": {
            "operationId": "oipRepositoryIndex", "tags": [tag],
            "summary": "The named models (every one READY, version 1)",
            "requestBody": {"required": False, "content": {
                "application/json": {"schema": _ref(oip.RepositoryIndexRequest),
                                     "examples": EXAMPLES_OIP["oipRepositoryIndex"]}}},
            "responses": {
                "200": {"description": "the named models, sorted by name", "content": {
                    "application/json": {"schema": {
                        "type": "array", "items": _ref(oip.RepositoryIndexEntry)}}}},
                **errors("400", "401", "413", "422", "503")}}},
    }
    for suffix, params, op in (("", name, ""), ("/versions/{version}", versioned,
                                                "Versioned")):
        model = "/v2/models/{name}" + suffix
        paths |= {
            model: _get(
                f"oipModelMetadata{op}", tag, "OIP model metadata of a registered graph",
                {"200": _json(oip.ModelMetadata, "model metadata"),
                 **errors("401", "404", "503")}, params=params),
            model + "/ready": _get(
                f"oipModelReady{op}", tag, "OIP model readiness",
                {"200": _json(oip.ModelReady, "ready"), **errors("401", "404", "503")},
                params=params),
            model + "/config": _get(
                f"oipModelConfig{op}", tag, "A minimal Triton model configuration",
                {"200": _json(oip.ModelConfig, "model configuration"),
                 **errors("401", "404", "503")}, params=params),
            model + "/infer": {"post": {
                "operationId": f"oipModelInfer{op}", "tags": [tag],
                "summary": "Output and gradients of a registered graph over OIP (JSON or "
                           "binary tensors)",
                "parameters": params,
                "requestBody": {"required": True, "content": {
                    "application/json": {"schema": _ref(oip.InferRequest),
                                         "examples": EXAMPLES_OIP["oipModelInfer"]},
                    **binary}},
                "responses": {
                    "200": {"description": "outputs; binary ones follow the JSON part",
                            "content": {"application/json": {
                                "schema": _ref(oip.InferResponse)}, **binary}},
                    **errors("400", "401", "404", "413", "415", "422", "503")}}},
        }
    paths |= {
        "/v1/mlp/graphs": _post(
            "registerMlpGraph", "mlp", "Register an MLP architecture as a graph (for /v2)",
            oip.MLPGraphRequest, schemas.GraphResponse, ok="201", extra=("409",),
            more={"200": _json(schemas.GraphResponse, "already registered")},
            examples=EXAMPLES_OIP["registerMlpGraph"]),
    }
    components.update(defs.get("$defs", {}))
    # l2 adds a term to the loss: it needs one (the server answers 422 naming l2 otherwise).
    components["MLPGraphRequest"]["if"] = {"properties": {"l2": {"const": True}},
                                           "required": ["l2"]}
    components["MLPGraphRequest"]["then"] = {"properties": {"loss": {"type": "string"}},
                                             "required": ["loss"]}
