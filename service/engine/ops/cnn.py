"""The ops of convolutional nets (NCHW tensors, OIHW weights, as PyTorch): ``conv2d``,
``max_pool2d``, ``avg_pool2d``, ``global_avg_pool2d``, with the normalization ops and
``dropout`` from ``norms``; and the internal ops their gradients are made of.

The gradients are window ops again, so every order is exact: conv2d's input gradient is a
transposed convolution of ``g`` with the weight (``conv2d_input_grad``), its weight
gradient a convolution of the input with ``g`` (``conv2d_weight_grad``), and each of the
three ops' VJPs are the other two. A max pool's gradient routes ``g`` to each window's
maxima (``max_pool2d_grad``, whose transpose in ``g`` is ``max_pool2d_gather``); an average
pool's spreads it evenly (``avg_pool2d_grad``, whose transpose is ``avg_pool2d``). The
windows themselves are ``windows``' tap loops (no loop over pixels or channels).
"""

from __future__ import annotations

from typing import Any

from service.engine import shapes as S
from service.engine.ops import norms
from service.engine.ops import windows as W
from service.engine.registry import Attr, Forward, OpDef, Shape, ShapeError, size_of

STRIDE = Attr("stride", "int_or_ints", 1,
              "step between windows: an integer or [h, w]")
PADDING = Attr("padding", "int_or_ints", 0, "zeros added around the input: an integer, [h, w] "
               "(both sides) or [top, left, bottom, right]")
DILATION = Attr("dilation", "int_or_ints", 1, "spacing between kernel taps: an integer or [h, w]")
GROUPS = Attr("groups", "int", 1, "channel groups (groups = channels: depthwise)")
KERNEL = Attr("kernel_size", "int_or_ints", None, "the window: an integer or [h, w] (required)")
POOL_STRIDE = Attr("stride", "int_or_ints", None, "step between windows; null: the kernel size")
POOL_PADDING = Attr("padding", "int_or_ints", 0, "padding around the input (at most half the "
                    "kernel): an integer, [h, w] or [top, left, bottom, right]")
COUNT_PAD = Attr("count_include_pad", "bool", True, "divide by the whole window, padding "
                 "included (as PyTorch); false: by the input elements it covers")
TARGET = Attr("shape", "shape", (), "the shape of the result (the forward's argument)")
CONV_ATTRS = (STRIDE, PADDING, DILATION, GROUPS)
POOL_ATTRS = (KERNEL, POOL_STRIDE, POOL_PADDING)
AVG_ATTRS = (*POOL_ATTRS, COUNT_PAD)


# --- attrs and shapes -----------------------------------------------------------------------

def _conv_out(x: Shape, w: Shape, win: W.Window) -> Shape:
    return S.check_span((x[0], w[0], *win.out))


def _conv2d_shape(x: Shape, w: Shape, b: Shape | None = None, **attrs: Any) -> Shape:
    out = _conv_out(x, w, W.conv_window(x, w, **attrs))
    if b is not None and b != (w[0],):
        raise ShapeError(f"bias must be ({w[0]},) for weight {S.fmt(w)}, got {S.fmt(b)}")
    return out


def _input_grad_shape(g: Shape, w: Shape, shape: Shape = (), **attrs: Any) -> Shape:
    x = tuple(shape)
    want = _conv_out(x, w, W.conv_window(x, w, **attrs))
    if g != want:
        raise ShapeError(f"the gradient must be {S.fmt(want)}, got {S.fmt(g)}")
    return x


def _weight_grad_shape(x: Shape, g: Shape, shape: Shape = (), **attrs: Any) -> Shape:
    w = tuple(shape)
    want = _conv_out(x, w, W.conv_window(x, w, **attrs))
    if g != want:
        raise ShapeError(f"the gradient must be {S.fmt(want)}, got {S.fmt(g)}")
    return w


# --- costs: the products, the im2col buffers each forward fills, the tap loops -------------

# What one kernel tap costs besides its arithmetic: a window op's Python loop visits each
# tap (a few array calls, ~10 us), so a 1,000,000-tap window (a 1000x1000 kernel) is
# counted as 1e11 flops, over the default budget, instead of running for minutes.
TAP_FLOPS = 100_000


def _conv_sizes(x: Shape, w: Shape, attrs: dict[str, Any]) -> tuple[int, int]:
    """(multiply-adds, im2col elements) of a convolution of ``x`` with ``w``."""
    conv = {k: v for k, v in attrs.items() if k != "shape"}
    ho, wo = W.conv_window(x, w, **conv).out
    cols = x[0] * x[1] * w[2] * w[3] * ho * wo
    return cols * w[0] // max(conv.get("groups", 1), 1), cols


def _taps(w: Shape) -> int:
    return TAP_FLOPS * w[2] * w[3]


def _conv2d_cost(shapes: Any, out: Shape, attrs: dict[str, Any]) -> int:
    macs, cols = _conv_sizes(shapes[0], shapes[1], attrs)
    return 2 * macs + cols + size_of(out) * len(shapes) + _taps(shapes[1])


def _conv2d_scratch(shapes: Any, out: Shape, attrs: dict[str, Any]) -> int:
    # The im2col buffer, and the product before the bias is added.
    extra = size_of(out) if len(shapes) > 2 else 0
    return _conv_sizes(shapes[0], shapes[1], attrs)[1] + extra


def _input_grad_cost(shapes: Any, out: Shape, attrs: dict[str, Any]) -> int:
    macs, cols = _conv_sizes(out, shapes[1], attrs)
    return 2 * macs + 2 * cols + size_of(out) + _taps(shapes[1])


def _input_grad_scratch(shapes: Any, out: Shape, attrs: dict[str, Any]) -> int:
    return _conv_sizes(out, shapes[1], attrs)[1]


def _weight_grad_cost(shapes: Any, out: Shape, attrs: dict[str, Any]) -> int:
    macs, cols = _conv_sizes(shapes[0], out, attrs)
    return 2 * macs + cols + size_of(out) * shapes[0][0] + _taps(out)


def _weight_grad_scratch(shapes: Any, out: Shape, attrs: dict[str, Any]) -> int:
    # The im2col buffer, and one weight-sized product per example before their sum.
    return _conv_sizes(shapes[0], out, attrs)[1] + size_of(out) * shapes[0][0]


def _pool_sizes(shapes: Any, attrs: dict[str, Any]) -> tuple[int, int, int]:
    """(elements of the input, of the pooled result, taps) of a pool or its gradient."""
    x = tuple(attrs["shape"]) if "shape" in attrs else shapes[0]
    win = W.pool_window(x, attrs["kernel_size"], attrs["stride"], attrs["padding"])
    return size_of(x), x[0] * x[1] * win.out[0] * win.out[1], win.taps


def _pool_cost(shapes: Any, out: Shape, attrs: dict[str, Any]) -> int:
    # At most three tap loops (max, tie count, routing), a few passes over the pooled
    # shape per tap.
    x, pooled, taps = _pool_sizes(shapes, attrs)
    return 3 * (4 * pooled + TAP_FLOPS) * taps + x + pooled


def _pool_scratch(shapes: Any, out: Shape, attrs: dict[str, Any]) -> int:
    # Each window's max, its tie count, its share and one tap's mask: of the pooled shape.
    return 4 * _pool_sizes(shapes, attrs)[1]


# --- forwards ------------------------------------------------------------------------------

def _grouped(xp: Any, a: Any, groups: int, rows: int) -> Any:
    """(N, C, kk, Ho, Wo) or (N, O, Ho, Wo) as (N, groups, rows, Ho*Wo)."""
    return xp.reshape(a, (a.shape[0], groups, rows, a.shape[-2] * a.shape[-1]))


def _conv2d(xp: Any) -> Forward:
    def conv2d(x: Any, w: Any, b: Any = None, stride: Any = 1, padding: Any = 0,
               dilation: Any = 1, groups: int = 1) -> Any:
        win = W.conv_window(tuple(x.shape), tuple(w.shape), stride, padding, dilation, groups)
        o, cg = w.shape[0], w.shape[1]
        cols = _grouped(xp, W.im2col(xp, x, win), groups, cg * win.taps)
        wm = xp.reshape(w, (groups, o // groups, cg * win.taps))
        out = xp.reshape(xp.matmul(wm, cols), (x.shape[0], o, *win.out))
        return out if b is None else out + xp.reshape(b, (1, o, 1, 1))

    return conv2d


def _conv2d_input_grad(xp: Any) -> Forward:
    def conv2d_input_grad(g: Any, w: Any, stride: Any = 1, padding: Any = 0,
                          dilation: Any = 1, groups: int = 1, shape: Any = ()) -> Any:
        win = W.conv_window(tuple(shape), tuple(w.shape), stride, padding, dilation, groups)
        o, cg = w.shape[0], w.shape[1]
        wm = xp.reshape(w, (groups, o // groups, cg * win.taps))
        cols = xp.matmul(xp.matrix_transpose(wm), _grouped(xp, g, groups, o // groups))
        return W.col2im(xp, xp.reshape(cols, (shape[0], shape[1], win.taps, *win.out)), win)

    return conv2d_input_grad


def _conv2d_weight_grad(xp: Any) -> Forward:
    def conv2d_weight_grad(x: Any, g: Any, stride: Any = 1, padding: Any = 0,
                           dilation: Any = 1, groups: int = 1, shape: Any = ()) -> Any:
        win = W.conv_window(tuple(x.shape), tuple(shape), stride, padding, dilation, groups)
        o, cg = shape[0], shape[1]
        cols = _grouped(xp, W.im2col(xp, x, win), groups, cg * win.taps)
        per_example = xp.matmul(_grouped(xp, g, groups, o // groups),
                                xp.matrix_transpose(cols))
        return xp.reshape(xp.sum(per_example, axis=0), tuple(shape))

    return conv2d_weight_grad


def _divisor(xp: Any, win: W.Window, count_include_pad: bool, dtype: Any) -> Any:
    return float(win.taps) if count_include_pad else W.window_counts(xp, win, dtype)


def _avg_pool2d(xp: Any) -> Forward:
    def avg_pool2d(x: Any, kernel_size: Any = None, stride: Any = None, padding: Any = 0,
                   count_include_pad: bool = True) -> Any:
        win = W.pool_window(tuple(x.shape), kernel_size, stride, padding)
        return W.window_sum(xp, x, win) / _divisor(xp, win, count_include_pad, x.dtype)

    return avg_pool2d


def _avg_pool2d_grad(xp: Any) -> Forward:
    def avg_pool2d_grad(g: Any, kernel_size: Any = None, stride: Any = None, padding: Any = 0,
                        count_include_pad: bool = True, shape: Any = ()) -> Any:
        win = W.pool_window(tuple(shape), kernel_size, stride, padding)
        return W.spread(xp, g / _divisor(xp, win, count_include_pad, g.dtype), win)

    return avg_pool2d_grad


def _max_pool2d(xp: Any) -> Forward:
    def max_pool2d(x: Any, kernel_size: Any = None, stride: Any = None, padding: Any = 0
                   ) -> Any:
        return W.window_max(xp, x, W.pool_window(tuple(x.shape), kernel_size, stride, padding))

    return max_pool2d


def _max_pool2d_grad(xp: Any) -> Forward:
    def max_pool2d_grad(x: Any, g: Any, kernel_size: Any = None, stride: Any = None,
                        padding: Any = 0) -> Any:
        return W.max_route(xp, x, g, W.pool_window(tuple(x.shape), kernel_size, stride, padding))

    return max_pool2d_grad


def _max_pool2d_gather(xp: Any) -> Forward:
    def max_pool2d_gather(x: Any, h: Any, kernel_size: Any = None, stride: Any = None,
                          padding: Any = 0) -> Any:
        win = W.pool_window(tuple(x.shape), kernel_size, stride, padding)
        return W.max_gather(xp, x, h, win)

    return max_pool2d_gather


def _global_avg_pool2d(xp: Any) -> Forward:
    def global_avg_pool2d(x: Any) -> Any:
        return xp.mean(x, axis=(2, 3), keepdims=True)

    return global_avg_pool2d


# --- shape rules of the pools --------------------------------------------------------------

def _pool_shape(x: Shape, **attrs: Any) -> Shape:
    win = W.pool_window(x, **{k: v for k, v in attrs.items() if k != "count_include_pad"})
    return S.check_span((*x[:2], *win.out))


def _pool_grad_shape(g: Shape, shape: Shape = (), **attrs: Any) -> Shape:
    want = _pool_shape(tuple(shape), **attrs)
    if g != want:
        raise ShapeError(f"the gradient must be {S.fmt(want)}, got {S.fmt(g)}")
    return tuple(shape)


def _route_shape(x: Shape, g: Shape, **attrs: Any) -> Shape:
    want = _pool_shape(x, **attrs)
    if g != want:
        raise ShapeError(f"the gradient must be {S.fmt(want)}, got {S.fmt(g)}")
    return x


def _gather_shape(x: Shape, h: Shape, **attrs: Any) -> Shape:
    if h != x:
        raise ShapeError(f"the values to gather must be {S.fmt(x)}, got {S.fmt(h)}")
    return _pool_shape(x, **attrs)


def _global_shape(x: Shape) -> Shape:
    W.nchw(x)
    if x[2] * x[3] == 0:
        raise ShapeError(f"cannot average over the empty spatial axes of {S.fmt(x)}")
    return (*x[:2], 1, 1)


# --- VJPs: each a window op of the same family ---------------------------------------------

def _conv_dx(b: Any, g: Any, o: Any, x: Any, w: Any, bias: Any = None, **at: Any) -> Any:
    return b.op("conv2d_input_grad", g, w, **at, shape=b.shape(x))


def _conv_dw(b: Any, g: Any, o: Any, x: Any, w: Any, bias: Any = None, **at: Any) -> Any:
    return b.op("conv2d_weight_grad", x, g, **at, shape=b.shape(w))


def _conv_db(b: Any, g: Any, o: Any, x: Any, w: Any, bias: Any = None, **at: Any) -> Any:
    return b.op("sum", g, axis=(0, 2, 3))


def _input_grad_vjps() -> tuple[Any, Any]:
    def dg(b: Any, G: Any, o: Any, g: Any, w: Any, shape: Any = (), **at: Any) -> Any:
        return b.op("conv2d", G, w, **at)

    def dw(b: Any, G: Any, o: Any, g: Any, w: Any, shape: Any = (), **at: Any) -> Any:
        return b.op("conv2d_weight_grad", G, g, **at, shape=b.shape(w))

    return dg, dw


def _weight_grad_vjps() -> tuple[Any, Any]:
    def dx(b: Any, G: Any, o: Any, x: Any, g: Any, shape: Any = (), **at: Any) -> Any:
        return b.op("conv2d_input_grad", g, G, **at, shape=b.shape(x))

    def dg(b: Any, G: Any, o: Any, x: Any, g: Any, shape: Any = (), **at: Any) -> Any:
        return b.op("conv2d", x, G, **at)

    return dx, dg


def _avg_dx(b: Any, g: Any, o: Any, x: Any, **at: Any) -> Any:
    return b.op("avg_pool2d_grad", g, **at, shape=b.shape(x))


def _avg_grad_dg(b: Any, G: Any, o: Any, g: Any, shape: Any = (), **at: Any) -> Any:
    return b.op("avg_pool2d", G, **at)


def _max_dx(b: Any, g: Any, o: Any, x: Any, **at: Any) -> Any:
    return b.op("max_pool2d_grad", x, g, **at)


def _global_dx(b: Any, g: Any, o: Any, x: Any) -> Any:
    h, w = b.shape(x)[2:]
    return b.op("broadcast_to", b.op("mul", g, 1.0 / (h * w)), shape=b.shape(x))


def internal(name: str, arity: int, forward: Any, vjps: Any, shape: Any, doc: str,
             **kw: Any) -> OpDef:
    return OpDef(name, arity, forward, vjps, shape, doc, internal=True, category="internal",
                 **kw)


CONV_DOC = ("2-d cross-correlation, NCHW input, OIHW weight, optional bias (PyTorch "
            "conv2d); dx = transposed conv of g with W, dW = conv of x with g, db = sum of g "
            "over N, H, W")

OPS: tuple[OpDef, ...] = (
    OpDef("conv2d", 3, _conv2d, (_conv_dx, _conv_dw, _conv_db), _conv2d_shape, CONV_DOC,
          attrs=CONV_ATTRS, arg_names=("x", "weight", "bias"), min_arity=2, category="nn",
          cost=_conv2d_cost, scratch=_conv2d_scratch,
          example="conv2d(x, w, b, stride=2, padding=1)",
          batching="conv2d"),
    OpDef("max_pool2d", 1, _max_pool2d, (_max_dx,), _pool_shape,
          "max over each kernel window (padding never wins); routes g to each window's "
          "maxima, split evenly on ties", attrs=POOL_ATTRS, category="nn", kinked=True,
          cost=_pool_cost, scratch=_pool_scratch, example="max_pool2d(x, kernel_size=2)",
          batching="fold"),
    OpDef("avg_pool2d", 1, _avg_pool2d, (_avg_dx,), _pool_shape,
          "mean over each kernel window; dx = g spread evenly over the window",
          attrs=AVG_ATTRS, category="nn", cost=_pool_cost,
          example="avg_pool2d(x, kernel_size=3, stride=1, padding=1)",
          batching="fold"),
    OpDef("global_avg_pool2d", 1, _global_avg_pool2d, (_global_dx,), _global_shape,
          "mean over H and W, keeping them: (N, C, 1, 1); dx = g/(H*W) everywhere",
          category="nn", example="global_avg_pool2d(x)",
          batching="fold"),
    *norms.OPS,
    internal("conv2d_input_grad", 2, _conv2d_input_grad, _input_grad_vjps(),
             _input_grad_shape, "conv2d's dx: the transposed convolution of g with W",
             attrs=(*CONV_ATTRS, TARGET), cost=_input_grad_cost, scratch=_input_grad_scratch),
    internal("conv2d_weight_grad", 2, _conv2d_weight_grad, _weight_grad_vjps(),
             _weight_grad_shape, "conv2d's dW: the convolution of x with g",
             attrs=(*CONV_ATTRS, TARGET), cost=_weight_grad_cost,
             scratch=_weight_grad_scratch),
    internal("max_pool2d_grad", 2, _max_pool2d_grad,
             (None, lambda b, G, o, x, g, **at: b.op("max_pool2d_gather", x, G, **at)),
             _route_shape, "max_pool2d's dx: g routed to each window's maxima",
             attrs=POOL_ATTRS, cost=_pool_cost, scratch=_pool_scratch),
    internal("max_pool2d_gather", 2, _max_pool2d_gather,
             (None, lambda b, G, o, x, h, **at: b.op("max_pool2d_grad", x, G, **at)),
             _gather_shape, "per window, the mean of h over x's maxima there",
             attrs=POOL_ATTRS, cost=_pool_cost, scratch=_pool_scratch),
    internal("avg_pool2d_grad", 1, _avg_pool2d_grad, (_avg_grad_dg,), _pool_grad_shape,
             "avg_pool2d's dx: g spread evenly over each window", attrs=(*AVG_ATTRS, TARGET),
             cost=_pool_cost),
)
