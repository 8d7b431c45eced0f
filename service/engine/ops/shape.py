"""Ops that rearrange elements without computing on them: ``reshape``, ``concat`` and
``stack`` (variadic), ``squeeze``, ``unsqueeze``, ``expand``, ``flatten``; ``slice``, ``pad``
and ``gather`` are in ``indexing``, with the internal ops their gradients are made of.

``transpose`` sits with the products in ``linalg`` (so ``GET /v1/ops`` keeps its order:
matmul, dot, transpose, linear), the internal ``broadcast_to`` and ``sum_to`` in
``internal``. Every shape rule refuses a bad attr with a ShapeError that names it (the
compiler adds the node); the results that share their argument's memory are ``view``\\ s.
"""

from __future__ import annotations

from typing import Any

from service.engine import shapes as S
from service.engine.ops import indexing
from service.engine.ops.common import reshaped
from service.engine.ops.indexing import axes_of, axis_of
from service.engine.registry import Attr, Forward, OpDef, Shape, ShapeError, size_of

# --- reshape, squeeze, unsqueeze, flatten: new shapes of the same elements ------------------

def _reshape(xp: Any) -> Forward:
    def reshape(x: Any, shape: Any = ()) -> Any:
        return xp.reshape(x, shape)

    return reshape


def _squeeze_shape(x: Shape, axes: Any = None) -> Shape:
    if axes is None:
        return tuple(d for d in x if d != 1)
    gone = axes_of(axes, len(x))
    for a in gone:
        if x[a] != 1:
            raise ShapeError(f"attr 'axes': axis {a} has size {x[a]}; only size-1 axes are "
                             "squeezed")
    return tuple(d for i, d in enumerate(x) if i not in gone)


def _unsqueeze_shape(x: Shape, axes: Any = (0,)) -> Shape:
    if axes is None:
        raise ShapeError("attr 'axes' must list where the new axes go (null says nothing)")
    ndim = len(x) + len(axes)  # the axes are positions in the result, as ONNX's
    if ndim > S.MAX_NDIM:
        raise ShapeError(f"attr 'axes': the result would have {ndim} dims, more than "
                         f"{S.MAX_NDIM}")
    new = set(axes_of(axes, ndim, what="result"))
    dims = iter(x)
    return tuple(1 if i in new else next(dims) for i in range(ndim))


def _flatten_shape(x: Shape, start_axis: int = 0, end_axis: int = -1) -> Shape:
    dims = x or (1,)  # a 0-d tensor flattens to (1,), as torch.flatten
    start = axis_of(start_axis, len(dims), "start_axis")
    end = axis_of(end_axis, len(dims), "end_axis")
    if start > end:
        raise ShapeError(f"attr 'start_axis' ({start_axis}) comes after attr 'end_axis' "
                         f"({end_axis}) in a {len(x)}-d tensor")
    return dims[:start] + (size_of(dims[start:end + 1]),) + dims[end + 1:]


def _to_shape(xp: Any, rule: Any) -> Forward:
    """The forward of a reshaping op: its argument reshaped to what ``rule`` says (itself
    where nothing changes)."""
    def to_shape(x: Any, **attrs: Any) -> Any:
        shape = rule(tuple(x.shape), **attrs)
        return x if shape == tuple(x.shape) else xp.reshape(x, shape)

    return to_shape


def _back(b: Any, g: Any, o: Any, x: Any, **attrs: Any) -> Any:
    """The VJP of a reshaping op: g reshaped back to x's shape (a view)."""
    return reshaped(b, g, b.shape(x))


# --- expand: NumPy/ONNX broadcasting to a shape -----------------------------------------------

def _expand_shape(x: Shape, shape: Any = ()) -> Shape:
    if any(d < 0 for d in shape):
        raise ShapeError(f"attr 'shape': dims must be >= 0 (a 1 keeps the input's dim), got "
                         f"{list(shape)}")
    try:
        return S.broadcast_shapes(x, tuple(shape))
    except ShapeError:
        raise ShapeError(f"attr 'shape': {S.fmt(x)} does not expand to {S.fmt(shape)} (each "
                         "pair of dims equal, or one of them 1)") from None


def _expand(xp: Any) -> Forward:
    def expand(x: Any, shape: Any = ()) -> Any:
        out = _expand_shape(tuple(x.shape), shape)
        return x if out == tuple(x.shape) else xp.broadcast_to(x, out)

    return expand


# --- concat and stack: any number of arguments ---------------------------------------------

def _concat_shape(*xs: Shape, axis: int = 0) -> Shape:
    first = xs[0]
    if not first:
        raise ShapeError("concat joins tensors of at least 1 dim along an axis they have "
                         "(stack joins 0-d ones)")
    a = axis_of(axis, len(first))
    for k, s in enumerate(xs[1:], 1):
        if len(s) != len(first) or any(d != e for i, (d, e) in enumerate(zip(s, first))
                                       if i != a):
            raise ShapeError(f"arg {k} {S.fmt(s)} does not fit arg 0 {S.fmt(first)}: the "
                             f"shapes may differ along attr 'axis' ({axis}) only")
    return S.check_span(first[:a] + (sum(s[a] for s in xs),) + first[a + 1:])


def _concat(xp: Any) -> Forward:
    def concat(*xs: Any, axis: int = 0) -> Any:
        return xs[0] if len(xs) == 1 else xp.concat(xs, axis=axis)

    return concat


def _concat_dx(i: int, b: Any, g: Any, o: Any, *xs: Any, axis: int = 0) -> Any:
    """Argument i's part of g: the slice of g along the axis where its values went."""
    if len(xs) == 1:
        return g
    shapes = [b.shape(x) for x in xs]
    a = axis % len(shapes[0])
    start = sum(s[a] for s in shapes[:i])
    return b.op("slice", g, starts=(start,), ends=(start + shapes[i][a],), axes=(a,))


def _stack_shape(*xs: Shape, axis: int = 0) -> Shape:
    first = xs[0]
    for k, s in enumerate(xs[1:], 1):
        if s != first:
            raise ShapeError(f"stack needs tensors of one shape: arg {k} is {S.fmt(s)}, "
                             f"arg 0 {S.fmt(first)}")
    if len(first) + 1 > S.MAX_NDIM:
        raise ShapeError(f"the result would have {len(first) + 1} dims, more than "
                         f"{S.MAX_NDIM}")
    a = axis_of(axis, len(first) + 1, what="result")
    return S.check_span(first[:a] + (len(xs),) + first[a:])


def _stack(xp: Any) -> Forward:
    def stack(*xs: Any, axis: int = 0) -> Any:
        return xp.stack(xs, axis=axis)

    return stack


def _stack_dx(i: int, b: Any, g: Any, o: Any, *xs: Any, axis: int = 0) -> Any:
    """Argument i's part of g: index i of g along the new axis (a slice, then a squeeze)."""
    a = axis % (len(b.shape(xs[0])) + 1)
    part = b.op("slice", g, starts=(i,), ends=(i + 1,), axes=(a,))
    return b.op("squeeze", part, axes=(a,))


# --- the records ------------------------------------------------------------------------------

JOIN_AXIS = Attr("axis", "int", 0, "the axis the tensors are joined along (their "
                 "shapes may differ there only)")
NEW_AXIS = Attr("axis", "int", 0, "the new axis of the result, in [-(ndim+1), ndim]")


def _shape_op(name: str, forward: Any, vjp: Any, shape: Any, doc: str, **kw: Any) -> OpDef:
    return OpDef(name, 1, forward, (vjp,), shape, doc, category="shape",
                 **{"batching": "to_shape", **kw})


OPS = (
    _shape_op("reshape", _reshape,
              lambda b, g, o, x, shape=(): b.op("reshape", g, shape=b.shape(x)),
              lambda x, shape=(): S.reshape_shape(x, shape),
              "same elements, new shape; dx = g reshaped back",
              attrs=(Attr("shape", "shape", (), "new shape; one dim may be -1"),), view=True,
              example="reshape(x, shape=[2, -1])"),
    _shape_op("flatten", lambda xp: _to_shape(xp, _flatten_shape), _back, _flatten_shape,
              "merges the axes start_axis..end_axis into one (torch.flatten); dx = g "
              "reshaped back",
              attrs=(Attr("start_axis", "int", 0, "the first axis merged"),
                     Attr("end_axis", "int", -1, "the last axis merged")),
              view=True, example="flatten(x, start_axis=1)"),
    _shape_op("squeeze", lambda xp: _to_shape(xp, _squeeze_shape), _back, _squeeze_shape,
              "drops size-1 axes; dx = g reshaped back",
              attrs=(Attr("axes", "axes", None, "the size-1 axes to drop (another "
                          "size is refused); null drops every size-1 axis"),),
              view=True, example="squeeze(x, axes=[1])"),
    _shape_op("unsqueeze", lambda xp: _to_shape(xp, _unsqueeze_shape), _back,
              _unsqueeze_shape, "inserts size-1 axes; dx = g reshaped back",
              attrs=(Attr("axes", "axes", (0,), "where the new size-1 axes are "
                          "in the result (as ONNX)"),),
              view=True, example="unsqueeze(x, axes=[0, -1])"),
    _shape_op("expand", _expand, lambda b, g, o, x, shape=(): g, _expand_shape,
              "broadcasts x against shape (NumPy/ONNX rules: the result has the larger "
              "dim of each pair); dx = g summed back to x's shape",
              attrs=(Attr("shape", "shape", (), "the shape x is broadcast against; "
                          "a 1 keeps x's dim"),),
              view=True, example="expand(b, shape=[4, 3])", batching="expand"),
    OpDef("concat", 1, _concat, (_concat_dx,), _concat_shape,
          "joins any number of tensors along an existing axis; each dx = its slice of g",
          attrs=(JOIN_AXIS,), arg_names=("tensors",), category="shape", variadic=True,
          example="concat(a, b, c, axis=1)", batching="axis"),
    OpDef("stack", 1, _stack, (_stack_dx,), _stack_shape,
          "joins any number of tensors of one shape along a new axis; each dx = its index "
          "of g along that axis", attrs=(NEW_AXIS,), arg_names=("tensors",),
          category="shape", variadic=True, example="stack(a, b, axis=-1)",
          batching="stack"),
    *indexing.OPS,
)
