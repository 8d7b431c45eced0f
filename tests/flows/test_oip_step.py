"""Training steps over the Open Inference Protocol (docs/oip.md, "Training steps"): an infer
request whose parameters name an optimizer answers the same numbers as
POST /v1/graphs/{id}/step, with the state as tensors in and out, in JSON or binary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import build_app

DATA = json.loads((Path(__file__).parents[1] / "engine" / "data" /
                   "optim_trajectories.json").read_text())


@pytest.fixture(scope="module")
def client():
    c = build_app().test_client()
    assert c.post("/v1/graphs", json={"expression": DATA["expression"],
                                      "name": "tanh-fit"}).status_code in (200, 201)
    return c


def _tensor(name: str, value: object) -> dict:
    arr = np.asarray(value, dtype=np.float64)
    return {"name": name, "datatype": "FP64", "shape": list(arr.shape),
            "data": arr.reshape(-1).tolist()}


def _case(kind: str) -> dict:
    return next(c for c in DATA["cases"] if c["type"] == kind and c["options"].get("amsgrad"))


def infer(client, body: dict, status: int = 200) -> dict:
    resp = client.post("/v2/models/tanh-fit/infer", json=body)
    assert resp.status_code == status, resp.get_data(as_text=True)
    return resp.json


def test_steps_over_oip_follow_torch_with_the_state_as_tensors(client):
    case = _case("adamw")
    hyper = {k: (",".join(map(str, v)) if k == "betas" else v)
             for k, v in case["options"].items()}
    values = dict(case["values"])
    state_inputs: list[dict] = []
    step = None
    for k in range(0, len(case["steps"]), 2):  # two steps a request, the state passed back
        params = {"optimizer": "adamw", "params": "W,b", "steps": 2, **hyper}
        if step is not None:
            params["step"] = step
        out = infer(client, {"inputs": [_tensor(n, v) for n, v in values.items()]
                             + state_inputs, "parameters": params})
        got = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in out["outputs"]}
        rec = case["steps"][k + 1]
        for n in ("W", "b"):
            np.testing.assert_allclose(got[f"value:{n}"], rec["params"][n], rtol=1e-12)
            for slot, v in rec["state"]["slots"][n].items():
                np.testing.assert_allclose(got[f"state:{n}:{slot}"], v, rtol=1e-12)
            values[n] = got[f"value:{n}"].tolist()
        np.testing.assert_allclose(got["losses"], [case["steps"][k]["loss"], rec["loss"]],
                                   rtol=1e-12)
        step = int(got["state:step"][0])
        assert step == k + 2
        state_inputs = [_tensor(name, got[name]) for name in got if name.startswith("state:")
                        and name != "state:step"]


def test_oip_and_v1_steps_agree_and_outputs_can_be_binary(client):
    case = DATA["cases"][0]
    gid = client.post("/v1/graphs", json={"expression": DATA["expression"]}).json["graph_id"]
    v1 = client.post(f"/v1/graphs/{gid}/step", json={
        "values": case["values"], "params": ["W"], "steps": 3,
        "optimizer": {"type": "rmsprop", "momentum": 0.5, "centered": True}}).json
    resp = client.post("/v2/models/tanh-fit/infer", json={
        "inputs": [_tensor(n, v) for n, v in case["values"].items()],
        "parameters": {"optimizer": "rmsprop", "momentum": 0.5, "centered": True,
                       "params": "W", "steps": 3},
        "outputs": [{"name": "value:W", "parameters": {"binary_data": True}},
                    {"name": "losses"}]})
    assert resp.status_code == 200
    head_len = int(resp.headers["Inference-Header-Content-Length"])
    raw = resp.get_data()
    head = json.loads(raw[:head_len])
    assert [o["name"] for o in head["outputs"]] == ["value:W", "losses"]
    w = np.frombuffer(raw[head_len:], dtype="<f8").reshape(head["outputs"][0]["shape"])
    assert w.tolist() == v1["values"]["W"]
    assert head["outputs"][1]["data"] == v1["losses"]


@pytest.mark.parametrize(("params", "extra", "loc"), [
    ({"optimizer": "adam"}, [], ["parameters", "params"]),
    ({"optimizer": 3, "params": "W"}, [], ["parameters", "optimizer"]),
    ({"optimizer": "nadam", "params": "W"}, [], ["parameters", "optimizer"]),
    ({"optimizer": "adam", "params": "W", "lr": -1.0}, [], ["parameters", "lr"]),
    ({"optimizer": "adam", "params": "W", "momentum": 0.9}, [], ["parameters", "momentum"]),
    ({"optimizer": "adam", "params": "W", "betas": "0.9"}, [], ["parameters", "betas"]),
    ({"optimizer": "adam", "params": "W", "steps": 0}, [], ["parameters", "steps"]),
    ({"optimizer": "adam", "params": "V"}, [], ["parameters", "params"]),
    ({"optimizer": "adam", "params": "W,W"}, [], ["parameters", "params"]),
    ({"optimizer": "adam", "params": "W"}, [_tensor("state:W:exp_avg", np.zeros((2, 3)))],
     ["parameters", "step"]),
    ({"optimizer": "adam", "params": "W", "step": 1},
     [_tensor("state:W:exp_avg", np.zeros((2, 3)))], ["inputs", "state:W:exp_avg_sq"]),
    ({"optimizer": "adam", "params": "W", "step": 1},
     [_tensor("state:W:exp_avg", np.zeros((3, 2))),
      _tensor("state:W:exp_avg_sq", np.zeros((2, 3)))], ["inputs", "state:W:exp_avg"]),
])
def test_bad_step_requests_name_the_parameter_or_input(client, params, extra, loc):
    case = DATA["cases"][0]
    resp = client.post("/v2/models/tanh-fit/infer", json={
        "inputs": [_tensor(n, v) for n, v in case["values"].items()] + extra,
        "parameters": params})
    assert resp.status_code == 422, resp.get_data(as_text=True)
    assert "error" in resp.json
    word = {"parameters": "parameter", "inputs": "input"}[loc[0]]
    assert f"{word} '{loc[1]}'" in resp.json["error"] or loc[1] in resp.json["error"]


def test_an_infer_without_an_optimizer_is_unchanged(client):
    case = DATA["cases"][0]
    out = infer(client, {"inputs": [_tensor(n, v) for n, v in case["values"].items()]})
    names = [o["name"] for o in out["outputs"]]
    assert names[0] == "output" and set(names[1:]) == {"grad:W", "grad:b", "grad:x", "grad:t"}
