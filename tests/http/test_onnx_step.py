"""Training steps on an imported ONNX model: its stored float initializers are the
parameters a step updates by default, starting from their stored values, in the model's own
dtype; the update equals one SGD step taken by hand from the gradient endpoint's answer."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.engine.onnx.models import model_bytes

RNG = np.random.default_rng(7)


def _register(client, dtype: str) -> tuple[str, dict[str, np.ndarray]]:
    x = RNG.normal(size=(4, 3)).astype(dtype)
    params = {"W": RNG.normal(size=(3, 2)).astype(dtype), "b": RNG.normal(size=(2,)).astype(dtype)}
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
             helper.make_node("Add", ["h", "b"], ["y"], name="add")]
    data = model_bytes(nodes, {"x": x}, ["y"], params, dims={"x": ["N", 3]})
    resp = client.post("/v1/graphs", data=data, content_type="application/onnx")
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()["graph_id"], params


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_step_updates_the_stored_parameters_by_default(client, dtype):
    graph_id, params = _register(client, dtype)
    x = RNG.normal(size=(5, 3)).tolist()
    targets = RNG.normal(size=(5, 2)).tolist()
    loss = {"type": "mse", "targets": targets}
    grads = client.post(f"/v1/graphs/{graph_id}/gradients",
                        json={"values": {"x": x}, "wrt": "parameters", "loss": loss}).get_json()
    step = client.post(f"/v1/graphs/{graph_id}/step",
                       json={"values": {"x": x}, "loss": loss,
                             "optimizer": {"type": "sgd", "lr": 0.1}})
    body = step.get_json()
    assert step.status_code == 200, body
    assert sorted(body["values"]) == ["W", "b"]
    tol = 1e-5 if dtype == "float32" else 1e-12
    for name, start in params.items():
        want = start.astype(np.float64) - 0.1 * np.asarray(grads["gradients"][name])
        np.testing.assert_allclose(body["values"][name], want, rtol=tol, atol=tol)
    assert body["loss"] == pytest.approx(grads["loss"], rel=tol)


def test_a_step_starts_from_a_parameter_the_request_overrides(client):
    graph_id, params = _register(client, "float64")
    x = RNG.normal(size=(2, 3)).tolist()
    zero_w = np.zeros((3, 2))
    body = client.post(f"/v1/graphs/{graph_id}/step",
                       json={"values": {"x": x, "W": zero_w.tolist()}, "params": ["W"],
                             "loss": {"type": "mse", "targets": [[0, 0], [0, 0]]},
                             "optimizer": {"type": "sgd", "lr": 0.0}}).get_json()
    assert sorted(body["values"]) == ["W"]
    np.testing.assert_array_equal(body["values"]["W"], zero_w)  # lr 0: where it started
