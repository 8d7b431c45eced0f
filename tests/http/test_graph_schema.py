"""One validator for a graph's JSON (the IR loader); its rules are what OpenAPI publishes."""

from __future__ import annotations

import re
import time

import orjson

from schemas import GRAPH_JSON_SCHEMA
from schemas import graphs as wire
from service.engine import ir
from service.engine.limits import Limits
from tests.lecture import locs, problem


def test_published_schema_states_the_loaders_bounds() -> None:
    assert wire.MAX_ARGS == ir.MAX_ARGS and wire.MAX_OP_LENGTH == ir.MAX_OP_LENGTH
    assert wire.MAX_NDIM == ir.MAX_NDIM
    for name in ["x", "_a.b:c%1-2", "%3", "A" * 128, "c'", "c'4"]:
        assert ir.NAME_RE.match(name) and re.match(wire.NAME_PATTERN, name)
    for name in ["1x", "a b", "", "é"]:
        assert not ir.NAME_RE.match(name) and not re.match(wire.NAME_PATTERN, name)


def test_openapi_shows_the_loaders_schema(client) -> None:
    doc = client.get("/openapi.json").get_json()
    components = doc["components"]["schemas"]
    req = components["GradientRequestGraph"]["properties"]["graph"]
    assert req["$ref"] == "#/components/schemas/GraphSpec"
    # The named components, references resolved, are the loader's own schema.
    spec = dict(components["GraphSpec"])
    spec.pop("title")
    inputs = spec["properties"]["inputs"]["additionalProperties"]["anyOf"]
    assert inputs[0] == {"$ref": "#/components/schemas/GraphInput"}
    inputs[0] = {k: v for k, v in components["GraphInput"].items() if k != "title"}
    nodes = spec["properties"]["nodes"]
    assert nodes["items"] == {"$ref": "#/components/schemas/GraphNode"}
    nodes["items"] = {k: v for k, v in components["GraphNode"].items() if k != "title"}
    assert spec == GRAPH_JSON_SCHEMA


def test_loader_errors_name_the_node_and_field(client) -> None:
    graph = {"inputs": {"x": {}}, "output": "f",
             "nodes": [{"id": "f", "op": "add", "args": ["x"] * 17}]}
    body = problem(client.post("/v1/gradients", json={"graph": graph, "values": {"x": 1}}),
                   422)
    assert ["graph", "nodes", 0, "args"] in locs(body)
    graph["nodes"] = [{"id": "f", "op": "s" * 65, "args": ["x"]}]
    body = problem(client.post("/v1/gradients", json={"graph": graph, "values": {"x": 1}}),
                   422)
    assert ["graph", "nodes", 0, "op"] in locs(body) and "s" * 65 not in body["detail"]


def test_big_graph_refused_before_any_node_is_read(make_app) -> None:
    client = make_app(limits=Limits(max_nodes=1000)).test_client()
    nodes = [{"id": f"n{i}", "op": "neg", "args": ["x"]} for i in range(100_000)]
    body = orjson.dumps({"graph": {"inputs": {"x": {}}, "nodes": nodes, "output": "n0"},
                         "values": {"x": 1}})
    start = time.thread_time()  # this thread's CPU: other load on the machine does not count
    orjson.loads(body)
    parse = time.thread_time() - start
    start = time.thread_time()
    resp = client.post("/v1/gradients", data=body, content_type="application/json")
    elapsed = time.thread_time() - start
    assert "max_nodes" in problem(resp, 413)["detail"].lower()
    # Parsing the JSON is the cost; validating 100,000 nodes one by one (~10 µs each in
    # Pydantic) would add about ten times as much again.
    assert elapsed < 2 * parse + 0.2
