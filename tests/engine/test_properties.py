"""Hypothesis: random DAGs over smooth ops; the engine's gradients equal finite differences.

Each example draws a few inputs with shapes that broadcast in different ways, then nodes
whose op, arguments (earlier nodes, inputs or constants) and attrs are random; an op whose
shape rule refuses its drawn arguments is replaced by ``tanh`` of the first one. Only
smooth ops take part, so central differences are exact to ~1e-10 and the comparison can be
tight (the kinks and ties of relu/abs/max have their own tests in test_ops.py).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from service.engine import REGISTRY, Query, compile_graph, execute, graph_from_dict
from service.engine.registry import ShapeError
from tests.engine.numeric import assert_grad_close, forward, numeric_grad

SHAPES = [(), (3,), (2, 1), (2, 3), (1, 3)]
UNARY = ["neg", "tanh", "sin", "cos", "sigmoid", "square", "exp", "identity"]
BINARY = ["add", "sub", "mul", "matmul"]
REDUCTIONS = ["sum", "mean", "logsumexp"]
OTHERS = ["softmax", "log_softmax", "transpose", "reshape"]

SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def _attrs(data: st.DataObject, op: str, shape: tuple[int, ...]) -> dict[str, Any]:
    ndim = len(shape)
    if op in REDUCTIONS:
        axis = data.draw(st.sampled_from([None, *range(-ndim, ndim)]), label="axis")
        return {"axis": axis, "keepdims": data.draw(st.booleans(), label="keepdims")}
    if op in ("softmax", "log_softmax") and ndim:
        return {"axis": data.draw(st.integers(-ndim, ndim - 1), label="axis")}
    if op == "transpose":
        perm = data.draw(st.permutations(range(ndim)), label="axes")
        return {"axes": perm} if data.draw(st.booleans()) else {}
    if op == "reshape":
        size = int(np.prod(shape, dtype=int))
        return {"shape": data.draw(st.sampled_from([[-1], [size, 1], [1, -1], []][: 4 if size == 1
                                                                                   else 3]),
                                   label="shape")}
    return {}


def _fits(op: str, arg_shapes: list[tuple[int, ...]]) -> bool:
    try:
        REGISTRY.get(op).shape(*arg_shapes)
    except ShapeError:
        return False
    return True


@st.composite
def dags(draw: Any) -> tuple[dict[str, Any], dict[str, tuple[int, ...]]]:
    """A graph spec whose every node is on a path to the output, and its input shapes."""
    data = draw(st.data())
    n_inputs = draw(st.integers(1, 3), label="inputs")
    shapes: dict[str, tuple[int, ...]] = {
        f"x{i}": draw(st.sampled_from(SHAPES), label=f"shape x{i}") for i in range(n_inputs)}
    names = list(shapes)
    nodes: list[dict[str, Any]] = []

    def emit(op: str, args: list[Any], attrs: dict[str, Any], out: tuple[int, ...]) -> str:
        nid = f"n{len(nodes)}"
        nodes.append({"id": nid, "op": op, "args": args, **({"attrs": attrs} if attrs else {})})
        shapes[nid] = tuple(out)
        names.append(nid)
        return nid

    for _ in range(draw(st.integers(1, 8), label="nodes")):
        # Binary ops make the interesting DAGs (fan-in, broadcasting): draw them most.
        kind = draw(st.sampled_from([BINARY, BINARY, UNARY, REDUCTIONS, OTHERS]), label="kind")
        op = draw(st.sampled_from(kind), label="op")
        # Prefer recent values, so that the DAG gets deep and not only wide.
        pool = list(dict.fromkeys(names[-4:] + names[:n_inputs]))
        args: list[Any] = [draw(st.sampled_from(pool), label="arg")]
        if op in BINARY:
            fitting = [n for n in pool if _fits(op, [shapes[args[0]], shapes[n]])]
            if op != "matmul" and (not fitting or draw(st.integers(0, 4)) == 0):
                args.append(draw(st.sampled_from([0.5, -1.5, 2.0]), label="constant"))
            elif fitting:
                args.append(draw(st.sampled_from(fitting), label="arg"))
            else:
                op = "tanh"
        arg_shapes = [shapes[a] if isinstance(a, str) else () for a in args]
        attrs = _attrs(data, op, arg_shapes[0])
        try:
            out = REGISTRY.get(op).shape(*arg_shapes, **REGISTRY.get(op).normalize_attrs(attrs))
        except ShapeError:  # e.g. softmax of a 0-d value
            op, args, attrs = "tanh", args[:1], {}
            out = arg_shapes[0]
        emit(op, args, attrs, out)

    # Every value nobody reads joins the output (as its sum), so no node is pruned.
    used = {a for n in nodes for a in n["args"] if isinstance(a, str)}
    output = names[-1]
    for nid in names[n_inputs:-1]:
        if nid not in used:
            total = emit("sum", [nid], {}, ())
            output = emit("add", [output, total], {}, shapes[output])
    spec = {"inputs": {n: {"shape": list(shapes[n])} for n in names[:n_inputs]},
            "nodes": nodes, "output": output}
    return spec, {n: shapes[n] for n in names[:n_inputs]}


def _values(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {n: rng.uniform(-1.0, 1.0, s) for n, s in shapes.items()}


def dag_case(dag: Any, seed: int) -> tuple[Any, dict[str, np.ndarray], np.ndarray]:
    """A drawn DAG compiled, its values from ``seed`` and its forward output; examples
    whose output is not finite or not small are assumed away (exp of a square of a sum can
    get large; differences are exact only on moderate values)."""
    spec, shapes = dag
    plan = compile_graph(graph_from_dict(spec), REGISTRY)
    values = _values(shapes, seed)
    out = np.asarray(forward(plan, values))
    assume(np.all(np.isfinite(out)) and np.max(np.abs(out), initial=0.0) < 30)
    return plan, values, out


@SETTINGS
@given(dag=dags(), seed=st.integers(0, 2**16))
def test_random_dag_gradients_match_finite_differences(dag: Any, seed: int) -> None:
    spec, shapes = dag
    plan, values, out = dag_case(dag, seed)
    upstream = None if out.shape == () else np.random.default_rng(seed + 1).standard_normal(
        out.shape)
    weights = np.ones(()) if upstream is None else upstream
    result = execute(plan, values, Query(upstream=upstream, trace=True))
    trace_values = [np.max(np.abs(t["value"]), initial=0.0) for t in result.trace]
    assume(max(trace_values, default=0.0) < 30)
    np.testing.assert_allclose(result.output, out, rtol=1e-15)

    for name in shapes:
        def objective(x: np.ndarray, name: str = name) -> float:
            return float(np.sum(weights * forward(plan, {**values, name: x})))

        assert result.gradients[name].shape == shapes[name]
        assert_grad_close(result.gradients[name], numeric_grad(objective, values[name]),
                          f"d/d{name} of {spec['nodes']}")


@settings(SETTINGS, max_examples=30)
@given(dag=dags(), seed=st.integers(0, 2**16), order=st.integers(0, 1000))
def test_random_dag_invariants(dag: Any, seed: int, order: int) -> None:
    """Graph id ignores node order; gradient = upstream · Jacobian; trace agrees."""
    spec, shapes = dag
    plan = compile_graph(graph_from_dict(spec), REGISTRY)
    shuffled = {**spec, "nodes": random.Random(order).sample(spec["nodes"], len(spec["nodes"]))}
    assert compile_graph(graph_from_dict(shuffled), REGISTRY).graph_id == plan.graph_id

    _, values, out = dag_case(dag, seed)
    upstream = np.random.default_rng(seed).standard_normal(out.shape)
    result = execute(plan, values, Query(upstream=upstream, jacobian=True, trace=True))
    for name, shape in shapes.items():
        jac = result.jacobians[name]
        assert jac.shape == out.shape + shape
        via_jacobian = np.tensordot(upstream, jac, axes=out.ndim)
        np.testing.assert_allclose(result.gradients[name], via_jacobian, rtol=1e-10,
                                   atol=1e-12)
    # The output's trace record carries the upstream; every record has its node's shape.
    assert np.array_equal(result.trace[-1]["grad"], upstream)
    for record in result.trace:
        assert np.shape(record["value"]) == tuple(record["shape"])
        assert np.shape(record["grad"]) == tuple(record["shape"])
