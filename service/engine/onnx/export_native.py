"""float32 window ops as onnxruntime's own kernels: ``Conv``, ``ConvTranspose``,
``MaxPool``, ``AveragePool``.

onnxruntime runs these in float32 only, so a float64 export keeps ``export_windows``'
per-tap form; in float32 the native operators compute the same sums (to float32 rounding)
many times faster. Each lowering here wraps the per-tap one and falls back to it where the
native operator cannot say the op (a transposed convolution whose ``output_padding`` would
reach its stride). The max pool's *gradient* stays per tap everywhere: its ties are shared
evenly, which no ONNX operator does.

conv2d's weight gradient is a convolution too: of the input, batch and channels swapped,
with the output gradient as its kernel, stride and dilation exchanged (each group apart,
through ``group``), cropped to the kernel's size.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from service.engine.onnx import export_windows  # noqa: F401 - its lowerings, wrapped here
from service.engine.onnx.export_emit import Emitter
from service.engine.onnx.export_ops import TABLE, Lowering, Shape
from service.engine.ops import windows as W


def _conv_attrs(win: W.Window, groups: int) -> dict[str, Any]:
    top, left, bottom, right = win.pads
    return {"strides": list(win.stride), "dilations": list(win.dilation),
            "pads": [top, left, bottom, right], "group": groups}


def _output_padding(win: W.Window, size: tuple[int, int]) -> list[int] | None:
    """ConvTranspose's output_padding that makes its result ``size``; None where ONNX's
    bound (below the stride or the dilation) does not allow it."""
    out = []
    for a in (0, 1):
        made = (win.stride[a] * (win.out[a] - 1) + (win.kernel[a] - 1) * win.dilation[a] + 1
                - win.pads[a] - win.pads[a + 2])
        extra = size[a] - made
        if not 0 <= extra < max(win.stride[a], win.dilation[a]):
            return None
        out.append(extra)
    return out


def _native(taps: Lowering, native: Lowering) -> Lowering:
    def lower(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
        if em.dtype == "float32" and all(math.prod(sh) for sh in s):  # (empty: per tap)
            made = native(em, a, s, o, at)
            if made:
                return made
        return taps(em, a, s, o, at)

    return lower


def _conv2d(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    win = W.conv_window(s[0], s[1], at["stride"], at["padding"], at["dilation"], at["groups"])
    return em.node("Conv", a, kernel_shape=list(win.kernel), **_conv_attrs(win, at["groups"]))


def _conv2d_input_grad(em: Emitter, a: list[str], s: list[Shape], o: Shape,
                       at: dict[str, Any]) -> str:
    xs = tuple(at["shape"])
    win = W.conv_window(xs, s[1], at["stride"], at["padding"], at["dilation"], at["groups"])
    extra = _output_padding(win, (xs[2], xs[3]))
    if extra is None:
        return ""
    return em.node("ConvTranspose", a, kernel_shape=list(win.kernel), output_padding=extra,
                   **_conv_attrs(win, at["groups"]))


def _conv2d_weight_grad(em: Emitter, a: list[str], s: list[Shape], o: Shape,
                        at: dict[str, Any]) -> str:
    (n, c, h, w), gs, ws = s[0], s[1], tuple(at["shape"])
    g = at["groups"]
    win = W.conv_window(s[0], ws, at["stride"], at["padding"], at["dilation"], g)
    x = em.node("Transpose", [em.reshape(a[0], (n, g, c // g, h, w))], perm=[2, 1, 0, 3, 4])
    x = em.reshape(x, (c // g, g * n, h, w))
    k = em.node("Transpose", [em.reshape(a[1], (n, g, ws[0] // g, *gs[2:]))],
                perm=[1, 2, 0, 3, 4])
    k = em.reshape(k, (ws[0], n, *gs[2:]))
    top, left, bottom, right = win.pads
    out = em.node("Conv", [x, k], strides=list(win.dilation), dilations=list(win.stride),
                  pads=[top, left, bottom, right], group=g, kernel_shape=list(gs[2:]))
    out = em.node("Slice", [out, em.ints([0, 0]), em.ints(list(win.kernel)), em.ints([2, 3])])
    return em.node("Transpose", [out], perm=[1, 0, 2, 3])


def _pool_window(x: Shape, at: dict[str, Any]) -> W.Window:
    return W.pool_window(x, at["kernel_size"], at["stride"], at["padding"])


def _pool_attrs(win: W.Window) -> dict[str, Any]:
    top, left, bottom, right = win.pads
    return {"kernel_shape": list(win.kernel), "strides": list(win.stride),
            "pads": [top, left, bottom, right]}


def _max_pool2d(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    return em.node("MaxPool", a, **_pool_attrs(_pool_window(s[0], at)))


def _avg_pool2d(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    return em.node("AveragePool", a, count_include_pad=int(at["count_include_pad"]),
                   **_pool_attrs(_pool_window(s[0], at)))


def _avg_pool2d_grad(em: Emitter, a: list[str], s: list[Shape], o: Shape,
                     at: dict[str, Any]) -> str:
    """Each window's share spread over it: a transposed convolution of g / divisor with a
    kernel of ones, channel by channel."""
    xs = tuple(at["shape"])
    win = _pool_window(xs, at)
    extra = _output_padding(win, (xs[2], xs[3]))
    if extra is None:
        return ""
    divisor = (em.const(float(win.taps)) if at["count_include_pad"]
               else em.const(W.window_counts(np, win, np.float32)))
    g = em.reshape(em.node("Div", [a[0], divisor]), (xs[0] * xs[1], 1, *win.out))
    ones = em.const(np.ones((1, 1, *win.kernel)))
    spread = em.node("ConvTranspose", [g, ones], output_padding=extra, **_pool_attrs(win))
    return em.reshape(spread, xs)


for _name, _fn in (("conv2d", _conv2d), ("conv2d_input_grad", _conv2d_input_grad),
                   ("conv2d_weight_grad", _conv2d_weight_grad), ("max_pool2d", _max_pool2d),
                   ("avg_pool2d", _avg_pool2d), ("avg_pool2d_grad", _avg_pool2d_grad)):
    TABLE[_name] = _native(TABLE[_name], _fn)

__all__ = ["TABLE"]
