"""The internal ops: what VJP rules build backward graphs from, hidden from users.

Masks of kinked ops (derivative zero), ``select``, ``sum_to``/``broadcast_to`` (each other's
VJP), ``contract`` (the bilinear products of matmul's VJP with broadcast batch axes summed
*inside* the product, never materialized) and the fused pieces of the losses (``onehot``,
``hinge_active``). See docs/engine.md, "Internal ops".
"""

from __future__ import annotations

from typing import Any

from service.engine import shapes as S
from service.engine.ops.common import AXIS, binary_shape, unary_shape
from service.engine.ops.products import rows_matmul
from service.engine.registry import Attr, Forward, ForwardFactory, OpDef, Shape, ShapeError, size_of

MARGIN = Attr("margin", "float", 1.0, "the SVM margin")
TARGET_SHAPE = Attr("shape", "shape", (), "the target shape")


def internal(name: str, arity: int, forward: ForwardFactory, vjps: tuple[Any, ...], shape: Any,
             doc: str, **kw: Any) -> OpDef:
    return OpDef(name, arity, forward, vjps, shape, doc, internal=True, category="internal",
                 **kw)


def _as_float(xp: Any, mask: Any, *like: Any) -> Any:
    return xp.astype(mask, xp.result_type(*like))


# --- masks: piecewise constant, so their derivative is zero (None) everywhere it exists ----

def _extreme_share(xp: Any) -> Forward:
    def extreme_share(x: Any, o: Any, axis: Any = None) -> Any:
        mask = _as_float(xp, x == o, x)
        return mask / xp.sum(mask, axis=axis, keepdims=True)

    return extreme_share


def _onehot_of(xp: Any, y: Any, s: Any) -> Any:
    return _as_float(xp, xp.expand_dims(y, axis=-1) == xp.arange(s.shape[-1], dtype=y.dtype), s)


def _hinge_active(xp: Any) -> Forward:
    def hinge_active(s: Any, y: Any, margin: float = 1.0) -> Any:
        oh = _onehot_of(xp, y, s)
        sy = xp.sum(s * oh, axis=1, keepdims=True)
        active = _as_float(xp, s - sy + margin > 0, s) * (1.0 - oh)
        return active - oh * xp.sum(active, axis=1, keepdims=True)

    return hinge_active


def _select(xp: Any) -> Forward:
    def select(c: Any, a: Any, b: Any) -> Any:
        return xp.where(c > 0, a, b)

    return select


# --- broadcasting undone: sum_to and broadcast_to ------------------------------------------

def _broadcast_to_shape(x: Shape, shape: Shape = ()) -> Shape:
    if S.broadcast_shapes(x, tuple(shape)) != tuple(shape):
        raise ShapeError(f"{S.fmt(x)} does not broadcast to {S.fmt(shape)}")
    return tuple(shape)


def _sum_to_shape(x: Shape, shape: Shape = ()) -> Shape:
    _broadcast_to_shape(tuple(shape), x)
    return tuple(shape)


def _broadcast_to(xp: Any) -> Forward:
    def broadcast_to(x: Any, shape: Any = ()) -> Any:
        return xp.broadcast_to(x, tuple(shape))

    return broadcast_to


def _sum_to(xp: Any) -> Forward:
    def sum_to(x: Any, shape: Any = ()) -> Any:
        return unbroadcast(xp, x, tuple(shape))

    return sum_to


def unbroadcast(xp: Any, g: Any, shape: Shape) -> Any:
    """Sum a broadcast value back to ``shape`` (leading axes and axes of size 1)."""
    gshape = tuple(g.shape)
    lead = len(gshape) - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, d in enumerate(shape) if d == 1 and gshape[i + lead] != 1
    )
    if axes:
        g = xp.sum(g, axis=axes, keepdims=True)
    return g if tuple(g.shape) == shape else xp.reshape(g, shape)


# --- contract: "ab,bc->ac" as one batched matmul --------------------------------------------

def parse_spec(spec: str) -> tuple[str, str, str]:
    """``"ab,bc->ac"`` → ("ab", "bc", "ac"); ShapeError when it is not a valid contraction.

    Valid: single letters, no letter twice in one operand, and every letter in at least two
    of the three places (so no operand is summed on its own and every VJP of a contraction
    is again a contraction of the same kind).
    """
    try:
        ins, z = spec.split("->")
        x, y = ins.split(",")
    except ValueError:
        raise ShapeError(f"bad contraction spec {spec!r}") from None
    for part in (x, y, z):
        if len(set(part)) != len(part) or not all(c.isalpha() for c in part):
            raise ShapeError(f"bad contraction spec {spec!r}")
    for c in set(x + y + z):
        if (c in x) + (c in y) + (c in z) < 2:
            raise ShapeError(f"contraction spec {spec!r}: '{c}' appears once")
    return x, y, z


def _contract_shape(x: Shape, y: Shape, spec: str = "") -> Shape:
    sx, sy, sz = parse_spec(spec)
    if len(sx) != len(x) or len(sy) != len(y):
        raise ShapeError(f"contraction {spec!r} does not fit {S.fmt(x)} and {S.fmt(y)}")
    dims = dict(zip(sx, x))
    for c, d in zip(sy, y):
        if dims.setdefault(c, d) != d:
            raise ShapeError(f"contraction {spec!r}: '{c}' is {dims[c]} and {d}")
    return tuple(dims[c] for c in sz)


def _contract_cost(shapes: Any, out: Shape, attrs: dict[str, Any]) -> int:
    sx, sy, _ = parse_spec(attrs["spec"])
    dims = {**dict(zip(sx, shapes[0])), **dict(zip(sy, shapes[1]))}
    # The product itself, plus copies of both operands and the result (transposes).
    return 2 * size_of(dims.values()) + size_of(shapes[0]) + size_of(shapes[1]) + size_of(out)


def _swap(spec: str, which: int) -> str:
    """The spec of a contraction's VJP for operand ``which`` (the result takes its place)."""
    x, y, z = parse_spec(spec)
    return f"{z},{y}->{x}" if which == 0 else f"{x},{z}->{y}"


def _contract(xp: Any) -> Forward:
    """The forward of ``contract``: a batched matmul after permuting and grouping axes."""
    def contract(x: Any, y: Any, spec: str = "") -> Any:
        sx, sy, sz = parse_spec(spec)
        batch = [c for c in sz if c in sx and c in sy]
        summed = [c for c in sx if c in sy and c not in sz]
        xfree = [c for c in sx if c not in sy]
        yfree = [c for c in sy if c not in sx]
        dims = {**dict(zip(sx, x.shape)), **dict(zip(sy, y.shape))}

        def group(a: Any, letters: str, order: list[str], shape: tuple[int, ...]) -> Any:
            perm = tuple(letters.index(c) for c in order)
            if perm != tuple(range(len(perm))):
                a = xp.permute_dims(a, perm)
            return a if a.shape == shape else xp.reshape(a, shape)

        nb = size_of([dims[c] for c in batch])
        m = size_of([dims[c] for c in xfree])
        k = size_of([dims[c] for c in summed])
        n = size_of([dims[c] for c in yfree])
        lead = (nb,) if batch else ()
        a = group(xp.asarray(x), sx, batch + xfree + summed, (*lead, m, k))
        b = group(xp.asarray(y), sy, batch + summed + yfree, (*lead, k, n))
        # Nothing summed (k = 1: outer products, per-example weight gradients): a
        # broadcasting multiply, memory-bound, where matmul's inner loop would not use BLAS.
        r = a * b if k == 1 else (xp.matmul(a, b) if batch else rows_matmul(xp, a, b))
        order = batch + xfree + yfree
        r = xp.reshape(r, tuple(dims[c] for c in order))
        perm = tuple(order.index(c) for c in sz)
        return r if perm == tuple(range(len(perm))) else xp.permute_dims(r, perm)

    return contract


OPS = (
    # masks
    internal("is_positive", 1, lambda xp: lambda x: _as_float(xp, x > 0, x), (None,),
             unary_shape, "1 where x > 0, else 0 (relu's derivative)"),
    internal("is_nonzero", 1, lambda xp: lambda x: _as_float(xp, x != 0, x), (None,),
             unary_shape, "1 where x != 0, else 0"),
    internal("pow_zero_base", 2, lambda xp: lambda x, y: _as_float(xp, (x == 0) & (y >= 0), x, y),
             (None, None), binary_shape, "1 where x == 0 and y >= 0 (pow's d/dy is 0 there)"),
    internal("max_share", 2,
             lambda xp: lambda x, y: xp.where(x == y, 0.5, _as_float(xp, x > y, x, y)),
             (None, None), binary_shape, "1 where x > y, 1/2 on ties, else 0"),
    internal("extreme_share", 2, _extreme_share, (None, None), lambda x, o, axis=None: x,
             "1/ties where x equals its reduction's extreme o, else 0", attrs=(AXIS,)),
    # the losses' fused pieces
    internal("onehot", 2, lambda xp: lambda y, s: _onehot_of(xp, y, s), (None, None),
             lambda y, s: s, "one-hot rows of labels y, shaped and typed like scores s",
             arg_kinds=("label", "float")),
    internal("hinge_active", 2, _hinge_active, (None, None), lambda s, y, margin=1.0: s,
             "hinge's d/ds per row: 1 per active margin, minus their count at the label",
             attrs=(MARGIN,), arg_kinds=("float", "label")),
    # differentiable
    internal("select", 3, _select,
             (None, lambda b, g, o, c, x, y: b.op("select", c, g, 0.0),
              lambda b, g, o, c, x, y: b.op("select", c, 0.0, g)),
             lambda c, a, b: S.broadcast_shapes(c, a, b), "a where c > 0, else b"),
    internal("broadcast_to", 1, _broadcast_to,
             (lambda b, g, o, x, shape=(): b.op("sum_to", g, shape=b.shape(x)),),
             _broadcast_to_shape, "x broadcast to shape; dx = g summed back",
             attrs=(TARGET_SHAPE,), view=True),
    internal("sum_to", 1, _sum_to,
             (lambda b, g, o, x, shape=(): b.op("broadcast_to", g, shape=b.shape(x)),),
             _sum_to_shape, "x summed over its broadcast axes down to shape; dx = g broadcast",
             attrs=(TARGET_SHAPE,)),
    internal("contract", 2, _contract,
             (lambda b, g, o, x, y, spec="": b.op("contract", g, y, spec=_swap(spec, 0)),
              lambda b, g, o, x, y, spec="": b.op("contract", x, g, spec=_swap(spec, 1))),
             _contract_shape, "sum of products over the letters missing from the result",
             attrs=(Attr("spec", "str", "", "'xy,yz->xz'"),), cost=_contract_cost),
)
