"""Linear algebra: ``matmul`` (NumPy ``@``), ``dot``, ``transpose`` and ``linear``.

The VJPs of the products are ``contract`` nodes (``internal``): bilinear products whose
broadcast batch axes are summed inside the product, never materialized.
"""

from __future__ import annotations

import math
from typing import Any

from service.engine import shapes as S
from service.engine.ops.common import reshaped
from service.engine.ops.products import rows_matmul
from service.engine.registry import Attr, Forward, OpDef, Shape, ShapeError, size_of

_LETTERS = "abcdefghjlpqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"  # n k m o i are taken below


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


def _dot_shape(a: Shape, b: Shape) -> Shape:
    if not 1 <= len(a) <= 2 or not 1 <= len(b) <= 2:
        raise ShapeError(f"dot takes 1-d or 2-d operands, got {S.fmt(a)} and {S.fmt(b)}")
    return S.matmul_shape(a, b)


def _transpose(xp: Any) -> Forward:
    def transpose(x: Any, axes: Any = None) -> Any:
        return xp.permute_dims(x, tuple(range(xp.asarray(x).ndim - 1, -1, -1))
                               if axes is None else axes)

    return transpose


def _transpose_dx(b: Any, g: Any, o: Any, x: Any, axes: Any = None) -> Any:
    if axes is None:
        return b.op("transpose", g)
    inverse = [0] * len(axes)
    for i, a in enumerate(axes):
        inverse[a % len(axes)] = i
    return b.op("transpose", g, axes=tuple(inverse))


def _matmul(xp: Any) -> Forward:
    """``xp.matmul``, a stack of rows against one matrix as one matrix product: NumPy
    runs ``(B, 1, k) @ (k, n)`` as B matrix-vector products, each reading all of the
    matrix (a batched wide layer, B times its weights' memory traffic); as
    ``(B, k) @ (k, n)`` BLAS reads them once (a few rows of it in the form
    ``products.rows_matmul`` picks)."""

    def mm(x: Any, y: Any) -> Any:
        shape = getattr(x, "shape", ())
        if len(shape) > 2 and len(getattr(y, "shape", ())) == 2:
            rows = math.prod(shape[:-1])  # (not -1: a zero-size x has no such reshape)
            out = rows_matmul(xp, xp.reshape(x, (rows, shape[-1])), y)
            return xp.reshape(out, (*shape[:-1], y.shape[-1]))
        return rows_matmul(xp, x, y)  # (anything but two 2-d arrays: xp.matmul itself)

    return mm


def _linear(xp: Any) -> Forward:
    def linear(x: Any, w: Any, b: Any) -> Any:
        return rows_matmul(xp, x, w.T) + b

    return linear


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


OPS = (
    OpDef("matmul", 2, _matmul, (_matmul_dx, _matmul_dy), S.matmul_shape,
          "x @ y (NumPy semantics); dx = g @ y^T, dy = x^T @ g, batch axes summed",
          cost=_matmul_cost, category="linalg", arg_names=("a", "b"), batching="matmul"),
    OpDef("dot", 2, lambda xp: xp.matmul, (_matmul_dx, _matmul_dy), _dot_shape,
          "inner product of vectors / matrix product of 1-d or 2-d operands; as matmul",
          cost=_matmul_cost, category="linalg", arg_names=("a", "b"), batching="matmul"),
    OpDef("transpose", 1, _transpose, (_transpose_dx,),
          lambda x, axes=None: S.transpose_shape(x, axes),
          "permutes axes; dx = g permuted back",
          attrs=(Attr("axes", "axes", None, "permutation; null reverses the axes"),),
          category="shape", view=True,
          batching="transpose"),
    OpDef("linear", 3, _linear, (_linear_dx, _linear_dw, _linear_db), _linear_shape,
          "x @ W^T + b (PyTorch Linear); dx = g @ W, dW = g^T @ x, db = sum of g over batch",
          cost=_linear_cost, category="nn", arg_names=("x", "weight", "bias"),
          batching="linear"),
)
