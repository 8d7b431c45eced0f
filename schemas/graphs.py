"""The graph spec of docs/api.md §2a.

A request's graph is validated once, by the engine's IR loader (``graph_from_dict``), which
names the node and field at fault and bounds the work before looking at nodes. The request
models therefore take the graph as plain JSON (:data:`GraphJSON`) and publish the loader's
rules as its JSON Schema (:data:`GRAPH_JSON_SCHEMA`, what OpenAPI shows). The models below
document the same form for clients that want typed objects.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    WithJsonSchema,
)

from schemas.tensors import MAX_NDIM, Dim

Name = Annotated[StrictStr, Field(min_length=1, max_length=128,
                                  pattern=r"^[A-Za-z_%][A-Za-z0-9_.:%\-]*$")]


class GraphInput(BaseModel):
    """An input; ``shape`` omitted means any shape (taken from the value)."""

    model_config = ConfigDict(extra="forbid")

    shape: Annotated[list[Dim], Field(max_length=MAX_NDIM)] | None = None


class GraphNode(BaseModel):
    """One gate: ``op`` applied to ``args`` (names or numeric constants)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    id: Name
    op: Annotated[StrictStr, Field(min_length=1, max_length=64)]
    args: list[Name | StrictInt | StrictFloat] = Field(default_factory=list, max_length=16)
    attrs: dict[str, Any] = Field(default_factory=dict)


class GraphSpec(BaseModel):
    """``{"inputs": {...}, "nodes": [...], "output": "f"}``; nodes in any order."""

    model_config = ConfigDict(extra="forbid")

    inputs: dict[Name, GraphInput] = Field(default_factory=dict)
    nodes: list[GraphNode]
    output: Name


NAME_PATTERN = r"^[A-Za-z_%][A-Za-z0-9_.:%\-]*$"
MAX_ARGS = 16
MAX_OP_LENGTH = 64
_NAME_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": NAME_PATTERN}

#: What the IR loader accepts, as JSON Schema (inline, no references).
GRAPH_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "a graph spec: {inputs, nodes, output}; nodes in any order (validated, "
                   "with errors naming the node, by the engine's graph loader)",
    "additionalProperties": False,
    "required": ["nodes", "output"],
    "properties": {
        "inputs": {
            "type": "object",
            "propertyNames": _NAME_SCHEMA,
            "additionalProperties": {"anyOf": [
                {"type": "object", "additionalProperties": False, "properties": {
                    "shape": {"anyOf": [
                        {"type": "array", "maxItems": MAX_NDIM,
                         "items": {"type": "integer", "minimum": 0, "maximum": 2**53}},
                        {"type": "null"}]}}},
                {"type": "null"}]},
        },
        "nodes": {"type": "array", "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id", "op"],
            "properties": {
                "id": _NAME_SCHEMA,
                "op": {"type": "string", "minLength": 1, "maxLength": MAX_OP_LENGTH},
                "args": {"type": "array", "maxItems": MAX_ARGS,
                         "items": {"anyOf": [_NAME_SCHEMA, {"type": "number"}]}},
                "attrs": {"type": "object", "additionalProperties": {"anyOf": [
                    {"type": ["number", "boolean", "null", "string"]},
                    {"type": "array", "maxItems": MAX_NDIM,
                     "items": {"type": ["number", "boolean", "null", "string"]}}]}},
            },
        }},
        "output": _NAME_SCHEMA,
    },
}

#: A request's ``graph`` field: JSON, checked by the IR loader alone (see the module doc).
GraphJSON = Annotated[dict[str, Any], WithJsonSchema(GRAPH_JSON_SCHEMA)]
