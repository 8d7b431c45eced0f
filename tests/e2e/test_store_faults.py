"""Redis faults under a real gunicorn: stopped, hung (SIGSTOP) and holding tampered data.

One worker (so which L1 answers is known), GRADSERVE_STORE_TIMEOUT_MS=100 and
GRADSERVE_BREAKER_COOLDOWN_S=0.5. What must hold (docs/api.md §5, §7, §8):

- inline graphs never need the store; a registered id already in the worker's L1 neither;
- an id the worker must fetch is a 503 with Retry-After while the store is down, a 404
  once the store answers without it; never a 500;
- /readyz stays 200 and reports the store "degraded", then "ok" again without any help;
- a hung server costs one store timeout per breaker cooldown, not one per request;
- a stored entry is data to check, never to trust: anything that is not the graph its key
  names is a 404 and is dropped, and registering the graph again heals it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis

from service.engine import REGISTRY, compile_graph, graph_from_dict
from service.store.redis import KEY_PREFIX
from tests.e2e.conftest import (
    PROBLEM,
    SIGMOID_EXPRESSION,
    SIGMOID_GRAPH,
    SIGMOID_VALUES,
    Client,
    Reply,
    assert_clean_logs,
    assert_product,
    assert_sigmoid,
    metric_value,
    product_graph,
)
from tests.e2e.server import GunicornServer
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

TIMEOUT_S = 0.1
COOLDOWN_S = 0.5
XY = {"x": 3.0, "y": -2.0}

_counter = iter(range(1, 1_000_000))


def fresh_k() -> float:
    """A constant no other graph of this run used: a graph (and id) of its own."""
    return next(_counter) + (time.time_ns() % 1_000_000) / 1e7


@pytest.fixture(scope="module")
def server(module_redis: RedisServer) -> Iterator[GunicornServer]:
    env = {
        "GRADSERVE_REDIS_URL": module_redis.url,
        "GRADSERVE_STORE_TIMEOUT_MS": str(int(TIMEOUT_S * 1000)),
        "GRADSERVE_BREAKER_COOLDOWN_S": str(COOLDOWN_S),
    }
    with GunicornServer(env, workers=1, threads=2) as srv:
        yield srv
        assert_clean_logs(srv)


@pytest.fixture
def client(server: GunicornServer, module_redis: RedisServer) -> Iterator[Client]:
    """A client of a server whose Redis is up and whose breaker is closed."""
    module_redis.start()  # no-op when running
    module_redis.resume()
    c = Client(server, allow_503=True)
    wait_for_store(c, "ok", COOLDOWN_S + 5)
    yield c
    module_redis.resume()  # never leave it stopped or hung for the next test
    module_redis.start()


@pytest.fixture
def raw(module_redis: RedisServer) -> Iterator[redis.Redis]:
    """A plain redis-py client on the same server: the other replica, or the attacker."""
    client = redis.Redis.from_url(module_redis.url, socket_timeout=5)
    yield client
    client.close()


def wait_for_store(client: Client, want: str, within_s: float) -> float:
    """Poll /readyz (200 throughout) until the store is ``want``; returns the wait."""
    start = time.monotonic()
    for _ in range(1000):
        reply = client.get("/readyz")
        assert reply.status == 200, reply
        if reply.json["store"] == want:
            return time.monotonic() - start
        assert time.monotonic() - start < within_s, f"store not {want!r} in {within_s}s"
        time.sleep(0.02)
    raise AssertionError("unreachable")


def compiled(spec: dict[str, Any]) -> tuple[str, bytes]:
    """(graph id, canonical JSON) as any replica would compute and store them."""
    plan = compile_graph(graph_from_dict(spec), REGISTRY)
    return plan.graph_id, plan.canonical_json


def seed(raw: redis.Redis, spec: dict[str, Any]) -> str:
    """Store ``spec`` as another replica's registration would; this worker's L1 lacks it."""
    graph_id, blob = compiled(spec)
    raw.set(KEY_PREFIX + graph_id, blob)
    return graph_id


def by_id(client: Client, graph_id: str, values: dict[str, Any] = XY) -> Reply:
    return client.post(f"/v1/graphs/{graph_id}/gradients", {"values": values})


def assert_unavailable(reply: Reply) -> None:
    assert reply.status == 503, reply
    assert reply.content_type == PROBLEM, reply
    assert int(reply.headers["Retry-After"]) >= 1, reply


def assert_not_found(reply: Reply) -> None:
    assert reply.status == 404, reply
    assert reply.content_type == PROBLEM, reply


def assert_inline_graphs_work(client: Client) -> None:
    """Expression, graph spec and a never-seen graph: all computed without the store."""
    assert_sigmoid(client.ok("/v1/gradients", {"expression": SIGMOID_EXPRESSION,
                                                "values": SIGMOID_VALUES}))
    assert_sigmoid(client.ok("/v1/gradients", {"graph": SIGMOID_GRAPH,
                                                "values": SIGMOID_VALUES}))
    k = fresh_k()
    body = client.ok("/v1/gradients", {"graph": product_graph(k), "values": XY})
    assert body["cache"] == "miss"
    assert_product(body, k)


# --- Redis stopped, then started again ----------------------------------------------------------


def test_redis_stopped_then_back(client: Client, module_redis: RedisServer,
                                 raw: redis.Redis) -> None:
    k_l1, k_cold, k_new = fresh_k(), fresh_k(), fresh_k()
    reply = client.post("/v1/graphs", {"graph": product_graph(k_l1)})
    assert reply.status == 201, reply
    l1_id = reply.json["graph_id"]
    cold_id = seed(raw, product_graph(k_cold))

    module_redis.stop()
    for _ in range(3):
        assert_inline_graphs_work(client)
        body = by_id(client, l1_id).json
        assert body["cache"] == "hit"
        assert_product(body, k_l1)
        assert client.ok(f"/v1/graphs/{l1_id}")["graph_id"] == l1_id
        assert_unavailable(by_id(client, cold_id))
        assert_unavailable(client.get(f"/v1/graphs/{cold_id}"))
    # Registering needs the store: 503, not a silent success.
    assert_unavailable(client.post("/v1/graphs", {"graph": product_graph(k_new)}))
    ready = client.ok("/readyz")
    assert ready["status"] == "ready" and ready["store"] == "degraded", ready
    assert metric_value(client, "gradserve_store_breaker_open") == 1

    module_redis.start()  # the same port, empty (no persistence)
    cold_id_again = seed(raw, product_graph(k_cold))
    assert cold_id_again == cold_id
    # Requests alone close the breaker again: no readiness probe, no restart.
    start = time.monotonic()
    for _ in range(500):
        reply = by_id(client, cold_id)
        if reply.status != 503:
            break
        assert time.monotonic() - start < COOLDOWN_S + 3, "no recovery"
        time.sleep(0.02)
    recovered_s = time.monotonic() - start
    assert reply.status == 200, reply
    assert reply.json["cache"] == "hit"
    assert_product(reply.json, k_cold)
    assert recovered_s < COOLDOWN_S + 3
    assert client.ok("/readyz")["store"] == "ok"
    assert metric_value(client, "gradserve_store_breaker_open") == 0

    # The restarted Redis lost the registration of l1_id: still served from L1, and
    # registering it again stores it again (201).
    assert by_id(client, l1_id).json["cache"] == "hit"
    reply = client.post("/v1/graphs", {"graph": product_graph(k_l1)})
    assert reply.status == 201 and reply.json["graph_id"] == l1_id, reply
    assert raw.exists(KEY_PREFIX + l1_id)
    reply = client.post("/v1/graphs", {"graph": product_graph(k_new)})
    assert reply.status == 201, reply


# --- Redis hung (SIGSTOP): the breaker bounds the cost ------------------------------------------


def test_redis_hung_costs_one_timeout_per_cooldown(client: Client, module_redis: RedisServer,
                                                    raw: redis.Redis) -> None:
    k_l1 = fresh_k()
    l1_id = client.post("/v1/graphs", {"graph": product_graph(k_l1)}).json["graph_id"]
    ks = [fresh_k() for _ in range(60)]
    cold = [seed(raw, product_graph(k)) for k in ks]

    denied: list[Reply] = []
    with module_redis.paused_server():
        started = time.monotonic()
        for i in range(300):  # bounded by count and by time; spans a few cooldowns
            reply = by_id(client, cold[i % len(cold)])
            assert_unavailable(reply)
            denied.append(reply)
            if i % 10 == 9:
                # Meanwhile, what needs no store is served, and served fast.
                for other in (by_id(client, l1_id),
                              client.post("/v1/gradients", {"expression": SIGMOID_EXPRESSION,
                                                            "values": SIGMOID_VALUES})):
                    assert other.status == 200, other
                    assert other.latency < 0.5, other
            if time.monotonic() - started > 3 * COOLDOWN_S:
                break
            time.sleep(0.01)
        elapsed = time.monotonic() - started
        ready = client.get("/readyz")
        assert ready.status == 200 and ready.json["store"] == "degraded", ready
        assert ready.latency < 1.0, ready

    latencies = [r.latency for r in denied]
    summary = [round(t * 1000) for t in latencies]
    # The first request met a closed breaker: it waited for one store timeout, not more.
    assert TIMEOUT_S * 0.8 <= latencies[0] < 1.0, summary
    assert max(latencies) < 1.0, summary
    # The breaker then answered at once; only a trial per cooldown may wait again.
    slow = [t for t in latencies if t >= TIMEOUT_S * 0.8]
    # (Without a breaker every one would be slow; the margin is for a loaded machine.)
    assert len(slow) <= elapsed / COOLDOWN_S + 3 and len(slow) <= len(latencies) / 2, summary
    assert all(t < 0.2 for t in latencies[1:6]), summary  # right after opening: no I/O
    assert sorted(latencies)[len(latencies) // 2] < 0.05, summary
    assert len(denied) >= 10, summary
    print(f"hung redis: {len(denied)} requests in {elapsed:.2f} s, ms: {summary}")

    # Resumed: the next trial closes the breaker, and the data is still there.
    wait_for_store(client, "ok", COOLDOWN_S + 3)
    for k, graph_id in list(zip(ks, cold, strict=True))[:5]:
        body = by_id(client, graph_id).json
        assert body["cache"] == "hit"
        assert_product(body, k)


# --- Redis holding something else under a valid key ----------------------------------------------


def _deeply_nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


def _tampered(kind: str, spec: dict[str, Any], k: float) -> bytes | None:
    canonical = orjson.loads(compiled(spec)[1])
    if kind == "random-bytes":
        return os.urandom(512)
    if kind == "other-graph":  # the same inputs, so its answer would come out plausible
        return compiled(product_graph(k + 1))[1]
    if kind == "other-graph-same-node-ids":
        changed = json.loads(json.dumps(canonical).replace(repr(k), repr(k * 2)))
        assert changed != canonical
        return orjson.dumps(changed)
    if kind == "unknown-op":
        canonical["nodes"][0]["op"] = "evil_op"
        return orjson.dumps(canonical)
    if kind == "not-a-graph":
        return b'[1, 2, {"nodes": null}]'
    if kind == "nested-past-json-depth":
        return b"[" * 200_000 + b"]" * 200_000
    if kind == "nested-attrs":  # JSON deep enough to hurt a recursive walk
        inner = _deeply_nested(1000)
        canonical["nodes"][0]["attrs"] = "@@"
        return orjson.dumps(canonical).replace(b'"@@"', inner)
    if kind == "over-node-limit":  # a valid chain, bigger than GRADSERVE_MAX_NODES allows
        nodes = [{"id": f"n{i}", "op": "neg", "args": [f"n{i - 1}" if i else "x"]}
                 for i in range(20_001)]
        return orjson.dumps({"inputs": {"x": {}}, "nodes": nodes, "output": "n20000"})
    if kind == "not-a-string":
        return None  # a Redis list under the key
    raise AssertionError(kind)


TAMPER_KINDS = ["random-bytes", "other-graph", "other-graph-same-node-ids", "unknown-op",
                "not-a-graph", "nested-past-json-depth", "nested-attrs", "over-node-limit",
                "not-a-string"]


@pytest.mark.parametrize("kind", TAMPER_KINDS)
def test_tampered_entry_is_404_dropped_and_healed(client: Client, raw: redis.Redis,
                                                 kind: str) -> None:
    k = fresh_k()
    spec = product_graph(k)
    graph_id, _ = compiled(spec)
    key = KEY_PREFIX + graph_id
    corrupt_before = metric_value(client, "gradserve_cache_total", level="store",
                                  result="corrupt")
    for probe in ("POST", "GET"):
        blob = _tampered(kind, spec, k)
        raw.delete(key)
        if blob is None:
            raw.rpush(key, b"x", b"y")
        else:
            raw.set(key, blob)
        if probe == "POST":
            reply = by_id(client, graph_id)
        else:
            reply = client.get(f"/v1/graphs/{graph_id}")
        assert_not_found(reply)  # not 500, not 503, never the tampered graph's answer
        assert not raw.exists(key), f"{kind}: the corrupt entry was kept"
    corrupt = metric_value(client, "gradserve_cache_total", level="store", result="corrupt")
    assert corrupt >= corrupt_before + 2

    reply = client.post("/v1/graphs", {"graph": spec})
    assert reply.status == 201 and reply.json["graph_id"] == graph_id, reply
    assert orjson.loads(raw.get(key)) == orjson.loads(compiled(spec)[1])
    body = by_id(client, graph_id).json
    assert body["graph_id"] == graph_id
    assert_product(body, k)
    assert client.post("/v1/graphs", {"graph": spec}).status == 200


@pytest.mark.parametrize("kind", ["random-bytes", "other-graph-same-node-ids", "unknown-op",
                                  "not-a-string"])
def test_registering_over_a_tampered_entry_replaces_it(client: Client, raw: redis.Redis,
                                                       kind: str) -> None:
    """No read first: "already known" (200) would leave the garbage for every other worker
    and replica to 404 on; the registration must store the graph (201)."""
    k = fresh_k()
    spec = product_graph(k)
    graph_id, blob = compiled(spec)
    key = KEY_PREFIX + graph_id
    tampered = _tampered(kind, spec, k)
    if tampered is None:
        raw.rpush(key, b"x")
    else:
        raw.set(key, tampered)
    reply = client.post("/v1/graphs", {"graph": spec})
    assert reply.status == 201 and reply.json["graph_id"] == graph_id, reply
    assert raw.get(key) == blob  # what any other worker now loads
    assert_product(by_id(client, graph_id).json, k)


def test_equivalent_json_under_its_own_key_is_dropped_and_healed(client: Client,
                                                                 raw: redis.Redis) -> None:
    """Stored bytes are the canonical JSON, so their SHA-256 must be the id: the same graph
    written with other whitespace or key order is not what this service wrote, and is
    treated as corrupt (404, dropped) before any of it is parsed; re-registering heals it."""
    k = fresh_k()
    graph_id, blob = compiled(product_graph(k))
    doc = orjson.loads(blob)
    doc["nodes"].reverse()
    equivalent = json.dumps(dict(reversed(list(doc.items()))), indent=2).encode()
    raw.set(KEY_PREFIX + graph_id, equivalent)
    assert_not_found(by_id(client, graph_id))
    assert raw.get(KEY_PREFIX + graph_id) is None
    reply = client.post("/v1/graphs", {"graph": product_graph(k)})
    assert reply.status == 201, reply
    assert raw.get(KEY_PREFIX + graph_id) == blob
    assert_product(by_id(client, graph_id).json, k)

