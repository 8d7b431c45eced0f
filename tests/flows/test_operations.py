"""Operational endpoints (docs/api.md §8), the op listing (§3) and request ids."""

from __future__ import annotations

import json
import re

import pytest

from service.engine import REGISTRY
from service.http.state import AppState
from service.store.memory import MemoryStore
from tests.lecture import lecture_request, problem

# --- /healthz and /readyz ------------------------------------------------------------------


class DegradedStore(MemoryStore):
    """A store that answers no ping (as Redis down behind a breaker would)."""

    name = "degraded"

    def ping(self) -> bool:
        return False

    def get(self, graph_id):
        raise AssertionError("health checks must not read the store")


def test_healthz(client):
    resp = client.get("/healthz")
    assert resp.status_code == 200
    assert resp.get_data(as_text=True).strip() == "ok"


def test_healthz_touches_nothing_else(make_app):
    client = make_app(store=DegradedStore()).test_client()
    assert client.get("/healthz").status_code == 200


def test_readyz_ready_and_store_ok(client):
    resp = client.get("/readyz")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "ready"
    assert body["store"] == "ok"
    assert body["store_backend"] == "memory"


def test_readyz_with_store_down_is_still_200_degraded(make_app):
    client = make_app(store=DegradedStore()).test_client()
    resp = client.get("/readyz")
    assert resp.status_code == 200
    body = resp.get_json()
    assert body["status"] == "ready" and body["store"] == "degraded"
    # And the process still computes.
    assert client.post("/v1/gradients",
                       json=lecture_request("neuron_sum", "expression")).status_code == 200


@pytest.mark.parametrize("status", ["starting", "draining"])
def test_readyz_503_while_starting_or_draining(app, status):
    st: AppState = app.extensions["gradserve"]
    st.lifecycle["status"] = status
    resp = app.test_client().get("/readyz")
    assert resp.status_code == 503
    assert resp.get_json()["status"] == status
    assert app.test_client().get("/healthz").status_code == 200


# --- /metrics ------------------------------------------------------------------------------

SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?P<labels>\{[^}]*\})? (?P<value>\S+)")


def metric_samples(client) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    assert resp.mimetype == "text/plain"
    out = {}
    for line in resp.get_data(as_text=True).splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE.match(line)
        assert m, f"not Prometheus text: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m["labels"] or ""))
        out[(m["name"], labels)] = float(m["value"])
    return out


def value(samples, name, **labels) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_metrics_prometheus_text_counts_requests_and_cache(client):
    before = metric_samples(client)
    req = {"expression": "x * 3.5 - y", "values": {"x": 1, "y": 2}}
    assert client.post("/v1/gradients", json=req).get_json()["cache"] == "miss"
    assert client.post("/v1/gradients", json=req).get_json()["cache"] == "hit"
    problem(client.post("/v1/gradients", json={"expression": "x +"}), 422)
    after = metric_samples(client)
    ok = dict(route="/v1/gradients", method="POST", status="200")
    bad = dict(route="/v1/gradients", method="POST", status="422")
    assert value(after, "gradserve_requests_total", **ok) - \
        value(before, "gradserve_requests_total", **ok) == 2
    assert value(after, "gradserve_requests_total", **bad) - \
        value(before, "gradserve_requests_total", **bad) == 1
    assert value(after, "gradserve_cache_total", level="l1", result="hit") - \
        value(before, "gradserve_cache_total", level="l1", result="hit") >= 1
    assert value(after, "gradserve_cache_total", level="l1", result="miss") - \
        value(before, "gradserve_cache_total", level="l1", result="miss") >= 1
    assert value(after, "gradserve_request_duration_seconds_count", route="/v1/gradients") - \
        value(before, "gradserve_request_duration_seconds_count", route="/v1/gradients") == 3


def test_metrics_label_unmatched_paths_as_one_route(client):
    """Unknown paths must not create one time series each (label cardinality)."""
    for i in range(3):
        problem(client.get(f"/no/such/path/{i}"), 404)
    text = client.get("/metrics").get_data(as_text=True)
    assert "/no/such/path" not in text


def test_metrics_count_limits(make_app):
    from service.engine.limits import Limits

    client = make_app(limits=Limits(max_nodes=2)).test_client()
    before = value(metric_samples(client), "gradserve_limit_exceeded_total", limit="max_nodes")
    problem(client.post("/v1/gradients", json={"expression": "x+x+x+x", "values": {"x": 1}}),
            413)
    after = value(metric_samples(client), "gradserve_limit_exceeded_total", limit="max_nodes")
    assert after - before == 1


# --- /openapi.json -------------------------------------------------------------------------

API_ROUTES = {
    ("/v1/gradients", "post"), ("/v1/graphs", "post"), ("/v1/graphs/{graph_id}", "get"),
    ("/v1/graphs/{graph_id}/gradients", "post"), ("/v1/mlp/gradients", "post"),
    ("/v1/ops", "get"), ("/healthz", "get"), ("/readyz", "get"), ("/metrics", "get"),
    ("/openapi.json", "get"),
}


def test_openapi_document(client):
    resp = client.get("/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    doc = resp.get_json()
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] and doc["info"]["version"]
    documented = {(path, method) for path, item in doc["paths"].items() for method in item}
    assert API_ROUTES <= documented, API_ROUTES - documented
    for path, method in API_ROUTES:
        op = doc["paths"][path][method]
        assert "200" in op["responses"] or "201" in op["responses"]
    assert "201" in doc["paths"]["/v1/graphs"]["post"]["responses"]
    for path in ("/v1/gradients", "/v1/graphs", "/v1/graphs/{graph_id}/gradients"):
        responses = doc["paths"][path]["post"]["responses"]
        for code in ("400", "413", "415", "422"):
            assert "application/problem+json" in responses[code]["content"], (path, code)


def test_openapi_refs_resolve(client):
    doc = client.get("/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    text = str(doc)
    for ref in set(re.findall(r"#/components/schemas/([A-Za-z0-9_.-]+)", text)):
        assert ref in schemas, f"dangling $ref {ref}"


def test_every_served_route_is_documented_and_vice_versa(app):
    doc = app.test_client().get("/openapi.json").get_json()
    documented = {(p, m) for p, item in doc["paths"].items() for m in item}
    served = set()
    for rule in app.url_map.iter_rules():
        # The playground page is not part of the API (its routes are pinned in
        # tests/http/test_surface.py).
        if rule.endpoint == "static" or rule.endpoint.startswith("playground."):
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            served.add((path, method.lower()))
    assert served == documented, {"undocumented": served - documented,
                                  "not served": documented - served}


# --- /v1/ops -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ops():
    from tests.conftest import build_app

    resp = build_app().test_client().get("/v1/ops")
    assert resp.status_code == 200
    return {op["name"]: op for op in resp.get_json()["ops"]}


def test_the_listing_is_the_registry_in_order(ops):
    """Every public op, in registration order; no internal op (they build backward graphs
    only)."""
    assert list(ops) == REGISTRY.names()
    assert not set(ops) & {op.name for op in REGISTRY.internal_ops()}


@pytest.mark.parametrize("name", REGISTRY.names())
def test_every_registered_op_is_listed(ops, name):
    op, record = ops[name], REGISTRY.get(name)
    assert op == json.loads(json.dumps(record.describe()))
    assert op["arity"] == record.arity
    assert isinstance(op["gradient"], str) and len(op["gradient"]) > 5
    assert "\n" not in op["gradient"]
    for a in op["attrs"]:
        assert {"name", "kind", "default", "doc"} <= set(a)
    assert len(op["args"]) == op["arity"]
    assert op["category"] in ("elementwise", "linalg", "reduction", "shape", "nn")


def test_op_attr_defaults(ops):
    assert {a["name"]: a["default"] for a in ops["hinge"]["attrs"]}["margin"] == 1
    assert {a["name"]: a["default"] for a in ops["sum"]["attrs"]} == {"axis": None,
                                                                       "keepdims": False}


def test_label_args_are_not_differentiable(ops):
    for name in ("softmax_cross_entropy", "hinge"):
        kinds = [a["differentiable"] for a in ops[name]["args"]]
        assert kinds == [True, False], name
    assert all(a["differentiable"] for a in ops["mse"]["args"])


X22 = [[0.3, 0.7], [1.1, 0.5]]
Y22 = [[0.9, 0.2], [0.4, 1.3]]
ATTRS_FOR = {"reshape": {"shape": [4]}, "clip": {"min": 0.4, "max": 1.0}}
# The neural-net ops (ops/cnn.py) take NCHW tensors and per-channel parameters: their own
# arguments (name → value) and attrs.
NCHW = [[X22]]
P2, Q2 = [0.9, 0.2], [0.1, -0.2]
REQUESTS_FOR = {
    "conv2d": ({"x": [[X22 + Y22[:1]]], "w": [[Y22]], "b": [0.1]}, {"padding": [0, 1]}),
    "max_pool2d": ({"x": NCHW}, {"kernel_size": 2, "stride": 1, "padding": 1}),
    "avg_pool2d": ({"x": NCHW}, {"kernel_size": 2, "stride": 1, "padding": 1}),
    "global_avg_pool2d": ({"x": NCHW}, {}),
    "batch_norm": ({"x": X22, "s": P2, "b": Q2, "m": [0.4, 1.3], "v": [0.5, 1.1]}, {}),
    "batch_norm_train": ({"x": X22, "s": P2, "b": Q2}, {}),
    "layer_norm": ({"x": X22, "s": P2, "b": Q2}, {}),
}


def test_every_listed_op_runs_and_its_gradient_checks(ops):
    """The listing is the registry: every op in it computes and matches central differences."""
    from tests.conftest import build_app

    client = build_app().test_client()
    for name, op in ops.items():
        kinds = [a["kind"] for a in op["args"]]
        args = ["x", "y", "z"][:op["arity"]]
        values = {"x": X22, "y": Y22, "z": [0.1, -0.2]}
        inputs = {"x": {}, "y": {}, "z": {}}
        for arg, kind in zip(args, kinds):
            if kind == "label":  # class labels, or where's 0/1 condition
                values[arg] = [0, 1]
        if name == "linear":
            values = {"x": X22, "y": Y22, "z": [0.1, -0.2]}
        values = {k: values[k] for k in args}
        inputs = {k: inputs[k] for k in args}
        attrs = ATTRS_FOR.get(name, {})
        if name in REQUESTS_FOR:
            values, attrs = REQUESTS_FOR[name]
            args, inputs = list(values), {k: {} for k in values}
        graph = {"inputs": inputs, "nodes": [
            {"id": "o", "op": name, "args": args, "attrs": attrs},
            {"id": "f", "op": "sum", "args": ["o"]}], "output": "f"}
        resp = client.post("/v1/gradients", json={"graph": graph, "values": values,
                                                  "check": True})
        assert resp.status_code == 200, (name, resp.get_data(as_text=True)[:300])
        body = resp.get_json()
        for arg, report in body["check"].items():
            assert report["max_abs_error"] < 1e-6, (name, arg, report)


# --- X-Request-ID --------------------------------------------------------------------------


def test_request_id_echoed(client):
    resp = client.post("/v1/gradients", json=lecture_request("neuron_sum", "expression"),
                       headers={"X-Request-ID": "abc-123.XYZ:9"})
    assert resp.headers["X-Request-ID"] == "abc-123.XYZ:9"


def test_request_id_generated_and_unique(client):
    ids = {client.get("/healthz").headers["X-Request-ID"] for _ in range(5)}
    assert len(ids) == 5
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)


@pytest.mark.parametrize("given", ["", "a" * 129, "bad id", "x\ty", "<script>", "a/b",
                                   "ünïcode"])
def test_unsafe_request_id_replaced(client, given):
    resp = client.get("/healthz", headers={"X-Request-ID": given})
    got = resp.headers["X-Request-ID"]
    assert got != given and re.fullmatch(r"[0-9a-f]{32}", got)


@pytest.mark.parametrize("path,method,status", [
    ("/nope", "GET", 404), ("/v1/gradients", "GET", 405), ("/v1/gradients", "POST", 415),
])
def test_request_id_on_errors(client, path, method, status):
    resp = client.open(path, method=method, headers={"X-Request-ID": "err-1"})
    problem(resp, status)
    assert resp.headers["X-Request-ID"] == "err-1"


def test_request_id_on_401(make_app):
    client = make_app(api_keys=("k",)).test_client()
    resp = client.get("/v1/ops", headers={"X-Request-ID": "auth-1"})
    problem(resp, 401)
    assert resp.headers["X-Request-ID"] == "auth-1"
