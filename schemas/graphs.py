"""The graph spec of docs/api.md §2a."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr

from schemas.tensors import MAX_NDIM, Dim

Name = Annotated[StrictStr, Field(min_length=1, max_length=128,
                                  pattern=r"^[A-Za-z_%][A-Za-z0-9_.:%'\-]*$")]


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
