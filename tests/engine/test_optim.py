"""The optimizers against recorded torch.optim trajectories (data/optim_trajectories.json,
written by data/make_optim_trajectories.py), float64 to 1e-12 relative: each step gets
torch's gradients and the state this module returned the step before, as a client would
send it back (through lists, as on the wire)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from service.engine.errors import Unprocessable
from service.engine.optim import (
    DEFAULTS,
    apply,
    check_state,
    init_state,
    make_optimizer,
)

DATA = json.loads((Path(__file__).parent / "data" / "optim_trajectories.json").read_text())
CASES = DATA["cases"]
PARAMS = ("W", "b")


def _id(case: dict) -> str:
    opts = ",".join(f"{k}={v}" for k, v in case["options"].items())
    return f"{case['type']}({opts})"


def close(a: object, b: object, rtol: float = 1e-12) -> None:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape
    np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-300)


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_matches_torch_trajectory(case: dict) -> None:
    opt = make_optimizer(case["type"], case["options"])
    params = {n: np.asarray(case["values"][n]) for n in PARAMS}
    state = init_state(opt, params)
    for k, rec in enumerate(case["steps"]):
        grads = {n: np.asarray(g) for n, g in rec["grads"].items()}
        params, state = apply(opt, params, grads, state, np.float64)
        for n in PARAMS:
            close(params[n], rec["params"][n])
            assert set(state.slots[n]) == set(rec["state"]["slots"][n])
            for slot, value in rec["state"]["slots"][n].items():
                close(state.slots[n][slot], value)
        assert state.step == k + 1
        if case["type"] != "sgd":  # torch's SGD keeps no step count
            assert rec["state"]["step"] == k + 1
        # Back through the wire form: lists in, checked, as the next request sends them.
        wire = {n: {s: v.tolist() for s, v in slots.items()} for n, slots in state.slots.items()}
        state = check_state(opt, params, state.step,
                            {n: {s: np.asarray(v) for s, v in d.items()}
                             for n, d in wire.items()})


def test_every_optimizer_and_option_is_recorded() -> None:
    """The trajectories cover each optimizer and every non-default option at least once."""
    seen: dict[str, set[str]] = {k: set() for k in DEFAULTS}
    for case in CASES:
        seen[case["type"]].update(case["options"])
    for kind, hyper in DEFAULTS.items():
        assert seen[kind] >= set(hyper) - {"lr"}, (kind, set(hyper) - seen[kind])


def test_float32_runs_in_float32() -> None:
    case = CASES[5]  # adam
    opt = make_optimizer(case["type"], case["options"])
    params = {n: np.asarray(case["values"][n], dtype=np.float32) for n in PARAMS}
    state = init_state(opt, params)
    grads = {n: np.asarray(g) for n, g in case["steps"][0]["grads"].items()}
    new, state = apply(opt, params, grads, state, np.float32)
    for n in PARAMS:
        assert new[n].dtype == np.float32 and state.slots[n]["exp_avg"].dtype == np.float32
        close(new[n], case["steps"][0]["params"][n], rtol=1e-5)


@pytest.mark.parametrize(("kind", "given", "loc"), [
    ("sgd", {}, ("optimizer", "lr")),
    ("nadam", {"lr": 1.0}, ("optimizer", "type")),
    ("adam", {"momentum": 0.9}, ("optimizer", "momentum")),
    ("adam", {"betas": [0.9, 1.0]}, ("optimizer", "betas", 1)),
    ("adam", {"betas": [0.9]}, ("optimizer", "betas")),
    ("adam", {"lr": -1.0}, ("optimizer", "lr")),
    ("adam", {"amsgrad": 1}, ("optimizer", "amsgrad")),
    ("rmsprop", {"eps": float("nan")}, ("optimizer", "eps")),
    ("sgd", {"lr": 0.1, "nesterov": True}, ("optimizer", "nesterov")),
    ("sgd", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": True},
     ("optimizer", "nesterov")),
    ("adagrad", {"lr_decay": -0.1}, ("optimizer", "lr_decay")),
    ("adagrad", {"lr": "0.1"}, ("optimizer", "lr")),
])
def test_bad_hyperparameters_name_the_field(kind: str, given: dict, loc: tuple) -> None:
    with pytest.raises(Unprocessable) as err:
        make_optimizer(kind, given)
    assert err.value.loc == loc


P = {"W": np.zeros((2, 3)), "b": np.zeros(2)}


@pytest.mark.parametrize(("kind", "given", "step", "slots", "loc"), [
    ("adam", {}, 1, {"W": {"exp_avg": np.zeros((2, 3))}, "b": {}}, ("state", "slots", "W",
                                                                      "exp_avg_sq")),
    ("adam", {}, 1, {"W": {"exp_avg": np.zeros((3, 2)), "exp_avg_sq": np.zeros((2, 3))}},
     ("state", "slots", "W", "exp_avg")),
    ("adam", {}, 1, {"W": {"exp_avg": np.zeros((2, 3)), "exp_avg_sq": np.zeros((2, 3)),
                           "momentum_buffer": np.zeros((2, 3))}},
     ("state", "slots", "W", "momentum_buffer")),
    ("adam", {}, 1, {"V": {}}, ("state", "slots", "V")),
    ("adam", {}, -1, {}, ("state", "step")),
    ("adam", {}, 1.5, {}, ("state", "step")),
    ("adam", {}, 2, {"W": {"exp_avg": np.full((2, 3), np.nan),
                           "exp_avg_sq": np.zeros((2, 3))}}, ("state", "slots", "W", "exp_avg")),
    ("sgd", {"lr": 0.1, "momentum": 0.9}, 0, {"W": {"momentum_buffer": np.zeros((2, 3))}},
     ("state", "slots", "W", "momentum_buffer")),
    ("sgd", {"lr": 0.1, "momentum": 0.9}, 3, {"W": {"momentum_buffer": np.zeros((2, 3))}},
     ("state", "slots", "b")),
    ("sgd", {"lr": 0.1}, 3, {"W": {"momentum_buffer": np.zeros((2, 3))}},
     ("state", "slots", "W", "momentum_buffer")),
])
def test_bad_state_names_the_slot(kind: str, given: dict, step: object, slots: dict,
                                  loc: tuple) -> None:
    opt = make_optimizer(kind, given)
    with pytest.raises(Unprocessable) as err:
        check_state(opt, P, step, slots)
    assert err.value.loc == loc


def test_non_finite_update_names_the_parameter_and_applies_nothing() -> None:
    opt = make_optimizer("sgd", {"lr": 1e308})
    params = {"W": np.ones((2, 3)), "b": np.ones(2)}
    state = init_state(opt, params)
    grads = {"W": np.zeros((2, 3)), "b": np.full(2, 1e10)}
    with pytest.raises(Unprocessable) as err:
        apply(opt, params, grads, state, np.float64)
    assert err.value.loc == ("values", "b")
    assert np.all(params["b"] == 1.0)  # the inputs are never written in place


@pytest.mark.parametrize("case", DATA["float32"], ids=_id)
def test_float32_matches_torchs_float32_trajectory(case: dict) -> None:
    """torch.optim in float32 (recorded), replayed in float32: the same operations in the
    same order round the same way (to within an ulp or two over six steps)."""
    opt = make_optimizer(case["type"], case["options"])
    params = {n: np.asarray(case["values"][n], dtype=np.float32) for n in PARAMS}
    state = init_state(opt, params)
    for rec in case["steps"]:
        grads = {n: np.asarray(g, dtype=np.float32) for n, g in rec["grads"].items()}
        params, state = apply(opt, params, grads, state, np.float32)
        for n in PARAMS:
            assert params[n].dtype == np.float32
            close(params[n], rec["params"][n], rtol=1e-6)
            for slot, value in rec["state"]["slots"][n].items():
                close(state.slots[n][slot], value, rtol=1e-6)
