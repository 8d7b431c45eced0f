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


def test_loss_plans_are_counted_and_leave_with_their_plan() -> None:
    """A request with a loss compiles a second plan (the graph with the loss on top) that
    the entry holds: counted in the entry's bytes from when it is built, and subtracted
    when the entry is evicted (before, its specializations were added and never taken off,
    and its own nodes never counted)."""
    from service.engine.loss import loss_plan

    limits = Limits(plan_cache_bytes=2 << 20, max_specializations=4)
    cache = GraphCache(REGISTRY, limits, l1_size=1000)
    for k in range(8):
        spec = chain(200, f"l{k}n")
        plan, _ = cache.plan_for(alias_key("spec", spec), lambda spec=spec: graph_from_dict(spec))
        alone = plan.nbytes
        derived = loss_plan(plan, "mse")
        assert plan.nbytes == alone + derived.nbytes
        derived.specialize({"x": (), "%loss.targets": ()}, ("x",))
        assert plan.nbytes > alone + derived.base_nbytes
        assert cache.nbytes == sum(p.nbytes for p in cache._plans.values())
        assert cache.nbytes <= max(limits.plan_cache_bytes, plan.nbytes)
    assert len(cache._plans) < 8
