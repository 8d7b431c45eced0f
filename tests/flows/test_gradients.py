"""POST /v1/gradients and the graph registry (docs/api.md §1, §2, §4, §5), field by field."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from tests.lecture import (
    DQ,
    EX3,
    GRAPH_ID_RE,
    LECTURE,
    Q,
    W,
    X,
    approx,
    assert_lecture,
    lecture_request,
    locs,
    problem,
)


def post(client, body, path="/v1/gradients"):
    return client.post(path, json=body)


def ok(resp):
    assert resp.status_code == 200, resp.get_data(as_text=True)[:1000]
    assert resp.mimetype == "application/json"
    return resp.get_json()


def b64_tensor(arr, dtype="float64"):
    arr = np.asarray(arr, dtype="<f8" if dtype == "float64" else "<f4")
    return {"shape": list(arr.shape), "dtype": dtype,
            "b64": base64.b64encode(arr.tobytes()).decode()}


def from_b64(obj):
    dtype = {"float64": "<f8", "float32": "<f4"}[obj["dtype"]]
    return np.frombuffer(base64.b64decode(obj["b64"]), dtype=dtype).reshape(obj["shape"])


# --- the lecture's examples ------------------------------------------------------------------


@pytest.mark.parametrize("form", ["expression", "graph"])
@pytest.mark.parametrize("name", list(LECTURE))
def test_lecture_examples(client, name, form):
    body = ok(post(client, lecture_request(name, form)))
    assert_lecture(body, name)
    assert body["cache"] in ("hit", "miss")
    assert "warnings" not in body and "trace" not in body and "jacobians" not in body


def test_lecture_rounded_numbers_of_api_md(client):
    """The rounded numbers docs/api.md prints, as printed."""
    b1 = ok(post(client, lecture_request("neuron_sum", "expression")))
    assert (b1["output"], b1["gradients"]) == (-12, {"x": -4, "y": -4, "z": 3})
    b2 = ok(post(client, lecture_request("sigmoid_neuron", "expression")))
    assert round(b2["output"], 4) == 0.7311
    assert {k: round(v, 4) for k, v in b2["gradients"].items()} == {
        "w0": -0.1966, "x0": 0.3932, "w1": -0.3932, "x1": -0.5898, "w2": 0.1966}
    b3 = ok(post(client, lecture_request("matmul_square", "expression")))
    assert b3["output"] == approx(0.116)
    assert b3["gradients"]["W"] == approx([[0.088, 0.176], [0.104, 0.208]])
    assert b3["gradients"]["x"] == approx([-0.112, 0.636])


# --- graph ids -----------------------------------------------------------------------------


def test_graph_id_is_g_and_64_hex(client):
    body = ok(post(client, lecture_request("matmul_square", "graph")))
    assert GRAPH_ID_RE.match(body["graph_id"])


def test_same_graph_written_differently_has_same_id(client):
    spec = EX3["graph"]
    first = ok(post(client, {"graph": spec, "values": EX3["values"]}))
    # Nodes reversed, every object's keys reversed, odd whitespace: the same graph.
    shuffled = {
        "output": "f",
        "nodes": [{k: n[k] for k in reversed(list(n))} for n in reversed(spec["nodes"])],
        "inputs": {"x": {"shape": [2]}, "W": {"shape": [2, 2]}},
    }
    text = json.dumps({"values": EX3["values"], "graph": shuffled}, indent=7,
                      separators=(" ,\n", " :  "))
    resp = client.post("/v1/gradients", data=text, content_type="application/json")
    second = ok(resp)
    assert second["graph_id"] == first["graph_id"]
    assert second["output"] == approx(first["output"])
    # Attrs spelled out at their defaults are the same graph, too.
    nodes = [dict(n) for n in spec["nodes"]]
    nodes[2]["attrs"] = {"keepdims": False, "axis": None}
    third = ok(post(client, {"graph": {**spec, "nodes": nodes}, "values": EX3["values"]}))
    assert third["graph_id"] == first["graph_id"]


def test_different_graphs_have_different_ids(client):
    a = ok(post(client, {"expression": "x + y", "values": {"x": 1, "y": 2}}))
    b = ok(post(client, {"expression": "x - y", "values": {"x": 1, "y": 2}}))
    c = ok(post(client, {"expression": "x + y + 0", "values": {"x": 1, "y": 2}}))
    assert len({a["graph_id"], b["graph_id"], c["graph_id"]}) == 3


# --- wrt -----------------------------------------------------------------------------------


def test_wrt_subset(client):
    body = ok(post(client, lecture_request("neuron_sum", "expression", wrt=["z"])))
    assert body["gradients"] == {"z": 3.0}
    body = ok(post(client, lecture_request("sigmoid_neuron", "graph", wrt=["x1", "w0"])))
    assert set(body["gradients"]) == {"x1", "w0"}
    assert body["gradients"]["x1"] == approx(LECTURE["sigmoid_neuron"]["gradients"]["x1"])


def test_wrt_unused_input_gets_zeros_of_its_shape(client):
    graph = {
        "inputs": {"x": {"shape": [3]}, "unused": {"shape": [2, 2]}},
        "nodes": [{"id": "f", "op": "sum", "args": ["x"]}],
        "output": "f",
    }
    values = {"x": [1, 2, 3], "unused": [[1, 2], [3, 4]]}
    body = ok(post(client, {"graph": graph, "values": values}))
    assert body["gradients"] == {"x": [1.0, 1.0, 1.0], "unused": [[0.0, 0.0], [0.0, 0.0]]}
    body = ok(post(client, {"graph": graph, "values": values, "wrt": ["unused"]}))
    assert body["gradients"] == {"unused": [[0.0, 0.0], [0.0, 0.0]]}


CE_GRAPH = {
    "inputs": {"s": {"shape": [2, 3]}, "y": {"shape": [2]}},
    "nodes": [{"id": "loss", "op": "softmax_cross_entropy", "args": ["s", "y"]}],
    "output": "loss",
}
CE_VALUES = {"s": [[1, 2, 3], [1, -1, 0]], "y": [2, 0]}


def test_label_inputs_have_no_gradient_by_default(client):
    body = ok(post(client, {"graph": CE_GRAPH, "values": CE_VALUES}))
    assert set(body["gradients"]) == {"s"}
    s = np.array(CE_VALUES["s"], dtype=float)
    p = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    p[[0, 1], CE_VALUES["y"]] -= 1
    assert body["gradients"]["s"] == approx((p / 2).tolist())


def test_wrt_label_input_is_422(client):
    body = problem(post(client, {"graph": CE_GRAPH, "values": CE_VALUES, "wrt": ["s", "y"]}),
                   422)
    assert ["wrt", 1] in locs(body)
    assert "'y'" in body["detail"]


def test_wrt_unknown_name_is_422(client):
    body = problem(post(client, lecture_request("neuron_sum", "expression", wrt=["nope"])), 422)
    assert ["wrt", 0] in locs(body)
    assert "nope" in body["detail"]


# --- upstream ------------------------------------------------------------------------------


def test_upstream_required_for_non_scalar_output(client):
    body = problem(post(client, {"expression": "x * y",
                                 "values": {"x": [1, 2, 3], "y": [4, 5, 6]}}), 422)
    assert ["upstream"] in locs(body)
    assert "upstream" in body["detail"]


def test_upstream_gives_vjp(client):
    body = ok(post(client, {"expression": "x * y", "values": {"x": [1, 2, 3], "y": [4, 5, 6]},
                            "upstream": [1, 10, 100]}))
    assert body["output"] == [4.0, 10.0, 18.0]
    assert body["gradients"] == {"x": [4.0, 50.0, 600.0], "y": [1.0, 20.0, 300.0]}


def test_upstream_vjp_of_matmul(client):
    u = [3.0, -2.0]
    body = ok(post(client, {"expression": "W @ x", "values": {"W": W, "x": X}, "upstream": u}))
    assert body["output"] == approx(Q)
    assert body["gradients"]["W"] == approx([[u[0] * X[0], u[0] * X[1]],
                                             [u[1] * X[0], u[1] * X[1]]])
    assert body["gradients"]["x"] == approx([W[0][0] * u[0] + W[1][0] * u[1],
                                             W[0][1] * u[0] + W[1][1] * u[1]])


def test_upstream_scales_a_scalar_output(client):
    body = ok(post(client, lecture_request("neuron_sum", "expression", upstream=0.5)))
    assert body["gradients"] == {"x": -2.0, "y": -2.0, "z": 1.5}


def test_upstream_of_wrong_shape_is_422(client):
    body = problem(post(client, {"expression": "x * y", "values": {"x": [1, 2], "y": [3, 4]},
                                 "upstream": [1, 2, 3]}), 422)
    assert ["upstream"] in locs(body)


# --- trace ---------------------------------------------------------------------------------


def _check_topological(trace, inputs):
    seen = set(inputs)
    for rec in trace:
        assert set(rec) >= {"id", "op", "args", "value", "grad", "shape"}
        for a in rec["args"]:
            if isinstance(a, str):
                assert a in seen, f"{rec['id']} uses {a} before it is defined"
        seen.add(rec["id"])


def test_trace_of_named_intermediates(client):
    body = ok(post(client, {"expression": "q = W @ x; f = sum(q ** 2)", "values": EX3["values"],
                            "trace": True}))
    assert body["output"] == approx(EX3["output"])
    trace = body["trace"]
    _check_topological(trace, {"W", "x"})
    assert [r["id"] for r in trace][0] == "q" and trace[-1]["id"] == "f"
    q = trace[0]
    assert q["op"] == "matmul" and q["args"] == ["W", "x"] and q["shape"] == [2]
    assert q["value"] == approx([0.22, 0.26])
    assert q["grad"] == approx([0.44, 0.52])
    assert q["value"] == approx(Q) and q["grad"] == approx(DQ)
    f = trace[-1]
    assert f["op"] == "sum" and f["shape"] == [] and f["grad"] == 1.0
    assert f["value"] == approx(EX3["output"])


def test_trace_of_graph_spec_is_topological_whatever_the_node_order(client):
    spec = dict(EX3["graph"])
    spec["nodes"] = list(reversed(spec["nodes"]))
    body = ok(post(client, {"graph": spec, "values": EX3["values"], "trace": True}))
    trace = body["trace"]
    assert [r["id"] for r in trace] == ["q", "q2", "f"]
    _check_topological(trace, {"W", "x"})
    q2 = trace[1]
    assert q2["op"] == "square" and q2["value"] == approx([Q[0] ** 2, Q[1] ** 2])
    assert q2["grad"] == approx([1.0, 1.0])
    assert body["gradients"]["x"] == approx(EX3["gradients"]["x"])


def test_trace_one_record_per_node(client):
    body = ok(post(client, lecture_request("sigmoid_neuron", "graph", trace=True)))
    ids = [r["id"] for r in body["trace"]]
    assert sorted(ids) == sorted(n["id"] for n in LECTURE["sigmoid_neuron"]["graph"]["nodes"])
    _check_topological(body["trace"], set(LECTURE["sigmoid_neuron"]["values"]))
    by_id = {r["id"]: r for r in body["trace"]}
    assert by_id["s"]["value"] == approx(1.0)
    f = LECTURE["sigmoid_neuron"]["output"]
    assert by_id["s"]["grad"] == approx(f * (1 - f))


# --- jacobian ------------------------------------------------------------------------------


def test_jacobian_shape_is_output_shape_plus_input_shape(client):
    w = [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]
    x = [0.5, -1.0, 2.0]
    body = ok(post(client, {"expression": "W @ x", "values": {"W": w, "x": x},
                            "jacobian": True}))
    jw = np.array(body["jacobians"]["W"])
    jx = np.array(body["jacobians"]["x"])
    assert jw.shape == (2, 2, 3) and jx.shape == (2, 3)
    expected_w = np.zeros((2, 2, 3))
    for i in range(2):
        expected_w[i, i, :] = x
    assert jw.tolist() == approx(expected_w.tolist())
    assert jx.tolist() == approx(w)


def test_jacobian_of_scalar_output_is_the_gradient(client):
    body = ok(post(client, lecture_request("matmul_square", "expression", jacobian=True)))
    assert body["jacobians"]["W"] == approx(EX3["gradients"]["W"])
    assert body["jacobians"]["x"] == approx(EX3["gradients"]["x"])


def test_jacobian_elementwise_is_diagonal(client):
    body = ok(post(client, {"expression": "exp(x)", "values": {"x": [0.0, 1.0]},
                            "jacobian": True}))
    e = 2.718281828459045
    assert body["jacobians"]["x"] == approx([[1.0, 0.0], [0.0, e]])


# --- check ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(LECTURE))
def test_check_errors_are_tiny(client, name):
    body = ok(post(client, lecture_request(name, "expression", check=True)))
    assert set(body["check"]) == set(LECTURE[name]["gradients"])
    for report in body["check"].values():
        assert set(report) >= {"max_abs_error", "max_rel_error"}
        assert 0 <= report["max_abs_error"] < 1e-7
        assert 0 <= report["max_rel_error"] < 1e-6
    assert_lecture(body, name)


def test_check_with_upstream(client):
    body = ok(post(client, {"expression": "sin(x) * y", "values": {"x": [0.3, 1.2], "y": 2.0},
                            "upstream": [1.0, -3.0], "check": True}))
    for report in body["check"].values():
        assert report["max_abs_error"] < 1e-7


# --- dtype, encoding, tensor forms ---------------------------------------------------------


def test_float32_values_come_back_float32_rounded(client):
    body = ok(post(client, {"expression": "x * y", "values": {"x": 0.1, "y": 3.0},
                            "dtype": "float32"}))
    f32 = np.float32
    assert body["output"] == float(f32(0.1) * f32(3.0))
    assert body["output"] != 0.1 * 3.0
    assert body["gradients"] == {"x": 3.0, "y": float(f32(0.1))}
    assert body["gradients"]["y"] == 0.10000000149011612


def test_float32_lecture_example_close_to_float64(client):
    body = ok(post(client, lecture_request("matmul_square", "expression", dtype="float32")))
    assert_lecture(body, "matmul_square", tol=1e-6)
    assert body["output"] == float(np.float32(body["output"]))


def test_b64_encoding_round_trip(client):
    body = ok(post(client, lecture_request("matmul_square", "expression", encoding="b64",
                                           trace=True)))
    out = body["output"]
    assert out["dtype"] == "float64" and out["shape"] == []
    assert float(from_b64(out)) == approx(EX3["output"])
    gw = body["gradients"]["W"]
    assert gw["shape"] == [2, 2] and gw["dtype"] == "float64"
    assert from_b64(gw).tolist() == approx(EX3["gradients"]["W"])
    assert from_b64(body["gradients"]["x"]).tolist() == approx(EX3["gradients"]["x"])
    q = body["trace"][0]
    assert from_b64(q["value"]).tolist() == approx(Q)
    assert from_b64(q["grad"]).tolist() == approx(DQ)


def test_b64_encoding_float32(client):
    body = ok(post(client, {"expression": "x * y", "values": {"x": [0.1, 0.2], "y": 3.0},
                            "upstream": [1.0, 1.0], "dtype": "float32", "encoding": "b64"}))
    out = body["output"]
    assert out["dtype"] == "float32" and out["shape"] == [2]
    assert len(base64.b64decode(out["b64"])) == 8
    expected = np.array([0.1, 0.2], dtype=np.float32) * np.float32(3.0)
    assert np.array_equal(from_b64(out), expected)
    gy = from_b64(body["gradients"]["y"])
    assert gy.shape == () and float(gy) == float(np.float32(0.1) + np.float32(0.2))


def test_b64_encoding_jacobian(client):
    body = ok(post(client, {"expression": "2 * x", "values": {"x": [1.0, 2.0, 3.0]},
                            "jacobian": True, "encoding": "b64"}))
    j = from_b64(body["jacobians"]["x"])
    assert j.shape == (3, 3) and np.array_equal(j, 2 * np.eye(3))


W_FORMS = {
    "nested": W,
    "flat": {"shape": [2, 2], "data": [0.1, 0.5, -0.3, 0.8]},
    "flat_dtype": {"shape": [2, 2], "dtype": "float64", "data": [0.1, 0.5, -0.3, 0.8]},
    "b64": b64_tensor(W),
}
X_FORMS = {
    "nested": X,
    "flat": {"shape": [2], "data": X},
    "flat_dtype": {"shape": [2], "dtype": "float64", "data": X},
    "b64": b64_tensor(X),
}


@pytest.mark.parametrize("form", list(W_FORMS))
def test_tensor_input_forms(client, form):
    body = ok(post(client, {"graph": EX3["graph"],
                            "values": {"W": W_FORMS[form], "x": X_FORMS[form]}}))
    assert_lecture(body, "matmul_square")


def test_number_form_and_0d_objects(client):
    values = {"x": -2, "y": {"shape": [], "data": [5]}, "z": b64_tensor(-4.0)}
    body = ok(post(client, {"expression": "(x + y) * z", "values": values}))
    assert_lecture(body, "neuron_sum")
    values = {"x": -2.0, "y": 5.0, "z": -4.0}
    assert_lecture(ok(post(client, {"expression": "(x + y) * z", "values": values})),
                   "neuron_sum")


def test_float32_binary_input(client):
    x = np.array([0.1, 0.7], dtype=np.float32)
    body = ok(post(client, {"expression": "sum(x * x)",
                            "values": {"x": b64_tensor(x, "float32")}}))
    x64 = x.astype(np.float64)  # float64 compute on the float32 values as sent
    assert body["output"] == approx(float(np.sum(x64 * x64)))
    assert body["gradients"]["x"] == approx((2 * x64).tolist())


def test_flat_float32_dtype_rounds_data(client):
    body = ok(post(client, {"expression": "sum(x)",
                            "values": {"x": {"shape": [1], "dtype": "float32", "data": [0.1]}}}))
    assert body["output"] == float(np.float32(0.1))


def test_empty_tensor(client):
    body = ok(post(client, {"expression": "sum(x)", "values": {"x": {"shape": [0],
                                                                    "data": []}}}))
    assert body["output"] == 0.0 and body["gradients"]["x"] == []


# --- non-finite outputs --------------------------------------------------------------------


def test_non_finite_output_is_null_with_warning(client):
    body = ok(post(client, {"expression": "log(x)", "values": {"x": 0}}))
    assert body["output"] is None
    assert body["gradients"]["x"] is None
    warnings = body["warnings"]
    assert any("output" in w for w in warnings)
    assert any("gradients.x" in w for w in warnings)


def test_non_finite_element_is_null_in_nested_array(client):
    body = ok(post(client, {"expression": "log(x)", "values": {"x": [0.0, 1.0]},
                            "upstream": [1.0, 1.0]}))
    assert body["output"] == [None, 0.0]
    assert body["gradients"]["x"] == [None, 1.0]
    assert any(w.startswith("output") for w in body["warnings"])


def test_non_finite_in_b64_is_carried_as_is(client):
    body = ok(post(client, {"expression": "log(x)", "values": {"x": [0.0, 1.0]},
                            "upstream": [1.0, 1.0], "encoding": "b64"}))
    out = from_b64(body["output"])
    assert out[0] == -np.inf and out[1] == 0.0
    assert np.isposinf(from_b64(body["gradients"]["x"])[0])
    assert any("output" in w for w in body["warnings"])


def test_non_finite_trace_value_is_named(client):
    body = ok(post(client, {"expression": "a = log(x); f = a * 0", "values": {"x": 0.0},
                            "trace": True}))
    assert body["trace"][0]["value"] is None
    assert any("trace.a" in w for w in body["warnings"])


def test_finite_response_has_no_warnings(client):
    body = ok(post(client, lecture_request("sigmoid_neuron", "expression")))
    assert "warnings" not in body or not body["warnings"]


# --- cache ---------------------------------------------------------------------------------


def test_cache_miss_then_hit(client):
    req = {"expression": "x * 7.25 + y", "values": {"x": 1, "y": 2}}
    assert ok(post(client, req))["cache"] == "miss"
    assert ok(post(client, req))["cache"] == "hit"
    req["values"] = {"x": [1, 2], "y": 3}
    req["upstream"] = [1, 1]
    assert ok(post(client, req))["cache"] == "hit"  # the plan does not depend on the values


def test_cache_hit_for_the_same_graph_written_differently(client):
    spec = EX3["graph"]
    assert ok(post(client, {"graph": spec, "values": EX3["values"]}))["cache"] == "miss"
    reordered = {**spec, "nodes": list(reversed(spec["nodes"]))}
    body = ok(post(client, {"graph": reordered, "values": EX3["values"]}))
    assert body["cache"] == "hit"
    assert_lecture(body, "matmul_square")


def test_caches_are_per_app(make_app):
    req = lecture_request("neuron_sum", "expression")
    for _ in range(2):
        assert ok(make_app().test_client().post("/v1/gradients", json=req))["cache"] == "miss"


# --- registered graphs (docs/api.md §5) -------------------------------------------------------


def register(client, body):
    return client.post("/v1/graphs", json=body)


def test_register_201_then_200(client):
    first = register(client, {"graph": EX3["graph"]})
    assert first.status_code == 201, first.get_data(as_text=True)
    body = first.get_json()
    gid = body["graph_id"]
    assert GRAPH_ID_RE.match(gid)
    assert first.headers["Location"] == f"/v1/graphs/{gid}"
    assert set(body) >= {"graph_id", "inputs", "output", "nodes"}
    assert body["output"] == "f"
    assert body["inputs"] == {"W": {"shape": [2, 2]}, "x": {"shape": [2]}}
    assert [n["id"] for n in body["nodes"]] == ["q", "q2", "f"]

    again = register(client, {"graph": EX3["graph"]})
    assert again.status_code == 200
    assert again.get_json()["graph_id"] == gid
    assert again.headers["Location"] == f"/v1/graphs/{gid}"

    reordered = {**EX3["graph"], "nodes": list(reversed(EX3["graph"]["nodes"]))}
    third = register(client, {"graph": reordered})
    assert third.status_code == 200 and third.get_json()["graph_id"] == gid

    # The id is the one /v1/gradients reports for the same graph.
    assert ok(post(client, {"graph": EX3["graph"], "values": EX3["values"]}))["graph_id"] == gid


def test_register_expression(client):
    resp = register(client, {"expression": LECTURE["sigmoid_neuron"]["expression"]})
    assert resp.status_code == 201
    body = resp.get_json()
    assert sorted(body["inputs"]) == ["w0", "w1", "w2", "x0", "x1"]
    gid = body["graph_id"]
    grads = ok(post(client, {"values": LECTURE["sigmoid_neuron"]["values"]},
                    path=f"/v1/graphs/{gid}/gradients"))
    assert_lecture(grads, "sigmoid_neuron")
    assert grads["graph_id"] == gid


def test_get_registered_graph_is_its_canonical_spec(client):
    created = register(client, {"graph": EX3["graph"]}).get_json()
    gid = created["graph_id"]
    resp = client.get(f"/v1/graphs/{gid}")
    assert resp.status_code == 200
    spec = resp.get_json()
    assert spec == created
    # The canonical spec is itself a graph spec of the same graph.
    again = register(client, {"graph": {k: spec[k] for k in ("inputs", "nodes", "output")}})
    assert again.status_code == 200 and again.get_json()["graph_id"] == gid


def test_get_unknown_graph_is_404(client):
    body = problem(client.get("/v1/graphs/g-" + "0" * 64), 404)
    assert ["graph_id"] in locs(body)
    problem(client.get("/v1/graphs/not-an-id"), 404)
    problem(client.get("/v1/graphs/g-" + "A" * 64), 404)


def test_gradients_of_unknown_graph_is_404(client):
    problem(post(client, {"values": {"x": 1}}, path="/v1/graphs/g-" + "1" * 64 + "/gradients"),
            404)
    problem(post(client, {"graph_id": "g-" + "2" * 64, "values": {"x": 1}}), 404)


@pytest.mark.parametrize("name", list(LECTURE))
def test_registered_graph_gradients_by_id(client, name):
    gid = register(client, {"graph": LECTURE[name]["graph"]}).get_json()["graph_id"]
    path = f"/v1/graphs/{gid}/gradients"
    body = ok(post(client, {"values": LECTURE[name]["values"]}, path=path))
    assert_lecture(body, name)
    assert body["graph_id"] == gid and body["cache"] == "hit"
    # The same graph by id in the body of /v1/gradients.
    body = ok(post(client, {"graph_id": gid, "values": LECTURE[name]["values"]}))
    assert_lecture(body, name)


def test_registered_graph_gradients_take_every_option(client):
    gid = register(client, {"graph": EX3["graph"]}).get_json()["graph_id"]
    body = ok(post(client, {"values": EX3["values"], "wrt": ["x"], "trace": True,
                            "check": True, "encoding": "b64"},
                   path=f"/v1/graphs/{gid}/gradients"))
    assert set(body["gradients"]) == {"x"}
    assert from_b64(body["gradients"]["x"]).tolist() == approx(EX3["gradients"]["x"])
    assert body["check"]["x"]["max_abs_error"] < 1e-7
    assert [r["id"] for r in body["trace"]] == ["q", "q2", "f"]


def test_registered_graph_gradients_refuse_graph_fields(client):
    gid = register(client, {"graph": EX3["graph"]}).get_json()["graph_id"]
    body = problem(post(client, {"values": EX3["values"], "expression": "x"},
                        path=f"/v1/graphs/{gid}/gradients"), 422)
    assert ["expression"] in locs(body)


def test_registered_graph_survives_l1_eviction(make_app):
    """With an L1 of one plan, the graph comes back from the store."""
    app = make_app(l1_size=1)
    client = app.test_client()
    gid = register(client, {"graph": EX3["graph"]}).get_json()["graph_id"]
    for name in ("neuron_sum", "sigmoid_neuron"):
        ok(post(client, lecture_request(name, "graph")))
    body = ok(post(client, {"values": EX3["values"]}, path=f"/v1/graphs/{gid}/gradients"))
    assert_lecture(body, "matmul_square")
    assert client.get(f"/v1/graphs/{gid}").status_code == 200


def test_registered_graph_shared_through_the_store(make_app):
    """Two apps (two workers) sharing one store: registered in one, used from the other."""
    from service.store.memory import MemoryStore

    store = MemoryStore()
    one = make_app(store=store).test_client()
    two = make_app(store=store).test_client()
    gid = register(one, {"graph": EX3["graph"]}).get_json()["graph_id"]
    body = ok(post(two, {"values": EX3["values"]}, path=f"/v1/graphs/{gid}/gradients"))
    assert_lecture(body, "matmul_square")
    assert register(two, {"graph": EX3["graph"]}).status_code == 200


def test_overflowing_literals_never_alias_two_graphs(client):
    """`x * 1e999` and `x * -1e999` are different graphs: if the service accepts them at all
    (docs/api.md §1 says non-finite inputs are 422s), they must not share an id or a cached plan."""
    plus = post(client, {"expression": "x * 1e999", "values": {"x": 2.0}, "encoding": "b64"})
    minus = post(client, {"expression": "x * -1e999", "values": {"x": 2.0}, "encoding": "b64"})
    if plus.status_code == minus.status_code == 422:
        return
    plus, minus = ok(plus), ok(minus)
    assert plus["graph_id"] != minus["graph_id"]
    assert from_b64(plus["output"]) == np.inf
    assert from_b64(minus["output"]) == -np.inf


def test_trace_with_jacobian_is_never_dropped_silently(client):
    """trace + jacobian on a non-scalar output without upstream: either the trace comes back
    (one record per node) or the request is refused naming `upstream`; not a 200 without it."""
    resp = post(client, {"expression": "2 * x", "values": {"x": [1.0, 2.0]}, "jacobian": True,
                         "trace": True})
    if resp.status_code == 422:
        assert ["upstream"] in locs(problem(resp, 422))
        return
    body = ok(resp)
    assert body["jacobians"]["x"] == [[2.0, 0.0], [0.0, 2.0]]
    assert "trace" in body, "trace: true was asked for"
    assert [r["op"] for r in body["trace"]] == ["mul"]
