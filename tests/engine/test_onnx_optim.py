"""A second oracle: ONNX's ``ai.onnx.preview.training`` optimizers (Adagrad, Momentum, Adam)
as the onnx package's reference evaluator runs them and as its node test cases record
them, against service/engine/optim.py, where their formulas are torch.optim's
(docs/training.md §6 says where they are not, and the last tests here pin those
differences down).

Mapping: Adagrad(R, T, decay_factor, epsilon, norm_coefficient) is adagrad(lr, step=T,
lr_decay, eps, weight_decay); Momentum(alpha, beta, norm_coefficient) is sgd(momentum=alpha,
dampening=1-beta, weight_decay), 'nesterov' mode with beta=1 sgd's nesterov; Adam is adam
only with epsilon=0, T = torch's step count after the update, and no norm_coefficient_post.
"""

from __future__ import annotations

import numpy as np
import onnx

# Importing a node-case module runs its exports: each appends its cases to the package's
# list (collect_testcases would import every op's module: half a minute).
import onnx.backend.test.case.node.adagrad
import onnx.backend.test.case.node.adam
import onnx.backend.test.case.node.momentum  # noqa: F401
import pytest
from onnx import TensorProto, helper
from onnx.backend.test.case import node as node_cases
from onnx.reference import ReferenceEvaluator

from service.engine.optim import State, apply, init_state, make_optimizer

DOMAIN = "ai.onnx.preview.training"


@pytest.fixture(scope="module")
def cases() -> dict[str, object]:
    names = ("test_adagrad", "test_adagrad_multiple", "test_momentum",
             "test_nesterov_momentum", "test_adam")
    found = {c.name: c for c in node_cases._NodeTestCases if c.name in names}
    assert set(found) == set(names), "onnx's node cases moved: update this test"
    return found


def _attrs(case) -> dict[str, object]:
    out = {}
    for a in case.model.graph.node[0].attribute:
        out[a.name] = a.s.decode() if a.type == onnx.AttributeProto.STRING else a.f
    return out


def _model(op: str, state: tuple[str, ...], **attrs: object) -> ReferenceEvaluator:
    """One float64 ONNX training node: inputs R, T, X, G and the ``state`` tensors.
    Float attributes are float32 in ONNX: the runs use values float32 holds exactly."""
    names = ["X", "G", *state]
    outs = ["X_new"] + [f"{n}_new" for n in names[2:]]
    inputs = [helper.make_tensor_value_info("R", TensorProto.DOUBLE, []),
              helper.make_tensor_value_info("T", TensorProto.INT64, [])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.DOUBLE, None) for n in names]
    node = helper.make_node(op, ["R", "T", *names], outs, domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], op, inputs,
                              [helper.make_tensor_value_info(o, TensorProto.DOUBLE, None)
                               for o in outs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(DOMAIN, 1)])
    return ReferenceEvaluator(model)


def _problem(seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """A parameter and six gradients (as if of some objective along the run)."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, 2)), [rng.standard_normal((3, 2)) for _ in range(6)]


# --- node test data ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["test_adagrad", "test_adagrad_multiple"])
def test_adagrad_node_cases(cases, name):
    case = cases[name]
    a = _attrs(case)
    ins, outs = case.data_sets[0]
    r, t, rest = float(ins[0]), int(ins[1]), ins[2:]
    n = len(rest) // 3
    opt = make_optimizer("adagrad", {"lr": r, "lr_decay": a["decay_factor"],
                                     "eps": a["epsilon"], "weight_decay": a["norm_coefficient"]})
    params = {f"p{i}": np.asarray(rest[i], dtype=np.float64) for i in range(n)}
    grads = {f"p{i}": np.asarray(rest[n + i], dtype=np.float64) for i in range(n)}
    state = State(t, {f"p{i}": {"sum": np.asarray(rest[2 * n + i], dtype=np.float64)}
                      for i in range(n)})
    new, st = apply(opt, params, grads, state, np.float64)
    for i in range(n):
        np.testing.assert_allclose(new[f"p{i}"], outs[i], rtol=1e-6)
        np.testing.assert_allclose(st.slots[f"p{i}"]["sum"], outs[n + i], rtol=1e-6)


def test_nesterov_node_case(cases):
    """beta = 1: ONNX's Nesterov momentum is torch's (dampening 0), buffer V given."""
    case = cases["test_nesterov_momentum"]
    a = _attrs(case)
    assert a["mode"] == "nesterov" and a["beta"] == 1.0
    r, _, x, g, v = case.data_sets[0][0]
    x_new, v_new = case.data_sets[0][1]
    opt = make_optimizer("sgd", {"lr": float(r), "momentum": a["alpha"], "nesterov": True,
                                 "weight_decay": a["norm_coefficient"]})
    new, st = apply(opt, {"x": np.float64(x)}, {"x": np.float64(g)},
                    State(1, {"x": {"momentum_buffer": np.float64(v)}}), np.float64)
    np.testing.assert_allclose(new["x"], x_new, rtol=1e-6)
    np.testing.assert_allclose(st.slots["x"]["momentum_buffer"], v_new, rtol=1e-6)


# --- the reference evaluator along whole runs, float64 ----------------------------------


@pytest.mark.parametrize(("mode", "alpha", "beta", "norm"), [
    ("standard", 0.875, 1.0, 0.0), ("standard", 0.75, 0.625, 2**-7),
    ("nesterov", 0.875, 1.0, 2**-6)])
def test_momentum_runs_agree_from_the_first_step(mode, alpha, beta, norm):
    """ONNX's coefficient of the first gradient is 1 (T = 0), torch's first buffer is the
    gradient itself: from a zero V the two runs are the same at every step."""
    ev = _model("Momentum", ("V",), alpha=alpha, beta=beta, mode=mode, norm_coefficient=norm)
    x, grads = _problem(1)
    opt = make_optimizer("sgd", {"lr": 0.05, "momentum": alpha, "dampening": 1 - beta,
                                 "nesterov": mode == "nesterov", "weight_decay": norm})
    ours, state = {"x": x}, init_state(opt, {"x": x})
    theirs, v = x, np.zeros_like(x)
    for t, g in enumerate(grads):
        ours, state = apply(opt, ours, {"x": g}, state, np.float64)
        theirs, v = ev.run(None, {"R": np.float64(0.05), "T": np.int64(t), "X": theirs,
                                  "G": g, "V": v})
        np.testing.assert_allclose(ours["x"], theirs, rtol=1e-12)
        np.testing.assert_allclose(state.slots["x"]["momentum_buffer"], v, rtol=1e-12)


def test_adagrad_runs_agree():
    ev = _model("Adagrad", ("H",), decay_factor=0.125, epsilon=2**-20, norm_coefficient=2**-5)
    x, grads = _problem(2)
    opt = make_optimizer("adagrad", {"lr": 0.1, "lr_decay": 0.125, "eps": 2**-20,
                                     "weight_decay": 2**-5, "initial_accumulator_value": 0.3})
    ours, state = {"x": x}, init_state(opt, {"x": x})
    theirs, h = x, np.full_like(x, 0.3)
    for t, g in enumerate(grads):
        ours, state = apply(opt, ours, {"x": g}, state, np.float64)
        theirs, h = ev.run(None, {"R": np.float64(0.1), "T": np.int64(t), "X": theirs,
                                  "G": g, "H": h})
        np.testing.assert_allclose(ours["x"], theirs, rtol=1e-12)
        np.testing.assert_allclose(state.slots["x"]["sum"], h, rtol=1e-12)


def _adam_run(epsilon: float, t_offset: int, slots: bool = False
              ) -> tuple[np.ndarray, np.ndarray]:
    ev = _model("Adam", ("V", "H"), alpha=0.875, beta=1 - 2**-10, epsilon=epsilon,
                norm_coefficient=2**-7)
    x, grads = _problem(3)
    opt = make_optimizer("adam", {"lr": 0.01, "betas": (0.875, 1 - 2**-10), "eps": epsilon,
                                  "weight_decay": 2**-7})
    ours, state = {"x": x}, init_state(opt, {"x": x})
    theirs, v, h = x, np.zeros_like(x), np.zeros_like(x)
    for t, g in enumerate(grads):
        ours, state = apply(opt, ours, {"x": g}, state, np.float64)
        theirs, v, h = ev.run(None, {"R": np.float64(0.01), "T": np.int64(t + t_offset),
                                     "X": theirs, "G": g, "V": v, "H": h})
        if slots:
            np.testing.assert_allclose(state.slots["x"]["exp_avg"], v, rtol=1e-12)
            np.testing.assert_allclose(state.slots["x"]["exp_avg_sq"], h, rtol=1e-12)
    return ours["x"], theirs


def test_adam_agrees_with_epsilon_zero_and_torchs_step_count():
    ours, theirs = _adam_run(0.0, t_offset=1, slots=True)
    np.testing.assert_allclose(ours, theirs, rtol=1e-12)


def test_adam_differs_where_documented():
    """eps inside the bias correction (ONNX) or after it (torch); and ONNX's T = 0 first
    step, which skips the bias correction altogether."""
    ours, theirs = _adam_run(2**-10, t_offset=1)
    assert not np.allclose(ours, theirs, rtol=1e-9, atol=0)
    ours, theirs = _adam_run(0.0, t_offset=0)
    assert not np.allclose(ours, theirs, rtol=1e-6, atol=0)


def test_momentum_node_case_differs_where_documented(cases):
    """The node case starts at T = 0 from a non-zero V, with beta 0.1: ONNX weighs that
    first gradient by 1, a torch state with a momentum buffer by 1 - dampening = beta."""
    case = cases["test_momentum"]
    a = _attrs(case)
    r, _, x, g, v = case.data_sets[0][0]
    x_new, v_new = case.data_sets[0][1]
    opt = make_optimizer("sgd", {"lr": float(r), "momentum": a["alpha"],
                                 "dampening": 1 - a["beta"],
                                 "weight_decay": a["norm_coefficient"]})
    _, st = apply(opt, {"x": np.float64(x)}, {"x": np.float64(g)},
                  State(1, {"x": {"momentum_buffer": np.float64(v)}}), np.float64)
    g_reg = np.float64(g) + a["norm_coefficient"] * np.float64(x)
    np.testing.assert_allclose(v_new - st.slots["x"]["momentum_buffer"],
                               (1 - a["beta"]) * g_reg, rtol=1e-5)
