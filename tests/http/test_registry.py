"""GET /v1/graphs and DELETE /v1/graphs/{id} through the app: two apps sharing one store
stand for two workers (or replicas), each with its own L1."""

from __future__ import annotations

from pathlib import Path

import pytest

from service.store import MemoryStore, SQLiteStore
from service.store.cache import GraphCache
from tests.conftest import build_app

EXPR = "f = sin(x) * y"
VALUES = {"x": 0.5, "y": 2.0}


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def worker(store, clock: Clock | None = None):
    app = build_app(store=store)
    if clock is not None:
        cache: GraphCache = app.extensions["gradserve"].cache
        cache._clock = clock
    return app.test_client()


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path: Path):
    return MemoryStore() if request.param == "memory" else SQLiteStore(tmp_path / "d")


def register(client, body):
    resp = client.post("/v1/graphs", json=body)
    assert resp.status_code in (200, 201), resp.get_json()
    return resp.get_json()["graph_id"]


def test_list_shows_every_kind_and_name(store) -> None:
    c = worker(store)
    g_expr = register(c, {"expression": EXPR, "name": "wave"})
    g_spec = register(c, {"graph": {"inputs": {"a": {}}, "nodes": [
        {"id": "b", "op": "exp", "args": ["a"]}], "output": "b"}})
    resp = c.post("/v1/mlp/graphs", json={"layers": [
        {"in_features": 2, "out_features": 1, "activation": "identity"}], "name": "tiny"})
    assert resp.status_code == 201, resp.get_json()
    g_mlp = resp.get_json()["graph_id"]
    body = c.get("/v1/graphs").get_json()
    assert body["next"] is None
    by_id = {g["graph_id"]: g for g in body["graphs"]}
    assert [g["graph_id"] for g in body["graphs"]] == sorted(by_id)
    assert by_id[g_expr] == {"graph_id": g_expr, "name": "wave", "kind": "expression",
                             "inputs": {"x": {}, "y": {}}, "output": "f"}
    assert by_id[g_spec]["kind"] == "spec" and "name" not in by_id[g_spec]
    assert by_id[g_mlp]["kind"] == "mlp" and by_id[g_mlp]["name"] == "tiny"
    # Another worker sharing the store lists the same (it reads the store, not its L1).
    assert worker(store).get("/v1/graphs").get_json() == body


def test_list_pages(store) -> None:
    c = worker(store)
    made = sorted(register(c, {"expression": f"x * {i + 2}"}) for i in range(7))
    seen, url = [], "/v1/graphs?limit=3"
    while True:
        body = c.get(url).get_json()
        assert len(body["graphs"]) <= 3
        seen += [g["graph_id"] for g in body["graphs"]]
        if body["next"] is None:
            break
        url = f"/v1/graphs?limit=3&cursor={body['next']}"
    assert seen == made
    assert len(c.get("/v1/graphs").get_json()["graphs"]) == 7  # default 100


@pytest.mark.parametrize("query, loc", [
    ("limit=0", "limit"), ("limit=1001", "limit"), ("limit=ten", "limit"),
    ("limit=-1", "limit"), ("limit=1.5", "limit"), ("cursor=abc", "cursor"),
    ("cursor=", "cursor"), ("limit=", "limit"), ("limit=\u00b2", "limit"),
    ("limit=\u0661\u0662", "limit"), ("limit=\uff11\uff12", "limit"),  # int() reads them: 12
    ("limit=%2B5", "limit"), ("limit=1_0", "limit"),
    ("cursor=g-" + "A" * 64, "cursor"),
    ("page=2", "page"), ("offset=10", "offset"),
])
def test_list_bad_query_names_the_parameter(query: str, loc: str) -> None:
    resp = worker(MemoryStore()).get(f"/v1/graphs?{query}")
    assert resp.status_code == 422
    body = resp.get_json()
    assert resp.content_type == "application/problem+json"
    assert loc in body["detail"] and loc in body["errors"][0]["loc"]


def test_list_unknown_parameter_suggests_one() -> None:
    body = worker(MemoryStore()).get("/v1/graphs?limt=5").get_json()
    assert "did you mean 'limit'" in body["detail"]


def test_delete_is_idempotent_and_frees_the_name(store) -> None:
    c = worker(store)
    gid = register(c, {"expression": EXPR, "name": "wave"})
    assert c.delete(f"/v1/graphs/{gid}").status_code == 204
    assert c.delete(f"/v1/graphs/{gid}").status_code == 204
    assert c.delete("/v1/graphs/g-" + "0" * 64).status_code == 204
    assert c.get(f"/v1/graphs/{gid}").status_code == 404
    assert c.post(f"/v1/graphs/{gid}/gradients", json={"values": VALUES}).status_code == 404
    assert c.post("/v1/gradients", json={"graph_id": gid, "values": VALUES}
                  ).status_code == 404
    assert c.get("/v1/graphs").get_json()["graphs"] == []
    assert c.get("/v2/models/wave").status_code == 404
    # The name is free for another graph, and the graph may come back.
    other = register(c, {"expression": "x * y", "name": "wave"})
    assert register(c, {"expression": EXPR}) == gid
    assert c.get(f"/v1/graphs/{gid}").status_code == 200
    assert c.get("/v2/models/wave").get_json()["name"] in ("wave", other)
    # Inline requests of a deleted graph's spec never needed registration.
    assert c.post("/v1/gradients", json={"expression": EXPR, "values": VALUES}
                  ).status_code == 200


def test_delete_a_malformed_id_is_404() -> None:
    resp = worker(MemoryStore()).delete("/v1/graphs/wave")
    assert resp.status_code == 404
    assert "GET /v1/graphs lists" in resp.get_json()["detail"]


def test_a_deleted_graph_stops_being_served_by_other_workers(store) -> None:
    clock = Clock()
    one, two = worker(store, clock), worker(store, clock)
    gid = register(one, {"expression": EXPR, "name": "wave"})
    by_id = f"/v1/graphs/{gid}/gradients"
    assert two.post(by_id, json={"values": VALUES}).status_code == 200  # now in two's L1
    assert two.get("/v2/models/wave").status_code == 200  # the name too
    assert one.delete(f"/v1/graphs/{gid}").status_code == 204
    assert one.post(by_id, json={"values": VALUES}).status_code == 404  # at once here
    # Within REVALIDATE_S, two may still serve its copy; past it, two asks the store.
    clock.now += 1.5
    assert two.post(by_id, json={"values": VALUES}).status_code == 404
    assert two.get(f"/v1/graphs/{gid}").status_code == 404
    assert two.get("/v2/models/wave").status_code == 404
    # Registered again (on one): two serves it again, and the name for its new graph.
    register(one, {"expression": EXPR})
    register(one, {"expression": "x * y", "name": "wave"})
    assert two.post(by_id, json={"values": VALUES}).status_code == 200
    clock.now += 1.5
    meta = two.get("/v2/models/wave").get_json()
    assert meta["name"] == "wave"
    assert sorted(i["name"] for i in meta["inputs"]) == ["x", "y"]


def test_a_graph_still_stored_is_served_after_revalidation(store) -> None:
    clock = Clock()
    one = worker(store, clock)
    gid = register(one, {"expression": EXPR})
    calls = []
    real = store.exists
    store.exists = lambda g: calls.append(g) or real(g)  # type: ignore[method-assign]
    by_id = f"/v1/graphs/{gid}/gradients"
    for _ in range(5):
        assert one.post(by_id, json={"values": VALUES}).status_code == 200
    assert calls == []  # fresh: no store call on the hot path
    clock.now += 1.5
    for _ in range(5):
        assert one.post(by_id, json={"values": VALUES}).status_code == 200
    assert calls == [gid]  # one check, then fresh again


def test_revalidation_with_the_store_down_serves_the_plan() -> None:
    from service.store import StoreUnavailable

    class Flaky(MemoryStore):
        down = False

        def exists(self, graph_id: str) -> bool:
            if self.down:
                raise StoreUnavailable("down", retry_after=1)
            return super().exists(graph_id)

    store, clock = Flaky(), Clock()
    c = worker(store, clock)
    gid = register(c, {"expression": EXPR})
    store.down = True
    clock.now += 5
    assert c.post(f"/v1/graphs/{gid}/gradients", json={"values": VALUES}).status_code == 200


def test_without_a_store_list_and_delete_use_this_worker() -> None:
    from service.app import create_app
    from service.config import load_settings

    # A graph cache with no shared store at all (GraphCache(store=None): this worker's L1
    # is all there is); create_app would make the configured one (SQLite in ./var, which
    # other runs may have filled), so the cache is told to use none.
    app = create_app(load_settings(env={}), store=MemoryStore())
    app.extensions["gradserve"].cache.store = None
    c = app.test_client()
    gid = register(c, {"expression": EXPR, "name": "wave"})
    body = c.get("/v1/graphs").get_json()
    assert body == {"graphs": [{"graph_id": gid, "name": "wave", "kind": "expression",
                                "inputs": {"x": {}, "y": {}}, "output": "f"}], "next": None}
    assert c.delete(f"/v1/graphs/{gid}").status_code == 204
    assert c.get(f"/v1/graphs/{gid}").status_code == 404
    assert c.get("/v1/graphs").get_json() == {"graphs": [], "next": None}
