"""GraphCache unit tests: L1 hits, store loads, and what a bad stored entry costs."""

from __future__ import annotations

import pytest

from service.engine import REGISTRY, Limits, parse_expression
from service.errors import LimitExceeded, NotFound
from service.runtime import metrics
from service.store.base import StoreUnavailable
from service.store.cache import GraphCache
from service.store.memory import MemoryStore

EXPR = "q = W @ x; f = sum(q ** 2)"


def _build():
    return parse_expression(EXPR, REGISTRY).graph


def test_registered_graph_loads_from_the_store_in_another_cache():
    store = MemoryStore()
    a = GraphCache(REGISTRY, Limits(), store=store)
    plan, created = a.register("expr:1", _build)
    assert created and store.get(plan.graph_id) == plan.canonical_json
    assert a.register("expr:1", _build)[1] is False
    b = GraphCache(REGISTRY, Limits(), store=store)
    loaded, cache = b.plan_for_id(plan.graph_id)
    assert cache == "hit" and loaded.graph_id == plan.graph_id
    assert b.plan_for_id(plan.graph_id)[0] is loaded  # now from L1


def test_tampered_entry_is_dropped_before_parsing():
    store = MemoryStore()
    plan, _ = GraphCache(REGISTRY, Limits(), store=store).register("expr:1", _build)
    store.delete(plan.graph_id)
    store.put(plan.graph_id, plan.canonical_json.replace(b"sum", b"max"))
    before = metrics.CACHE.labels("store", "corrupt")._value.get()
    with pytest.raises(NotFound):
        GraphCache(REGISTRY, Limits(), store=store).plan_for_id(plan.graph_id)
    assert store.get(plan.graph_id) is None
    assert metrics.CACHE.labels("store", "corrupt")._value.get() == before + 1


def test_entry_over_this_replicas_limits_is_refused_but_kept():
    """A rolling deploy that lowers a limit must not delete other replicas' graphs."""
    store = MemoryStore()
    plan, _ = GraphCache(REGISTRY, Limits(), store=store).register("expr:1", _build)
    strict = GraphCache(REGISTRY, Limits(max_nodes=1), store=store)
    with pytest.raises(LimitExceeded):
        strict.plan_for_id(plan.graph_id)
    assert store.get(plan.graph_id) == plan.canonical_json


def test_l1_is_bounded():
    cache = GraphCache(REGISTRY, Limits(), store=None, l1_size=2)
    for i in range(5):
        cache.plan_for(f"expr:{i}", lambda i=i: parse_expression(f"x * {i}", REGISTRY).graph)
    assert len(cache._plans) == 2
    assert cache.peek("expr:4") is not None and cache.peek("expr:0") is None


def test_an_inline_graph_is_not_served_by_id():
    """Computing a graph inline puts its plan in this worker's L1, but only registering makes
    its id usable: otherwise a by-id request would work on one worker and 404 on the others."""
    store = MemoryStore()
    cache = GraphCache(REGISTRY, Limits(), store=store)
    plan, _ = cache.plan_for("expr:1", _build)
    with pytest.raises(NotFound):
        cache.plan_for_id(plan.graph_id)
    cache.register("expr:1", _build)
    assert cache.plan_for_id(plan.graph_id)[0] is plan  # from L1 now, no recompilation


def test_a_failed_registration_leaves_the_id_unusable():
    class DownStore(MemoryStore):
        def put(self, graph_id, blob):
            raise StoreUnavailable("the graph store is unavailable; retry later")

    cache = GraphCache(REGISTRY, Limits(), store=DownStore())
    with pytest.raises(StoreUnavailable):
        cache.register("expr:1", _build)
    plan, _ = cache.plan_for("expr:1", _build)
    with pytest.raises(NotFound):
        cache.plan_for_id(plan.graph_id)


def test_a_new_worker_warms_its_l1_from_the_store() -> None:
    """A recycled worker (a new app on the same store) loads the recently registered graphs
    before serving: its first by-id request is an L1 hit, not a store round trip."""
    from service.http.warmup import warm_cache
    from service.store import MemoryStore
    from tests.conftest import build_app

    store = MemoryStore()
    first = build_app(store=store).test_client()
    ids = []
    for k in range(3):
        reply = first.post("/v1/graphs", json={"expression": f"x * {k + 2}"})
        assert reply.status_code == 201
        ids.append(reply.get_json()["graph_id"])
    app = build_app(store=store)
    metrics.TALLY.flush()  # the L1's counts reach the metric at a flush
    hits = metrics.CACHE.labels("l1", "hit")._value.get()
    assert warm_cache(app, n=2) == 2
    client = app.test_client()
    for gid, k in ((ids[2], 4), (ids[1], 3)):
        reply = client.post(f"/v1/graphs/{gid}/gradients", json={"values": {"x": 1.0}})
        assert reply.status_code == 200 and reply.get_json()["gradients"]["x"] == k
    metrics.TALLY.flush()
    assert metrics.CACHE.labels("l1", "hit")._value.get() == hits + 2
    assert warm_cache(build_app(store=MemoryStore())) == 0  # nothing registered: nothing
