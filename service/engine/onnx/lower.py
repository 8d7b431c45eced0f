"""Lowering a checked ONNX model to a GraphIR of registry ops, node by node.

Every ONNX value becomes one of two things:

- a :class:`T`, a tensor of the lowered graph (a graph input, a parameter, a node's value,
  or a scalar constant written as a number arg), with its inferred dims;
- a :class:`K`, a value known at import (an integer initializer, a ``Constant``, what a
  ``Shape`` → ``Gather`` → ``Concat`` chain computes): folded here, never run. A dim that
  is symbolic (a batch of any size) stays a symbol (its name) inside a ``K``; a ``Reshape``
  whose target holds one such symbol writes it as ``-1``, so the lowered graph is the same
  for every batch size and the request's shapes decide at specialization.

A ``K`` used as data becomes a number arg (a scalar), an ``expand`` of one (a uniform
tensor) or a *constant* input of the model (engine/model.py), never a parameter.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import defs, helper, numpy_helper

from service.engine import ir
from service.engine.onnx.load import FLOAT_TYPES, Loaded, dims_of, elem_type, refuse

Dims = tuple[int | str | None, ...] | None
#: Values known at import are folded only up to this many elements; a bigger result (two
#: constants broadcast against each other) is left to run, under the request's limits.
FOLD_MAX = 1 << 16


def foldable(*arrays: np.ndarray) -> bool:
    """Whether the broadcast of ``arrays`` is small enough to fold at import."""
    try:
        shape = np.broadcast_shapes(*(a.shape for a in arrays))
    except ValueError:
        return False
    return math.prod(shape) <= FOLD_MAX


@dataclass(frozen=True)
class T:
    """A tensor of the lowered graph: an IR name, or a scalar constant (a float arg)."""

    ref: str | float
    dims: Dims = None
    label: bool = False  # integer values (indices, conditions): never differentiated


@dataclass(frozen=True)
class K:
    """A value known at import (ints, floats, or symbol names for symbolic dims)."""

    arr: np.ndarray

    def __post_init__(self) -> None:
        arr = np.asarray(self.arr)
        if arr.dtype.kind in "OUS":  # symbols (strings) among ints: one object array
            arr = np.asarray(arr.tolist(), dtype=object).reshape(arr.shape)
        object.__setattr__(self, "arr", arr)

    @property
    def symbolic(self) -> bool:
        return self.arr.dtype == object


Value = T | K
Lowering = Callable[["Lowerer", onnx.NodeProto, list[Value | None], dict[str, Any]],
                    list[Value | None]]


def ir_name(name: str, taken: set[str]) -> str:
    """An ONNX name as an IR name (invalid characters as '_'), unique among ``taken``."""
    out = name[:120] if ir.NAME_RE.match(name) else re.sub(r"[^A-Za-z0-9_.:%'\-]", "_",
                                                            name)[:120]
    if not ir.NAME_RE.match(out):
        out = "_" + out
    base, k = out[:120], 1
    while out in taken:
        k += 1
        out = f"{base}.{k}"
    taken.add(out)
    return out


class Lowerer:
    """The lowering's state: the values so far, the IR nodes, the model's tensors."""

    def __init__(self, loaded: Loaded) -> None:
        self.loaded = loaded
        self.opset = loaded.opset
        self.dtype = loaded.dtype
        self.env: dict[str, Value] = {}
        self.nodes: list[ir.NodeIR] = []
        self.inputs: list[tuple[str, tuple[int, ...] | None]] = []
        self.parameters: dict[str, np.ndarray] = {}
        self.constants: dict[str, np.ndarray] = {}
        self.taken: set[str] = set()
        self.origin: dict[str, onnx.NodeProto] = {}  # IR node id -> the ONNX node it lowers
        self.used: set[str] = set()  # IR names used as tensors (unused parameters go)
        self.node: onnx.NodeProto | None = None
        self._n = 0

    # --- building -------------------------------------------------------------------------
    def emit(self, op: str, args: list[str | float], dims: Dims = None, *, label: bool = False,
             **attrs: Any) -> T:
        """One IR node; its id is generated ('%' names never clash with ONNX's)."""
        self._n += 1
        nid = f"%{self._n}"
        frozen = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                              for k, v in attrs.items()))
        self.nodes.append(ir.NodeIR(nid, op, tuple(args), frozen))
        if self.node is not None:
            self.origin[nid] = self.node
        return T(nid, dims, label)

    def fail(self, detail: str) -> Exception:
        return refuse(detail, node=self.node)

    def out_dims(self, i: int = 0) -> Dims:
        node = self.node
        return dims_of(self.loaded.value_info, node.output[i]) if node is not None else None

    # --- values as the ops need them ------------------------------------------------------
    def arg(self, v: Value | None, what: str = "input") -> str | float:
        """A float tensor arg: a name, or a number for a known scalar."""
        if v is None:
            raise self.fail(f"its {what} is missing")
        if isinstance(v, T):
            if isinstance(v.ref, str):
                self.used.add(v.ref)
            return v.ref
        if v.symbolic:
            raise self.fail(f"its {what} is a shape with symbolic dims, used as data")
        arr = v.arr
        if arr.size == 1 and arr.ndim == 0:
            return float(arr)
        if arr.size and np.all(arr == arr.flat[0]):
            return self.emit("expand", [float(arr.flat[0])], tuple(arr.shape),
                             shape=list(arr.shape)).ref
        return self.constant(arr.astype(self.dtype) if arr.dtype.kind != "f" else arr)

    def label(self, v: Value | None, what: str = "indices") -> str:
        """An integer tensor arg (indices, a condition): an input or a constant."""
        if v is None:
            raise self.fail(f"its {what} is missing")
        if isinstance(v, T):
            if not isinstance(v.ref, str):
                return self.constant(np.asarray(int(v.ref)))
            self.used.add(v.ref)
            return v.ref
        if v.symbolic:
            raise self.fail(f"its {what} hold symbolic dims")
        return self.constant(v.arr.astype(np.int64))

    def constant(self, arr: np.ndarray) -> str:
        name = ir_name(f"%const.{len(self.constants) + 1}", self.taken)
        self.constants[name] = np.asarray(arr, order="C")
        self.inputs.append((name, tuple(arr.shape)))
        return name

    def known(self, v: Value | None, what: str, *, ints: bool = True) -> np.ndarray:
        """A value that must be known at import (axes, pads, a shape, a clip bound): a
        float initializer used so is read as a constant (and stays a parameter only if
        something also uses it as a tensor)."""
        if isinstance(v, T) and isinstance(v.ref, str) and v.ref in self.parameters:
            v = K(self.parameters[v.ref])
        if not isinstance(v, K):
            raise self.fail(f"its {what} must be a constant (an initializer or computed from "
                            "shapes), not a tensor computed at run time")
        if v.symbolic:
            raise self.fail(f"its {what} depends on a symbolic dim; give the model a static "
                            "shape there")
        return v.arr.astype(np.int64) if ints else v.arr

    def ints(self, v: Value | None, what: str) -> list[int]:
        return [int(x) for x in self.known(v, what).reshape(-1)]

    def dims(self, v: Value | None) -> Dims:
        if isinstance(v, T):
            return v.dims
        return tuple(v.arr.shape) if isinstance(v, K) else None

    def rank(self, v: Value | None, what: str = "input") -> int:
        d = self.dims(v)
        if d is None:
            raise self.fail(f"the rank of its {what} is unknown after shape inference")
        return len(d)

    # --- attrs ----------------------------------------------------------------------------
    def attrs(self, node: onnx.NodeProto) -> dict[str, Any]:
        """The node's attributes with the defaults of its op's schema at this opset."""
        schema = defs.get_schema(node.op_type, self.opset, "")
        out: dict[str, Any] = {}
        for name, a in schema.attributes.items():
            if a.default_value.type:
                out[name] = _plain(helper.get_attribute_value(a.default_value))
        for a in node.attribute:
            if a.name not in schema.attributes:
                raise self.fail(f"attribute '{a.name}' is not one of {node.op_type}'s at "
                                f"opset {self.opset}")
            value = helper.get_attribute_value(a)
            out[a.name] = numpy_helper.to_array(value) if isinstance(
                value, onnx.TensorProto) else _plain(value)
        return out


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def drop_unused(lw: Lowerer, outputs: list[str]) -> None:
    """Parameters no node uses as a tensor (unused initializers, or ones read only as
    constants) are not inputs of the lowered graph."""
    for name in [n for n in lw.parameters if n not in lw.used and n not in outputs]:
        del lw.parameters[name]
        lw.inputs = [(n, s) for n, s in lw.inputs if n != name]


def graph_values(lw: Lowerer) -> list[str]:
    """The model's graph inputs and float initializers as IR inputs; integer initializers
    as known values. Returns the model's input names (IR form)."""
    graph, info = lw.loaded.model.graph, lw.loaded.value_info
    names = []
    for t in graph.initializer:
        arr = numpy_helper.to_array(t)
        if t.data_type in FLOAT_TYPES:
            name = ir_name(t.name, lw.taken)
            lw.parameters[name] = np.asarray(arr, order="C")
            lw.inputs.append((name, tuple(arr.shape)))
            lw.env[t.name] = T(name, tuple(arr.shape))
        else:
            lw.env[t.name] = K(arr)
    for v in graph.input:
        name = ir_name(v.name, lw.taken)
        dims = dims_of(info, v.name)
        static = dims is not None and all(isinstance(d, int) for d in dims)
        lw.inputs.append((name, tuple(dims) if static else None))  # type: ignore[arg-type]
        lw.env[v.name] = T(name, dims, label=elem_type(info, v.name) not in FLOAT_TYPES)
        names.append(name)
    return names
