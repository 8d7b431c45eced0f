"""The node builder the export's lowerings write ONNX through.

An :class:`Emitter` holds the nodes and initializers of one ONNX graph being written, in
one float element type. Every value is a name; every shape is static (the export walks a
shape-specialized tape), so shapes, axes and pads are constants written once each. Helpers
here are the few compositions several lowerings share (reductions with static axes, a
reshape to a known shape, the accurate ``expm1``/``log1p`` that ONNX lacks).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from service.engine.errors import LimitExceeded

INT64_MIN = -(2**63)
#: ONNX nodes an export may write per node the graph may have (GRADSERVE_MAX_NODES): the
#: backward graph and the per-tap window loops make several of each.
NODES_PER_GRAPH_NODE = 64

ELEMENT = {"float64": TensorProto.DOUBLE, "float32": TensorProto.FLOAT}


class Emitter:
    """Nodes and constants of one ONNX graph, values in ``dtype`` ("float64"/"float32")."""

    def __init__(self, dtype: str, max_bytes: int = 1 << 62, max_nodes: int = 1 << 62
                 ) -> None:
        self.dtype = dtype
        self.max_bytes = max_bytes
        self.max_nodes = max_nodes
        self.nbytes = 0
        self.np_dtype = np.dtype(dtype)
        self.elem = ELEMENT[dtype]
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._consts: dict[tuple[str, bytes, tuple[int, ...]], str] = {}
        self._count = 0
        self.labels: set[str] = set()  # the int64 values (label inputs)
        self.origin = ""  # the tape slot being lowered: the prefix of every node name

    def fresh(self, hint: str = "v") -> str:
        self._count += 1
        return f"%{hint}{self._count}"

    def node(self, op_type: str, inputs: Sequence[str], n_out: int = 1, **attrs: Any) -> Any:
        """Add one node; returns its output name (a list of them when ``n_out`` > 1)."""
        if len(self.nodes) >= self.max_nodes:
            raise LimitExceeded("max_nodes", self.max_nodes // NODES_PER_GRAPH_NODE,
                                len(self.nodes) // NODES_PER_GRAPH_NODE,
                                "the exported model's size (ONNX nodes / 64)", loc=("graph",))
        outs = [self.fresh(op_type.lower()) for _ in range(n_out)]
        name = f"{self.origin}/{op_type}{self._count}" if self.origin else outs[0]
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=name, **attrs))
        return outs[0] if n_out == 1 else outs

    def array(self, value: Any) -> str:
        """An initializer holding ``value`` as given (its own dtype), shared when equal."""
        arr = np.array(value, order="C")  # (ascontiguousarray makes a 0-d value 1-d)
        key = (arr.dtype.str, arr.tobytes(), arr.shape)
        name = self._consts.get(key)
        if name is None:
            name = self.fresh("c")
            self._spend(arr.nbytes)
            self.initializers.append(numpy_helper.from_array(arr, name))
            self._consts[key] = name
        return name

    def initializer(self, name: str, value: Any, integer: bool) -> None:
        """A named initializer: int64 for integer data, else the graph's float type."""
        arr = np.asarray(value, dtype=np.int64 if integer else self.np_dtype)
        self._spend(arr.nbytes)
        self.initializers.append(numpy_helper.from_array(np.array(arr, order="C"), name))

    def _spend(self, nbytes: int) -> None:
        self.nbytes += nbytes
        if self.nbytes > self.max_bytes:
            raise LimitExceeded("max_memory_bytes", self.max_bytes, self.nbytes,
                                "the exported model's constants (bytes)", loc=("graph",))

    def const(self, value: Any) -> str:
        """A float constant (scalar or array) in the graph's element type."""
        return self.array(np.asarray(value, dtype=self.np_dtype))

    def ints(self, values: Sequence[int]) -> str:
        return self.array(np.asarray(list(values), dtype=np.int64))

    # --- compositions ---------------------------------------------------------------------
    def reshape(self, x: str, shape: Sequence[int], have: Sequence[int] | None = None) -> str:
        if have is not None and tuple(have) == tuple(shape):
            return x
        return self.node("Reshape", [x, self.ints(shape)])

    def reduce(self, op_type: str, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        """A reduction over static ``axes`` (opset 18: axes as an input); no axes: x."""
        if not axes:
            return x
        return self.node(op_type, [x, self.ints(sorted(axes))], keepdims=int(keepdims))

    def cast(self, x: str) -> str:
        """A boolean or integer tensor as the graph's floats."""
        return self.node("Cast", [x], to=self.elem)

    def where(self, cond: str, a: str, b: str) -> str:
        return self.node("Where", [cond, a, b])

    def expm1(self, x: str) -> str:
        """e^x - 1, accurate near 0: Kahan's (u - 1) * x / log(u), u = e^x (x where u == 1;
        u - 1 where u is infinite)."""
        u = self.node("Exp", [x])
        um1 = self.node("Sub", [u, self.const(1.0)])
        is_one = self.node("Equal", [u, self.const(1.0)])
        is_inf = self.node("IsInf", [u])
        safe = self.where(is_one, self.const(2.0), u)
        scaled = self.node("Div", [self.node("Mul", [um1, x]), self.node("Log", [safe])])
        return self.where(is_one, x, self.where(is_inf, um1, scaled))

    def log1p(self, v: str) -> str:
        """log(1 + v), accurate near 0: log(u) * v / (u - 1), u = 1 + v (v where u == 1)."""
        u = self.node("Add", [v, self.const(1.0)])
        is_one = self.node("Equal", [u, self.const(1.0)])
        is_inf = self.node("IsInf", [u])
        safe = self.where(is_one, self.const(2.0), u)
        den = self.node("Sub", [safe, self.const(1.0)])
        scaled = self.node("Div", [self.node("Mul", [self.node("Log", [safe]), v]), den])
        return self.where(is_one, v, self.where(is_inf, self.node("Log", [u]), scaled))


