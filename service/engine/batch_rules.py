"""The batching rules: how each public op runs on values with a leading example axis.

An op names its rule in its record (``Op.batching``); :data:`RULES` maps that name to the
rule. A rule is called as ``rule(b, op, args, flags, shapes, out, attrs)``: ``b`` the
``Builder`` (service/engine/batching.py) of the batched graph, ``op`` the op's name,
``args`` the batched graph's refs of the arguments (node ids or float constants), ``flags``
which of them carry the example axis (at least one does), ``shapes`` and ``out`` the
per-example shapes of the arguments and result, ``attrs`` the node's attrs. It adds nodes
of public ops and returns the ref of a value of shape ``(B,) + out``. Rules never loop over
examples: each is a fixed handful of nodes whatever ``B`` is (broadcasting, shifted axes,
the examples folded into an op's own batch axis, or a grouped convolution).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from service.engine.errors import Unprocessable

Shape = tuple[int, ...]
Rule = Callable[..., Any]
Builder = Any  # service.engine.batching.Builder (which imports this module)


def _ax(a: int, rank: int) -> int:
    """A per-example axis as an axis of the batched value (non-negative)."""
    return a % rank + 1 if rank else 1


def _axes(axis: Any, rank: int) -> Any:
    if axis is None:
        return tuple(range(1, rank + 1))
    if isinstance(axis, int):
        return _ax(axis, rank)
    return tuple(_ax(a, rank) for a in axis)


def _lifted(b: Builder, args: Sequence[Any], flags: Sequence[bool],
            shapes: Sequence[Shape]) -> list[Any]:
    """Every argument batched (an unbatched one broadcast: a view)."""
    return [a if f else b.lift(a, tuple(s)) for a, f, s in zip(args, flags, shapes)]


def elementwise(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
                shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    """Broadcasting ops: a batched argument of lower rank gets size-1 axes after the batch
    axis, so that NumPy's right-aligned broadcasting lines the examples up."""
    r = len(out)
    new = [b.align(a, len(s), r) if f else a for a, f, s in zip(args, flags, shapes)]
    return b.op(op, *new, **attrs)


def reduce(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
           shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    rank = len(shapes[0])
    if rank == 0:  # a scalar example: each one's reduction of its one element
        return _scalar_reduce(b, op, args[0], attrs)
    return b.op(op, args[0], **{**attrs, "axis": _axes(attrs.get("axis"), rank)})


def _scalar_reduce(b: Builder, op: str, x: Any, attrs: dict[str, Any]) -> Any:
    # Each example's reduction of one element: a (B, 1) value reduced over its axis 1.
    col = b.op("unsqueeze", x, axes=(1,))
    return b.op(op, col, **{**attrs, "axis": 1, "keepdims": False})


def axis_op(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
            shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    """One ``axis`` attr counted in the argument's rank (softmax, log_softmax, concat)."""
    new = _lifted(b, args, flags, shapes)
    return b.op(op, *new, **{**attrs, "axis": _ax(attrs["axis"], len(shapes[0]))})


def stack(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
          shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    new = _lifted(b, args, flags, shapes)
    return b.op(op, *new, axis=_ax(attrs["axis"], len(out)))


def transpose(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
              shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    r = len(shapes[0])
    axes = attrs.get("axes")
    perm = tuple(range(r - 1, -1, -1)) if axes is None else tuple(a % r for a in axes)
    return b.op("transpose", args[0], axes=(0, *(a + 1 for a in perm)))


def to_shape(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
             shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    """Ops that only change the shape: reshape to ``(B,) + out`` (a view)."""
    return b.op("reshape", args[0], shape=(b.size, *out))


def expand(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
           shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    x = b.align(args[0], len(shapes[0]), len(out))
    return b.op("expand", x, shape=(b.size, *out))


def slice_op(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
             shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    r = len(shapes[0])
    axes = attrs.get("axes")
    axes = tuple(range(len(attrs.get("starts") or ()))) if axes is None else axes
    return b.op("slice", args[0], **{**attrs, "axes": tuple(_ax(a, r) for a in axes)})


def pad(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
        shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    pads = tuple(attrs.get("pads") or ())
    if not pads:
        return b.op("pad", args[0], **attrs)
    n = len(pads) // 2
    return b.op("pad", args[0], **{**attrs, "pads": (0, *pads[:n], 0, *pads[n:])})


def gather(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
           shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    xs, ish = tuple(shapes[0]), tuple(shapes[1])
    a = attrs["axis"] % len(xs)
    x, i = args
    if not flags[1]:
        return b.op("gather", x, i, axis=a + 1)
    if not flags[0]:  # shared table, indices per example: the example axis lands at a
        g = b.op("gather", x, i, axis=a)
        perm = (a, *range(a), *range(a + 1, len(out) + 1))
        return b.op("transpose", g, axes=perm)
    # Both per example: the examples' entries side by side along one axis, the indices
    # offset by example (a feed), one gather, the axes put back.
    n, rest = xs[a], xs[:a] + xs[a + 1:]
    moved = b.op("transpose", x, axes=(0, a + 1, *(k + 1 for k in range(len(xs)) if k != a)))
    flat = b.op("reshape", moved, shape=(b.size * n, *rest))
    idx = b.feed(i, "offset", n, (b.size, *ish))
    g = b.op("gather", flat, idx, axis=0)  # (B,) + i + rest
    li = len(ish)
    perm = (0, *(1 + li + k for k in range(a)), *(1 + k for k in range(li)),
            *(1 + li + a + k for k in range(len(xs) - a - 1)))
    return b.op("transpose", g, axes=perm)


def matmul(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
           shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    """NumPy's matmul per example: 1-d operands made 2-d, the batched operands' own batch
    axes lined up after the example axis, one broadcasting matmul, the result reshaped."""
    (x, y), (sx, sy) = args, (tuple(shapes[0]), tuple(shapes[1]))
    if len(sx) == 1:
        x = b.op("unsqueeze", x, axes=(-2,))
    if len(sy) == 1:
        y = b.op("unsqueeze", y, axes=(-1,))
    rx, ry = max(len(sx), 2), max(len(sy), 2)
    r = max(rx, ry)
    if flags[0]:
        x = b.align(x, rx, r)
    if flags[1]:
        y = b.align(y, ry, r)
    z = b.op("matmul", x, y)
    return b.op("reshape", z, shape=(b.size, *out))


def linear(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
           shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    """x @ w^T + bias. Only x per example: linear itself (one GEMM over every row);
    per-example weights: the batched matmul, then the bias broadcast."""
    if not flags[1] and not flags[2]:
        return b.op("linear", *args)
    x, w, bias = args
    sx, sw, sb = (tuple(s) for s in shapes)
    wt = b.op("transpose", w, axes=(0, 2, 1)) if flags[1] else b.op("transpose", w)
    y = matmul(b, "matmul", (x, wt), (flags[0], flags[1]), (sx, (sw[1], sw[0])), out, {})
    return elementwise(b, "add", (y, bias), (True, flags[2]), (out, sb), out, {})


def conv2d(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
           shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    """Only x per example: the examples folded into conv2d's own batch axis. Per-example
    weights: the examples side by side as channel groups of one grouped convolution."""
    if not any(flags[1:]):
        return fold(b, op, args, flags, shapes, out, attrs)
    x, w, *rest = _lifted(b, args, flags, shapes)
    (n, c, h, wd), sw = shapes[0], tuple(shapes[1])
    B = b.size
    xg = b.op("reshape", b.op("transpose", x, axes=(1, 0, 2, 3, 4)), shape=(n, B * c, h, wd))
    wg = b.op("reshape", w, shape=(B * sw[0], *sw[1:]))
    more = [b.op("reshape", rest[0], shape=(B * sw[0],))] if rest else []
    y = b.op("conv2d", xg, wg, *more, **{**attrs, "groups": B * attrs["groups"]})
    y = b.op("reshape", y, shape=(out[0], B, *out[1:]))
    return b.op("transpose", y, axes=(1, 0, 2, 3, 4))


def fold(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
         shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    """Ops whose first argument has its own batch axis (N, C, H, W) and whose other
    arguments are shared: the examples folded into N, the result unfolded."""
    if any(flags[1:]):
        raise _no_rule(op, "with per-example parameters")
    s = tuple(shapes[0])
    x = b.op("reshape", args[0], shape=(b.size * s[0], *s[1:]))
    y = b.op(op, x, *args[1:], **attrs)
    return b.op("reshape", y, shape=(b.size, *out))


def _normalize(b: Builder, x: Any, axes: tuple[int, ...], eps: float) -> Any:
    """(x - mean) / sqrt(var + eps) over ``axes`` (biased variance), in public ops."""
    m = b.op("mean", x, axis=axes, keepdims=True)
    v = b.op("var", x, axis=axes, keepdims=True, correction=0.0)
    return b.op("div", b.op("sub", x, m), b.op("sqrt", b.op("add", v, eps)))


def _affine(b: Builder, xhat: Any, params: Sequence[tuple[Any, bool, Shape]], rank: int,
            per_channel: bool) -> Any:
    """xhat * scale + bias, each parameter reshaped to broadcast (channel axis 1)."""
    out = []
    for p, f, s in params:
        if per_channel:  # (C,) → (C, 1, ...) per example
            shape = (s[0],) + (1,) * (rank - 2)
            p = b.op("reshape", p, shape=(b.size, *shape) if f else shape)
            s = shape
        out.append(b.align(p, len(s), rank) if f else p)
    return b.op("add", b.op("mul", xhat, out[0]), out[1])


def batch_norm(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
               shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    if not any(flags[1:]):
        return fold(b, op, args, flags, shapes, out, attrs)
    r = len(out)
    x = args[0] if flags[0] else b.lift(args[0], tuple(shapes[0]))
    shape = (shapes[1][0],) + (1,) * (r - 2)

    def chan(i: int) -> Any:
        return b.align(b.op("reshape", args[i], shape=(b.size, *shape)), r - 1, r) if flags[i] \
            else b.op("reshape", args[i], shape=shape)

    inv = b.op("sqrt", b.op("add", chan(4), attrs["epsilon"]))
    xhat = b.op("div", b.op("sub", x, chan(3)), inv)
    return b.op("add", b.op("mul", xhat, chan(1)), chan(2))


def batch_norm_train(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
                     shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    """Each example's statistics over its own N and spatial axes."""
    r = len(out)
    x = args[0] if flags[0] else b.lift(args[0], tuple(shapes[0]))
    xhat = _normalize(b, x, (1, *range(3, r + 1)), attrs["epsilon"])
    return _affine(b, xhat, [(args[i], flags[i], tuple(shapes[i])) for i in (1, 2)], r, True)


def layer_norm(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
               shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    r = len(out)
    a = _ax(attrs["axis"], r)
    if not any(flags[1:]):
        return b.op("layer_norm", *args, **{**attrs, "axis": a})
    x = args[0] if flags[0] else b.lift(args[0], tuple(shapes[0]))
    xhat = _normalize(b, x, tuple(range(a, r + 1)), attrs["epsilon"])
    return _affine(b, xhat, [(args[i], flags[i], tuple(shapes[i])) for i in (1, 2)], r, False)


def dropout(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
            shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    """The mask is a function of the seed and the example's shape: every example gets the
    one a separate request would, made once and broadcast."""
    if not attrs.get("training"):
        return b.op("dropout", args[0], **attrs)
    mask = b.op("dropout", b.op("expand", 1.0, shape=tuple(out)), **attrs)
    return b.op("mul", args[0], mask)


def _onehot(b: Builder, y: Any, flag: bool, rows: int, classes: int) -> Any:
    shape = ((b.size,) if flag else ()) + (rows, classes)
    return b.feed(y, "onehot", classes, shape)


def softmax_cross_entropy(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
                          shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    """Per example: mean over its rows of logsumexp(s) - <s, onehot(label)>."""
    n, c = shapes[0]
    s = args[0] if flags[0] else b.lift(args[0], tuple(shapes[0]))
    oh = _onehot(b, args[1], flags[1], n, c)
    lse = b.op("logsumexp", s, axis=-1)
    picked = b.op("sum", b.op("mul", s, oh), axis=-1)
    return b.op("mean", b.op("sub", lse, picked), axis=-1)


def hinge(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
          shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    """Per example: sum over rows and wrong classes of max(0, s_j - s_y + margin) / N."""
    n, c = shapes[0]
    s = args[0] if flags[0] else b.lift(args[0], tuple(shapes[0]))
    oh = _onehot(b, args[1], flags[1], n, c)
    sy = b.op("sum", b.op("mul", s, oh), axis=-1, keepdims=True)
    m = b.op("relu", b.op("add", b.op("sub", s, sy), float(attrs["margin"])))
    kept = b.op("mul", m, b.op("sub", 1.0, oh))
    return b.op("mul", b.op("sum", kept, axis=(1, 2)), 1.0 / n)


def mse(b: Builder, op: str, args: Sequence[Any], flags: Sequence[bool],
        shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> Any:
    r = len(shapes[0])
    p, t = _lifted(b, args, flags, shapes)
    sq = b.op("square", b.op("sub", p, t))
    return b.op("mean", sq, axis=tuple(range(1, r + 1))) if r else sq


def _no_rule(op: str, how: str) -> Unprocessable:
    return Unprocessable(f"batched: op '{op}' has no batching rule {how} yet; send the "
                         "examples as separate requests", loc=("batched",))


RULES: dict[str, Rule] = {
    "elementwise": elementwise, "reduce": reduce, "axis": axis_op, "stack": stack,
    "transpose": transpose, "to_shape": to_shape, "expand": expand, "slice": slice_op,
    "pad": pad, "gather": gather, "matmul": matmul, "linear": linear, "conv2d": conv2d,
    "fold": fold, "batch_norm": batch_norm, "batch_norm_train": batch_norm_train,
    "layer_norm": layer_norm, "dropout": dropout,
    "softmax_cross_entropy": softmax_cross_entropy, "hinge": hinge, "mse": mse,
}
