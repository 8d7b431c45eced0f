"""Lowerings of the elementwise, linear-algebra, softmax and reduction op types.

Binary ops broadcast as NumPy does, which is ONNX's multidirectional broadcasting, so they
map one to one. On values known at import (shape arithmetic) they are folded; a symbolic
dim in such arithmetic becomes an unknown dim (see lower.py's ``Reshape``).
"""

from __future__ import annotations

import operator
from typing import Any

import numpy as np

from service.engine.onnx.lower import K, Lowerer, T, foldable
from service.engine.onnx.table import lowers

UNARY = {"Neg": ("neg", np.negative), "Exp": ("exp", np.exp), "Log": ("log", np.log),
         "Sqrt": ("sqrt", np.sqrt), "Abs": ("abs", np.abs),
         "Reciprocal": ("reciprocal", np.reciprocal), "Sigmoid": ("sigmoid", None),
         "Tanh": ("tanh", np.tanh), "Relu": ("relu", None), "Erf": ("erf", None),
         "Sin": ("sin", np.sin), "Cos": ("cos", np.cos), "Floor": ("floor", np.floor),
         "Ceil": ("ceil", np.ceil), "Sign": ("sign", np.sign)}
BINARY = {"Add": ("add", operator.add), "Sub": ("sub", operator.sub),
          "Mul": ("mul", operator.mul), "Div": ("div", None), "Pow": ("pow", np.power)}


def _fold_binary(lw: Lowerer, op_type: str, a: K, b: K) -> K:
    fn = BINARY[op_type][1]
    if not a.symbolic and not b.symbolic:
        if op_type == "Div":
            if a.arr.dtype.kind in "iu" and b.arr.dtype.kind in "iu":
                if np.any(b.arr == 0):
                    raise lw.fail("it divides by zero in a constant")
                return K(np.trunc(a.arr / b.arr).astype(a.arr.dtype))
            return K(np.asarray(a.arr / b.arr))
        return K(np.asarray(fn(a.arr, b.arr)))
    # Shape arithmetic with a symbolic dim: the result is a dim unknown until run time.
    x, y = np.broadcast_arrays(a.arr.astype(object), b.arr.astype(object))
    out = np.empty(x.shape, dtype=object)
    for i, (p, q) in enumerate(zip(x.flat, y.flat)):
        both = isinstance(p, int | np.integer) and isinstance(q, int | np.integer)
        out.flat[i] = int(fn(p, q) if fn is not None else int(p / q)) if both \
            else f"?{op_type}({p},{q})"
    return K(out)


@lowers(*BINARY, uses={k: (v[0],) for k, v in BINARY.items()},
        note="NumPy broadcasting (ONNX's multidirectional); folded on constants")
def binary(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    a, b = ins
    if isinstance(a, K) and isinstance(b, K) and foldable(a.arr, b.arr):
        return [_fold_binary(lw, node.op_type, a, b)]
    _floats_only(lw, ins)
    return [lw.emit(BINARY[node.op_type][0], [lw.arg(a), lw.arg(b)], lw.out_dims())]


def _floats_only(lw: Lowerer, ins: list[Any]) -> None:
    """Arithmetic on integer tensors happens at import (shapes) or not at all."""
    if any(isinstance(v, T) and v.label for v in ins):
        raise lw.fail("arithmetic on integer tensors at run time is not supported (integer "
                      "values are indices, shapes and conditions; constants fold at import)")


@lowers("Max", "Min", uses={"Max": ("maximum",), "Min": ("minimum",)},
        note="any number of inputs (a chain)")
def max_min(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    if all(isinstance(v, K) and not v.symbolic for v in ins) and foldable(
            *(v.arr for v in ins)):
        fold = np.maximum if node.op_type == "Max" else np.minimum
        return [K(fold.reduce(np.broadcast_arrays(*(v.arr for v in ins))))]
    _floats_only(lw, ins)
    op = "maximum" if node.op_type == "Max" else "minimum"
    acc = ins[0]
    for i, v in enumerate(ins[1:], 1):
        dims = lw.out_dims() if i == len(ins) - 1 else None
        acc = lw.emit(op, [lw.arg(acc), lw.arg(v)], dims)
    return [acc]


@lowers(*UNARY, uses={k: (v[0],) for k, v in UNARY.items()}, note="folded on constants")
def unary(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    (x,) = ins
    op, fold = UNARY[node.op_type]
    if isinstance(x, K) and fold is not None and not x.symbolic:
        return [K(np.asarray(fold(x.arr)))]
    _floats_only(lw, ins)
    return [lw.emit(op, [lw.arg(x)], lw.out_dims())]


@lowers("Identity", uses=(), note="passes its input through")
def identity(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    return [ins[0]]


@lowers("Dropout", uses=(), note="inference: the identity; training_mode true and the mask "
        "output are refused")
def dropout(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    if len(ins) > 2 and ins[2] is not None and bool(lw.known(ins[2], "training_mode").any()):
        raise lw.fail("training_mode true is not supported (inference only)")
    if len(node.output) > 1 and node.output[1]:
        raise lw.fail("its mask output is not supported")
    return [ins[0]]


@lowers("Cast", uses=(), note="float to float (the request's dtype decides); integer "
        "casts on constants")
def cast(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    from onnx import helper

    (x,) = ins
    to = helper.tensor_dtype_to_np_dtype(attrs["to"])
    if isinstance(x, K):
        return [x if x.symbolic else K(x.arr.astype(to))]
    if to.kind != "f":
        raise lw.fail(f"a cast of a tensor to {to} is not supported (only to float)")
    if x.label:
        raise lw.fail("a cast of integer values to float is not supported")
    return [x]


@lowers("LeakyRelu", uses=("leaky_relu",))
def leaky_relu(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    return [lw.emit("leaky_relu", [lw.arg(ins[0])], lw.out_dims(),
                    negative_slope=float(attrs["alpha"]))]


@lowers("Elu", uses=("elu",))
def elu(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    return [lw.emit("elu", [lw.arg(ins[0])], lw.out_dims(), alpha=float(attrs["alpha"]))]


@lowers("Softplus", uses=("softplus",), note="log(1 + e^x); past x = 20 the value is x "
        "(relative error below 1e-10)")
def softplus(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    return [lw.emit("softplus", [lw.arg(ins[0])], lw.out_dims())]


@lowers("Gelu", since=20, uses=("gelu",), note='approximate "none" or "tanh"')
def gelu(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    return [lw.emit("gelu", [lw.arg(ins[0])], lw.out_dims(), approximate=attrs["approximate"])]


@lowers("Clip", uses=("clip",), note="min and max constants (or absent: the identity)")
def clip(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    bounds = {}
    for i, key in ((1, "min"), (2, "max")):
        if len(ins) > i and ins[i] is not None:
            bounds[key] = float(lw.known(ins[i], key, ints=False).reshape(()))
    if not bounds:
        return [ins[0]]
    _floats_only(lw, ins[:1])
    return [lw.emit("clip", [lw.arg(ins[0])], lw.out_dims(), **bounds)]


@lowers("Where", uses=("where",), note="the condition an input or a constant (booleans)")
def where(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    cond, a, b = ins
    if isinstance(cond, K) and isinstance(a, K) and isinstance(b, K) and not (
            cond.symbolic or a.symbolic or b.symbolic) and foldable(cond.arr, a.arr, b.arr):
        return [K(np.where(cond.arr, a.arr, b.arr))]
    return [lw.emit("where", [lw.label(cond, "condition"), lw.arg(a), lw.arg(b)],
                    lw.out_dims())]


@lowers("MatMul", uses=("matmul",), note="NumPy matmul semantics")
def matmul(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    return [lw.emit("matmul", [lw.arg(ins[0]), lw.arg(ins[1])], lw.out_dims())]


@lowers("Gemm", uses=("linear", "matmul", "transpose", "mul", "add"),
        note="alpha, beta, transA, transB; x @ W^T + b is one linear")
def gemm(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    a, b = lw.arg(ins[0], "A"), lw.arg(ins[1], "B")
    c = ins[2] if len(ins) > 2 else None
    alpha, beta = float(attrs["alpha"]), float(attrs["beta"])
    dims = lw.out_dims()
    if attrs["transB"] and not attrs["transA"] and alpha == 1.0 and beta == 1.0 \
            and c is not None and len(lw.dims(c) or (0, 0)) == 1:
        return [lw.emit("linear", [a, b, lw.arg(c, "C")], dims)]
    if attrs["transA"]:
        a = lw.emit("transpose", [a], axes=[1, 0]).ref
    if attrs["transB"]:
        b = lw.emit("transpose", [b], axes=[1, 0]).ref
    y: str | float = lw.emit("matmul", [a, b]).ref
    if alpha != 1.0:
        y = lw.emit("mul", [y, alpha]).ref
    if c is not None and beta != 0.0:
        cref = lw.arg(c, "C")
        if beta != 1.0:
            cref = lw.emit("mul", [cref, beta]).ref
        y = lw.emit("add", [y, cref]).ref
    return [T(y, dims)]


@lowers("Softmax", "LogSoftmax", uses={"Softmax": ("softmax",), "LogSoftmax": ("log_softmax",)},
        note="axis (default -1)")
def softmax(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    op = "softmax" if node.op_type == "Softmax" else "log_softmax"
    return [lw.emit(op, [lw.arg(ins[0])], lw.out_dims(), axis=int(attrs["axis"]))]


REDUCE = {"ReduceSum": "sum", "ReduceMean": "mean", "ReduceMax": "max", "ReduceMin": "min"}


@lowers(*REDUCE, uses={k: (v,) for k, v in REDUCE.items()},
        note="axes as an attribute (opsets < 18) or a constant input; keepdims; "
        "noop_with_empty_axes")
def reduce(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    axes = attrs.get("axes")
    if len(ins) > 1 and ins[1] is not None:
        axes = lw.ints(ins[1], "axes")
    if not axes:
        if attrs.get("noop_with_empty_axes"):
            return [ins[0]]
        axes = None
    kw: dict[str, Any] = {"keepdims": bool(attrs["keepdims"])}
    if axes is not None:
        kw["axis"] = [int(a) for a in axes]
    return [lw.emit(REDUCE[node.op_type], [lw.arg(ins[0])], lw.out_dims(), **kw)]
