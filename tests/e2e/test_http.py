"""The API over real HTTP: one gunicorn with 2 workers (tests/e2e/server.py).

The lecture's examples, a binary round trip, a 422, /metrics, a registered graph used by id
from both workers (they share the embedded SQLite store in GRADSERVE_DATA_DIR), and bad JSON
that leaves every worker alive.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.e2e.conftest import settle_metrics
from tests.e2e.server import GunicornServer
from tests.lecture import EX3, LECTURE, approx, assert_lecture, lecture_request

pytestmark = pytest.mark.e2e

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def server() -> Iterator[GunicornServer]:
    with GunicornServer(workers=2, threads=2) as srv:
        yield srv
        logs = srv.logs()
    srv.assert_clean_logs(logs)


def post(server: GunicornServer, path: str, body: Any) -> tuple[int, Any, Any]:
    status, headers, raw = server.post(path, body)
    ctype = (headers.get("content-type") or "").split(";")[0]
    assert status < 500 or status == 503, (status, raw[:500])
    if status >= 400:
        assert ctype == PROBLEM, (status, ctype, raw[:300])
    else:
        assert ctype == "application/json", (status, ctype, raw[:300])
    return status, headers, json.loads(raw)


def ok(server: GunicornServer, path: str, body: Any) -> dict[str, Any]:
    status, _, data = post(server, path, body)
    assert status == 200, data
    return data


# --- the lecture ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["expression", "graph"])
@pytest.mark.parametrize("name", list(LECTURE))
def test_lecture_examples_over_http(server, name, form):
    body = ok(server, "/v1/gradients", lecture_request(name, form))
    assert_lecture(body, name)


def test_trace_over_http(server):
    body = ok(server, "/v1/gradients", {"expression": "q = W @ x; f = sum(q ** 2)",
                                        "values": EX3["values"], "trace": True})
    q = body["trace"][0]
    assert q["id"] == "q" and q["value"] == approx([0.22, 0.26])
    assert q["grad"] == approx([0.44, 0.52])


# --- binary tensors ------------------------------------------------------------------------


def to_b64(arr: np.ndarray) -> dict[str, Any]:
    dtype = {np.dtype("float64"): "float64", np.dtype("float32"): "float32"}[arr.dtype]
    return {"shape": list(arr.shape), "dtype": dtype,
            "b64": base64.b64encode(arr.astype(arr.dtype.newbyteorder("<")).tobytes()).decode()}


def from_b64(obj: dict[str, Any]) -> np.ndarray:
    dtype = {"float64": "<f8", "float32": "<f4"}[obj["dtype"]]
    return np.frombuffer(base64.b64decode(obj["b64"]), dtype=dtype).reshape(obj["shape"])


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_b64_round_trip(server, dtype):
    rng = np.random.default_rng(7)
    w = rng.standard_normal((3, 4)).astype(dtype)
    x = rng.standard_normal(4).astype(dtype)
    body = ok(server, "/v1/gradients", {
        "expression": "sum(tanh(W @ x) ** 2)", "values": {"W": to_b64(w), "x": to_b64(x)},
        "dtype": dtype, "encoding": "b64"})
    assert body["output"]["dtype"] == dtype and body["output"]["shape"] == []
    gw, gx = from_b64(body["gradients"]["W"]), from_b64(body["gradients"]["x"])
    assert gw.shape == (3, 4) and gx.shape == (4,)
    assert gw.dtype == np.dtype(dtype)
    # The same numbers by hand, in float64 from the values as sent.
    w64, x64 = w.astype(np.float64), x.astype(np.float64)
    t = np.tanh(w64 @ x64)
    dq = 2 * t * (1 - t ** 2)
    tol = 1e-12 if dtype == "float64" else 1e-5
    assert float(from_b64(body["output"])) == pytest.approx(float(np.sum(t ** 2)), rel=tol)
    np.testing.assert_allclose(gw, np.outer(dq, x64), rtol=tol, atol=tol)
    np.testing.assert_allclose(gx, w64.T @ dq, rtol=tol, atol=tol)


# --- errors --------------------------------------------------------------------------------


def test_422_over_http(server):
    status, _, body = post(server, "/v1/gradients", {"graph": {
        "inputs": {"x": {}}, "nodes": [{"id": "f", "op": "sigmod", "args": ["x"]}],
        "output": "f"}, "values": {"x": 1}})
    assert status == 422
    assert body["status"] == 422 and body["title"] and body["type"]
    assert "node 'f'" in body["detail"] and "did you mean 'sigmoid'" in body["detail"]
    assert body["errors"][0]["loc"] == ["graph", "nodes", 0, "op"]


def test_404_and_405_over_http(server):
    status, headers, raw = server.get("/v1/nope")
    assert status == 404 and headers["content-type"].startswith(PROBLEM)
    status, headers, raw = server.get("/v1/gradients")
    assert status == 405 and "POST" in headers["Allow"]


# --- metrics -------------------------------------------------------------------------------


def sample(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split(" ")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_after_requests(server):
    settle_metrics()  # earlier tests' requests, still in a worker's tally
    status, headers, raw = server.get("/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    before = raw.decode()
    req = {"expression": "x * 11.5 + y", "values": {"x": 1, "y": 2}}
    for _ in range(6):
        ok(server, "/v1/gradients", req)
    post(server, "/v1/gradients", {"expression": "x +"})
    settle_metrics()
    after = server.get("/metrics")[2].decode()
    labels = {"route": "/v1/gradients", "method": "POST"}
    assert sample(after, "gradserve_requests_total", status="200", **labels) - \
        sample(before, "gradserve_requests_total", status="200", **labels) == 6
    assert sample(after, "gradserve_requests_total", status="422", **labels) - \
        sample(before, "gradserve_requests_total", status="422", **labels) == 1
    hits = sample(after, "gradserve_cache_total", result="hit") - \
        sample(before, "gradserve_cache_total", result="hit")
    misses = sample(after, "gradserve_cache_total", result="miss") - \
        sample(before, "gradserve_cache_total", result="miss")
    # Six requests for one graph over two workers: at most one compile per worker.
    assert misses >= 1 and hits >= 4 and hits + misses >= 6
    assert "gradserve_request_duration_seconds_bucket" in after


def test_readyz_over_http(server):
    status, _, raw = server.get("/readyz")
    body = json.loads(raw)
    assert status == 200 and body["status"] == "ready" and body["store"] == "ok"
    assert body["store_backend"] == "sqlite"


# --- a registered graph from every worker --------------------------------------------------


def by_id_counts(server: GunicornServer) -> dict[int, float]:
    """Requests to the by-id route per worker pid, from the Prometheus multiprocess files."""
    from prometheus_client import multiprocess

    counts: dict[int, float] = {}
    assert server.tmpdir is not None
    settle_metrics()
    for path in Path(server.tmpdir, "metrics").glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for metric in multiprocess.MultiProcessCollector.merge([str(path)]):
            for s in metric.samples:
                if s.name == "gradserve_requests_total" and \
                        s.labels.get("route") == "/v1/graphs/<graph_id>/gradients":
                    counts[pid] = counts.get(pid, 0) + s.value
    return counts


def test_registered_graph_used_by_id_from_every_worker(server):
    graph = {**LECTURE["sigmoid_neuron"]["graph"]}
    # A graph no other test registers (an extra unused input), so the first POST is a 201.
    graph["inputs"] = {**graph["inputs"], "unused_e2e": {}}
    status, headers, body = post(server, "/v1/graphs", {"graph": graph})
    assert status == 201, body
    gid = body["graph_id"]
    assert headers["Location"] == f"/v1/graphs/{gid}"
    values = {**LECTURE["sigmoid_neuron"]["values"], "unused_e2e": 0.0}

    def compute(_: int) -> dict[str, Any]:
        return ok(server, f"/v1/graphs/{gid}/gradients", {"values": values})

    answers: list[dict[str, Any]] = []
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _round in range(5):  # 40 requests, more only if one worker took them all
            answers += list(pool.map(compute, range(40)))
            if len([n for n in by_id_counts(server).values() if n > 0]) >= 2:
                break
    assert len(answers) >= 40
    for body in answers:
        assert body["graph_id"] == gid
        assert body["gradients"].pop("unused_e2e") == 0.0
        assert_lecture(body, "sigmoid_neuron")
    served = {pid: n for pid, n in by_id_counts(server).items() if n > 0}
    assert len(served) >= 2, f"only one worker served the graph: {served}"
    # Registering again anywhere is a 200 with the same id.
    for _ in range(4):
        status, _, again = post(server, "/v1/graphs", {"graph": graph})
        assert status == 200 and again["graph_id"] == gid
    status, _, raw = server.get(f"/v1/graphs/{gid}")
    assert status == 200 and json.loads(raw)["graph_id"] == gid


# --- bad requests leave the workers alone --------------------------------------------------

BAD_JSON = [b"{bad", b"", b'{"expression": "x"', b"\xff\xfe\x00", b"[" * 5000,
            b'{"a": 1} {"b": 2}', b"nul", b"{'single': 'quotes'}"]


def test_bad_json_does_not_kill_a_worker(server):
    pids = server.worker_pids()
    assert len(pids) == 2

    def send(i: int) -> tuple[int, str, bytes]:
        status, headers, raw = server.post("/v1/gradients", BAD_JSON[i % len(BAD_JSON)])
        return status, headers.get("content-type", ""), raw

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(send, range(120)))
    for status, ctype, raw in results:
        assert status == 400, raw[:300]
        assert ctype.startswith(PROBLEM)
        assert json.loads(raw)["status"] == 400
    assert server.worker_pids() == pids
    for name in LECTURE:
        assert_lecture(ok(server, "/v1/gradients", lecture_request(name, "graph")), name)
    assert server.worker_pids() == pids
    assert "Traceback" not in server.logs()
