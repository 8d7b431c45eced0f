"""compile_graph and execute: accumulation, ordering, pruning, graph ids, options, errors."""

from __future__ import annotations

import random
import time
import tracemalloc
from typing import Any

import numpy as np
import pytest

from service.engine import (
    REGISTRY,
    Limits,
    Op,
    Query,
    build_registry,
    compile_graph,
    execute,
    graph_from_dict,
    parse_expression,
)
from service.engine.registry import Registry
from service.errors import GraphError, LimitExceeded, Unprocessable
from tests.engine.numeric import F32, dev, host


def _plan(spec: dict[str, Any], registry: Registry = REGISTRY, limits: Limits | None = None
          ) -> Any:
    graph = graph_from_dict(spec)
    return compile_graph(graph, registry, limits) if limits else compile_graph(graph, registry)


def _expr(text: str) -> Any:
    return compile_graph(parse_expression(text, REGISTRY).graph, REGISTRY)


def _g(nodes: list[dict[str, Any]], inputs: dict[str, Any] | None = None,
       output: str = "f") -> dict[str, Any]:
    return {"inputs": inputs if inputs is not None else {"x": {}}, "nodes": nodes,
            "output": output}


def _n(nid: str, op: str, *args: Any, **attrs: Any) -> dict[str, Any]:
    node: dict[str, Any] = {"id": nid, "op": op, "args": list(args)}
    if attrs:
        node["attrs"] = attrs
    return node


# --- accumulation and ordering ------------------------------------------------------------


def test_fan_out_accumulates() -> None:
    x = np.array([1.5, -2.0, 3.0])
    r = execute(_plan(_g([_n("f", "mul", "x", "x")])), {"x": x}, Query(upstream=np.ones(3)))
    np.testing.assert_array_equal(r.gradients["x"], 2 * x)
    r = execute(_expr("sum(x * x)"), {"x": x})
    np.testing.assert_array_equal(r.gradients["x"], 2 * x)
    # Used by three different nodes: the gradients add up.
    r = execute(_expr("a = sin(x); b = 3 * x; f = sum(a + b + x)"), {"x": x})
    np.testing.assert_allclose(r.gradients["x"], np.cos(x) + 3 + 1, rtol=1e-15)


def test_diamond() -> None:
    #    x → a → (b, c) → f = b * c, with a = 2x, b = sin a, c = cos a.
    spec = _g([_n("f", "mul", "b", "c"), _n("c", "cos", "a"), _n("b", "sin", "a"),
               _n("a", "mul", "x", 2)])
    x = 0.3
    r = execute(_plan(spec), {"x": x}, Query(trace=True))
    a = 2 * x
    assert float(r.output) == pytest.approx(np.sin(a) * np.cos(a), rel=1e-15)
    assert float(r.gradients["x"]) == pytest.approx(2 * np.cos(2 * a), rel=1e-12)
    assert [t["id"] for t in r.trace] == ["a", "b", "c", "f"]
    # A diamond whose two paths meet again through broadcasting.
    r = execute(_expr("a = x * y; f = sum(a + transpose(a))"),
                {"x": np.arange(3.0).reshape(3, 1), "y": np.arange(3.0)})
    np.testing.assert_allclose(r.gradients["x"], 2 * np.full((3, 1), 3.0), rtol=1e-15)
    np.testing.assert_allclose(r.gradients["y"], 2 * np.full(3, 3.0), rtol=1e-15)


def test_hundred_thousand_node_chain() -> None:
    n = 100_000
    ops = ["add", "mul", "sub"]
    consts = [1.0, 1.0, 0.5]
    nodes = [_n(f"n{i}", ops[i % 3], f"n{i - 1}" if i else "x", consts[i % 3]) for i in range(n)]
    random.Random(0).shuffle(nodes)
    # CPU time of this thread: other jobs (and other threads) do not count against it.
    start = time.thread_time()
    graph = graph_from_dict(_g(nodes, output=f"n{n - 1}"))
    limits = Limits(max_nodes=200_000)
    plan = compile_graph(graph, REGISTRY, limits)
    r = execute(plan, {"x": 2.0}, limits=limits)
    elapsed = time.thread_time() - start
    # Each add/mul/sub triple adds 0.5; the chain ends on an add (n - 1 = 99,999 ≡ 0 mod 3).
    assert float(r.output) == pytest.approx(2.0 + 0.5 * (n // 3) + 1.0)
    assert float(r.gradients["x"]) == 1.0
    assert len(plan.nodes) == n
    # A few seconds; the bound catches quadratic work (hours at this size), not a slow runner.
    assert elapsed < 30, elapsed
    # The default limit refuses it, before any work.
    start = time.perf_counter()
    with pytest.raises(LimitExceeded) as info:
        compile_graph(graph, REGISTRY)
    assert time.perf_counter() - start < 0.1
    assert info.value.limit == "max_nodes" and info.value.actual == n


def test_deep_chain_expression_trace() -> None:
    # 5,000 statements: every named node shows in the trace, iteratively computed.
    text = "\n".join(["a0 = x"] + [f"a{i} = a{i - 1} * 1" for i in range(1, 5000)])
    start = time.thread_time()
    r = execute(compile_graph(parse_expression(text, REGISTRY, max_length=200_000).graph,
                              REGISTRY), {"x": 3.0}, Query(trace=True))
    assert time.thread_time() - start < 10
    assert float(r.output) == 3.0 and float(r.gradients["x"]) == 1.0
    assert len(r.trace) == 5000 and r.trace[-1]["id"] == "a4999"


# --- graph ids ----------------------------------------------------------------------------

BASE = _g([_n("q", "matmul", "W", "x"), _n("q2", "square", "q"), _n("f", "sum", "q2")],
          inputs={"W": {"shape": [2, 2]}, "x": {"shape": [2]}})


def test_graph_id_ignores_node_order_and_key_order() -> None:
    ids = {_plan(BASE).graph_id}
    for seed in range(5):
        nodes = [dict(reversed(list(n.items()))) for n in BASE["nodes"]]
        random.Random(seed).shuffle(nodes)
        spec = {"output": "f", "nodes": nodes,
                "inputs": dict(reversed(list(BASE["inputs"].items())))}
        ids.add(_plan(spec).graph_id)
    assert len(ids) == 1
    (graph_id,) = ids
    assert graph_id.startswith("g-") and len(graph_id) == 2 + 64


def test_graph_id_normalizes_attrs_and_numbers() -> None:
    a = _plan(_g([_n("f", "sum", "x")]))
    b = _plan(_g([_n("f", "sum", "x", axis=None, keepdims=False)]))
    assert a.graph_id == b.graph_id
    c = _plan(_g([_n("f", "mul", "x", 2)]))
    d = _plan(_g([_n("f", "mul", "x", 2.0)]))
    assert c.graph_id == d.graph_id


def test_graph_id_ignores_expression_whitespace() -> None:
    texts = ["q = W @ x; f = sum(q ** 2)", "q=W@x\nf=sum(q**2)", "  q  =  W @ x ;f = sum( q**2 )",
             "q = (W @ x)\n\nf = sum((q) ** (2))"]
    assert len({_expr(t).graph_id for t in texts}) == 1


def test_different_graphs_have_different_ids() -> None:
    variants = [
        BASE,
        {**BASE, "nodes": [_n("q", "matmul", "W", "x"), _n("q2", "abs", "q"),
                           _n("f", "sum", "q2")]},
        {**BASE, "inputs": {"W": {"shape": [2, 2]}, "x": {}}},
        {**BASE, "inputs": {"W": {"shape": [3, 2]}, "x": {"shape": [2]}}},
        {**BASE, "output": "q2"},
        {**BASE, "nodes": [*BASE["nodes"][:2], _n("f", "sum", "q2", axis=0)]},
        {**BASE, "nodes": [_n("r", "matmul", "W", "x"), _n("q2", "square", "r"),
                           _n("f", "sum", "q2")]},
    ]
    ids = [_plan(v).graph_id for v in variants]
    assert len(set(ids)) == len(ids)
    assert _expr("x - y").graph_id != _expr("y - x").graph_id
    assert _expr("x / 0.0").graph_id != _expr("x / -0.0").graph_id


# --- pruning ------------------------------------------------------------------------------


def _spy_registry(calls: list[str]) -> Registry:
    reg = build_registry(np)

    def boom(x: Any) -> Any:
        calls.append("boom")
        raise AssertionError("a pruned node ran")

    reg.register(Op("boom", 1, boom, (lambda g, o, x: g,), lambda x: x, "test only"))
    return reg


def test_pruned_nodes_are_not_executed() -> None:
    calls: list[str] = []
    spec = _g([_n("dead", "boom", "x"), _n("f", "square", "x"), _n("dead2", "neg", "dead")])
    plan = _plan(spec, registry=_spy_registry(calls))
    assert [n.id for n in plan.nodes] == ["f"]
    r = execute(plan, {"x": 3.0}, Query(trace=True))
    assert calls == []
    assert float(r.gradients["x"]) == 6.0
    assert [t["id"] for t in r.trace] == ["f"]


def test_pruned_nodes_count_toward_no_limit() -> None:
    # The dead node would be a 4000 x 4000 tensor: over this limit, but never computed.
    spec = _g([_n("dead", "add", "u", "v"), _n("f", "sum", "u")],
              inputs={"u": {"shape": [4000, 1]}, "v": {"shape": [1, 4000]}})
    limits = Limits(max_tensor_elements=10_000)
    plan = _plan(spec, limits=limits)
    r = execute(plan, {"u": np.ones((4000, 1)), "v": np.ones((1, 4000))}, limits=limits)
    assert float(r.output) == 4000.0
    np.testing.assert_array_equal(r.gradients["v"], np.zeros((1, 4000)))


# --- wrt, upstream, Jacobians, checks -----------------------------------------------------


def test_wrt_subset_and_zeros_for_unused_inputs() -> None:
    spec = _g([_n("f", "mul", "x", "y")], inputs={"x": {}, "y": {}, "z": {"shape": [2, 3]}})
    plan = _plan(spec)
    values = {"x": 2.0, "y": 5.0, "z": np.ones((2, 3))}
    r = execute(plan, values)
    assert set(r.gradients) == {"x", "y", "z"}
    assert float(r.gradients["x"]) == 5.0 and float(r.gradients["y"]) == 2.0
    np.testing.assert_array_equal(r.gradients["z"], np.zeros((2, 3)))
    r = execute(plan, values, Query(wrt=["y"]))
    assert list(r.gradients) == ["y"] and float(r.gradients["y"]) == 2.0
    r = execute(plan, values, Query(wrt=["z", "z"]))
    assert list(r.gradients) == ["z"] and r.gradients["z"].shape == (2, 3)
    assert execute(plan, values, Query(wrt=[])).gradients == {}
    with pytest.raises(Unprocessable) as info:
        execute(plan, values, Query(wrt=["nope"]))
    assert info.value.loc == ("wrt", 0) and "nope" in info.value.detail


def test_wrt_rejects_labels() -> None:
    plan = _expr("softmax_cross_entropy(s, y)")
    values = {"s": np.zeros((2, 3)), "y": np.array([0, 2])}
    assert set(execute(plan, values).gradients) == {"s"}
    with pytest.raises(Unprocessable) as info:
        execute(plan, values, Query(wrt=["s", "y"]))
    assert info.value.loc == ("wrt", 1)


def test_upstream_required_for_non_scalar_output() -> None:
    plan = _expr("x * y")
    values = {"x": np.arange(3.0), "y": 2.0}
    with pytest.raises(Unprocessable) as info:
        execute(plan, values)
    assert info.value.loc == ("upstream",) and "(3,)" in info.value.detail
    with pytest.raises(Unprocessable) as info:
        execute(plan, values, Query(upstream=np.ones(4)))
    assert info.value.loc == ("upstream",)
    with pytest.raises(Unprocessable):
        execute(plan, values, Query(upstream=[[1.0, 2.0], [3.0]]))  # ragged
    r = execute(plan, values, Query(upstream=[1.0, -1.0, 2.0]))
    np.testing.assert_array_equal(r.gradients["x"], [2.0, -2.0, 4.0])
    assert float(r.gradients["y"]) == 0 * 1.0 - 1.0 + 4.0
    # A scalar output needs none, and an explicit one scales the gradient.
    r = execute(_expr("sum(x)"), {"x": np.ones(2)}, Query(upstream=3.0))
    np.testing.assert_array_equal(r.gradients["x"], [3.0, 3.0])


def _fd_jacobian(plan: Any, values: dict[str, Any], name: str, h: float = 1e-6) -> np.ndarray:
    x = np.array(values[name], dtype=np.float64)
    out = execute(plan, values, Query(wrt=[], jacobian=True)).output
    jac = np.zeros(out.shape + x.shape)
    for idx in np.ndindex(x.shape):
        plus, minus = x.copy(), x.copy()
        plus[idx] += h
        minus[idx] -= h
        fp = execute(plan, {**values, name: plus}, Query(wrt=[], jacobian=True)).output
        fm = execute(plan, {**values, name: minus}, Query(wrt=[], jacobian=True)).output
        jac[(...,) + idx] = (fp - fm) / (2 * h)
    return jac


@pytest.mark.parametrize("text", ["tanh(W @ x) * y", "x + y", "W @ x", "sum(W * x, axis=0)",
                                  "softmax(W @ x)"])
def test_jacobian_matches_finite_differences(text: str) -> None:
    rng = np.random.default_rng(5)
    values = {"W": rng.standard_normal((2, 3)), "x": rng.standard_normal(3),
              "y": rng.standard_normal(3 if text == "x + y" else 2)}
    plan = _expr(text)
    values = {k: v for k, v in values.items() if k in plan.inputs}
    r = execute(plan, values, Query(jacobian=True))
    assert r.gradients == {}
    for name, value in values.items():
        jac = r.jacobians[name]
        assert jac.shape == r.output.shape + np.shape(value)
        np.testing.assert_allclose(jac, _fd_jacobian(plan, values, name), rtol=1e-6, atol=1e-8)


def test_jacobian_of_pass_through_ops_is_identity() -> None:
    # add and identity hand the seed itself on: each row must be kept before the next seed.
    r = execute(_expr("x + y"), {"x": np.arange(3.0), "y": np.arange(3.0)}, Query(jacobian=True))
    np.testing.assert_array_equal(r.jacobians["x"], np.eye(3))
    np.testing.assert_array_equal(r.jacobians["y"], np.eye(3))
    r = execute(_expr("identity(x)"), {"x": np.ones((2, 2))}, Query(jacobian=True))
    np.testing.assert_array_equal(r.jacobians["x"], np.eye(4).reshape(2, 2, 2, 2))
    r = execute(_plan(_g([], output="x")), {"x": np.ones(2)}, Query(jacobian=True))
    np.testing.assert_array_equal(r.jacobians["x"], np.eye(2))


def test_jacobian_with_upstream_also_gives_gradients() -> None:
    plan = _expr("W @ x")
    values = {"W": np.ones((2, 3)), "x": np.arange(3.0)}
    r = execute(plan, values, Query(jacobian=True, upstream=[1.0, 2.0], trace=True))
    np.testing.assert_array_equal(r.gradients["x"], [3.0, 3.0, 3.0])
    np.testing.assert_array_equal(r.jacobians["x"], np.ones((2, 3)))


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-7), ("float32", 1e-4)])
def test_check_reports_small_errors(dtype: str, tol: float) -> None:
    rng = np.random.default_rng(2)
    values = {"W": rng.standard_normal((3, 4)), "x": rng.standard_normal(4),
              "y": np.array([0, 2, 1])}
    plan = _expr("h = tanh(W * x); softmax_cross_entropy(h, y) + sum(sigmoid(h) ** 2)")
    r = execute(plan, values, Query(check=True, dtype=dtype))
    assert set(r.check) == {"W", "x"}
    for name, errs in r.check.items():
        assert set(errs) == {"max_abs_error", "max_rel_error"}
        assert 0 <= errs["max_abs_error"] < tol, name
        assert 0 <= errs["max_rel_error"] < 1e3 * tol, name
    # With a Jacobian, the check compares the Jacobian.
    r = execute(_expr("tanh(W @ x)"), {"W": values["W"], "x": values["x"]},
                Query(jacobian=True, check=True))
    assert max(e["max_abs_error"] for e in r.check.values()) < 1e-7


# --- trace --------------------------------------------------------------------------------


def test_trace_has_every_node_in_order_with_shapes() -> None:
    r = execute(_expr("q = W @ x; f = sum(q ** 2)"),
                {"W": np.ones((2, 3)), "x": np.ones(3)}, Query(trace=True))
    assert [(t["id"], t["op"], t["shape"]) for t in r.trace] == [
        ("q", "matmul", [2]), ("%1", "pow", [2]), ("f", "sum", [])]
    np.testing.assert_array_equal(r.trace[0]["grad"], [6.0, 6.0])


@pytest.mark.parametrize("text", ["sum(2.0) * x", "sum(reshape(3.0, shape=[1])) * x",
                                  "max(2.0) * x", "mean(2.0) * x", "logsumexp(2.0) * x",
                                  "exp(2.0) * x", "transpose(2.0) * x"])
def test_trace_through_constant_only_nodes(text: str) -> None:
    r = execute(_expr(text), {"x": 1.5}, Query(trace=True))
    assert float(r.gradients["x"]) == pytest.approx(float(r.output) / 1.5, rel=1e-15)
    assert float(r.trace[-1]["grad"]) == 1.0
    # A node computed from constants alone still shows d(output)/d(node).
    assert np.ravel(r.trace[0]["grad"]).tolist() == [pytest.approx(1.5)]


@pytest.mark.parametrize("text", ["sum(x * exp(2.0))", "sum(x * (2.0 + 1.0))",
                                  "sum(reshape(3.0, shape=[1]) * x)", "sum(x / 3)"])
def test_float32_stays_float32_through_constant_only_nodes(text: str) -> None:
    plan = _expr(text)
    x = np.ones(3, np.float32)
    exe = plan.specialize({"x": (3,)}, ("x",), keep_values=True)
    vals = exe.forward({"x": dev(x)}, F32)
    # Every value of the forward pass (the seed slot is filled by backward).
    assert {host(v).dtype for v in vals if v is not None} == {np.dtype(np.float32)}
    vals = exe.backward(vals, dev(np.ones((), np.float32)))
    assert {host(v).dtype for v in vals if v is not None} == {np.dtype(np.float32)}
    assert host(exe.gradient(vals, "x")).dtype == np.float32
    r32 = execute(plan, {"x": x}, Query(dtype="float32"))
    r64 = execute(plan, {"x": x})
    np.testing.assert_allclose(r32.gradients["x"], r64.gradients["x"], rtol=1e-6)


def test_constants_keep_their_sign_of_zero() -> None:
    spec = _g([_n("a", "div", "x", 0.0), _n("b", "div", "x", -0.0), _n("f", "sub", "a", "b")])
    assert float(execute(_plan(spec), {"x": 1.0}).output) == np.inf


# --- validation errors --------------------------------------------------------------------


def _error(spec: dict[str, Any], kind: type = GraphError) -> Any:
    with pytest.raises(kind) as info:
        _plan(spec)
    return info.value


def test_unknown_op_suggests() -> None:
    e = _error(_g([_n("x2", "square", "x"), _n("f", "sigmod", "x2")]))
    assert e.node == "f" and e.loc == ("graph", "nodes", 1, "op")
    assert "did you mean 'sigmoid'" in e.detail and "'f'" in e.detail
    assert e.status == 422


def test_wrong_arity() -> None:
    e = _error(_g([_n("f", "add", "x")]))
    assert e.node == "f" and e.loc == ("graph", "nodes", 0, "args")
    assert "takes 2 args, got 1" in e.detail


def test_unknown_arg_is_not_an_implicit_input() -> None:
    e = _error(_g([_n("f", "add", "x", "zz")]))
    assert e.node == "f" and e.loc == ("graph", "nodes", 0, "args", 1) and "'zz'" in e.detail


def test_duplicate_ids() -> None:
    e = _error(_g([_n("f", "neg", "x"), _n("f", "exp", "x")]))
    assert e.node == "f" and e.loc == ("graph", "nodes", 1, "id") and "duplicate" in e.detail


def test_node_id_equal_to_input_name() -> None:
    e = _error(_g([_n("x", "neg", "x"), _n("f", "exp", "x")]))
    assert e.node == "x" and e.loc == ("graph", "nodes", 0, "id")
    assert "'x'" in e.detail and "input" in e.detail


def test_cycle_names_the_cycle() -> None:
    e = _error(_g([_n("a", "neg", "c"), _n("b", "neg", "a"), _n("c", "add", "b", "x"),
                   _n("f", "neg", "c")]))
    assert "cycle" in e.detail
    cycle = e.detail.split("cycle: ")[1].split(" -> ")
    assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
    assert e.node in {"a", "b", "c"} and e.loc[:2] == ("graph", "nodes")
    e = _error(_g([_n("f", "neg", "f")]))
    assert e.node == "f" and "f -> f" in e.detail


@pytest.mark.parametrize(("attrs", "fragment"), [
    ({"axes": 0}, "has no attr 'axes'"),
    ({"axis": "0"}, "attr 'axis'"),
    ({"axis": 1.0}, "attr 'axis'"),
    ({"keepdims": 1}, "attr 'keepdims'"),
    ({"axis": [0, 0]}, "repeats"),
])
def test_bad_attrs(attrs: dict[str, Any], fragment: str) -> None:
    e = _error(_g([_n("f", "sum", "x", **attrs)]))
    assert e.node == "f" and e.loc == ("graph", "nodes", 0, "attrs") and fragment in e.detail


def test_bad_attrs_of_other_kinds() -> None:
    e = _error(_g([_n("f", "hinge", "x", "y", margin="1")], inputs={"x": {}, "y": {}}))
    assert "margin" in e.detail
    e = _error(_g([_n("f", "reshape", "x", shape=[-1, -1])]))
    assert "shape" in e.detail
    e = _error(_g([_n("f", "softmax", "x", axis=None)]))
    assert "axis" in e.detail
    e = _error(_g([_n("f", "neg", "x", axis=0)]))
    assert "attrs: none" in e.detail


def test_shape_mismatch_names_the_node() -> None:
    spec = _g([_n("a", "neg", "x"), _n("f", "add", "a", "y")],
              inputs={"x": {"shape": [2, 3]}, "y": {"shape": [4]}})
    e = _error(spec)
    assert e.node == "f" and e.loc == ("graph", "nodes", 1)
    assert "(2, 3)" in e.detail and "(4,)" in e.detail
    # Without declared shapes the same error comes at run time, naming the same node.
    spec["inputs"] = {"x": {}, "y": {}}
    with pytest.raises(GraphError) as info:
        execute(_plan(spec), {"x": np.ones((2, 3)), "y": np.ones(4)})
    assert info.value.node == "f" and info.value.loc == ("graph", "nodes", 1)
    for bad in [_g([_n("f", "matmul", "x", "y")], {"x": {"shape": [2, 3]}, "y": {"shape": [2]}}),
                _g([_n("f", "sum", "x", axis=2)], {"x": {"shape": [2, 3]}}),
                _g([_n("f", "reshape", "x", shape=[4])], {"x": {"shape": [2, 3]}}),
                _g([_n("f", "transpose", "x", axes=[0, 0])], {"x": {"shape": [2, 3]}}),
                _g([_n("f", "mse", "x", "y")], {"x": {"shape": [2]}, "y": {"shape": [3]}}),
                _g([_n("f", "linear", "x", "w", "b")],
                   {"x": {"shape": [5, 4]}, "w": {"shape": [3, 4]}, "b": {"shape": [4]}})]:
        assert _error(bad).node == "f"


def test_declared_shape_must_match_values() -> None:
    plan = _plan(_g([_n("f", "sum", "x")], inputs={"x": {"shape": [3]}}))
    with pytest.raises(Unprocessable) as info:
        execute(plan, {"x": np.ones(4)})
    assert info.value.loc == ("values", "x")


def test_labels_misuse() -> None:
    # labels must be an input, not a node or a constant ...
    e = _error(_g([_n("n", "neg", "y"), _n("f", "softmax_cross_entropy", "x", "n")],
                  inputs={"x": {}, "y": {}}))
    assert e.node == "f" and e.loc == ("graph", "nodes", 1, "args", 1) and "labels" in e.detail
    e = _error(_g([_n("f", "hinge", "x", 1)]))
    assert e.node == "f" and e.loc == ("graph", "nodes", 0, "args", 1)
    # ... and not also used as a float tensor.
    e = _error(_g([_n("n", "sum", "y"), _n("l", "softmax_cross_entropy", "x", "y"),
                   _n("f", "add", "l", "n")], inputs={"x": {}, "y": {}}))
    assert e.loc == ("graph", "inputs", "y") and "'y'" in e.detail
    # Shapes: (batch, classes) scores with (batch,) labels.
    e = _error(_g([_n("f", "softmax_cross_entropy", "x", "y")],
                  inputs={"x": {"shape": [3, 4]}, "y": {"shape": [4]}}))
    assert e.node == "f" and "labels" in e.detail


@pytest.mark.filterwarnings("error")  # no "invalid value encountered in cast" on the way
@pytest.mark.parametrize(("labels", "fragment"), [
    ([0, 4, 1], "[0, 4)"), ([0, -1, 1], "[0, 4)"), ([0.0, 1.5, 2.0], "integers"),
    ([0, float("nan"), 1], "integers"), (["a", "b", "c"], "numeric"),
    ([0.0, 1e20, 1.0], "out of range"), (np.array([0, 2**64 - 1, 1], np.uint64), "out of range"),
    ([0, 2**63 - 1, 1], "[0, 4)"),
])
def test_bad_label_values(labels: list[Any], fragment: str) -> None:
    for op in ("softmax_cross_entropy", "hinge"):
        plan = _expr(f"{op}(s, y)")
        with pytest.raises(Unprocessable) as info:
            execute(plan, {"s": np.zeros((3, 4)), "y": labels})
        assert info.value.loc == ("values", "y") and fragment in info.value.detail


def test_integer_valued_float_labels_are_accepted() -> None:
    plan = _expr("softmax_cross_entropy(s, y)")
    a = execute(plan, {"s": np.eye(3), "y": [0.0, 2.0, 1.0]})
    b = execute(plan, {"s": np.eye(3), "y": [0, 2, 1]})
    assert float(a.output) == float(b.output)


def test_values_errors() -> None:
    plan = _expr("x * y")
    with pytest.raises(Unprocessable) as info:
        execute(plan, {"x": 1.0})
    assert info.value.loc == ("values", "y")
    with pytest.raises(Unprocessable) as info:
        execute(plan, {"x": 1.0, "y": 1.0, "z": 1.0})
    assert info.value.loc == ("values", "z")
    with pytest.raises(Unprocessable) as info:
        execute(plan, {"x": [[1.0, 2.0], [3.0]], "y": 1.0})
    assert info.value.loc == ("values", "x")
    with pytest.raises(Unprocessable):
        execute(plan, {"x": "1.0", "y": 1.0})


def test_output_must_exist() -> None:
    e = _error(_g([_n("f", "neg", "x")], output="g"))
    assert e.loc == ("graph", "output")


@pytest.mark.parametrize(("spec", "loc"), [
    ({"inputs": {}, "nodes": [], "output": "f", "extra": 1}, ("graph", "extra")),
    ({"inputs": [], "nodes": [], "output": "f"}, ("graph", "inputs")),
    ({"inputs": {"x": {"shape": [-1]}}, "nodes": [], "output": "x"},
     ("graph", "inputs", "x", "shape")),
    ({"inputs": {"1x": {}}, "nodes": [], "output": "f"}, ("graph", "inputs", "1x")),
    ({"inputs": {}, "nodes": {}, "output": "f"}, ("graph", "nodes")),
    ({"inputs": {}, "nodes": [{"id": "f", "op": "neg", "args": [True]}], "output": "f"},
     ("graph", "nodes", 0, "args", 0)),
    ({"inputs": {}, "nodes": [{"id": "f", "op": "neg", "args": [1e400]}], "output": "f"},
     ("graph", "nodes", 0, "args", 0)),
    ({"inputs": {}, "nodes": [{"id": "f", "op": "neg", "args": [1], "x": 1}], "output": "f"},
     ("graph", "nodes", 0, "x")),
    ({"inputs": {"x": {"shap": [2]}}, "nodes": [], "output": "x"},
     ("graph", "inputs", "x", "shap")),
    ({"inputs": {}, "nodes": [{"id": "__class__ x", "op": "neg", "args": [1]}],
      "output": "f"}, ("graph", "nodes", 0, "id")),
])
def test_graph_form_errors(spec: dict[str, Any], loc: tuple[Any, ...]) -> None:
    with pytest.raises(GraphError) as info:
        graph_from_dict(spec)
    assert info.value.loc == loc


# --- limits -------------------------------------------------------------------------------


def test_billion_element_intermediate_is_refused_fast_without_allocating() -> None:
    plan = _expr("sum(a + b)")
    a, b = np.zeros((31_623, 1)), np.zeros((1, 31_623))
    tracemalloc.start()
    try:
        start = time.perf_counter()
        with pytest.raises(LimitExceeded) as info:
            execute(plan, {"a": a, "b": b})
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 0.5
    assert peak < 10 * 2**20  # a 10^9 float64 tensor would be 8 GB
    e = info.value
    assert e.status == 413 and e.limit == "max_tensor_elements"
    assert e.actual == 31_623**2 and "'%1'" in e.detail and e.loc == ("graph", "nodes", 0)


def test_billion_element_intermediate_with_declared_shapes_fails_at_compile() -> None:
    spec = _g([_n("big", "matmul", "a", "b"), _n("f", "sum", "big")],
              inputs={"a": {"shape": [100_000, 1]}, "b": {"shape": [1, 10_000]}})
    start = time.perf_counter()
    e = _error(spec, LimitExceeded)
    assert time.perf_counter() - start < 0.5
    assert e.limit == "max_tensor_elements" and e.actual == 10**9 and "'big'" in e.detail
    assert e.loc == ("graph", "nodes", 0)


def test_flop_and_total_limits() -> None:
    plan = _expr("sum(A @ B)")
    values = {"A": np.ones((64, 64)), "B": np.ones((64, 64))}
    with pytest.raises(LimitExceeded) as info:
        execute(plan, values, limits=Limits(max_flops=1000))
    assert info.value.limit == "max_flops"
    with pytest.raises(LimitExceeded) as info:
        execute(plan, values, limits=Limits(max_total_elements=1000))
    assert info.value.limit == "max_total_elements"
    with pytest.raises(LimitExceeded) as info:
        execute(plan, values, limits=Limits(max_tensor_elements=1000))
    assert info.value.limit == "max_tensor_elements" and info.value.loc == ("values", "A")


def test_max_nodes() -> None:
    nodes = [_n(f"n{i}", "neg", f"n{i - 1}" if i else "x") for i in range(11)]
    with pytest.raises(LimitExceeded) as info:
        _plan(_g(nodes, output="n10"), limits=Limits(max_nodes=10))
    assert info.value.limit == "max_nodes" and info.value.actual == 11
    assert info.value.status == 413
    assert len(_plan(_g(nodes, output="n10"), limits=Limits(max_nodes=11)).nodes) == 11


def test_jacobian_limits() -> None:
    plan = _expr("W @ x")
    values = {"W": np.ones((50, 40)), "x": np.ones(40)}
    with pytest.raises(LimitExceeded) as info:
        execute(plan, values, Query(jacobian=True), limits=Limits(max_jacobian_rows=49))
    assert info.value.limit == "max_jacobian_rows" and info.value.loc == ("jacobian",)
    with pytest.raises(LimitExceeded) as info:
        execute(plan, values, Query(jacobian=True),
                limits=Limits(max_jacobian_elements=50 * 2040 - 1))
    assert info.value.limit == "max_jacobian_elements" and info.value.actual == 50 * 2040
    assert execute(plan, values, Query(jacobian=True),
                   limits=Limits(max_jacobian_elements=50 * 2040)).jacobians["W"].shape == \
        (50, 50, 40)
    with pytest.raises(LimitExceeded) as info:
        execute(plan, values, Query(jacobian=True), limits=Limits(max_flops=10_000))
    assert info.value.limit == "max_flops"


def test_check_limits() -> None:
    plan = _expr("sum(W @ x)")
    values = {"W": np.ones((50, 40)), "x": np.ones(40)}
    with pytest.raises(LimitExceeded) as info:
        execute(plan, values, Query(check=True), limits=Limits(max_check_elements=2039))
    assert info.value.limit == "max_check_elements" and info.value.loc == ("check",)
    r = execute(plan, values, Query(check=True, wrt=["x"]), limits=Limits(max_check_elements=40))
    assert set(r.check) == {"x"}
    with pytest.raises(LimitExceeded) as info:
        execute(plan, values, Query(check=True, wrt=["x"]),
                limits=Limits(max_check_elements=40, max_flops=100_000))
    assert info.value.limit == "max_flops" and info.value.loc == ("check",)


def test_forward_only_needs_no_upstream():
    """wrt: [] asks for no gradient, so a non-scalar output needs no upstream."""
    plan = compile_graph(parse_expression("2 * x", REGISTRY).graph, REGISTRY)
    r = execute(plan, {"x": np.array([1.0, 2.0])}, Query(wrt=[]))
    assert r.output.tolist() == [2.0, 4.0] and r.gradients == {}
