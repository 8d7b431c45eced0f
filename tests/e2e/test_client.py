"""gradserve.client against a real gunicorn: NumPy in and out, b64 for large arrays, typed
errors, re-registration after a 404, and retries that honour a 503's Retry-After.

The expected numbers are NumPy written out by hand here, not the engine.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from gradserve.client import Client
from gradserve.errors import ConnectionFailed, NotFound, ServiceUnavailable, Unprocessable
from tests.e2e.conftest import SIGMOID_EXPRESSION, SIGMOID_GRADIENTS, SIGMOID_OUTPUT
from tests.e2e.server import GunicornServer, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server():
    with GunicornServer(workers=1, threads=2) as srv:
        yield srv


@pytest.fixture
def client(server):
    with Client(server.url, timeout=10) as c:
        yield c


def test_grad_of_an_expression_is_the_lecture_neuron(client):
    r = client.grad(SIGMOID_EXPRESSION, w0=2.0, x0=-1.0, w1=-3.0, x1=-2.0, w2=-3.0)
    assert r.output == pytest.approx(SIGMOID_OUTPUT, rel=1e-12)
    assert set(r.gradients) == set(SIGMOID_GRADIENTS)
    for name, want in SIGMOID_GRADIENTS.items():
        assert r.gradients[name] == pytest.approx(want, rel=1e-12)
    assert isinstance(r.output, np.float64) and r.graph_id.startswith("g-")


def test_gradients_of_a_graph_spec_with_arrays_jacobian_and_trace(client):
    W = np.array([[0.1, 0.5], [-0.3, 0.8]])
    x = np.array([0.2, 0.4])
    spec = {"inputs": {"W": {"shape": [2, 2]}, "x": {"shape": [2]}},
            "nodes": [{"id": "q", "op": "matmul", "args": ["W", "x"]},
                      {"id": "f", "op": "sum", "args": ["q2"]},
                      {"id": "q2", "op": "square", "args": ["q"]}],
            "output": "f"}
    r = client.gradients(spec, {"W": W, "x": x}, trace=True)
    q = W @ x
    assert r.output == pytest.approx(float(q @ q))
    np.testing.assert_allclose(r.gradients["W"], np.outer(2 * q, x))
    np.testing.assert_allclose(r.gradients["x"], W.T @ (2 * q))
    trace = {rec["id"]: rec for rec in r.trace}
    np.testing.assert_allclose(trace["q"]["value"], q)
    np.testing.assert_allclose(trace["q"]["grad"], 2 * q)

    j = client.gradients("W @ x", {"W": W, "x": x}, jacobian=True, wrt=["x"])
    np.testing.assert_allclose(j.jacobians["x"], W)


def test_large_arrays_travel_as_b64_both_ways(server):
    x = np.linspace(-1, 1, 64, dtype=np.float32)
    with Client(server.url, b64_threshold=16) as c:
        r = c.gradients("sum(x ** 2)", {"x": x}, dtype="float32")
    assert r.raw["gradients"]["x"].keys() == {"shape", "dtype", "b64"}
    assert r.gradients["x"].dtype == np.float32 and r.gradients["x"].shape == (64,)
    np.testing.assert_allclose(r.gradients["x"], 2 * x, rtol=1e-6)
    # The same rule for a 0-d output: a binary object too.
    assert r.raw["output"]["shape"] == []
    assert r.output == pytest.approx(float(np.sum(x.astype(np.float64) ** 2)), rel=1e-5)


def test_register_get_and_gradients_by_id(client):
    gid = client.register("(x + y) * z")
    assert client.register({"expression": "(x+y)*z"}) == gid  # content hash
    assert client.graph(gid)["graph_id"] == gid
    r = client.gradients(gid, {"x": -2, "y": 5, "z": -4})
    assert (r.output, r.gradients["x"], r.gradients["y"], r.gradients["z"]) == (-12, -4, -4, 3)


def test_mlp_gradients_match_numpy(client):
    rng = np.random.default_rng(0)
    W1, b1 = rng.normal(size=(3, 2)), rng.normal(size=3)
    W2, b2 = rng.normal(size=(2, 3)), rng.normal(size=2)
    x, t = rng.normal(size=(4, 2)), rng.normal(size=(4, 2))
    r = client.mlp_gradients([(W1, b1, "relu"), {"weight": W2, "bias": b2}], x,
                             loss=("mse", t), wrt=["weights", "inputs"])
    h = np.maximum(x @ W1.T + b1, 0)
    y = h @ W2.T + b2
    dy = 2 * (y - t) / y.size
    dh = (dy @ W2) * (h > 0)
    np.testing.assert_allclose(r.output, y)
    assert r.loss == pytest.approx(float(np.mean((y - t) ** 2)))
    np.testing.assert_allclose(r.layers[1]["weight"], dy.T @ h)
    np.testing.assert_allclose(r.layers[1]["bias"], dy.sum(0))
    np.testing.assert_allclose(r.layers[0]["weight"], dh.T @ x)
    np.testing.assert_allclose(r.inputs, dh @ W1)


def test_ops_lists_the_registry(client):
    names = {op["name"] for op in client.ops()}
    assert {"add", "matmul", "softmax_cross_entropy", "hinge", "mse"} <= names


def test_errors_are_typed_problems(client):
    with pytest.raises(Unprocessable) as info:
        client.gradients("x * y", {"x": 1.0, "y": 2.0}, wrtt=["x"])
    err = info.value
    assert err.status == 422 and err.title == "Unprocessable Content"
    assert err.locs == [["wrtt"]] and "did you mean 'wrt'" in err.detail

    with pytest.raises(NotFound) as info:  # an id this client never registered: no retry
        client.gradients("g-" + "0" * 64, {"x": 1.0})
    assert info.value.status == 404 and info.value.locs == [["graph_id"]]


def test_a_404_for_a_graph_it_registered_is_answered_by_registering_again(server):
    """Two servers with separate stores stand for a replica (or a store) that never saw the
    graph: the client registers it there and gets the same id."""
    with Client(server.url) as c, GunicornServer(workers=1, threads=1) as other:
        gid = c.register("sum(x * w)")
        c.url = other.url
        r = c.gradients(gid, {"x": [1.0, 2.0], "w": [3.0, -1.0]})
        assert r.graph_id == gid and r.output == 1.0
        np.testing.assert_allclose(r.gradients["x"], [3.0, -1.0])
        statuses = [(rec["route"], rec["status"]) for rec in _access_log(other)
                    if rec["route"].startswith("/v1/")]
    assert statuses == [("/v1/graphs/<graph_id>/gradients", 404), ("/v1/graphs", 201),
                        ("/v1/graphs/<graph_id>/gradients", 200)]


def test_503_is_retried_after_retry_after_then_raised(tmp_path):
    """A Redis that is not there: registering needs the store, so the server answers 503
    with Retry-After: 1. Two retries wait about a second each."""
    env = {"GRADSERVE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
           "GRADSERVE_STORE_RETRY_AFTER_S": "1", "GRADSERVE_STORE_TIMEOUT_MS": "100"}
    with GunicornServer(env, workers=1, threads=1) as srv:
        with Client(srv.url, retries=2, backoff=0.01) as c:
            start = time.monotonic()
            with pytest.raises(ServiceUnavailable) as info:
                c.register("x * y + 1")
            elapsed = time.monotonic() - start
        posts = [r for r in _access_log(srv) if r["route"] == "/v1/graphs"]
    assert info.value.retry_after == 1 and info.value.status == 503
    assert [r["status"] for r in posts] == [503, 503, 503]
    assert elapsed >= 1.9, elapsed


def test_connection_failures_are_retried_then_raised():
    with Client(f"http://127.0.0.1:{free_port()}", retries=2, backoff=0.01) as c:
        with pytest.raises(ConnectionFailed):
            c.ops()


def _access_log(server: GunicornServer) -> list[dict]:
    records = []
    for line in server.logs("stdout").splitlines():
        if line.startswith("{") and '"route"' in line:
            records.append(json.loads(line))
    return records


def test_request_bodies_convert_arrays_and_pass_newer_fields_through():
    """No server needed: how arrays and the docs/api.md §4.1 fields are put on the wire."""
    c = Client("http://127.0.0.1:1", b64_threshold=4)
    body = c._options({"x": np.arange(3.0), "W": np.ones((2, 2), dtype=np.float32)},
                      wrt=["x"], upstream=None, jacobian=False, trace=False, check=False,
                      dtype=None, encoding=None,
                      extra={"tangents": {"x": np.array([1.0, 0.0, 0.0])},
                             "hvp": {"x": [0.0, 1.0, 0.0]}, "hessian": True})
    assert body["values"]["x"] == [0.0, 1.0, 2.0]
    assert body["values"]["W"]["dtype"] == "float32" and body["values"]["W"]["shape"] == [2, 2]
    assert body["tangents"] == {"x": [1.0, 0.0, 0.0]} and body["hvp"] == {"x": [0.0, 1.0, 0.0]}
    assert body["hessian"] is True and body["wrt"] == ["x"]
    assert body["encoding"] == "b64"  # W went as binary, so the answer comes back so too
    small = c._options({"x": 1.0}, wrt=None, upstream=None, jacobian=False, trace=False,
                       check=False, dtype=None, encoding=None, extra={})
    assert small == {"values": {"x": 1.0}, "encoding": "json"}
