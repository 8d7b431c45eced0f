"""Pieces several category modules share: shape rules, attrs, forward and VJP helpers."""

from __future__ import annotations

from typing import Any

from service.engine import shapes as S
from service.engine.registry import Attr, Forward, ForwardFactory, Shape

AXIS = Attr("axis", "axis", None, "axis or list of axes to reduce; null reduces all")
KEEPDIMS = Attr("keepdims", "bool", False, "keep reduced axes with size 1")


def unary_shape(x: Shape) -> Shape:
    return x


def binary_shape(x: Shape, y: Shape) -> Shape:
    return S.broadcast_shapes(x, y)


def fixed(forward: Forward) -> ForwardFactory:
    """The factory of a forward that needs no namespace (Python's operators, identity)."""
    return lambda xp: forward


def reshaped(b: Any, ref: Any, shape: Shape) -> Any:
    """The node ``ref`` reshaped to ``shape`` (``ref`` itself when it has that shape)."""
    return ref if b.shape(ref) == tuple(shape) else b.op("reshape", ref, shape=tuple(shape))
