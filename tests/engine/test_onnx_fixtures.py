"""The PyTorch-exported ONNX fixtures (tests/fixtures/onnx, made by make_fixtures.py with
torch; no test imports torch): each file under 1 MB, a batch dim left symbolic, only the op
types the script's summary lists, onnxruntime's forward equal to PyTorch's recorded output,
and a recorded gradient for every parameter initializer PyTorch trains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "onnx"
SUMMARY = json.loads((FIXTURES / "fixtures.json").read_text())
NAMES = sorted(SUMMARY)
WANTED = {"cnn": {"Conv", "BatchNormalization", "MaxPool", "GlobalAveragePool"},
          "transformer": {"LayerNormalization", "MatMul", "Softmax", "Erf"},
          "mlp": {"Gemm", "Relu"}, "mlp784": {"Gemm", "Relu"}}


def test_the_fixtures_are_the_four_models():
    assert NAMES == ["cnn", "mlp", "mlp784", "transformer"]


@pytest.mark.parametrize("name", NAMES)
def test_fixture(name: str) -> None:
    path, rec = FIXTURES / f"{name}.onnx", np.load(FIXTURES / f"{name}.npz")
    assert path.stat().st_size < 1 << 20 and (FIXTURES / f"{name}.npz").stat().st_size < 1 << 20
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert ops == set(SUMMARY[name]["ops"]) and WANTED[name] <= ops
    (x,) = model.graph.input
    assert x.type.tensor_type.shape.dim[0].dim_param, "the batch dim is symbolic"
    sess = ort.InferenceSession(path.read_bytes(), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {"x": rec["x"]})
    np.testing.assert_allclose(out, rec["output"], rtol=1e-5, atol=1e-6)
    # Another batch size runs too (the dim is dynamic).
    (two,) = sess.run(None, {"x": np.concatenate([rec["x"], rec["x"]])})
    np.testing.assert_allclose(two[: len(out)], out, rtol=1e-5, atol=1e-6)
    recorded = {k[5:] for k in rec.files if k.startswith("grad:") and k != "grad:x"}
    trained = {i.name for i in model.graph.initializer} - {
        i.name for i in model.graph.initializer if "running_" in i.name}
    assert recorded == trained
    assert rec["grad:x"].shape == rec["x"].shape and np.any(rec["grad:x"])
