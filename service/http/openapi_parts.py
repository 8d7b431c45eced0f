"""The pieces of the OpenAPI document that both its blocks use (service/http/openapi.py for
/v1 and the operations routes, service/http/openapi_oip.py for /v2): references, error
responses, tags, the request variants and examples, and the route builders."""

from __future__ import annotations

import copy
from typing import Any

import schemas

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
    {"name": "training", "description": "Optimizer steps (torch.optim's rules), the state "
                                        "passed in and out"},
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
