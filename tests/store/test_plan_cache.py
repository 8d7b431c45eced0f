"""The per-worker plan cache is bounded by estimated bytes, and so is each plan's set of
shape specializations (issue 9, item 3: a 20,000-node chain sent with 32 input lengths
grew a worker by 360 MB, never released)."""

from __future__ import annotations

import numpy as np

from service.engine import REGISTRY, Query, execute, graph_from_dict
from service.engine.limits import Limits
from service.runtime import metrics
from service.store.cache import GraphCache, alias_key


def chain(n: int, tag: str) -> dict:
    nodes = [{"id": f"{tag}{i}", "op": "tanh", "args": [f"{tag}{i - 1}" if i else "x"]}
             for i in range(n)]
    nodes.append({"id": "f", "op": "sum", "args": [f"{tag}{n - 1}"]})
    return {"inputs": {"x": {}}, "nodes": nodes, "output": "f"}


def evictions(reason: str) -> float:
    return metrics.PLAN_EVICTIONS.labels(reason)._value.get()


def test_bytes_bound_plans_and_specializations() -> None:
    limits = Limits(plan_cache_bytes=3 << 20, max_specializations=4)
    cache = GraphCache(REGISTRY, limits, l1_size=1000)
    before_bytes, before_specs = evictions("bytes"), evictions("specializations")
    for k in range(6):
        spec = chain(300, f"c{k}n")
        plan, _ = cache.plan_for(alias_key("spec", spec), lambda spec=spec: graph_from_dict(spec))
        for length in range(1, 9):  # eight input lengths, four kept
            execute(plan, {"x": np.ones(length)})
        assert len(plan._specs) <= 4
        # The budget holds after every request (the newest plan always stays).
        assert cache.nbytes <= max(limits.plan_cache_bytes, plan.nbytes)
        assert cache.nbytes == sum(p.nbytes for p in cache._plans.values())
    assert evictions("specializations") - before_specs >= 6 * 4
    assert evictions("bytes") > before_bytes
    assert len(cache._plans) < 6


def test_estimate_grows_with_the_graph() -> None:
    cache = GraphCache(REGISTRY, Limits(), l1_size=10)
    small, big = chain(10, "s"), chain(1000, "b")
    p1, _ = cache.plan_for(None, lambda: graph_from_dict(small))
    p2, _ = cache.plan_for(None, lambda: graph_from_dict(big))
    assert p2.nbytes > 50 * p1.nbytes > 0
    before = p2.nbytes
    execute(p2, {"x": np.ones(3)}, Query(hvp={"x": np.ones(3)}))
    assert p2.nbytes > before
