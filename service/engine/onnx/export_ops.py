"""ONNX lowerings of the registry's elementwise, linear-algebra, reduction, shape and loss
ops, public and internal: one function per op, ``lower(em, args, shapes, out, attrs)``
→ the name of the result, written in standard ONNX ops (opset 18) with static shapes.

Each lowering computes what the op's forward computes, in the same order where rounding
could tell (softmax and logsumexp subtract the maximum first, ``var`` centres before it
squares), so an exported model gives gradserve's numbers. ``erf`` in float64 is Cody's
rational approximation written in ONNX arithmetic (onnxruntime has no float64 ``Erf``);
the windows, normalizations and dropout are in ``export_windows``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from service.engine import shapes as S
from service.engine.onnx.export_emit import INT64_MIN, Emitter
from service.engine.ops import elementwise as E
from service.engine.ops import erf as ERF
from service.engine.ops.indexing import pad_plan, slice_key
from service.engine.ops.internal import parse_spec

Shape = tuple[int, ...]
Lowering = Callable[[Emitter, list[str], list[Shape], Shape, dict[str, Any]], str]
TABLE: dict[str, Lowering] = {}


def lowers(*names: str) -> Callable[[Lowering], Lowering]:
    def put(fn: Lowering) -> Lowering:
        for name in names:
            TABLE[name] = fn
        return fn

    return put


def simple(name: str, op_type: str) -> None:
    TABLE[name] = lambda em, a, s, o, at: em.node(op_type, a)


for _name, _type in (("add", "Add"), ("sub", "Sub"), ("mul", "Mul"), ("div", "Div"),
                     ("pow", "Pow"), ("maximum", "Max"), ("minimum", "Min"), ("neg", "Neg"),
                     ("identity", "Identity"), ("exp", "Exp"), ("log", "Log"),
                     ("sqrt", "Sqrt"), ("abs", "Abs"), ("reciprocal", "Reciprocal"),
                     ("sigmoid", "Sigmoid"), ("tanh", "Tanh"), ("relu", "Relu"),
                     ("sin", "Sin"), ("cos", "Cos"), ("sign", "Sign"), ("floor", "Floor"),
                     ("ceil", "Ceil"), ("matmul", "MatMul"), ("dot", "MatMul")):
    simple(_name, _type)


# --- erf and the normal CDF: Cody's approximation, traced into ONNX nodes -----------------

class Sym:
    """A value being written, with Python's arithmetic: ``ops/erf.py``'s own code, run on
    these, writes its approximation as ONNX nodes."""

    __slots__ = ("em", "name")

    def __init__(self, em: Emitter, name: str) -> None:
        self.em, self.name = em, name

    def _of(self, other: Any) -> str:
        return other.name if isinstance(other, Sym) else self.em.const(float(other))

    def _op(self, op_type: str, *args: Any) -> Sym:
        return Sym(self.em, self.em.node(op_type, [self._of(a) for a in args]))

    def __add__(self, o: Any) -> Sym: return self._op("Add", self, o)
    def __radd__(self, o: Any) -> Sym: return self._op("Add", o, self)
    def __sub__(self, o: Any) -> Sym: return self._op("Sub", self, o)
    def __rsub__(self, o: Any) -> Sym: return self._op("Sub", o, self)
    def __mul__(self, o: Any) -> Sym: return self._op("Mul", self, o)
    def __rmul__(self, o: Any) -> Sym: return self._op("Mul", o, self)
    def __truediv__(self, o: Any) -> Sym: return self._op("Div", self, o)
    def __rtruediv__(self, o: Any) -> Sym: return self._op("Div", o, self)
    def __neg__(self) -> Sym: return self._op("Neg", self)
    def __lt__(self, o: Any) -> Sym: return self._op("Less", self, o)
    def __le__(self, o: Any) -> Sym: return self._op("LessOrEqual", self, o)


class SymNamespace:
    """The array functions ``ops/erf.py`` calls, on :class:`Sym` values."""

    @staticmethod
    def abs(x: Sym) -> Sym:
        return x._op("Abs", x)

    @staticmethod
    def exp(x: Sym) -> Sym:
        return x._op("Exp", x)

    @staticmethod
    def minimum(x: Sym, y: Any) -> Sym:
        return x._op("Min", x, y)

    @staticmethod
    def maximum(x: Sym, y: Any) -> Sym:
        return x._op("Max", x, y)

    @staticmethod
    def clip(x: Sym, lo: float, hi: float) -> Sym:
        return x._op("Min", x._op("Max", x, lo), hi)

    @staticmethod
    def trunc(x: Sym) -> Sym:
        return x._op("Mul", x._op("Sign", x), x._op("Floor", x._op("Abs", x)))

    @staticmethod
    def where(c: Sym, a: Any, b: Any) -> Sym:
        return c._op("Where", c, a, b)


def erf(em: Emitter, x: str) -> str:
    if em.dtype == "float32":
        return em.node("Erf", [x])  # onnxruntime has it in float32 only
    return ERF.erf_of(SymNamespace, Sym(em, x)).name


def normal_cdf(em: Emitter, x: str) -> str:
    if em.dtype == "float32":
        half = em.node("Mul", [em.node("Erf", [em.node("Mul", [x, em.const(E.SQRT1_2)])]),
                               em.const(0.5)])
        return em.node("Add", [half, em.const(0.5)])
    return ERF.normal_cdf_of(SymNamespace, Sym(em, x)).name


# --- elementwise ------------------------------------------------------------------------

@lowers("square")
def _square(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    return em.node("Mul", [a[0], a[0]])


@lowers("erf")
def _erf(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    return erf(em, a[0])


@lowers("gelu")
def _gelu(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    x = a[0]
    if at.get("approximate") == "tanh":
        cube = em.node("Mul", [em.node("Mul", [x, x]), x])
        inner = em.node("Add", [x, em.node("Mul", [cube, em.const(E.GELU_C)])])
        t = em.node("Tanh", [em.node("Mul", [inner, em.const(E.GELU_K)])])
        half = em.node("Mul", [em.const(0.5), x])
        return em.node("Mul", [half, em.node("Add", [em.const(1.0), t])])
    return em.node("Mul", [x, normal_cdf(em, x)])


def _positive(em: Emitter, x: str) -> str:
    zero = em.array(np.int64(0)) if x in em.labels else em.const(0.0)
    return em.node("Greater", [x, zero])


@lowers("leaky_relu")
def _leaky(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    x = a[0]
    return em.where(_positive(em, x), x, em.node("Mul", [x, em.const(at["negative_slope"])]))


@lowers("elu")
def _elu(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    x = a[0]
    neg = em.expm1(em.node("Min", [x, em.const(0.0)]))
    return em.where(_positive(em, x), x, em.node("Mul", [em.const(at["alpha"]), neg]))


@lowers("softplus")
def _softplus(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    x, beta, threshold = a[0], at["beta"], at["threshold"]
    bx = em.node("Mul", [x, em.const(beta)])
    e = em.node("Exp", [em.node("Min", [bx, em.const(threshold)])])
    smooth = em.node("Div", [em.log1p(e), em.const(beta)])
    return em.where(em.node("Greater", [bx, em.const(threshold)]), x, smooth)


@lowers("clip")
def _clip(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    x = a[0]
    if at.get("min") is not None:
        x = em.node("Max", [x, em.const(at["min"])])
    if at.get("max") is not None:
        x = em.node("Min", [x, em.const(at["max"])])
    return x


@lowers("in_bounds")
def _in_bounds(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    x = a[0]
    inside = em.node("Equal", [x, x])
    if at.get("min") is not None:
        inside = em.node("And", [inside, em.node("GreaterOrEqual", [x, em.const(at["min"])])])
    if at.get("max") is not None:
        inside = em.node("And", [inside, em.node("LessOrEqual", [x, em.const(at["max"])])])
    return em.cast(inside)


@lowers("where")
def _where(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    cond = em.node("Not", [em.node("Equal", [a[0], em.array(np.int64(0))])])
    return em.where(cond, a[1], a[2])


@lowers("select")
def _select(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    return em.where(_positive(em, a[0]), a[1], a[2])


@lowers("is_positive")
def _is_positive(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]
                 ) -> str:
    return em.cast(_positive(em, a[0]))


@lowers("is_nonzero")
def _is_nonzero(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]
                ) -> str:
    return em.cast(em.node("Not", [em.node("Equal", [a[0], em.const(0.0)])]))


@lowers("pow_zero_base")
def _pow_zero_base(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]
                   ) -> str:
    zero = em.node("Equal", [a[0], em.const(0.0)])
    return em.cast(em.node("And", [zero, em.node("GreaterOrEqual", [a[1], em.const(0.0)])]))


@lowers("max_share")
def _max_share(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    x, y = a
    return em.where(em.node("Equal", [x, y]), em.const(0.5),
                    em.cast(em.node("Greater", [x, y])))


@lowers("extreme_share")
def _extreme_share(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]
                   ) -> str:
    mask = em.cast(em.node("Equal", [a[0], a[1]]))
    axes = S.normalize_axes(at.get("axis"), len(s[0]))
    return em.node("Div", [mask, em.reduce("ReduceSum", mask, axes)])


# --- linear algebra ---------------------------------------------------------------------

@lowers("transpose")
def _transpose(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    n = len(s[0])
    if n == 0:
        return em.node("Identity", a)
    axes = at.get("axes")
    perm = list(range(n - 1, -1, -1)) if axes is None else [x % n for x in axes]
    return em.node("Transpose", [a[0]], perm=perm)


@lowers("linear")
def _linear(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    wt = em.node("Transpose", [a[1]], perm=[1, 0])
    return em.node("Add", [em.node("MatMul", [a[0], wt]), a[2]])


@lowers("contract")
def _contract(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    x, y, z = parse_spec(at["spec"])
    return em.node("Einsum", a, equation=f"{x},{y}->{z}")


# --- reductions -------------------------------------------------------------------------

def _axes(s: list[Shape], at: dict[str, Any]) -> tuple[int, ...]:
    return S.normalize_axes(at.get("axis"), len(s[0]))


def _reducer(op_type: str) -> Lowering:
    def lower(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
        return em.reshape(em.reduce(op_type, a[0], _axes(s, at)), o)

    return lower


for _name, _type in (("sum", "ReduceSum"), ("mean", "ReduceMean"), ("max", "ReduceMax"),
                     ("min", "ReduceMin"), ("prod", "ReduceProd")):
    TABLE[_name] = _reducer(_type)


@lowers("logsumexp")
def _logsumexp(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    axes = _axes(s, at)
    if not axes:
        return a[0]
    m = em.reduce("ReduceMax", a[0], axes)
    finite = em.node("Not", [em.node("Or", [em.node("IsInf", [m]), em.node("IsNaN", [m])])])
    m = em.where(finite, m, em.const(0.0))
    total = em.reduce("ReduceSum", em.node("Exp", [em.node("Sub", [a[0], m])]), axes)
    return em.reshape(em.node("Add", [em.node("Log", [total]), m]), o)


def _variance(em: Emitter, a: list[str], s: list[Shape], at: dict[str, Any]) -> str:
    axes = _axes(s, at)
    n = math.prod(s[0][i] for i in axes)
    d = em.node("Sub", [a[0], em.reduce("ReduceMean", a[0], axes)])
    total = em.reduce("ReduceSum", em.node("Mul", [d, d]), axes)
    return em.node("Div", [total, em.const(n - at["correction"])])


@lowers("var")
def _var(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    return em.reshape(_variance(em, a, s, at), o)


@lowers("std")
def _std(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    return em.reshape(em.node("Sqrt", [_variance(em, a, s, at)]), o)


@lowers("norm")
def _norm(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    axes, x = _axes(s, at), a[0]
    if at["ord"] == 1:
        r = em.reduce("ReduceSum", em.node("Abs", [x]), axes)
    elif at["ord"] == "inf":
        r = em.reduce("ReduceMax", em.node("Abs", [x]), axes)
    else:
        r = em.node("Sqrt", [em.reduce("ReduceSum", em.node("Mul", [x, x]), axes)])
    return em.reshape(r, o)


# --- shape ------------------------------------------------------------------------------

@lowers("reshape", "flatten", "squeeze", "unsqueeze")
def _to_shape(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    return em.reshape(a[0], o, s[0]) if s[0] != o else em.node("Identity", a)


@lowers("expand", "broadcast_to")
def _expand(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    return em.node("Expand", [a[0], em.ints(o)])


@lowers("sum_to")
def _sum_to(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    have = s[0]
    lead = len(have) - len(o)
    axes = list(range(lead)) + [i + lead for i, d in enumerate(o) if d == 1
                                and have[i + lead] != 1]
    r = em.reduce("ReduceSum", a[0], axes)
    return em.reshape(r, o) if axes else em.reshape(r, o, have)


@lowers("concat")
def _concat(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    if len(a) == 1:
        return em.node("Identity", a)
    return em.node("Concat", a, axis=at["axis"] % len(s[0]))


@lowers("stack")
def _stack(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    axis = at["axis"] % (len(s[0]) + 1)
    parts = [em.node("Unsqueeze", [x, em.ints([axis])]) for x in a]
    return parts[0] if len(parts) == 1 else em.node("Concat", parts, axis=axis)


def strided_slice(em: Emitter, x: str, key: tuple[slice, ...]) -> str:
    """``x[key]`` for normalized slices (``slice_key``'s form)."""
    axes, starts, ends, steps = [], [], [], []
    for i, k in enumerate(key):
        axes.append(i)
        starts.append(k.start)
        ends.append(INT64_MIN if k.stop is None else k.stop)  # a step < 0 down to index 0
        steps.append(k.step)
    if not axes:
        return em.node("Identity", [x])
    return em.node("Slice", [x, em.ints(starts), em.ints(ends), em.ints(axes), em.ints(steps)])


@lowers("slice")
def _slice(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    return strided_slice(em, a[0], slice_key(s[0], at["starts"], at["ends"], at["axes"],
                                             at["steps"]))


@lowers("unslice")
def _unslice(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    shape = tuple(at["shape"])
    key = slice_key(shape, at["starts"], at["ends"], at["axes"], at["steps"])
    if all(k.step == 1 for k in key):
        begins = [k.start for k in key]
        ends = [d - (k.stop if k.stop is not None else d) for k, d in zip(key, shape)]
        return em.node("Pad", [a[0], em.ints(begins + ends), em.const(0.0)])
    # A strided slice: its positions, known from the static shape, scattered into zeros.
    where = np.arange(math.prod(shape), dtype=np.int64).reshape(shape)[key].reshape(-1, 1)
    zeros = em.const(np.zeros(math.prod(shape)))
    flat = em.node("ScatterND", [zeros, em.array(where), em.reshape(a[0], (-1,))])
    return em.reshape(flat, shape)


@lowers("pad")
def _pad(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    if not s[0] or not any(at["pads"] or ()):
        return em.node("Identity", a)
    out, src, dst = pad_plan(s[0], at["pads"])
    x = strided_slice(em, a[0], tuple(slice(lo, hi, 1) for lo, hi in src))
    pads = [lo for lo, _ in dst] + [d - hi for (_, hi), d in zip(dst, out)]
    return em.node("Pad", [x, em.ints(pads), em.const(at["value"])])


def _nonnegative(em: Emitter, i: str, n: int) -> str:
    neg = em.node("Less", [i, em.array(np.int64(0))])
    return em.where(neg, em.node("Add", [i, em.array(np.int64(n))]), i)


@lowers("gather")
def _gather(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    return em.node("Gather", a, axis=at["axis"] % len(s[0]))


@lowers("scatter_add")
def _scatter_add(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]
                 ) -> str:
    shape = tuple(at["shape"])
    ax = at["axis"] % len(shape)
    k = math.prod(s[1])
    zeros = em.const(np.zeros(shape))
    if k == 0:
        return zeros
    rows_shape = (*shape[:ax], k, *shape[ax + 1:])
    rows = em.reshape(a[0], rows_shape)
    flat = _nonnegative(em, em.reshape(a[1], (k,)), shape[ax])
    lined = em.reshape(flat, [1] * ax + [k] + [1] * (len(shape) - ax - 1))
    idx = em.node("Expand", [lined, em.ints(rows_shape)])
    return em.node("ScatterElements", [zeros, idx, rows], axis=ax, reduction="add")


# --- nn and the losses ------------------------------------------------------------------

def _shifted(em: Emitter, x: str, axis: int) -> str:
    return em.node("Sub", [x, em.reduce("ReduceMax", x, [axis])])


@lowers("softmax")
def _softmax(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    axis = at["axis"] % len(s[0])
    e = em.node("Exp", [_shifted(em, a[0], axis)])
    return em.node("Div", [e, em.reduce("ReduceSum", e, [axis])])


@lowers("log_softmax")
def _log_softmax(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]
                 ) -> str:
    axis = at["axis"] % len(s[0])
    z = _shifted(em, a[0], axis)
    total = em.reduce("ReduceSum", em.node("Exp", [z]), [axis])
    return em.node("Sub", [z, em.node("Log", [total])])


def _picked(em: Emitter, s: str, y: str) -> str:
    """s[i, y[i]] as (N, 1)."""
    return em.node("GatherElements", [s, em.node("Unsqueeze", [y, em.ints([1])])], axis=1)


@lowers("softmax_cross_entropy")
def _sce(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    z = _shifted(em, a[0], 1)
    lse = em.node("Log", [em.reduce("ReduceSum", em.node("Exp", [z]), [1], keepdims=False)])
    picked = em.reshape(_picked(em, z, a[1]), (-1,))
    return em.reduce("ReduceMean", em.node("Sub", [lse, picked]), [0], keepdims=False)


def _onehot(em: Emitter, y: str, classes: int) -> str:
    """Booleans: y's entries against 0..classes-1 along a new last axis."""
    hit = em.node("Unsqueeze", [y, em.ints([-1])])
    return em.node("Equal", [hit, em.array(np.arange(classes, dtype=np.int64))])


@lowers("hinge")
def _hinge(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    sc, y = a
    n, c = s[0]
    margins = em.node("Add", [em.node("Sub", [sc, _picked(em, sc, y)]), em.const(at["margin"])])
    kept = em.where(_onehot(em, y, c), em.const(0.0), margins)
    total = em.reduce("ReduceSum", em.node("Max", [kept, em.const(0.0)]), [0, 1], False)
    return em.node("Div", [total, em.const(float(n))])


@lowers("mse")
def _mse(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    d = em.node("Sub", a)
    sq = em.node("Mul", [d, d])
    return em.reshape(em.reduce("ReduceMean", sq, list(range(len(s[0])))), ())


@lowers("onehot")
def _onehot_op(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    return em.cast(_onehot(em, a[0], s[1][-1]))


@lowers("hinge_active")
def _hinge_active(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]
                  ) -> str:
    sc, y = a
    oh = em.cast(_onehot(em, y, s[0][-1]))
    sy = em.reduce("ReduceSum", em.node("Mul", [sc, oh]), [1])
    margins = em.node("Add", [em.node("Sub", [sc, sy]), em.const(at["margin"])])
    active = em.node("Mul", [em.cast(_positive(em, margins)),
                             em.node("Sub", [em.const(1.0), oh])])
    per_row = em.reduce("ReduceSum", active, [1])
    return em.node("Sub", [active, em.node("Mul", [oh, per_row])])
