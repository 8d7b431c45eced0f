"""Neural-net ops: ``softmax``, ``log_softmax`` and the losses (``softmax_cross_entropy``,
``hinge``, ``mse``). The losses' fused backward pieces (``onehot``, ``hinge_active``) are
internal ops (``internal``)."""

from __future__ import annotations

from typing import Any

from service.engine import shapes as S
from service.engine.registry import Attr, Forward, OpDef, Shape, ShapeError, size_of

SOFT_AXIS = Attr("axis", "int", -1, "the axis the distribution runs along")


def _softmax_shape(x: Shape, axis: int = -1) -> Shape:
    if not x:
        raise ShapeError("softmax needs at least a 1-d tensor")
    (a,) = S.normalize_axes(axis, len(x))
    if x[a] == 0:  # as for max/logsumexp: the row max of an empty axis does not exist
        raise ShapeError(f"cannot normalize over the zero-size axis {axis} of {S.fmt(x)}")
    return x


def _softmax(xp: Any) -> Forward:
    def softmax(x: Any, axis: int = -1) -> Any:
        e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
        return e / xp.sum(e, axis=axis, keepdims=True)

    return softmax


def _softmax_dx(b: Any, g: Any, o: Any, x: Any, axis: int = -1) -> Any:
    inner = b.op("sum", b.op("mul", g, o), axis=axis, keepdims=True)
    return b.op("mul", o, b.op("sub", g, inner))


def _log_softmax(xp: Any) -> Forward:
    def log_softmax(x: Any, axis: int = -1) -> Any:
        z = x - xp.max(x, axis=axis, keepdims=True)
        return z - xp.log(xp.sum(xp.exp(z), axis=axis, keepdims=True))

    return log_softmax


def _log_softmax_dx(b: Any, g: Any, o: Any, x: Any, axis: int = -1) -> Any:
    total = b.op("sum", g, axis=axis, keepdims=True)
    return b.op("sub", g, b.op("mul", b.op("exp", o), total))


def _scores_labels_shape(scores: Shape, labels: Shape, **_: Any) -> Shape:
    if len(scores) != 2:
        raise ShapeError(f"scores must be (batch, classes), got {S.fmt(scores)}")
    if labels != scores[:1]:
        raise ShapeError(f"labels must be ({scores[0]},) for scores {S.fmt(scores)}, "
                         f"got {S.fmt(labels)}")
    if scores[0] == 0 or scores[1] == 0:
        raise ShapeError("scores must have at least one row and one class")
    return ()


def _sce(xp: Any) -> Forward:
    def softmax_cross_entropy(s: Any, y: Any) -> Any:
        z = s - xp.max(s, axis=1, keepdims=True)
        lse = xp.log(xp.sum(xp.exp(z), axis=1))
        picked = xp.take_along_axis(z, xp.expand_dims(y, axis=1), axis=1)
        return xp.mean(lse - xp.reshape(picked, (-1,)))

    return softmax_cross_entropy


def _sce_ds(b: Any, g: Any, o: Any, s: Any, y: Any) -> Any:
    p = b.op("softmax", s, axis=1)
    diff = b.op("sub", p, b.op("onehot", y, s))
    return b.op("mul", diff, b.op("mul", g, 1.0 / b.shape(s)[0]))


def _hinge_margins(xp: Any, s: Any, y: Any, margin: float) -> Any:
    # take_along_axis and where: the standard has neither fancy indexing nor in-place
    # writes through an index array (CuPy and array-api-strict run the same code).
    sy = xp.take_along_axis(s, xp.expand_dims(y, axis=1), axis=1)
    label = xp.expand_dims(y, axis=1) == xp.arange(s.shape[1], dtype=y.dtype)
    return xp.where(label, 0.0, s - sy + margin)


def _hinge(xp: Any) -> Forward:
    def hinge(s: Any, y: Any, margin: float = 1.0) -> Any:
        return xp.sum(xp.maximum(_hinge_margins(xp, s, y, margin), 0.0)) / s.shape[0]

    return hinge


def _hinge_ds(b: Any, g: Any, o: Any, s: Any, y: Any, margin: float = 1.0) -> Any:
    active = b.op("hinge_active", s, y, margin=margin)
    return b.op("mul", active, b.op("mul", g, 1.0 / b.shape(s)[0]))


def _mse_shape(p: Shape, t: Shape) -> Shape:
    if p != t:
        raise ShapeError(f"pred {S.fmt(p)} and target {S.fmt(t)} must have the same shape")
    if size_of(p) == 0:
        raise ShapeError("mse of an empty tensor")
    return ()


def _mse(xp: Any) -> Forward:
    def mse(p: Any, t: Any) -> Any:
        return xp.mean(xp.square(p - t))

    return mse


def _mse_dp(b: Any, g: Any, o: Any, p: Any, t: Any) -> Any:
    return b.op("mul", b.op("sub", p, t), b.op("mul", g, 2.0 / size_of(b.shape(p))))


def _mse_dt(b: Any, g: Any, o: Any, p: Any, t: Any) -> Any:
    return b.op("mul", b.op("sub", t, p), b.op("mul", g, 2.0 / size_of(b.shape(p))))


OPS = (
    OpDef("softmax", 1, _softmax, (_softmax_dx,), _softmax_shape,
          "e^x / sum(e^x) along axis; dx = s*(g - sum(g*s))", attrs=(SOFT_AXIS,),
          category="nn",
          batching="axis"),
    OpDef("log_softmax", 1, _log_softmax, (_log_softmax_dx,), _softmax_shape,
          "x - logsumexp(x) along axis; dx = g - softmax(x)*sum(g)", attrs=(SOFT_AXIS,),
          category="nn",
          batching="axis"),
    OpDef("softmax_cross_entropy", 2, _sce, (_sce_ds, None), _scores_labels_shape,
          "mean over the batch of -log softmax(s)[label]; ds = g*(softmax(s) - onehot)/batch",
          arg_kinds=("float", "label"), arg_names=("logits", "labels"), category="nn",
          batching="softmax_cross_entropy"),
    OpDef("hinge", 2, _hinge, (_hinge_ds, None), _scores_labels_shape,
          "multiclass SVM: mean over rows of sum_j!=y max(0, s_j - s_y + margin); "
          "ds_j = g/batch per active margin, ds_y = -g/batch per active margin",
          attrs=(Attr("margin", "float", 1.0, "the SVM margin (delta)"),),
          arg_kinds=("float", "label"), arg_names=("scores", "labels"), category="nn",
          kinked=True,
          batching="hinge"),
    OpDef("mse", 2, _mse, (_mse_dp, _mse_dt), _mse_shape,
          "mean((pred - target)^2) over all elements; dpred = 2*g*(pred - target)/n",
          arg_names=("pred", "target"), category="nn",
          batching="mse"),
)
