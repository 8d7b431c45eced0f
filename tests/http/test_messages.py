"""Error messages a user can act on: the allowed fields and the likely intended one for an
unknown field, no Pydantic prefixes, a ``loc`` that always points at something, and the
(out, in) hint for an MLP weight sent as (in, out)."""

from __future__ import annotations

import pytest

PROBLEM = "application/problem+json"


@pytest.mark.parametrize("path,body,loc,intended", [
    ("/v1/gradients", {"expression": "x", "values": {"x": 1}, "wrtt": ["x"]}, ["wrtt"], "wrt"),
    ("/v1/gradients", {"graph": {"nodes": [{"id": "f", "op": "neg", "arg": ["x"]}],
                                 "output": "f", "inputs": {"x": {}}}, "values": {"x": 1}},
     ["graph", "nodes", 0, "arg"], "args"),
    ("/v1/mlp/gradients", {"layers": [{"weight": [[1.0]], "bias": [0.0], "activaton": "relu"}],
                           "inputs": [1.0], "upstream": [1.0]},
     ["layers", 0, "activaton"], "activation"),
    ("/v1/gradients", {"expression": "x", "values": {"x": {"shape": [1], "datum": [1]}}},
     ["values", "x", "flat", "datum"], "data"),
])
def test_unknown_field_names_the_allowed_ones_and_the_likely_one(client, path, body, loc,
                                                                 intended):
    r = client.post(path, json=body)
    assert r.status_code == 422 and r.mimetype == PROBLEM
    item = next(e for e in r.json["errors"] if e["loc"] == loc)
    assert f"did you mean '{intended}'?" in item["msg"], item
    assert "allowed:" in item["msg"] and "Extra inputs" not in item["msg"]


@pytest.mark.parametrize("path,body,loc", [
    ("/v1/gradients", {"values": {}}, ["graph"]),
    ("/v1/gradients", {"expression": "x", "graph_id": "g-" + "0" * 64}, ["graph_id"]),
    ("/v1/graphs", {}, ["graph"]),
    ("/v1/graphs", {"expression": "x", "graph": {"nodes": [], "output": "x"}}, ["expression"]),
    ("/v1/mlp/gradients", {"layers": [{"weight": [[1.0]], "bias": [0.0]}], "inputs": [1.0]},
     ["loss"]),
    ("/v1/gradients", [1, 2], ["body"]),
])
def test_cross_field_errors_point_at_a_field_without_pydantic_prefixes(client, path, body, loc):
    r = client.post(path, json=body)
    assert r.status_code == 422, r.json
    assert r.json["errors"][0]["loc"] == loc, r.json
    assert "Value error" not in r.json["detail"]
    assert all(e["loc"] for e in r.json["errors"])


def test_transposed_mlp_weight_gets_the_out_in_hint(client):
    # A 2 -> 3 layer whose weight came as (in, out) = (2, 3) with its right (3,) bias.
    body = {"layers": [{"weight": [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], "bias": [0.0, 0.0, 0.0]}],
            "inputs": [[1.0, 1.0]], "upstream": [[1.0, 1.0, 1.0]]}
    r = client.post("/v1/mlp/gradients", json=body)
    assert r.status_code == 422
    assert "(out, in)" in r.json["detail"] and "torch.nn.Linear" in r.json["detail"]
    # A later layer that comes transposed is blamed on its weight, with the shape to send.
    body = {"layers": [{"weight": [[1.0, 2.0]] * 3, "bias": [0.0] * 3},
                       {"weight": [[1.0]] * 3, "bias": [0.0]}],
            "inputs": [[1.0, 1.0]], "upstream": [[1.0]]}
    r = client.post("/v1/mlp/gradients", json=body)
    assert r.status_code == 422 and r.json["errors"][0]["loc"] == ["layers", 1, "weight"]
    assert "looks transposed" in r.json["detail"] and "(1, 3)" in r.json["detail"]


def test_b64_one_rule_every_tensor_binary_numbers_stay_numbers(client):
    """With encoding b64 every tensor is a binary object, 0-d ones included; the MLP loss
    and check errors are numbers, not tensors, and stay JSON numbers (docs/api.md §1)."""
    r = client.post("/v1/gradients", json={"expression": "sum(x ** 2)", "values": {"x": [1, 2]},
                                           "check": True, "encoding": "b64"})
    assert r.status_code == 200
    assert r.json["output"]["shape"] == [] and set(r.json["output"]) == {"shape", "dtype", "b64"}
    assert isinstance(r.json["check"]["x"]["max_abs_error"], float)
    body = {"layers": [{"weight": [[1.0, 2.0]], "bias": [0.0]}], "inputs": [[1.0, 1.0]],
            "loss": {"type": "mse", "targets": [[1.0]]}, "encoding": "b64"}
    r = client.post("/v1/mlp/gradients", json=body)
    assert r.status_code == 200
    assert isinstance(r.json["loss"], float) and r.json["loss"] == 4.0
    assert set(r.json["output"]) == {"shape", "dtype", "b64"}
    assert set(r.json["gradients"]["layers"][0]["bias"]) == {"shape", "dtype", "b64"}


# --- did-you-mean by meaning, not only by spelling -----------------------------------------

X = {"x": 0.5, "y": 2.0}


@pytest.mark.parametrize("path,body,field,intended", [
    ("/v1/gradients", {"expression": "x * y", "inputs": X}, "inputs", "values"),
    ("/v1/gradients", {"expression": "x * y", "input": X}, "input", "values"),
    ("/v1/gradients", {"expression": "x * y", "Inputs": X}, "Inputs", "values"),
    ("/v1/gradients", {"expression": "x * y", "data": X}, "data", "values"),
    ("/v1/gradients", {"expr": "x * y", "values": X}, "expr", "expression"),
    ("/v1/gradients", {"formula": "x * y", "values": X}, "formula", "expression"),
    ("/v1/gradients", {"expression": "x * y", "values": X, "grad": ["x"]}, "grad", "wrt"),
    ("/v1/gradients", {"expression": "x * y", "values": X, "gradient": ["x"]}, "gradient",
     "wrt"),
    ("/v1/gradients", {"expression": "x * y", "values": X, "with_respect_to": ["x"]},
     "with_respect_to", "wrt"),
    ("/v1/gradients", {"expression": "x * y", "values": X, "grad_outputs": 1.0},
     "grad_outputs", "upstream"),
    ("/v1/gradients", {"expression": "x * y", "values": X, "format": "b64"}, "format",
     "encoding"),
    ("/v1/gradients", {"expression": "x * y", "values": X, "precision": "float32"},
     "precision", "dtype"),
    ("/v1/graphs/g-" + "0" * 64 + "/gradients", {"inputs": X}, "inputs", "values"),
    ("/v1/graphs", {"formula": "x * y"}, "formula", "expression"),
    ("/v1/graphs", {"expression": "x * y", "model_name": "m"}, "model_name", "name"),
    ("/v1/mlp/gradients", {"layers": [{"weight": [[1.0]], "bias": [0.0]}], "values": [1.0],
                           "upstream": [1.0]}, "values", "inputs"),
    ("/v1/mlp/gradients", {"layers": [{"weight": [[1.0]], "bias": [0.0], "act": "relu"}],
                           "inputs": [1.0], "upstream": [1.0]}, "act", "activation"),
])
def test_unknown_field_meaning_a_field_names_it(client, path, body, field, intended):
    r = client.post(path, json=body)
    assert r.status_code == 422 and r.mimetype == PROBLEM, r.json
    item = next(e for e in r.json["errors"] if e["loc"][-1] == field)
    assert f"did you mean '{intended}'?" in item["msg"], item
    assert "allowed:" in item["msg"]


def test_a_missing_field_says_which_unknown_one_to_rename(client):
    r = client.post("/v1/mlp/gradients", json={
        "layers": [{"weight": [[1.0]], "bias": [0.0]}], "values": [1.0], "upstream": [1.0]})
    assert "inputs: Field required (the body has 'values' instead: rename it)" in \
        r.json["detail"]


def test_oip_inputs_on_v1_explains_the_two_forms(client):
    r = client.post("/v1/gradients", json={"expression": "x", "inputs": [
        {"name": "x", "shape": [], "datatype": "FP64", "data": [1.0]}]})
    assert "Open Inference Protocol" in r.json["detail"] and "/v2/models/" in r.json["detail"]


def test_no_meaning_hint_where_the_field_meant_is_not_allowed(client):
    # 'targets' means the MLP loss's targets; /v1/graphs has no loss: spelling only.
    r = client.post("/v1/graphs", json={"expression": "x", "targets": [1]})
    msg = r.json["errors"][0]["msg"]
    assert "did you mean 'loss'" not in msg and "allowed: graph, expression, onnx, name" in msg


# --- non-finite numbers name their place --------------------------------------------------


@pytest.mark.parametrize("raw,where,loc", [
    (b'{"expression": "sum(x)", "values": {"x": [1, NaN]}}', "values.x[1]",
     ["values", "x", 1]),
    (b'{"expression": "x", "values": {"x": Infinity}}', "values.x", ["values", "x"]),
    (b'{"expression": "sum(x)", "values": {"x": [[1, 2], [3, -Infinity]]}}',
     "values.x[1][1]", ["values", "x", 1, 1]),
    (b'{"expression": "x", "values": {"x": 1e999}}', "values.x", ["values", "x"]),
    (b'{"expression": "x", "values": {"x": -1e999}}', "values.x", ["values", "x"]),
    (b'{"expression": "x", "values": {"x": ' + b"9" * 5000 + b"}}", "values.x",
     ["values", "x"]),
    (b'{"expression": "sum(x)", "values": {"x": {"shape": [2], "data": [1, NaN]}}}',
     "values.x.data[1]", ["values", "x", "data", 1]),
    (b'{"expression": "x * 2", "values": {"x": [1]}, "upstream": [NaN]}', "upstream[0]",
     ["upstream", 0]),
    (b'{"graph": {"inputs": {"x": {}}, "nodes": [{"id": "f", "op": "mul", "args": ["x", NaN]}'
     b'], "output": "f"}, "values": {"x": 1}}', "graph.nodes[0].args[1]",
     ["graph", "nodes", 0, "args", 1]),
    (b'{"expression": "x", "values": {"x": 1, "y": "NaN", "z": [1, 2, NaN]}}', "values.z[2]",
     ["values", "z", 2]),
])
def test_non_finite_number_names_its_path(client, raw, where, loc):
    for path in ("/v1/gradients", "/v1/graphs"):  # the body is parsed before it is validated
        r = client.post(path, data=raw, content_type="application/json")
        assert r.status_code == 422 and r.mimetype == PROBLEM
        assert r.json["detail"].startswith(f"{where}: "), r.json["detail"]
        assert "not allowed in requests" in r.json["detail"]
        assert r.json["errors"][0]["loc"] == loc


def test_non_finite_in_a_huge_body_is_found_in_bounded_time(make_app):
    import time

    client = make_app(max_body_bytes=64 << 20).test_client()
    n = 1_000_000
    raw = (b'{"expression": "sum(x)", "values": {"x": [' + b"0.5," * n + b'NaN]}}')
    start = time.perf_counter()
    r = client.post("/v1/gradients", data=raw, content_type="application/json")
    took = time.perf_counter() - start
    assert r.status_code == 422
    assert r.json["detail"].startswith(f"values.x[{n}]: NaN is not a number")
    assert took < 10


def test_locating_gives_up_past_its_budget_with_a_plain_422(monkeypatch):
    from service.errors import Unprocessable
    from service.http import body

    monkeypatch.setattr(body, "LOCATE_BUDGET_S", -1.0)
    raw = b'{"x": [' + b"[1]," * 40000 + b"NaN]}"
    with pytest.raises(Unprocessable) as info:
        body.parse_json(raw)
    assert "non-finite numbers" in info.value.detail


# --- unknown routes and wrong methods -------------------------------------------------------

GID = "g-" + "a" * 64


@pytest.mark.parametrize("method,path,meant", [
    ("POST", "/v1/gradient", "POST /v1/gradients"),
    ("POST", "/v1/Gradients", "POST /v1/gradients"),
    ("GET", "/v1/graph", "GET /v1/graphs"),
    ("DELETE", "/v1/graph/" + GID, f"DELETE /v1/graphs/{GID}"),
    ("POST", "/v1/mlp/gradient", "POST /v1/mlp/gradients"),
    ("POST", f"/v1/graphs/{GID}/gradient", f"POST /v1/graphs/{GID}/gradients"),
    ("GET", "/v1/op", "GET /v1/ops"),
    ("GET", "/healthzz", "GET /healthz"),
])
def test_unknown_route_names_the_nearest(client, method, path, meant):
    r = client.open(path, method=method, json={})
    assert r.status_code == 404 and r.mimetype == PROBLEM
    assert f"did you mean {meant}?" in r.json["detail"], r.json["detail"]
    assert "GET /openapi.json" in r.json["detail"]


def test_unknown_route_far_from_any_says_where_the_routes_are(client):
    r = client.get("/nothing/like/it")
    assert r.status_code == 404 and "did you mean" not in r.json["detail"]
    assert r.json["detail"].startswith("no route GET /nothing/like/it")


def test_a_huge_unknown_path_is_cut(client):
    r = client.get("/v1/" + "a" * 5000)
    assert r.status_code == 404 and len(r.json["detail"]) < 400


@pytest.mark.parametrize("method,path,allowed", [
    ("GET", "/v1/gradients", ["POST"]),
    ("PUT", "/v1/graphs", ["GET", "POST"]),
    ("PATCH", f"/v1/graphs/{GID}", ["DELETE", "GET"]),
    ("DELETE", "/v1/ops", ["GET"]),
])
def test_405_lists_the_allowed_methods(client, method, path, allowed):
    r = client.open(path, method=method, json={})
    assert r.status_code == 405 and r.mimetype == PROBLEM
    assert set(allowed) <= set(r.headers["Allow"].split(", "))
    assert r.json["detail"] == f"{method} is not allowed on {path}; allowed: " \
        + ", ".join(allowed)
