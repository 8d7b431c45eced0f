"""Tensors on the wire (docs/api.md §1).

The schema validates a tensor's *form* only: which of the four forms it is and the small
fields of the object forms. Element data (nested lists, ``data``, ``b64``) is kept as the
parsed JSON and converted to NumPy in one step by the service's codec, so a
1,000,000-element tensor is never walked element by element here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    Tag,
    WithJsonSchema,
)

MAX_NDIM = 32
WireDType = Literal["float64", "float32"]


def _integral(value: Any) -> Any:
    return int(value) if type(value) is float and value.is_integer() else value


#: An integer as JSON Schema's "integer" is one: 2 and 2.0 (what the OpenAPI document
#: promises, and what a client's float formatting may send), never true, 2.5 or "2".
#: ``Annotated[int, Strict(), Field(...), Integral]``: last, after the bounds, or Pydantic
#: leaves the bounds out of the JSON schema.
Integral = BeforeValidator(_integral)
#: A dimension: a JSON integer.
Dim = Annotated[int, Strict(), Field(ge=0, le=2**62), Integral]


class FlatTensor(BaseModel):
    """``{"shape": [2, 2], "dtype": "float64", "data": [1, 2, 3, 4]}``, row-major."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    shape: Annotated[list[Dim], Field(max_length=MAX_NDIM)]
    dtype: WireDType | None = None
    data: Annotated[
        Any, WithJsonSchema({"type": "array", "items": {"type": "number"}})
    ]


class B64Tensor(BaseModel):
    """``{"shape": [2, 2], "dtype": "float32", "b64": "..."}``: raw little-endian bytes."""

    model_config = ConfigDict(extra="forbid")

    shape: Annotated[list[Dim], Field(max_length=MAX_NDIM)]
    dtype: WireDType = "float64"
    b64: str


def tensor_kind(value: Any) -> str | None:
    """Which wire form ``value`` is in (the discriminator of :data:`Tensor`)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return "scalar"
    if isinstance(value, list):
        return "nested"
    if isinstance(value, dict):
        return "b64" if "b64" in value else "flat"
    if isinstance(value, FlatTensor):
        return "flat"
    if isinstance(value, B64Tensor):
        return "b64"
    return None


def _nested_schema(leaf: list[dict[str, Any]], depth: int) -> dict[str, Any]:
    """Arrays whose items are ``leaf`` values or arrays, written out ``depth`` levels deep.

    Not a recursive ``$ref``: code generators (openapi-python-client) refuse recursion in
    ``items``, and drop an array without ``items``. Below ``depth`` the items are left open;
    the codec checks the rest (numbers only, rectangular, at most MAX_NDIM dimensions).
    """
    schema: dict[str, Any] = {"type": "array", "items": {}}
    for _ in range(depth - 1):
        schema = {"type": "array", "items": {"anyOf": [*leaf, schema]}}
    return schema


#: The nested-array form as JSON Schema (its components are published under these names).
NESTED_REF = "#/components/schemas/NestedArray"
NESTED_OUT_REF = "#/components/schemas/NestedArrayOut"
NESTED_ARRAY_SCHEMA = {
    "description": "nested arrays of numbers, rectangular (the shape comes from the nesting)",
    **_nested_schema([{"type": "number"}], 6),
}
NESTED_ARRAY_OUT_SCHEMA = {
    "description": "nested arrays of numbers; null stands for a non-finite value",
    **_nested_schema([{"type": "number"}, {"type": "null"}], 6),
}
_NESTED_SCHEMA = {"$ref": NESTED_REF}

Tensor = Annotated[
    Annotated[Annotated[float, Field(allow_inf_nan=False)], Tag("scalar")]
    | Annotated[Annotated[Any, WithJsonSchema(_NESTED_SCHEMA)], Tag("nested")]
    | Annotated[FlatTensor, Tag("flat")]
    | Annotated[B64Tensor, Tag("b64")],
    Discriminator(
        tensor_kind,
        custom_error_type="invalid_tensor",
        custom_error_message="a tensor is a number, nested arrays of numbers, "
        "{shape, dtype, data} or {shape, dtype, b64}",
    ),
]

#: A tensor in a response: a number (or null), nested arrays, or a binary object.
TensorOut = Annotated[
    Any,
    WithJsonSchema({
        "description": "a number, nested arrays of numbers (null for non-finite values), or "
        "a binary object {shape, dtype, b64} when the request asked for encoding b64",
        "anyOf": [
            {"type": "number"},
            {"type": "null"},
            {"$ref": NESTED_OUT_REF},
            {"$ref": "#/components/schemas/B64Tensor"},
        ],
    }),
]
