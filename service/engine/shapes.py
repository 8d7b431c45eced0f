"""Shape arithmetic shared by the shape rules and the executor (pure Python, no NumPy)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from service.engine.registry import MAX_NDIM, Shape, ShapeError

# NumPy refuses any array, even a zero-size one, whose dimensions multiply (zeros taken as
# ones) past what its byte size can express ("array is too big"). A shape rule refuses such a
# result first, with a 422, so that no shape a graph can produce is a 500 later.
MAX_SPAN = 2**53


def span(shape: Sequence[int]) -> int:
    """The product of the dims, a zero counted as 1; stops early once past MAX_SPAN."""
    n = 1
    for d in shape:
        if d > 1:
            n *= d
            if n > MAX_SPAN:
                return n
    return n


def check_span(shape: Shape) -> Shape:
    """``shape``, or a ShapeError when NumPy could not make an array of it."""
    if span(shape) > MAX_SPAN:
        raise ShapeError(f"the dimensions of {fmt(shape)} multiply to more than 2^53 "
                         "(counting zeros as ones)")
    return shape


def fmt(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"


def broadcast_shapes(*shapes: Shape) -> Shape:
    """NumPy broadcasting of shapes; ShapeError naming both shapes when they don't fit."""
    ndim = max((len(s) for s in shapes), default=0)
    out = [1] * ndim
    for s in shapes:
        for i, d in enumerate(s, start=ndim - len(s)):
            if d == out[i] or d == 1:
                continue
            if out[i] == 1:
                out[i] = d
            else:
                raise ShapeError(
                    "shapes " + " and ".join(fmt(x) for x in shapes) + " do not broadcast"
                )
    return check_span(tuple(out))


def normalize_axes(axis: Any, ndim: int) -> tuple[int, ...]:
    """Axis attr (None, int or tuple) → sorted tuple of non-negative axes."""
    if axis is None:
        return tuple(range(ndim))
    axes = (axis,) if isinstance(axis, int) else tuple(axis)
    out = []
    for a in axes:
        if not -ndim <= a < ndim:
            raise ShapeError(f"axis {a} is out of range for a {ndim}-d tensor")
        out.append(a % ndim)
    if len(set(out)) != len(out):
        raise ShapeError(f"axis {axis} repeats an axis")
    return tuple(sorted(out))


def reduce_shape(x: Shape, axis: Any, keepdims: bool, *, nonempty: bool = False) -> Shape:
    axes = normalize_axes(axis, len(x))
    if nonempty and any(x[a] == 0 for a in axes):
        raise ShapeError(f"cannot reduce over a zero-size axis of {fmt(x)}")
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(x))
    return tuple(d for i, d in enumerate(x) if i not in axes)


def matmul_shape(a: Shape, b: Shape) -> Shape:
    """NumPy ``@``: 1-D operands are promoted and the promoted axis removed again."""
    if not a or not b:
        raise ShapeError("matmul needs at least 1-d operands; use mul for scalars")
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    if a2[-1] != b2[-2]:
        raise ShapeError(f"inner dimensions differ: {fmt(a)} @ {fmt(b)}")
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    out = check_span((*batch, a2[-2], b2[-1]))
    if len(b) == 1:
        out = out[:-1]
    if len(a) == 1:
        out = out[:-2] + out[-1:] if len(b) > 1 else out[:-1]
    return out


def matmul_cost(a: Shape, b: Shape) -> int:
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    batch = broadcast_shapes(a2[:-2], b2[:-2])
    n = 1
    for d in batch:
        n *= d
    return 2 * n * a2[-2] * a2[-1] * b2[-1]


def reshape_shape(x: Shape, shape: Shape) -> Shape:
    size = 1
    for d in x:
        size *= d
    if len(shape) > MAX_NDIM:
        raise ShapeError(f"a shape has at most {MAX_NDIM} dims, got {len(shape)}")
    check_span(tuple(d for d in shape if d != -1))
    known = 1
    for d in shape:
        if d != -1:
            known *= d
    if -1 in shape:
        if known == 0 or size % known:
            raise ShapeError(f"cannot reshape {fmt(x)} into {fmt(shape)}")
        return tuple(size // known if d == -1 else d for d in shape)
    if known != size:
        raise ShapeError(f"cannot reshape {fmt(x)} ({size} elements) into {fmt(shape)}")
    return tuple(shape)


def transpose_shape(x: Shape, axes: Shape | None) -> Shape:
    if axes is None:
        return tuple(reversed(x))
    norm = normalize_axes(tuple(axes), len(x)) if axes else ()
    if len(axes) != len(x) or len(norm) != len(x):
        raise ShapeError(f"axes {list(axes)} is not a permutation of the {len(x)} axes")
    return tuple(x[a % len(x)] for a in axes)
