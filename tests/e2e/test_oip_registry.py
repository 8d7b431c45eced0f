"""Model names across replicas: two gunicorns sharing one real Redis agree on every name.

A name registered on one instance is a model on the other (tritonclient infers by it), and
when both race to give one name to different graphs, exactly one graph gets it everywhere.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import tritonclient.http as tritonclient_http

from tests.e2e.conftest import assert_clean_logs, product_graph
from tests.e2e.server import GunicornServer
from tests.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def test_names_are_shared_by_replicas_on_one_redis(module_redis: RedisServer) -> None:
    env = {"GRADSERVE_REDIS_URL": module_redis.url}
    with GunicornServer(env, workers=1) as a, GunicornServer(env, workers=1) as b:
        status, _, raw = a.post("/v1/graphs", {"expression": "sum(x * y)", "name": "dot"})
        assert status == 201, raw
        graph_id = json.loads(raw)["graph_id"]

        client = tritonclient_http.InferenceServerClient(f"{b.host}:{b.port}")
        try:
            assert client.get_model_metadata("dot")["inputs"][0]["name"] == "x"
            inputs = []
            for name, arr in (("x", np.array([1.0, 2.0])), ("y", np.array([3.0, -1.0]))):
                inp = tritonclient_http.InferInput(name, [2], "FP64")
                inp.set_data_from_numpy(arr)
                inputs.append(inp)
            res = client.infer("dot", inputs)
            assert res.as_numpy("output").item() == 1.0
            assert res.as_numpy("grad:x").tolist() == [3.0, -1.0]
        finally:
            client.close()

        # The same graph and name again on the other replica: idempotent; another graph: 409.
        status, _, raw = b.post("/v1/graphs", {"expression": "sum(x * y)", "name": "dot"})
        assert status == 200 and json.loads(raw)["graph_id"] == graph_id
        status, _, raw = b.post("/v1/graphs", {"expression": "sum(x + y)", "name": "dot"})
        assert status == 409 and graph_id in json.loads(raw)["detail"]

        # Both replicas race to name different graphs "race": one graph wins, everywhere.
        def claim(i: int) -> tuple[int, str]:
            server = (a, b)[i % 2]
            body = {"graph": product_graph(1.5 + i), "name": "race"}
            status, _, raw = server.post("/v1/graphs", body)
            reply = json.loads(raw)
            return status, reply.get("graph_id") or reply["detail"]

        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(claim, range(8)))
        winners = [gid for status, gid in results if status in (200, 201)]
        assert len(winners) == 1 and sorted(s for s, _ in results) == [201] + [409] * 7
        assert all(winners[0] in detail for status, detail in results if status == 409)
        for server in (a, b):
            status, _, raw = server.get("/v2/models/race")
            assert status == 200, raw
            status, _, raw = server.get("/v1/graphs/" + winners[0])
            assert status == 200, raw
        assert_clean_logs(a)
        assert_clean_logs(b)
