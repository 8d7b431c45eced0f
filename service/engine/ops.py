"""Every op of docs/api.md §3, each one record, written against an array namespace ``xp``.

``build_registry(xp)`` closes the forwards over the namespace (the Python array API
standard: NumPy itself, CuPy through array-api-compat, or array-api-strict; see
``service.engine.backend``). Forwards never mutate
their inputs: the executor may hand the same array to several nodes.

VJP rules build graph nodes (see ``registry``): ``b`` adds a node, ``g``/``o``/``x``/``y``
are nodes. The internal ops at the end exist for those rules: masks of kinked ops
(derivative zero), ``sum_to``/``broadcast_to`` (each other's VJP), ``contract`` (the
bilinear products of matmul's VJP with broadcast batch axes summed *inside* the product,
never materialized) and the fused pieces of the losses.
"""

from __future__ import annotations

import operator
from typing import Any

from service.engine import shapes as S
from service.engine.registry import Attr, Op, Registry, Shape, ShapeError, size_of

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


_LETTERS = "abcdefghjlpqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"  # n k m o i are taken below


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


def _broadcast_to_shape(x: Shape, shape: Shape = ()) -> Shape:
    if S.broadcast_shapes(x, tuple(shape)) != tuple(shape):
        raise ShapeError(f"{S.fmt(x)} does not broadcast to {S.fmt(shape)}")
    return tuple(shape)


def _sum_to_shape(x: Shape, shape: Shape = ()) -> Shape:
    _broadcast_to_shape(tuple(shape), x)
    return tuple(shape)


def build_registry(xp: Any, backend: Any = None) -> Registry:  # noqa: C901 - one flat table
    """Register every op over namespace ``xp`` and return the registry.

    ``backend`` (a ``service.engine.backend.Backend``) says how values cross to and from the
    device; without one, ``xp`` is NumPy (or a host namespace that takes NumPy arrays).
    """
    if backend is None:
        from service.engine.backend import backend_for

        backend = backend_for(xp)
    reg = Registry(backend=backend.name, xp=xp, host=backend)
    add = reg.register

    def keep_shape(b: Any, x: Any, axis: Any) -> Shape:
        """The shape of a reduction of ``x`` over ``axis`` with keepdims."""
        return S.reduce_shape(b.shape(x), axis, True)

    def reshaped(b: Any, ref: Any, shape: Shape) -> Any:
        return ref if b.shape(ref) == tuple(shape) else b.op("reshape", ref, shape=tuple(shape))

    # --- elementwise binary (NumPy broadcasting; the engine unbroadcasts) -------------------
    def _bin(name: str, fwd: Any, dx: Any, dy: Any, doc: str, **kw: Any) -> None:
        add(Op(name, 2, fwd, (dx, dy), _binary_shape, doc, **kw))

    # The arithmetic operators rather than the ufuncs: identical on arrays (ndarray.__add__
    # is np.add), and on the NumPy scalars that 0-d values run as, scalar arithmetic is
    # several times cheaper than a ufunc call.
    _bin("add", operator.add, lambda b, g, o, x, y: g, lambda b, g, o, x, y: g,
         "x + y; distributes g unchanged to both inputs")
    _bin("sub", operator.sub, lambda b, g, o, x, y: g, lambda b, g, o, x, y: b.op("neg", g),
         "x - y; g to x, -g to y")
    _bin("mul", operator.mul, lambda b, g, o, x, y: b.op("mul", g, y),
         lambda b, g, o, x, y: b.op("mul", g, x),
         "x * y; swaps the inputs: dx = g*y, dy = g*x")
    _bin("div", operator.truediv, lambda b, g, o, x, y: b.op("div", g, y),
         lambda b, g, o, x, y: b.op("neg", b.op("div", b.op("mul", g, o), y)),
         "x / y; dx = g/y, dy = -g*x/y^2")

    def _pow_dx(b: Any, g: Any, o: Any, x: Any, y: Any) -> Any:
        # PyTorch's pow_backward_self: zero where the exponent is zero (avoids 0 * inf).
        d = b.op("mul", b.op("mul", g, y), b.op("pow", x, b.op("sub", y, 1.0)))
        return b.op("select", b.op("is_nonzero", y), d, 0.0)

    def _pow_dy(b: Any, g: Any, o: Any, x: Any, y: Any) -> Any:
        # PyTorch's pow_backward_exponent: zero where base == 0 and exponent >= 0.
        d = b.op("mul", b.op("mul", g, o), b.op("log", x))
        return b.op("select", b.op("pow_zero_base", x, y), 0.0, d)

    _bin("pow", xp.pow, _pow_dx, _pow_dy,
         "x ** y; dx = g*y*x^(y-1), dy = g*x^y*ln(x) (0 where x == 0, y >= 0)")
    _bin("maximum", xp.maximum, lambda b, g, o, x, y: b.op("mul", g, b.op("max_share", x, y)),
         lambda b, g, o, x, y: b.op("mul", g, b.op("max_share", y, x)),
         "elementwise max; routes g to the larger input, split evenly on ties", kinked=True)
    _bin("minimum", xp.minimum, lambda b, g, o, x, y: b.op("mul", g, b.op("max_share", y, x)),
         lambda b, g, o, x, y: b.op("mul", g, b.op("max_share", x, y)),
         "elementwise min; routes g to the smaller input, split evenly on ties", kinked=True)

    # --- elementwise unary ------------------------------------------------------------------
    def _un(name: str, fwd: Any, dx: Any, doc: str, **kw: Any) -> None:
        add(Op(name, 1, fwd, (dx,), _unary_shape, doc, **kw))

    def _sigmoid(x: Any) -> Any:
        # exp(-log(1 + exp(-x))): accurate in relative terms for large |x|, never overflows.
        return xp.exp(-xp.logaddexp(0.0, -x))

    def _relu(x: Any) -> Any:
        return xp.maximum(x, 0.0)

    _un("neg", operator.neg, lambda b, g, o, x: b.op("neg", g), "-x; dx = -g")
    _un("identity", lambda x: x, lambda b, g, o, x: g, "x; dx = g", view=True)
    _un("exp", xp.exp, lambda b, g, o, x: b.op("mul", g, o), "e^x; dx = g*e^x")
    _un("log", xp.log, lambda b, g, o, x: b.op("div", g, x), "ln x; dx = g/x")
    _un("sqrt", xp.sqrt, lambda b, g, o, x: b.op("div", g, b.op("mul", o, 2.0)),
        "sqrt x; dx = g/(2 sqrt x)")
    _un("square", xp.square, lambda b, g, o, x: b.op("mul", g, b.op("mul", x, 2.0)),
        "x^2; dx = 2*x*g")
    _un("abs", xp.abs, lambda b, g, o, x: b.op("mul", g, b.op("sign", x)),
        "|x|; dx = sign(x)*g (0 at 0)", kinked=True)
    # NumPy's ufunc where the namespace has one (not in the standard): one call, no scalar.
    reciprocal = getattr(xp, "reciprocal", None) or (lambda x: xp.divide(1.0, x))
    _un("reciprocal", reciprocal,
        lambda b, g, o, x: b.op("neg", b.op("mul", g, b.op("mul", o, o))), "1/x; dx = -g/x^2")
    _un("sigmoid", _sigmoid,
        lambda b, g, o, x: b.op("mul", g, b.op("mul", o, b.op("sub", 1.0, o))),
        "1/(1+e^-x); dx = g*(1-s)*s")
    _un("tanh", xp.tanh, lambda b, g, o, x: b.op("mul", g, b.op("sub", 1.0, b.op("mul", o, o))),
        "tanh x; dx = g*(1-tanh^2 x)")
    _un("relu", _relu, lambda b, g, o, x: b.op("mul", g, b.op("is_positive", x)),
        "max(0, x); dx = g where x > 0, else 0", kinked=True)
    _un("sin", xp.sin, lambda b, g, o, x: b.op("mul", g, b.op("cos", x)), "sin x; dx = g*cos x")
    _un("cos", xp.cos, lambda b, g, o, x: b.op("neg", b.op("mul", g, b.op("sin", x))),
        "cos x; dx = -g*sin x")

    # --- linear algebra ---------------------------------------------------------------------
    def _matmul_letters(b: Any, a: Any, c: Any) -> tuple[tuple[str, Shape], ...]:
        """Letters and squeezed shapes of ``a``, ``c`` and ``a @ c`` for a contraction.

        Batch axes of size 1 get no letter (a broadcast axis is summed inside the product,
        never materialized); 1-d operands have no ``n`` / ``m``.
        """
        sa, sc = b.shape(a), b.shape(c)
        ab = sa[:-2] if len(sa) >= 2 else ()
        cb = sc[:-2] if len(sc) >= 2 else ()
        batch = S.broadcast_shapes(ab, cb)
        la, lc, lo = [], [], []
        for p, d in enumerate(batch):
            if d == 1:
                continue
            letter = _LETTERS[p]
            lo.append((letter, d))
            for own, side in ((ab, la), (cb, lc)):
                q = p - (len(batch) - len(own))
                if q >= 0 and own[q] != 1:
                    side.append((letter, d))
        if len(sa) >= 2:
            la.append(("n", sa[-2]))
            lo.append(("n", sa[-2]))
        la.append(("k", sa[-1]))
        lc.append(("k", sc[-2] if len(sc) >= 2 else sc[-1]))
        if len(sc) >= 2:
            lc.append(("m", sc[-1]))
            lo.append(("m", sc[-1]))

        def pack(items: list[tuple[str, int]]) -> tuple[str, Shape]:
            return "".join(c for c, _ in items), tuple(d for _, d in items)

        return pack(la), pack(lc), pack(lo)

    def _matmul_dx(b: Any, g: Any, o: Any, a: Any, c: Any) -> Any:
        (la, sa), (lc, sc), (lo, so) = _matmul_letters(b, a, c)
        d = b.op("contract", reshaped(b, g, so), reshaped(b, c, sc), spec=f"{lo},{lc}->{la}")
        return reshaped(b, d, b.shape(a))

    def _matmul_dy(b: Any, g: Any, o: Any, a: Any, c: Any) -> Any:
        (la, sa), (lc, sc), (lo, so) = _matmul_letters(b, a, c)
        d = b.op("contract", reshaped(b, a, sa), reshaped(b, g, so), spec=f"{la},{lo}->{lc}")
        return reshaped(b, d, b.shape(c))

    def _matmul_cost(shapes: Any, out: Shape, attrs: dict[str, Any]) -> int:
        return S.matmul_cost(*shapes)

    add(Op("matmul", 2, xp.matmul, (_matmul_dx, _matmul_dy), S.matmul_shape,
           "x @ y (NumPy semantics); dx = g @ y^T, dy = x^T @ g, batch axes summed",
           cost=_matmul_cost, category="linalg", arg_names=("a", "b")))

    def _dot_shape(a: Shape, b: Shape) -> Shape:
        if not 1 <= len(a) <= 2 or not 1 <= len(b) <= 2:
            raise ShapeError(f"dot takes 1-d or 2-d operands, got {S.fmt(a)} and {S.fmt(b)}")
        return S.matmul_shape(a, b)

    add(Op("dot", 2, xp.matmul, (_matmul_dx, _matmul_dy), _dot_shape,
           "inner product of vectors / matrix product of 1-d or 2-d operands; as matmul",
           cost=_matmul_cost, category="linalg", arg_names=("a", "b")))

    def _transpose(x: Any, axes: Any = None) -> Any:
        return xp.permute_dims(x, tuple(range(xp.asarray(x).ndim - 1, -1, -1))
                               if axes is None else axes)

    def _transpose_dx(b: Any, g: Any, o: Any, x: Any, axes: Any = None) -> Any:
        if axes is None:
            return b.op("transpose", g)
        inverse = [0] * len(axes)
        for i, a in enumerate(axes):
            inverse[a % len(axes)] = i
        return b.op("transpose", g, axes=tuple(inverse))

    add(Op("transpose", 1, _transpose, (_transpose_dx,),
           lambda x, axes=None: S.transpose_shape(x, axes),
           "permutes axes; dx = g permuted back",
           attrs=(Attr("axes", "axes", None, "permutation; null reverses the axes"),),
           category="shape", view=True))

    def _linear(x: Any, w: Any, b: Any) -> Any:
        return xp.matmul(x, w.T) + b

    def _linear_dx(b: Any, g: Any, o: Any, x: Any, w: Any, bias: Any) -> Any:
        return b.op("matmul", g, w)

    def _linear_dw(b: Any, g: Any, o: Any, x: Any, w: Any, bias: Any) -> Any:
        batch = _LETTERS[:len(b.shape(x)) - 1]
        return b.op("contract", g, x, spec=f"{batch}o,{batch}i->oi")

    def _linear_db(b: Any, g: Any, o: Any, x: Any, w: Any, bias: Any) -> Any:
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
           cost=_linear_cost, category="nn", arg_names=("x", "weight", "bias")))

    # --- reductions -------------------------------------------------------------------------
    def _reduction(name: str, fwd: Any, dx: Any, doc: str, nonempty: bool, **kw: Any) -> None:
        def shape(x: Shape, axis: Any = None, keepdims: bool = False) -> Shape:
            return S.reduce_shape(x, axis, keepdims, nonempty=nonempty)

        add(Op(name, 1, fwd, (dx,), shape, doc, attrs=(AXIS, KEEPDIMS), category="reduction",
               **kw))

    def _spread(b: Any, g: Any, x: Any, axis: Any) -> Any:
        """g reshaped so that it broadcasts against x (the reduced axes kept as 1s)."""
        return reshaped(b, g, keep_shape(b, x, axis))

    def _sum_dx(b: Any, g: Any, o: Any, x: Any, axis: Any = None, keepdims: bool = False
                ) -> Any:
        return b.op("broadcast_to", _spread(b, g, x, axis), shape=b.shape(x))

    def _mean_dx(b: Any, g: Any, o: Any, x: Any, axis: Any = None, keepdims: bool = False
                 ) -> Any:
        xs = b.shape(x)
        count = size_of([xs[a] for a in S.normalize_axes(axis, len(xs))])
        scaled = b.op("mul", _spread(b, g, x, axis), 1.0 / count)
        return b.op("broadcast_to", scaled, shape=b.shape(x))

    def _extreme_dx(b: Any, g: Any, o: Any, x: Any, axis: Any = None, keepdims: bool = False
                    ) -> Any:
        share = b.op("extreme_share", x, _spread(b, o, x, axis), axis=axis)
        return b.op("mul", _spread(b, g, x, axis), share)

    def _lse(x: Any, axis: Any = None, keepdims: bool = False) -> Any:
        m = xp.max(x, axis=axis, keepdims=True)
        m = xp.where(xp.isfinite(m), m, 0.0)
        out = xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True)) + m
        if keepdims:
            return out
        return xp.reshape(out, ()) if axis is None else xp.squeeze(out, axis=axis)

    def _lse_dx(b: Any, g: Any, o: Any, x: Any, axis: Any = None, keepdims: bool = False
                ) -> Any:
        p = b.op("exp", b.op("sub", x, _spread(b, o, x, axis)))
        return b.op("mul", _spread(b, g, x, axis), p)

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
               "max over axes; routes g to the maxima, split evenly on ties", True, kinked=True)
    _reduction("min", _min, _extreme_dx,
               "min over axes; routes g to the minima, split evenly on ties", True, kinked=True)
    _reduction("logsumexp", _lse, _lse_dx,
               "log(sum(exp(x))) over axes; dx = g*softmax(x)", True)

    # --- shape ------------------------------------------------------------------------------
    def _reshape(x: Any, shape: Any = ()) -> Any:
        return xp.reshape(x, shape)

    add(Op("reshape", 1, _reshape,
           (lambda b, g, o, x, shape=(): b.op("reshape", g, shape=b.shape(x)),),
           lambda x, shape=(): S.reshape_shape(x, shape),
           "same elements, new shape; dx = g reshaped back",
           attrs=(Attr("shape", "shape", (), "new shape; one dim may be -1"),),
           category="shape", view=True))

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

    def _softmax_dx(b: Any, g: Any, o: Any, x: Any, axis: int = -1) -> Any:
        inner = b.op("sum", b.op("mul", g, o), axis=axis, keepdims=True)
        return b.op("mul", o, b.op("sub", g, inner))

    def _log_softmax(x: Any, axis: int = -1) -> Any:
        z = x - xp.max(x, axis=axis, keepdims=True)
        return z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))

    def _log_softmax_dx(b: Any, g: Any, o: Any, x: Any, axis: int = -1) -> Any:
        total = b.op("sum", g, axis=axis, keepdims=True)
        return b.op("sub", g, b.op("mul", b.op("exp", o), total))

    add(Op("softmax", 1, _softmax, (_softmax_dx,), _softmax_shape,
           "e^x / sum(e^x) along axis; dx = s*(g - sum(g*s))", attrs=(SOFT_AXIS,),
           category="nn"))
    add(Op("log_softmax", 1, _log_softmax, (_log_softmax_dx,), _softmax_shape,
           "x - logsumexp(x) along axis; dx = g - softmax(x)*sum(g)", attrs=(SOFT_AXIS,),
           category="nn"))

    def _sce(s: Any, y: Any) -> Any:
        z = s - xp.max(s, axis=1, keepdims=True)
        lse = xp.log(xp.sum(xp.exp(z), axis=1))
        picked = xp.take_along_axis(z, xp.expand_dims(y, axis=1), axis=1)
        return xp.mean(lse - xp.reshape(picked, (-1,)))

    def _sce_ds(b: Any, g: Any, o: Any, s: Any, y: Any) -> Any:
        p = b.op("softmax", s, axis=1)
        diff = b.op("sub", p, b.op("onehot", y, s))
        return b.op("mul", diff, b.op("mul", g, 1.0 / b.shape(s)[0]))

    add(Op("softmax_cross_entropy", 2, _sce, (_sce_ds, None), _scores_labels_shape,
           "mean over the batch of -log softmax(s)[label]; ds = g*(softmax(s) - onehot)/batch",
           arg_kinds=("float", "label"), arg_names=("logits", "labels"), category="nn"))

    def _hinge_margins(s: Any, y: Any, margin: float) -> Any:
        # take_along_axis and where: the standard has neither fancy indexing nor in-place
        # writes through an index array (CuPy and array-api-strict run the same code).
        sy = xp.take_along_axis(s, xp.expand_dims(y, axis=1), axis=1)
        label = xp.expand_dims(y, axis=1) == xp.arange(s.shape[1], dtype=y.dtype)
        return xp.where(label, 0.0, s - sy + margin)

    def _hinge(s: Any, y: Any, margin: float = 1.0) -> Any:
        return xp.sum(xp.maximum(_hinge_margins(s, y, margin), 0.0)) / s.shape[0]

    def _hinge_ds(b: Any, g: Any, o: Any, s: Any, y: Any, margin: float = 1.0) -> Any:
        active = b.op("hinge_active", s, y, margin=margin)
        return b.op("mul", active, b.op("mul", g, 1.0 / b.shape(s)[0]))

    add(Op("hinge", 2, _hinge, (_hinge_ds, None), _scores_labels_shape,
           "multiclass SVM: mean over rows of sum_j!=y max(0, s_j - s_y + margin); "
           "ds_j = g/batch per active margin, ds_y = -g/batch per active margin",
           attrs=(Attr("margin", "float", 1.0, "the SVM margin (delta)"),),
           arg_kinds=("float", "label"), arg_names=("scores", "labels"), category="nn",
           kinked=True))

    def _mse_shape(p: Shape, t: Shape) -> Shape:
        if p != t:
            raise ShapeError(f"pred {S.fmt(p)} and target {S.fmt(t)} must have the same shape")
        if size_of(p) == 0:
            raise ShapeError("mse of an empty tensor")
        return ()

    def _mse(p: Any, t: Any) -> Any:
        return xp.mean(xp.square(p - t))

    def _mse_dp(b: Any, g: Any, o: Any, p: Any, t: Any) -> Any:
        return b.op("mul", b.op("sub", p, t), b.op("mul", g, 2.0 / size_of(b.shape(p))))

    def _mse_dt(b: Any, g: Any, o: Any, p: Any, t: Any) -> Any:
        return b.op("mul", b.op("sub", t, p), b.op("mul", g, 2.0 / size_of(b.shape(p))))

    add(Op("mse", 2, _mse, (_mse_dp, _mse_dt), _mse_shape,
           "mean((pred - target)^2) over all elements; dpred = 2*g*(pred - target)/n",
           arg_names=("pred", "target"), category="nn"))

    _register_internal(reg, xp)
    return reg


def _register_internal(reg: Registry, xp: Any) -> None:  # noqa: C901 - one flat table
    """The ops backward graphs are built from (hidden from users; see the module doc)."""
    add = reg.register

    def internal(name: str, arity: int, fwd: Any, vjps: tuple[Any, ...], shape: Any, doc: str,
                 **kw: Any) -> None:
        add(Op(name, arity, fwd, vjps, shape, doc, internal=True, category="internal", **kw))

    def as_float(mask: Any, *like: Any) -> Any:
        return xp.astype(mask, xp.result_type(*like))

    # Masks: piecewise constant, so their derivative is zero (None) everywhere it exists.
    internal("is_positive", 1, lambda x: as_float(x > 0, x), (None,), _unary_shape,
             "1 where x > 0, else 0 (relu's derivative)")
    internal("is_nonzero", 1, lambda x: as_float(x != 0, x), (None,), _unary_shape,
             "1 where x != 0, else 0")
    internal("sign", 1, xp.sign, (None,), _unary_shape, "sign(x) (abs's derivative)")
    internal("pow_zero_base", 2, lambda x, y: as_float((x == 0) & (y >= 0), x, y),
             (None, None), _binary_shape, "1 where x == 0 and y >= 0 (pow's d/dy is 0 there)")
    internal("max_share", 2,
             lambda x, y: xp.where(x == y, 0.5, as_float(x > y, x, y)),
             (None, None), _binary_shape, "1 where x > y, 1/2 on ties, else 0")

    def _extreme_share(x: Any, o: Any, axis: Any = None) -> Any:
        mask = as_float(x == o, x)
        return mask / xp.sum(mask, axis=axis, keepdims=True)

    internal("extreme_share", 2, _extreme_share, (None, None), lambda x, o, axis=None: x,
             "1/ties where x equals its reduction's extreme o, else 0",
             attrs=(AXIS,))

    def _onehot(y: Any, s: Any) -> Any:
        return as_float(xp.expand_dims(y, axis=-1) == xp.arange(s.shape[-1], dtype=y.dtype), s)

    internal("onehot", 2, _onehot, (None, None), lambda y, s: s,
             "one-hot rows of labels y, shaped and typed like scores s",
             arg_kinds=("label", "float"))

    def _hinge_active(s: Any, y: Any, margin: float = 1.0) -> Any:
        oh = _onehot(y, s)
        sy = xp.sum(s * oh, axis=1, keepdims=True)
        active = as_float(s - sy + margin > 0, s) * (1.0 - oh)
        return active - oh * xp.sum(active, axis=1, keepdims=True)

    internal("hinge_active", 2, _hinge_active, (None, None), lambda s, y, margin=1.0: s,
             "hinge's d/ds per row: 1 per active margin, minus their count at the label",
             attrs=(Attr("margin", "float", 1.0, "the SVM margin"),),
             arg_kinds=("float", "label"))

    def _select(c: Any, a: Any, b: Any) -> Any:
        return xp.where(c > 0, a, b)

    internal("select", 3, _select,
             (None, lambda b, g, o, c, x, y: b.op("select", c, g, 0.0),
              lambda b, g, o, c, x, y: b.op("select", c, 0.0, g)),
             lambda c, a, b: S.broadcast_shapes(c, a, b), "a where c > 0, else b")

    # sum_to and broadcast_to are each other's VJP: the one place broadcasting is undone.
    def _broadcast_to(x: Any, shape: Any = ()) -> Any:
        return xp.broadcast_to(x, tuple(shape))

    internal("broadcast_to", 1, _broadcast_to,
             (lambda b, g, o, x, shape=(): b.op("sum_to", g, shape=b.shape(x)),),
             _broadcast_to_shape, "x broadcast to shape; dx = g summed back",
             attrs=(Attr("shape", "shape", (), "the target shape"),), view=True)

    def _sum_to(x: Any, shape: Any = ()) -> Any:
        return unbroadcast(xp, x, tuple(shape))

    internal("sum_to", 1, _sum_to,
             (lambda b, g, o, x, shape=(): b.op("broadcast_to", g, shape=b.shape(x)),),
             _sum_to_shape, "x summed over its broadcast axes down to shape; dx = g broadcast",
             attrs=(Attr("shape", "shape", (), "the target shape"),))

    add(Op("contract", 2, _contract_fn(xp),
           (lambda b, g, o, x, y, spec="": b.op("contract", g, y, spec=_swap(spec, 0)),
            lambda b, g, o, x, y, spec="": b.op("contract", x, g, spec=_swap(spec, 1))),
           _contract_shape, "sum of products over the letters missing from the result",
           attrs=(Attr("spec", "str", "", "'xy,yz->xz'"),), cost=_contract_cost,
           category="internal", internal=True))


def _swap(spec: str, which: int) -> str:
    """The spec of a contraction's VJP for operand ``which`` (the result takes its place)."""
    x, y, z = parse_spec(spec)
    return f"{z},{y}->{x}" if which == 0 else f"{x},{z}->{y}"


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


def _contract_fn(xp: Any) -> Any:
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
        r = xp.matmul(a, b)
        order = batch + xfree + yfree
        r = xp.reshape(r, tuple(dims[c] for c in order))
        perm = tuple(order.index(c) for c in sz)
        return r if perm == tuple(range(len(perm))) else xp.permute_dims(r, perm)

    return contract
