"""The all-scalar path: a plain request whose every value is a number, prepared once.

A request with no options (``Query.is_plain``) whose every value is a number (or a 0-d
float array) on the NumPy backend runs the very executable the general path would pick,
with the same NumPy scalar kernels; what it skips is per-request bookkeeping done once per
(plan, dtype, wrt): the Want and specialization lookup, the constants and seed, the limit
check (redone only for another Limits object). Anything it does not expect declines (None),
and the general path then runs (and raises whatever error the request earns). The driver,
``executor._execute_scalars``, strings the pieces below together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.engine.bind import HOST_DTYPES, resolve_wrt, seed
from service.engine.compiler import Executable, Plan, Step, Want, run_steps
from service.engine.errors import ProblemError
from service.engine.limits import Deadline, Limits
from service.engine.result import Result, slot_value

SCALAR_RUNS_PER_PLAN = 16
_UNPREPARED = object()
_INT_EXACT = 2**53  # ints within this convert to float64 exactly, however they get there


class ScalarRun:
    """One plan's all-scalar run for one dtype and wrt, prepared once."""

    __slots__ = ("exe", "inputs", "scalar", "itemsize", "start", "grads", "prefix", "suffix",
                 "run", "limits_passed")

    def __init__(self, exe: Executable, scalar: Any, itemsize: int, start: list[Any],
                 grads: tuple[tuple[str, int | None], ...]) -> None:
        self.exe = exe
        self.inputs = tuple(exe.input_slots.items())
        self.scalar = scalar  # np.float64 or np.float32
        self.itemsize = itemsize
        self.start = start  # the slot list with constants and seed in place
        self.grads = grads  # (wrt name, its gradient's slot or None)
        self.limits_passed: Limits | None = None  # the last Limits object check_limits passed
        # The same steps as (fn, arg, arg or -1, out) where none frees a slot (none does
        # when every value is small) and none takes more than two args.
        steps = exe.prefix + exe.suffix
        if all(not st.free and 1 <= len(st.args) <= 2 for st in steps):
            self.prefix = _small_steps(exe.prefix)
            self.suffix = _small_steps(exe.suffix)
            self.run = _run_small_steps
        else:
            self.prefix, self.suffix, self.run = exe.prefix, exe.suffix, run_steps


def _small_steps(steps: tuple[Step, ...]) -> tuple[tuple[Any, int, int, int], ...]:
    return tuple((st.fn, st.args[0], st.args[1] if len(st.args) == 2 else -1, st.out)
                 for st in steps)


def _run_small_steps(steps: tuple[tuple[Any, int, int, int], ...], vals: list[Any]) -> None:
    """``run_steps`` for steps of one or two args that free nothing: less to test per step."""
    for fn, a, b, out in steps:
        vals[out] = fn(vals[a]) if b < 0 else fn(vals[a], vals[b])


def scalar_run(plan: Plan, wrt: Sequence[str] | None, dtype: str) -> ScalarRun | None:
    """The prepared run, or None where this plan, dtype and wrt take the general path."""
    if wrt is not None:
        if type(wrt) is not list and type(wrt) is not tuple:
            return None
        if not all(type(n) is str for n in wrt):
            return None
        wrt = tuple(wrt)
    key = (dtype, wrt)
    runs = plan.scalar_runs
    run = runs.get(key, _UNPREPARED)
    if run is not _UNPREPARED:
        return run
    run = _prepare(plan, wrt, dtype)
    if len(runs) >= SCALAR_RUNS_PER_PLAN:
        runs.clear()
    runs[key] = run
    return run


def _prepare(plan: Plan, wrt: Sequence[str] | None, dtype: str) -> ScalarRun | None:
    reg = plan.registry
    if not reg.scalars or reg.xp is not np or dtype not in HOST_DTYPES or plan.label_inputs:
        return None
    if any(d is not None and tuple(d) != () for d in plan.inputs.values()):
        return None  # a declared shape: the general path says which value does not fit
    try:
        wrt_names = resolve_wrt(plan, wrt)
        if not wrt_names:
            return None
        exe = plan.specialize(dict.fromkeys(plan.input_order, ()),
                              want=Want(wrt=wrt_names, grads=True))
    except ProblemError:
        return None  # the general path raises it, after the checks that come first
    if exe.output_shape != ():
        return None  # gradients need an upstream
    scalar, itemsize = reg.dtypes[dtype]
    with np.errstate(all="ignore"):  # as the general path (1e300 is inf in float32)
        start = exe.start(dict.fromkeys(plan.input_order), scalar)
        start[exe.seed_slot] = seed(exe, None, scalar, required=True)
    return ScalarRun(exe, scalar, itemsize, start,
                     tuple((n, exe.grad_slots.get(n)) for n in wrt_names))


def bind_scalars(run: ScalarRun, values: Mapping[str, Any]) -> list[Any] | None:
    """A fresh slot list with ``values`` cast in place, or None (a value the general path
    must see: missing, unknown, non-numeric, not 0-d)."""
    if len(values) != len(run.inputs):
        return None
    scalar = run.scalar
    vals = run.start.copy()
    for name, slot in run.inputs:
        # Each as bind.bind_values casts it: np.asarray(v).astype(dtype)[()], only cheaper.
        v = values.get(name)
        t = type(v)
        if t is float or t is np.float64:
            vals[slot] = scalar(v)
        elif t is np.ndarray:
            x = v[()]  # a NumPy scalar where v is 0-d, else v itself (a view)
            t = type(x)
            if t is scalar:
                vals[slot] = x
            elif t is np.float64 or t is np.float32:
                vals[slot] = scalar(x)
            else:
                return None
        elif t is int and -_INT_EXACT <= v <= _INT_EXACT:
            vals[slot] = scalar(v)
        else:
            return None
    return vals


@np.errstate(all="ignore")  # as the general path: non-finite results are answers, not errors
def run_scalars(run: ScalarRun, vals: list[Any], deadline: Deadline | None) -> Result:
    """The prepared steps on bound values: forward, backward, the gradients."""
    dtype = run.scalar
    run.run(run.prefix, vals)
    if deadline is not None:
        deadline.check()
    run.run(run.suffix, vals)
    if deadline is not None:
        deadline.check()
    grads = {}
    for name, slot in run.grads:
        g = None if slot is None else vals[slot]
        grads[name] = g if type(g) is dtype else slot_value(np, vals, slot, (), dtype)
    return Result(output=np.asarray(vals[run.exe.output_slot], dtype=dtype), gradients=grads)
