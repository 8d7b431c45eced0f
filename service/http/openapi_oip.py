"""The /v2 block of the OpenAPI document (the Open Inference Protocol, whose errors are its
``{"error"}`` body) and ``POST /v1/mlp/graphs``, which registers models for it."""

from __future__ import annotations

from typing import Any

from pydantic.json_schema import models_json_schema

import schemas
from service.http.openapi_parts import (
    ERRORS,
    REF,
    _get,
    _json,
    _post,
    _problems,
    _ref,
)

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


def add_oip(paths: dict[str, Any], components: dict[str, Any]) -> None:
    """The /v2 paths (errors there are OIP's {"error"} body), /v1/mlp/graphs, and the 409
    of a model name already taken on /v1/graphs."""
    from schemas import oip

    models = [oip.InferRequest, oip.InferResponse, oip.ModelMetadata, oip.ServerMetadata,
              oip.OIPError, oip.ModelReady, oip.ServerHealth, oip.MLPGraphRequest,
              oip.ModelConfig, oip.RepositoryIndexRequest, oip.RepositoryIndexEntry,
              schemas.GraphResponse, schemas.Problem]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    paths["/v1/graphs"]["post"]["responses"].update(_problems("409"))
    paths |= _server_paths(oip)
    name = [{"name": "name", "in": "path", "required": True,
             "description": "a graph id, or the name given when the graph was registered",
             "schema": {"type": "string"}}]
    versioned = name + [{"name": "version", "in": "path", "required": True,
                         "description": 'the model\'s version: "1", its only one (any '
                                        'other is a 404)',
                         "schema": {"type": "string"}}]
    paths |= _model_paths(oip, "", name, "")
    paths |= _model_paths(oip, "/versions/{version}", versioned, "Versioned")
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


TAG = "oip"
BINARY = {"application/octet-stream": {"schema": {
    "type": "string", "format": "binary",
    "description": "the JSON part (its length in the Inference-Header-Content-Length "
                   "header) followed by the raw little-endian tensor bytes"}}}


def _errors(oip: Any, *codes: str) -> dict[str, Any]:
    return {c: {"description": ERRORS[c], "content": {
        "application/json": {"schema": _ref(oip.OIPError)}}} for c in codes}


def _server_paths(oip: Any) -> dict[str, Any]:
    """The server's metadata, health and repository index."""
    return {
        "/v2": _get("oipServerMetadata", TAG, "OIP server metadata",
                    {"200": _json(oip.ServerMetadata, "server metadata"),
                     **_errors(oip, "401")}),
        "/v2/health/live": _get("oipServerLive", TAG, "OIP liveness",
                                {"200": _json(oip.ServerHealth, "live")}),
        "/v2/health/ready": _get("oipServerReady", TAG, "OIP readiness",
                                 {"200": _json(oip.ServerHealth, "ready"),
                                  "503": _json(oip.ServerHealth, "not ready")}),
        "/v2/repository/index": {"post": {
            "operationId": "oipRepositoryIndex", "tags": [TAG],
            "summary": "The named models (every one READY, version 1)",
            "requestBody": {"required": False, "content": {
                "application/json": {"schema": _ref(oip.RepositoryIndexRequest),
                                     "examples": EXAMPLES_OIP["oipRepositoryIndex"]}}},
            "responses": {
                "200": {"description": "the named models, sorted by name", "content": {
                    "application/json": {"schema": {
                        "type": "array", "items": _ref(oip.RepositoryIndexEntry)}}}},
                **_errors(oip, "400", "401", "413", "422", "503")}}},
    }


def _model_paths(oip: Any, suffix: str, params: list[dict[str, Any]], op: str
                 ) -> dict[str, Any]:
    """A model's metadata, readiness, config and infer, at ``/v2/models/{name}`` + suffix."""
    model = "/v2/models/{name}" + suffix
    return {
        model: _get(
            f"oipModelMetadata{op}", TAG, "OIP model metadata of a registered graph",
            {"200": _json(oip.ModelMetadata, "model metadata"),
             **_errors(oip, "401", "404", "503")}, params=params),
        model + "/ready": _get(
            f"oipModelReady{op}", TAG, "OIP model readiness",
            {"200": _json(oip.ModelReady, "ready"), **_errors(oip, "401", "404", "503")},
            params=params),
        model + "/config": _get(
            f"oipModelConfig{op}", TAG, "A minimal Triton model configuration",
            {"200": _json(oip.ModelConfig, "model configuration"),
             **_errors(oip, "401", "404", "503")}, params=params),
        model + "/infer": {"post": {
            "operationId": f"oipModelInfer{op}", "tags": [TAG],
            "summary": "Output and gradients of a registered graph over OIP (JSON or "
                       "binary tensors)",
            "parameters": params,
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref(oip.InferRequest),
                                     "examples": EXAMPLES_OIP["oipModelInfer"]},
                **BINARY}},
            "responses": {
                "200": {"description": "outputs; binary ones follow the JSON part",
                        "content": {"application/json": {
                            "schema": _ref(oip.InferResponse)}, **BINARY}},
                **_errors(oip, "400", "401", "404", "413", "415", "422", "503")}}},
    }
