"""service.engine.training: K steps in one call equal any split of them into calls with the
state passed along (bit for bit), for every optimizer and option (hypothesis draws them);
the K-step work estimate; nothing comes back from a run that fails part-way."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.engine.errors import LimitExceeded, Unprocessable
from service.engine.limits import Limits
from service.engine.optim import init_state, make_optimizer
from service.engine.training import check_steps, train

A = np.array([[2.0, 0.3], [0.3, 1.0]])


def quadratic(values):
    """0.5 wᵀAw + sin(w0): a smooth objective with a gradient in closed form."""
    w = values["w"]
    return (np.float64(0.5 * w @ A @ w + np.sin(w[0])),
            {"w": A @ w + np.array([np.cos(w[0]), 0.0])})


unit = st.floats(0.0, 0.95)
OPTIMIZERS = st.one_of(
    st.fixed_dictionaries({"type": st.just("sgd"), "lr": st.floats(0.01, 0.3)},
                          optional={"momentum": unit, "weight_decay": st.floats(0, 0.1),
                                    "dampening": st.floats(0, 0.5),
                                    "maximize": st.booleans()}),
    st.fixed_dictionaries({"type": st.sampled_from(["adam", "adamw"]),
                           "lr": st.floats(0.001, 0.1)},
                          optional={"amsgrad": st.booleans(), "weight_decay": unit,
                                    "betas": st.tuples(unit, st.floats(0.9, 0.999))}),
    st.fixed_dictionaries({"type": st.just("rmsprop"), "lr": st.floats(0.001, 0.05)},
                          optional={"momentum": unit, "centered": st.booleans(),
                                    "alpha": st.floats(0.5, 0.99)}),
    st.fixed_dictionaries({"type": st.just("adagrad")},
                          optional={"lr_decay": st.floats(0, 0.5),
                                    "initial_accumulator_value": st.floats(0, 1)}),
)


@settings(max_examples=60, deadline=None)
@given(OPTIMIZERS, st.integers(1, 6), st.integers(1, 6))
def test_k_steps_equal_any_split(spec, k1, k2):
    spec = dict(spec)
    opt = make_optimizer(spec.pop("type"), spec)
    w0 = {"w": np.array([0.7, -1.3])}
    whole = train(quadratic, w0, ("w",), opt, init_state(opt, w0), k1 + k2, np.float64)
    first = train(quadratic, w0, ("w",), opt, init_state(opt, w0), k1, np.float64)
    # The state goes out and back as plain lists, as on the wire.
    state = type(first.state)(first.state.step, {
        n: {s: np.asarray(v.tolist()) for s, v in slots.items()}
        for n, slots in first.state.slots.items()})
    rest = train(quadratic, first.params, ("w",), opt, state, k2, np.float64)
    assert np.array_equal(whole.params["w"], rest.params["w"])
    assert whole.losses == first.losses + rest.losses
    assert whole.state.step == rest.state.step == k1 + k2
    for slot, v in whole.state.slots["w"].items():
        assert np.array_equal(v, rest.state.slots["w"][slot])


def test_a_run_that_fails_part_way_returns_nothing():
    calls = []

    def blows_up(values):
        calls.append(1)
        value = np.float64(np.nan) if len(calls) == 3 else np.float64(1.0)
        return value, {"w": np.ones(2)}

    opt = make_optimizer("sgd", {"lr": 0.1})
    w0 = {"w": np.zeros(2)}
    with pytest.raises(Unprocessable) as err:
        train(blows_up, w0, ("w",), opt, init_state(opt, w0), 5, np.float64)
    assert err.value.loc == ("loss",) and "step 3" in err.value.detail
    assert np.array_equal(w0["w"], np.zeros(2))  # the caller's values are never written


def test_a_non_finite_gradient_names_the_parameter():
    opt = make_optimizer("adam", {})
    w0 = {"w": np.zeros(2), "v": np.zeros(1)}

    def bad(values):
        return np.float64(0.0), {"w": np.ones(2), "v": np.array([np.inf])}

    with pytest.raises(Unprocessable) as err:
        train(bad, w0, ("w", "v"), opt, init_state(opt, w0), 1, np.float64)
    assert err.value.loc == ("values", "v")


def test_k_steps_work_is_checked_against_max_flops():
    opt = make_optimizer("adam", {})
    check_steps(1000, 10, opt, 100, Limits(max_flops=200_000))
    with pytest.raises(LimitExceeded) as err:
        check_steps(1000, 10, opt, 1000, Limits(max_flops=200_000))
    assert err.value.loc == ("steps",) and err.value.limit == "max_flops"
    assert "of 1000 steps" in err.value.detail


def test_a_run_that_cannot_finish_in_time_stops_early_and_says_how_many_fit():
    import time

    from service.engine.errors import DeadlineExceeded
    from service.engine.limits import Deadline

    calls = []

    def slow(values):
        calls.append(1)
        time.sleep(0.02)
        return quadratic(values)

    opt = make_optimizer("sgd", {"lr": 0.1})
    w0 = {"w": np.array([0.7, -1.3])}
    with pytest.raises(DeadlineExceeded) as err:
        train(slow, w0, ("w",), opt, init_state(opt, w0), 1000, np.float64,
              deadline=Deadline.after(2.0))
    assert len(calls) < 10  # long before the 2 s: the pace said 1000 steps need ~20 s
    assert err.value.loc == ("steps",) and "would run past" in err.value.detail
    fit = int(err.value.detail.rsplit("about ", 1)[1].split()[0])
    assert 20 <= fit <= 100
    # A run that fits is not stopped.
    done = train(slow, w0, ("w",), opt, init_state(opt, w0), 5, np.float64,
                 deadline=Deadline.after(2.0))
    assert done.state.step == 5
