"""execute: run a Plan on input values as a Query asks — output, gradients, Jacobians,
JVPs, HVPs, Hessians, checks, traces — phase by phase:

    bind (bind.py) → plan the work, check every limit (work.py) → run → collect
    → derivative drivers (derivatives.py), checks (check.py) → results to the host

A plain query on all-scalar values takes the prepared path instead (scalar_path.py).

Every array operation goes through the registry's namespace ``xp`` (``plan.registry.xp``),
with functions of the Python array API standard only (NumPy's ``errstate`` is guarded), so
CuPy and array-api-strict run the same code. Request values are validated and cast on the
host with NumPy, checked against every limit, then moved to the device once
(``registry.to_device``); results come back once at the end (``registry.to_host``). The
step loop itself never reads a device value on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import nullcontext
from typing import Any

from service.engine import loss
from service.engine.batched import execute_batched, execute_directions
from service.engine.bind import Bound, bind
from service.engine.check import check, check_hvp
from service.engine.compiler import Executable, Plan, run_steps
from service.engine.derivatives import (
    hessian,
    hessian_blocks,
    jacobian_blocks,
    jacobians,
    no_deadline,
)
from service.engine.errors import ProblemError, Unprocessable
from service.engine.ir import MAX_NDIM
from service.engine.limits import DEFAULT_LIMITS, Deadline, Limits
from service.engine.model import prepare
from service.engine.query import PLAIN, Query
from service.engine.result import Result, results_to_host, slot_value
from service.engine.scalar_path import bind_scalars
from service.engine.scalar_path import run_scalars as _run_scalars
from service.engine.scalar_path import scalar_run as _scalar_run
from service.engine.trace import trace, trace_backward
from service.engine.work import Work, plan_work

__all__ = ["Executable", "Result", "execute"]


def execute(plan: Plan, values: Mapping[str, Any], query: Query = PLAIN, *,
            limits: Limits = DEFAULT_LIMITS, deadline: Deadline | None = None) -> Result:
    """Run ``plan`` on ``values`` as ``query`` asks; raises ProblemErrors naming the field
    at fault (in engine words: see ``service.engine.errors``).

    ``deadline`` is checked between phases and in every Jacobian row, Hessian column and
    check step. Every estimate is checked against ``limits`` before anything is computed.
    """
    if plan.model is not None or type(query.wrt) is str or query.output is not None:
        plan, values, query = prepare(plan, values, query)  # a model's words (model.py)
    if query.batched is not None:
        return execute_batched(plan, values, query, limits, deadline, execute)
    if query.per_example:
        raise Unprocessable("per_example: needs 'batched' (the inputs whose leading axis "
                            "indexes the examples)", loc=("per_example",))
    if query.directions is not None:
        return execute_directions(plan, values, query, limits, deadline, execute)
    if query.is_plain:
        # A plain request whose values are all scalars: the same executable, prepared once.
        result = _execute_scalars(plan, values, query, limits, deadline)
        if result is not None:
            return result
    if query.loss is not None:
        return _execute_loss(plan, values, query, limits, deadline)
    reg = plan.registry
    bound = bind(plan, values, query)
    work = plan_work(plan, bound, query, limits)
    tick = deadline.check if deadline is not None else no_deadline
    tick()
    result = _run(plan, bound, work, query, tick, limits, deadline)
    return results_to_host(reg, result) if reg.host is not None and not reg.scalars \
        else result


def _execute_loss(plan: Plan, values: Mapping[str, Any], query: Query, limits: Limits,
                  deadline: Deadline | None) -> Result:
    """``query.loss``: the loss plan runs, the original output fetched (engine/loss.py)."""
    kind, targets = query.loss  # type: ignore[misc]
    if query.upstream is not None:
        raise Unprocessable("give either 'loss' (the objective is the loss of the output) or "
                            "'upstream' (dL/d(output)), not both", loc=("upstream",))
    if query.jacobian:
        raise Unprocessable("jacobian is the output's, and a loss makes the objective a "
                            "scalar: ask for the loss's gradients, or for the jacobian "
                            "without 'loss'", loc=("jacobian",))
    if loss.TARGETS in values:  # the loss plan's own input: not one of the graph's
        raise Unprocessable(f"values: '{loss.TARGETS}' is not an input of the graph "
                            f"(inputs: {', '.join(plan.input_order) or 'none'})",
                            loc=("values", loss.TARGETS))
    try:
        derived = loss.loss_plan(plan, kind)
        result = execute(derived, {**values, loss.TARGETS: targets},
                         loss.loss_query(plan, query), limits=limits, deadline=deadline)
    except ProblemError as err:
        raise loss.reword(err, plan.output) from None
    return loss.split_result(result, plan, query)


def _execute_scalars(plan: Plan, values: Mapping[str, Any], query: Query, limits: Limits,
                     deadline: Deadline | None) -> Result | None:
    """``execute`` for scalar values, or None (then the general path runs)."""
    run = _scalar_run(plan, query.wrt, query.dtype)
    if run is None:
        return None
    vals = bind_scalars(run, values)
    if vals is None:
        return None
    if run.limits_passed is not limits:
        run.exe.check_limits(limits, run.itemsize)
        run.limits_passed = limits
    if deadline is not None:
        deadline.check()
    return _run_scalars(run, vals, deadline)


def _run(plan: Plan, bound: Bound, work: Work, query: Query, tick: Callable[[], None],
         limits: Limits, deadline: Deadline | None) -> Result:
    """Every limit passed: the values go to the device, once each; then the main run, its
    results, and the derivative drivers and checks on the same device values."""
    reg = plan.registry
    np_dtype = reg.dtypes[query.dtype][0]
    arrays = _to_device(reg, bound.host)
    tangents = hvp = None
    if bound.tangents is not None:
        tangents = {n: reg.to_device(a) for n, a in bound.tangents.items()}
    if bound.hvp is not None:
        hvp = {n: reg.to_device(a) for n, a in bound.hvp.items()}
    errstate = getattr(reg.xp, "errstate", None)
    with errstate(all="ignore") if errstate is not None else nullcontext():
        vals = _run_main(work, arrays, tangents, hvp, np_dtype, tick)
        result = _collect(work, vals, bound, query, np_dtype)
        del vals
        wrt, upstream = bound.wrt, query.upstream
        # Blocks of rows (columns), each one batched run; the row loop where the example
        # axis would pass the most dims a value may have.
        vectorized = max(len(s) for s in work.exe.slot_shapes) < MAX_NDIM
        if work.jacobian is not None:
            result.jacobians = _on_device(reg, jacobian_blocks(
                plan, bound.host, wrt, query.dtype, limits, deadline, execute)) \
                if vectorized else jacobians(work.jacobian, arrays, wrt, np_dtype, tick)
            if not work.want.grads:
                result.gradients = {}
        if work.hessian is not None:
            result.hessian = {a: _on_device(reg, row) for a, row in hessian_blocks(
                plan, bound.host, wrt, upstream, query.dtype, limits, deadline,
                execute).items()} if vectorized else \
                hessian(work.hessian, arrays, wrt, upstream, np_dtype, tick)
        if query.check:
            result.check = check(plan, arrays, wrt, result, upstream, tick)
            if hvp is not None:
                result.hvp_check = check_hvp(plan, arrays, wrt, hvp, result, upstream, tick)
    return result


def _run_main(work: Work, arrays: Mapping[str, Any], tangents: Mapping[str, Any] | None,
              hvp: Mapping[str, Any] | None, dtype: Any, tick: Callable[[], None]
              ) -> list[Any]:
    """The main executable's slot list, filled (leaves: inputs, seed, directions) and run."""
    exe = work.exe
    vals = exe.start(arrays, dtype)
    if work.seed is not None:
        vals[exe.seed_slot] = work.seed
    for name, slot in exe.hvp_leaves.items():
        vals[slot] = hvp[name]  # type: ignore[index]
    for name, slot in exe.tangent_leaves.items():
        vals[slot] = tangents[name]  # type: ignore[index]
    if exe.u_slot >= 0:
        vals[exe.u_slot] = exe.plan.registry.xp.zeros(exe.output_shape, dtype=dtype)
    run_steps(exe.prefix, vals)
    tick()
    run_steps(exe.suffix, vals)
    tick()
    return vals


def _collect(work: Work, vals: list[Any], bound: Bound, query: Query, dtype: Any) -> Result:
    """The main run's results from its slots: output, fetched values, gradients, traces,
    HVP, JVP (zeros where the graph has no path)."""
    exe = work.exe
    xp = exe.plan.registry.xp
    shapes = bound.shapes
    result = Result(output=xp.asarray(vals[exe.output_slot], dtype=dtype), gradients={})
    if query.fetch:
        result.fetched = {n: xp.asarray(vals[exe.slot_of[n]], dtype=dtype) for n in query.fetch}
    if work.seed is not None:
        result.gradients = {n: slot_value(xp, vals, exe.grad_slots.get(n), shapes[n], dtype)
                            for n in bound.wrt}
        if query.trace or query.trace_backward:
            result.trace = trace(exe, vals, dtype)
        if query.trace_backward:
            result.trace_backward = trace_backward(exe, vals, dtype)
    if bound.hvp is not None:
        result.hvp = {n: slot_value(xp, vals, exe.hvp_slots.get(n), shapes[n], dtype)
                      for n in bound.wrt}
    if bound.tangents is not None:
        result.jvp = slot_value(xp, vals, exe.jvp_slot if exe.jvp_slot >= 0 else None,
                                exe.output_shape, dtype)
    return result


def _on_device(reg: Any, arrays: dict[str, Any]) -> dict[str, Any]:
    """A driver's host results as device values (results_to_host moves them back)."""
    if reg.scalars:
        return arrays
    return {n: reg.to_device(a) for n, a in arrays.items()}


def _to_device(reg: Any, host: dict[str, Any]) -> dict[str, Any]:
    """The bound host values on the device; 0-d values as NumPy scalars where allowed."""
    if reg.scalars:  # NumPy: the host values are the device values
        return host
    return {n: reg.to_device(a) for n, a in host.items()}
