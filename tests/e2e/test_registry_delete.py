"""GET /v1/graphs and DELETE /v1/graphs/{id} through real gunicorns: two instances (two
workers each) sharing one Redis. A graph deleted through one is a 404 on every worker of the
other once its L1 copy is past REVALIDATE_S, its name is free, and it can come back."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from service.store.cache import REVALIDATE_S
from tests.e2e.conftest import Client, assert_clean_logs
from tests.e2e.server import GunicornServer
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

EXPR = "f = sin(x) * y"
VALUES = {"values": {"x": 0.5, "y": 2.0}}


@pytest.fixture(scope="module")
def pair(module_redis: RedisServer) -> Iterator[tuple[GunicornServer, GunicornServer]]:
    env = {"GRADSERVE_REDIS_URL": module_redis.url, "GRADSERVE_LOG_LEVEL": "warning"}
    with GunicornServer(env, workers=2) as one, GunicornServer(env, workers=2) as two:
        yield one, two
        assert_clean_logs(one)
        assert_clean_logs(two)


def statuses(client: Client, method: str, path: str, body=None, n: int = 12) -> set[int]:
    """Statuses of ``n`` requests, each on a fresh connection (so both workers answer)."""
    return {client.request(method, path, body).status for _ in range(n)}


def test_delete_is_seen_by_every_worker_of_every_replica(pair) -> None:
    one, two = (Client(s) for s in pair)
    reply = one.post("/v1/graphs", {"expression": EXPR, "name": "e2e-wave"})
    assert reply.status == 201, reply
    gid = reply.json["graph_id"]
    by_id = f"/v1/graphs/{gid}/gradients"
    assert statuses(two, "POST", by_id, VALUES) == {200}  # in two's workers' L1 now
    listing = two.get("/v1/graphs").json
    assert {"graph_id": gid, "name": "e2e-wave", "kind": "expression",
            "inputs": {"x": {}, "y": {}}, "output": "f"} in listing["graphs"]

    assert one.request("DELETE", f"/v1/graphs/{gid}").status == 204
    assert one.request("DELETE", f"/v1/graphs/{gid}").status == 204
    time.sleep(REVALIDATE_S + 0.2)
    assert statuses(two, "POST", by_id, VALUES) == {404}
    assert statuses(one, "POST", by_id, VALUES) == {404}
    # OIP errors are {"error"} JSON, not problem+json: asked of the server directly.
    assert {pair[1].request("GET", "/v2/models/e2e-wave")[0] for _ in range(6)} == {404}
    assert gid not in [g["graph_id"] for g in two.get("/v1/graphs").json["graphs"]]

    # The name is free for another graph; the graph itself can come back.
    reply = two.post("/v1/graphs", {"expression": "x * y", "name": "e2e-wave"})
    assert reply.status == 201, reply
    assert one.post("/v1/graphs", {"expression": EXPR}).json["graph_id"] == gid
    assert statuses(two, "POST", by_id, VALUES) == {200}


def test_pages_through_the_store(pair) -> None:
    one, two = (Client(s) for s in pair)
    made = {one.post("/v1/graphs", {"expression": f"x * {i + 2}"}).json["graph_id"]
            for i in range(5)}
    seen, path = [], "/v1/graphs?limit=2"
    while True:
        page = two.get(path).json
        assert len(page["graphs"]) <= 2
        seen += [g["graph_id"] for g in page["graphs"]]
        if page["next"] is None:
            break
        path = f"/v1/graphs?limit=2&cursor={page['next']}"
    assert seen == sorted(seen) and made <= set(seen)
