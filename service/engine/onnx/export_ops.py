"""ONNX lowerings of the registry's elementwise, linear-algebra, reduction, shape and loss
ops, public and internal: one function per op, ``lower(em, args, shapes, out, attrs)``
→ the name of the result, written in standard ONNX ops (opset 18) with static shapes.

Each lowering computes what the op's forward computes, in the same order where rounding
could tell (softmax and logsumexp subtract the maximum first, ``var`` centres before it
squares), so an exported model gives gradserve's numbers. ``erf`` in float64 is Cody's
rational approximation written in ONNX arithmetic (onnxruntime has no float64 ``Erf``);
the activations, masks and losses are in ``export_nn``, the windows, normalizations and
dropout in ``export_windows``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from service.engine import shapes as S
from service.engine.onnx.export_emit import INT64_MIN, Emitter
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
                     ("ceil", "Ceil")):
    simple(_name, _type)


# --- linear algebra ---------------------------------------------------------------------

@lowers("transpose")
def _transpose(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    n = len(s[0])
    if n == 0:
        return em.node("Identity", a)
    axes = at.get("axes")
    perm = list(range(n - 1, -1, -1)) if axes is None else [x % n for x in axes]
    return em.node("Transpose", [a[0]], perm=perm)


def _empty(shapes: list[Shape]) -> bool:
    return any(math.prod(sh) == 0 for sh in shapes)


# A product over an empty axis is zeros; onnxruntime's MatMul and Einsum crash the process
# on one (a division by zero), so it is written as the constant it is.
@lowers("matmul", "dot")
def _matmul(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    return em.const(np.zeros(o)) if _empty(s) else em.node("MatMul", a)


@lowers("linear")
def _linear(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    if _empty(s[:2]):
        return em.node("Expand", [a[2], em.ints(o)])
    wt = em.node("Transpose", [a[1]], perm=[1, 0])
    return em.node("Add", [em.node("MatMul", [a[0], wt]), a[2]])


@lowers("contract")
def _contract(em: Emitter, a: list[str], s: list[Shape], o: Shape, at: dict[str, Any]) -> str:
    if _empty(s):
        return em.const(np.zeros(o))
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
