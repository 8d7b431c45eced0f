"""Every size and work limit is a 413 naming its setting, decided before NumPy allocates.

A limit's setting is ``GRADSERVE_<NAME>``; the problem's detail must name it (either
spelling), so an operator knows which knob a client ran into.
"""

from __future__ import annotations

import base64
import gc
import time
import tracemalloc

import numpy as np
import pytest

from service.engine.limits import Limits
from service.flows import codec
from tests.lecture import assert_lecture, lecture_request, locs, problem

FAST_S = 0.2  # "answered in < 200 ms"
SMALL_PEAK = 32 * 1024 * 1024  # a refused request allocates nothing like the tensor it asks for


def b64(arr, dtype="float64"):
    arr = np.asarray(arr, dtype="<f8" if dtype == "float64" else "<f4")
    return {"shape": list(arr.shape), "dtype": dtype,
            "b64": base64.b64encode(arr.tobytes()).decode()}


def too_large(resp, limit):
    """A 413 whose detail names the setting ``limit`` (e.g. ``max_nodes``)."""
    body = problem(resp, 413)
    assert body["title"] == "Content Too Large"
    detail = body["detail"].lower()
    assert limit in detail or f"gradserve_{limit}" in detail, body["detail"]
    return body


def timed_post(client, body, path="/v1/gradients"):
    start = time.perf_counter()
    resp = client.post(path, json=body)
    return resp, time.perf_counter() - start


def peak_bytes(client, body, path="/v1/gradients"):
    """Peak Python/NumPy heap allocation while the app answers ``body``."""
    tracemalloc.start()
    try:
        resp = client.post(path, json=body)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return resp, peak


# --- a 10^9-element intermediate from small inputs -----------------------------------------

BROADCAST_BOMB = {
    "graph": {
        "inputs": {"a": {}, "b": {}, "c": {}},
        "nodes": [
            {"id": "t", "op": "add", "args": ["a", "b"]},  # (1000, 1000, 1): fine
            {"id": "u", "op": "mul", "args": ["t", "c"]},  # (1000, 1000, 1000): 10^9
            {"id": "f", "op": "sum", "args": ["u"]},
        ],
        "output": "f",
    },
    "values": {
        "a": b64(np.ones((1000, 1, 1))),
        "b": {"shape": [1, 1000, 1], "data": [1.0] * 1000},
        "c": b64(np.ones((1, 1, 1000))),
    },
}

OUTER_BOMB = {  # a (31623, 1) @ (1, 31623) outer product: 10^9 elements from 63,246 inputs
    "graph": {
        "inputs": {"x": {}, "y": {}},
        "nodes": [
            {"id": "o", "op": "matmul", "args": ["x", "y"]},
            {"id": "f", "op": "sum", "args": ["o"]},
        ],
        "output": "f",
    },
    "values": {"x": b64(np.ones((31623, 1)), "float32"), "y": b64(np.ones((1, 31623)),
                                                                  "float32")},
}

RESHAPE_BOMB = {  # reshape to (1000, 1, 1) and broadcast against itself twice
    "expression": "a = reshape(v, shape=[1000, 1, 1]); b = reshape(v, shape=[1, 1000, 1]);"
                  " c = reshape(v, shape=[1, 1, 1000]); sum(a + b + c)",
    "values": {"v": b64(np.arange(1000.0))},
}


@pytest.mark.parametrize("bomb", [BROADCAST_BOMB, OUTER_BOMB, RESHAPE_BOMB],
                         ids=["broadcast", "outer_product", "reshape"])
def test_huge_intermediate_refused_fast_before_allocation(client, bomb):
    resp, elapsed = timed_post(client, bomb)
    body = too_large(resp, "max_tensor_elements")
    assert "1,000" in body["detail"]  # the element count it would have had
    assert elapsed < FAST_S, f"took {elapsed:.3f} s"
    resp, peak = peak_bytes(client, bomb)
    too_large(resp, "max_tensor_elements")
    assert peak < SMALL_PEAK, f"allocated {peak:,} bytes"


def test_huge_intermediate_with_declared_shapes_names_the_node(client):
    graph = {
        "inputs": {"a": {"shape": [1000, 1, 1]}, "b": {"shape": [1, 1000, 1]},
                   "c": {"shape": [1, 1, 1000]}},
        "nodes": BROADCAST_BOMB["graph"]["nodes"], "output": "f",
    }
    resp, elapsed = timed_post(client, {"graph": graph, "values": BROADCAST_BOMB["values"]})
    body = too_large(resp, "max_tensor_elements")
    assert "'u'" in body["detail"]
    assert elapsed < FAST_S


def test_huge_intermediate_of_a_registered_graph(client):
    """By id the limits hold too (whether registration already refuses the graph or not)."""
    graph = {
        "inputs": {"a": {"shape": [1000, 1, 1]}, "b": {"shape": [1, 1000, 1]},
                   "c": {"shape": [1, 1, 1000]}},
        "nodes": BROADCAST_BOMB["graph"]["nodes"], "output": "f",
    }
    reg = client.post("/v1/graphs", json={"graph": graph})
    if reg.status_code == 413:
        too_large(reg, "max_tensor_elements")
        return
    assert reg.status_code == 201
    gid = reg.get_json()["graph_id"]
    resp, elapsed = timed_post(client, {"values": BROADCAST_BOMB["values"]},
                               path=f"/v1/graphs/{gid}/gradients")
    too_large(resp, "max_tensor_elements")
    assert elapsed < FAST_S


def test_limit_is_per_tensor_not_per_request(make_app):
    client = make_app(limits=Limits(max_tensor_elements=100)).test_client()
    resp = client.post("/v1/gradients", json={"expression": "sum(x * y)",
                                              "values": {"x": [1.0] * 100, "y": [2.0] * 100}})
    assert resp.status_code == 200
    body = too_large(client.post("/v1/gradients", json={
        "expression": "sum(x * y)", "values": {"x": [[1.0]] * 11, "y": [[2.0] * 10]}}),
        "max_tensor_elements")
    assert "110" in body["detail"]


# --- max_tensor_elements on inputs: from the declared shape, before decoding ---------------


@pytest.mark.parametrize("tensor", [
    {"shape": [100000, 100000], "data": []},
    {"shape": [100000, 100000], "dtype": "float32", "data": [1.0]},
    {"shape": [4611686018427387904], "data": []},
    {"shape": [100000, 100000], "b64": ""},
    {"shape": [100000, 100000], "dtype": "float32", "b64": "AAAAAA=="},
    {"shape": [65536] * 8, "b64": ""},
], ids=["flat", "flat_f32", "flat_2_62", "b64", "b64_f32", "b64_8d"])
def test_input_declared_over_limit_refused_before_decoding(client, tensor, monkeypatch):
    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a tensor that is over the limit")

    monkeypatch.setattr(codec.pybase64, "b64decode", no_decoding)
    monkeypatch.setattr(codec, "_to_array", no_decoding)
    req = {"expression": "x * y", "values": {"x": tensor, "y": 1.0}}
    resp, elapsed = timed_post(client, req)
    body = too_large(resp, "max_tensor_elements")
    assert ["values", "x"] in locs(body)
    assert elapsed < FAST_S


def test_input_with_real_payload_over_limit_is_not_decoded(make_app, monkeypatch):
    client = make_app(limits=Limits(max_tensor_elements=1000)).test_client()

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded a tensor that is over the limit")

    monkeypatch.setattr(codec.pybase64, "b64decode", no_decoding)
    monkeypatch.setattr(codec, "_to_array", no_decoding)
    for x in (b64(np.ones(2000)), {"shape": [2000], "data": [1.0] * 2000}):
        too_large(client.post("/v1/gradients", json={"expression": "sum(x)",
                                                     "values": {"x": x}}),
                  "max_tensor_elements")


def test_nested_input_over_limit(make_app):
    client = make_app(limits=Limits(max_tensor_elements=1000)).test_client()
    body = too_large(client.post("/v1/gradients", json={
        "expression": "sum(x)", "values": {"x": [[1.0] * 50] * 21}}), "max_tensor_elements")
    assert ["values", "x"] in locs(body)
    ok = client.post("/v1/gradients", json={"expression": "sum(x)",
                                             "values": {"x": [[1.0] * 50] * 20}})
    assert ok.status_code == 200 and ok.get_json()["output"] == 1000.0


def test_upstream_over_limit(client):
    body = too_large(client.post("/v1/gradients", json={
        "expression": "x * y", "values": {"x": [1.0], "y": 1.0},
        "upstream": {"shape": [100000, 100000], "b64": ""}}), "max_tensor_elements")
    assert ["upstream"] in locs(body)


# --- max_nodes -----------------------------------------------------------------------------


def test_max_nodes_graph(make_app):
    client = make_app(limits=Limits(max_nodes=5)).test_client()
    nodes = [{"id": "n0", "op": "exp", "args": ["x"]}]
    nodes += [{"id": f"n{i}", "op": "exp", "args": [f"n{i - 1}"]} for i in range(1, 6)]
    graph = {"inputs": {"x": {}}, "nodes": nodes, "output": "n5"}
    body = too_large(client.post("/v1/gradients", json={"graph": graph, "values": {"x": 0.0}}),
                     "max_nodes")
    assert "6" in body["detail"]
    too_large(client.post("/v1/graphs", json={"graph": graph}), "max_nodes")
    graph = {"inputs": {"x": {}}, "nodes": nodes[:5], "output": "n4"}
    assert client.post("/v1/gradients", json={"graph": graph,
                                              "values": {"x": 0.0}}).status_code == 200


def test_max_nodes_expression(make_app):
    client = make_app(limits=Limits(max_nodes=5)).test_client()
    too_large(client.post("/v1/gradients", json={"expression": "x+x+x+x+x+x+x",
                                                 "values": {"x": 1}}), "max_nodes")
    too_large(client.post("/v1/graphs", json={"expression": "x+x+x+x+x+x+x"}), "max_nodes")
    assert client.post("/v1/gradients", json={"expression": "x+x+x+x",
                                              "values": {"x": 1}}).status_code == 200


def test_max_nodes_default_is_enforced(client):
    """The default limit (20,000) refuses a 20,001-node graph quickly."""
    nodes = [{"id": f"n{i}", "op": "neg", "args": [f"n{i - 1}" if i else "x"]}
             for i in range(20_001)]
    graph = {"inputs": {"x": {}}, "nodes": nodes, "output": "n20000"}
    resp, elapsed = timed_post(client, {"graph": graph, "values": {"x": 1.0}})
    too_large(resp, "max_nodes")
    assert elapsed < 5.0


# --- work limits ---------------------------------------------------------------------------


def test_max_flops(make_app):
    client = make_app(limits=Limits(max_flops=10_000)).test_client()
    w = np.ones((20, 20)).tolist()  # 20^3 * 2 = 16,000 flops forward alone
    too_large(client.post("/v1/gradients", json={"expression": "sum(W @ W)",
                                                 "values": {"W": w}}), "max_flops")
    resp = client.post("/v1/gradients", json=lecture_request("matmul_square", "expression"))
    assert resp.status_code == 200


def test_max_flops_counts_the_jacobian_and_check(make_app):
    client = make_app(limits=Limits(max_flops=2_000)).test_client()
    x = [1.0] * 30
    assert client.post("/v1/gradients", json={"expression": "sum(x * x)",
                                              "values": {"x": x}}).status_code == 200
    too_large(client.post("/v1/gradients", json={"expression": "x * x", "values": {"x": x},
                                                 "jacobian": True}), "max_flops")


def test_max_total_elements(make_app):
    client = make_app(limits=Limits(max_total_elements=100)).test_client()
    too_large(client.post("/v1/gradients", json={"expression": "sum(exp(x) * x)",
                                                 "values": {"x": [1.0] * 40}}),
              "max_total_elements")


def test_max_jacobian_rows(make_app):
    client = make_app(limits=Limits(max_jacobian_rows=4)).test_client()
    body = too_large(client.post("/v1/gradients", json={
        "expression": "2 * x", "values": {"x": [1, 2, 3, 4, 5]}, "jacobian": True}),
        "max_jacobian_rows")
    assert ["jacobian"] in locs(body)
    resp = client.post("/v1/gradients", json={"expression": "2 * x",
                                              "values": {"x": [1, 2, 3, 4]}, "jacobian": True})
    assert resp.status_code == 200
    # Without a Jacobian the same request is fine.
    assert client.post("/v1/gradients", json={"expression": "2 * x",
                                              "values": {"x": [1, 2, 3, 4, 5]},
                                              "upstream": [1] * 5}).status_code == 200


def test_max_jacobian_elements(make_app):
    client = make_app(limits=Limits(max_jacobian_elements=10)).test_client()
    body = too_large(client.post("/v1/gradients", json={
        "expression": "x * y", "values": {"x": [1, 2, 3, 4], "y": [1, 2, 3, 4]},
        "jacobian": True}), "max_jacobian_elements")
    assert ["jacobian"] in locs(body)
    assert client.post("/v1/gradients", json={
        "expression": "x * y", "values": {"x": [1, 2], "y": [1, 2]},
        "jacobian": True}).status_code == 200


def test_max_jacobian_default_refuses_a_big_jacobian_fast(client):
    resp, elapsed = timed_post(client, {"expression": "2 * x",
                                        "values": {"x": b64(np.ones(100_000))},
                                        "jacobian": True})
    too_large(resp, "max_jacobian_rows")
    assert elapsed < FAST_S


def test_max_check_elements(make_app):
    client = make_app(limits=Limits(max_check_elements=3)).test_client()
    body = too_large(client.post("/v1/gradients", json={
        "expression": "sum(x)", "values": {"x": [1, 2, 3, 4]}, "check": True}),
        "max_check_elements")
    assert ["check"] in locs(body)
    assert client.post("/v1/gradients", json={"expression": "sum(x)", "values": {"x": [1, 2, 3]},
                                              "check": True}).status_code == 200
    # Only the inputs asked for are perturbed.
    assert client.post("/v1/gradients", json={
        "expression": "sum(x) * y", "values": {"x": [1, 2, 3, 4], "y": 2.0}, "wrt": ["y"],
        "check": True}).status_code == 200


# --- expression limits ---------------------------------------------------------------------


def test_max_expression_length(make_app):
    client = make_app(max_expression_length=50).test_client()
    text = "x + " * 12 + "x"  # 49 characters
    assert client.post("/v1/gradients", json={"expression": text,
                                              "values": {"x": 1}}).status_code == 200
    body = too_large(client.post("/v1/gradients", json={"expression": text + " + x",
                                                        "values": {"x": 1}}),
                     "max_expression_length")
    assert ["expression"] in locs(body)
    too_large(client.post("/v1/graphs", json={"expression": text + " + x"}),
              "max_expression_length")


def test_max_expression_length_default(client):
    resp, elapsed = timed_post(client, {"expression": "x+" * 10_001 + "x", "values": {"x": 1}})
    too_large(resp, "max_expression_length")
    assert elapsed < FAST_S


@pytest.mark.parametrize("text", [
    "(" * 9 + "x" + ")" * 9,
    "exp(" * 9 + "x" + ")" * 9,
    "-" * 9 + "x",
    "- (" * 9 + "x" + ")" * 9,
])
def test_max_expression_depth(make_app, text):
    client = make_app(max_expression_depth=8).test_client()
    body = too_large(client.post("/v1/gradients", json={"expression": text,
                                                        "values": {"x": 1}}),
                     "max_expression_depth")
    assert ["expression"] in locs(body)


def test_expression_within_depth_is_fine(make_app):
    client = make_app(max_expression_depth=8).test_client()
    for text in ("(" * 7 + "x" + ")" * 7, "exp(" * 7 + "x" + ")" * 7, "-" * 7 + "x"):
        assert client.post("/v1/gradients", json={"expression": text,
                                                  "values": {"x": 1}}).status_code == 200


@pytest.mark.parametrize("text", [
    "(" * 5000 + "x" + ")" * 5000,
    "-" * 5000 + "x",
    "exp(" * 3000 + "x" + ")" * 3000,
    "[" * 5000 + "x" + "]" * 5000,
])
def test_deep_expressions_refused_before_parsing(client, text):
    """Deep enough text crashes CPython's parser; the default depth limit refuses it first."""
    resp, elapsed = timed_post(client, {"expression": text, "values": {"x": 1}})
    too_large(resp, "max_expression_depth")
    assert elapsed < FAST_S


def test_long_flat_expression_is_parsed_in_linear_time(client):
    """A 4,001-character chain (depth 0, 2,000 nodes) is far under every default limit: it
    must be answered as fast as any small request, not in seconds of parser time."""
    text = "+".join(["x"] * 2001)
    resp, elapsed = timed_post(client, {"expression": text, "values": {"x": 0.5}})
    assert resp.status_code == 200
    assert resp.get_json()["gradients"]["x"] == 2001.0
    assert elapsed < 1.0, f"took {elapsed:.2f} s"


def test_very_long_chain_is_answered_quickly(client):
    """A 5,000-term flat chain is parsed, compiled (forward and backward graph) and run in
    well under a second of this thread's CPU (wall time swings with the machine's load; a
    full collection of the test process's own objects is held off while timing)."""
    gc.collect()
    gc.disable()
    try:
        start = time.thread_time()
        resp = client.post("/v1/gradients", json={"expression": "+".join(["x"] * 5000),
                                                  "values": {"x": 0.5}})
        elapsed = time.thread_time() - start
    finally:
        gc.enable()
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["gradients"]["x"] == 5000.0
    assert elapsed < 1.0, f"took {elapsed:.2f} s of CPU"


# --- max_body_bytes ------------------------------------------------------------------------


def test_max_body_bytes(make_app):
    client = make_app(max_body_bytes=4096).test_client()
    assert client.post("/v1/gradients",
                       json=lecture_request("matmul_square", "graph")).status_code == 200
    resp, elapsed = timed_post(client, {"expression": "sum(x)", "values": {"x": [0.5] * 2000}})
    too_large(resp, "max_body_bytes")
    assert elapsed < FAST_S
    too_large(client.post("/v1/graphs", json={"expression": "x+" * 3000 + "x"}),
              "max_body_bytes")


def test_limits_leave_the_app_healthy(make_app):
    client = make_app(limits=Limits(max_nodes=5, max_flops=10_000)).test_client()
    for _ in range(3):
        assert client.post("/v1/gradients", json={"expression": "x+x+x+x+x+x+x",
                                                  "values": {"x": 1}}).status_code == 413
    resp = client.post("/v1/gradients", json=lecture_request("neuron_sum", "expression"))
    assert resp.status_code == 200
    assert_lecture(resp.get_json(), "neuron_sum")
