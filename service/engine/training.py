"""Training steps: K optimizer steps on one objective, its gradient computed by ``execute``.

:func:`train` is the loop of ``POST /v1/graphs/{id}/step`` and ``/v1/mlp/step``: the
objective and its gradients at the current values (a callable the flow gives: the same
``execute`` as a gradient request), then ``optim.apply``, ``steps`` times. Nothing leaves
the loop until every step has run: an error or the deadline at step k answers for the whole
request, and the values the client sent are still its own (the service keeps nothing).

:func:`check_steps` refuses (413) before the first step a request whose ``steps`` times one
step's estimated work passes ``GRADSERVE_MAX_FLOPS``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.engine import loss as losses
from service.engine.bind import bind
from service.engine.compiler import Plan
from service.engine.errors import DeadlineExceeded, LimitExceeded, Unprocessable
from service.engine.limits import Deadline, Limits
from service.engine.optim import Optimizer, State, apply, update_flops
from service.engine.query import Query
from service.engine.work import plan_work

#: values → (objective, gradient per parameter), all on the host.
Objective = Callable[[Mapping[str, np.ndarray]], tuple[Any, Mapping[str, np.ndarray]]]


@dataclass
class Trained:
    """What K steps give: the new parameters and state, the objective where each started."""

    params: dict[str, np.ndarray]
    state: State
    losses: list[float]


def train(objective: Objective, values: Mapping[str, np.ndarray], params: tuple[str, ...],
          opt: Optimizer, state: State, steps: int, dtype: Any,
          deadline: Deadline | None = None) -> Trained:
    """``steps`` steps of ``opt`` on ``params`` (names in ``values``); the other values are
    held fixed. The deadline is checked between steps (and inside each ``execute``), and
    so is where it is heading: once the steps so far say the rest cannot finish in time,
    the request stops there rather than run on to the deadline (:func:`_on_time`)."""
    current = dict(values)
    recorded: list[float] = []
    start = time.monotonic()
    for k in range(steps):
        if deadline is not None and k > 0:
            _on_time(deadline, start, k, steps)
        value, grads = objective(current)
        loss = float(np.asarray(value).reshape(()))  # the flow checked it is one number
        if not np.isfinite(loss):
            raise Unprocessable(f"loss: the objective is not finite (NaN or Infinity) at the "
                                f"values step {state.step + 1} starts from", loc=("loss",))
        recorded.append(loss)
        for name in params:
            if not np.all(np.isfinite(grads[name])):
                raise Unprocessable(f"values.{name}: its gradient at step {state.step + 1} is "
                                    "not finite (NaN or Infinity)", loc=("values", name))
        new, state = apply(opt, {n: current[n] for n in params}, grads, state, dtype)
        current.update(new)
    return Trained({n: current[n] for n in params}, state, recorded)


#: How far past the deadline the projection must land before a run stops early: the first
#: steps are the slowest (caches, specialization), so a close call runs on.
PROJECTION_MARGIN = 1.5


def _on_time(deadline: Deadline, start: float, done: int, steps: int) -> None:
    """503 naming ``steps`` when the deadline has passed, or when ``done`` steps' pace says
    the other ``steps - done`` would end past it by more than the margin; the answer says how
    many steps fit. Nothing was applied either way: the client still has what it sent."""
    now = time.monotonic()
    per_step = (now - start) / done
    left = deadline.at - now
    if now <= deadline.at and per_step * (steps - done) <= PROJECTION_MARGIN * left:
        return
    fit = max(1, int((deadline.at - start) / per_step)) if per_step > 0 else steps
    why = ("ran past" if now > deadline.at else "would run past")
    raise DeadlineExceeded(
        f"the request {why} its deadline GRADSERVE_REQUEST_DEADLINE_S={deadline.seconds:g} s "
        f"({done} of {steps} steps took {now - start:.3g} s); nothing was applied: send the "
        f"same values and state with fewer 'steps' (about {fit} fit)", loc=("steps",))


def step_flops(plan: Plan, values: Mapping[str, Any], query: Query, limits: Limits) -> int:
    """One gradient's estimated work, as ``execute`` would plan it (every limit checked)."""
    if query.loss is not None:
        kind, targets = query.loss
        derived = losses.loss_plan(plan, kind)
        sub = losses.loss_query(plan, query)
        work = plan_work(derived, bind(derived, {**values, losses.TARGETS: targets}, sub),
                         sub, limits)
    else:
        work = plan_work(plan, bind(plan, values, query), query, limits)
    return int(work.exe.flops)


def check_steps(flops: int, elements: int, opt: Optimizer, steps: int,
                limits: Limits) -> None:
    """413 naming ``steps`` when K steps' work (gradients and updates) passes the limit."""
    total = steps * (flops + update_flops(opt, elements))
    if total > limits.max_flops:
        raise LimitExceeded("max_flops", limits.max_flops, total,
                            f"estimated work (flops) of {steps} steps", loc=("steps",))
