"""An ONNX model over the Open Inference Protocol with the real ``tritonclient.http``,
against a real gunicorn (two workers: the model is registered on one and rebuilt from the
store on the other): metadata (inputs, parameters as optional inputs, ``output``,
``grad:<input>``, ``grad:<parameter>``), infer with binary and JSON tensors, results
against onnxruntime (forward) and /v1 (gradients, bit for bit)."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import tritonclient.http as tritonclient_http
from tritonclient.utils import InferenceServerException

from tests.e2e.conftest import assert_clean_logs
from tests.e2e.server import GunicornServer
from tests.e2e.triton import infer_input as inp
from tests.e2e.triton import triton_client
from tests.engine.onnx.models import ort_run
from tests.http.test_onnx_models import cnn_bytes

pytestmark = pytest.mark.e2e

MODEL = cnn_bytes()


@pytest.fixture(scope="module")
def server() -> Iterator[GunicornServer]:
    with GunicornServer({}, workers=2, threads=2) as srv:
        status, _, raw = srv.request("POST", "/v1/graphs?name=cnn", MODEL,
                                     headers={"Content-Type": "application/onnx"})
        assert status == 201, raw
        srv.graph_id = json.loads(raw)["graph_id"]  # type: ignore[attr-defined]
        yield srv
        assert_clean_logs(srv)


@pytest.fixture(scope="module")
def triton(server: GunicornServer) -> Iterator[Any]:
    with triton_client(server) as client:
        yield client


def test_metadata_lists_inputs_parameters_and_gradients(triton: Any) -> None:
    meta = triton.get_model_metadata("cnn")
    inputs = {t["name"]: t for t in meta["inputs"]}
    assert inputs["x"] == {"name": "x", "datatype": "FP32", "shape": [-1, 2, 4, 4]}
    assert inputs["fw"] == {"name": "fw", "datatype": "FP32", "shape": [4, 12],
                            "optional": True}
    outputs = [t["name"] for t in meta["outputs"]]
    assert outputs[:2] == ["output", "grad:x"] and "grad:fw" in outputs
    assert meta["outputs"][0]["shape"] == [-1, 4]
    config = triton.get_model_config("cnn")
    assert any(t.get("optional") for t in config["input"])


@pytest.mark.parametrize("binary", [True, False])
def test_infer_matches_onnxruntime_and_v1(server: GunicornServer, triton: Any,
                                          binary: bool) -> None:
    x = np.random.default_rng(1).standard_normal((3, 2, 4, 4)).astype(np.float32)
    up = np.ones((3, 4), dtype=np.float32)
    outs = [tritonclient_http.InferRequestedOutput(n, binary_data=binary)
            for n in ("output", "grad:x", "grad:fw")]
    res = triton.infer("cnn", [inp("x", x, binary), inp("grad:output", up, binary)],
                       outputs=outs)
    output = res.as_numpy("output")
    assert output.dtype == np.float32
    np.testing.assert_allclose(output, ort_run(MODEL, {"x": x})[0], rtol=1e-5, atol=1e-6)
    body = {"values": {"x": {"shape": list(x.shape), "dtype": "float32",
                             "b64": base64.b64encode(x.tobytes()).decode()}},
            "upstream": up.tolist(), "wrt": ["x", "fw"], "encoding": "b64"}
    status, _, raw = server.post(f"/v1/graphs/{server.graph_id}/gradients", body)
    assert status == 200, raw
    v1 = json.loads(raw)["gradients"]
    for name in ("x", "fw"):
        want = np.frombuffer(base64.b64decode(v1[name]["b64"]), np.float32)
        assert np.array_equal(res.as_numpy(f"grad:{name}").reshape(-1), want), name


def test_the_model_by_its_graph_id(server: GunicornServer, triton: Any) -> None:
    gid = server.graph_id  # type: ignore[attr-defined]
    assert triton.get_model_metadata(gid)["inputs"][0]["name"] == "x"
    x = np.zeros((2, 2, 4, 4), dtype=np.float32)
    res = triton.infer(gid, [inp("x", x)],
                       outputs=[tritonclient_http.InferRequestedOutput("output")])
    np.testing.assert_allclose(res.as_numpy("output"), ort_run(MODEL, {"x": x})[0],
                               rtol=1e-5, atol=1e-6)


def test_a_parameter_sent_overrides_the_stored_one(triton: Any) -> None:
    x = np.zeros((1, 2, 4, 4), dtype=np.float32)
    fb = np.full(4, 2.0, dtype=np.float32)
    base = triton.infer("cnn", [inp("x", x)],
                        outputs=[tritonclient_http.InferRequestedOutput("output")])
    moved = triton.infer("cnn", [inp("x", x), inp("fb", fb)],
                         outputs=[tritonclient_http.InferRequestedOutput("output")])
    import onnx
    from onnx import numpy_helper

    stored = next(numpy_helper.to_array(t) for t in onnx.load_from_string(MODEL)
                  .graph.initializer if t.name == "fb")
    np.testing.assert_allclose(moved.as_numpy("output") - base.as_numpy("output"),
                               (fb - stored)[None, :], rtol=1e-5, atol=1e-6)


def test_a_constant_or_unknown_output_is_a_clean_error(triton: Any) -> None:
    x = np.zeros((1, 2, 4, 4), dtype=np.float32)
    with pytest.raises(InferenceServerException) as err:
        triton.infer("cnn", [inp("x", x)],
                     outputs=[tritonclient_http.InferRequestedOutput("grad:zero")])
    assert "grad:zero" in str(err.value) and "grad:fw" in str(err.value)
