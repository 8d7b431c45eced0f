"""The graph spec of docs/api.md §2a.

A request's graph is validated once, by the engine's IR loader (``graph_from_dict``), which
names the node and field at fault and bounds the work before looking at nodes. The request
models therefore take the graph as plain JSON (:data:`GraphJSON`) and publish the loader's
rules as its JSON Schema (:data:`GRAPH_JSON_SCHEMA`; OpenAPI shows it as the components
GraphSpec, GraphInput and GraphNode).
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StrictStr, WithJsonSchema

from schemas.bounds import MaxItems
from schemas.tensors import MAX_NDIM

NAME_PATTERN = r"^[A-Za-z_%][A-Za-z0-9_.:%'\-]*$"
MAX_ARGS = 256  # as service.engine.ir.MAX_ARGS (concat and stack take any number)
MAX_ATTR_LIST = 2 * MAX_NDIM  # as service.engine.ir.MAX_ATTR_LIST (pad's pads: two per axis)
MAX_OP_LENGTH = 64

Name = Annotated[StrictStr, Field(min_length=1, max_length=128, pattern=NAME_PATTERN)]

_NAME_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 128, "pattern": NAME_PATTERN}

#: One input of a graph: ``{"shape": [...]}``; shape omitted or null means any shape.
GRAPH_INPUT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "an input; shape omitted or null means any shape (taken from the value)",
    "additionalProperties": False,
    "properties": {"shape": {"anyOf": [
        {"type": "array", "maxItems": MAX_NDIM,
         "items": {"type": "integer", "minimum": 0, "maximum": 2**53}},
        {"type": "null"}]}},
}

#: One gate: ``op`` applied to ``args`` (names or numeric constants), with ``attrs``.
GRAPH_NODE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "one gate: op applied to args (names or numeric constants)",
    "additionalProperties": False,
    "required": ["id", "op"],
    "properties": {
        "id": _NAME_SCHEMA,
        "op": {"type": "string", "minLength": 1, "maxLength": MAX_OP_LENGTH},
        "args": {"type": "array", "maxItems": MAX_ARGS,
                 "items": {"anyOf": [_NAME_SCHEMA, {"type": "number"}]}},
        "attrs": {"type": "object", "additionalProperties": {"anyOf": [
            {"type": ["number", "boolean", "null", "string"]},
            {"type": "array", "maxItems": MAX_ATTR_LIST,
             "items": {"type": ["number", "boolean", "null", "string"]}}]}},
    },
}


def graph_json_schema(input_schema: dict[str, Any], node_schema: dict[str, Any]
                      ) -> dict[str, Any]:
    """The graph spec's schema around the given input and node schemas (inline copies for
    :data:`GRAPH_JSON_SCHEMA`, references to named components in OpenAPI)."""
    return {
        "type": "object",
        "description": "a graph spec: {inputs, nodes, output}; nodes in any order (validated, "
                       "with errors naming the node, by the engine's graph loader)",
        "additionalProperties": False,
        "required": ["nodes", "output"],
        "properties": {
            "inputs": {"type": "object", "propertyNames": _NAME_SCHEMA,
                       "additionalProperties": {"anyOf": [input_schema, {"type": "null"}]}},
            "nodes": {"type": "array", "items": node_schema},
            "output": _NAME_SCHEMA,
        },
    }


#: What the IR loader accepts, as JSON Schema (inline, no references).
GRAPH_JSON_SCHEMA: dict[str, Any] = graph_json_schema(GRAPH_INPUT_SCHEMA, GRAPH_NODE_SCHEMA)
GRAPH_REF = "#/components/schemas/GraphSpec"

#: A request's ``graph`` field: JSON, checked by the IR loader alone (see the module doc).
#: OpenAPI publishes it as the named components GraphSpec, GraphInput and GraphNode. Its
#: three keys (an unknown one is the loader's 422); inside, the loader bounds nodes and
#: inputs by GRADSERVE_MAX_NODES before it looks at one.
GraphJSON = Annotated[dict[str, Any], MaxItems(8), WithJsonSchema({"$ref": GRAPH_REF})]
