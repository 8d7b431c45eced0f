"""Dynamic batching on a real gunicorn: 16 concurrent clients, one example each, to a
registered graph; every answer equals the unbatched one (the engine run alone, float64),
merged batches show in /metrics, and GRADSERVE_BATCH_MAX_SIZE=1 merges nothing. The client's
per_example / directions keywords against the same server."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import numpy as np
import pytest

from gradserve import Client
from service.engine import REGISTRY, Query, compile_graph, execute, parse_expression
from tests.e2e.server import GunicornServer

pytestmark = pytest.mark.e2e

EXPR = "sum(tanh(W @ x + b))"
RNG = np.random.default_rng(31)
W, B = RNG.standard_normal((32, 16)), RNG.standard_normal(32)
PLAN = compile_graph(parse_expression(EXPR, REGISTRY).graph, REGISTRY)


def _batch_counts(server: GunicornServer) -> tuple[float, float]:
    """(merged executions of 2 or more, all executions) from /metrics."""
    text = server.get("/metrics")[2].decode()
    def value(pattern: str) -> float:
        m = re.search(pattern, text, re.M)
        return float(m.group(1)) if m else 0.0
    ones = value(r'^gradserve_batch_size_bucket\{le="1\.0"\} (\S+)')
    total = value(r"^gradserve_batch_size_count (\S+)")
    return total - ones, total


def _round(server: GunicornServer, gid: str, xs: np.ndarray) -> list[dict[str, Any]]:
    barrier = threading.Barrier(len(xs))
    out: list[Any] = [None] * len(xs)

    def one(i: int) -> None:
        barrier.wait()
        status, _, body = server.post(f"/v1/graphs/{gid}/gradients", {
            "values": {"W": W.tolist(), "b": B.tolist(), "x": xs[i].tolist()},
            "wrt": ["x", "W"]})
        out[i] = (status, json.loads(body))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


@pytest.mark.parametrize("size", ["8", "1"])
def test_concurrent_answers_equal_unbatched_ones(size: str) -> None:
    env = {"GRADSERVE_BATCH_MAX_SIZE": size, "GRADSERVE_BATCH_WINDOW_US": "20000",
           "GRADSERVE_MAX_INFLIGHT": "2", "GRADSERVE_ADMISSION_WAIT_S": "20"}
    with GunicornServer(env, workers=1, threads=16) as server:
        status, _, body = server.post("/v1/graphs", {"expression": EXPR})
        gid = json.loads(body)["graph_id"]
        merged = 0.0
        for _ in range(3):
            xs = RNG.standard_normal((16, 16))
            for i, (status, body) in enumerate(_round(server, gid, xs)):
                assert status == 200, body
                alone = execute(PLAN, {"W": W, "b": B, "x": xs[i]}, Query(wrt=["x", "W"]))
                np.testing.assert_allclose(body["output"], alone.output, rtol=1e-12)
                for n in ("x", "W"):
                    np.testing.assert_allclose(body["gradients"][n], alone.gradients[n],
                                               rtol=1e-10, atol=1e-13)
            merged, total = _batch_counts(server)
            if size == "8" and merged:
                break
        if size == "8":
            assert merged > 0, "no merged batch in three rounds of 16 concurrent requests"
        else:
            assert merged == 0 and total == 0  # off: the batcher is never entered

        with Client(server.url) as client:  # the client's keywords, same server
            xs = RNG.standard_normal((3, 16))
            got = client.gradients(gid, {"W": W, "b": B, "x": xs}, batched=["x"],
                                   per_example=True)
            assert got.gradients["W"].shape == (3, 32, 16)
            one = execute(PLAN, {"W": W, "b": B, "x": xs[1]}, Query())
            np.testing.assert_allclose(got.gradients["W"][1], one.gradients["W"], rtol=1e-10)
            d = client.gradients(gid, {"W": W, "b": B, "x": xs[0]}, wrt=[],
                                 tangents={"x": xs}, directions=3)
            assert np.shape(d.jvp) == (3,)
