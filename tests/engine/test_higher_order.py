"""Second derivatives and forward mode, generated from the op registry (float64).

For every op and every case of ``test_ops.DOMAINS``:

- the HVP (reverse over reverse on the joint graph) against central differences of the
  engine's exact gradient along ``v``;
- the JVP (the transpose of the VJP) against central differences of the forward along ``t``.

Then random DAGs (hypothesis): ``hvp`` equals the Hessian times ``v``, ``jvp`` equals the
Jacobian times ``t``, and the Hessian is symmetric. And the executor never reads a slot its
liveness analysis freed, for every op in every position of a deeper graph.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from service.engine import (
    REGISTRY,
    Query,
    compile_graph,
    compiler,
    execute,
    graph_from_dict,
    parse_expression,
)
from service.engine.compiler import Want, run_steps
from tests.engine.numeric import dev, forward
from tests.engine.test_ops import CASES, DOMAINS, Case, L, _instance
from tests.engine.test_properties import SETTINGS, dag_case, dags

STEP = 1e-3
KINKED = {"relu", "abs", "maximum", "minimum", "max", "min", "hinge",
          "leaky_relu", "clip", "sign", "floor", "ceil", "norm", "max_pool2d"}
# Kinked, but curved between the kinks (the 2-norm away from 0): their Hv is checked against
# differences like any smooth op's (the test domains keep away from the kinks).
CURVED_KINKED = {"norm"}


def _directional(f: Any, x: dict[str, np.ndarray], d: dict[str, np.ndarray]) -> Any:
    """d/dh f(x + h d) at 0 by the 4th-order central difference (h scaled to x)."""
    scale = max([1.0] + [float(np.max(np.abs(v), initial=0.0)) for v in x.values()])
    h = STEP * scale
    fs = [np.asarray(f({n: v + k * h * d[n] if n in d else v for n, v in x.items()}),
                     np.float64) for k in (2, 1, -1, -2)]
    return (-fs[0] + 8 * fs[1] - 8 * fs[2] + fs[3]) / (12 * h)


def _close(analytic: Any, numeric: Any, what: str, rtol: float = 1e-6) -> None:
    scale = max(1.0, float(np.max(np.abs(numeric), initial=0.0)))
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=1e-8 * scale, err_msg=what)


@pytest.mark.parametrize(("name", "i", "case"), CASES)
def test_op_second_derivative(name: str, i: int, case: Case) -> None:
    plan, values, floats = _instance(name, i, case)
    rng = np.random.default_rng(11 + i)
    out = np.asarray(forward(plan, values))
    upstream = None if out.shape == () else rng.standard_normal(out.shape)
    v = {n: rng.standard_normal(np.shape(values[n])) for n in floats}
    result = execute(plan, values, Query(upstream=upstream, hvp=v))
    assert set(result.hvp) == set(floats)
    if name in KINKED - CURVED_KINKED:
        # Piecewise linear: the second derivative is 0 wherever it exists, and taken as 0 at
        # the kinks (PyTorch's convention); differences across a kink would be meaningless.
        for n in floats:
            assert not np.any(result.hvp[n]), f"Hv of {name}"
        return

    def grads(x: dict[str, np.ndarray]) -> Any:
        r = execute(plan, x, Query(upstream=upstream))
        return np.concatenate([np.ravel(r.gradients[n]) for n in floats])

    numeric = _directional(grads, values, v)
    analytic = np.concatenate([np.ravel(result.hvp[n]) for n in floats])
    _close(analytic, numeric, f"Hv of {name}")


@pytest.mark.parametrize(("name", "i", "case"), CASES)
def test_op_jvp(name: str, i: int, case: Case) -> None:
    plan, values, floats = _instance(name, i, case)
    rng = np.random.default_rng(23 + i)
    t = {n: rng.standard_normal(np.shape(values[n])) for n in floats}
    result = execute(plan, values, Query(tangents=t, wrt=[]))
    numeric = _directional(lambda x: forward(plan, x), values, t)
    assert np.shape(result.jvp) == np.shape(numeric)
    _close(result.jvp, numeric, f"Jt of {name}")


def test_kinked_ops_are_flagged() -> None:
    """The ops whose second derivative is taken as zero (docs list them from the flag)."""
    assert {op.name for op in REGISTRY if op.kinked} == KINKED


@pytest.mark.parametrize("text,values,expected", [
    ("sum(relu(x) ** 2)", {"x": [-1.0, 2.0]}, [[0.0, 0.0], [0.0, 2.0]]),
    ("sum(abs(x))", {"x": [-1.0, 2.0]}, [[0.0, 0.0], [0.0, 0.0]]),
    ("sum(max(x, 0.5) ** 2)", {"x": [0.0, 2.0]}, [[0.0, 0.0], [0.0, 2.0]]),
])
def test_kinks_have_zero_second_derivative(text: str, values: Any, expected: Any) -> None:
    plan = compile_graph(parse_expression(text, REGISTRY).graph, REGISTRY)
    r = execute(plan, {k: np.array(v) for k, v in values.items()}, Query(hessian=True))
    np.testing.assert_array_equal(r.hessian["x"]["x"], expected)


def test_contract_example() -> None:
    plan = compile_graph(parse_expression("sum(x ** 3)", REGISTRY).graph, REGISTRY)
    r = execute(plan, {"x": np.array([1.0, 2.0])}, Query(hvp={"x": [1.0, 0.0]}, hessian=True,
                                                         tangents={"x": [1.0, 1.0]}))
    assert r.hvp["x"].tolist() == [6.0, 0.0]
    assert r.hessian["x"]["x"].tolist() == [[6.0, 0.0], [0.0, 12.0]]
    assert float(r.jvp) == 15.0


# --- random DAGs --------------------------------------------------------------------------


@settings(SETTINGS, max_examples=40)
@given(dag=dags(), seed=st.integers(0, 2**16))
def test_random_dag_hvp_hessian_jvp(dag: Any, seed: int) -> None:
    _, shapes = dag
    plan, values, out = dag_case(dag, seed)
    rng = np.random.default_rng(seed + 1)
    upstream = None if out.shape == () else rng.standard_normal(out.shape)
    v = {n: rng.standard_normal(s) for n, s in shapes.items()}
    t = {n: rng.standard_normal(s) for n, s in shapes.items()}
    r = execute(plan, values, Query(upstream=upstream, hvp=v, hessian=True, tangents=t,
                                    jacobian=upstream is not None))
    names = list(shapes)
    sizes = [int(np.prod(shapes[n], dtype=int)) for n in names]
    full = np.block([[np.reshape(r.hessian[a][b], (sa, sb)) for b, sb in zip(names, sizes)]
                     for a, sa in zip(names, sizes)])
    assume(np.all(np.isfinite(full)))
    scale = max(1.0, float(np.max(np.abs(full), initial=0.0)))
    np.testing.assert_allclose(full, full.T, rtol=0, atol=1e-10 * scale)
    vflat = np.concatenate([np.ravel(v[n]) for n in names])
    hv = np.concatenate([np.ravel(r.hvp[n]) for n in names])
    np.testing.assert_allclose(hv, full @ vflat, rtol=1e-9, atol=1e-10 * scale)
    # jvp = J t, with J from the engine's Jacobian (scalar output: the gradient).
    if upstream is None:
        jt = sum(np.sum(r.gradients[n] * t[n]) for n in names)
    else:
        jt = sum(np.tensordot(r.jacobians[n], t[n], axes=len(shapes[n])) for n in names)
    np.testing.assert_allclose(r.jvp, jt, rtol=1e-9, atol=1e-10)
    # and against the forward's finite differences
    numeric = _directional(lambda x: forward(plan, x), values, t)
    _close(r.jvp, numeric, "Jt", rtol=1e-5)


# --- liveness: nothing freed is read again ------------------------------------------------


class Tracking(list):
    """A slot list that fails on reading a freed slot."""

    def __init__(self, n: int, freed: set[int]) -> None:
        super().__init__([None] * n)
        self.freed = freed

    def __getitem__(self, i: Any) -> Any:
        assert i not in self.freed, f"slot {i} read after it was freed"
        return super().__getitem__(i)

    def __setitem__(self, i: Any, value: Any) -> None:
        if value is None:
            self.freed.add(i)
        else:
            self.freed.discard(i)
        super().__setitem__(i, value)


def _deep_positions(name: str, case: Case) -> list[dict[str, Any]]:
    """The op between other ops: its arguments computed (softplus-like chains) and its
    output used twice downstream, so every value lives across several steps."""
    args = []
    nodes = []
    inputs = {}
    for k, arg in enumerate(case.args):
        if isinstance(arg, L):
            inputs[f"a{k}"] = {"shape": [arg.batch]}
            args.append(f"a{k}")
            continue
        inputs[f"a{k}"] = {"shape": list(arg.shape)}
        # a * 1 then + 0: computed (freeable) arguments holding the same values.
        nodes += [{"id": f"p{k}", "op": "mul", "args": [f"a{k}", 1.0]},
                  {"id": f"q{k}", "op": "add", "args": [f"p{k}", 0.0]}]
        args.append(f"q{k}")
    nodes += [{"id": "y", "op": name, "args": args, "attrs": case.attrs},
              {"id": "e", "op": "exp", "args": ["y"]},
              {"id": "l", "op": "log", "args": ["e"]},
              {"id": "m", "op": "mul", "args": ["l", "y"]},
              {"id": "f", "op": "sum", "args": ["m"]}]
    return [{"inputs": inputs, "nodes": nodes, "output": "f"}]


@pytest.mark.parametrize(("name", "i", "case"), [c for c in CASES if c.values[1] == 0])
def test_executor_never_reads_a_freed_slot(name: str, i: int, case: Case,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Liveness replaces hand-kept "saves" sets: with every slot freeable (even small
    ones), first and second order and forward mode, no step reads a slot freed before it.
    (The old class of bug: ``sum(softplus(2*x))`` with a wrong ``saves`` read a freed value.)
    """
    monkeypatch.setattr(compiler, "FREE_MIN_ELEMENTS", 0)
    _, values, floats = _instance(name, 0, case)
    for spec in _deep_positions(name, case):
        plan = compile_graph(graph_from_dict(spec), REGISTRY)
        shapes = {n: np.shape(v) for n, v in values.items()}
        for want in (Want(wrt=tuple(floats)), Want(wrt=tuple(floats), hvp=tuple(floats)),
                     Want(wrt=(), grads=False, jvp=tuple(floats))):
            exe = plan.specialize(shapes, want=want)
            vals = Tracking(exe.n_slots, set())
            for n, s in exe.input_slots.items():
                vals[s] = dev(values[n])
            for s, c in exe.constants:
                vals[s] = c
            for s in [exe.seed_slot, exe.u_slot, *exe.hvp_leaves.values(),
                      *exe.tangent_leaves.values()]:
                if s >= 0:
                    vals[s] = dev(np.ones(exe.slot_shapes[s]))
            with np.errstate(all="ignore"):
                run_steps(exe.prefix, vals)
                run_steps(exe.suffix, vals)
            assert any(exe.prefix + exe.suffix), "nothing ran"
            assert any(s.free for s in exe.prefix + exe.suffix), "liveness freed nothing"


def test_every_op_in_liveness_table() -> None:
    assert {c.values[0] for c in CASES if c.values[1] == 0} == set(DOMAINS)
