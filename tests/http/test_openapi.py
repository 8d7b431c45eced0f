"""The served /openapi.json is a document tools can use: it validates, every route has an
operationId and a tag, every array says what its items are, every request body has examples
and each example is a request the server accepts, and the cross-field rules are in it."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest
from openapi_spec_validator import validate

from tests.conftest import build_app

APP = build_app()
CLIENT = APP.test_client()
DOC = CLIENT.get("/openapi.json").get_json()
OPERATIONS = [(path, method, op) for path, item in DOC["paths"].items()
              for method, op in item.items()]


def _walk(node: Any, where: str = "#"):
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from _walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{where}/{i}")


def test_openapi_spec_validator_passes():
    validate(DOC)


def test_every_operation_has_a_unique_operation_id_and_a_declared_tag():
    ids = [op["operationId"] for _, _, op in OPERATIONS]
    assert len(ids) == len(set(ids)) == len(OPERATIONS) >= 10
    declared = {t["name"] for t in DOC["tags"]}
    for path, method, op in OPERATIONS:
        assert op["tags"] and set(op["tags"]) <= declared, (path, method)


def test_every_array_schema_has_items():
    arrays = [where for where, node in _walk(DOC["components"]) if node.get("type") == "array"]
    assert arrays
    missing = [where for where, node in _walk(DOC["components"])
               if node.get("type") == "array" and "items" not in node and "prefixItems" not in
               node]
    assert not missing


def _schema_for(path: str) -> dict[str, Any]:
    ref = DOC["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    return {**ref, "components": DOC["components"]}


EXAMPLES = [(path, name, ex["value"]) for path, _, op in OPERATIONS if "requestBody" in op
            for name, ex in op["requestBody"]["content"]["application/json"]["examples"].items()]


def test_every_request_body_has_examples():
    posts = [path for path, method, _ in OPERATIONS if method == "post"]
    assert {path for path, _, _ in EXAMPLES} == set(posts)


@pytest.mark.parametrize("path,name,body", EXAMPLES, ids=[f"{p}:{n}" for p, n, _ in EXAMPLES])
def test_every_example_is_schema_valid_and_accepted(path, name, body):
    assert jsonschema_rs.validator_for(_schema_for(path)).is_valid(body)
    if "{graph_id}" in path:
        gid = CLIENT.post("/v1/graphs", json={"expression": "(x + y) * z"}).get_json()
        path = path.replace("{graph_id}", gid["graph_id"])
    if "{name}" in path:  # the OIP example infers on a model named "neuron"
        named = CLIENT.post("/v1/graphs", json={"expression": "(x + y) * z", "name": "neuron"})
        assert named.status_code in (200, 201), named.get_json()
        path = path.replace("{name}", "neuron").replace("{version}", "1")
    resp = CLIENT.post(path, json=body)
    assert resp.status_code in (200, 201), resp.get_json()


@pytest.mark.parametrize("body", [
    {"expression": "x", "graph_id": "g-" + "0" * 64, "values": {"x": 1}},  # two graph fields
    {"values": {"x": 1}},  # none
])
def test_exactly_one_graph_field_is_in_the_schema(body):
    assert not jsonschema_rs.validator_for(_schema_for("/v1/gradients")).is_valid(body)
    assert CLIENT.post("/v1/gradients", json=body).status_code == 422


def test_a_null_graph_field_counts_as_absent_in_both():
    body = {"expression": "x * 2", "graph": None, "values": {"x": 1}}
    assert jsonschema_rs.validator_for(_schema_for("/v1/gradients")).is_valid(body)
    assert CLIENT.post("/v1/gradients", json=body).status_code == 200


MLP = {"layers": [{"weight": [[1.0, 2.0]], "bias": [0.0]}], "inputs": [[1.0, 1.0]]}


@pytest.mark.parametrize("extra,ok", [
    ({"loss": {"type": "mse", "targets": [[1.0]]}}, True),
    ({"upstream": [[1.0]]}, True),
    ({}, False),
    ({"loss": {"type": "mse", "targets": [[1.0]]}, "upstream": [[1.0]]}, False),
    ({"upstream": [[1.0]], "l2": 0.5}, False),  # l2 needs a loss
    ({"loss": {"type": "mse", "targets": [[1.0]]}, "l2": 0.5}, True),
])
def test_mlp_loss_or_upstream_rules_are_in_the_schema(extra, ok):
    body = {**MLP, **extra}
    assert jsonschema_rs.validator_for(_schema_for("/v1/mlp/gradients")).is_valid(body) is ok
    assert (CLIENT.post("/v1/mlp/gradients", json=body).status_code == 200) is ok
