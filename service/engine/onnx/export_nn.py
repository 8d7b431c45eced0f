"""ONNX lowerings of the activations, the masks and ``select`` of the backward graphs,
softmax and the losses (see ``export_ops`` for the table they join).

``erf`` in float64 is Cody's rational approximation written in ONNX arithmetic: the
engine's own code (``ops/erf.py``) run on :class:`Sym` values, which write a node for each
operation (onnxruntime has no float64 ``Erf``). ``elu`` and ``softplus`` use the emitter's
accurate ``expm1``/``log1p``, which ONNX lacks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from service.engine import shapes as S
from service.engine.onnx.export_emit import Emitter
from service.engine.onnx.export_ops import TABLE, Shape, lowers
from service.engine.ops import elementwise as E
from service.engine.ops import erf as ERF

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


__all__ = ["TABLE", "erf", "normal_cdf"]
