"""The lecture's three examples (docs/api.md §4, SEED.md), exact, in every front-end form."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from service.engine import (
    REGISTRY,
    Query,
    compile_graph,
    execute,
    graph_from_dict,
    parse_expression,
)

TIGHT = {"rel": 1e-12, "abs": 1e-12}


def _expr(text: str, values: dict[str, Any], **kw: Any) -> Any:
    plan = compile_graph(parse_expression(text, REGISTRY).graph, REGISTRY)
    return execute(plan, values, Query(**kw))


def _spec(spec: dict[str, Any], values: dict[str, Any], **kw: Any) -> Any:
    return execute(compile_graph(graph_from_dict(spec), REGISTRY), values, Query(**kw))


def _close(result: Any, output: Any, gradients: dict[str, Any]) -> None:
    assert np.asarray(result.output).tolist() == pytest.approx(output, **TIGHT)
    assert set(result.gradients) == set(gradients)
    for name, expected in gradients.items():
        got = np.asarray(result.gradients[name])
        assert got.shape == np.shape(expected), name
        assert got.ravel().tolist() == pytest.approx(np.ravel(expected).tolist(), **TIGHT), name


# --- f(x, y, z) = (x + y) * z ---------------------------------------------------------------

SIMPLE_VALUES = {"x": -2.0, "y": 5.0, "z": -4.0}
SIMPLE_GRADS = {"x": -4.0, "y": -4.0, "z": 3.0}
SIMPLE_SPEC = {
    "inputs": {"x": {"shape": []}, "y": {"shape": []}, "z": {"shape": []}},
    "nodes": [{"id": "f", "op": "mul", "args": ["q", "z"]},
              {"id": "q", "op": "add", "args": ["x", "y"]}],
    "output": "f",
}


def test_simple_expression() -> None:
    _close(_expr("(x + y) * z", SIMPLE_VALUES), -12.0, SIMPLE_GRADS)


def test_simple_graph_spec() -> None:
    _close(_spec(SIMPLE_SPEC, SIMPLE_VALUES), -12.0, SIMPLE_GRADS)


def test_simple_trace_shows_local_times_upstream() -> None:
    result = _expr("q = x + y; f = q * z", SIMPLE_VALUES, trace=True)
    rows = {r["id"]: r for r in result.trace}
    assert [r["id"] for r in result.trace] == ["q", "f"]
    assert float(rows["q"]["value"]) == 3.0 and float(rows["q"]["grad"]) == -4.0
    assert float(rows["f"]["value"]) == -12.0 and float(rows["f"]["grad"]) == 1.0
    assert rows["f"]["op"] == "mul" and rows["f"]["args"] == ["q", "z"]


# --- sigmoid --------------------------------------------------------------------------------

SIG_VALUES = {"w0": 2.0, "x0": -1.0, "w1": -3.0, "x1": -2.0, "w2": -3.0}


def _sigmoid_reference() -> tuple[float, dict[str, float]]:
    z = 2.0 * -1.0 + -3.0 * -2.0 + -3.0  # = 1
    s = 1.0 / (1.0 + math.exp(-z))
    d = (1.0 - s) * s
    return s, {"w0": -1.0 * d, "x0": 2.0 * d, "w1": -2.0 * d, "x1": -3.0 * d, "w2": d}


def test_sigmoid_reference_matches_the_lecture() -> None:
    out, grads = _sigmoid_reference()
    assert round(out, 4) == 0.7311
    assert {k: round(v, 4) for k, v in grads.items()} == {
        "w0": -0.1966, "x0": 0.3932, "w1": -0.3932, "x1": -0.5898, "w2": 0.1966}


def test_sigmoid_expression() -> None:
    out, grads = _sigmoid_reference()
    _close(_expr("1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))", SIG_VALUES), out, grads)
    # The documented response values of docs/api.md §4.
    r = _expr("1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))", SIG_VALUES)
    assert float(r.output) == pytest.approx(0.7310585786300049, **TIGHT)
    assert float(r.gradients["w0"]) == pytest.approx(-0.19661193324148185, **TIGHT)
    assert float(r.gradients["x0"]) == pytest.approx(0.3932238664829637, **TIGHT)


GATES_SPEC = {
    "inputs": {n: {"shape": []} for n in SIG_VALUES},
    "nodes": [
        {"id": "a", "op": "mul", "args": ["w0", "x0"]},
        {"id": "b", "op": "mul", "args": ["w1", "x1"]},
        {"id": "c", "op": "add", "args": ["a", "b"]},
        {"id": "d", "op": "add", "args": ["c", "w2"]},
        {"id": "e", "op": "mul", "args": ["d", -1]},
        {"id": "f", "op": "exp", "args": ["e"]},
        {"id": "g", "op": "add", "args": ["f", 1]},
        {"id": "h", "op": "reciprocal", "args": ["g"]},
    ],
    "output": "h",
}
SIGMOID_GATE_SPEC = {
    "inputs": {n: {} for n in SIG_VALUES},
    "nodes": [
        {"id": "a", "op": "mul", "args": ["w0", "x0"]},
        {"id": "b", "op": "mul", "args": ["w1", "x1"]},
        {"id": "d", "op": "add", "args": ["c", "w2"]},
        {"id": "c", "op": "add", "args": ["a", "b"]},
        {"id": "s", "op": "sigmoid", "args": ["d"]},
    ],
    "output": "s",
}


@pytest.mark.parametrize("spec", [GATES_SPEC, SIGMOID_GATE_SPEC], ids=["gates", "sigmoid-op"])
def test_sigmoid_graph_spec(spec: dict[str, Any]) -> None:
    out, grads = _sigmoid_reference()
    _close(_spec(spec, SIG_VALUES), out, grads)


def test_sigmoid_gate_by_gate_equals_one_sigmoid_gate() -> None:
    gates = _expr("1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))", SIG_VALUES)
    one = _expr("sigmoid(w0*x0 + w1*x1 + w2)", SIG_VALUES)
    assert float(one.output) == pytest.approx(float(gates.output), **TIGHT)
    for n in SIG_VALUES:
        assert float(one.gradients[n]) == pytest.approx(float(gates.gradients[n]), **TIGHT)
    # The sigmoid gate's local gradient (1 - s) * s, times upstream 1, reaches w2 unchanged.
    s = float(one.output)
    assert float(one.gradients["w2"]) == pytest.approx((1 - s) * s, **TIGHT)


def test_sigmoid_trace_gate_by_gate() -> None:
    r = _spec(GATES_SPEC, SIG_VALUES, trace=True)
    rows = {t["id"]: (float(t["value"]), float(t["grad"])) for t in r.trace}
    # CS231n's figure: values and gradients on every wire, local gradient times upstream.
    e = math.exp(-1.0)
    dg = -1.0 / (1.0 + e) ** 2  # d(1/g)/dg
    dd = -(dg * e)  # through exp, then through * -1
    expected = {"a": (-2.0, dd), "b": (6.0, dd), "c": (4.0, dd), "d": (1.0, dd),
                "e": (-1.0, -dd), "f": (e, dg), "g": (1.0 + e, dg),
                "h": (1.0 / (1.0 + e), 1.0)}
    assert round(dg, 2) == -0.53 and round(dd, 2) == 0.20
    for nid, (value, grad) in expected.items():
        assert rows[nid][0] == pytest.approx(value, **TIGHT), nid
        assert rows[nid][1] == pytest.approx(grad, **TIGHT), nid


# --- f(x, W) = ||W x||^2 --------------------------------------------------------------------

W = [[0.1, 0.5], [-0.3, 0.8]]
X = [0.2, 0.4]
VEC_GRADS = {"W": [[0.088, 0.176], [0.104, 0.208]], "x": [-0.112, 0.636]}
VEC_SPEC = {
    "inputs": {"W": {"shape": [2, 2]}, "x": {"shape": [2]}},
    "nodes": [
        {"id": "q", "op": "matmul", "args": ["W", "x"]},
        {"id": "q2", "op": "square", "args": ["q"]},
        {"id": "f", "op": "sum", "args": ["q2"]},
    ],
    "output": "f",
}


@pytest.mark.parametrize("text", ["sum((W @ x) ** 2)", "q = W @ x; f = sum(q ** 2)",
                                  "q = W @ x\nf = sum(square(q))"])
def test_vectorized_expression(text: str) -> None:
    _close(_expr(text, {"W": W, "x": X}), 0.116, VEC_GRADS)


def test_vectorized_graph_spec() -> None:
    _close(_spec(VEC_SPEC, {"W": W, "x": X}), 0.116, VEC_GRADS)


@pytest.mark.parametrize("form", ["expression", "spec"])
def test_vectorized_trace_of_q(form: str) -> None:
    values = {"W": np.array(W), "x": np.array(X)}
    if form == "expression":
        r = _expr("q = W @ x; f = sum(q ** 2)", values, trace=True)
    else:
        r = _spec(VEC_SPEC, values, trace=True)
    q = next(t for t in r.trace if t["id"] == "q")
    assert q["op"] == "matmul" and q["args"] == ["W", "x"] and q["shape"] == [2]
    assert q["value"].tolist() == pytest.approx([0.22, 0.26], **TIGHT)
    assert q["grad"].tolist() == pytest.approx([0.44, 0.52], **TIGHT)
    # The shapes decide the order of the products: dW = dq x^T, dx = W^T dq.
    np.testing.assert_allclose(r.gradients["W"], np.outer(q["grad"], values["x"]), rtol=1e-15)
    np.testing.assert_allclose(r.gradients["x"], values["W"].T @ q["grad"], rtol=1e-15)


def test_vectorized_float32() -> None:
    r = _expr("sum((W @ x) ** 2)", {"W": W, "x": X}, dtype="float32")
    assert r.output.dtype == np.float32
    assert float(r.output) == pytest.approx(0.116, rel=1e-6)
    assert r.gradients["W"].dtype == np.float32
    np.testing.assert_allclose(r.gradients["W"], VEC_GRADS["W"], rtol=1e-6)
