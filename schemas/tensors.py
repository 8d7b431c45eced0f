"""Tensors on the wire (API.md §1).

The schema validates a tensor's *form* only: which of the four forms it is and the small
fields of the object forms. Element data (nested lists, ``data``, ``b64``) is kept as the
parsed JSON and converted to NumPy in one step by the service's codec, so a
1,000,000-element tensor is never walked element by element here.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, WithJsonSchema

MAX_NDIM = 32
WireDType = Literal["float64", "float32"]
Dim = Annotated[int, Field(ge=0, le=2**62)]


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


_NESTED_SCHEMA = {"type": "array", "description": "nested arrays of numbers (rectangular)"}

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
    }),
]
