"""Normalization and dropout (``ops.cnn`` lists them with the convolution ops):
``batch_norm`` (inference form), ``batch_norm_train`` (batch statistics), ``layer_norm``,
``dropout``; and the internal ``standardize`` / ``inv_std`` their gradients are made of.

The forwards are fused; the VJPs are written in registry ops over two internal ops, the
standardized input ``xhat = (x - mean) / sqrt(var + eps)`` and ``inv = 1 / sqrt(var + eps)``
(biased variance over the normalized axes, as PyTorch), whose own VJPs are again made of
them, so every order is exact. With ``G`` the upstream of ``xhat`` and means over the
normalized axes: ``dx = inv * (G - mean(G) - xhat * mean(G * xhat))``, which sums to zero
over those axes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.engine import shapes as S
from service.engine.ops.common import AXIS
from service.engine.registry import Attr, Forward, OpDef, Shape, ShapeError, size_of

EPSILON = Attr("epsilon", "float", 1e-5, "added to the variance before the square root")
NORM_AXIS = Attr("axis", "int", -1, "the first normalized axis: it and every later one")


# --- shape rules ----------------------------------------------------------------------------

def _epsilon(epsilon: float) -> None:
    if epsilon < 0:
        raise ShapeError(f"attr 'epsilon' must not be negative, got {epsilon}", attr="epsilon")


def _channel_params(x: Shape, params: tuple[Shape, ...], names: tuple[str, ...]) -> Shape:
    if len(x) < 2:
        raise ShapeError(f"input must be (N, C, ...), at least 2-d, got {S.fmt(x)}")
    for name, p in zip(names, params):
        if p != (x[1],):
            raise ShapeError(f"{name} must be ({x[1]},) for input {S.fmt(x)} (one per "
                             f"channel), got {S.fmt(p)}")
    return x


def _batch_norm_shape(x: Shape, scale: Shape, bias: Shape, mean: Shape, var: Shape,
                      epsilon: float = 1e-5) -> Shape:
    _epsilon(epsilon)
    return _channel_params(x, (scale, bias, mean, var), ("scale", "bias", "mean", "var"))


def _batch_norm_train_shape(x: Shape, scale: Shape, bias: Shape, epsilon: float = 1e-5
                            ) -> Shape:
    _epsilon(epsilon)
    _channel_params(x, (scale, bias), ("scale", "bias"))
    if x[0] * size_of(x[2:]) == 0:
        raise ShapeError(f"batch statistics of {S.fmt(x)} over zero elements per channel")
    return x


def layer_axes(x: Shape, axis: int) -> tuple[int, ...]:
    """The normalized axes of ``x``: ``axis`` and every later one."""
    if not -len(x) <= axis < len(x):
        raise ShapeError(f"attr 'axis' = {axis} is out of range for a {len(x)}-d input",
                         attr="axis")
    return tuple(range(axis % len(x), len(x)))


def _layer_norm_shape(x: Shape, scale: Shape, bias: Shape, axis: int = -1,
                      epsilon: float = 1e-5) -> Shape:
    _epsilon(epsilon)
    dims = x[layer_axes(x, axis)[0]:]
    if size_of(dims) == 0:
        raise ShapeError(f"cannot normalize over the zero-size axes {S.fmt(dims)} of "
                         f"{S.fmt(x)}")
    for name, p in (("scale", scale), ("bias", bias)):
        if p != dims:
            raise ShapeError(f"{name} must be {S.fmt(dims)} (the normalized axes of "
                             f"{S.fmt(x)}), got {S.fmt(p)}")
    return x


def _stats_shape(x: Shape, axis: Any = None, epsilon: float = 1e-5, *, keep: bool) -> Shape:
    _epsilon(epsilon)
    out = S.reduce_shape(x, axis, True, nonempty=True)
    return out if keep else x


def _dropout_shape(x: Shape, p: float = 0.5, seed: int = 0, training: bool = False) -> Shape:
    if not 0.0 <= p <= 1.0:
        raise ShapeError(f"attr 'p' must lie in [0, 1], got {p}", attr="p")
    if seed < 0:
        raise ShapeError(f"attr 'seed' must not be negative, got {seed}", attr="seed")
    return x


# --- forwards -------------------------------------------------------------------------------

def _centered(xp: Any, x: Any, axis: Any, epsilon: float) -> tuple[Any, Any]:
    """``x - mean`` and ``1 / sqrt(var + epsilon)`` (kept dims) over ``axis``."""
    xc = x - xp.mean(x, axis=axis, keepdims=True)
    return xc, 1.0 / xp.sqrt(xp.mean(xc * xc, axis=axis, keepdims=True) + epsilon)


def _per_channel(xp: Any, p: Any, ndim: int) -> Any:
    return xp.reshape(p, (1, -1) + (1,) * (ndim - 2))


def _batch_norm(xp: Any) -> Forward:
    def batch_norm(x: Any, scale: Any, bias: Any, mean: Any, var: Any,
                   epsilon: float = 1e-5) -> Any:
        k = scale / xp.sqrt(var + epsilon)
        return x * _per_channel(xp, k, x.ndim) + _per_channel(xp, bias - mean * k, x.ndim)

    return batch_norm


def _batch_norm_train(xp: Any) -> Forward:
    def batch_norm_train(x: Any, scale: Any, bias: Any, epsilon: float = 1e-5) -> Any:
        xc, inv = _centered(xp, x, _batch_axes(x.ndim), epsilon)
        return xc * (inv * _per_channel(xp, scale, x.ndim)) + _per_channel(xp, bias, x.ndim)

    return batch_norm_train


def _layer_norm(xp: Any) -> Forward:
    def layer_norm(x: Any, scale: Any, bias: Any, axis: int = -1, epsilon: float = 1e-5
                   ) -> Any:
        xc, inv = _centered(xp, x, layer_axes(tuple(x.shape), axis), epsilon)
        return (xc * inv) * scale + bias

    return layer_norm


def _standardize(xp: Any) -> Forward:
    def standardize(x: Any, axis: Any = None, epsilon: float = 1e-5) -> Any:
        xc, inv = _centered(xp, x, axis, epsilon)
        return xc * inv

    return standardize


def _inv_std(xp: Any) -> Forward:
    def inv_std(x: Any, axis: Any = None, epsilon: float = 1e-5) -> Any:
        return _centered(xp, x, axis, epsilon)[1]

    return inv_std


def dropout_mask(seed: int, p: float, shape: tuple[int, ...]) -> np.ndarray:
    """The kept elements scaled by 1/(1-p), zeros elsewhere: a function of ``seed``, ``p``
    and ``shape`` alone (NumPy's PCG64 on the host, whatever the backend)."""
    if p >= 1.0:
        return np.zeros(shape)
    u = np.random.Generator(np.random.PCG64(seed)).random(shape)
    return (u >= p) * (1.0 / (1.0 - p))


def _dropout(xp: Any) -> Forward:
    def dropout(x: Any, p: float = 0.5, seed: int = 0, training: bool = False) -> Any:
        if not training or p == 0.0:
            return x
        mask = xp.asarray(dropout_mask(seed, p, tuple(x.shape)))
        return x * (mask if mask.dtype == x.dtype else xp.astype(mask, x.dtype))

    return dropout


def _batch_axes(ndim: int) -> tuple[int, ...]:
    return (0, *range(2, ndim))


# --- VJPs, in registry ops --------------------------------------------------------------------

def standardize_dx(b: Any, G: Any, x: Any, axis: Any, epsilon: float) -> Any:
    """d/dx of <G, standardize(x)>: inv * (G - mean(G) - xhat * mean(G * xhat))."""
    at = {"axis": axis, "epsilon": epsilon}
    xhat, inv = b.op("standardize", x, **at), b.op("inv_std", x, **at)
    m1 = b.op("mean", G, axis=axis, keepdims=True)
    m2 = b.op("mean", b.op("mul", G, xhat), axis=axis, keepdims=True)
    return b.op("mul", inv, b.op("sub", b.op("sub", G, m1), b.op("mul", xhat, m2)))


def _count(b: Any, x: Any, axis: Any) -> int:
    shape = b.shape(x)
    return size_of([shape[a] for a in S.normalize_axes(axis, len(shape))])


def _inv_std_dx(b: Any, G: Any, o: Any, x: Any, axis: Any = None, epsilon: float = 1e-5
                ) -> Any:
    # d inv / dx = -inv^2 * xhat / M (the variance's derivative; the mean's cancels).
    xhat = b.op("standardize", x, axis=axis, epsilon=epsilon)
    scaled = b.op("mul", G, b.op("mul", b.op("square", o), -1.0 / _count(b, x, axis)))
    return b.op("mul", scaled, xhat)


def _bn_train_vjps() -> tuple[Any, Any, Any]:
    def dx(b: Any, g: Any, o: Any, x: Any, s: Any, c: Any, epsilon: float = 1e-5) -> Any:
        nd = len(b.shape(x))
        G = b.op("mul", g, b.op("reshape", s, shape=(-1,) + (1,) * (nd - 2)))
        return standardize_dx(b, G, x, _batch_axes(nd), epsilon)

    def ds(b: Any, g: Any, o: Any, x: Any, s: Any, c: Any, epsilon: float = 1e-5) -> Any:
        axes = _batch_axes(len(b.shape(x)))
        xhat = b.op("standardize", x, axis=axes, epsilon=epsilon)
        return b.op("sum", b.op("mul", g, xhat), axis=axes)

    def dc(b: Any, g: Any, o: Any, x: Any, s: Any, c: Any, epsilon: float = 1e-5) -> Any:
        return b.op("sum", g, axis=_batch_axes(len(b.shape(x))))

    return dx, ds, dc


def _layer_norm_vjps() -> tuple[Any, Any, Any]:
    def dx(b: Any, g: Any, o: Any, x: Any, s: Any, c: Any, axis: int = -1,
           epsilon: float = 1e-5) -> Any:
        return standardize_dx(b, b.op("mul", g, s), x, layer_axes(b.shape(x), axis), epsilon)

    def ds(b: Any, g: Any, o: Any, x: Any, s: Any, c: Any, axis: int = -1,
           epsilon: float = 1e-5) -> Any:
        xhat = b.op("standardize", x, axis=layer_axes(b.shape(x), axis), epsilon=epsilon)
        return b.op("mul", g, xhat)  # the engine sums the leading axes down to scale's shape

    return dx, ds, lambda b, g, o, x, s, c, axis=-1, epsilon=1e-5: g


def _bn_vjps() -> tuple[Any, ...]:
    """batch_norm(x, scale, bias, mean, var) = (x - mean) * k + bias, k = scale * inv."""
    def parts(b: Any, x: Any, s: Any, v: Any, epsilon: float) -> tuple[Any, Any, Any]:
        nd = len(b.shape(x))
        inv = b.op("reciprocal", b.op("sqrt", b.op("add", v, epsilon)))
        return inv, _batch_axes(nd), (-1,) + (1,) * (nd - 2)

    def dx(b: Any, g: Any, o: Any, x: Any, s: Any, c: Any, m: Any, v: Any,
           epsilon: float = 1e-5) -> Any:
        inv, _, per = parts(b, x, s, v, epsilon)
        return b.op("mul", g, b.op("reshape", b.op("mul", s, inv), shape=per))

    def centered(b: Any, g: Any, x: Any, m: Any, per: Any, axes: Any) -> Any:
        return b.op("sum", b.op("mul", g, b.op("sub", x, b.op("reshape", m, shape=per))),
                    axis=axes)

    def ds(b: Any, g: Any, o: Any, x: Any, s: Any, c: Any, m: Any, v: Any,
           epsilon: float = 1e-5) -> Any:
        inv, axes, per = parts(b, x, s, v, epsilon)
        return b.op("mul", centered(b, g, x, m, per, axes), inv)

    def dc(b: Any, g: Any, o: Any, x: Any, s: Any, c: Any, m: Any, v: Any,
           epsilon: float = 1e-5) -> Any:
        return b.op("sum", g, axis=_batch_axes(len(b.shape(x))))

    def dm(b: Any, g: Any, o: Any, x: Any, s: Any, c: Any, m: Any, v: Any,
           epsilon: float = 1e-5) -> Any:
        inv, axes, _ = parts(b, x, s, v, epsilon)
        return b.op("neg", b.op("mul", b.op("sum", g, axis=axes), b.op("mul", s, inv)))

    def dv(b: Any, g: Any, o: Any, x: Any, s: Any, c: Any, m: Any, v: Any,
           epsilon: float = 1e-5) -> Any:
        inv, axes, per = parts(b, x, s, v, epsilon)
        k = b.op("mul", b.op("mul", s, b.op("pow", inv, 3.0)), -0.5)
        return b.op("mul", centered(b, g, x, m, per, axes), k)

    return dx, ds, dc, dm, dv


def _dropout_dx(b: Any, g: Any, o: Any, x: Any, p: float = 0.5, seed: int = 0,
                training: bool = False) -> Any:
    if not training or p == 0.0:
        return g
    return b.op("dropout", g, p=p, seed=seed, training=True)  # the same mask


def _dropout_scratch(shapes: Any, out: Shape, attrs: dict[str, Any]) -> int:
    # The host's uniform draws and the mask, float64 each (two elements' worth in float32).
    return 4 * size_of(out) if attrs.get("training") else 0


def _stat(name: str, forward: Any, dx: Any, keep: bool, doc: str) -> OpDef:
    return OpDef(name, 1, forward, (dx,),
                 lambda x, axis=None, epsilon=1e-5: _stats_shape(x, axis, epsilon, keep=keep),
                 doc, attrs=(AXIS, EPSILON), internal=True, category="internal")


OPS: tuple[OpDef, ...] = (
    OpDef("batch_norm", 5, _batch_norm, _bn_vjps(), _batch_norm_shape,
          "(x - mean)/sqrt(var + eps)*scale + bias per channel (axis 1), inference form; "
          "dx = g*scale/sqrt(var + eps), every argument differentiable",
          attrs=(EPSILON,), arg_names=("x", "scale", "bias", "mean", "var"), category="nn",
          example="batch_norm(x, gamma, beta, mu, sigma2, epsilon=1e-3)",
          batching="batch_norm"),
    OpDef("batch_norm_train", 3, _batch_norm_train, _bn_train_vjps(),
          _batch_norm_train_shape,
          "x normalized by its batch statistics per channel (over N and the spatial axes; "
          "biased variance), then *scale + bias; dx = inv*(G - mean(G) - xhat*mean(G*xhat)), "
          "G = g*scale, summing to zero over the batch",
          attrs=(EPSILON,), arg_names=("x", "scale", "bias"), category="nn",
          example="batch_norm_train(x, gamma, beta)",
          batching="batch_norm_train"),
    OpDef("layer_norm", 3, _layer_norm, _layer_norm_vjps(), _layer_norm_shape,
          "x normalized over axis and every later axis (biased variance), then *scale + "
          "bias (shaped as those axes); dx = inv*(G - mean(G) - xhat*mean(G*xhat)), G = "
          "g*scale", attrs=(NORM_AXIS, EPSILON), arg_names=("x", "scale", "bias"),
          category="nn", example="layer_norm(x, gamma, beta, axis=-1)",
          batching="layer_norm"),
    OpDef("dropout", 1, _dropout, (_dropout_dx,), _dropout_shape,
          "training: x*mask/(1-p), the mask a function of seed and shape alone (the same "
          "on every call); dx = g*mask/(1-p). Otherwise the identity",
          attrs=(Attr("p", "float", 0.5, "the probability of dropping an element"),
                 Attr("seed", "int", 0, "the mask's seed (NumPy PCG64)"),
                 Attr("training", "bool", False, "drop (true) or pass x through (false)")),
          category="nn", scratch=_dropout_scratch,
          example="dropout(x, p=0.2, seed=7, training=True)",
          batching="dropout"),
    _stat("standardize", _standardize,
          lambda b, G, o, x, axis=None, epsilon=1e-5: standardize_dx(b, G, x, axis, epsilon),
          False, "(x - mean)/sqrt(var + eps) over axis; dx = inv*(G - mean(G) - "
          "xhat*mean(G*xhat))"),
    _stat("inv_std", _inv_std, _inv_std_dx, True,
          "1/sqrt(var + eps) over axis, kept dims; dx = -G*inv^2*xhat/M"),
)
