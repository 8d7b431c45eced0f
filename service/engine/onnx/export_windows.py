"""ONNX lowerings of the window ops (convolution, pooling and their internal gradient
ops), the normalizations and dropout.

A window op is written as ``ops/windows.py`` computes it: one strided ``Slice`` per kernel
tap (the input positions it reads, then ``Pad`` to the output's positions), so padding is
never read and the same code serves float32 and float64 (onnxruntime has no float64
``Conv``, ``ConvTranspose`` or ``AveragePool``). A convolution is the taps stacked (im2col)
and one ``Einsum`` with the weight; the adjoint of a tap (col2im) writes its values back to
the strided positions it read, by interleaving zeros (``Pad`` of a new axis and a
``Reshape``). Max-pool ties split evenly, as the engine's reductions do.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from service.engine import shapes as S
from service.engine.onnx.export_emit import Emitter
from service.engine.onnx.export_ops import TABLE, Shape, lowers
from service.engine.ops import norms
from service.engine.ops import windows as W

Tap = tuple[int, tuple[slice, slice], tuple[slice, slice]]


def _conv_window(x: Shape, w: Shape, at: dict[str, Any]) -> W.Window:
    return W.conv_window(x, w, at["stride"], at["padding"], at["dilation"], at["groups"])


def _pool_window(x: Shape, at: dict[str, Any]) -> W.Window:
    return W.pool_window(x, at["kernel_size"], at["stride"], at["padding"])


def tap_view(em: Emitter, x: str, win: W.Window, tap: Tap, fill: float = 0.0) -> str:
    """(N, C, Ho, Wo): what tap ``tap`` reads of ``x`` at each output position, ``fill``
    where it reads padding."""
    _, (po, qo), (ri, ci) = tap
    part = em.node("Slice", [x, em.ints([ri.start, ci.start]), em.ints([ri.stop, ci.stop]),
                             em.ints([2, 3]), em.ints([ri.step, ci.step])])
    ho, wo = win.out
    pads = [0, 0, po.start, qo.start, 0, 0, ho - po.stop, wo - qo.stop]
    if not any(pads):
        return part
    return em.node("Pad", [part, em.ints(pads), em.const(fill)])


def _interleave(em: Emitter, v: str, shape: list[int], axis: int, step: int) -> str:
    """``v`` with ``step - 1`` zeros after each entry along ``axis`` (the last entry's
    trailing zeros dropped); ``shape`` is v's and is updated."""
    n = shape[axis]
    if step == 1 or n == 0:
        return v
    u = em.node("Unsqueeze", [v, em.ints([axis + 1])])
    pads = [0] * (2 * (len(shape) + 1))
    pads[len(shape) + 1 + axis + 1] = step - 1
    u = em.node("Pad", [u, em.ints(pads), em.const(0.0)])
    merged = [*shape[:axis], n * step, *shape[axis + 1:]]
    u = em.reshape(u, merged)
    keep = (n - 1) * step + 1
    u = em.node("Slice", [u, em.ints([0]), em.ints([keep]), em.ints([axis])])
    shape[axis] = keep
    return u


def tap_back(em: Emitter, c: str, win: W.Window, tap: Tap, nc: tuple[int, int]) -> str:
    """(N, C, H, W): the adjoint of :func:`tap_view` (each output position's value put back
    where the tap read it)."""
    _, (po, qo), (ri, ci) = tap
    part = em.node("Slice", [c, em.ints([po.start, qo.start]), em.ints([po.stop, qo.stop]),
                             em.ints([2, 3])])
    shape = [*nc, po.stop - po.start, qo.stop - qo.start]
    part = _interleave(em, part, shape, 2, ri.step)
    part = _interleave(em, part, shape, 3, ci.step)
    h, w = win.size
    pads = [0, 0, ri.start, ci.start, 0, 0, h - ri.start - shape[2], w - ci.start - shape[3]]
    return em.node("Pad", [part, em.ints(pads), em.const(0.0)]) if any(pads) else part


def _total(em: Emitter, parts: list[str], zeros: Shape) -> str:
    if not parts:
        return em.const(np.zeros(zeros))
    return parts[0] if len(parts) == 1 else em.node("Sum", parts)


def im2col(em: Emitter, x: str, xs: Shape, win: W.Window) -> str:
    """(N, C, kh*kw, Ho, Wo): every tap's view of x (zeros for taps that read padding
    only), as ``windows.im2col``."""
    cols: list[str | None] = [None] * win.taps
    for tap in W.taps(win):
        cols[tap[0]] = em.node("Unsqueeze", [tap_view(em, x, win, tap), em.ints([2])])
    zero = em.const(np.zeros((xs[0], xs[1], 1, *win.out)))
    filled = [zero if c is None else c for c in cols]
    return filled[0] if len(filled) == 1 else em.node("Concat", filled, axis=2)


def col2im(em: Emitter, cols: str, xs: Shape, win: W.Window) -> str:
    """The adjoint of :func:`im2col`: (N, C, kh*kw, Ho, Wo) back to (N, C, H, W)."""
    parts = []
    for tap in W.taps(win):
        t = tap[0]
        c = em.node("Squeeze", [em.node("Slice", [cols, em.ints([t]), em.ints([t + 1]),
                                                   em.ints([2])]), em.ints([2])])
        parts.append(tap_back(em, c, win, tap, (xs[0], xs[1])))
    return _total(em, parts, xs)


def _empty(shapes: list[Shape]) -> bool:
    """An argument without elements: onnxruntime's Einsum (and Conv) crash the process on
    a sum over an empty axis, so such a product is written as the zeros it is."""
    return any(math.prod(sh) == 0 for sh in shapes)


def _grouped_w(em: Emitter, w: str, ws: Shape, groups: int) -> str:
    """OIHW weight as (G, O/G, C/G, kh*kw)."""
    return em.reshape(w, (groups, ws[0] // groups, ws[1], ws[2] * ws[3]))


@lowers("conv2d")
def _conv2d(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    xs, ws = s[0], s[1]
    win, g = _conv_window(xs, ws, at), at["groups"]
    if _empty(s[:2]):  # no channel to sum over (an empty result is a constant already)
        out = em.const(np.zeros(o))
    else:
        cols = em.reshape(im2col(em, a[0], xs, win), (xs[0], g, ws[1], win.taps, *win.out))
        out = em.node("Einsum", [cols, _grouped_w(em, a[1], ws, g)],
                      equation="ngctpq,gkct->ngkpq")
        out = em.reshape(out, o)
    if len(a) == 3:
        out = em.node("Add", [out, em.reshape(a[2], (1, ws[0], 1, 1))])
    return out


@lowers("conv2d_input_grad")
def _conv2d_input_grad(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]
                       ) -> str:
    gs, ws, xs = s[0], s[1], tuple(at["shape"])
    if _empty(s):
        return em.const(np.zeros(o))
    win, g = _conv_window(xs, ws, at), at["groups"]
    grads = em.reshape(a[0], (gs[0], g, ws[0] // g, *gs[2:]))
    cols = em.node("Einsum", [grads, _grouped_w(em, a[1], ws, g)],
                   equation="ngkpq,gkct->ngctpq")
    return col2im(em, em.reshape(cols, (xs[0], xs[1], win.taps, *win.out)), xs, win)


@lowers("conv2d_weight_grad")
def _conv2d_weight_grad(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]
                        ) -> str:
    xs, gs, ws = s[0], s[1], tuple(at["shape"])
    if _empty(s):  # a sum over no example or no position
        return em.const(np.zeros(o))
    win, g = _conv_window(xs, ws, at), at["groups"]
    cols = em.reshape(im2col(em, a[0], xs, win), (xs[0], g, ws[1], win.taps, *win.out))
    grads = em.reshape(a[1], (gs[0], g, ws[0] // g, *gs[2:]))
    dw = em.node("Einsum", [cols, grads], equation="ngctpq,ngkpq->gkct")
    return em.reshape(dw, ws)


def _max_parts(em: Emitter, x: str, win: W.Window) -> tuple[str, list[str], str]:
    """The window maxima, each tap's 0/1 hits on them, and 1 / (hits per window)."""
    views = [tap_view(em, x, win, tap, -np.inf) for tap in W.taps(win)]
    top = views[0] if len(views) == 1 else em.node("Max", views)
    hits = []
    for tap, view in zip(W.taps(win), views):
        valid = np.zeros(win.out)
        valid[tap[1]] = 1.0
        hits.append(em.node("Mul", [em.cast(em.node("Equal", [view, top])), em.const(valid)]))
    count = hits[0] if len(hits) == 1 else em.node("Sum", hits)
    share = em.node("Div", [em.const(1.0), em.node("Max", [count, em.const(1.0)])])
    return top, hits, share


@lowers("max_pool2d")
def _max_pool2d(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    win = _pool_window(s[0], at)
    views = [tap_view(em, a[0], win, tap, -np.inf) for tap in W.taps(win)]
    return views[0] if len(views) == 1 else em.node("Max", views)


@lowers("max_pool2d_grad")
def _max_pool2d_grad(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]
                     ) -> str:
    win = _pool_window(s[0], at)
    _, hits, share = _max_parts(em, a[0], win)
    g = em.node("Mul", [a[1], share])
    parts = [tap_back(em, em.node("Mul", [hit, g]), win, tap, s[0][:2])
             for tap, hit in zip(W.taps(win), hits)]
    return _total(em, parts, s[0])


@lowers("max_pool2d_gather")
def _max_pool2d_gather(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]
                       ) -> str:
    win = _pool_window(s[0], at)
    _, hits, share = _max_parts(em, a[0], win)
    parts = [em.node("Mul", [hit, tap_view(em, a[1], win, tap)])
             for tap, hit in zip(W.taps(win), hits)]
    return em.node("Mul", [_total(em, parts, o), share])


def _divisor(em: Emitter, win: W.Window, count_include_pad: bool) -> str:
    if count_include_pad:
        return em.const(float(win.taps))
    return em.const(W.window_counts(np, win, np.float64))


@lowers("avg_pool2d")
def _avg_pool2d(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    win = _pool_window(s[0], at)
    total = _total(em, [tap_view(em, a[0], win, tap) for tap in W.taps(win)], o)
    return em.node("Div", [total, _divisor(em, win, at["count_include_pad"])])


@lowers("avg_pool2d_grad")
def _avg_pool2d_grad(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]
                     ) -> str:
    xs = tuple(at["shape"])
    win = _pool_window(xs, at)
    g = em.node("Div", [a[0], _divisor(em, win, at["count_include_pad"])])
    return _total(em, [tap_back(em, g, win, tap, xs[:2]) for tap in W.taps(win)], xs)


@lowers("global_avg_pool2d")
def _global_avg_pool2d(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]
                       ) -> str:
    return em.reduce("ReduceMean", a[0], [2, 3])


# --- normalization and dropout ------------------------------------------------------------

def _per_channel(em: Emitter, p: str, ndim: int) -> str:
    return em.reshape(p, (1, -1) + (1,) * (ndim - 2))


def _centered(em: Emitter, x: str, axes: Any, epsilon: float) -> tuple[str, str]:
    """x - mean and 1 / sqrt(var + epsilon) over ``axes`` (kept), as ``norms._centered``."""
    xc = em.node("Sub", [x, em.reduce("ReduceMean", x, axes)])
    var = em.reduce("ReduceMean", em.node("Mul", [xc, xc]), axes)
    inv = em.node("Div", [em.const(1.0), em.node("Sqrt", [em.node("Add", [var,
                                                                          em.const(epsilon)])])])
    return xc, inv


def _stat_axes(s: Shape, axis: Any) -> list[int]:
    return list(S.normalize_axes(axis, len(s)))


@lowers("batch_norm")
def _batch_norm(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    x, scale, bias, mean, var = a
    nd = len(s[0])
    k = em.node("Div", [scale, em.node("Sqrt", [em.node("Add", [var, em.const(at["epsilon"])])])])
    shift = em.node("Sub", [bias, em.node("Mul", [mean, k])])
    return em.node("Add", [em.node("Mul", [x, _per_channel(em, k, nd)]),
                           _per_channel(em, shift, nd)])


@lowers("batch_norm_train")
def _batch_norm_train(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]
                      ) -> str:
    nd = len(s[0])
    xc, inv = _centered(em, a[0], [0, *range(2, nd)], at["epsilon"])
    scaled = em.node("Mul", [xc, em.node("Mul", [inv, _per_channel(em, a[1], nd)])])
    return em.node("Add", [scaled, _per_channel(em, a[2], nd)])


@lowers("layer_norm")
def _layer_norm(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    xc, inv = _centered(em, a[0], list(norms.layer_axes(s[0], at["axis"])), at["epsilon"])
    return em.node("Add", [em.node("Mul", [em.node("Mul", [xc, inv]), a[1]]), a[2]])


@lowers("standardize")
def _standardize(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]
                 ) -> str:
    xc, inv = _centered(em, a[0], _stat_axes(s[0], at.get("axis")), at["epsilon"])
    return em.node("Mul", [xc, inv])


@lowers("inv_std")
def _inv_std(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    return _centered(em, a[0], _stat_axes(s[0], at.get("axis")), at["epsilon"])[1]


@lowers("dropout")
def _dropout(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    if not at["training"] or at["p"] == 0.0:
        return em.node("Identity", a)
    return em.node("Mul", [a[0], em.const(norms.dropout_mask(at["seed"], at["p"], s[0]))])


__all__ = ["TABLE"]
