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
