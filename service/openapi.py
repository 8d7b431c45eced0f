"""The OpenAPI 3.1 document of every route, generated from the Pydantic models."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic.json_schema import models_json_schema

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
    "503": "a needed backing store is unreachable, or the worker is saturated",
}


def _ref(model: type) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _problems(*codes: str) -> dict[str, Any]:
    return {c: {"description": ERRORS[c], "content": {PROBLEM: {"schema": _ref(schemas.Problem)}}}
            for c in codes}


def _json(model: type, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _post(summary: str, req: type, resp: type, ok: str = "200", extra: tuple[str, ...] = (),
          params: list[dict[str, Any]] | None = None, more: dict[str, Any] | None = None
          ) -> dict[str, Any]:
    responses = {ok: _json(resp, "success"), **(more or {}),
                 **_problems("400", "401", "413", "415", "422", *extra)}
    op: dict[str, Any] = {
        "summary": summary,
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(req)}}},
        "responses": responses,
    }
    if params:
        op["parameters"] = params
    return {"post": op}


GRAPH_ID_PARAM = [{
    "name": "graph_id", "in": "path", "required": True,
    "schema": {"type": "string", "pattern": "^g-[0-9a-f]{64}$"},
}]


@cache
def openapi_document() -> dict[str, Any]:
    models = [
        schemas.GradientRequest, schemas.GraphGradientRequest, schemas.RegisterRequest,
        schemas.MLPRequest, schemas.GradientResponse, schemas.GraphResponse,
        schemas.MLPResponse, schemas.OpsResponse, schemas.ReadyResponse, schemas.Problem,
    ]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)
    components = defs.get("$defs", {})
    text = {"description": "plain text", "content": {"text/plain": {"schema": {"type": "string"}}}}
    paths: dict[str, Any] = {
        "/v1/gradients": _post("Forward value and gradients of a graph", schemas.GradientRequest,
                               schemas.GradientResponse, extra=("404", "503")),
        "/v1/graphs": _post("Register a graph (idempotent)", schemas.RegisterRequest,
                            schemas.GraphResponse, ok="201", extra=("503",),
                            more={"200": _json(schemas.GraphResponse, "already registered")}),
        "/v1/graphs/{graph_id}": {"get": {
            "summary": "The canonical spec of a registered graph",
            "parameters": GRAPH_ID_PARAM,
            "responses": {"200": _json(schemas.GraphResponse, "the graph"),
                          **_problems("401", "404", "503")},
        }},
        "/v1/graphs/{graph_id}/gradients": _post(
            "Gradients of a registered graph", schemas.GraphGradientRequest,
            schemas.GradientResponse, extra=("404", "503"), params=GRAPH_ID_PARAM),
        "/v1/mlp/gradients": _post("Gradients of an MLP's weights", schemas.MLPRequest,
                                   schemas.MLPResponse),
        "/v1/ops": {"get": {"summary": "Every op with its arity, attrs and local gradient",
                            "responses": {"200": _json(schemas.OpsResponse, "the op registry"),
                                          **_problems("401")}}},
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": text}}},
        "/readyz": {"get": {"summary": "Readiness (gradient self-test, store state)",
                            "responses": {"200": _json(schemas.ReadyResponse, "ready"),
                                          "503": _json(schemas.ReadyResponse, "not ready")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "responses": {"200": text}}},
        "/openapi.json": {"get": {"summary": "This document",
                                  "responses": {"200": {"description": "OpenAPI 3.1"}}}},
    }
    _add_oip(paths, components)
    return {
        "openapi": "3.1.0",
        "info": {"title": "gradserve", "version": "1.0.0",
                 "description": "Gradients by backpropagation over computational graphs."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }


# --- the Open Inference Protocol (/v2) and POST /v1/mlp/graphs: kept apart from the v1 block


def _add_oip(paths: dict[str, Any], components: dict[str, Any]) -> None:
    """The /v2 paths (errors there are OIP's {"error"} body), /v1/mlp/graphs, and the 409
    of a model name already taken on /v1/graphs."""
    from schemas import oip

    models = [oip.InferRequest, oip.InferResponse, oip.ModelMetadata, oip.ServerMetadata,
              oip.OIPError, oip.ModelReady, oip.ServerHealth, oip.MLPGraphRequest,
              schemas.GraphResponse, schemas.Problem]
    _, defs = models_json_schema([(m, "validation") for m in models], ref_template=REF)

    def errors(*codes: str) -> dict[str, Any]:
        return {c: {"description": ERRORS[c], "content": {
            "application/json": {"schema": _ref(oip.OIPError)}}} for c in codes}

    name = [{"name": "name", "in": "path", "required": True,
             "description": "a graph id, or the name given when the graph was registered",
             "schema": {"type": "string"}}]
    binary = {"application/octet-stream": {"schema": {
        "type": "string", "format": "binary",
        "description": "the JSON part (its length in the Inference-Header-Content-Length "
                       "header) followed by the raw little-endian tensor bytes"}}}
    paths["/v1/graphs"]["post"]["responses"].update(_problems("409"))
    paths |= {
        "/v2": {"get": {"summary": "OIP server metadata",
                        "responses": {"200": _json(oip.ServerMetadata, "server metadata"),
                                      **errors("401")}}},
        "/v2/health/live": {"get": {"summary": "OIP liveness",
                                    "responses": {"200": _json(oip.ServerHealth, "live")}}},
        "/v2/health/ready": {"get": {"summary": "OIP readiness",
                                     "responses": {"200": _json(oip.ServerHealth, "ready"),
                                                   "503": _json(oip.ServerHealth,
                                                                "not ready")}}},
        "/v2/models/{name}": {"get": {
            "summary": "OIP model metadata of a registered graph", "parameters": name,
            "responses": {"200": _json(oip.ModelMetadata, "model metadata"),
                          **errors("401", "404", "503")}}},
        "/v2/models/{name}/ready": {"get": {
            "summary": "OIP model readiness", "parameters": name,
            "responses": {"200": _json(oip.ModelReady, "ready"),
                          **errors("401", "404", "503")}}},
        "/v2/models/{name}/infer": {"post": {
            "summary": "Output and gradients of a registered graph over OIP (JSON or binary "
                       "tensors)",
            "parameters": name,
            "requestBody": {"required": True, "content": {
                "application/json": {"schema": _ref(oip.InferRequest)}, **binary}},
            "responses": {
                "200": {"description": "outputs; binary ones follow the JSON part",
                        "content": {"application/json": {"schema": _ref(oip.InferResponse)},
                                    **binary}},
                **errors("400", "401", "404", "413", "415", "422", "503")}}},
        "/v1/mlp/graphs": _post("Register an MLP architecture as a graph (for /v2)",
                                oip.MLPGraphRequest, schemas.GraphResponse, ok="201",
                                extra=("409", "503"),
                                more={"200": _json(schemas.GraphResponse,
                                                   "already registered")}),
    }
    components.update(defs.get("$defs", {}))
