"""Helpers for the ONNX import tests: one-node (or small) models built with onnx.helper,
imported and compiled by the engine, run next to onnxruntime (the forward oracle), and
gradients against float64 central differences of the engine's own forward."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from service.engine import REGISTRY, Query, execute
from service.engine.onnx import compile_model, import_model

ELEM = {np.dtype("float32"): TensorProto.FLOAT, np.dtype("float64"): TensorProto.DOUBLE,
        np.dtype("int64"): TensorProto.INT64, np.dtype("bool"): TensorProto.BOOL}


def model_bytes(nodes: Sequence[onnx.NodeProto], inputs: Mapping[str, np.ndarray],
                outputs: Sequence[str], initializers: Mapping[str, np.ndarray] | None = None,
                *, opset: int = 18, dims: Mapping[str, Sequence[Any]] | None = None,
                out_types: Mapping[str, int] | None = None) -> bytes:
    """A model whose graph inputs are typed as the arrays in ``inputs`` (``dims`` overrides a
    declared shape, e.g. a symbolic batch) and whose outputs' types are left to inference."""
    dims = dims or {}
    vin = [helper.make_tensor_value_info(n, ELEM[a.dtype], list(dims.get(n, a.shape)))
           for n, a in inputs.items()]
    vout = [helper.make_tensor_value_info(n, out_types[n], None) if out_types and n in
            out_types else helper.make_empty_tensor_value_info(n) for n in outputs]
    inits = [numpy_helper.from_array(a, n) for n, a in (initializers or {}).items()]
    graph = helper.make_graph(list(nodes), "m", vin, vout, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    # Outputs typed as shape inference says (an untyped output fails the checker).
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    for out in model.graph.output:
        if not out.HasField("type") and out.name in inferred:
            out.type.CopyFrom(inferred[out.name].type)
    return model.SerializeToString()


def plan_of(data: bytes) -> Any:
    return compile_model(import_model(data), REGISTRY)


def ort_run(data: bytes, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
    return sess.run(None, dict(feeds))


def forward(plan: Any, feeds: Mapping[str, np.ndarray], dtype: str | None = None,
            output: str | None = None) -> np.ndarray:
    q = Query(wrt=(), dtype=dtype or plan.model.dtype, output=output)
    return np.asarray(execute(plan, dict(feeds), q).output)


def gradients(plan: Any, feeds: Mapping[str, np.ndarray], upstream: np.ndarray,
              wrt: Any = "all") -> dict[str, np.ndarray]:
    q = Query(wrt=wrt, dtype="float64", upstream=upstream)
    return {n: np.asarray(g) for n, g in execute(plan, dict(feeds), q).gradients.items()}


def central_differences(plan: Any, feeds: Mapping[str, np.ndarray], upstream: np.ndarray,
                        names: Sequence[str], eps: float = 1e-6) -> dict[str, np.ndarray]:
    """d <upstream, output> / d name, by central differences of the engine's float64
    forward, for inputs (in ``feeds``) and parameters (the model's own values)."""
    base = {n: np.asarray(a, dtype=np.float64) if np.asarray(a).dtype.kind == "f" else a
            for n, a in feeds.items()}
    params = {n: np.array(a, dtype=np.float64) for n, a in plan.model.parameters.items()}
    out = {}
    for name in names:
        values = {**params, **base}
        x = np.array(values[name], dtype=np.float64)
        g = np.zeros_like(x)
        for i in range(x.size):
            for sign in (1, -1):
                xp = x.copy()
                xp.flat[i] += sign * eps
                f = forward(plan, {**values, name: xp}, "float64")
                g.flat[i] += sign * float(np.sum(f * upstream)) / (2 * eps)
        out[name] = g
    return out
