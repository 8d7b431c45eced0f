"""Sliding windows over the two spatial axes of NCHW tensors, in array-API calls only.

A window op (convolution, pooling) reads, for kernel tap ``(i, j)`` and output position
``(p, q)``, the input at ``(p*sh + i*dh - top, q*sw + j*dw - left)``. For one tap the
output positions whose input lies inside the unpadded tensor form one strided block, and
the input positions they read another: one pair of slices per tap (:func:`taps`). So the
padding is never materialized, and every loop here runs over the ``kh*kw`` taps alone,
each step a vectorized slice over batch, channels and pixels (no loop over pixels or
channels; slices and ``__setitem__`` are the standard's, so CuPy and array-api-strict run
the same code).

On NumPy an unpadded max pool's gradient takes a faster path with the same result
(``_max_route_numpy``): each tap compared with the maxima once, the masks kept for the
routing, and non-overlapping windows written in place (``out=``, not in the standard).
The other backends, and padded pools, keep the tap loops. (A NumPy im2col copying one
strided view of all taps was measured slower than the slice per tap: a copy of a 6-d
view with short rows costs more than nine 4-d ones.)
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, NamedTuple

import numpy as np

from service.engine import shapes as S
from service.engine.registry import Shape, ShapeError

Slices = tuple[slice, slice]


class Window(NamedTuple):
    """Where a window op's taps read: everything but the tensors, as plain ints."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    dilation: tuple[int, int]
    pads: tuple[int, int, int, int]  # top, left, bottom, right
    size: tuple[int, int]  # the input's (H, W)

    @property
    def out(self) -> tuple[int, int]:
        """The output's (Ho, Wo)."""
        return tuple(out_size(self.size[a], self.kernel[a], self.stride[a], self.dilation[a],
                              self.pads[a] + self.pads[a + 2]) for a in (0, 1))  # type: ignore

    @property
    def taps(self) -> int:
        return self.kernel[0] * self.kernel[1]


def out_size(size: int, kernel: int, stride: int, dilation: int, padding: int) -> int:
    """Output length along one axis (``padding``: both sides together); < 1 when the
    dilated kernel does not fit."""
    return (size + padding - dilation * (kernel - 1) - 1) // stride + 1


def _axis_taps(size: int, kernel: int, stride: int, dilation: int, before: int, out: int
               ) -> list[tuple[slice, slice] | None]:
    """Per tap along one axis: (output slice, input slice), None where it reads padding
    only."""
    found: list[tuple[slice, slice] | None] = []
    for i in range(kernel):
        offset = i * dilation - before  # the input index output 0 reads
        first = max(0, -(offset // stride))  # ceil(-offset / stride)
        last = min(out - 1, (size - 1 - offset) // stride)
        if last < first:
            found.append(None)
            continue
        start = offset + first * stride
        found.append((slice(first, last + 1), slice(start, start + (last - first) * stride + 1,
                                                     stride)))
    return found


# --- the attrs of a window op, checked (a ShapeError names the attr) -------------------

def _given(value: Any, name: str) -> None:
    if value is None:
        raise ShapeError(f"attr '{name}' must be an integer or a list of integers, not null",
                         attr=name)


def pair(value: Any, name: str, low: int) -> tuple[int, int]:
    """An int or [h, w] attr as (h, w), each at least ``low``."""
    _given(value, name)
    v = (value, value) if isinstance(value, int) else tuple(value)
    if len(v) != 2:
        raise ShapeError(f"attr '{name}' takes an integer or a pair [h, w], got {list(v)}",
                         attr=name)
    if min(v) < low:
        raise ShapeError(f"attr '{name}' must be at least {low}, got {value!r}", attr=name)
    return v  # type: ignore[return-value]


def pads(value: Any, name: str = "padding") -> tuple[int, int, int, int]:
    """The padding attr as (top, left, bottom, right)."""
    _given(value, name)
    v = (value,) * 4 if isinstance(value, int) else tuple(value)
    if len(v) == 2:
        v = v * 2
    if len(v) != 4:
        raise ShapeError(f"attr '{name}' takes an integer, [h, w] or [top, left, bottom, "
                         f"right], got {list(v)}", attr=name)
    if min(v) < 0:
        raise ShapeError(f"attr '{name}' must not be negative, got {value!r}", attr=name)
    return v  # type: ignore[return-value]


def nchw(x: Shape, what: str = "input") -> None:
    if len(x) != 4:
        raise ShapeError(f"{what} must be 4-d (N, C, H, W), got {S.fmt(x)}")


def _fits(win: Window, attr: str) -> Window:
    (kh, kw), (dh, dw) = win.kernel, win.dilation
    ho, wo = win.out
    if ho < 1 or wo < 1:
        p = win.pads
        raise ShapeError(f"the window {(kh - 1) * dh + 1}x{(kw - 1) * dw + 1} (kernel "
                         f"{kh}x{kw}, dilation {dh}x{dw}) is larger than the padded input "
                         f"{win.size[0] + p[0] + p[2]}x{win.size[1] + p[1] + p[3]} (attr "
                         f"'{attr}')", attr=attr)
    return win


def conv_window(x: Shape, w: Shape, stride: Any = 1, padding: Any = 0, dilation: Any = 1,
                groups: int = 1) -> Window:
    """conv2d's window for input ``x`` and weight ``w``; ShapeError naming what is wrong."""
    nchw(x)
    if len(w) != 4:
        raise ShapeError(f"weight must be 4-d (O, C/groups, kh, kw), got {S.fmt(w)}")
    if groups < 1:
        raise ShapeError(f"attr 'groups' must be at least 1, got {groups}", attr="groups")
    if x[1] % groups or w[0] % groups:
        raise ShapeError(f"attr 'groups' = {groups} must divide the input channels ({x[1]}) "
                         f"and the output channels ({w[0]})", attr="groups")
    if w[1] * groups != x[1]:
        raise ShapeError(f"weight {S.fmt(w)} takes {w[1]} input channels per group, the "
                         f"input {S.fmt(x)} has {x[1]} in {groups} group(s)")
    if w[2] < 1 or w[3] < 1:
        raise ShapeError(f"the kernel of weight {S.fmt(w)} must be at least 1x1")
    win = Window((w[2], w[3]), pair(stride, "stride", 1), pair(dilation, "dilation", 1),
                   pads(padding), (x[2], x[3]))
    return _fits(win, "padding")


def pool_window(x: Shape, kernel_size: Any = None, stride: Any = None, padding: Any = 0
                ) -> Window:
    """A pool's window for input ``x`` (stride defaults to the kernel)."""
    nchw(x)
    if kernel_size is None:
        raise ShapeError("attr 'kernel_size' is required", attr="kernel_size")
    kernel = pair(kernel_size, "kernel_size", 1)
    steps = kernel if stride is None else pair(stride, "stride", 1)
    top, left, bottom, right = p = pads(padding)
    if max(top, bottom) > kernel[0] // 2 or max(left, right) > kernel[1] // 2:
        raise ShapeError(f"attr 'padding' {list(p)} must be at most half the kernel "
                         f"{kernel[0]}x{kernel[1]} on each side", attr="padding")
    return _fits(Window(kernel, steps, (1, 1), p, (x[2], x[3])), "kernel_size")


@lru_cache(maxsize=256)
def taps(w: Window) -> tuple[tuple[int, Slices, Slices], ...]:
    """Every tap that reads the input: (tap index ``i*kw + j``, output slices, input
    slices), the slices over (H, W)."""
    ho, wo = w.out
    rows = _axis_taps(w.size[0], w.kernel[0], w.stride[0], w.dilation[0], w.pads[0], ho)
    cols = _axis_taps(w.size[1], w.kernel[1], w.stride[1], w.dilation[1], w.pads[1], wo)
    found = []
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            if r is not None and c is not None:
                found.append((i * w.kernel[1] + j, (r[0], c[0]), (r[1], c[1])))
    return tuple(found)


ALL = slice(None)


def im2col(xp: Any, x: Any, w: Window) -> Any:
    """(N, C, kh*kw, Ho, Wo): every tap's view of ``x``, zero where it reads padding."""
    n, c = x.shape[:2]
    cols = xp.zeros((n, c, w.taps, *w.out), dtype=x.dtype)
    for t, (po, qo), (ri, ci) in taps(w):
        cols[ALL, ALL, t, po, qo] = x[ALL, ALL, ri, ci]
    return cols


def col2im(xp: Any, cols: Any, w: Window) -> Any:
    """The transpose of :func:`im2col`: each tap's values added back where they were read."""
    n, c = cols.shape[:2]
    x = xp.zeros((n, c, *w.size), dtype=cols.dtype)
    for t, (po, qo), (ri, ci) in taps(w):
        x[ALL, ALL, ri, ci] += cols[ALL, ALL, t, po, qo]
    return x


def window_sum(xp: Any, x: Any, w: Window) -> Any:
    """(N, C, Ho, Wo): each window's sum (padding counts zero)."""
    out = xp.zeros((*x.shape[:2], *w.out), dtype=x.dtype)
    for _, (po, qo), (ri, ci) in taps(w):
        out[ALL, ALL, po, qo] += x[ALL, ALL, ri, ci]
    return out


def spread(xp: Any, g: Any, w: Window) -> Any:
    """The transpose of :func:`window_sum`: each window's value added to all it covers."""
    x = xp.zeros((*g.shape[:2], *w.size), dtype=g.dtype)
    for _, (po, qo), (ri, ci) in taps(w):
        x[ALL, ALL, ri, ci] += g[ALL, ALL, po, qo]
    return x


def _unpadded(xp: Any, w: Window) -> bool:
    """Whether the NumPy path of a max pool applies (no padding, so every element of a
    window's view is one of the input's)."""
    return xp is np and not any(w.pads)


def window_max(xp: Any, x: Any, w: Window) -> Any:
    """(N, C, Ho, Wo): each window's maximum (padding never wins: -inf)."""
    out = xp.full((*x.shape[:2], *w.out), -xp.inf, dtype=x.dtype)
    for _, (po, qo), (ri, ci) in taps(w):
        out[ALL, ALL, po, qo] = xp.maximum(out[ALL, ALL, po, qo], x[ALL, ALL, ri, ci])
    return out


def max_share(xp: Any, x: Any, w: Window) -> tuple[Any, Any]:
    """Each window's maximum and 1 / (how many of its elements equal it): the share of a
    window's gradient each of its maxima gets (ties split evenly, as the reductions do)."""
    top = window_max(xp, x, w)
    count = xp.zeros(top.shape, dtype=x.dtype)
    for _, (po, qo), (ri, ci) in taps(w):
        count[ALL, ALL, po, qo] += xp.astype(x[ALL, ALL, ri, ci] == top[ALL, ALL, po, qo],
                                             x.dtype)
    # A window always holds an element of x (padding <= half the kernel), so count >= 1
    # except over a zero-size batch or channel axis, where nothing is read.
    return top, 1.0 / xp.maximum(count, 1.0)


def _max_route_numpy(x: np.ndarray, g: np.ndarray, w: Window) -> np.ndarray:
    """:func:`max_route` on NumPy without padding: each tap compared with the maxima once
    (the masks kept for the routing); non-overlapping windows (stride = kernel) write
    their share in place, each element of ``x`` in one window at most."""
    top = window_max(np, x, w)
    found = [(x[ALL, ALL, ri, ci] == top[ALL, ALL, po, qo], (po, qo), (ri, ci))
             for _, (po, qo), (ri, ci) in taps(w)]
    count = np.zeros(top.shape, dtype=g.dtype)
    for hit, (po, qo), _ in found:
        count[ALL, ALL, po, qo] += hit
    g = g * (1.0 / np.maximum(count, 1.0))
    dx = np.zeros(x.shape, dtype=g.dtype)
    tiles = w.stride == w.kernel and w.dilation == (1, 1)
    for hit, (po, qo), (ri, ci) in found:
        if tiles:
            np.multiply(hit, g[ALL, ALL, po, qo], out=dx[ALL, ALL, ri, ci])
        else:
            dx[ALL, ALL, ri, ci] += hit * g[ALL, ALL, po, qo]
    return dx


def max_route(xp: Any, x: Any, g: Any, w: Window) -> Any:
    """x-shaped: each window's ``g`` routed to its maxima (split evenly on ties)."""
    if _unpadded(xp, w):
        return _max_route_numpy(x, g, w)
    top, share = max_share(xp, x, w)
    g = g * share
    dx = xp.zeros(x.shape, dtype=g.dtype)
    for _, (po, qo), (ri, ci) in taps(w):
        xs = x[ALL, ALL, ri, ci]
        hit = xp.astype(xs == top[ALL, ALL, po, qo], g.dtype)
        dx[ALL, ALL, ri, ci] += hit * g[ALL, ALL, po, qo]
    return dx


def max_gather(xp: Any, x: Any, h: Any, w: Window) -> Any:
    """The transpose of :func:`max_route` in ``h`` (x-shaped): per window, the mean of ``h``
    over its maxima."""
    top, share = max_share(xp, x, w)
    out = xp.zeros(top.shape, dtype=h.dtype)
    for _, (po, qo), (ri, ci) in taps(w):
        hit = xp.astype(x[ALL, ALL, ri, ci] == top[ALL, ALL, po, qo], h.dtype)
        out[ALL, ALL, po, qo] += hit * h[ALL, ALL, ri, ci]
    return out * share


def window_counts(xp: Any, w: Window, dtype: Any) -> Any:
    """(Ho, Wo): how many elements of the unpadded input each window covers."""
    ho, wo = w.out
    per_axis = []
    for axis, out in ((0, ho), (1, wo)):
        counts = xp.zeros((out,), dtype=dtype)
        for tap in _axis_taps(w.size[axis], w.kernel[axis], w.stride[axis],
                              w.dilation[axis], w.pads[axis], out):
            if tap is not None:
                counts[tap[0]] += 1.0
        per_axis.append(counts)
    return xp.reshape(per_axis[0], (ho, 1)) * xp.reshape(per_axis[1], (1, wo))
