"""GET /v1/graphs/{graph_id}/onnx: a registered graph (expression, spec, MLP) as an ONNX
model file, forward alone or forward and backward, run in onnxruntime against gradserve's
own answer over /v1; and every bad query a 4xx naming what is wrong."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from tests.engine.onnx.models import model_bytes
from tests.lecture import problem

CNN = {
    "inputs": {"x": {"shape": [2, 1, 6, 6]}, "w": {"shape": [3, 1, 3, 3]},
               "b": {"shape": [3]}},
    "nodes": [{"id": "c", "op": "conv2d", "args": ["x", "w", "b"], "attrs": {"padding": 1}},
              {"id": "r", "op": "relu", "args": ["c"]},
              {"id": "p", "op": "max_pool2d", "args": ["r"], "attrs": {"kernel_size": 2}},
              {"id": "g", "op": "global_avg_pool2d", "args": ["p"]},
              {"id": "out", "op": "flatten", "args": ["g"], "attrs": {"start_axis": 1}}],
    "output": "out",
}


def _register(client: Any, body: dict[str, Any], path: str = "/v1/graphs") -> str:
    resp = client.post(path, json=body)
    assert resp.status_code in (200, 201), resp.get_json()
    return resp.get_json()["graph_id"]


def _session(client: Any, url: str) -> tuple[onnx.ModelProto, Any]:
    resp = client.get(url)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    assert resp.mimetype == "application/onnx"
    assert "attachment" in resp.headers["Content-Disposition"]
    model = onnx.load_from_string(resp.get_data())
    onnx.checker.check_model(model, full_check=True)
    return model, ort.InferenceSession(resp.get_data(), providers=["CPUExecutionProvider"])


def _run(sess: Any, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, feeds)))


def test_expression_forward_and_gradient_models(client):
    gid = _register(client, {"expression": "1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))"})
    values = {"w0": 2.0, "x0": -1.0, "w1": -3.0, "x1": -2.0, "w2": -3.0}
    ours = client.post(f"/v1/graphs/{gid}/gradients", json={"values": values}).get_json()
    feeds = {k: np.asarray(v) for k, v in values.items()}
    model, sess = _session(client, f"/v1/graphs/{gid}/onnx")
    assert [o.name for o in model.graph.output] == ["output"]
    assert model.opset_import[0].version in range(17, 22)
    np.testing.assert_allclose(_run(sess, feeds)["output"], ours["output"], rtol=1e-15)
    _, sess = _session(client, f"/v1/graphs/{gid}/onnx?gradients=true&wrt=w0,x1")
    got = _run(sess, feeds)
    assert set(got) == {"output", "grad:w0", "grad:x1"}
    for n in ("w0", "x1"):
        np.testing.assert_allclose(got[f"grad:{n}"], ours["gradients"][n], rtol=1e-15)


def test_cnn_spec_gradient_model_float64_and_float32(client):
    gid = _register(client, {"graph": CNN})
    rng = np.random.default_rng(0)
    values = {"x": rng.standard_normal((2, 1, 6, 6)), "w": rng.standard_normal((3, 1, 3, 3)),
              "b": rng.standard_normal(3)}
    upstream = rng.standard_normal((2, 3))
    ours = client.post(f"/v1/graphs/{gid}/gradients", json={
        "values": {k: v.tolist() for k, v in values.items()},
        "upstream": upstream.tolist()}).get_json()
    for dtype, tol in (("float64", 1e-12), ("float32", 1e-4)):
        model, sess = _session(client, f"/v1/graphs/{gid}/onnx?gradients=true&dtype={dtype}")
        feeds = {k: v.astype(dtype) for k, v in {**values, "upstream": upstream}.items()}
        got = _run(sess, feeds)
        assert got["output"].dtype == np.dtype(dtype)
        np.testing.assert_allclose(got["output"], ours["output"], rtol=tol, atol=tol)
        for n in ("x", "w", "b"):
            np.testing.assert_allclose(got[f"grad:{n}"], ours["gradients"][n], rtol=tol,
                                       atol=tol)


def test_mlp_graph_with_its_loss_and_an_export_loss(client):
    gid = _register(client, {"layers": [
        {"in_features": 3, "out_features": 4, "activation": "tanh"},
        {"in_features": 4, "out_features": 2}]}, "/v1/mlp/graphs")
    spec = client.get(f"/v1/graphs/{gid}").get_json()
    rng = np.random.default_rng(1)
    values = {n: rng.standard_normal(d.get("shape") or (5, 3)) for n, d in
              spec["inputs"].items()}
    shapes = "&".join(f"shape={n}:{','.join(map(str, v.shape))}" for n, v in values.items()
                      if not spec["inputs"][n].get("shape"))
    labels = np.array([0, 1, 1, 0, 1])
    ours = client.post(f"/v1/graphs/{gid}/gradients", json={
        "values": {k: v.tolist() for k, v in values.items()}, "wrt": sorted(values),
        "loss": {"type": "softmax_cross_entropy", "targets": labels.tolist()}}).get_json()
    _, sess = _session(client, f"/v1/graphs/{gid}/onnx?gradients=true&wrt=all"
                               f"&loss=softmax_cross_entropy&{shapes}")
    got = _run(sess, {**values, "targets": labels})
    np.testing.assert_allclose(got["loss"], ours["loss"], rtol=1e-13)
    for n in values:
        np.testing.assert_allclose(got[f"grad:{n}"], ours["gradients"][n], rtol=1e-11,
                                   atol=1e-14)


def test_a_scalar_default_and_a_given_shape(client):
    gid = _register(client, {"expression": "sum(x * x)"})
    _, sess = _session(client, f"/v1/graphs/{gid}/onnx?gradients=true")
    assert _run(sess, {"x": np.asarray(3.0)})["grad:x"] == 6.0
    _, sess = _session(client, f"/v1/graphs/{gid}/onnx?gradients=true&shape=x:2,2")
    x = np.arange(4.0).reshape(2, 2)
    np.testing.assert_array_equal(_run(sess, {"x": x})["grad:x"], 2 * x)


@pytest.mark.parametrize(("query", "status", "words"), [
    ("?gradients=maybe", 422, "gradients"),
    ("?dtype=float16", 422, "dtype"),
    ("?loss=l1", 422, "loss"),
    ("?shape=x", 422, "'x' is not 'name:d0,d1,...'"),
    ("?shape=x:2,a", 422, "not an integer"),
    ("?shape=x:-1", 422, "each in [0, 2^53]"),
    ("?shape=q:2", 422, "'q' is not an input"),
    ("?shape=x:2&shape=x:3", 422, "second shape"),
    ("?dtype=float32&dtype=float64", 422, "given 2 times"),
    ("?wrt=x,,y", 422, "empty name"),
    ("?gradients=true&wrt=nope", 422, "wrt: 'nope'"),
    ("?format=onnx", 422, "format"),
    ("?shape=x:100000,100000", 413, "GRADSERVE_MAX_TENSOR_ELEMENTS"),
])
def test_bad_queries_are_4xx_naming_the_parameter(client, query, status, words):
    gid = _register(client, {"expression": "sum(x * y)"})
    resp = client.get(f"/v1/graphs/{gid}/onnx{query}")
    body = problem(resp, status)
    assert words in body["detail"], body


def test_unknown_and_malformed_graph_ids_are_404(client):
    assert client.get("/v1/graphs/g-" + "0" * 64 + "/onnx").status_code == 404
    assert client.get("/v1/graphs/nope/onnx").status_code == 404


FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "onnx"


def _model(client: Any, name: str) -> str:
    resp = client.post("/v1/graphs", data=(FIXTURE / f"{name}.onnx").read_bytes(),
                       content_type="application/onnx")
    assert resp.status_code in (200, 201), resp.get_json()
    return resp.get_json()["graph_id"]


def test_an_imported_model_needs_its_batch_dim_and_says_how(client):
    gid = _model(client, "cnn")
    body = problem(client.get(f"/v1/graphs/{gid}/onnx"), 422)
    assert "give shape=x:N,1,12,12" in body["detail"]
    assert body["errors"][0]["loc"] == ["shape", "x"]


def test_an_imported_model_exports_with_its_parameters_as_overridable_initializers(client):
    gid = _model(client, "mlp")
    rec = np.load(FIXTURE / "mlp.npz")
    model, sess = _session(client, f"/v1/graphs/{gid}/onnx?shape=x:5,8")
    params = {"net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias"}
    assert params <= {i.name for i in model.graph.initializer}
    assert {i.name for i in model.graph.input} == {"x", *params}  # overridable
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    original = ort.InferenceSession((FIXTURE / "mlp.onnx").read_bytes(),
                                    providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(_run(sess, {"x": rec["x"]})["output"],
                               original.run(None, {"x": rec["x"]})[0], rtol=1e-5, atol=1e-6)
    # A parameter given to onnxruntime replaces the stored one, as in a request's values.
    w = np.zeros((4, 16), np.float32)
    ours = client.post(f"/v1/graphs/{gid}/gradients", json={
        "values": {"x": rec["x"].tolist(), "net.2.weight": w.tolist()}, "wrt": []}).get_json()
    np.testing.assert_allclose(_run(sess, {"x": rec["x"], "net.2.weight": w})["output"],
                               ours["output"], rtol=1e-6)


def test_an_integer_constant_is_written_as_an_int64_initializer_and_is_no_wrt(client):
    x = np.zeros((2, 3), np.float32)
    data = model_bytes([helper.make_node("Gather", ["W", "idx"], ["g"], axis=0),
                        helper.make_node("Add", ["g", "x"], ["y"])], {"x": x}, ["y"],
                       {"W": np.arange(12, dtype=np.float32).reshape(4, 3),
                        "idx": np.array([3, 1], np.int64)})
    resp = client.post("/v1/graphs", data=data, content_type="application/onnx")
    assert resp.status_code == 201, resp.get_json()
    gid = resp.get_json()["graph_id"]
    name = "%const.1"  # the import keeps the indices as a constant of its own name
    body = problem(client.get(f"/v1/graphs/{gid}/onnx?gradients=true&wrt=%25const.1"), 422)
    assert f"'{name}' is a constant of the model" in body["detail"]
    model, sess = _session(client, f"/v1/graphs/{gid}/onnx?gradients=true&wrt=all")
    (idx,) = [i for i in model.graph.initializer if i.name == name]
    assert idx.data_type == onnx.TensorProto.INT64
    assert {i.name for i in model.graph.input} == {"x", "W", "upstream"}
    got = _run(sess, {"x": np.ones((2, 3), np.float32), "upstream": np.ones((2, 3),
                                                                           np.float32)})
    np.testing.assert_array_equal(got["output"], [[10, 11, 12], [4, 5, 6]])
    np.testing.assert_array_equal(got["grad:W"], [[0] * 3, [1] * 3, [0] * 3, [1] * 3])
    np.testing.assert_array_equal(got["grad:x"], np.ones((2, 3)))
