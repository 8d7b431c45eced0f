"""POST /v1/graphs/{graph_id}/step and POST /v1/mlp/step (docs/training.md).

The oracle is torch.optim itself: recorded trajectories (tests/engine/data/, written by
make_optim_trajectories.py with PyTorch) of every optimizer and option on the objective
``sum((tanh(W @ x + b) - t) ** 2)``, replayed through the HTTP API with the state passed
back each request, float64 to 1e-12 relative.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.engine.limits import Deadline, Limits
from service.engine.optim import apply, init_state, make_optimizer
from service.engine.training import train
from service.errors import DeadlineExceeded
from tests.conftest import build_app

DATA = json.loads((Path(__file__).parents[1] / "engine" / "data" /
                   "optim_trajectories.json").read_text())
CASES = DATA["cases"]


@pytest.fixture(scope="module")
def client():
    return build_app().test_client()


@pytest.fixture(scope="module")
def graph_id(client) -> str:
    resp = client.post("/v1/graphs", json={"expression": DATA["expression"]})
    assert resp.status_code in (200, 201)
    return resp.json["graph_id"]


def _id(case: dict) -> str:
    return case["type"] + "(" + ",".join(f"{k}={v}" for k, v in case["options"].items()) + ")"


def step(client, graph_id: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
    resp = client.post(f"/v1/graphs/{graph_id}/step", json=body)
    assert resp.status_code == status, resp.get_data(as_text=True)
    return resp.json


def close(a: Any, b: Any, rtol: float = 1e-12) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=np.float64),
                               np.asarray(b, dtype=np.float64), rtol=rtol, atol=1e-300)


def _first(case: dict) -> dict[str, Any]:
    return {"values": case["values"], "params": ["W", "b"],
            "optimizer": {"type": case["type"], **case["options"]}}


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_one_request_per_step_follows_torch(client, graph_id, case):
    body = _first(case)
    values = dict(case["values"])
    for k, rec in enumerate(case["steps"]):
        out = step(client, graph_id, body)
        close(out["loss"], rec["loss"])
        assert out["losses"] == [out["loss"]]
        for n in ("W", "b"):
            close(out["values"][n], rec["params"][n])
            for slot, v in rec["state"]["slots"][n].items():
                close(out["state"]["slots"][n][slot], v)
            assert set(out["state"]["slots"][n]) == set(rec["state"]["slots"][n])
        assert out["state"]["step"] == k + 1
        values.update(out["values"])
        body = {**body, "values": values, "state": out["state"]}


@pytest.mark.parametrize("case", CASES[::3], ids=_id)
def test_k_steps_in_one_request_equal_k_requests(client, graph_id, case):
    k = len(case["steps"])
    one = step(client, graph_id, {**_first(case), "steps": k})
    body = _first(case)
    losses = []
    for _ in range(k):
        out = step(client, graph_id, body)
        losses += out["losses"]
        body = {**body, "values": {**body["values"], **out["values"]}, "state": out["state"]}
    assert one["values"] == out["values"] and one["state"] == out["state"]
    assert one["losses"] == losses and one["loss"] == losses[0]
    close(losses, [rec["loss"] for rec in case["steps"]])


def test_float32_steps_in_float32(client, graph_id):
    case = CASES[5]
    out = step(client, graph_id, {**_first(case), "dtype": "float32", "encoding": "b64",
                                  "steps": 3})
    w = out["values"]["W"]
    assert w["dtype"] == "float32"
    import base64

    got = np.frombuffer(base64.b64decode(w["b64"]), dtype="<f4").reshape(w["shape"])
    close(got, case["steps"][2]["params"]["W"], rtol=1e-5)
    assert out["state"]["slots"]["W"]["exp_avg"]["dtype"] == "float32"


def test_a_graph_with_a_loss(client):
    """The objective is ``loss`` of a non-scalar output: the same as the gradient endpoint's
    loss gradients, then the update."""
    gid = client.post("/v1/graphs", json={"expression": "x @ W"}).json["graph_id"]
    W, x = [[0.5, -0.2, 0.1], [0.3, -0.4, 0.2]], [[1.0, 2.0], [-0.5, 0.3]]
    loss = {"type": "softmax_cross_entropy", "targets": [2, 0]}
    out = step(client, gid, {"values": {"W": W, "x": x}, "params": ["W"], "loss": loss,
                             "optimizer": {"type": "sgd", "lr": 0.5}})
    grads = client.post(f"/v1/graphs/{gid}/gradients",
                        json={"values": {"W": W, "x": x}, "wrt": ["W"], "loss": loss}).json
    close(out["values"]["W"], np.asarray(W) - 0.5 * np.asarray(grads["gradients"]["W"]))
    close(out["loss"], grads["loss"])
    assert list(out["values"]) == ["W"]  # only the parameters come back


# --- the MLP form ------------------------------------------------------------------------

NET = {"layers": [{"weight": [[0.2, -0.5], [0.4, 0.1], [-0.3, 0.3]], "bias": [0.0, 0.1, -0.1],
                   "activation": "tanh"},
                  {"weight": [[0.3, -0.2, 0.5], [-0.1, 0.4, 0.2]], "bias": [0.05, -0.05]}],
       "inputs": [[1.0, 2.0], [-1.0, 0.5], [0.3, -0.7]],
       "loss": {"type": "softmax_cross_entropy", "targets": [0, 1, 1]}}


def test_mlp_step_is_gradients_then_the_update(client):
    opt = {"type": "adamw", "lr": 0.05, "amsgrad": True}
    out = client.post("/v1/mlp/step", json={**NET, "optimizer": opt}).json
    grads = client.post("/v1/mlp/gradients", json=NET).json
    names = [f"layers.{i}.{p}" for i in range(2) for p in ("weight", "bias")]
    params = {f"layers.{i}.{p}": np.asarray(NET["layers"][i][p]) for i in range(2)
              for p in ("weight", "bias")}
    g = {f"layers.{i}.{p}": np.asarray(grads["gradients"]["layers"][i][p]) for i in range(2)
         for p in ("weight", "bias")}
    o = make_optimizer("adamw", {"lr": 0.05, "amsgrad": True})
    want, state = apply(o, params, g, init_state(o, params), np.float64)
    for name in names:
        i, p = int(name.split(".")[1]), name.split(".")[2]
        close(out["layers"][i][p], want[name])
        close(out["state"]["slots"][name]["max_exp_avg_sq"], state.slots[name]["max_exp_avg_sq"])
    assert [layer["activation"] for layer in out["layers"]] == ["tanh", "identity"]
    close(out["loss"], grads["loss"])


def test_mlp_step_equals_the_registered_architecture_step(client):
    """/v1/mlp/step and /v1/graphs/{id}/step on the architecture's registered graph agree:
    one engine, one optimizer."""
    reg = client.post("/v1/mlp/graphs", json={
        "layers": [{"in_features": 2, "out_features": 3, "activation": "tanh"},
                   {"in_features": 3, "out_features": 2}],
        "loss": "softmax_cross_entropy"})
    if reg.status_code not in (200, 201):
        pytest.fail(reg.get_data(as_text=True))
    gid = reg.json["graph_id"]
    names = list(reg.json["inputs"])
    values = {"x": NET["inputs"], "targets": NET["loss"]["targets"]}
    for i, layer in enumerate(NET["layers"]):
        values[f"layers.{i}.weight"], values[f"layers.{i}.bias"] = layer["weight"], layer["bias"]
    assert set(values) <= set(names), names
    params = sorted(n for n in names if n.startswith("layers."))
    opt = {"type": "rmsprop", "lr": 0.01, "centered": True}
    by_graph = step(client, gid, {"values": values, "params": params, "optimizer": opt,
                                  "steps": 3})
    by_mlp = client.post("/v1/mlp/step", json={**NET, "optimizer": opt, "steps": 3}).json
    assert by_graph["losses"] == by_mlp["losses"]
    for i in range(2):
        for p in ("weight", "bias"):
            assert by_graph["values"][f"layers.{i}.{p}"] == by_mlp["layers"][i][p]


def test_mlp_params_subset_leaves_the_rest(client):
    out = client.post("/v1/mlp/step", json={**NET, "params": ["layers.1.bias"],
                                            "optimizer": {"type": "sgd", "lr": 1.0}}).json
    assert out["layers"][0] == NET["layers"][0]
    assert out["layers"][1]["weight"] == NET["layers"][1]["weight"]
    assert out["layers"][1]["bias"] != NET["layers"][1]["bias"]
    assert list(out["state"]["slots"]) == ["layers.1.bias"]


# --- bad input: a 4xx naming the field, nothing run -------------------------------------

BASE = {"values": CASES[0]["values"], "params": ["W", "b"],
        "optimizer": {"type": "adam", "lr": 0.01}}
ADAM_STATE = {"step": 1, "slots": {n: {"exp_avg": np.zeros(s).tolist(),
                                       "exp_avg_sq": np.zeros(s).tolist()}
                                   for n, s in (("W", (2, 3)), ("b", (2,)))}}


def _with(**changes: Any) -> dict[str, Any]:
    return {**BASE, **changes}


@pytest.mark.parametrize(("body", "status", "loc"), [
    (_with(optimizer={"type": "sgd"}), 422, ["optimizer", "sgd", "lr"]),
    (_with(optimizer={"type": "nadam"}), 422, ["optimizer"]),
    (_with(optimizer={"type": "adam", "momentum": 0.9}), 422, ["optimizer", "adam", "momentum"]),
    (_with(optimizer={"type": "adam", "betas": [0.9, 1.5]}), 422,
     ["optimizer", "adam", "betas", 1]),
    (_with(optimizer={"type": "adam", "lr": -1}), 422, ["optimizer", "adam", "lr"]),
    (_with(optimizer={"type": "sgd", "lr": 0.1, "nesterov": True}), 422,
     ["optimizer", "nesterov"]),
    (_with(params=None), 422, ["params"]),
    (_with(params=[]), 422, ["params"]),
    (_with(params=["W", "W"]), 422, ["params"]),
    (_with(params=["V"]), 422, ["params", 0]),
    (_with(values={"W": BASE["values"]["W"], "x": [0, 0, 0], "t": [0, 0]}), 422,
     ["values", "b"]),
    (_with(steps=0), 422, ["steps"]),
    (_with(steps=1.5), 422, ["steps"]),
    (_with(steps=10**9), 422, ["steps"]),
    (_with(state={"step": 1, "slots": {"W": ADAM_STATE["slots"]["W"]}}), 422,
     ["state", "slots", "b"]),
    (_with(state={"step": 1, "slots": {**ADAM_STATE["slots"],
                                       "W": {"exp_avg": ADAM_STATE["slots"]["W"]["exp_avg"]}}}),
     422, ["state", "slots", "W", "exp_avg_sq"]),
    (_with(state={"step": 1, "slots": {**ADAM_STATE["slots"], "b": {
        "exp_avg": [0.0, 0.0, 0.0], "exp_avg_sq": [0.0, 0.0]}}}), 422,
     ["state", "slots", "b", "exp_avg"]),
    (_with(state={"step": 1, "slots": {**ADAM_STATE["slots"], "b": {
        "exp_avg": [0.0, 0.0], "exp_avg_sq": [0.0, 0.0], "sum": [0.0, 0.0]}}}), 422,
     ["state", "slots", "b", "sum"]),
    (_with(state={"step": -1, "slots": {}}), 422, ["state", "step"]),
    (_with(state={**ADAM_STATE, "slots": {**ADAM_STATE["slots"], "x": {}}}), 422,
     ["state", "slots", "x"]),
    (_with(trace=True), 422, ["trace"]),
    (_with(loss={"type": "mse", "targets": [1.0, 2.0]}), 422, ["loss", "targets"]),
])
def test_bad_input_names_the_field(client, graph_id, body, status, loc):
    body = {k: v for k, v in body.items() if v is not None}
    resp = client.post(f"/v1/graphs/{graph_id}/step", json=body)
    assert resp.status_code == status, resp.get_data(as_text=True)
    assert resp.content_type == "application/problem+json"
    assert resp.json["errors"][0]["loc"] == loc, resp.json


def test_a_non_scalar_output_needs_a_loss(client):
    gid = client.post("/v1/graphs", json={"expression": "W @ x"}).json["graph_id"]
    resp = client.post(f"/v1/graphs/{gid}/step", json={
        "values": {"W": [[1.0, 2.0]], "x": [1.0, 1.0]}, "params": ["W"],
        "optimizer": {"type": "sgd", "lr": 0.1}})
    assert resp.status_code == 422
    assert resp.json["errors"][0]["loc"] == ["loss"]


def test_a_non_finite_update_names_the_parameter(client, graph_id):
    gid = client.post("/v1/graphs", json={"expression": "sum(w) + v"}).json["graph_id"]
    resp = client.post(f"/v1/graphs/{gid}/step", json={
        "values": {"w": [-1e308, 1.0], "v": 1.0}, "params": ["v", "w"],
        "optimizer": {"type": "sgd", "lr": 1e308}})
    assert resp.status_code == 422
    assert resp.json["errors"][0]["loc"] == ["values", "w"]
    assert "not finite" in resp.json["detail"]


def test_a_non_finite_loss_is_a_422(client):
    gid = client.post("/v1/graphs", json={"expression": "log(w)"}).json["graph_id"]
    resp = client.post(f"/v1/graphs/{gid}/step", json={
        "values": {"w": 0.5}, "params": ["w"], "optimizer": {"type": "sgd", "lr": 10.0},
        "steps": 3})  # w goes below 0 after the first step: log is NaN there
    assert resp.status_code == 422
    assert resp.json["errors"][0]["loc"][0] in ("loss", "values")


def test_mlp_bad_input(client):
    resp = client.post("/v1/mlp/step", json={**NET, "params": ["layers.5.weight"],
                                             "optimizer": {"type": "sgd", "lr": 0.1}})
    assert resp.status_code == 422 and resp.json["errors"][0]["loc"] == ["params", 0]
    resp = client.post("/v1/mlp/step", json={**NET, "params": ["layers.0.bias"] * 2,
                                             "optimizer": {"type": "sgd", "lr": 0.1}})
    assert resp.status_code == 422 and resp.json["errors"][0]["loc"] == ["params", 1]
    resp = client.post("/v1/mlp/step", json={**{k: v for k, v in NET.items() if k != "loss"},
                                             "upstream": [[1.0, 1.0]] * 3,
                                             "optimizer": {"type": "sgd", "lr": 0.1}})
    assert resp.status_code == 422
    bad = {"step": 1, "slots": {"layers.0.weight": {"momentum_buffer": [[0.0, 0.0]]}}}
    resp = client.post("/v1/mlp/step", json={
        **NET, "params": ["layers.0.weight"], "state": bad,
        "optimizer": {"type": "sgd", "lr": 0.1, "momentum": 0.9}})
    assert resp.status_code == 422
    assert resp.json["errors"][0]["loc"] == ["state", "slots", "layers.0.weight",
                                             "momentum_buffer"]


def test_steps_over_the_work_limit_is_a_413_before_any_step(make_app):
    client = make_app(limits=Limits(max_flops=200_000)).test_client()
    body = {**NET, "optimizer": {"type": "sgd", "lr": 0.1}}
    assert client.post("/v1/mlp/step", json=body).status_code == 200
    resp = client.post("/v1/mlp/step", json={**body, "steps": 5000})
    assert resp.status_code == 413
    assert resp.json["errors"][0]["loc"] == ["steps"]
    assert "GRADSERVE_MAX_FLOPS" in resp.json["detail"]


def test_answer_over_the_response_limit_is_a_413(make_app):
    client = make_app(max_response_bytes=2000).test_client()
    resp = client.post("/v1/mlp/step", json={**NET, "optimizer": {"type": "adam"}})
    assert resp.status_code == 413
    assert "GRADSERVE_MAX_RESPONSE_BYTES" in resp.json["detail"]


def test_the_deadline_stops_between_steps():
    """train checks the deadline between steps: a 503 naming 'steps', nothing returned."""
    opt = make_optimizer("sgd", {"lr": 0.1})
    calls = []

    def slow(values):
        calls.append(1)
        time.sleep(0.03)
        return np.float64(float(np.sum(values["w"] ** 2))), {"w": 2 * values["w"]}

    with pytest.raises(DeadlineExceeded) as err:
        train(slow, {"w": np.ones(3)}, ("w",), opt, init_state(opt, {"w": np.ones(3)}), 50,
              np.float64, deadline=Deadline.after(0.05))
    assert err.value.loc == ("steps",)
    assert "nothing was applied" in err.value.detail
    assert 1 <= len(calls) < 50


def test_a_request_past_its_deadline_is_a_503_and_the_worker_goes_on(make_app):
    app = make_app(request_deadline_s=0.05)
    client = app.test_client()
    big = {"layers": [{"weight": np.full((64, 32), 0.01).tolist(), "bias": [0.0] * 64,
                       "activation": "tanh"},
                      {"weight": np.full((3, 64), 0.01).tolist(), "bias": [0.0] * 3}],
           "inputs": np.ones((256, 32)).tolist(),
           "loss": {"type": "softmax_cross_entropy", "targets": [0, 1, 2] * 85 + [0]},
           "optimizer": {"type": "adam"}, "steps": 10_000}
    resp = client.post("/v1/mlp/step", json=big)
    assert resp.status_code == 503
    assert resp.headers["Retry-After"]
    ok = client.post("/v1/mlp/step", json={**NET, "optimizer": {"type": "sgd", "lr": 0.1}})
    assert ok.status_code == 200


def _b64_f32(value: Any) -> dict[str, Any]:
    import base64

    arr = np.asarray(value, dtype="<f4")
    return {"shape": list(arr.shape), "dtype": "float32",
            "b64": base64.b64encode(arr.tobytes()).decode()}


@pytest.mark.parametrize("case", DATA["float32"], ids=_id)
def test_float32_requests_follow_torchs_float32_run(client, graph_id, case):
    """dtype float32: gradients and updates in float32, as torch's float32 run (recorded)
    computes them; the state goes back in the binary float32 form."""
    import base64

    def unb64(t: dict[str, Any]) -> np.ndarray:
        assert t["dtype"] == "float32"
        return np.frombuffer(base64.b64decode(t["b64"]), dtype="<f4").reshape(t["shape"])

    values = {n: _b64_f32(v) for n, v in case["values"].items()}
    body: dict[str, Any] = {"values": values, "params": ["W", "b"], "dtype": "float32",
                            "encoding": "b64",
                            "optimizer": {"type": case["type"], **case["options"]}}
    for rec in case["steps"]:
        out = step(client, graph_id, body)
        np.testing.assert_allclose(out["loss"], rec["loss"], rtol=1e-5)
        for n in ("W", "b"):
            close(unb64(out["values"][n]), rec["params"][n], rtol=1e-5)
        values = {**values, **out["values"]}
        body = {**body, "values": values, "state": out["state"]}
