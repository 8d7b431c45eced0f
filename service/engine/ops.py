"""Every op of API.md §3, each one record, written against an array namespace ``xp``.

``build_registry(xp)`` closes the rules over the namespace, so a CuPy backend is
``build_registry(cupy)``; NumPy is the only backend wired in today. Rules never mutate
their inputs and never write into ``g``: the executor may hand the same array to several
rules.
"""

from __future__ import annotations

import operator
from typing import Any

from service.engine import shapes as S
from service.engine.registry import PASS_THROUGH, Attr, Op, Registry, Shape, ShapeError, size_of

AXIS = Attr("axis", "axis", None, "axis or list of axes to reduce; null reduces all")
KEEPDIMS = Attr("keepdims", "bool", False, "keep reduced axes with size 1")
SOFT_AXIS = Attr("axis", "int", -1, "the axis the distribution runs along")


def _unary_shape(x: Shape) -> Shape:
    return x


def _binary_shape(x: Shape, y: Shape) -> Shape:
    return S.broadcast_shapes(x, y)


def _scores_labels_shape(scores: Shape, labels: Shape, **_: Any) -> Shape:
    if len(scores) != 2:
        raise ShapeError(f"scores must be (batch, classes), got {S.fmt(scores)}")
    if labels != scores[:1]:
        raise ShapeError(f"labels must be ({scores[0]},) for scores {S.fmt(scores)}, "
                         f"got {S.fmt(labels)}")
    if scores[0] == 0 or scores[1] == 0:
        raise ShapeError("scores must have at least one row and one class")
    return ()


def build_registry(xp: Any) -> Registry:  # noqa: C901 - one flat table of records
    """Register every op over namespace ``xp`` and return the registry."""
    reg = Registry(backend=getattr(xp, "__name__", str(xp)))
    add = reg.register

    # --- elementwise binary (NumPy broadcasting; the engine unbroadcasts) -------------------
    def _bin(name: str, fwd: Any, dx: Any, dy: Any, doc: str, saves: set[str]) -> None:
        add(Op(name, 2, fwd, (dx, dy), _binary_shape, doc, saves=frozenset(saves)))

    # The arithmetic operators rather than the ufuncs: identical on arrays (ndarray.__add__
    # is np.add), and on the NumPy scalars that 0-d values run as, scalar arithmetic is
    # several times cheaper than a ufunc call.
    _bin("add", operator.add, PASS_THROUGH, PASS_THROUGH,
         "x + y; distributes g unchanged to both inputs", set())
    _bin("sub", operator.sub, PASS_THROUGH, lambda g, o, x, y: -g,
         "x - y; g to x, -g to y", set())
    _bin("mul", operator.mul, lambda g, o, x, y: g * y, lambda g, o, x, y: g * x,
         "x * y; swaps the inputs: dx = g*y, dy = g*x", {"args"})
    _bin("div", operator.truediv, lambda g, o, x, y: g / y, lambda g, o, x, y: -(g * o) / y,
         "x / y; dx = g/y, dy = -g*x/y^2", {"args", "out"})

    def _pow_dx(g: Any, o: Any, x: Any, y: Any) -> Any:
        # PyTorch's pow_backward_self: zero where the exponent is zero (avoids 0 * inf).
        return xp.where(y == 0, 0.0, g * y * xp.power(x, y - 1))

    def _pow_dy(g: Any, o: Any, x: Any, y: Any) -> Any:
        # PyTorch's pow_backward_exponent: zero where base == 0 and exponent >= 0.
        return xp.where((x == 0) & (y >= 0), 0.0, g * o * xp.log(x))

    _bin("pow", xp.power, _pow_dx, _pow_dy,
         "x ** y; dx = g*y*x^(y-1), dy = g*x^y*ln(x) (0 where x == 0, y >= 0)", {"args", "out"})

    def _max_dx(g: Any, o: Any, x: Any, y: Any) -> Any:
        return xp.where(x == y, 0.5 * g, xp.where(x > y, g, 0.0))

    def _max_dy(g: Any, o: Any, x: Any, y: Any) -> Any:
        return xp.where(x == y, 0.5 * g, xp.where(y > x, g, 0.0))

    _bin("maximum", xp.maximum, _max_dx, _max_dy,
         "elementwise max; routes g to the larger input, split evenly on ties", {"args"})
    _bin("minimum", xp.minimum, _max_dy, _max_dx,
         "elementwise min; routes g to the smaller input, split evenly on ties", {"args"})

    # --- elementwise unary ------------------------------------------------------------------
    def _un(name: str, fwd: Any, dx: Any, doc: str, saves: set[str]) -> None:
        add(Op(name, 1, fwd, (dx,), _unary_shape, doc, saves=frozenset(saves)))

    def _sigmoid(x: Any) -> Any:
        # exp(-log(1 + exp(-x))): accurate in relative terms for large |x|, never overflows.
        return xp.exp(-xp.logaddexp(0.0, -x))

    def _relu(x: Any) -> Any:
        return xp.maximum(x, 0.0)

    _un("neg", operator.neg, lambda g, o, x: -g, "-x; dx = -g", set())
    _un("identity", lambda x: x, PASS_THROUGH, "x; dx = g", set())
    _un("exp", xp.exp, lambda g, o, x: g * o, "e^x; dx = g*e^x", {"out"})
    _un("log", xp.log, lambda g, o, x: g / x, "ln x; dx = g/x", {"args"})
    _un("sqrt", xp.sqrt, lambda g, o, x: g / (2.0 * o), "sqrt x; dx = g/(2 sqrt x)", {"out"})
    _un("square", xp.square, lambda g, o, x: g * (2.0 * x), "x^2; dx = 2*x*g", {"args"})
    _un("abs", xp.abs, lambda g, o, x: g * xp.sign(x), "|x|; dx = sign(x)*g (0 at 0)",
        {"args"})
    _un("reciprocal", xp.reciprocal, lambda g, o, x: -(g * o * o), "1/x; dx = -g/x^2",
        {"out"})
    _un("sigmoid", _sigmoid, lambda g, o, x: g * (o * (1.0 - o)),
        "1/(1+e^-x); dx = g*(1-s)*s", {"out"})
    _un("tanh", xp.tanh, lambda g, o, x: g * (1.0 - o * o), "tanh x; dx = g*(1-tanh^2 x)",
        {"out"})
    _un("relu", _relu, lambda g, o, x: g * (x > 0), "max(0, x); dx = g where x > 0, else 0",
        {"args"})
    _un("sin", xp.sin, lambda g, o, x: g * xp.cos(x), "sin x; dx = g*cos x", {"args"})
    _un("cos", xp.cos, lambda g, o, x: -(g * xp.sin(x)), "cos x; dx = -g*sin x", {"args"})

    # --- linear algebra ---------------------------------------------------------------------
    def _matmul_dx(g: Any, o: Any, a: Any, b: Any) -> Any:
        if b.ndim == 1:
            # a (..., n, k) or (k,), g (..., n) or (): outer product with b.
            return xp.multiply(xp.expand_dims(g, -1), b)
        if a.ndim == 1:
            # g (..., m), b (..., k, m) → (..., k); the engine sums the batch axes.
            return xp.matmul(b, xp.expand_dims(g, -1))[..., 0]
        return xp.matmul(g, xp.swapaxes(b, -1, -2))

    def _matmul_dy(g: Any, o: Any, a: Any, b: Any) -> Any:
        if a.ndim == 1:
            # b (..., k, m) or (k,), g (..., m) or (): outer product with a.
            return xp.multiply(xp.expand_dims(a, -1), xp.expand_dims(g, -2)) if b.ndim > 1 \
                else g * a
        if b.ndim == 1:
            # a (..., n, k), g (..., n) → (..., k)
            return xp.matmul(xp.expand_dims(g, -2), a)[..., 0, :]
        return xp.matmul(xp.swapaxes(a, -1, -2), g)

    def _matmul_cost(shapes: Any, out: Shape, attrs: dict[str, Any]) -> int:
        return S.matmul_cost(*shapes)

    add(Op("matmul", 2, xp.matmul, (_matmul_dx, _matmul_dy), S.matmul_shape,
           "x @ y (NumPy semantics); dx = g @ y^T, dy = x^T @ g, batch axes summed",
           cost=_matmul_cost, category="linalg", saves=frozenset({"args"}),
           arg_names=("a", "b")))

    def _dot_shape(a: Shape, b: Shape) -> Shape:
        if not 1 <= len(a) <= 2 or not 1 <= len(b) <= 2:
            raise ShapeError(f"dot takes 1-d or 2-d operands, got {S.fmt(a)} and {S.fmt(b)}")
        return S.matmul_shape(a, b)

    add(Op("dot", 2, xp.matmul, (_matmul_dx, _matmul_dy), _dot_shape,
           "inner product of vectors / matrix product of 1-d or 2-d operands; as matmul",
           cost=_matmul_cost, category="linalg", saves=frozenset({"args"}),
           arg_names=("a", "b")))

    def _transpose(x: Any, axes: Any = None) -> Any:
        return xp.transpose(x, axes)

    def _transpose_dx(g: Any, o: Any, x: Any, axes: Any = None) -> Any:
        if axes is None:
            return xp.transpose(g)
        inverse = [0] * len(axes)
        for i, a in enumerate(axes):
            inverse[a % len(axes)] = i
        return xp.transpose(g, inverse)

    add(Op("transpose", 1, _transpose, (_transpose_dx,),
           lambda x, axes=None: S.transpose_shape(x, axes),
           "permutes axes; dx = g permuted back",
           attrs=(Attr("axes", "axes", None, "permutation; null reverses the axes"),),
           category="shape", saves=frozenset()))

    def _linear(x: Any, w: Any, b: Any) -> Any:
        return xp.matmul(x, w.T) + b

    def _linear_dx(g: Any, o: Any, x: Any, w: Any, b: Any) -> Any:
        return xp.matmul(g, w)

    def _linear_dw(g: Any, o: Any, x: Any, w: Any, b: Any) -> Any:
        if x.ndim == 1:
            return xp.multiply(xp.expand_dims(g, -1), x)
        # Rows spelled out, not -1: NumPy cannot infer -1 next to a zero-size axis.
        rows = size_of(x.shape[:-1])
        return xp.matmul(g.reshape(rows, g.shape[-1]).T, x.reshape(rows, x.shape[-1]))

    def _linear_db(g: Any, o: Any, x: Any, w: Any, b: Any) -> Any:
        return g  # the engine sums the batch axes back to b's shape

    def _linear_shape(x: Shape, w: Shape, b: Shape) -> Shape:
        if len(w) != 2:
            raise ShapeError(f"weight must be (out, in), got {S.fmt(w)}")
        if b != (w[0],):
            raise ShapeError(f"bias must be ({w[0]},) for weight {S.fmt(w)}, got {S.fmt(b)}")
        if not x or x[-1] != w[1]:
            raise ShapeError(f"input's last axis must be {w[1]} for weight {S.fmt(w)}, "
                             f"got {S.fmt(x)}")
        return (*x[:-1], w[0])

    def _linear_cost(shapes: Any, out: Shape, attrs: dict[str, Any]) -> int:
        x, w, _ = shapes
        return 2 * size_of(x[:-1]) * w[0] * w[1] + size_of(out)

    add(Op("linear", 3, _linear, (_linear_dx, _linear_dw, _linear_db), _linear_shape,
           "x @ W^T + b (PyTorch Linear); dx = g @ W, dW = g^T @ x, db = sum of g over batch",
           cost=_linear_cost, category="nn", saves=frozenset({"args"}),
           arg_names=("x", "weight", "bias")))

    # --- reductions -------------------------------------------------------------------------
    def _keep(g: Any, x: Any, axis: Any, keepdims: bool) -> Any:
        """Reshape a reduction's gradient so that it broadcasts against ``x``."""
        if keepdims:
            return g
        if axis is None:
            return xp.reshape(g, (1,) * x.ndim)
        return xp.expand_dims(g, axis)

    def _reduction(name: str, fwd: Any, dx: Any, doc: str, nonempty: bool) -> None:
        def shape(x: Shape, axis: Any = None, keepdims: bool = False) -> Shape:
            return S.reduce_shape(x, axis, keepdims, nonempty=nonempty)

        add(Op(name, 1, fwd, (dx,), shape, doc, attrs=(AXIS, KEEPDIMS), category="reduction"))

    def _sum_dx(g: Any, o: Any, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return xp.broadcast_to(_keep(g, x, axis, keepdims), x.shape)

    def _mean_dx(g: Any, o: Any, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        count = x.size // max(xp.size(o), 1)
        return xp.broadcast_to(_keep(g, x, axis, keepdims) / count, x.shape)

    def _extreme_dx(g: Any, o: Any, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        mask = x == _keep(o, x, axis, keepdims)
        # Count ties in x's dtype: an integer count would promote float32 gradients to float64.
        ties = xp.sum(mask, axis=axis, keepdims=True, dtype=x.dtype)
        share = _keep(g, x, axis, keepdims) / ties
        return xp.where(mask, share, 0.0)

    def _lse(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        m = xp.max(x, axis=axis, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0.0)
        out = xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True)) + m
        if keepdims:
            return out
        return xp.reshape(out, ()) if axis is None else xp.squeeze(out, axis=axis)

    def _lse_dx(g: Any, o: Any, x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return _keep(g, x, axis, keepdims) * xp.exp(x - _keep(o, x, axis, keepdims))

    def _sum(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return xp.sum(x, axis=axis, keepdims=keepdims)

    def _mean(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return xp.mean(x, axis=axis, keepdims=keepdims)

    def _max(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return xp.max(x, axis=axis, keepdims=keepdims)

    def _min(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        return xp.min(x, axis=axis, keepdims=keepdims)

    _reduction("sum", _sum, _sum_dx, "sum over axes; dx = g broadcast back", False)
    _reduction("mean", _mean, _mean_dx, "mean over axes; dx = g/n broadcast back", True)
    _reduction("max", _max, _extreme_dx,
               "max over axes; routes g to the maxima, split evenly on ties", True)
    _reduction("min", _min, _extreme_dx,
               "min over axes; routes g to the minima, split evenly on ties", True)
    _reduction("logsumexp", _lse, _lse_dx,
               "log(sum(exp(x))) over axes; dx = g*softmax(x)", True)

    # --- shape ------------------------------------------------------------------------------
    def _reshape(x: Any, shape: Any = ()) -> Any:
        return xp.reshape(x, shape)

    def _reshape_dx(g: Any, o: Any, x: Any, shape: Any = ()) -> Any:
        return xp.reshape(g, x.shape)

    add(Op("reshape", 1, _reshape, (_reshape_dx,),
           lambda x, shape=(): S.reshape_shape(x, shape),
           "same elements, new shape; dx = g reshaped back",
           attrs=(Attr("shape", "shape", (), "new shape; one dim may be -1"),),
           category="shape", saves=frozenset({"args"})))

    # --- neural nets ------------------------------------------------------------------------
    def _softmax_shape(x: Shape, axis: int = -1) -> Shape:
        if not x:
            raise ShapeError("softmax needs at least a 1-d tensor")
        (a,) = S.normalize_axes(axis, len(x))
        if x[a] == 0:  # as for max/logsumexp: the row max of an empty axis does not exist
            raise ShapeError(f"cannot normalize over the zero-size axis {axis} of {S.fmt(x)}")
        return x

    def _softmax(x: Any, axis: int = -1) -> Any:
        e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
        return e / xp.sum(e, axis=axis, keepdims=True)

    def _softmax_dx(g: Any, o: Any, x: Any, axis: int = -1) -> Any:
        return o * (g - xp.sum(g * o, axis=axis, keepdims=True))

    def _log_softmax(x: Any, axis: int = -1) -> Any:
        z = x - xp.max(x, axis=axis, keepdims=True)
        return z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))

    def _log_softmax_dx(g: Any, o: Any, x: Any, axis: int = -1) -> Any:
        return g - xp.exp(o) * xp.sum(g, axis=axis, keepdims=True)

    add(Op("softmax", 1, _softmax, (_softmax_dx,), _softmax_shape,
           "e^x / sum(e^x) along axis; dx = s*(g - sum(g*s))", attrs=(SOFT_AXIS,),
           category="nn", saves=frozenset({"out"})))
    add(Op("log_softmax", 1, _log_softmax, (_log_softmax_dx,), _softmax_shape,
           "x - logsumexp(x) along axis; dx = g - softmax(x)*sum(g)", attrs=(SOFT_AXIS,),
           category="nn", saves=frozenset({"out"})))

    def _sce(s: Any, y: Any) -> Any:
        rows = xp.arange(s.shape[0])
        z = s - xp.max(s, axis=1, keepdims=True)
        lse = xp.log(xp.sum(xp.exp(z), axis=1))
        return xp.mean(lse - z[rows, y])

    def _sce_ds(g: Any, o: Any, s: Any, y: Any) -> Any:
        p = _softmax(s, axis=1)
        p[xp.arange(s.shape[0]), y] -= 1.0
        return p * (g / s.shape[0])

    add(Op("softmax_cross_entropy", 2, _sce, (_sce_ds, None), _scores_labels_shape,
           "mean over the batch of -log softmax(s)[label]; ds = g*(softmax(s) - onehot)/batch",
           arg_kinds=("float", "label"), arg_names=("logits", "labels"), category="nn",
           saves=frozenset({"args"})))

    def _hinge_margins(s: Any, y: Any, margin: float) -> Any:
        rows = xp.arange(s.shape[0])
        m = s - s[rows, y][:, None] + margin
        m[rows, y] = 0.0
        return m

    def _hinge(s: Any, y: Any, margin: float = 1.0) -> Any:
        return xp.sum(xp.maximum(_hinge_margins(s, y, margin), 0.0)) / s.shape[0]

    def _hinge_ds(g: Any, o: Any, s: Any, y: Any, margin: float = 1.0) -> Any:
        rows = xp.arange(s.shape[0])
        active = (_hinge_margins(s, y, margin) > 0).astype(s.dtype)
        active[rows, y] = -xp.sum(active, axis=1)
        return active * (g / s.shape[0])

    add(Op("hinge", 2, _hinge, (_hinge_ds, None), _scores_labels_shape,
           "multiclass SVM: mean over rows of sum_j!=y max(0, s_j - s_y + margin); "
           "ds_j = g/batch per active margin, ds_y = -g/batch per active margin",
           attrs=(Attr("margin", "float", 1.0, "the SVM margin (delta)"),),
           arg_kinds=("float", "label"), arg_names=("scores", "labels"), category="nn",
           saves=frozenset({"args"})))

    def _mse_shape(p: Shape, t: Shape) -> Shape:
        if p != t:
            raise ShapeError(f"pred {S.fmt(p)} and target {S.fmt(t)} must have the same shape")
        if size_of(p) == 0:
            raise ShapeError("mse of an empty tensor")
        return ()

    def _mse(p: Any, t: Any) -> Any:
        return xp.mean(xp.square(p - t))

    def _mse_dp(g: Any, o: Any, p: Any, t: Any) -> Any:
        return (p - t) * (2.0 * g / p.size)

    def _mse_dt(g: Any, o: Any, p: Any, t: Any) -> Any:
        return (t - p) * (2.0 * g / p.size)

    add(Op("mse", 2, _mse, (_mse_dp, _mse_dt), _mse_shape,
           "mean((pred - target)^2) over all elements; dpred = 2*g*(pred - target)/n",
           arg_names=("pred", "target"), category="nn", saves=frozenset({"args"})))

    return reg
