"""batched, per_example and directions over HTTP: v1 inline, by id, MLP, OIP parameters —
each answer equal to the separate requests it replaces (float64), bad input a 422 naming
the field, B × parameters over the limits a 413 naming the product."""

from __future__ import annotations

from typing import Any

import numpy as np

from tests.flows.test_oip import register, tensor

RNG = np.random.default_rng(23)
EXPR = "sum(tanh(W @ x + b))"


def ok(client: Any, body: dict[str, Any], path: str = "/v1/gradients") -> dict[str, Any]:
    resp = client.post(path, json=body)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def problem(client: Any, body: dict[str, Any], status: int, path: str = "/v1/gradients"
            ) -> dict[str, Any]:
    resp = client.post(path, json=body)
    assert resp.status_code == status, resp.get_json()
    assert resp.mimetype == "application/problem+json"
    return resp.get_json()


def _values(n: int) -> tuple[dict[str, Any], np.ndarray]:
    shared = {"W": RNG.standard_normal((3, 4)).tolist(), "b": RNG.standard_normal(3).tolist()}
    return shared, RNG.standard_normal((n, 4))


def test_v1_inline_and_by_id_equal_separate_requests(client: Any) -> None:
    shared, xs = _values(5)
    gid = register(client, {"expression": EXPR})
    body = {"values": {**shared, "x": xs.tolist()}, "batched": ["x"], "per_example": True}
    for path, extra in (("/v1/gradients", {"expression": EXPR}),
                        (f"/v1/graphs/{gid}/gradients", {})):
        got = ok(client, {**body, **extra}, path)
        assert np.shape(got["gradients"]["W"]) == (5, 3, 4)
        for i in range(5):
            one = ok(client, {"expression": EXPR, "values": {**shared, "x": xs[i].tolist()}})
            np.testing.assert_allclose(got["output"][i], one["output"], rtol=1e-12)
            for n in ("W", "b", "x"):
                np.testing.assert_allclose(got["gradients"][n][i], one["gradients"][n],
                                           rtol=1e-10, atol=1e-14)


def test_directions_over_http(client: Any) -> None:
    shared, xs = _values(1)
    t = RNG.standard_normal((4, 4))
    got = ok(client, {"expression": "tanh(W @ x + b)", "values": {**shared, "x": xs[0].tolist()},
                      "tangents": {"x": t.tolist()}, "directions": 4, "wrt": []})
    assert np.shape(got["jvp"]) == (4, 3)
    for k in range(4):
        one = ok(client, {"expression": "tanh(W @ x + b)", "wrt": [],
                          "values": {**shared, "x": xs[0].tolist()},
                          "tangents": {"x": t[k].tolist()}})
        np.testing.assert_allclose(got["jvp"][k], one["jvp"], rtol=1e-10, atol=1e-14)


def test_bad_input_is_a_422_naming_the_field(client: Any) -> None:
    shared, xs = _values(3)
    base = {"expression": EXPR, "values": {**shared, "x": xs.tolist()}}
    e = problem(client, {**base, "values": {**shared, "x": xs[:2].tolist()},
                         "batched": ["x", "b"]}, 422)
    assert e["errors"][0]["loc"] == ["batched", 1]
    e = problem(client, {**base, "per_example": True}, 422)
    assert e["errors"][0]["loc"] == ["per_example"]
    e = problem(client, {**base, "values": {**shared, "x": xs[0].tolist()}, "directions": 2},
                422)
    assert e["errors"][0]["loc"] == ["directions"]
    e = problem(client, {**base, "batched": ["x"], "directions": 0}, 422)
    assert e["errors"][0]["loc"][-1] == "directions"
    one = {**base, "values": {**shared, "x": xs[0].tolist()}, "wrt": []}
    e = problem(client, {**one, "directions": 3,  # x's tangents 3 directions, b's 2
                         "tangents": {"x": np.ones((3, *xs[0].shape)).tolist(),
                                      "b": np.ones((2, *np.shape(shared["b"]))).tolist()}}, 422)
    assert e["errors"][0]["loc"] == ["tangents", "b"]
    assert "with directions: 3 it must be (3," in e["detail"]
    e = problem(client, {**one, "directions": 2, "hvp": {"x": xs[0].tolist()}}, 422)
    assert e["errors"][0]["loc"] == ["hvp", "x"]  # a direction without its K axis
    e = problem(client, {"expression": "tanh(W @ x + b)", "values": {**shared, "x": xs.tolist()},
                         "batched": ["x"], "upstream": np.ones((2, 3)).tolist()}, 422)
    assert e["errors"][0]["loc"] == ["upstream"]


def _mlp(batch: int, sizes: tuple[int, ...]) -> dict[str, Any]:
    layers = [{"weight": (RNG.standard_normal((o, i)) * 0.3).tolist(),
               "bias": RNG.standard_normal(o).tolist(), "activation": "tanh"}
              for i, o in zip(sizes, sizes[1:])]
    return {"layers": layers, "inputs": RNG.standard_normal((batch, sizes[0])).tolist(),
            "wrt": ["weights", "inputs"]}


def test_mlp_per_example_is_each_examples_own_loss(client: Any) -> None:
    for loss in ("softmax_cross_entropy", "hinge", "mse"):
        body = _mlp(4, (5, 6, 3))
        targets = [0, 2, 1, 2] if loss != "mse" else RNG.standard_normal((4, 3)).tolist()
        body["loss"] = {"type": loss, "targets": targets}
        body["l2"] = 0.05
        full = ok(client, body, "/v1/mlp/gradients")
        per = ok(client, {**body, "per_example": True}, "/v1/mlp/gradients")
        assert per["loss"] == pytest_approx(full["loss"])
        np.testing.assert_allclose(per["output"], full["output"], rtol=1e-12)
        for i in range(4):
            one = ok(client, {**body, "inputs": body["inputs"][i:i + 1], "l2": 0,
                              "loss": {"type": loss, "targets": targets[i:i + 1]}},
                     "/v1/mlp/gradients")
            for j in range(2):
                for part in ("weight", "bias"):
                    np.testing.assert_allclose(per["gradients"]["layers"][j][part][i],
                                               one["gradients"]["layers"][j][part],
                                               rtol=1e-10, atol=1e-14)
            np.testing.assert_allclose(per["gradients"]["inputs"][i],
                                       one["gradients"]["inputs"][0], rtol=1e-10, atol=1e-14)


def pytest_approx(v: float) -> Any:
    import pytest
    return pytest.approx(v, rel=1e-12)


def test_per_example_over_the_limits_is_a_413_naming_the_product(client: Any) -> None:
    # 256 examples of a 784-128-10 MLP: 256 × 101,770 per-example parameters.
    body = {"layers": [{"weight": {"shape": [128, 784], "dtype": "float32",
                                   "b64": _zeros_b64(128 * 784)},
                        "bias": [0.0] * 128, "activation": "relu"},
                       {"weight": {"shape": [10, 128], "dtype": "float32",
                                   "b64": _zeros_b64(10 * 128)}, "bias": [0.0] * 10}],
            "inputs": {"shape": [256, 784], "dtype": "float32", "b64": _zeros_b64(256 * 784)},
            "loss": {"type": "softmax_cross_entropy", "targets": [0] * 256},
            "per_example": True, "encoding": "b64", "dtype": "float32"}
    e = problem(client, body, 413, "/v1/mlp/gradients")
    assert "256 × 101770" in e["detail"] and e["errors"][0]["loc"] == ["per_example"]
    xs = {"shape": [5000, 64], "dtype": "float32", "b64": _zeros_b64(5000 * 64)}
    w = {"shape": [64, 64], "dtype": "float32", "b64": _zeros_b64(64 * 64)}
    e = problem(client, {"expression": "sum(tanh(W @ x))", "values": {"W": w, "x": xs},
                         "batched": ["x"], "per_example": True, "wrt": ["W"]}, 413)
    assert "5000 × 4096" in e["detail"] and e["errors"][0]["loc"] == ["per_example"]


def _zeros_b64(n: int) -> str:
    import base64
    return base64.b64encode(np.zeros(n, dtype=np.float32).tobytes()).decode()


def test_oip_parameters(client: Any) -> None:
    graph = {"inputs": {"x": {"shape": [4]}, "W": {"shape": [3, 4]}},
             "nodes": [{"id": "h", "op": "matmul", "args": ["W", "x"]},
                       {"id": "y", "op": "tanh", "args": ["h"]},
                       {"id": "s", "op": "sum", "args": ["y"]}], "output": "s"}
    register(client, {"graph": graph, "name": "bat"})
    w, xs = RNG.standard_normal((3, 4)), RNG.standard_normal((3, 4))
    resp = client.post("/v2/models/bat/infer", json={
        "inputs": [tensor("x", xs), tensor("W", w)],
        "outputs": [{"name": "output"}, {"name": "grad:W"}, {"name": "grad:x"}],
        "parameters": {"batched": ["x"], "per_example": True}})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    out = {o["name"]: np.reshape(o["data"], o["shape"]) for o in resp.get_json()["outputs"]}
    assert out["grad:W"].shape == (3, 3, 4)
    for i in range(3):
        one = client.post("/v2/models/bat/infer", json={
            "inputs": [tensor("x", xs[i]), tensor("W", w)]}).get_json()
        single = {o["name"]: np.reshape(o["data"], o["shape"]) for o in one["outputs"]}
        np.testing.assert_allclose(out["output"][i], single["output"], rtol=1e-12)
        np.testing.assert_allclose(out["grad:W"][i], single["grad:W"], rtol=1e-10)
        np.testing.assert_allclose(out["grad:x"][i], single["grad:x"], rtol=1e-10)


def test_a_batched_answer_over_the_response_limit_is_a_413_before_it_runs(make_app: Any
                                                                         ) -> None:
    client = make_app(max_response_bytes=200_000).test_client()
    shared = {"W": RNG.standard_normal((30, 40)).tolist(), "b": [0.0] * 30}
    xs = RNG.standard_normal((100, 40)).tolist()
    body = {"expression": EXPR, "values": {**shared, "x": xs}, "batched": ["x"]}
    ok(client, {**body, "wrt": ["x"]})  # 100 x 40 numbers fit
    e = problem(client, {**body, "per_example": True}, 413)  # 100 x 1,230 do not
    assert e["errors"][0]["loc"] == ["per_example"] and "100 × 1230" in e["detail"]


def test_oip_parameters_are_checked(client: Any) -> None:
    register(client, {"expression": "sum(x * x)", "name": "sq2"})
    for params, word in (({"directions": 2}, "directions"), ({"batched": "x"}, "batched"),
                         ({"per_example": "yes"}, "per_example")):
        resp = client.post("/v2/models/sq2/infer", json={
            "inputs": [tensor("x", np.ones((2, 3)))], "parameters": params})
        assert resp.status_code == 422 and word in resp.get_json()["error"], resp.get_json()


def test_mlp_per_example_with_upstream(client: Any) -> None:
    body = _mlp(3, (4, 5, 2))
    ups = RNG.standard_normal((3, 2))
    body["upstream"] = ups.tolist()
    per = ok(client, {**body, "per_example": True}, "/v1/mlp/gradients")
    full = ok(client, body, "/v1/mlp/gradients")
    summed = np.sum(per["gradients"]["layers"][0]["weight"], axis=0)
    np.testing.assert_allclose(summed, full["gradients"]["layers"][0]["weight"], rtol=1e-10)
    for i in range(3):
        one = ok(client, {**body, "inputs": body["inputs"][i], "upstream": ups[i].tolist()},
                 "/v1/mlp/gradients")
        np.testing.assert_allclose(per["gradients"]["layers"][1]["bias"][i],
                                   one["gradients"]["layers"][1]["bias"], rtol=1e-10)
        np.testing.assert_allclose(per["gradients"]["inputs"][i], one["gradients"]["inputs"],
                                   rtol=1e-10)


def test_batched_loss_over_http_answers_each_examples_loss(client: Any) -> None:
    shared, _ = _values(1)
    xs = RNG.standard_normal((3, 2, 4))
    expr = "matmul(x, transpose(W)) + b"
    got = ok(client, {"expression": expr, "values": {**shared, "x": xs.tolist()},
                      "batched": ["x"], "loss": {"type": "softmax_cross_entropy",
                                                 "targets": [[0, 1], [2, 2], [1, 0]]}})
    assert np.shape(got["loss"]) == (3,) and np.shape(got["gradients"]["x"]) == (3, 2, 4)
    one = ok(client, {"expression": expr, "values": {**shared, "x": xs[1].tolist()},
                      "loss": {"type": "softmax_cross_entropy", "targets": [2, 2]}})
    assert got["loss"][1] == pytest_approx(one["loss"])
    np.testing.assert_allclose(got["gradients"]["x"][1], one["gradients"]["x"], rtol=1e-10)
