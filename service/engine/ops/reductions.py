"""Reductions over ``axis`` (null: every axis), ``keepdims`` keeping the reduced axes as 1s:
``sum``, ``mean``, ``max``, ``min``, ``logsumexp``."""

from __future__ import annotations

from typing import Any

from service.engine import shapes as S
from service.engine.ops.common import AXIS, KEEPDIMS, reshaped
from service.engine.registry import Forward, ForwardFactory, OpDef, Shape, size_of


def reduction(name: str, forward: ForwardFactory, dx: Any, doc: str, nonempty: bool,
              **kw: Any) -> OpDef:
    """A reduction's record; ``nonempty``: reducing a zero-size axis is a shape error."""
    def shape(x: Shape, axis: Any = None, keepdims: bool = False) -> Shape:
        return S.reduce_shape(x, axis, keepdims, nonempty=nonempty)

    return OpDef(name, 1, forward, (dx,), shape, doc, attrs=(AXIS, KEEPDIMS),
                 category="reduction", **kw)


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


OPS = (
    reduction("sum", _sum, _sum_dx, "sum over axes; dx = g broadcast back", False),
    reduction("mean", _mean, _mean_dx, "mean over axes; dx = g/n broadcast back", True),
    reduction("max", _max, _extreme_dx,
              "max over axes; routes g to the maxima, split evenly on ties", True, kinked=True),
    reduction("min", _min, _extreme_dx,
              "min over axes; routes g to the minima, split evenly on ties", True, kinked=True),
    reduction("logsumexp", _logsumexp, _lse_dx,
              "log(sum(exp(x))) over axes; dx = g*softmax(x)", True),
)
