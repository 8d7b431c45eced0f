"""The batched, per_example and directions options on a few graphs, in float64: each equal
to the separate requests it replaces; the Jacobian and Hessian block drivers equal the row
loops they replaced; every bad input a 422 (413 for B × parameters) naming the field."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.engine import REGISTRY, Query, backend, compile_graph, execute, parse_expression
from service.engine.compiler import Want
from service.engine.derivatives import hessian, jacobians
from service.engine.limits import DEFAULT_LIMITS
from service.errors import ProblemError

EXPRS = ["sum(tanh(W @ x + b))", "softmax(W @ x + b)",
         "logsumexp(W * x + reshape(b, shape=[3, 1]), axis=1)", "sum(sigmoid(W @ x) * b)"]
RNG = np.random.default_rng(11)


def _plan(text: str) -> Any:
    return compile_graph(parse_expression(text, REGISTRY).graph, REGISTRY)


def _vals() -> dict[str, Any]:
    return {"W": RNG.standard_normal((3, 4)), "x": RNG.standard_normal(4),
            "b": RNG.standard_normal(3)}


def _close(a: Any, b: Any) -> None:
    np.testing.assert_allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-9,
                               atol=1e-11)


@pytest.mark.parametrize("text", EXPRS)
def test_directions_equal_k_separate_jvps_and_hvps(text: str) -> None:
    plan, v, k = _plan(text), _vals(), 5
    out = np.shape(execute(plan, v, Query(wrt=[])).output)
    up = None if out == () else RNG.standard_normal(out)
    tx, tw = RNG.standard_normal((k, 4)), RNG.standard_normal((k, 3, 4))
    hv = RNG.standard_normal((k, 4))
    res = execute(plan, v, Query(tangents={"x": tx, "W": tw}, hvp={"x": hv}, wrt=["x", "W"],
                                 upstream=up, directions=k))
    assert np.shape(res.jvp) == (k, *out) and res.hvp["x"].shape == (k, 4)
    for i in range(k):
        one = execute(plan, v, Query(tangents={"x": tx[i], "W": tw[i]}, hvp={"x": hv[i]},
                                     wrt=["x", "W"], upstream=up))
        _close(res.jvp[i], one.jvp)
        _close(res.hvp["x"][i], one.hvp["x"])
        _close(res.hvp["W"][i], one.hvp["W"])
    plain = execute(plan, v, Query(wrt=["x", "W"], upstream=up))
    _close(res.output, plain.output)
    for n in ("x", "W"):
        _close(res.gradients[n], plain.gradients[n])


@pytest.mark.parametrize("text", EXPRS)
def test_jacobian_and_hessian_blocks_equal_the_row_loops(text: str) -> None:
    plan, v = _plan(text), _vals()
    wrt = ("W", "b", "x")
    shapes = {n: np.shape(a) for n, a in v.items()}
    r = execute(plan, v, Query(jacobian=True))
    be = backend.current()  # the row loops take the engine namespace's arrays and dtype
    f64, dv = be.xp.float64, {n: be.to_device(np.asarray(a, dtype=np.float64))
                              for n, a in v.items()}
    old = {n: be.to_host(a) for n, a in jacobians(
        plan.specialize(shapes, want=Want(wrt=wrt, repeat="seed")), dv, wrt, f64).items()}
    for n in wrt:
        _close(r.jacobians[n], old[n])
    out = np.shape(r.output)
    up = None if out == () else RNG.standard_normal(out)
    h = execute(plan, v, Query(hessian=True, upstream=up)).hessian
    old_h = hessian(plan.specialize(shapes, want=Want(wrt=wrt, hvp=wrt, repeat="hvp")), dv,
                    wrt, None if up is None else be.to_device(up), f64)
    old_h = {a: {b: be.to_host(x) for b, x in row.items()} for a, row in old_h.items()}
    for a in wrt:
        for b in wrt:
            _close(h[a][b], old_h[a][b])


@pytest.mark.parametrize("text", EXPRS)
def test_per_example_jacobian_hessian_jvp(text: str) -> None:
    plan, n_ex = _plan(text), 4
    shared = _vals()
    xs = RNG.standard_normal((n_ex, 4))
    out = np.shape(execute(plan, shared, Query(wrt=[])).output)
    ups = RNG.standard_normal((n_ex, *out))
    tx = RNG.standard_normal((n_ex, 4))
    values = {**shared, "x": xs}
    up = None if out == () else ups
    jac = execute(plan, values, Query(batched=["x"], jacobian=True, upstream=up))
    hes = execute(plan, values, Query(batched=["x"], hessian=True, upstream=up))
    jvp = execute(plan, values, Query(batched=["x"], tangents={"x": tx}, upstream=up))
    for i in range(n_ex):
        one_v = {**shared, "x": xs[i]}
        u = None if out == () else ups[i]
        one = execute(plan, one_v, Query(jacobian=True, hessian=True, tangents={"x": tx[i]},
                                         upstream=u))
        for n in ("W", "b", "x"):
            _close(jac.jacobians[n][i], one.jacobians[n])
            for m in ("W", "b", "x"):
                _close(hes.hessian[n][m][i], one.hessian[n][m])
        _close(jvp.jvp[i], one.jvp)


def test_per_example_jacobian_of_a_vector_output_needs_no_upstream() -> None:
    plan, shared = _plan("softmax(W @ x + b)"), _vals()
    xs = RNG.standard_normal((3, 4))
    res = execute(plan, {**shared, "x": xs}, Query(batched=["x"], jacobian=True))
    assert res.gradients == {} and res.jacobians["x"].shape == (3, 3, 4)
    for i in range(3):
        one = execute(plan, {**shared, "x": xs[i]}, Query(jacobian=True))
        _close(res.jacobians["x"][i], one.jacobians["x"])
        _close(res.jacobians["W"][i], one.jacobians["W"])


def test_batched_directions_put_k_outermost() -> None:
    plan, n_ex, k = _plan("softmax(W @ x + b)"), 3, 2
    shared = _vals()
    xs, tx = RNG.standard_normal((n_ex, 4)), RNG.standard_normal((k, n_ex, 4))
    ups = RNG.standard_normal((n_ex, 3))
    res = execute(plan, {**shared, "x": xs}, Query(batched=["x"], directions=k, upstream=ups,
                                                   tangents={"x": tx}))
    assert res.jvp.shape == (k, n_ex, 3)
    for j in range(k):
        for i in range(n_ex):
            one = execute(plan, {**shared, "x": xs[i]}, Query(tangents={"x": tx[j, i]},
                                                             upstream=ups[i]))
            _close(res.jvp[j, i], one.jvp)


def _refused(plan: Any, values: dict[str, Any], query: Query, status: int = 422) -> Any:
    with pytest.raises(ProblemError) as err:
        execute(plan, values, query)
    assert err.value.status == status, err.value.detail
    return err.value


def test_bad_input_names_the_field() -> None:
    plan = _plan("sum(tanh(W @ x + b))")
    v = _vals()
    two = {**v, "x": RNG.standard_normal((2, 4)), "b": RNG.standard_normal((3, 3))}
    e = _refused(plan, two, Query(batched=["x", "b"]))
    assert e.loc == ("batched", 1) and "same leading size" in str(e.detail)
    e = _refused(plan, {**v, "x": 1.0}, _q(batched=["x"]))
    assert e.loc == ("batched", 0) and "scalar" in str(e.detail)
    assert _refused(plan, v, Query(per_example=True)).loc == ("per_example",)
    assert _refused(plan, v, Query(directions=3)).loc == ("directions",)
    e = _refused(plan, v, Query(directions=3, tangents={"x": RNG.standard_normal((2, 4))}))
    assert e.loc == ("tangents", "x")
    plan2 = _plan("tanh(W @ x + b)")
    e = _refused(plan2, {**v, "x": RNG.standard_normal((2, 4))},
                 Query(batched=["x"], upstream=RNG.standard_normal((3, 3))))
    assert e.loc == ("upstream",)
    assert _refused(plan, v, Query(batched=["nope"])).loc == ("batched", 0)


def _q(**kw: Any) -> Query:
    return Query(**kw)


def test_b_times_parameters_over_the_tensor_limit_is_a_413_naming_the_product() -> None:
    plan = _plan("sum(tanh(W @ x + b))")
    big = DEFAULT_LIMITS.max_tensor_elements // 12 + 1
    v = {**_vals(), "x": np.zeros((big, 4))}
    with pytest.raises(ProblemError) as err:
        execute(plan, v, Query(batched=["x"], per_example=True, wrt=["W"]))
    assert err.value.status == 413 and err.value.loc == ("per_example",)
    assert f"{big} × 12" in str(err.value.detail)


def test_batched_labels_answer_the_float_inputs_gradients_only() -> None:
    from service.engine import graph_from_dict

    spec = {"inputs": {"s": {"shape": [4, 3]}, "y": {"shape": [4]}},
            "nodes": [{"id": "l", "op": "softmax_cross_entropy", "args": ["s", "y"]}],
            "output": "l"}
    plan = compile_graph(graph_from_dict(spec), REGISTRY)
    s, y = RNG.standard_normal((2, 4, 3)), np.array([[0, 1, 2, 1], [2, 2, 0, 1]])
    res = execute(plan, {"s": s, "y": y}, Query(batched=["s", "y"]))
    assert set(res.gradients) == {"s"}
    for i in range(2):
        _close(res.gradients["s"][i], execute(plan, {"s": s[i], "y": y[i]}).gradients["s"])
    assert _refused(plan, {"s": s, "y": y}, Query(batched=[])).loc == ("batched",)
    e = _refused(plan, {"s": s, "y": y + 3}, Query(batched=["s", "y"]))
    assert e.loc == ("values", "y")


@pytest.mark.parametrize("kind", ["softmax_cross_entropy", "hinge", "mse"])
def test_batched_loss_is_each_examples_own(kind: str) -> None:
    shared = _vals()
    xs = RNG.standard_normal((4, 5, 4))  # 4 examples of a batch of 5 rows
    plan = _plan("matmul(x, transpose(W)) + b")
    targets = (RNG.integers(0, 3, (4, 5)) if kind != "mse" else RNG.standard_normal((4, 5, 3)))
    res = execute(plan, {**shared, "x": xs}, Query(batched=["x"], loss=(kind, targets),
                                                   per_example=True))
    assert np.shape(res.loss) == (4,) and res.output.shape == (4, 5, 3)
    for i in range(4):
        one = execute(plan, {**shared, "x": xs[i]}, Query(loss=(kind, targets[i])))
        _close(res.loss[i], one.loss)
        _close(res.output[i], one.output)
        for n in ("W", "b", "x"):
            _close(res.gradients[n][i], one.gradients[n])
    e = _refused(plan, {**shared, "x": xs}, Query(batched=["x"], loss=(kind, targets[:2])))
    assert e.loc == ("loss", "targets")
