"""ONNX models over /v1: registration (bytes and base64), a symbolic batch through the
exporters' Shape → Gather → Concat → Reshape chain, parameters (defaults, overrides, wrt
words), another output, the model's own dtype, the shared store (a second app rebuilds
the model from SQLite), and a repeat that parses nothing."""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest
from onnx import helper

from service.store.sqlite import SQLiteStore
from tests.conftest import build_app
from tests.engine.onnx.models import model_bytes, ort_run

R = np.random.default_rng(3)
I64 = np.int64


def cnn_bytes(dtype: str = "float32") -> bytes:
    """Conv → BatchNormalization → Relu → MaxPool → flatten as torch writes it (Shape,
    Gather, Unsqueeze, Concat, Reshape) → Gemm, plus a GlobalAveragePool second output."""
    def p(*shape: int) -> np.ndarray:
        return R.uniform(-0.5, 0.5, shape).astype(dtype)

    n = helper.make_node
    nodes = [
        n("Conv", ["x", "cw", "cb"], ["c"], pads=[1, 1, 1, 1], name="conv"),
        n("BatchNormalization", ["c", "bs", "bb", "bm", "bv"], ["bn"], name="bn"),
        n("Relu", ["bn"], ["r"]),
        n("MaxPool", ["r"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        n("Shape", ["mp"], ["s"]),
        n("Gather", ["s", "zero"], ["b"], axis=0),
        n("Unsqueeze", ["b", "axes0"], ["b1"]),
        n("Concat", ["b1", "minus1"], ["target"], axis=0),
        n("Reshape", ["mp", "target"], ["flat"], name="view"),
        n("Gemm", ["flat", "fw", "fb"], ["logits"], transB=1, name="fc"),
        n("GlobalAveragePool", ["r"], ["pooled"]),
    ]
    inits = {"cw": p(3, 2, 3, 3), "cb": p(3), "bs": p(3) + 1, "bb": p(3), "bm": p(3),
             "bv": np.abs(p(3)) + 0.5, "fw": p(4, 12), "fb": p(4),
             "zero": np.asarray(0, I64), "axes0": np.asarray([0], I64),
             "minus1": np.asarray([-1], I64)}
    x = np.zeros((1, 2, 4, 4), dtype=dtype)
    return model_bytes(nodes, {"x": x}, ["logits", "pooled"], inits, opset=17,
                       dims={"x": ["batch", 2, 4, 4]})


@pytest.fixture
def client() -> Any:
    return build_app().test_client()


def _register(client: Any, data: bytes, **params: str) -> dict[str, Any]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    resp = client.post(f"/v1/graphs?{query}" if query else "/v1/graphs", data=data,
                       content_type="application/onnx")
    assert resp.status_code in (200, 201), resp.get_json()
    return resp.get_json()  # type: ignore[no-any-return]


def _grads(client: Any, gid: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.post(f"/v1/graphs/{gid}/gradients", json=body)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()  # type: ignore[no-any-return]


def test_registration_answer_and_both_forms(client: Any) -> None:
    data = cnn_bytes()
    body = _register(client, data, name="cnn")
    assert body["name"] == "cnn" and body["opset"] == 17 and body["output"] == "logits"
    assert body["outputs"] == ["logits", "pooled"]
    assert body["inputs"] == {"x": {"shape": ["batch", 2, 4, 4], "dtype": "float32"}}
    assert body["parameters"]["cw"] == {"shape": [3, 2, 3, 3], "dtype": "float32"}
    assert "zero" not in body["parameters"]  # integer initializers are constants
    again = client.post("/v1/graphs", json={"onnx": base64.b64encode(data).decode(),
                                            "name": "cnn"})
    assert again.status_code == 200 and again.get_json()["graph_id"] == body["graph_id"]
    listed = client.get("/v1/graphs").get_json()["graphs"]
    assert [(g["kind"], g.get("name")) for g in listed] == [("onnx", "cnn")]
    assert listed[0]["inputs"] == body["inputs"]  # the model's inputs, not its parameters
    unnamed = client.post("/v1/graphs", data=data, content_type="application/onnx")
    assert unnamed.get_json()["graph_id"] == body["graph_id"]  # a name never changes the id


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_any_batch_matches_onnxruntime(client: Any, batch: int) -> None:
    data = cnn_bytes()
    gid = _register(client, data)["graph_id"]
    x = R.standard_normal((batch, 2, 4, 4)).astype(np.float32)
    logits, pooled = ort_run(data, {"x": x})
    out = _grads(client, gid, {"values": {"x": x.tolist()}, "wrt": []})
    np.testing.assert_allclose(np.asarray(out["output"], np.float32), logits, rtol=1e-5,
                               atol=1e-6)
    out = _grads(client, gid, {"values": {"x": x.tolist()}, "wrt": [], "output": "pooled"})
    np.testing.assert_allclose(np.asarray(out["output"], np.float32), pooled, rtol=1e-5,
                               atol=1e-6)


def test_model_dtype_is_the_default_and_a_request_overrides_it(client: Any) -> None:
    gid = _register(client, cnn_bytes())["graph_id"]
    x = R.standard_normal((2, 2, 4, 4)).tolist()
    out = _grads(client, gid, {"values": {"x": x}, "wrt": [], "encoding": "b64"})
    assert out["output"]["dtype"] == "float32"
    out = _grads(client, gid, {"values": {"x": x}, "wrt": [], "encoding": "b64",
                               "dtype": "float64"})
    assert out["output"]["dtype"] == "float64"


def test_wrt_words_loss_and_parameter_override(client: Any) -> None:
    data = cnn_bytes("float64")
    gid = _register(client, data)["graph_id"]
    x = R.standard_normal((3, 2, 4, 4))
    up = np.ones((3, 4)).tolist()
    base = {"values": {"x": x.tolist()}, "upstream": up}
    assert list(_grads(client, gid, base)["gradients"]) == ["x"]  # default: the inputs
    params = _grads(client, gid, {**base, "wrt": "parameters"})["gradients"]
    assert sorted(params) == ["bb", "bm", "bs", "bv", "cb", "cw", "fb", "fw"]
    assert len(_grads(client, gid, {**base, "wrt": "all"})["gradients"]) == 9
    loss = _grads(client, gid, {"values": {"x": x.tolist()}, "wrt": ["fb"],
                                "loss": {"type": "softmax_cross_entropy",
                                         "targets": [0, 3, 1]}})
    assert loss["loss"] > 0 and np.asarray(loss["gradients"]["fb"]).shape == (4,)
    # a parameter given in values wins over the stored one: fb + 1 shifts every logit
    fb = np.asarray(_grads(client, gid, {**base, "wrt": []})["output"])
    shifted = _grads(client, gid, {"values": {"x": x.tolist(), "fb": np.ones(4).tolist()},
                                   "wrt": []})["output"]
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(data)
    fb_stored = next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == "fb")
    np.testing.assert_allclose(np.asarray(shifted), fb - fb_stored + 1.0, rtol=1e-9)


def test_bad_wrt_word_output_and_constant_values_are_422(client: Any) -> None:
    gid = _register(client, cnn_bytes())["graph_id"]
    x = np.zeros((1, 2, 4, 4)).tolist()
    for extra, field in (({"wrt": "weights"}, "wrt"), ({"output": "nope"}, "output"),
                         ({"values": {"x": x, "zero": 1}}, "values")):
        resp = client.post(f"/v1/graphs/{gid}/gradients",
                           json={"values": {"x": x}, "upstream": np.ones((1, 4)).tolist(),
                                 **extra})
        assert resp.status_code == 422, resp.get_json()
        assert resp.get_json()["errors"][0]["loc"][0] == field


def test_a_second_app_rebuilds_the_model_from_the_store(tmp_path: Any) -> None:
    data = cnn_bytes()
    first = build_app(store=SQLiteStore(tmp_path / "d")).test_client()
    gid = _register(first, data, name="cnn")["graph_id"]
    x = R.standard_normal((2, 2, 4, 4)).astype(np.float32)
    second = build_app(store=SQLiteStore(tmp_path / "d")).test_client()
    out = _grads(second, gid, {"values": {"x": x.tolist()}, "wrt": []})
    np.testing.assert_allclose(np.asarray(out["output"], np.float32),
                               ort_run(data, {"x": x})[0], rtol=1e-5, atol=1e-6)
    body = second.get(f"/v1/graphs/{gid}").get_json()
    assert body["parameters"]["fw"] == {"shape": [4, 12], "dtype": "float32"}


def test_a_repeat_parses_nothing(client: Any, monkeypatch: Any) -> None:
    data = cnn_bytes()
    gid = _register(client, data)["graph_id"]
    x = np.zeros((2, 2, 4, 4)).tolist()
    _grads(client, gid, {"values": {"x": x}, "wrt": []})

    def no_parse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("parsed again")

    monkeypatch.setattr("service.flows.models.import_model", no_parse)
    assert _register(client, data)["graph_id"] == gid  # the L1 alias: no parse
    assert _grads(client, gid, {"values": {"x": x}, "wrt": []})["cache"] == "hit"


def test_the_graph_id_hashes_the_parameters(client: Any) -> None:
    import onnx

    data = cnn_bytes()
    m = onnx.load_from_string(data)
    t = next(t for t in m.graph.initializer if t.name == "fb")
    arr = np.frombuffer(t.raw_data, dtype=np.float32).copy()
    arr[0] += 1
    t.raw_data = arr.tobytes()
    assert _register(client, data)["graph_id"] != _register(
        client, m.SerializeToString())["graph_id"]
