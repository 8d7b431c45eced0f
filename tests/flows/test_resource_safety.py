"""Issue 9 through the Flask app: attr lists, shape spans, response sizes, degenerate encodings,
upstream with a Jacobian, hostile headers and bounded metric labels."""

from __future__ import annotations

import base64
import time

import numpy as np
import pytest

from service.engine import REGISTRY
from service.engine.ir import MAX_NDIM
from service.flows import response_size
from service.runtime import metrics


def graph_body(op, attrs, x=(1.0, 2.0), path_values=True, **extra):
    spec = {"inputs": {"x": {}}, "nodes": [{"id": "f", "op": op, "args": ["x"],
                                          "attrs": attrs}], "output": "f"}
    body = {"graph": spec, **extra}
    if path_values:
        body["values"] = {"x": list(x)}
    return body


def problem(resp, status):
    assert resp.status_code == status, resp.json
    assert resp.content_type == "application/problem+json"
    return resp.json


# --- attr lists ---------------------------------------------------------------------------------


@pytest.mark.parametrize("op,attr,value", [
    ("reshape", "shape", [1] * 250_000 + [2]),
    ("reshape", "shape", [1_000_000_007] * 250_000),
    ("reshape", "shape", [1] * (MAX_NDIM + 1)),
    ("transpose", "axes", list(range(100_000))),
    ("sum", "axis", list(range(100_000))),
])
@pytest.mark.parametrize("route", ["/v1/gradients", "/v1/graphs"])
def test_long_attr_lists_are_refused_fast_without_echo(client, op, attr, value, route):
    body = graph_body(op, {attr: value}, upstream=[1, 2])
    if route == "/v1/graphs":
        body = {"graph": body["graph"]}
    t0 = time.perf_counter()
    resp = client.post(route, json=body)
    elapsed = time.perf_counter() - t0
    detail = problem(resp, 422)["detail"]
    assert len(resp.data) < 2000, "the detail echoes the attr"
    assert str(MAX_NDIM) in detail
    assert elapsed < 2.0


def test_attr_lists_up_to_max_ndim_still_work(client):
    x = np.arange(2.0)
    resp = client.post("/v1/gradients", json=graph_body(
        "reshape", {"shape": [1] * (MAX_NDIM - 1) + [2]}, x=x, upstream=np.ones(
            [1] * (MAX_NDIM - 1) + [2]).tolist()))
    assert resp.status_code == 200, resp.json
    assert resp.json["gradients"]["x"] == [1.0, 1.0]


def test_the_coercion_checks_the_length_before_the_items():
    from service.engine.registry import coerce_attr

    attr = REGISTRY.get("reshape").attr("shape")
    with pytest.raises(ValueError, match="more than the 32 axes"):
        coerce_attr(attr, [2**60] * 1000)


# --- shape spans -----------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [[2**40, 2**40, 0], [2**31, 2**31, 2**31, 0], [0, 2**27, 2**27]])
def test_reshape_to_huge_dims_is_a_422_inline_and_when_registered(client, shape):
    spec = {"inputs": {"x": {"shape": [0]}}, "nodes": [
        {"id": "r", "op": "reshape", "args": ["x"], "attrs": {"shape": shape}},
        {"id": "f", "op": "sum", "args": ["r"]}], "output": "f"}
    assert "2^53" in problem(client.post("/v1/graphs", json={"graph": spec}), 422)["detail"]
    resp = client.post("/v1/gradients", json={"graph": spec, "values": {"x": []}})
    problem(resp, 422)
    # Undeclared input shape: registers, and by id the shape rule refuses it (not a 500).
    spec["inputs"]["x"] = {}
    reg = client.post("/v1/graphs", json={"graph": spec})
    assert reg.status_code in (200, 201), reg.json
    problem(client.post(f"/v1/graphs/{reg.json['graph_id']}/gradients",
                        json={"values": {"x": []}}), 422)


def test_broadcasting_zero_size_inputs_to_a_huge_span_is_a_422(client):
    big = 2**24
    values = {"x": {"shape": [big, 1, 1, 0], "data": []},
              "y": {"shape": [1, big, 1, 0], "data": []},
              "z": {"shape": [1, 1, big, 0], "data": []}}
    resp = client.post("/v1/gradients", json={"expression": "sum(x + y + z)", "values": values})
    assert resp.status_code in (413, 422), resp.json


# --- responses --------------------------------------------------------------------------------


def broadcast_trace(enc="json", n=4096):
    return {"expression": "z = x + y; sum(z)", "trace": True, "encoding": enc,
            "values": {"x": {"shape": [n], "data": [0.5] * n},
                       "y": {"shape": [n, 1], "data": [0.25] * n}}}


@pytest.mark.parametrize("enc", ["json", "b64"])
def test_a_response_over_the_limit_is_a_413_before_computing(client, enc, monkeypatch):
    from service.engine import executor

    called = []
    monkeypatch.setattr(executor.Executable, "forward",
                        lambda *a, **k: called.append(1) or pytest.fail("computed"))
    t0 = time.perf_counter()
    body = problem(client.post("/v1/gradients", json=broadcast_trace(enc)), 413)
    assert "GRADSERVE_MAX_RESPONSE_BYTES" in body["detail"]
    assert time.perf_counter() - t0 < 1.0
    assert not called


def test_the_response_limit_is_a_setting(make_app):
    small = make_app(max_response_bytes=2000).test_client()
    n = 64
    body = {"expression": "sum(x * 2)", "values": {"x": [1.0] * n}}
    problem(small.post("/v1/gradients", json=body), 413)
    assert small.post("/v1/gradients", json={**body, "values": {"x": [1.0] * 8}}
                      ).status_code == 200
    mlp = {"layers": [{"weight": [[0.1] * n] * n, "bias": [0.0] * n}], "inputs": [[1.0] * n],
           "upstream": [[1.0] * n]}
    assert "GRADSERVE_MAX_RESPONSE_BYTES" in problem(
        small.post("/v1/mlp/gradients", json=mlp), 413)["detail"]


@pytest.mark.parametrize("enc,dtype", [("json", "float64"), ("json", "float32"),
                                       ("b64", "float64"), ("b64", "float32")])
@pytest.mark.parametrize("trace,jacobian", [(False, False), (True, False), (False, True)])
def test_the_estimate_bounds_the_real_response(client, enc, dtype, trace, jacobian):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((3, 5)) * 1e-300).tolist()  # long reprs
    body = {"expression": "q = tanh(x) * 1e300; r = q @ W; sum(r, axis=0)",
            "values": {"x": x, "W": rng.standard_normal((5, 4)).tolist()},
            "upstream": [1.0, 2.0, 3.0, 4.0], "encoding": enc, "dtype": dtype,
            "trace": trace, "jacobian": jacobian}
    resp = client.post("/v1/gradients", json=body)
    assert resp.status_code == 200, resp.json
    from service.engine import parse_expression
    from service.store.cache import alias_key

    plan = client.application.extensions["gradserve"].cache.peek(
        alias_key("expr", body["expression"]))
    assert plan is not None
    est = response_size.estimate_gradients(
        plan, {"x": (3, 5), "W": (5, 4)}, wrt=None, trace=trace, jacobian=jacobian,
        check=False, encoding=enc, dtype=dtype)
    assert len(resp.data) <= est < 20 * len(resp.data) + 10_000
    del parse_expression


# --- degenerate encodings ----------------------------------------------------------------------


@pytest.mark.parametrize("shape", [[0, 3], [2, 0, 3], [0], [3, 0], [0, 0, 0]])
def test_empty_tensors_keep_their_shape(client, shape):
    value = {"shape": shape, "data": []}
    for enc in ("json", "b64"):
        resp = client.post("/v1/gradients", json={"expression": "sum(x * 2)", "encoding": enc,
                                                  "values": {"x": value}})
        assert resp.status_code == 200, resp.json
        grad = resp.json["gradients"]["x"]
        if enc == "b64":
            assert grad["shape"] == shape and base64.b64decode(grad["b64"]) == b""
        elif isinstance(grad, dict):
            assert grad == {"shape": shape, "dtype": "float64", "data": []}
        else:  # nested lists say the whole shape when no zero precedes the last axis
            assert np.asarray(grad).shape == tuple(shape)
        # What comes back is accepted as a request tensor again, with the same shape.
        again = client.post("/v1/gradients", json={"expression": "sum(x * 2)",
                                                   "values": {"x": grad}})
        assert again.status_code == 200, again.json
        assert again.json["output"] == 0.0


# --- upstream with a Jacobian ------------------------------------------------------------------


def test_upstream_with_a_jacobian_is_used_for_the_gradients(client):
    body = {"expression": "x * y", "values": {"x": [1.0, 2.0], "y": [3.0, 4.0]},
            "jacobian": True, "upstream": [10.0, 100.0]}
    resp = client.post("/v1/gradients", json=body)
    assert resp.status_code == 200, resp.json
    assert resp.json["jacobians"]["x"] == [[3.0, 0.0], [0.0, 4.0]]
    assert resp.json["gradients"] == {"x": [30.0, 400.0], "y": [10.0, 200.0]}
    no_up = client.post("/v1/gradients", json={**body, "upstream": None})
    assert no_up.status_code == 200 and no_up.json["gradients"] == {}
    bad = client.post("/v1/gradients", json={**body, "upstream": [1.0, 2.0, 3.0]})
    assert "upstream" in problem(bad, 422)["detail"]


# --- hostile headers and methods ---------------------------------------------------------------


@pytest.mark.parametrize("path,method", [("/healthz", "GET"), ("/v1/ops", "GET"),
                                         ("/metrics", "GET"), ("/v1/gradients", "POST")])
def test_a_content_length_past_64_bits_is_never_a_500(client, path, method):
    resp = client.open(path, method=method, data=b"{}", content_type="application/json",
                       environ_overrides={"CONTENT_LENGTH": "18446744073709551616"})
    assert resp.status_code in (200, 413), resp.data[:300]


def test_invented_methods_are_one_metric_label():
    assert metrics.method_label("POST") == "POST"
    assert metrics.method_label("X0001FOO") == metrics.method_label("BREW") == "other"


def test_invented_methods_add_no_series(client):
    for i in range(30):
        client.open("/v1/gradients", method=f"M{i:03d}X")
    text = client.get("/metrics").data.decode()
    assert "M001X" not in text and 'method="other"' in text


def test_dead_workers_metric_files_are_folded_into_one(tmp_path):
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    key = mmap_key("gradserve_requests_total", "gradserve_requests_total",
                   ["route"], ["/healthz"], "help")
    for pid, value in ((101, 3.0), (102, 4.0)):
        d = MmapedDict(str(tmp_path / f"counter_{pid}.db"))
        d.write_value(key, value, 0.0)
        d.close()
    metrics.archive_dead_worker(101, str(tmp_path))
    metrics.archive_dead_worker(102, str(tmp_path))
    metrics.archive_dead_worker(103, str(tmp_path))  # no files: nothing to do
    assert [p.split("/")[-1] for p in metrics.metric_files(str(tmp_path))] == [
        "counter_archive.db"]
    values = list(MmapedDict.read_all_values_from_file(str(tmp_path / "counter_archive.db")))
    assert [(k, v) for k, v, _, _ in values] == [(key, 7.0)]


# --- bounded error details ---------------------------------------------------------------------


def test_an_unknown_attr_or_field_name_is_not_echoed_whole(client):
    key = "k" * 1_000_000
    resp = client.post("/v1/gradients", json=graph_body("sum", {key: 1}))
    problem(resp, 422)
    assert len(resp.data) < 4000
    resp = client.post("/v1/gradients", json={"expression": "x", "values": {"x": 1}, key: 1})
    problem(resp, 422)
    assert len(resp.data) < 4000


def test_a_jacobian_past_numpys_dims_is_a_422(client, monkeypatch):
    monkeypatch.setattr(response_size, "MAX_ARRAY_DIMS", 3)
    resp = client.post("/v1/gradients", json={"expression": "x * 2", "jacobian": True,
                                              "values": {"x": [[1.0]]}})
    assert "dims" in problem(resp, 422)["detail"]
