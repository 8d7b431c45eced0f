"""Optimizers as pure functions of explicit state: torch.optim's update rules, step for step.

An optimizer is a record of hyperparameters (:class:`Optimizer`, made by
:func:`make_optimizer`, which fills torch.optim's defaults and refuses what torch refuses);
its state is a step count and named slots per parameter (:class:`State`), passed in and
returned, never kept (optax's ``init``/``update`` shape). The formulas and the order of
their operations are those of torch.optim's single-tensor paths (``_single_tensor_sgd``,
``_single_tensor_adam``, ``_single_tensor_rmsprop``, ``_single_tensor_adagrad``), so a run
can move between local PyTorch training and the service mid-way; docs/training.md writes
them out.

:func:`apply` computes every new value and slot first, checks them all finite, and only
then answers: nothing is half-applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.engine.errors import Unprocessable
from service.engine.shapes import fmt

#: Every optimizer's hyperparameters and torch.optim's defaults (None: required). ``betas``
#: is a pair; the booleans are flags.
DEFAULTS: dict[str, dict[str, Any]] = {
    "sgd": {"lr": None, "momentum": 0.0, "dampening": 0.0, "nesterov": False,
            "weight_decay": 0.0, "maximize": False},
    "adam": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
             "amsgrad": False, "maximize": False},
    "adamw": {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2,
              "amsgrad": False, "maximize": False},
    "rmsprop": {"lr": 1e-2, "alpha": 0.99, "eps": 1e-8, "weight_decay": 0.0,
                "momentum": 0.0, "centered": False, "maximize": False},
    "adagrad": {"lr": 1e-2, "lr_decay": 0.0, "weight_decay": 0.0,
                "initial_accumulator_value": 0.0, "eps": 1e-10, "maximize": False},
}
TYPES = tuple(DEFAULTS)
_FLAGS = frozenset({"nesterov", "amsgrad", "centered", "maximize"})


@dataclass(frozen=True)
class Optimizer:
    """One optimizer's type and every hyperparameter (defaults filled in)."""

    type: str
    hyper: Mapping[str, Any]

    def __getitem__(self, name: str) -> Any:
        return self.hyper[name]

    @property
    def slots(self) -> tuple[str, ...]:
        """The slot names of every parameter's state, as torch.optim's state keys."""
        h = self.hyper
        if self.type == "sgd":
            return ("momentum_buffer",) if h["momentum"] != 0 else ()
        if self.type in ("adam", "adamw"):
            return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if h["amsgrad"] else ())
        if self.type == "rmsprop":
            return (("square_avg",) + (("momentum_buffer",) if h["momentum"] > 0 else ())
                    + (("grad_avg",) if h["centered"] else ()))
        return ("sum",)

    def slots_at(self, step: int) -> tuple[str, ...]:
        """The slots a state at ``step`` holds: torch's SGD makes its momentum buffer on
        the first step, so an SGD state at step 0 has none."""
        return () if self.type == "sgd" and step == 0 else self.slots


@dataclass(frozen=True)
class State:
    """Steps taken so far and, per parameter, its slots (name → array)."""

    step: int
    slots: dict[str, dict[str, np.ndarray]]


def _bad(loc: tuple[str | int, ...], msg: str) -> Unprocessable:
    return Unprocessable(f"{'.'.join(str(p) for p in loc)}: {msg}", loc=loc)


def make_optimizer(kind: str, given: Mapping[str, Any]) -> Optimizer:
    """The optimizer ``kind`` with ``given`` hyperparameters over torch.optim's defaults;
    a 422 naming ``optimizer.<field>`` for an unknown name or a value torch refuses."""
    if kind not in DEFAULTS:
        raise _bad(("optimizer", "type"), f"unknown optimizer '{str(kind)[:40]}'; one of "
                   f"{', '.join(TYPES)}")
    hyper = dict(DEFAULTS[kind])
    for name, value in given.items():
        if name not in hyper:
            raise _bad(("optimizer", name), f"not a hyperparameter of {kind} (it has "
                       f"{', '.join(hyper)})")
        hyper[name] = _coerce(name, value)
    if hyper["lr"] is None:
        raise _bad(("optimizer", "lr"), "sgd needs an explicit lr (torch.optim.SGD's default "
                   "changed between versions)")
    _check(kind, hyper)
    return Optimizer(kind, hyper)


def _coerce(name: str, value: Any) -> Any:
    loc = ("optimizer", name)
    if name in _FLAGS:
        if not isinstance(value, bool | np.bool_):
            raise _bad(loc, f"must be true or false, got {value!r:.40}")
        return bool(value)
    if name == "betas":
        if not isinstance(value, list | tuple) or len(value) != 2:
            raise _bad(loc, "must be a pair [beta1, beta2]")
        return tuple(_number(loc + (i,), v) for i, v in enumerate(value))
    return _number(loc, value)


def _number(loc: tuple[str | int, ...], value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating):
        raise _bad(loc, f"must be a number, got {value!r:.40}")
    v = float(value)
    if not np.isfinite(v):
        raise _bad(loc, "must be finite")
    return v


#: The ranges torch.optim's constructors check (a ValueError there, a 422 here).
_AT_LEAST_ZERO = ("lr", "eps", "weight_decay", "momentum", "alpha", "lr_decay",
                  "initial_accumulator_value", "dampening")


def _check(kind: str, h: dict[str, Any]) -> None:
    for name in _AT_LEAST_ZERO:
        if name in h and h[name] < 0:
            raise _bad(("optimizer", name), f"must be >= 0, got {h[name]:g}")
    if "betas" in h:
        for i, b in enumerate(h["betas"]):
            if not 0.0 <= b < 1.0:
                raise _bad(("optimizer", "betas", i), f"must lie in [0, 1), got {b:g}")
    if kind == "sgd" and h["nesterov"] and (h["momentum"] <= 0 or h["dampening"] != 0):
        raise _bad(("optimizer", "nesterov"), "Nesterov momentum needs a momentum > 0 and "
                   "zero dampening")


# --- state --------------------------------------------------------------------------------


def init_state(opt: Optimizer, params: Mapping[str, np.ndarray]) -> State:
    """The state before the first step (torch's lazy initialization, made explicit)."""
    fill = opt["initial_accumulator_value"] if opt.type == "adagrad" else 0.0
    slots = {name: {slot: np.full(p.shape, fill, dtype=p.dtype) for slot in opt.slots_at(0)}
             for name, p in params.items()}
    return State(0, slots)


def check_state(opt: Optimizer, params: Mapping[str, np.ndarray], step: Any,
                slots: Mapping[str, Mapping[str, np.ndarray]]) -> State:
    """A state sent back by a client, checked against the optimizer and the parameters:
    every parameter has exactly the optimizer's slots, each shaped as its parameter, finite;
    a 422 naming ``state.slots.<param>.<slot>`` otherwise."""
    if isinstance(step, bool) or not isinstance(step, int | np.integer) or step < 0:
        raise _bad(("state", "step"), f"must be an integer >= 0, got {step!r:.40}")
    step = int(step)
    want = opt.slots_at(step)
    for name in slots:
        if name not in params:
            raise _bad(("state", "slots", name), "not one of the parameters being updated "
                       f"({', '.join(params)})")
    out: dict[str, dict[str, np.ndarray]] = {}
    for name, p in params.items():
        have = slots.get(name)
        if have is None:
            if want:
                raise _bad(("state", "slots", name), f"missing: {opt.type} keeps "
                           f"{', '.join(want)} per parameter")
            have = {}
        for slot in have:
            if slot not in want:
                raise _bad(("state", "slots", name, slot), _unexpected(opt, step, slot))
        out[name] = {}
        for slot in want:
            loc = ("state", "slots", name, slot)
            if slot not in have:
                raise _bad(loc, f"missing: {opt.type} keeps {', '.join(want)} per parameter")
            arr = np.asarray(have[slot])
            if arr.shape != p.shape:
                raise _bad(loc, f"must have the parameter's shape {fmt(p.shape)}, got "
                           f"{fmt(arr.shape)}")
            if not np.all(np.isfinite(arr)):
                raise _bad(loc, "has non-finite values")
            out[name][slot] = arr
    return State(step, out)


def _unexpected(opt: Optimizer, step: int, slot: str) -> str:
    want = opt.slots_at(step)
    if opt.type == "sgd" and step == 0 and slot in opt.slots:
        return "a state at step 0 has no momentum_buffer (SGD makes it on the first step)"
    return (f"not a slot of {opt.type} with these options (its slots: "
            f"{', '.join(want) or 'none'})")


# --- the update ---------------------------------------------------------------------------


def apply(opt: Optimizer, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray],
          state: State, dtype: Any) -> tuple[dict[str, np.ndarray], State]:
    """One step: new parameters and state, computed in ``dtype``; a 422 naming the
    parameter whose update is not finite, before anything is returned."""
    rule = _RULES[opt.type]
    step = state.step + 1
    new_params: dict[str, np.ndarray] = {}
    new_slots: dict[str, dict[str, np.ndarray]] = {}
    with np.errstate(all="ignore"):
        for name, p in params.items():
            p = np.asarray(p, dtype=dtype)
            g = np.asarray(grads[name], dtype=dtype)
            slots = {k: np.asarray(v, dtype=dtype) for k, v in state.slots[name].items()}
            if opt["maximize"]:
                g = -g
            new_params[name], new_slots[name] = rule(opt, p, g, slots, step)
    for name, p in new_params.items():
        if not np.all(np.isfinite(p)) or not all(np.all(np.isfinite(s))
                                                 for s in new_slots[name].values()):
            raise _bad(("values", name), f"the {opt.type} update of step {step} is not "
                       "finite (NaN or Infinity): lower lr, or check the gradients")
    return new_params, State(step, new_slots)


def _lerp(start: np.ndarray, end: np.ndarray, weight: float) -> np.ndarray:
    """torch.lerp as its CPU kernel computes it (two forms, by the weight's size)."""
    if abs(weight) < 0.5:
        return start + weight * (end - start)
    return end - (end - start) * (1 - weight)


Slots = dict[str, np.ndarray]


def _sgd(opt: Optimizer, p: np.ndarray, g: np.ndarray, slots: Slots, step: int
         ) -> tuple[np.ndarray, Slots]:
    if opt["weight_decay"] != 0:
        g = g + opt["weight_decay"] * p
    out: Slots = {}
    momentum = opt["momentum"]
    if momentum != 0:
        buf = slots.get("momentum_buffer")
        buf = g.copy() if buf is None else buf * momentum + (1 - opt["dampening"]) * g
        out["momentum_buffer"] = buf
        g = g + momentum * buf if opt["nesterov"] else buf
    return p + (-opt["lr"]) * g, out


def _adam(opt: Optimizer, p: np.ndarray, g: np.ndarray, slots: Slots, step: int
          ) -> tuple[np.ndarray, Slots]:
    lr, (beta1, beta2), wd = opt["lr"], opt["betas"], opt["weight_decay"]
    if wd != 0:
        if opt.type == "adamw":  # decoupled: the parameter decays, not the gradient
            p = p * (1 - lr * wd)
        else:
            g = g + wd * p
    exp_avg = _lerp(slots["exp_avg"], g, 1 - beta1)
    exp_avg_sq = slots["exp_avg_sq"] * beta2 + (1 - beta2) * g * g
    out = {"exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}
    bias_correction1 = 1 - beta1 ** step
    bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
    step_size = lr / bias_correction1
    second = exp_avg_sq
    if opt["amsgrad"]:
        second = out["max_exp_avg_sq"] = np.maximum(slots["max_exp_avg_sq"], exp_avg_sq)
    denom = np.sqrt(second) / bias_correction2_sqrt + opt["eps"]
    return p + (-step_size) * (exp_avg / denom), out


def _rmsprop(opt: Optimizer, p: np.ndarray, g: np.ndarray, slots: Slots, step: int
             ) -> tuple[np.ndarray, Slots]:
    alpha, lr = opt["alpha"], opt["lr"]
    if opt["weight_decay"] != 0:
        g = g + opt["weight_decay"] * p
    square_avg = slots["square_avg"] * alpha + (1 - alpha) * g * g
    out = {"square_avg": square_avg}
    if opt["centered"]:
        grad_avg = out["grad_avg"] = _lerp(slots["grad_avg"], g, 1 - alpha)
        avg = np.sqrt(square_avg + (-1) * grad_avg * grad_avg)
    else:
        avg = np.sqrt(square_avg)
    avg = avg + opt["eps"]
    if opt["momentum"] > 0:
        buf = out["momentum_buffer"] = slots["momentum_buffer"] * opt["momentum"] + g / avg
        return p + (-lr) * buf, out
    return p + (-lr) * (g / avg), out


def _adagrad(opt: Optimizer, p: np.ndarray, g: np.ndarray, slots: Slots, step: int
             ) -> tuple[np.ndarray, Slots]:
    if opt["weight_decay"] != 0:
        g = g + opt["weight_decay"] * p
    clr = opt["lr"] / (1 + (step - 1) * opt["lr_decay"])
    total = slots["sum"] + g * g
    std = np.sqrt(total) + opt["eps"]
    return p + (-clr) * (g / std), {"sum": total}


_RULES = {"sgd": _sgd, "adam": _adam, "adamw": _adam, "rmsprop": _rmsprop,
          "adagrad": _adagrad}


def update_flops(opt: Optimizer, elements: int) -> int:
    """A step's optimizer work over ``elements`` parameter entries (an upper bound: about
    a dozen operations per entry for the longest rule)."""
    return 16 * elements
