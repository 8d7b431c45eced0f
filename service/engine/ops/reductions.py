"""Reductions over ``axis`` (null: every axis), ``keepdims`` keeping the reduced axes as 1s:
``sum``, ``mean``, ``max``, ``min``, ``logsumexp``, ``prod``, ``var``, ``std``, ``norm``."""

from __future__ import annotations

from typing import Any

from service.engine import shapes as S
from service.engine.ops.common import AXIS, KEEPDIMS, reshaped
from service.engine.registry import Attr, Forward, ForwardFactory, OpDef, Shape, ShapeError, size_of


def reduction(name: str, forward: ForwardFactory, dx: Any, doc: str, nonempty: bool,
              attrs: tuple[Attr, ...] = (), shape: Any = None, **kw: Any) -> OpDef:
    """A reduction's record; ``nonempty``: reducing a zero-size axis is a shape error.
    ``attrs`` come after ``axis`` and ``keepdims``; ``shape`` replaces the shape rule."""
    def reduced(x: Shape, axis: Any = None, keepdims: bool = False) -> Shape:
        return S.reduce_shape(x, axis, keepdims, nonempty=nonempty)

    return OpDef(name, 1, forward, (dx,), shape or reduced, doc,
                 attrs=(AXIS, KEEPDIMS, *attrs), category="reduction",
                 **{"batching": "reduce", **kw})


def _spread(b: Any, g: Any, x: Any, axis: Any) -> Any:
    """g reshaped so that it broadcasts against x (the reduced axes kept as 1s)."""
    return reshaped(b, g, S.reduce_shape(b.shape(x), axis, True))


def _sum_dx(b: Any, g: Any, o: Any, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    return b.op("broadcast_to", _spread(b, g, x, axis), shape=b.shape(x))


def _mean_dx(b: Any, g: Any, o: Any, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    xs = b.shape(x)
    count = size_of([xs[a] for a in S.normalize_axes(axis, len(xs))])
    scaled = b.op("mul", _spread(b, g, x, axis), 1.0 / count)
    return b.op("broadcast_to", scaled, shape=b.shape(x))


def _extreme_dx(b: Any, g: Any, o: Any, x: Any, axis: Any = None, keepdims: bool = False
                ) -> Any:
    share = b.op("extreme_share", x, _spread(b, o, x, axis), axis=axis)
    return b.op("mul", _spread(b, g, x, axis), share)


def _lse_dx(b: Any, g: Any, o: Any, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
    p = b.op("exp", b.op("sub", x, _spread(b, o, x, axis)))
    return b.op("mul", _spread(b, g, x, axis), p)


def _sum(xp: Any) -> Forward:
    def sum_(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return xp.sum(x, axis=axis, keepdims=keepdims)

    return sum_


def _mean(xp: Any) -> Forward:
    def mean(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return xp.mean(x, axis=axis, keepdims=keepdims)

    return mean


def _max(xp: Any) -> Forward:
    def max_(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return xp.max(x, axis=axis, keepdims=keepdims)

    return max_


def _min(xp: Any) -> Forward:
    def min_(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return xp.min(x, axis=axis, keepdims=keepdims)

    return min_


def _logsumexp(xp: Any) -> Forward:
    def logsumexp(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        m = xp.max(x, axis=axis, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0.0)
        out = xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True)) + m
        if keepdims:
            return out
        return xp.reshape(out, ()) if axis is None else xp.squeeze(out, axis=axis)

    return logsumexp


# --- prod, var, std, norm ------------------------------------------------------------------

CORRECTION = Attr("correction", "float", 1.0,
                  "divide by n - correction (1: the sample variance, as PyTorch; 0: biased)")
ORD = Attr("ord", "choice", 2, 'the vector norm: 1, 2 or "inf" (the largest |x|)',
           choices=(1, 2, "inf"))


def _passes(k: int) -> Any:
    """A cost rule: ``k`` passes over the argument (its temporaries), one over the result."""
    def cost(shapes: Any, out: Shape, attrs: dict[str, Any]) -> int:
        return k * size_of(shapes[0]) + size_of(out)

    return cost


def _count(x: Shape, axis: Any) -> int:
    return size_of([x[a] for a in S.normalize_axes(axis, len(x))])


def _prod(xp: Any) -> Forward:
    def prod(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return xp.prod(x, axis=axis, keepdims=keepdims)

    return prod


def _prod_dx(b: Any, g: Any, o: Any, x: Any, axis: Any = None, keepdims: bool = False
             ) -> Any:
    """d prod / dx_i = the product of the other entries, exact with zeros (PyTorch's
    prod_backward gives the same values) and written so that its own derivative is exact:

    ``(P / s_i) * R_i``, where s is x with its zeros replaced by 1, P = prod(s) the product of
    the nonzero entries, and R_i the product of the *other* zero entries of the group, in a
    form exact to first order: 1 if there are none, their sum (value 0, slope 1) if there is
    one, 0 if there are more. The zero pattern is piecewise constant (masks)."""
    keep = {"axis": axis, "keepdims": True}
    nonzero = b.op("is_nonzero", x)
    zero = b.op("sub", 1.0, nonzero)
    safe = b.op("select", nonzero, x, 1.0)
    share = b.op("div", b.op("prod", safe, **keep), safe)  # product of the others, zeros out
    zx = b.op("mul", x, zero)  # the zero entries themselves (value 0)
    others = b.op("sub", b.op("sum", zero, **keep), zero)  # zeros among the other entries
    none_other = b.op("sub", 1.0, b.op("is_nonzero", others))
    one_other = b.op("sub", 1.0, b.op("is_nonzero", b.op("sub", others, 1.0)))
    rest = b.op("sub", b.op("sum", zx, **keep), zx)
    zeros = b.op("add", none_other, b.op("mul", one_other, rest))
    return b.op("mul", _spread(b, g, x, axis), b.op("mul", share, zeros))


def _moment_shape(x: Shape, axis: Any = None, keepdims: bool = False,
                  correction: float = 1.0) -> Shape:
    out = S.reduce_shape(x, axis, keepdims, nonempty=True)
    n = _count(x, axis)
    if n - correction <= 0:
        raise ShapeError(f"attr 'correction' = {correction:g} with {n} element(s) per "
                         f"reduction divides by {n - correction:g}; it must be below {n}")
    return out


def _var(xp: Any) -> Forward:
    def var(x: Any, axis: Any = None, keepdims: bool = False, correction: float = 1.0) -> Any:
        return xp.var(x, axis=axis, keepdims=keepdims, correction=correction)

    return var


def _std(xp: Any) -> Forward:
    def std(x: Any, axis: Any = None, keepdims: bool = False, correction: float = 1.0) -> Any:
        return xp.std(x, axis=axis, keepdims=keepdims, correction=correction)

    return std


def _centered(b: Any, x: Any, axis: Any, correction: float) -> Any:
    """(x - mean(x)) / (n - correction): d var/dx is twice this."""
    mean = b.op("mean", x, axis=axis, keepdims=True)
    n = _count(b.shape(x), axis)
    return b.op("mul", b.op("sub", x, mean), 1.0 / (n - correction))


def _var_dx(b: Any, g: Any, o: Any, x: Any, axis: Any = None, keepdims: bool = False,
            correction: float = 1.0) -> Any:
    return b.op("mul", _spread(b, b.op("mul", g, 2.0), x, axis), _centered(b, x, axis, correction))


def _over_nonzero(b: Any, g: Any, o: Any) -> Any:
    """g / o where o != 0, else 0 (PyTorch's masked_fill at a zero std or norm); o's zeros
    replaced by 1 in the division, so no 0/0 reaches a second derivative either."""
    nonzero = b.op("is_nonzero", o)
    return b.op("mul", nonzero, b.op("div", g, b.op("select", nonzero, o, 1.0)))


def _std_dx(b: Any, g: Any, o: Any, x: Any, axis: Any = None, keepdims: bool = False,
            correction: float = 1.0) -> Any:
    # d std = d var / (2 std); 0 where std == 0, as PyTorch's std_backward.
    return b.op("mul", _spread(b, _over_nonzero(b, g, o), x, axis),
                _centered(b, x, axis, correction))


def _norm_shape(x: Shape, axis: Any = None, keepdims: bool = False, ord: Any = 2) -> Shape:
    # The largest |x| of nothing does not exist (PyTorch refuses it too); sums of nothing are 0.
    return S.reduce_shape(x, axis, keepdims, nonempty=ord == "inf")


def _norm(xp: Any) -> Forward:
    def norm(x: Any, axis: Any = None, keepdims: bool = False, ord: Any = 2) -> Any:
        if ord == 1:
            return xp.sum(xp.abs(x), axis=axis, keepdims=keepdims)
        if ord == "inf":
            return xp.max(xp.abs(x), axis=axis, keepdims=keepdims)
        return xp.sqrt(xp.sum(x * x, axis=axis, keepdims=keepdims))

    return norm


def _norm_dx(b: Any, g: Any, o: Any, x: Any, axis: Any = None, keepdims: bool = False,
             ord: Any = 2) -> Any:
    """PyTorch's linalg_vector_norm_backward: ord 1, g*sign(x); ord 2, g*x/norm (0 where the
    norm is 0); ord inf, g*sign(x) shared evenly among the entries of largest |x|."""
    if ord == 2:
        return b.op("mul", x, _spread(b, _over_nonzero(b, g, o), x, axis))
    local = b.op("sign", x)
    if ord == "inf":
        share = b.op("extreme_share", b.op("abs", x), _spread(b, o, x, axis), axis=axis)
        local = b.op("mul", local, share)
    return b.op("mul", _spread(b, g, x, axis), local)


OPS = (
    reduction("sum", _sum, _sum_dx, "sum over axes; dx = g broadcast back", False),
    reduction("mean", _mean, _mean_dx, "mean over axes; dx = g/n broadcast back", True),
    reduction("max", _max, _extreme_dx,
              "max over axes; routes g to the maxima, split evenly on ties", True, kinked=True),
    reduction("min", _min, _extreme_dx,
              "min over axes; routes g to the minima, split evenly on ties", True, kinked=True),
    reduction("logsumexp", _logsumexp, _lse_dx,
              "log(sum(exp(x))) over axes; dx = g*softmax(x)", True),
    reduction("prod", _prod, _prod_dx,
              "product over axes; dx_i = g * the product of the other entries (exact with "
              "zeros)", False, local="the product of the others", example="prod(x, axis=1)"),
    reduction("var", _var, _var_dx,
              "sum((x - mean)^2)/(n - correction) over axes; dx = 2g(x - mean)/(n - correction)",
              True, attrs=(CORRECTION,), shape=_moment_shape,
              cost=_passes(4),
              example="var(x, axis=0, correction=0)"),
    reduction("std", _std, _std_dx,
              "sqrt(var(x)) over axes; dx = g(x - mean)/((n - correction) std), 0 where std = 0",
              True, attrs=(CORRECTION,), shape=_moment_shape,
              cost=_passes(5),
              example="std(x, axis=-1, keepdims=True)"),
    reduction("norm", _norm, _norm_dx,
              "vector norm over axes (ord 1, 2, inf); dx = g*x/norm (ord 2, 0 at norm 0), "
              "g*sign(x) (ord 1), g*sign(x) split among the largest |x| (ord inf)", False,
              attrs=(ORD,), shape=_norm_shape, kinked=True,
              cost=_passes(2),
              example='norm(x, ord="inf")'),
)
