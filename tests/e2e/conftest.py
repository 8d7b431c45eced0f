"""Fixtures and helpers of the end-to-end tests: a real gunicorn (tests/e2e/server.py) and,
where marked ``redis``, a private redis-server (tests/redis_server.py).

Every request goes through :class:`Client`, which fails the test at once on a 5xx other
than 503 (docs/api.md §7: any other one is a bug), and on any 503 unless the test allows it.
The expected numbers are plain-Python arithmetic, not the engine's.
"""

from __future__ import annotations

import http.client
import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.message import Message
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.server import GunicornServer
from tests.lecture import EX2
from tests.redis_server import RedisServer, redis_server, redis_server_factory  # noqa: F401

PROBLEM = "application/problem+json"

# --- the lecture's sigmoid neuron (docs/api.md §4) ---------------------------------------------

_S = 2 * -1 + -3 * -2 + -3  # w0*x0 + w1*x1 + w2 = 1
_F = 1 / (1 + math.exp(-_S))
_D = _F * (1 - _F)  # sigmoid'(s)
SIGMOID_EXPRESSION = "1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))"
SIGMOID_GRAPH = EX2["graph"]  # the lecture's neuron gate by gate, as the HTTP tests use it
SIGMOID_VALUES = {"w0": 2, "x0": -1, "w1": -3, "x1": -2, "w2": -3}
SIGMOID_OUTPUT = 0.7310585786300049
SIGMOID_GRADIENTS = {"w0": -_D, "x0": 2 * _D, "w1": -2 * _D, "x1": -3 * _D, "w2": _D}
assert SIGMOID_OUTPUT == _F


def assert_sigmoid(body: dict[str, Any]) -> None:
    """``body`` is the lecture's sigmoid answer (float64, to a few ulps)."""
    assert body["output"] == pytest.approx(SIGMOID_OUTPUT, rel=1e-12, abs=0), body
    assert set(body["gradients"]) == set(SIGMOID_GRADIENTS), body
    for name, want in SIGMOID_GRADIENTS.items():
        assert body["gradients"][name] == pytest.approx(want, rel=1e-12, abs=0), (name, body)


def product_graph(k: float) -> dict[str, Any]:
    """``k * x * y`` as a graph spec: a fresh graph (and id) for every ``k``."""
    return {
        "inputs": {"x": {}, "y": {}},
        "nodes": [{"id": "p", "op": "mul", "args": ["x", "y"]},
                  {"id": "f", "op": "mul", "args": [k, "p"]}],
        "output": "f",
    }


def assert_product(body: dict[str, Any], k: float, x: float = 3.0, y: float = -2.0) -> None:
    """``body`` is the answer of ``product_graph(k)`` at ``x``, ``y``."""
    assert body["output"] == pytest.approx(k * x * y, rel=1e-12), body
    assert body["gradients"]["x"] == pytest.approx(k * y, rel=1e-12), body
    assert body["gradients"]["y"] == pytest.approx(k * x, rel=1e-12), body


# --- HTTP ----------------------------------------------------------------------------------------


@dataclass
class Reply:
    """One response, with the client-side latency of its request."""

    method: str
    path: str
    status: int
    headers: Message
    raw: bytes
    latency: float

    @property
    def content_type(self) -> str:
        return (self.headers.get("content-type") or "").split(";")[0].strip()

    @property
    def json(self) -> Any:
        return json.loads(self.raw)

    def __repr__(self) -> str:
        return (f"<{self.method} {self.path[:90]} -> {self.status} in "
                f"{self.latency * 1000:.1f} ms: {self.raw[:300]!r}>")


@dataclass
class Client:
    """Requests to one server, every reply kept in ``replies`` and checked as it arrives.

    ``allow_503`` is for the store-fault tests; a 5xx other than 503 always fails.
    """

    server: GunicornServer
    allow_503: bool = False
    replies: list[Reply] = field(default_factory=list)

    def request(self, method: str, path: str, body: Any = None, timeout: float = 10.0
                ) -> Reply:
        start = time.perf_counter()
        if method == "POST":
            status, headers, raw = self.server.post(path, body, timeout=timeout)
        else:
            status, headers, raw = self.server.request(method, path, timeout=timeout)
        reply = Reply(method, path, status, headers, raw, time.perf_counter() - start)
        self.replies.append(reply)
        check_status(reply, self.allow_503)
        return reply

    def get(self, path: str, timeout: float = 10.0) -> Reply:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: Any, timeout: float = 10.0) -> Reply:
        return self.request("POST", path, body, timeout=timeout)

    def ok(self, path: str, body: Any = None) -> dict[str, Any]:
        """POST ``body`` (GET when None), expecting a 200 JSON answer."""
        reply = self.get(path) if body is None else self.post(path, body)
        assert reply.status == 200, reply
        assert reply.content_type == "application/json", reply
        return reply.json


def check_status(reply: Reply, allow_503: bool) -> None:
    assert reply.status < 500 or (allow_503 and reply.status == 503), reply
    if reply.status >= 400:
        assert reply.content_type == PROBLEM, reply
        assert reply.json["status"] == reply.status, reply


class KeepAlive:
    """One persistent connection: gunicorn's gthread worker that accepted it serves every
    request on it, so a sequence on one connection sees one worker's L1 cache."""

    def __init__(self, server: GunicornServer, timeout: float = 10.0) -> None:
        self.conn = http.client.HTTPConnection(server.host, server.port, timeout=timeout)
        self.replies: list[Reply] = []

    def post(self, path: str, body: Any) -> Reply:
        start = time.perf_counter()
        self.conn.request("POST", path, body=json.dumps(body).encode(),
                          headers={"Content-Type": "application/json"})
        resp = self.conn.getresponse()
        raw = resp.read()
        reply = Reply("POST", path, resp.status, resp.headers, raw, time.perf_counter() - start)
        assert resp.getheader("Connection", "").lower() != "close", reply
        self.replies.append(reply)
        check_status(reply, allow_503=False)
        return reply

    def close(self) -> None:
        self.conn.close()


# --- servers -------------------------------------------------------------------------------------


def assert_clean_logs(server: GunicornServer) -> None:
    """No unhandled exception and no worker that died or was killed for a timeout."""
    logs = server.logs()
    for needle in ("unhandled error", "Traceback", "WORKER TIMEOUT", "Worker exiting",
                   "was sent SIGKILL"):
        assert needle not in logs, f"{needle!r} in the server's logs:\n{logs[-4000:]}"


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A private redis-server for every test of one module (stopped at its end)."""
    server = RedisServer(workdir=tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.close()


def settle_metrics() -> None:
    """Wait until every worker has folded its request tally into the metric files (each does
    so every ``FLUSH_INTERVAL_S``; a scrape shows its own worker's at once)."""
    from service.runtime.metrics import FLUSH_INTERVAL_S

    time.sleep(2 * FLUSH_INTERVAL_S + 0.1)


def worker_request_counts(server: GunicornServer, route: str) -> dict[int, float]:
    """Requests to ``route`` per worker pid, from each worker's Prometheus multiprocess file
    (the service has no worker header; /metrics sums the workers)."""
    from prometheus_client import multiprocess

    assert server.tmpdir is not None
    settle_metrics()
    counts: dict[int, float] = {}
    for path in Path(server.tmpdir, "metrics").glob("counter_*.db"):
        pid = int(path.stem.rsplit("_", 1)[1])
        for metric in multiprocess.MultiProcessCollector.merge([str(path)]):
            for sample in metric.samples:
                if (sample.name == "gradserve_requests_total"
                        and sample.labels.get("route") == route):
                    counts[pid] = counts.get(pid, 0) + sample.value
    return counts


def metric_value(client: Client, name: str, **labels: str) -> float:
    """The sum of ``name``'s samples with ``labels`` in the server's /metrics text."""
    reply = client.get("/metrics")
    assert reply.status == 200, reply
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(reply.raw.decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v
                                           for k, v in labels.items()):
                total += sample.value
    return total
