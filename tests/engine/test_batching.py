"""Batching by transformation (engine/batching.py, batch_rules.py): for every op of the
registry, a batched request equals its B separate requests, in float64: output, gradients,
JVP and HVP.

The cases are test_ops.py's table (every public op, with broadcasting, 0-d and attrs): each
case runs with every argument batched, and with only the first one batched and the others
shared (their gradients summed, and per example with ``per_example``), against one
request per example.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.engine import REGISTRY, Query, execute
from service.errors import ProblemError
from tests.engine.test_ops import CASES, L, _instance, _values

B = 3
SHARED = [c for c in CASES if len(c.values[2].args) >= 2]  # an argument to share


def _examples(name: str, i: int, case: Any) -> list[dict[str, Any]]:
    """B value sets for the case's graph (the first is the table's own)."""
    _, first, _ = _instance(name, i, case)
    rng = np.random.default_rng(7 + i + sum(map(ord, name)))
    sets = [first]
    for _ in range(B - 1):
        vals = {}
        for k, arg in enumerate(case.args):
            n = f"a{k}"
            if isinstance(arg, L):
                vals[n] = rng.integers(0, arg.classes, arg.batch)
            else:
                vals[n] = _values(rng, arg, k)
        sets.append(vals)
    return sets


def _separate(plan: Any, sets: list[dict[str, Any]], ups: list[Any], wrt: list[str]) -> list:
    return [execute(plan, v, Query(wrt=wrt, upstream=u)) for v, u in zip(sets, ups)]


def _upstreams(plan: Any, sets: list[dict[str, Any]]) -> tuple[list[Any], Any]:
    out = np.shape(execute(plan, sets[0], Query(wrt=[])).output)
    rng = np.random.default_rng(3)
    if out == ():
        return [None] * B, None
    ups = [rng.standard_normal(out) for _ in range(B)]
    return ups, np.stack(ups)


def _close(a: Any, b: Any, what: str) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float),
                               rtol=1e-9, atol=1e-10, err_msg=what)


@pytest.mark.parametrize(("name", "i", "case"), CASES)
def test_batched_equals_separate_requests(name: str, i: int, case: Any) -> None:
    plan, _, floats = _instance(name, i, case)
    sets = _examples(name, i, case)
    ups, up = _upstreams(plan, sets)
    names = [f"a{k}" for k in range(len(case.args))]
    alone = _separate(plan, sets, ups, floats)
    stacked = {n: np.stack([s[n] for s in sets]) for n in names}
    res = execute(plan, stacked, Query(wrt=floats, upstream=up, batched=names))
    for b in range(B):
        _close(res.output[b], alone[b].output, f"{name} output[{b}]")
        for n in floats:
            _close(res.gradients[n][b], alone[b].gradients[n], f"{name} d{n}[{b}]")


@pytest.mark.parametrize(("name", "i", "case"), SHARED)
def test_shared_inputs_summed_and_per_example(name: str, i: int, case: Any) -> None:
    plan, _, floats = _instance(name, i, case)
    sets = _examples(name, i, case)
    names = [f"a{k}" for k in range(len(case.args))]
    shared = {n: sets[0][n] for n in names[1:]}
    sets = [{**s, **shared} for s in sets]
    ups, up = _upstreams(plan, sets)
    alone = _separate(plan, sets, ups, floats)
    values = {names[0]: np.stack([s[names[0]] for s in sets]), **shared}
    summed = execute(plan, values, Query(wrt=floats, upstream=up, batched=[names[0]]))
    per = execute(plan, values, Query(wrt=floats, upstream=up, batched=[names[0]],
                                      per_example=True))
    for n in floats:
        if n == names[0]:
            for b in range(B):
                _close(summed.gradients[n][b], alone[b].gradients[n], f"{name} d{n}[{b}]")
            continue
        _close(summed.gradients[n], sum(a.gradients[n] for a in alone), f"{name} sum d{n}")
        for b in range(B):
            _close(per.gradients[n][b], alone[b].gradients[n], f"{name} per-example d{n}")


def test_every_public_op_names_a_batching_rule() -> None:
    from service.engine.batch_rules import RULES
    from service.engine.ops import records

    missing = [r.name for r in records() if not r.internal and r.batching not in RULES]
    assert missing == []
    # Internal ops appear only in backward graphs, built from values already batched.
    assert all(not r.batching for r in records() if r.internal)


def test_an_op_without_a_rule_is_refused_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.engine import compile_graph, parse_expression
    from service.engine.batch_rules import RULES

    plan = compile_graph(parse_expression("sum(exp(x))", REGISTRY).graph, REGISTRY)
    monkeypatch.delitem(RULES, "elementwise")  # exp's rule, as if it had none
    with pytest.raises(ProblemError) as err:
        execute(plan, {"x": np.ones((2, 3))}, Query(batched=["x"]))
    assert err.value.status == 422 and err.value.loc == ("batched",)
    assert "'exp'" in str(err.value.detail)


@pytest.mark.parametrize(("name", "i", "case"), CASES)
def test_batched_jvp_and_hvp_equal_separate_requests(name: str, i: int, case: Any) -> None:
    plan, _, floats = _instance(name, i, case)
    assert floats  # every op has a differentiable argument
    sets = _examples(name, i, case)
    ups, up = _upstreams(plan, sets)
    names = [f"a{k}" for k in range(len(case.args))]
    rng = np.random.default_rng(i)
    tangents = {n: rng.standard_normal((B, *np.shape(sets[0][n]))) for n in floats}
    stacked = {n: np.stack([s[n] for s in sets]) for n in names}
    res = execute(plan, stacked, Query(wrt=floats, upstream=up, batched=names,
                                       tangents=tangents, hvp=tangents))
    for b in range(B):
        one = execute(plan, sets[b], Query(wrt=floats, upstream=ups[b],
                                           tangents={n: t[b] for n, t in tangents.items()},
                                           hvp={n: t[b] for n, t in tangents.items()}))
        _close(res.jvp[b], one.jvp, f"{name} jvp[{b}]")
        for n in floats:
            _close(res.hvp[n][b], one.hvp[n], f"{name} hvp {n}[{b}]")


@pytest.mark.parametrize("xs", [(8, 1, 5), (2, 3, 4, 5), (0, 1, 5), (3, 0, 5), (4, 1, 0)])
def test_matmul_of_stacked_rows_and_one_matrix_is_numpys(xs: tuple[int, ...]) -> None:
    """matmul runs (..., k) @ (k, n) as one (rows, k) @ (k, n) product (one read of the
    matrix, not one per row); its values and shape are NumPy's, zero sizes included."""
    from service.engine import backend

    be = backend.current()  # the op runs on the engine's namespace (array-api-strict too)
    rng = np.random.default_rng(len(xs))
    x, y = rng.standard_normal(xs), rng.standard_normal((xs[-1], 3))
    got = be.to_host(REGISTRY.op("matmul").forward(be.to_device(x), be.to_device(y)))
    want = np.matmul(x, y)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
