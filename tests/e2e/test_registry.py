"""The graph registry and the compiled-graph cache through a real gunicorn (docs/api.md §4, §5).

- Two workers, no Redis: a graph registered through one worker is served by id by both
  (the embedded SQLite store in GRADSERVE_DATA_DIR is shared by the workers of one host).
- Two instances sharing one Redis see each other's registrations.
- An inline graph is a cache "miss" the first time a worker sees it, then a "hit".
"""

from __future__ import annotations

import copy
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.e2e.conftest import (
    SIGMOID_EXPRESSION,
    SIGMOID_GRAPH,
    SIGMOID_VALUES,
    Client,
    KeepAlive,
    assert_clean_logs,
    assert_product,
    assert_sigmoid,
    metric_value,
    product_graph,
    worker_request_counts,
)
from tests.e2e.server import GunicornServer
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

BY_ID_ROUTE = "/v1/graphs/<graph_id>/gradients"


@pytest.fixture(scope="module")
def sqlite_server() -> Iterator[GunicornServer]:
    """Two workers, no GRADSERVE_REDIS_URL: the SQLite store in the server's data dir."""
    with GunicornServer(workers=2, threads=2) as server:
        yield server
        assert_clean_logs(server)


def register(client: Client | KeepAlive, body: dict, want_status: int) -> str:
    reply = client.post("/v1/graphs", body)
    assert reply.status == want_status, reply
    graph_id = reply.json["graph_id"]
    assert reply.headers["Location"] == f"/v1/graphs/{graph_id}", reply
    return graph_id


def test_register_once_then_served_by_id_from_every_worker(
        sqlite_server: GunicornServer) -> None:
    client = Client(sqlite_server)
    assert client.ok("/readyz")["store_backend"] == "sqlite"
    # Read before registering: a worker may load the graph from the store as soon as it is
    # registered (a recycled worker warms its L1 from the store's newest graphs).
    store_hits_before = metric_value(client, "gradserve_cache_total",
                                     level="store", result="hit")
    # Every registration through one connection, so one worker: the other one's L1 has
    # never seen the graph and must load it from the store.
    one_worker = KeepAlive(sqlite_server)
    try:
        graph_id = register(one_worker, {"expression": SIGMOID_EXPRESSION}, 201)
        assert register(one_worker, {"expression": SIGMOID_EXPRESSION}, 200) == graph_id
        # The same graph as a spec, its nodes and keys in another order: same id, known.
        shuffled = copy.deepcopy(SIGMOID_GRAPH)
        shuffled["nodes"].reverse()
        reply = one_worker.post("/v1/graphs", {"graph": shuffled})
        assert reply.status in (200, 201), reply  # 200 if it is the expression's graph
        assert register(one_worker, {"graph": SIGMOID_GRAPH}, 200) == reply.json["graph_id"]
    finally:
        one_worker.close()

    path = f"/v1/graphs/{graph_id}/gradients"

    def compute(_: int) -> None:
        body = client.ok(path, {"values": SIGMOID_VALUES})
        assert body["graph_id"] == graph_id
        assert body["cache"] == "hit"  # from L1, or from the store on a cold worker
        assert_sigmoid(body)

    # Fresh connections from 4 threads; gunicorn's workers race for each accept. More
    # rounds (bounded) only if one worker happened to win every one of them.
    deadline, sent = time.monotonic() + 20, 0
    with ThreadPoolExecutor(4) as pool:
        while True:
            list(pool.map(compute, range(sent, sent + 48)))
            sent += 48
            counts = worker_request_counts(sqlite_server, BY_ID_ROUTE)
            if len(counts) >= 2 or sent >= 240 or time.monotonic() > deadline:
                break
    assert sum(counts.values()) == sent, counts
    assert len(counts) >= 2, f"one worker answered all {sent} requests: {counts}"
    assert set(counts) <= set(sqlite_server.worker_pids()), counts
    # A worker that did not register it loaded it from the shared store (on a request, or
    # when it warmed its L1 after a recycle).
    store_hits = metric_value(client, "gradserve_cache_total", level="store", result="hit")
    assert store_hits >= store_hits_before + 1

    spec = client.ok(f"/v1/graphs/{graph_id}")
    assert spec["graph_id"] == graph_id
    assert set(spec) == {"graph_id", "inputs", "output", "nodes"}
    assert set(spec["inputs"]) == set(SIGMOID_VALUES)
    ops = sorted(node["op"] for node in spec["nodes"])
    assert ops == sorted(node["op"] for node in SIGMOID_GRAPH["nodes"])
    # The canonical spec is a graph spec: registering it gives the same id again.
    canonical = {k: v for k, v in spec.items() if k != "graph_id"}
    assert register(client, {"graph": canonical}, 200) == graph_id
    # GET answers the same canonical spec whichever worker serves it.
    for _ in range(6):
        assert client.ok(f"/v1/graphs/{graph_id}") == spec
    assert len(client.replies) >= 40


def test_unknown_id_is_404_on_every_worker(sqlite_server: GunicornServer) -> None:
    client = Client(sqlite_server)
    unknown = "g-" + "0" * 64
    for _ in range(4):
        reply = client.post(f"/v1/graphs/{unknown}/gradients", {"values": {}})
        assert reply.status == 404, reply
        assert client.get(f"/v1/graphs/{unknown}").status == 404


@pytest.mark.parametrize("form", ["expression", "graph"])
def test_inline_graph_is_a_miss_then_a_hit(sqlite_server: GunicornServer, form: str) -> None:
    # A keep-alive connection stays on one worker, so its L1 is the one being watched.
    k = 1.0 + time.time_ns() % 1_000_000 / 7  # a graph no earlier run compiled
    if form == "expression":
        first = {"expression": f"{k!r} * (x * y)", "values": {"x": 3.0, "y": -2.0}}
        again = {"expression": f"{k!r}*(x*y)", "values": {"x": 3.0, "y": -2.0}}
    else:
        first = {"graph": product_graph(k), "values": {"x": 3.0, "y": -2.0}}
        reordered = product_graph(k)
        reordered["nodes"].reverse()
        again = {"values": {"x": 3.0, "y": -2.0}, "graph": reordered}
    conn = KeepAlive(sqlite_server)
    try:
        results = []
        for body in (first, first, first, again, first):
            reply = conn.post("/v1/gradients", body)
            assert reply.status == 200, reply
            assert_product(reply.json, k)
            results.append(reply.json["cache"])
    finally:
        conn.close()
    # Written another way (whitespace, node order), the graph is still the same plan.
    assert results == ["miss", "hit", "hit", "hit", "hit"], results
    assert len({r.json["graph_id"] for r in conn.replies}) == 1


@pytest.mark.redis
def test_two_instances_sharing_one_redis_see_each_others_graphs(
        module_redis: RedisServer) -> None:
    env = {"GRADSERVE_REDIS_URL": module_redis.url}
    with GunicornServer(env, workers=1) as a, GunicornServer(env, workers=1) as b:
        ca, cb = Client(a), Client(b)
        assert ca.ok("/readyz")["store_backend"] == "redis"
        assert cb.ok("/readyz")["store"] == "ok"

        graph_id = register(ca, {"expression": SIGMOID_EXPRESSION}, 201)
        body = cb.ok(f"/v1/graphs/{graph_id}/gradients", {"values": SIGMOID_VALUES})
        assert body["graph_id"] == graph_id and body["cache"] == "hit"
        assert_sigmoid(body)
        assert metric_value(cb, "gradserve_cache_total", level="store", result="hit") >= 1
        assert register(cb, {"expression": SIGMOID_EXPRESSION}, 200) == graph_id
        assert cb.ok(f"/v1/graphs/{graph_id}") == ca.ok(f"/v1/graphs/{graph_id}")

        # And the other way round, first asked for by GET.
        k = 1.0 + time.time_ns() % 1_000_000 / 7
        other_id = register(cb, {"graph": product_graph(k)}, 201)
        assert ca.ok(f"/v1/graphs/{other_id}")["graph_id"] == other_id
        body = ca.ok(f"/v1/graphs/{other_id}/gradients", {"values": {"x": 3.0, "y": -2.0}})
        assert body["cache"] == "hit"
        assert_product(body, k)
        assert_clean_logs(a)
        assert_clean_logs(b)


@pytest.mark.parametrize("path", ["/v1/gradients", "/v1/graphs"])
def test_graph_nested_deeper_than_the_alias_key_can_write_is_a_422(
        sqlite_server: GunicornServer, path: str) -> None:
    """orjson writes 255 levels at most and reads 1024: the L1 alias key of such a graph
    was a 500 (TypeError: Recursion limit reached); it is the same 422 as any bad attr."""
    client = Client(sqlite_server)
    for depth in (300, 1000):
        axis = '{"a":' * depth + "1" + "}" * depth
        graph = ('{"inputs": {"x": {}}, "output": "f", "nodes": [{"id": "f", "op": "sum", '
                 f'"args": ["x"], "attrs": {{"axis": {axis}}}}}]}}')
        body = f'{{"graph": {graph}, "values": {{"x": [1, 2]}}}}' if path == "/v1/gradients" \
            else f'{{"graph": {graph}}}'
        reply = client.post(path, body)
        assert reply.status == 422, reply
        assert "'f'" in reply.json["detail"], reply
