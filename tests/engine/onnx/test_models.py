"""Whole models as exporters write them, built with onnx.helper: an MLP, a small CNN
(Conv, BatchNormalization, MaxPool, GlobalAveragePool) and a transformer block
(LayerNormalization, attention from MatMul/Transpose/Softmax, a GELU written with Erf as
torch exports it, reshapes through Shape/Gather/Concat), each with a symbolic batch:
forward against onnxruntime in float32 and float64, and the gradients of every input and
parameter against float64 central differences."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import helper

from tests.engine.onnx.models import (
    central_differences,
    forward,
    gradients,
    model_bytes,
    ort_run,
    plan_of,
)

R = np.random.default_rng(11)
n = helper.make_node


def i64(*v: int) -> np.ndarray:
    return np.asarray(v, dtype=np.int64)


def mlp(dtype: str) -> tuple[bytes, dict[str, np.ndarray]]:
    R = np.random.default_rng(1)  # noqa: N806 - the same model in every dtype
    p = {"w1": R.standard_normal((5, 4)), "b1": R.standard_normal(5),
         "w2": R.standard_normal((3, 5)), "b2": R.standard_normal(3)}
    nodes = [n("Gemm", ["x", "w1", "b1"], ["h"], transB=1), n("Relu", ["h"], ["r"]),
             n("MatMul", ["r", "w2t"], ["m"]), n("Add", ["m", "b2"], ["logits"]),
             n("Transpose", ["w2"], ["w2t"])]
    nodes = [nodes[0], nodes[1], nodes[4], nodes[2], nodes[3]]
    x = R.standard_normal((3, 4))
    return _build(nodes, {"x": x}, ["logits"], p, dtype, {"x": ["batch", 4]})


def cnn(dtype: str) -> tuple[bytes, dict[str, np.ndarray]]:
    R = np.random.default_rng(2)  # noqa: N806 - the same model in every dtype
    p = {"cw": R.standard_normal((2, 1, 3, 3)) * 0.5, "cb": R.standard_normal(2),
         "s": R.uniform(0.5, 1.5, 2), "b": R.standard_normal(2), "m": R.standard_normal(2),
         "v": R.uniform(0.5, 2, 2), "fw": R.standard_normal((3, 2)), "fb": R.standard_normal(3)}
    nodes = [n("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1]),
             n("BatchNormalization", ["c", "s", "b", "m", "v"], ["bn"]),
             n("Relu", ["bn"], ["r"]),
             n("MaxPool", ["r"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
             n("GlobalAveragePool", ["mp"], ["g"]),
             n("Flatten", ["g"], ["f"]),
             n("Gemm", ["f", "fw", "fb"], ["logits"], transB=1)]
    x = R.standard_normal((2, 1, 4, 4))
    return _build(nodes, {"x": x}, ["logits"], p, dtype, {"x": ["batch", 1, 4, 4]})


def transformer(dtype: str) -> tuple[bytes, dict[str, np.ndarray]]:
    R = np.random.default_rng(3)  # noqa: N806 - the same model in every dtype
    d, h = 4, 2
    p = {"g": R.uniform(0.5, 1.5, d), "be": R.standard_normal(d) * 0.1,
         "wq": R.standard_normal((d, d)) * 0.5, "wk": R.standard_normal((d, d)) * 0.5,
         "wv": R.standard_normal((d, d)) * 0.5, "w1": R.standard_normal((d, 8)) * 0.5,
         "w2": R.standard_normal((8, d)) * 0.5, "scale": np.asarray(1 / np.sqrt(d // h)),
         "half": np.asarray(0.5), "one": np.asarray(1.0), "rsqrt2": np.asarray(1 / np.sqrt(2))}
    ints = {"zero": np.asarray(0, np.int64), "one_i": np.asarray(1, np.int64),
            "ax0": i64(0), "heads": i64(h, d // h), "minus1": i64(-1), "dd": i64(d)}
    nodes = [
        n("LayerNormalization", ["x", "g", "be"], ["ln"], axis=-1),
        n("MatMul", ["ln", "wq"], ["q"]), n("MatMul", ["ln", "wk"], ["k"]),
        n("MatMul", ["ln", "wv"], ["v"]),
        # q.view(b, s, h, d/h) as torch writes it: Shape, Gather, Unsqueeze, Concat
        n("Shape", ["x"], ["sx"]), n("Gather", ["sx", "zero"], ["b0"]),
        n("Gather", ["sx", "one_i"], ["s0"]), n("Unsqueeze", ["b0", "ax0"], ["b1"]),
        n("Unsqueeze", ["s0", "ax0"], ["s1"]),
        n("Concat", ["b1", "s1", "heads"], ["shape4"], axis=0),
        n("Reshape", ["q", "shape4"], ["q4"]), n("Reshape", ["k", "shape4"], ["k4"]),
        n("Reshape", ["v", "shape4"], ["v4"]),
        n("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
        n("Transpose", ["k4"], ["kh"], perm=[0, 2, 3, 1]),
        n("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3]),
        n("MatMul", ["qh", "kh"], ["att"]), n("Mul", ["att", "scale"], ["atts"]),
        n("Softmax", ["atts"], ["pr"], axis=-1), n("MatMul", ["pr", "vh"], ["ctx"]),
        n("Transpose", ["ctx"], ["ctxt"], perm=[0, 2, 1, 3]),
        n("Concat", ["b1", "s1", "dd"], ["shape3"], axis=0),
        n("Reshape", ["ctxt", "shape3"], ["ctx3"]), n("Add", ["x", "ctx3"], ["res"]),
        n("MatMul", ["res", "w1"], ["f1"]),
        # GELU as torch exports it at opsets < 20: x * 0.5 * (1 + erf(x / sqrt 2))
        n("Mul", ["f1", "rsqrt2"], ["f1s"]), n("Erf", ["f1s"], ["e"]),
        n("Add", ["e", "one"], ["e1"]), n("Mul", ["f1", "e1"], ["f1e"]),
        n("Mul", ["f1e", "half"], ["gelu"]), n("MatMul", ["gelu", "w2"], ["f2"]),
        n("Add", ["res", "f2"], ["y"]),
    ]
    x = R.standard_normal((2, 3, d))
    return _build(nodes, {"x": x}, ["y"], p, dtype, {"x": ["batch", 3, d]}, ints, opset=17)


def _build(nodes: list[Any], inputs: dict[str, np.ndarray], outputs: list[str],
           params: dict[str, np.ndarray], dtype: str, dims: dict[str, Any],
           ints: dict[str, np.ndarray] | None = None, opset: int = 18
           ) -> tuple[bytes, dict[str, np.ndarray]]:
    feeds = {k: v.astype(dtype) for k, v in inputs.items()}
    inits = {**{k: np.asarray(v, dtype=dtype) for k, v in params.items()}, **(ints or {})}
    return model_bytes(nodes, feeds, outputs, inits, opset=opset, dims=dims), feeds


MODELS = {"mlp": mlp, "cnn": cnn, "transformer": transformer}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_matches_onnxruntime_at_any_batch(name: str, dtype: str) -> None:
    data, feeds = MODELS[name](dtype)
    plan = plan_of(data)
    for batch in (1, 4):
        x = np.repeat(feeds["x"][:1], batch, axis=0) + R.standard_normal(
            (batch, *feeds["x"].shape[1:])).astype(dtype)
        ours = forward(plan, {"x": x})
        assert ours.dtype == np.dtype(dtype)
        tol = 1e-5 if dtype == "float32" else 1e-9
        try:
            (ref,) = ort_run(data, {"x": x})
        except Exception as exc:  # onnxruntime has no float64 Conv: the float32 oracle
            assert dtype == "float64" and "NOT_IMPLEMENTED" in str(exc), exc
            (ref,) = ort_run(MODELS[name]("float32")[0], {"x": x.astype(np.float32)})
            tol = 1e-5
        np.testing.assert_allclose(ours, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", MODELS)
def test_gradients_of_inputs_and_parameters(name: str) -> None:
    data, feeds = MODELS[name]("float64")
    plan = plan_of(data)
    out = forward(plan, feeds)
    up = R.uniform(-1, 1, out.shape)
    grads = gradients(plan, feeds, up, "all")
    names = [*plan.model.inputs, *sorted(plan.model.parameters)]
    assert sorted(grads) == sorted(names)
    numeric = central_differences(plan, feeds, up, names)
    for k in names:
        np.testing.assert_allclose(grads[k], numeric[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_the_transformers_shape_chain_folds_away() -> None:
    plan = plan_of(transformer("float32")[0])
    ops = [node["op"] for node in plan.canonical["nodes"]]
    assert "gather" not in ops and ops.count("reshape") == 4
    reshapes = [node["attrs"]["shape"] for node in plan.canonical["nodes"]
                if node["op"] == "reshape"]
    assert all(shape[0] == -1 for shape in reshapes), reshapes  # the batch: any size


@pytest.mark.parametrize("n_in", [3, 4, 5])
def test_stored_parameters_are_aligned_and_their_copies_counted(n_in: int) -> None:
    """The packed blob's tensors are views of it unless that would be misaligned (NumPy
    hands only aligned arrays to BLAS: a misaligned weight turns every matmul with it into
    NumPy's own loop); an aligned copy's bytes count in the model's."""
    rng = np.random.default_rng(n_in)
    inits = {"W": rng.standard_normal((n_in, 7)).astype(np.float32),
             "b": rng.standard_normal(7).astype(np.float32),
             "V": rng.standard_normal((7, 2)).astype(np.float64)}
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["h"]),
             helper.make_node("Cast", ["h"], ["h64"], to=11),
             helper.make_node("MatMul", ["h64", "V"], ["y"])]
    data = model_bytes(nodes, {"x": np.zeros((1, n_in), np.float32)}, ["y"], inits)
    model = plan_of(data).model
    copies = 0
    for name, arr in model.parameters.items():
        assert arr.flags.aligned and arr.flags.c_contiguous, name
        assert not arr.flags.writeable, name
        np.testing.assert_array_equal(arr, inits[name])
        copies += arr.nbytes if arr.flags.owndata else 0
    assert model.nbytes == len(model.blob) + copies
