"""The Open Inference Protocol with the real ``tritonclient.http`` against a real gunicorn.

Every call goes through tritonclient's own framing (JSON and binary tensors) and its own
error parsing: a failing request must raise InferenceServerException carrying our message
and status, never hang or surface a 5xx. Results are compared bit for bit with /v1.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import assert_clean_logs
from tests.e2e.server import GunicornServer
from tests.e2e.triton import infer_input as inp
from tests.e2e.triton import requested as out
from tests.e2e.triton import triton_client
from tests.lecture import EX3

pytestmark = pytest.mark.e2e

KEY = "oip-e2e-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMIT = 256 * 1024  # GRADSERVE_MAX_BODY_BYTES of this server
W = np.array(EX3["values"]["W"])
X = np.array(EX3["values"]["x"])
MLP_ARCH = {"layers": [{"in_features": 6, "out_features": 5, "activation": "relu"},
                       {"in_features": 5, "out_features": 3}],
            "loss": "softmax_cross_entropy", "name": "e2e-mlp"}


@pytest.fixture(scope="module")
def server() -> Iterator[GunicornServer]:
    env = {"GRADSERVE_API_KEYS": KEY, "GRADSERVE_MAX_BODY_BYTES": str(LIMIT)}
    with GunicornServer(env, workers=2, threads=2) as srv:
        for body in ({"expression": EX3["expression"], "name": "ex3"},
                     {"expression": "W @ x", "name": "linear"},
                     {"graph": {"inputs": {"W": {"shape": [2, 2]}, "x": {"shape": [2]}},
                                "nodes": [{"id": "f", "op": "matmul", "args": ["W", "x"]}],
                                "output": "f"}, "name": "declared"}):
            status, _, raw = srv.post("/v1/graphs", body, headers=AUTH)
            assert status in (200, 201), raw
        status, _, raw = srv.post("/v1/mlp/graphs", MLP_ARCH, headers=AUTH)
        assert status in (200, 201), raw
        yield srv
        assert_clean_logs(srv)


@pytest.fixture(scope="module")
def triton(server: GunicornServer) -> Iterator[Any]:
    with triton_client(server) as client:
        yield client


def v1(server: GunicornServer, path: str, body: dict[str, Any]) -> dict[str, Any]:
    status, _, raw = server.post(path, body, headers=AUTH)
    assert status == 200, raw
    return json.loads(raw)


def b64(t: dict[str, Any], dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(t["b64"]), dtype).reshape(t["shape"])


def raises(call: Any, status: str, *needles: str) -> str:
    with pytest.raises(InferenceServerException) as info:
        call()
    exc = info.value
    assert exc.status() == status, (exc.status(), exc.message())
    for needle in needles:
        assert needle in exc.message(), exc.message()
    return exc.message()


def test_server_live_ready_and_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata(headers=AUTH)
    assert meta["name"] == "gradserve" and "binary_tensor_data" in meta["extensions"]


def test_model_metadata_and_ready(triton):
    assert triton.is_model_ready("ex3", headers=AUTH)
    assert not triton.is_model_ready("no-such-model", headers=AUTH)
    meta = triton.get_model_metadata("declared", headers=AUTH)
    assert meta["inputs"] == [{"name": "W", "datatype": "FP64", "shape": [2, 2]},
                              {"name": "x", "datatype": "FP64", "shape": [2]}]
    assert [(o["name"], o["shape"]) for o in meta["outputs"]] == [
        ("output", [2]), ("grad:W", [2, 2]), ("grad:x", [2])]


def test_json_fp64_equals_v1_bit_for_bit(server, triton):
    ref = v1(server, "/v1/gradients", {"expression": EX3["expression"], "values": EX3["values"]})
    res = triton.infer("ex3", [inp("W", W, binary=False), inp("x", X, binary=False)],
                       outputs=[out("output", False), out("grad:W", False), out("grad:x", False)],
                       headers=AUTH)
    assert res.get_response()["model_name"] == "ex3"
    assert res.as_numpy("output").dtype == np.float64
    assert res.as_numpy("output").item() == ref["output"]
    assert res.as_numpy("grad:W").tolist() == ref["gradients"]["W"]
    assert res.as_numpy("grad:x").tolist() == ref["gradients"]["x"]


def test_binary_fp32_equals_v1_bit_for_bit(server, triton):
    w, x = W.astype(np.float32), X.astype(np.float32)
    ref = v1(server, "/v1/gradients", {
        "expression": EX3["expression"], "dtype": "float32", "encoding": "b64",
        "values": {"W": w.tolist(), "x": x.tolist()}})
    res = triton.infer("ex3", [inp("W", w), inp("x", x)], headers=AUTH)  # all outputs, binary
    assert res.as_numpy("grad:W").dtype == np.float32
    assert res.as_numpy("output").tobytes() == b64(ref["output"], "<f4").tobytes()
    assert res.as_numpy("grad:W").tobytes() == b64(ref["gradients"]["W"], "<f4").tobytes()
    assert res.as_numpy("grad:x").tobytes() == b64(ref["gradients"]["x"], "<f4").tobytes()


def test_upstream_input_and_an_output_subset(server, triton):
    g = np.array([1.0, -2.0])
    ref = v1(server, "/v1/gradients", {"expression": "W @ x", "values": EX3["values"],
                                       "upstream": g.tolist()})
    res = triton.infer("linear", [inp("W", W), inp("x", X), inp("grad:output", g)],
                       outputs=[out("grad:W")], headers=AUTH)
    assert [o["name"] for o in res.get_response()["outputs"]] == ["grad:W"]
    assert res.as_numpy("grad:x") is None
    assert res.as_numpy("grad:W").tolist() == ref["gradients"]["W"]


def test_mlp_over_oip_equals_the_mlp_endpoint(server, triton):
    rng = np.random.default_rng(7)
    w0, b0 = rng.normal(size=(5, 6)), rng.normal(size=5)
    w1, b1 = rng.normal(size=(3, 5)), rng.normal(size=3)
    x, y = rng.normal(size=(4, 6)), np.array([0, 2, 1, 2])
    ref = v1(server, "/v1/mlp/gradients", {
        "layers": [{"weight": w0.tolist(), "bias": b0.tolist(), "activation": "relu"},
                   {"weight": w1.tolist(), "bias": b1.tolist()}],
        "inputs": x.tolist(), "loss": {"type": "softmax_cross_entropy", "targets": y.tolist()}})
    inputs = [inp("layers.0.weight", w0), inp("layers.0.bias", b0),
              inp("layers.1.weight", w1), inp("layers.1.bias", b1), inp("x", x),
              inp("targets", y.astype(np.int64))]
    wanted = ["output"] + [f"grad:layers.{i}.{p}" for i in range(2) for p in ("weight", "bias")]
    res = triton.infer("e2e-mlp", inputs, outputs=[out(n) for n in wanted], headers=AUTH)
    assert res.as_numpy("output").item() == ref["loss"]
    for i in range(2):
        assert res.as_numpy(f"grad:layers.{i}.weight").tolist() == \
            ref["gradients"]["layers"][i]["weight"]
        assert res.as_numpy(f"grad:layers.{i}.bias").tolist() == \
            ref["gradients"]["layers"][i]["bias"]


def test_errors_raise_the_clients_exception_with_our_message(triton):
    ok = [inp("W", W), inp("x", X)]
    raises(lambda: triton.infer("no-such-model", ok, headers=AUTH), "404", "no-such-model")
    raises(lambda: triton.infer("ex3", [inp("W", W.astype(np.int32)), inp("x", X)],
                                headers=AUTH), "422", "'W'", "FP32 or FP64")
    raises(lambda: triton.infer("declared", [inp("W", np.ones((3, 2))), inp("x", X)],
                                headers=AUTH), "422", "'W' has shape [3, 2]")
    bad = inp("W", W)
    bad.set_shape([3, 2])  # binary_data_size stays 32 bytes: the framing no longer fits
    raises(lambda: triton.infer("ex3", [bad, inp("x", X)], headers=AUTH), "422",
           "binary_data_size is 32 bytes", "takes 48")
    big = np.ones((200, 200))  # 320 kB of FP64, over this server's 256 KiB body limit
    raises(lambda: triton.infer("ex3", [inp("W", big), inp("x", np.ones(200))],
                                headers=AUTH), "413", "GRADSERVE_MAX_BODY_BYTES")
    raises(lambda: triton.infer("ex3", ok), "401", "Bearer")
    # The server is fine afterwards.
    assert triton.infer("ex3", ok, headers=AUTH).as_numpy("output").shape == ()


def test_versioned_calls_config_and_repository_index(triton):
    assert triton.is_model_ready("ex3", model_version="1", headers=AUTH)
    assert not triton.is_model_ready("ex3", model_version="2", headers=AUTH)
    meta = triton.get_model_metadata("declared", model_version="1", headers=AUTH)
    assert meta == triton.get_model_metadata("declared", headers=AUTH)
    cfg = triton.get_model_config("declared", headers=AUTH)
    assert cfg == triton.get_model_config("declared", model_version="1", headers=AUTH)
    assert cfg["name"] == "declared" and cfg["max_batch_size"] == 0
    assert cfg["input"] == [{"name": "W", "data_type": "TYPE_FP64", "dims": [2, 2]},
                            {"name": "x", "data_type": "TYPE_FP64", "dims": [2]}]
    assert [o["name"] for o in cfg["output"]] == ["output", "grad:W", "grad:x"]
    index = triton.get_model_repository_index(headers=AUTH)
    assert {"name": "ex3", "version": "1", "state": "READY"} in index
    assert [m["name"] for m in index] == sorted(m["name"] for m in index)
    assert {"ex3", "linear", "declared", "e2e-mlp"} <= {m["name"] for m in index}
    raises(lambda: triton.get_model_config("ex3", model_version="3", headers=AUTH), "404",
           "no version '3'")
    raises(lambda: triton.get_model_metadata("no-such-model", model_version="1",
                                             headers=AUTH), "404", "no-such-model")


def test_infer_with_and_without_model_version_is_the_same(triton):
    plain = triton.infer("ex3", [inp("W", W), inp("x", X)], headers=AUTH)
    versioned = triton.infer("ex3", [inp("W", W), inp("x", X)], model_version="1",
                             headers=AUTH)
    assert versioned.get_response()["model_version"] == "1"
    for name in ("output", "grad:W", "grad:x"):
        assert plain.as_numpy(name).tobytes() == versioned.as_numpy(name).tobytes()
    raises(lambda: triton.infer("ex3", [inp("W", W), inp("x", X)], model_version="2",
                                headers=AUTH), "404", "no version '2'")


def test_unrouted_v2_paths_raise_the_clients_exception_with_our_message(triton):
    # Triton endpoints gradserve does not serve: tritonclient parses {"error"} (it failed
    # with "an exception occurred in the client while decoding the response: 'error'" on
    # a problem+json body).
    raises(lambda: triton.get_inference_statistics("ex3", headers=AUTH), "404")
    raises(lambda: triton.load_model("ex3", headers=AUTH), "404")
    raises(lambda: triton.get_trace_settings(headers=AUTH), "404")
    raises(lambda: triton.get_model_config("ex3"), "401", "Bearer")


def test_mlp_training_steps_over_oip_equal_the_step_endpoint(server, triton):
    """The optimizer as request parameters, the state as tensors in and out (binary), two
    requests of two Adam steps: the same numbers as POST /v1/mlp/step with steps 4."""
    rng = np.random.default_rng(11)
    w0, b0 = rng.normal(size=(5, 6)), rng.normal(size=5)
    w1, b1 = rng.normal(size=(3, 5)), rng.normal(size=3)
    x, y = rng.normal(size=(4, 6)), np.array([0, 2, 1, 2])
    ref = v1(server, "/v1/mlp/step", {
        "layers": [{"weight": w0.tolist(), "bias": b0.tolist(), "activation": "relu"},
                   {"weight": w1.tolist(), "bias": b1.tolist()}],
        "inputs": x.tolist(), "loss": {"type": "softmax_cross_entropy", "targets": y.tolist()},
        "optimizer": {"type": "adam", "lr": 0.05, "amsgrad": True}, "steps": 4})
    params = {"layers.0.weight": w0, "layers.0.bias": b0, "layers.1.weight": w1,
              "layers.1.bias": b1}
    state: dict[str, np.ndarray] = {}
    step = None
    losses: list[float] = []
    for _ in range(2):
        parameters: dict[str, Any] = {"optimizer": "adam", "lr": 0.05, "amsgrad": True,
                                      "params": ",".join(params), "steps": 2}
        if step is not None:
            parameters["step"] = step
        inputs = [inp(n, v) for n, v in params.items()] + [inp("x", x),
                                                           inp("targets", y.astype(np.int64))]
        inputs += [inp(n, v) for n, v in state.items()]
        res = triton.infer("e2e-mlp", inputs, parameters=parameters, headers=AUTH)
        names = [o["name"] for o in res.get_response()["outputs"]]
        params = {n: res.as_numpy(f"value:{n}") for n in params}
        state = {n: res.as_numpy(n) for n in names if n.startswith("state:") and
                 n != "state:step"}
        step = int(res.as_numpy("state:step")[0])
        losses += res.as_numpy("losses").tolist()
    assert step == ref["state"]["step"] == 4 and losses == ref["losses"]
    for i in range(2):
        for p in ("weight", "bias"):
            assert params[f"layers.{i}.{p}"].tolist() == ref["layers"][i][p]
            assert state[f"state:layers.{i}.{p}:max_exp_avg_sq"].tolist() == \
                ref["state"]["slots"][f"layers.{i}.{p}"]["max_exp_avg_sq"]
