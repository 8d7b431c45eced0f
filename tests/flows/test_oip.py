"""The Open Inference Protocol under /v2 by hand: metadata, names, JSON and binary infer, the
binary framing's edge cases, and bit-for-bit agreement with /v1 on the same graph and values.

Expected numbers come from the lecture's hand-computed examples (tests/lecture.py) or
from the /v1 endpoints, which the rest of the suite checks against arithmetic.
"""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import numpy as np
import pytest

import service.flows.driver as driver
from service.engine import Limits
from service.errors import BadRequest, Unprocessable
from service.flows.oip_codec import decode_request, oip_buffer
from service.http.reader import read_environ_body
from service.store.memory import MemoryStore
from tests.conftest import build_app
from tests.lecture import EX1, EX3, problem

HEADER = "Inference-Header-Content-Length"
LINEAR = {"expression": "W @ x"}  # a vector output: gradients need grad:output


def oip_error(resp: Any, status: int) -> str:
    """Assert OIP's error form ``{"error": "..."}`` with ``status``; return the message."""
    text = resp.get_data(as_text=True)
    assert resp.status_code == status, text[:1000]
    assert resp.mimetype == "application/json", (resp.mimetype, text[:300])
    body = resp.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return body["error"]


def register(client, body: dict[str, Any], status: tuple[int, ...] = (200, 201)) -> str:
    resp = client.post("/v1/graphs", json=body)
    assert resp.status_code in status, resp.get_data(as_text=True)
    return resp.get_json()["graph_id"]


def tensor(name: str, arr: Any, datatype: str | None = None) -> dict[str, Any]:
    """An input in JSON form."""
    a = np.asarray(arr)
    dt = datatype or {"float32": "FP32", "float64": "FP64", "int64": "INT64"}[str(a.dtype)]
    return {"name": name, "shape": list(a.shape), "datatype": dt, "data": a.ravel().tolist()}


def binary_body(header: dict[str, Any], blobs: list[bytes], pad: int = 0) -> tuple[bytes, dict]:
    """A binary infer body: the JSON header (``pad`` spaces after it) and the blobs."""
    head = json.dumps(header).encode() + b" " * pad
    return head + b"".join(blobs), {HEADER: str(len(head))}


def binary_request(inputs: dict[str, np.ndarray], outputs: list[str] | None = None,
                   binary_output: bool = True, pad: int = 0) -> tuple[bytes, dict]:
    dts = {np.dtype("float32"): "FP32", np.dtype("float64"): "FP64",
           np.dtype("int64"): "INT64", np.dtype("int32"): "INT32"}
    header: dict[str, Any] = {"inputs": [
        {"name": n, "shape": list(a.shape), "datatype": dts[a.dtype],
         "parameters": {"binary_data_size": a.nbytes}} for n, a in inputs.items()]}
    if outputs is not None:
        header["outputs"] = [{"name": o, "parameters": {"binary_data": binary_output}}
                             for o in outputs]
    else:
        header["parameters"] = {"binary_data_output": binary_output}
    return binary_body(header, [a.tobytes() for a in inputs.values()], pad)


def outputs_of(resp: Any) -> dict[str, np.ndarray]:
    """The outputs of an infer response (JSON or binary) as arrays, by name."""
    assert resp.status_code == 200, resp.get_data(as_text=True)[:1000]
    raw = resp.get_data()
    n = resp.headers.get(HEADER)
    if n is None:
        assert resp.mimetype == "application/json"
        head, rest = json.loads(raw), b""
    else:
        assert resp.mimetype == "application/octet-stream"
        head, rest = json.loads(raw[:int(n)]), raw[int(n):]
    dts = {"FP32": "<f4", "FP64": "<f8"}
    out, offset = {}, 0
    for o in head["outputs"]:
        size = (o.get("parameters") or {}).get("binary_data_size")
        if size is None:
            arr = np.array(o["data"], dtype=dts[o["datatype"]])
        else:
            arr = np.frombuffer(rest, dtype=dts[o["datatype"]], count=size // 4 if
                                o["datatype"] == "FP32" else size // 8, offset=offset)
            offset += size
        out[o["name"]] = arr.reshape(o["shape"])
    assert offset == len(rest)
    return out


@pytest.fixture
def ex3(client) -> str:
    register(client, {"expression": EX3["expression"], "name": "ex3"})
    return "ex3"


W = np.array(EX3["values"]["W"])
X = np.array(EX3["values"]["x"])


# --- server --------------------------------------------------------------------------------


def test_server_metadata_and_health(client):
    meta = client.get("/v2").get_json()
    assert meta["name"] == "gradserve" and "binary_tensor_data" in meta["extensions"]
    assert client.get("/v2/health/live").get_json() == {"live": True}
    assert client.get("/v2/health/ready").get_json() == {"ready": True}


def test_not_ready_while_draining(app, client):
    app.extensions["gradserve"].lifecycle["status"] = "draining"
    resp = client.get("/v2/health/ready")
    assert resp.status_code == 503 and resp.get_json() == {"ready": False}
    assert client.get("/v2/health/live").status_code == 200


# --- names ---------------------------------------------------------------------------------


def test_a_name_is_stored_with_the_graph_and_unique(client):
    first = client.post("/v1/graphs", json={"expression": "x * y", "name": "prod"})
    assert first.status_code == 201 and first.get_json()["name"] == "prod"
    again = client.post("/v1/graphs", json={"expression": "x * y", "name": "prod"})
    assert again.status_code == 200 and again.get_json()["graph_id"] == \
        first.get_json()["graph_id"]
    body = problem(client.post("/v1/graphs", json={"expression": "x + y", "name": "prod"}), 409)
    assert "'prod'" in body["detail"] and first.get_json()["graph_id"] in body["detail"]
    # Still the first graph's name; the second graph is registered all the same.
    assert client.get("/v2/models/prod").get_json()["inputs"][0]["name"] == "x"


@pytest.mark.parametrize("name", ["", "-lead", "has space", "a/b", "x" * 129,
                                  "g-" + "0" * 64])
def test_bad_names_are_422(client, name):
    body = problem(client.post("/v1/graphs", json={"expression": "x", "name": name}), 422)
    assert ["name"] in [e["loc"] for e in body["errors"]]


def test_a_name_is_shared_by_apps_on_one_store():
    store = MemoryStore()
    one, two = build_app(store=store).test_client(), build_app(store=store).test_client()
    register(one, {"expression": "x * y", "name": "shared"})
    assert two.get("/v2/models/shared/ready").get_json() == {"name": "shared", "ready": True}


# --- model metadata --------------------------------------------------------------------------


def test_model_metadata_from_declared_inputs(client):
    graph = {"inputs": {"W": {"shape": [3, 2]}, "x": {}, "y": {}},
             "nodes": [{"id": "s", "op": "matmul", "args": ["x", "W"]},
                       {"id": "f", "op": "softmax_cross_entropy", "args": ["s", "y"]}],
             "output": "f"}
    gid = register(client, {"graph": graph})
    meta = client.get(f"/v2/models/{gid}").get_json()
    assert meta["name"] == gid and meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "W", "datatype": "FP64", "shape": [3, 2]},
                              {"name": "x", "datatype": "FP64", "shape": [-1]},
                              {"name": "y", "datatype": "INT64", "shape": [-1]}]
    assert [o["name"] for o in meta["outputs"]] == ["output", "grad:W", "grad:x"]
    assert meta["outputs"][1]["shape"] == [3, 2]


def test_output_shape_when_every_input_is_declared(client):
    gid = register(client, {"graph": {"inputs": {"W": {"shape": [3, 2]}, "x": {"shape": [2]}},
                                      "nodes": [{"id": "f", "op": "matmul", "args": ["W", "x"]}],
                                      "output": "f"}})
    assert client.get(f"/v2/models/{gid}").get_json()["outputs"][0]["shape"] == [3]


def test_unknown_model_is_404_in_oip_form(client):
    for path in ("/v2/models/nope", "/v2/models/nope/ready", f"/v2/models/g-{'0' * 64}"):
        assert "nope" in oip_error(client.get(path), 404) or "g-" in path
    assert "not known" in oip_error(client.post("/v2/models/nope/infer", json={"inputs": []}),
                                    404)


# --- infer ---------------------------------------------------------------------------------


def test_json_infer_fp64_is_v1_bit_for_bit(client, ex3):
    v1 = client.post("/v1/gradients", json={"expression": EX3["expression"],
                                            "values": EX3["values"]}).get_json()
    resp = client.post("/v2/models/ex3/infer",
                       json={"id": "r1", "inputs": [tensor("W", W), tensor("x", X)]})
    body = resp.get_json()
    assert body["model_name"] == "ex3" and body["id"] == "r1"
    out = outputs_of(resp)
    assert out["output"].shape == () and out["output"].dtype == np.float64
    assert out["output"].item() == v1["output"]
    assert out["grad:W"].tolist() == v1["gradients"]["W"]
    assert out["grad:x"].tolist() == v1["gradients"]["x"]


def test_binary_infer_fp32_is_v1_bit_for_bit(client, ex3):
    w, x = W.astype(np.float32), X.astype(np.float32)
    v1 = client.post("/v1/gradients", json={
        "expression": EX3["expression"], "dtype": "float32", "encoding": "b64",
        "values": {"W": w.tolist(), "x": x.tolist()}}).get_json()

    def b64(t: dict[str, Any]) -> np.ndarray:
        import base64
        return np.frombuffer(base64.b64decode(t["b64"]), "<f4").reshape(t["shape"])

    body, headers = binary_request({"W": w, "x": x})
    out = outputs_of(client.post("/v2/models/ex3/infer", data=body, headers=headers))
    assert {k: v.dtype for k, v in out.items()} == {k: np.dtype("<f4") for k in out}
    assert out["output"].tobytes() == b64(v1["output"]).tobytes()
    assert out["grad:W"].tobytes() == b64(v1["gradients"]["W"]).tobytes()
    assert out["grad:x"].tobytes() == b64(v1["gradients"]["x"]).tobytes()


def test_mixed_precision_runs_in_fp64(client, ex3):
    body, headers = binary_request({"W": W.astype(np.float32), "x": X})
    out = outputs_of(client.post("/v2/models/ex3/infer", data=body, headers=headers))
    assert out["grad:W"].dtype == np.float64


def test_selected_outputs_only(client, ex3):
    body, headers = binary_request({"W": W, "x": X}, outputs=["grad:x"])
    out = outputs_of(client.post("/v2/models/ex3/infer", data=body, headers=headers))
    assert list(out) == ["grad:x"]
    assert out["grad:x"].tolist() == pytest.approx(EX3["gradients"]["x"], rel=1e-12)
    # Forward only: no gradient is computed, so a vector output needs no grad:output.
    gid = register(client, LINEAR)
    resp = client.post(f"/v2/models/{gid}/infer", json={
        "inputs": [tensor("W", W), tensor("x", X)], "outputs": [{"name": "output"}]})
    assert outputs_of(resp)["output"].tolist() == pytest.approx((W @ X).tolist(), rel=1e-15)


def test_output_binary_flag_per_output(client, ex3):
    resp = client.post("/v2/models/ex3/infer", json={
        "inputs": [tensor("W", W), tensor("x", X)],
        "parameters": {"binary_data_output": True},
        "outputs": [{"name": "output", "parameters": {"binary_data": False}},
                    {"name": "grad:W"}]})
    head = json.loads(resp.get_data()[:int(resp.headers[HEADER])])
    assert "data" in head["outputs"][0] and "parameters" in head["outputs"][1]
    assert set(outputs_of(resp)) == {"output", "grad:W"}


def test_upstream_gradient_input(client):
    gid = register(client, LINEAR)
    g = np.array([1.0, -2.0])
    v1 = client.post("/v1/gradients", json={**LINEAR, "values": EX3["values"],
                                            "upstream": g.tolist()}).get_json()
    out = outputs_of(client.post(f"/v2/models/{gid}/infer", json={
        "inputs": [tensor("W", W), tensor("x", X), tensor("grad:output", g)]}))
    assert out["grad:W"].tolist() == v1["gradients"]["W"]
    assert out["grad:x"].tolist() == v1["gradients"]["x"]
    msg = oip_error(client.post(f"/v2/models/{gid}/infer", json={
        "inputs": [tensor("W", W), tensor("x", X)]}), 422)
    assert "grad:output" in msg


def test_scalar_inputs_and_labels(client):
    gid = register(client, {"expression": EX1["expression"]})
    out = outputs_of(client.post(f"/v2/models/{gid}/infer", json={"inputs": [
        {"name": n, "shape": [], "datatype": "FP64", "data": [v]}
        for n, v in EX1["values"].items()]}))
    assert out["output"].item() == EX1["output"]
    assert {k[5:]: v.item() for k, v in out.items() if k != "output"} == EX1["gradients"]
    graph = {"inputs": {"s": {}, "y": {}},
             "nodes": [{"id": "f", "op": "softmax_cross_entropy", "args": ["s", "y"]}],
             "output": "f"}
    gid = register(client, {"graph": graph})
    s, y = np.array([[1.0, 2.0, 0.5]]), np.array([1], dtype=np.int32)
    v1 = client.post("/v1/gradients", json={"graph": graph, "values": {
        "s": s.tolist(), "y": y.tolist()}}).get_json()
    body, headers = binary_request({"s": s, "y": y})
    out = outputs_of(client.post(f"/v2/models/{gid}/infer", data=body, headers=headers))
    assert set(out) == {"output", "grad:s"}
    assert out["output"].item() == v1["output"] and out["grad:s"].tolist() == v1["gradients"]["s"]


def test_misaligned_binary_data_is_copied_and_right(client, ex3):
    body, headers = binary_request({"W": W, "x": X}, pad=3)
    out = outputs_of(client.post("/v2/models/ex3/infer", data=body, headers=headers))
    assert out["grad:x"].tolist() == pytest.approx(EX3["gradients"]["x"], rel=1e-12)


def test_binary_decode_is_a_view_into_the_body():
    w = np.arange(6, dtype=np.float64).reshape(2, 3)
    body, headers = binary_request({"w": w}, pad=(-len(json.dumps({"inputs": [
        {"name": "w", "shape": [2, 3], "datatype": "FP64",
         "parameters": {"binary_data_size": 48}}], "parameters": {
        "binary_data_output": True}}))) % 8)
    decoded = decode_request(body, headers[HEADER], max_elements=100)
    arr = decoded.inputs[0].array
    assert arr.tolist() == w.tolist()
    assert np.shares_memory(arr, np.frombuffer(body, np.uint8)), "copied, not a view"


class _Trickle(io.BytesIO):
    """A request stream that hands over at most ``chunk`` bytes a read."""

    def __init__(self, data: bytes, chunk: int) -> None:
        super().__init__(data)
        self.chunk = chunk

    def read(self, n: int | None = -1) -> bytes:
        return super().read(self.chunk if n is None or n < 0 else min(n, self.chunk))


def read_oip_body(body: bytes, header_length: str | None, *, chunk: int = 1 << 20,
                  length: int | None = None) -> memoryview:
    """``body`` read as the app reads an OIP body: into an aligned buffer, in chunks."""
    environ = {"wsgi.input": _Trickle(body, chunk),
               "CONTENT_LENGTH": str(len(body) if length is None else length)}
    return read_environ_body(environ, 1 << 30, 10.0, into=oip_buffer(header_length))


@pytest.mark.parametrize("pad", range(8))
def test_body_is_read_so_that_binary_tensors_are_aligned_views(pad):
    """Whatever the JSON part's length, the tensors are aligned views into the one buffer
    the body was read into (NumPy runs matmul on misaligned data without BLAS)."""
    w, y = np.arange(6, dtype=np.float64).reshape(2, 3), np.array([3, 1], dtype=np.int32)
    body, headers = binary_request({"w": w, "y": y}, pad=pad)
    view = read_oip_body(body, headers[HEADER], chunk=5)
    assert bytes(view) == body
    decoded = decode_request(view, headers[HEADER], max_elements=100)
    (dw, dy) = (t.array for t in decoded.inputs)
    assert dw.tolist() == w.tolist() and dy.tolist() == y.tolist()
    for arr in (dw, dy):
        assert arr.flags.aligned and np.shares_memory(arr, view.obj)


def test_a_body_shorter_than_its_length_is_400():
    with pytest.raises(BadRequest, match="body ended after 2 of the 10 bytes"):
        read_oip_body(b"{}", None, length=10)


# --- errors --------------------------------------------------------------------------------

BAD_JSON = [
    ({"inputs": [tensor("W", W, "BYTES"), tensor("x", X)]}, "datatype"),
    ({"inputs": [tensor("W", np.ones((2, 2), np.int64)), tensor("x", X)]}, "FP32 or FP64"),
    ({"inputs": [tensor("W", W, "INT64"), tensor("x", X)]}, "must be integers"),
    ({"inputs": [tensor("W", W)]}, "needs input 'x'"),
    ({"inputs": [tensor("W", W), tensor("x", X), tensor("q", X)]}, "'q' is not an input"),
    ({"inputs": [tensor("W", W), tensor("x", X), tensor("x", X)]}, "twice"),
    ({"inputs": [tensor("W", W), tensor("x", X)], "outputs": [{"name": "grad:q"}]},
     "'grad:q' is not an output"),
    ({"inputs": [tensor("W", W), tensor("x", X)],
      "outputs": [{"name": "output"}, {"name": "output"}]}, "twice"),
    ({"inputs": [{"name": "W", "shape": [2, 2], "datatype": "FP64", "data": [1, 2, 3]},
                 tensor("x", X)]}, "3 elements"),
    ({"inputs": [{"name": "W", "shape": [2, 2], "datatype": "FP64"}, tensor("x", X)]},
     "no data"),
    ({"inputs": [{"name": "W", "shape": [2, 2], "datatype": "FP64",
                  "data": [1, "a", 3, 4]}, tensor("x", X)]}, "numbers"),
    ({"inputs": [{"name": "W", "shape": [0, 2], "datatype": "FP64", "data": []},
                 tensor("x", X)]}, "no elements"),
    ({"inputs": [tensor("W", W), tensor("x", X)], "parameters": {"binary_data_output": 1}},
     "true or false"),
    ({"inputs": [tensor("W", W), tensor("x", X)], "extra": 1}, "extra"),
    ({"inputs": "W"}, "inputs"),
]


@pytest.mark.parametrize(("body", "needle"), BAD_JSON)
def test_bad_requests_are_422_in_oip_form(client, ex3, body, needle):
    assert needle in oip_error(client.post("/v2/models/ex3/infer", json=body), 422)


def test_shape_mismatch_with_a_declared_input(client):
    gid = register(client, {"graph": {"inputs": {"W": {"shape": [2, 2]}, "x": {}},
                                      "nodes": [{"id": "f", "op": "matmul", "args": ["W", "x"]}],
                                      "output": "f"}})
    msg = oip_error(client.post(f"/v2/models/{gid}/infer", json={
        "inputs": [tensor("W", np.ones((3, 2))), tensor("x", X)]}), 422)
    assert "'W' has shape [3, 2]" in msg and "[2, 2]" in msg


def test_non_finite_input_is_422(client, ex3):
    body, headers = binary_request({"W": np.array([[np.nan, 1], [2, 3]]), "x": X})
    assert "non-finite" in oip_error(client.post("/v2/models/ex3/infer", data=body,
                                                 headers=headers), 422)


def _framed(header_len: str, body: bytes, client) -> Any:
    return client.post("/v2/models/ex3/infer", data=body, headers={HEADER: header_len})


def test_framing_edge_cases(client, ex3):
    body, headers = binary_request({"W": W, "x": X})
    n = int(headers[HEADER])
    cases = [
        (str(len(body) + 1), body, 400, "body has only"),  # header length past the body
        ("abc", body, 400, "not a byte count"),
        ("-5", body, 400, "not a byte count"),
        ("0", body, 400, "cannot be empty"),
        (str(n), body + b"\0" * 8, 400, "add up to"),  # trailing bytes
        (str(n), body[:-8], 400, "add up to"),  # short
        (str(n - 1), body, 400, "not valid JSON"),  # header cut
        (str(n + 8), body, 400, "not valid JSON"),  # header runs into the tensor bytes
    ]
    for hl, data, status, needle in cases:
        resp = _framed(hl, data, client)
        msg = oip_error(resp, status)
        assert needle in msg, (hl, msg)


@pytest.mark.parametrize("hl", ["²", "³", "¹", "1²", "٣", "１２", "+12", "1_0", "12.0", "1e3",
                                "", " ", "9" * 19])
def test_a_header_length_that_is_not_ascii_digits_is_a_400(client, ex3, hl):
    """``str.isdigit`` says yes to '²' (a byte a latin-1 header can carry) and ``int``
    then refuses it: that was a 500. Only ASCII digits are a byte count."""
    body, headers = binary_request({"W": W, "x": X})
    resp = _framed(hl, body, client)
    assert "not a byte count" in oip_error(resp, 400), hl
    assert _framed(headers[HEADER], body, client).status_code == 200  # nothing else broke


def test_binary_size_that_does_not_fit_the_shape(client, ex3):
    w = W.astype(np.float64)
    header = {"inputs": [
        {"name": "W", "shape": [2, 2], "datatype": "FP64",
         "parameters": {"binary_data_size": 24}},
        {"name": "x", "shape": [2], "datatype": "FP64",
         "parameters": {"binary_data_size": 24}}]}
    body, headers = binary_body(header, [w.tobytes()[:24], X.tobytes() + b"\0" * 8])
    msg = oip_error(client.post("/v2/models/ex3/infer", data=body, headers=headers), 422)
    assert "binary_data_size is 24 bytes" in msg and "takes 32" in msg


@pytest.mark.parametrize("size", [-1, 1.5, "32", True])
def test_binary_size_must_be_a_byte_count(client, ex3, size):
    header = {"inputs": [{"name": "W", "shape": [2, 2], "datatype": "FP64",
                          "parameters": {"binary_data_size": size}}, tensor("x", X)]}
    body, headers = binary_body(header, [])
    msg = oip_error(client.post("/v2/models/ex3/infer", data=body, headers=headers), 422)
    assert "byte count" in msg


def test_zero_size_binary_tensor(client, ex3):
    header = {"inputs": [{"name": "W", "shape": [0, 2], "datatype": "FP64",
                          "parameters": {"binary_data_size": 0}}, tensor("x", X)]}
    body, headers = binary_body(header, [])
    assert "no elements" in oip_error(client.post("/v2/models/ex3/infer", data=body,
                                                  headers=headers), 422)


def test_data_and_binary_both_given(client, ex3):
    header = {"inputs": [{**tensor("W", W), "parameters": {"binary_data_size": 32}},
                         tensor("x", X)]}
    body, headers = binary_body(header, [W.tobytes()])
    assert "not both" in oip_error(client.post("/v2/models/ex3/infer", data=body,
                                               headers=headers), 422)


def test_body_over_the_limit_is_413(make_app):
    client = make_app(max_body_bytes=1000).test_client()
    register(client, {"expression": EX3["expression"], "name": "ex3"})
    body, headers = binary_request({"W": np.ones((20, 20)), "x": np.ones(20)})
    msg = oip_error(client.post("/v2/models/ex3/infer", data=body, headers=headers), 413)
    assert "GRADSERVE_MAX_BODY_BYTES" in msg


def test_tensor_over_the_limit_is_413_before_allocation(make_app):
    client = make_app(limits=Limits(max_tensor_elements=10)).test_client()
    register(client, {"expression": EX3["expression"], "name": "ex3"})
    resp = client.post("/v2/models/ex3/infer", json={"inputs": [
        {"name": "W", "shape": [2**40, 2**20], "datatype": "FP64", "data": [1]},
        tensor("x", X)]})
    assert "GRADSERVE_MAX_TENSOR_ELEMENTS" in oip_error(resp, 413)


def test_invalid_json_header_and_compression(client, ex3):
    assert "not valid JSON" in oip_error(client.post(
        "/v2/models/ex3/infer", data=b"{nope", content_type="application/json"), 400)
    assert "Content-Encoding" in oip_error(client.post(
        "/v2/models/ex3/infer", data=b"\x1f\x8b", headers={"Content-Encoding": "gzip"}), 415)


@pytest.mark.parametrize("method,path,status", [
    ("GET", "/v2/nothing", 404),
    ("GET", "/v2/", 404),
    ("GET", "/v2/models", 404),
    ("GET", "/v2/models/ex3/", 404),
    ("GET", "/v2/models/ex3/versions", 404),
    ("GET", "/v2/models/ex3/versions/1/nothing", 404),
    ("POST", "/v2/repository/models/ex3/load", 404),
    ("GET", "/v2/models/ex3/stats", 404),
    ("POST", "/v2/nothing", 404),
    ("GET", "/v2/models/ex3/infer", 405),
    ("GET", "/v2/models/ex3/versions/1/infer", 405),
    ("POST", "/v2/models/ex3", 405),
    ("POST", "/v2/models/ex3/config", 405),
    ("DELETE", "/v2/models/ex3/ready", 405),
    ("GET", "/v2/repository/index", 405),
    ("PUT", "/v2", 405),
    ("POST", "/v2/health/live", 405),
])
def test_every_v2_path_answers_in_oip_form_routed_or_not(client, ex3, method, path, status):
    resp = client.open(path, method=method, json={})
    oip_error(resp, status)
    if status == 405:
        assert resp.headers["Allow"]


def test_v1_and_other_paths_keep_problem_json(client):
    for path in ("/v1/nothing", "/v2x", "/v20/models", "/nothing/v2/models"):
        resp = client.get(path)
        assert resp.status_code == 404 and resp.mimetype == "application/problem+json", path


def test_a_body_over_the_limit_on_any_v2_path_is_413_in_oip_form(make_app):
    client = make_app(max_body_bytes=1000).test_client()
    register(client, {"expression": EX3["expression"], "name": "ex3"})
    for path in ("/v2/models/ex3/infer", "/v2/models/ex3/versions/1/infer",
                 "/v2/repository/index"):
        assert "GRADSERVE_MAX_BODY_BYTES" in oip_error(
            client.post(path, data=b"x" * 2000, content_type="application/json"), 413)


def test_api_keys_on_unrouted_v2_paths_are_401_in_oip_form(make_app):
    client = make_app(api_keys=("k1-0123456789abcdef",)).test_client()
    for method, path in (("GET", "/v2/nothing"), ("POST", "/v2/repository/index"),
                         ("GET", "/v2/models/x/versions/2/config"),
                         ("GET", "/v2/models/x/infer")):
        assert "Bearer" in oip_error(client.open(path, method=method), 401)


# --- versioned paths, config, repository index --------------------------------------------


def test_versioned_paths_are_the_unversioned_ones_for_version_1(client, ex3):
    for tail in ("", "/ready", "/config"):
        plain = client.get(f"/v2/models/ex3{tail}")
        versioned = client.get(f"/v2/models/ex3/versions/1{tail}")
        assert plain.status_code == versioned.status_code == 200
        assert plain.get_json() == versioned.get_json()
    body = {"inputs": [tensor("W", W), tensor("x", X)]}
    a = outputs_of(client.post("/v2/models/ex3/infer", json=body))
    b = outputs_of(client.post("/v2/models/ex3/versions/1/infer", json=body))
    assert a.keys() == b.keys() and all(a[k].tobytes() == b[k].tobytes() for k in a)
    data, headers = binary_request({"W": W.astype(np.float32), "x": X.astype(np.float32)})
    c = outputs_of(client.post("/v2/models/ex3/versions/1/infer", data=data,
                               headers=headers, content_type="application/octet-stream"))
    assert c["grad:W"].dtype == np.float32


@pytest.mark.parametrize("version", ["2", "0", "01", "latest", "1.0", "-1", "x" * 300])
def test_another_version_is_404_in_oip_form(client, ex3, version):
    body = {"inputs": [tensor("W", W), tensor("x", X)]}
    for resp in (client.get(f"/v2/models/ex3/versions/{version}"),
                 client.get(f"/v2/models/ex3/versions/{version}/ready"),
                 client.get(f"/v2/models/ex3/versions/{version}/config"),
                 client.post(f"/v2/models/ex3/versions/{version}/infer", json=body)):
        msg = oip_error(resp, 404)
        assert "no version" in msg and version[:40] in msg, msg


def test_unknown_model_on_a_versioned_path_is_404_naming_the_model(client):
    for resp in (client.get("/v2/models/nope/versions/1"),
                 client.get("/v2/models/nope/versions/7/ready"),
                 client.post("/v2/models/nope/versions/1/infer", json={"inputs": []})):
        assert "nope" in oip_error(resp, 404)


def test_model_config_is_a_triton_config(client, ex3):
    gid = register(client, {"graph": {
        "inputs": {"W": {"shape": [3, 2]}, "x": {"shape": [4, 3]}, "y": {"shape": [4]}},
        "nodes": [{"id": "s", "op": "matmul", "args": ["x", "W"]},
                  {"id": "f", "op": "softmax_cross_entropy", "args": ["s", "y"]}],
        "output": "f"}})
    cfg = client.get(f"/v2/models/{gid}/config").get_json()
    assert cfg["name"] == gid and cfg["platform"] == "gradserve_graph"
    assert cfg["max_batch_size"] == 0
    assert cfg["input"] == [{"name": "W", "data_type": "TYPE_FP64", "dims": [3, 2]},
                            {"name": "x", "data_type": "TYPE_FP64", "dims": [4, 3]},
                            {"name": "y", "data_type": "TYPE_INT64", "dims": [4]}]
    assert cfg["output"] == [{"name": "output", "data_type": "TYPE_FP64", "dims": []},
                             {"name": "grad:W", "data_type": "TYPE_FP64", "dims": [3, 2]},
                             {"name": "grad:x", "data_type": "TYPE_FP64", "dims": [4, 3]}]
    undeclared = client.get("/v2/models/ex3/config").get_json()
    assert [t["dims"] for t in undeclared["input"]] == [[-1], [-1]]
    assert "nope" in oip_error(client.get("/v2/models/nope/config"), 404)


def test_repository_index_lists_the_named_models(client):
    assert client.post("/v2/repository/index").get_json() == []
    register(client, {"expression": EX3["expression"], "name": "ex3"})
    register(client, {"expression": "W @ x", "name": "a-linear"})
    register(client, {"expression": "sum(x * x)"})  # no name: not listed
    want = [{"name": "a-linear", "version": "1", "state": "READY"},
            {"name": "ex3", "version": "1", "state": "READY"}]
    for kwargs in ({}, {"json": {}}, {"json": {"ready": True}}, {"json": {"ready": False}},
                   {"data": b"  ", "content_type": "application/json"}):
        resp = client.post("/v2/repository/index", **kwargs)
        assert resp.status_code == 200 and resp.mimetype == "application/json", kwargs
        assert resp.get_json() == want


def test_repository_index_is_shared_through_the_store():
    store = MemoryStore()
    a, b = build_app(store=store).test_client(), build_app(store=store).test_client()
    register(a, {"expression": EX3["expression"], "name": "from-a"})
    assert [m["name"] for m in b.post("/v2/repository/index").get_json()] == ["from-a"]


@pytest.mark.parametrize("body,status,needle", [
    (b"[]", 422, "JSON object"),
    (b"null", 422, "JSON object"),
    (b"  null ", 422, "JSON object"),
    (b"0", 422, "JSON object"),
    (b'"x"', 422, "JSON object"),
    (b'{"ready": "yes"}', 422, "ready"),
    (b'{"ready": 1}', 422, "ready"),
    (b'{"unknown": true}', 422, "unknown"),
    (b'{"ready": tru', 400, "JSON"),
])
def test_repository_index_bad_bodies(client, body, status, needle):
    msg = oip_error(client.post("/v2/repository/index", data=body,
                                content_type="application/json"), status)
    assert needle in msg, msg


# --- KServe's top-level fields ------------------------------------------------------------


def kserve_body(model_name: str, **extra: Any) -> dict[str, Any]:
    """What KServe's ``InferRequest.to_rest()`` sends (kserve 0.21): a generated id, the
    model's name, the inputs, and outputs/parameters when given."""
    return {"id": "5f0c8e2a-6a57-4c1e-9d2b-1f6f0b7f9a11", "model_name": model_name,
            "inputs": [tensor("W", W), tensor("x", X)], **extra}


def test_kserve_model_name_and_id_are_accepted(client, ex3):
    ref = outputs_of(client.post("/v2/models/ex3/infer",
                                 json={"inputs": [tensor("W", W), tensor("x", X)]}))
    for body in (kserve_body("ex3"), kserve_body("ex3", model_version="1"),
                 kserve_body("ex3", model_version=""),
                 kserve_body("ex3", parameters={"binary_data_output": False},
                             outputs=[{"name": "grad:W"}])):
        resp = client.post("/v2/models/ex3/infer", json=body)
        got = outputs_of(resp)
        assert resp.get_json()["id"] == body["id"]
        assert all(got[k].tobytes() == ref[k].tobytes() for k in got)
    resp = client.post("/v2/models/ex3/versions/1/infer",
                       json=kserve_body("ex3", model_version="1"))
    assert resp.status_code == 200


def test_kserve_model_name_may_be_the_graph_id_of_the_same_model(client, ex3):
    gid = register(client, {"expression": EX3["expression"], "name": "ex3"})
    assert client.post("/v2/models/ex3/infer", json=kserve_body(gid)).status_code == 200
    assert client.post(f"/v2/models/{gid}/infer", json=kserve_body("ex3")).status_code == 200


@pytest.mark.parametrize("field,value,needle", [
    ("model_name", "other", "'other' is not the model of the path"),
    ("model_name", "nope-unknown", "is not the model of the path"),
    ("model_name", "g-" + "0" * 64, "is not the model of the path"),
    ("model_name", "", "is not the model of the path"),
    ("model_name", "EX3", "is not the model of the path"),
    ("model_name", 3, "model_name"),
    ("model_name", "x" * 300, "model_name"),
    ("model_version", "2", "no version '2'"),
    ("model_version", "latest", "no version 'latest'"),
    ("model_version", 1, "model_version"),
])
def test_kserve_model_fields_that_disagree_with_the_path_are_422(client, ex3, field, value,
                                                                 needle):
    register(client, {"expression": "W @ x", "name": "other"})
    body = kserve_body("ex3")
    body[field] = value
    msg = oip_error(client.post("/v2/models/ex3/infer", json=body), 422)
    assert needle in msg and field in msg, msg


def test_kserve_binary_body_with_model_name(client, ex3):
    w, x = W.astype(np.float32), X.astype(np.float32)
    header = {"id": "abc", "model_name": "ex3", "inputs": [
        {"name": n, "shape": list(a.shape), "datatype": "FP32",
         "parameters": {"binary_data_size": a.nbytes}} for n, a in (("W", w), ("x", x))]}
    data, headers = binary_body(header, [w.tobytes(), x.tobytes()])
    resp = client.post("/v2/models/ex3/infer", data=data, headers=headers,
                       content_type="application/octet-stream")
    assert outputs_of(resp)["grad:W"].dtype == np.float32
    header["model_name"] = "other-model"
    data, headers = binary_body(header, [w.tobytes(), x.tobytes()])
    assert "model_name" in oip_error(client.post(
        "/v2/models/ex3/infer", data=data, headers=headers,
        content_type="application/octet-stream"), 422)


def test_api_keys_apply_to_v2_but_not_its_health(make_app):
    client = make_app(api_keys=("k1-0123456789abcdef",)).test_client()
    for path in ("/v2", "/v2/models/x", "/v2/models/x/ready"):
        assert "Bearer" in oip_error(client.get(path), 401)
    resp = client.post("/v2/models/x/infer", json={"inputs": []})
    assert oip_error(resp, 401) and resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/health/ready").status_code == 200
    ok = client.get("/v2", headers={"Authorization": "Bearer k1-0123456789abcdef"})
    assert ok.status_code == 200


def test_admission_applies_to_v2(make_app):
    app = make_app(max_inflight=1)
    client = app.test_client()
    register(client, {"expression": EX3["expression"], "name": "ex3"})
    # Hold the worker's only slot with a request stopped inside the engine seam.
    started, release = threading.Event(), threading.Event()

    def slow(*args: Any, **kwargs: Any) -> Any:
        started.set()
        release.wait(10)
        return orig(*args, **kwargs)

    orig = driver.execute
    driver.execute = slow
    try:
        t = threading.Thread(target=lambda: app.test_client().post(
            "/v2/models/ex3/infer", json={"inputs": [tensor("W", W), tensor("x", X)]}))
        t.start()
        assert started.wait(10)
        resp = client.post("/v2/models/ex3/infer",
                           json={"inputs": [tensor("W", W), tensor("x", X)]})
        assert "GRADSERVE_MAX_INFLIGHT" in oip_error(resp, 503)
        assert resp.headers["Retry-After"]
        assert client.get("/v2/health/live").status_code == 200  # probes are not admitted
    finally:
        release.set()
        t.join(10)
        driver.execute = orig


# --- MLP architectures as models --------------------------------------------------------------

MLP_ARCH = {"layers": [{"in_features": 3, "out_features": 4, "activation": "tanh"},
                       {"in_features": 4, "out_features": 2}],
            "loss": "softmax_cross_entropy", "name": "tiny-mlp"}


def test_mlp_graph_is_the_mlp_endpoints_graph_and_infers_the_same(client):
    resp = client.post("/v1/mlp/graphs", json=MLP_ARCH)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    reg = resp.get_json()
    assert resp.headers["Location"] == f"/v1/graphs/{reg['graph_id']}"
    assert client.post("/v1/mlp/graphs", json=MLP_ARCH).status_code == 200
    rng = np.random.default_rng(0)
    w0, b0 = rng.normal(size=(4, 3)), rng.normal(size=4)
    w1, b1 = rng.normal(size=(2, 4)), rng.normal(size=2)
    x, y = rng.normal(size=(5, 3)), np.array([0, 1, 1, 0, 1])
    v1 = client.post("/v1/mlp/gradients", json={
        "layers": [{"weight": w0.tolist(), "bias": b0.tolist(), "activation": "tanh"},
                   {"weight": w1.tolist(), "bias": b1.tolist()}],
        "inputs": x.tolist(), "loss": {"type": "softmax_cross_entropy", "targets": y.tolist()},
        "wrt": ["weights", "inputs"]}).get_json()
    assert v1["graph_id"] == reg["graph_id"]
    body, headers = binary_request({"layers.0.weight": w0, "layers.0.bias": b0,
                                    "layers.1.weight": w1, "layers.1.bias": b1,
                                    "x": x, "targets": y})
    out = outputs_of(client.post("/v2/models/tiny-mlp/infer", data=body, headers=headers))
    assert out["output"].item() == v1["loss"]
    for i in range(2):
        assert out[f"grad:layers.{i}.weight"].tolist() == v1["gradients"]["layers"][i]["weight"]
        assert out[f"grad:layers.{i}.bias"].tolist() == v1["gradients"]["layers"][i]["bias"]
    assert out["grad:x"].tolist() == v1["gradients"]["inputs"]


def test_mlp_graph_layers_must_chain(client):
    body = problem(client.post("/v1/mlp/graphs", json={"layers": [
        {"in_features": 3, "out_features": 4}, {"in_features": 5, "out_features": 2}]}), 422)
    assert ["layers", 1, "in_features"] in [e["loc"] for e in body["errors"]]
    problem(client.post("/v1/mlp/graphs", json={"layers": [
        {"in_features": 3, "out_features": 4}], "l2": True}), 422)
    problem(client.post("/v1/mlp/graphs", json={"layers": []}), 422)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, None])
def test_finiteness_check_is_exact(dtype, bad):
    """The fast check (a dot product) must neither miss a NaN/infinity nor refuse finite
    values whose squares overflow."""
    arr = np.full(1000, np.finfo(dtype).max / 2, dtype=dtype)  # squares overflow
    if bad is not None:
        arr[417] = bad
    body, headers = binary_request({"a": arr})
    if bad is None:
        assert decode_request(body, headers[HEADER], max_elements=10**6).inputs[0].array.size
    else:
        with pytest.raises(Unprocessable, match="non-finite"):
            decode_request(body, headers[HEADER], max_elements=10**6)


# --- the response-size limit ------------------------------------------------------------------


def test_an_answer_over_max_response_bytes_is_413_before_it_runs(make_app, monkeypatch):
    """A 1 KB binary request asks for a JSON answer several times its size: refused by the
    estimate, before the engine runs; binary outputs or fewer outputs fit."""
    from service.flows import driver

    client = make_app(max_response_bytes=3000).test_client()
    register(client, {"expression": "sum(tanh(W @ x))", "name": "big"})
    inputs = {"W": np.full((16, 16), 0.1, dtype=np.float32),
              "x": np.full(16, 0.2, dtype=np.float32)}
    ran = []
    real = driver.execute
    monkeypatch.setattr(driver, "execute", lambda *a, **k: ran.append(1) or real(*a, **k))
    body, headers = binary_request(inputs, binary_output=False)
    msg = oip_error(client.post("/v2/models/big/infer", data=body, headers=headers), 413)
    assert "GRADSERVE_MAX_RESPONSE_BYTES" in msg and "binary" in msg
    assert ran == []
    body, headers = binary_request(inputs, binary_output=True)  # 1 KB of FP32 gradients
    assert outputs_of(client.post("/v2/models/big/infer", data=body, headers=headers))
    body, headers = binary_request(inputs, outputs=["output", "grad:x"], binary_output=False)
    got = outputs_of(client.post("/v2/models/big/infer", data=body, headers=headers))
    assert set(got) == {"output", "grad:x"} and ran == [1, 1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("binary", [False, True])
@pytest.mark.parametrize("outputs", [None, ["grad:W"], ["output"]])
def test_the_oip_estimate_bounds_the_real_answer(client, dtype, binary, outputs):
    from service.flows import response_size
    from service.flows.oip import GRAD, OUTPUT

    register(client, {"expression": "sum(tanh(W @ x))", "name": "est"})
    rng = np.random.default_rng(1)
    inputs = {"W": (rng.standard_normal((6, 5)) * 1e-30).astype(dtype),  # long reprs
              "x": rng.standard_normal(5).astype(dtype)}
    body, headers = binary_request(inputs, outputs, binary_output=binary)
    resp = client.post("/v2/models/est/infer", data=body, headers=headers)
    assert resp.status_code == 200, resp.get_data(as_text=True)
    cache = client.application.extensions["gradserve"].cache
    plan, _ = cache.plan_for_id(cache.graph_id_of("est"))
    names = outputs or [OUTPUT, GRAD + "W", GRAD + "x"]
    est = response_size.check_oip(
        plan, {"W": (6, 5), "x": (5,)},
        [(n, None if n == OUTPUT else n[len(GRAD):], binary) for n in names],
        "float32" if dtype == np.float32 else "float64", limit=1 << 30)
    assert len(resp.get_data()) <= est < 20 * len(resp.get_data()) + 10_000
