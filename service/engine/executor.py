"""execute: run a Plan on input values — output, gradients, Jacobians, JVPs, HVPs,
Hessians, checks, traces.

Every array operation goes through the registry's namespace ``xp`` (``plan.registry.xp``),
with functions of the Python array API standard only (NumPy's ``errstate`` is guarded), so
CuPy and array-api-strict run the same code. Request values are validated and cast on the
host with NumPy, checked against every limit, then moved to the device once
(``registry.to_device``); results come back once at the end (``registry.to_host``). The
step loop itself never reads a device value on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.engine.compiler import Executable, Plan, Step, Want, run_steps
from service.engine.errors import LimitExceeded, ProblemError, Unprocessable
from service.engine.limits import DEFAULT_LIMITS, Deadline, Limits
from service.engine.query import DTYPES, PLAIN, Query
from service.engine.registry import size_of
from service.engine.shapes import fmt

_HOST_DTYPES = {name: np.dtype(name) for name in DTYPES}
# Central-difference step for float64: about cbrt(machine epsilon), scaled by |x|.
CHECK_STEP = 6e-6


@dataclass
class Result:
    output: Any
    gradients: dict[str, Any]
    jacobians: dict[str, Any] | None = None
    trace: list[dict[str, Any]] | None = None
    trace_backward: list[dict[str, Any]] | None = None
    check: dict[str, dict[str, float]] | None = None
    hvp_check: dict[str, dict[str, float]] | None = None
    fetched: dict[str, Any] | None = None
    jvp: Any = None
    hvp: dict[str, Any] | None = None
    hessian: dict[str, dict[str, Any]] | None = None


def execute(  # noqa: C901 - one request, phase by phase
    plan: Plan,
    values: Mapping[str, Any],
    query: Query = PLAIN,
    *,
    limits: Limits = DEFAULT_LIMITS,
    deadline: Deadline | None = None,
) -> Result:
    """Run ``plan`` on ``values`` as ``query`` asks; raises ProblemErrors naming the field
    at fault.

    ``deadline`` is checked between phases and in every Jacobian row, Hessian column and
    check step. Every estimate is checked against ``limits`` before anything is computed.
    """
    if query.is_plain:
        # A plain request whose values are all scalars: the same executable, prepared once.
        result = _execute_scalars(plan, values, query.wrt, query.dtype, limits, deadline)
        if result is not None:
            return result
    wrt, upstream, tangents, hvp = query.wrt, query.upstream, query.tangents, query.hvp
    trace, trace_backward, jacobian = query.trace, query.trace_backward, query.jacobian
    check, hessian, dtype, fetch = query.check, query.hessian, query.dtype, query.fetch
    reg = plan.registry
    xp = reg.xp
    np_dtype, itemsize = reg.dtypes[dtype]
    host_dtype = _HOST_DTYPES[dtype]
    wrt_names = _resolve_wrt(plan, wrt)
    host = _bind_values(plan, values, host_dtype, reg.scalars)
    shapes = {name: tuple(arr.shape) for name, arr in host.items()}
    _check_declared(plan, shapes)
    t_arrays = _directions(plan, tangents, shapes, host_dtype, "tangents", plan.float_inputs)
    v_arrays = _directions(plan, hvp, shapes, host_dtype, "hvp", wrt_names)
    trace = trace or trace_backward
    # With a Jacobian, an upstream given is used too: the gradients are its VJP.
    grads = ((not jacobian or upstream is not None)
             and (bool(wrt_names) or upstream is not None)) or trace
    want = Want(wrt=wrt_names, grads=grads or v_arrays is not None, all_grads=trace,
                keep_values=trace, fetch=tuple(fetch),
                hvp=None if v_arrays is None else tuple(v_arrays),
                jvp=None if t_arrays is None else tuple(t_arrays),
                trace_backward=trace_backward)
    exe = plan.specialize(shapes, want=want)
    exe.check_limits(limits, itemsize)
    _check_labels(exe, host)

    jac_exe = hess_exe = None
    if jacobian:
        rows = size_of(exe.output_shape)
        if rows > limits.max_jacobian_rows:
            raise LimitExceeded("max_jacobian_rows", limits.max_jacobian_rows, rows,
                                "Jacobian rows (output elements)", loc=("jacobian",))
        entries = rows * sum(size_of(shapes[n]) for n in wrt_names)
        if entries > limits.max_jacobian_elements:
            raise LimitExceeded("max_jacobian_elements", limits.max_jacobian_elements,
                                entries, "Jacobian entries", loc=("jacobian",))
        jac_exe = plan.specialize(shapes, want=Want(wrt=wrt_names, repeat="seed"))
        jac_exe.check_limits(limits, itemsize, extra_bytes=entries * itemsize, repeats=rows,
                             what=" for the Jacobian")
    if hessian:
        n_in = sum(size_of(shapes[n]) for n in wrt_names)
        if n_in * n_in > limits.max_hessian_elements:
            raise LimitExceeded("max_hessian_elements", limits.max_hessian_elements,
                                n_in * n_in, "Hessian entries", loc=("hessian",))
        hess_exe = plan.specialize(shapes, want=Want(wrt=wrt_names, hvp=wrt_names,
                                                     repeat="hvp"))
        hess_exe.check_limits(limits, itemsize, extra_bytes=n_in * n_in * itemsize,
                              repeats=n_in, what=" for the Hessian")
    seed = None
    if want.grads:
        # No gradient asked for (wrt: []) and no trace: a forward pass needs no upstream.
        seed = _seed(exe, upstream, np_dtype, required=True)
    elif hessian:
        _seed(exe, upstream, np_dtype, required=True)
    if check:
        n_check = sum(size_of(shapes[n]) for n in wrt_names)
        if n_check > limits.max_check_elements:
            raise LimitExceeded("max_check_elements", limits.max_check_elements, n_check,
                                "input elements to perturb for the check", loc=("check",))
        work = 2 * n_check * exe.forward_flops + (2 * exe.flops if v_arrays else 0)
        if work > limits.max_flops:
            raise LimitExceeded("max_flops", limits.max_flops, work,
                                "estimated gradient-check work (flops)", loc=("check",))
        # The check holds float64 copies of the inputs and one forward pass at a time.
        if exe.peak_elements * 8 > limits.max_memory_bytes:
            raise LimitExceeded("max_memory_bytes", limits.max_memory_bytes,
                                exe.peak_elements * 8, "estimated peak bytes of the check",
                                loc=("check",))

    tick = deadline.check if deadline is not None else _no_deadline
    tick()
    # Every limit passed: now the values go to the device, once each.
    arrays = _to_device(reg, host, np_dtype)
    if t_arrays is not None:
        t_arrays = {n: reg.to_device(a) for n, a in t_arrays.items()}
    if v_arrays is not None:
        v_arrays = {n: reg.to_device(a) for n, a in v_arrays.items()}
    errstate = getattr(xp, "errstate", None)
    with errstate(all="ignore") if errstate is not None else nullcontext():
        vals = exe.start(arrays, np_dtype)
        if seed is not None:
            vals[exe.seed_slot] = seed
        for name, slot in exe.hvp_leaves.items():
            vals[slot] = v_arrays[name]  # type: ignore[index]
        for name, slot in exe.tangent_leaves.items():
            vals[slot] = t_arrays[name]  # type: ignore[index]
        if exe.u_slot >= 0:
            vals[exe.u_slot] = _zeros(xp, exe.output_shape, np_dtype)
        run_steps(exe.prefix, vals)
        tick()
        run_steps(exe.suffix, vals)
        tick()
        output = xp.asarray(vals[exe.output_slot], dtype=np_dtype)
        result = Result(output=output, gradients={})
        if fetch:
            result.fetched = {n: xp.asarray(vals[exe.slot_of[n]], dtype=np_dtype)
                              for n in fetch}
        if seed is not None:
            result.gradients = {n: _slot_value(xp, vals, exe.grad_slots.get(n), shapes[n],
                                               np_dtype) for n in wrt_names}
            if trace:
                result.trace = _trace(exe, vals, np_dtype)
            if trace_backward:
                result.trace_backward = _trace_backward(exe, vals, np_dtype)
        if v_arrays is not None:
            result.hvp = {n: _slot_value(xp, vals, exe.hvp_slots.get(n), shapes[n], np_dtype)
                          for n in wrt_names}
        if t_arrays is not None:
            result.jvp = _slot_value(xp, vals, exe.jvp_slot if exe.jvp_slot >= 0 else None,
                                     exe.output_shape, np_dtype)
        del vals
        if jac_exe is not None:
            result.jacobians = _jacobians(jac_exe, arrays, wrt_names, np_dtype, tick)
            if not want.grads:
                result.gradients = {}
        if hess_exe is not None:
            result.hessian = _hessian(hess_exe, arrays, wrt_names, upstream, np_dtype, tick)
        if check:
            result.check = _check(plan, arrays, wrt_names, result, upstream, tick)
            if v_arrays is not None:
                result.hvp_check = _check_hvp(plan, arrays, wrt_names, v_arrays, result,
                                              upstream, tick)
    return _results_to_host(reg, result) if reg.host is not None and not reg.scalars \
        else result


# --- the all-scalar path ----------------------------------------------------------------
#
# A request with no options whose every value is a number (or a 0-d float array) on the
# NumPy backend runs the very executable the general path would pick, with the same NumPy
# scalar kernels; what it skips is per-request bookkeeping done once per (plan, dtype, wrt):
# the Want and specialization lookup, the constants and seed, the limit check (redone only
# for another Limits object). Anything it does not expect returns None, and the general
# path then runs (and raises whatever error the request earns).

_SCALAR_RUNS_PER_PLAN = 16
_UNPREPARED = object()
_INT_EXACT = 2**53  # ints within this convert to float64 exactly, however they get there


class _ScalarRun:
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


def _scalar_run(plan: Plan, wrt: Sequence[str] | None, dtype: str) -> _ScalarRun | None:
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
    run = _prepare_scalar_run(plan, wrt, dtype)
    if len(runs) >= _SCALAR_RUNS_PER_PLAN:
        runs.clear()
    runs[key] = run
    return run


def _prepare_scalar_run(plan: Plan, wrt: Sequence[str] | None, dtype: str
                        ) -> _ScalarRun | None:
    reg = plan.registry
    if not reg.scalars or reg.xp is not np or dtype not in _HOST_DTYPES or plan.label_inputs:
        return None
    if any(d is not None and tuple(d) != () for d in plan.inputs.values()):
        return None  # a declared shape: the general path says which value does not fit
    try:
        wrt_names = _resolve_wrt(plan, wrt)
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
        start[exe.seed_slot] = _seed(exe, None, scalar, required=True)
    return _ScalarRun(exe, scalar, itemsize, start,
                      tuple((n, exe.grad_slots.get(n)) for n in wrt_names))


def _execute_scalars(plan: Plan, values: Mapping[str, Any], wrt: Sequence[str] | None,
                     dtype: str, limits: Limits, deadline: Deadline | None) -> Result | None:
    """``execute`` for scalar values, or None (then the general path runs)."""
    run = _scalar_run(plan, wrt, dtype)
    if run is None or len(values) != len(run.inputs):
        return None
    scalar = run.scalar
    vals = run.start.copy()
    for name, slot in run.inputs:
        # Each as _bind_values casts it: np.asarray(v).astype(dtype)[()], only cheaper.
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
            return None  # missing, unknown, non-numeric, not 0-d: the general path
    exe = run.exe
    if run.limits_passed is not limits:
        exe.check_limits(limits, run.itemsize)
        run.limits_passed = limits
    if deadline is not None:
        deadline.check()
    return _run_scalars(run, vals, deadline)


@np.errstate(all="ignore")  # as the general path: non-finite results are answers, not errors
def _run_scalars(run: _ScalarRun, vals: list[Any], deadline: Deadline | None) -> Result:
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
        grads[name] = g if type(g) is dtype else _slot_value(np, vals, slot, (), dtype)
    return Result(output=np.asarray(vals[run.exe.output_slot], dtype=dtype), gradients=grads)


def _to_device(reg: Any, host: Mapping[str, Any], dtype: Any) -> dict[str, Any]:
    """The bound host values on the device; 0-d values as NumPy scalars where allowed."""
    if reg.scalars:  # NumPy: the host values are the device values
        return host  # type: ignore[return-value]
    return {n: reg.to_device(a) for n, a in host.items()}


def _results_to_host(reg: Any, result: Result) -> Result:
    """Every tensor of ``result`` as a NumPy array: one device-to-host copy each."""
    to_host = reg.to_host

    def each(d: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if d is None else {n: to_host(v) for n, v in d.items()}

    result.output = to_host(result.output)
    result.gradients = each(result.gradients) or {}
    result.jacobians = each(result.jacobians)
    result.fetched = each(result.fetched)
    result.hvp = each(result.hvp)
    if result.jvp is not None:
        result.jvp = to_host(result.jvp)
    if result.hessian is not None:
        result.hessian = {a: {b: to_host(h) for b, h in row.items()}
                          for a, row in result.hessian.items()}
    for records in (result.trace, result.trace_backward):
        for rec in records or ():
            for key in ("value", "grad"):
                if key in rec:
                    rec[key] = to_host(rec[key])
    return result


def _zeros(xp: Any, shape: tuple[int, ...], dtype: Any) -> Any:
    return xp.zeros(shape, dtype=dtype)


def _slot_value(xp: Any, vals: list[Any], slot: int | None, shape: tuple[int, ...],
                dtype: Any) -> Any:
    """A result slot's value in ``dtype`` (zeros where the graph has no path: None)."""
    if slot is None:
        return xp.zeros(shape, dtype=dtype)
    g = vals[slot]
    if type(g) is dtype:  # a 0-d value run as a NumPy scalar: the common small case
        return g
    return g if getattr(g, "dtype", None) == dtype and getattr(g, "shape", None) == shape \
        else xp.broadcast_to(xp.asarray(g, dtype=dtype), shape)


def _directions(plan: Plan, given: Mapping[str, Any] | None, shapes: Mapping[str, Any],
                dtype: Any, field: str, allowed: Sequence[str]) -> dict[str, Any] | None:
    """Validate ``tangents`` / ``hvp``: known inputs, in ``allowed``, the input's shape."""
    if given is None:
        return None
    out = {}
    for name, value in given.items():
        loc = (field, name)
        if name not in plan.inputs:
            raise Unprocessable(f"{field}: '{name}' is not an input of the graph (inputs: "
                                f"{', '.join(sorted(plan.inputs)) or 'none'})", loc=loc)
        if name not in allowed:
            why = ("holds integer labels" if name in plan.label_inputs
                   else "is not among the inputs differentiated (wrt)")
            raise Unprocessable(f"{field}: '{name}' {why}", loc=loc)
        arr = _asarray(value, f"{field}: '{name}'", loc)
        if arr.dtype.kind not in "fiub":
            raise Unprocessable(f"{field}: '{name}' must be numeric", loc=loc)
        if arr.shape != shapes[name]:
            raise Unprocessable(f"{field}: '{name}' has shape {fmt(arr.shape)}, the input has "
                                f"{fmt(shapes[name])}", loc=loc)
        # A fresh array: the Hessian loop writes into direction arrays.
        out[name] = np.array(arr, dtype=dtype, copy=True)
    return out


# --- binding ---------------------------------------------------------------------------


def _resolve_wrt(plan: Plan, wrt: Sequence[str] | None) -> tuple[str, ...]:
    if wrt is None:
        return plan.float_inputs
    seen = []
    for i, name in enumerate(wrt):
        if name in plan.label_inputs:
            raise Unprocessable(f"wrt: '{name}' holds integer labels and has no gradient",
                                loc=("wrt", i))
        if name not in plan.inputs:
            raise Unprocessable(f"wrt: '{name}' is not an input of the graph "
                                f"(inputs: {', '.join(sorted(plan.inputs)) or 'none'})",
                                loc=("wrt", i))
        if name not in seen:
            seen.append(name)
    return tuple(seen)


def _bind_values(plan: Plan, values: Mapping[str, Any], dtype: Any, scalars: bool
                 ) -> dict[str, Any]:
    """Validate and cast every input on the host (NumPy); labels as int64. With ``scalars``
    (NumPy backend) a 0-d value runs as a NumPy scalar: same semantics, cheaper arithmetic."""
    for name in values:
        if name not in plan.inputs:
            raise Unprocessable(f"values: '{name}' is not an input of the graph "
                                f"(inputs: {', '.join(sorted(plan.inputs)) or 'none'})",
                                loc=("values", name))
    out = {}
    for name in plan.input_order:
        if name not in values:
            raise Unprocessable(f"values: missing a value for input '{name}'",
                                loc=("values", name))
        arr = _asarray(values[name], f"values: '{name}'", ("values", name))
        if arr.dtype.kind not in "fiub":
            raise Unprocessable(f"values: '{name}' must be numeric", loc=("values", name))
        if name in plan.label_inputs:
            out[name] = _labels(arr, name)
        elif arr.ndim == 0:
            arr = arr.astype(dtype)  # a fresh array: checks perturb inputs in place
            out[name] = arr[()] if scalars else arr
        else:
            out[name] = arr.astype(dtype, copy=False)
    return out


def _asarray(value: Any, what: str, loc: tuple[str, ...]) -> Any:
    """A request value as a host NumPy array; ragged or unconvertible: a 422, not a 500."""
    if type(value) is np.ndarray:
        return value
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise Unprocessable(f"{what} is not a rectangular numeric array", loc=loc) from None


def _labels(arr: Any, name: str) -> Any:
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.floor(arr)):
            raise Unprocessable(f"values: '{name}' holds class labels, which must be integers",
                                loc=("values", name))
    # Beyond int64 a cast wraps (uint64) or is undefined (float): refuse before casting. Any
    # such label is out of every class range anyway.
    if arr.size and arr.dtype.kind in "fu" and float(np.max(np.abs(arr))) >= 2.0**62:
        raise Unprocessable(f"values: labels '{name}' are out of range", loc=("values", name))
    return arr.astype(np.int64)


def _check_declared(plan: Plan, shapes: Mapping[str, tuple[int, ...]]) -> None:
    for name, declared in plan.inputs.items():
        if declared is not None and tuple(declared) != shapes[name]:
            raise Unprocessable(f"values: '{name}' has shape {fmt(shapes[name])}, the graph "
                                f"declares {fmt(declared)}", loc=("values", name))


def _check_labels(exe: Executable, arrays: Mapping[str, Any]) -> None:
    for name, classes in exe.label_bounds:
        y = arrays[name]
        if y.size and (int(y.min()) < 0 or int(y.max()) >= classes):
            raise Unprocessable(f"values: labels '{name}' must lie in [0, {classes}), got "
                                f"{int(y.min())}..{int(y.max())}", loc=("values", name))


def _seed(exe: Executable, upstream: Any, dtype: Any, *, required: bool) -> Any:
    reg = exe.plan.registry
    if upstream is None:
        if exe.output_shape == ():
            # A scalar, so a scalar graph's backward stays scalar math (NumPy).
            return reg.scalar(1.0, dtype)
        if not required:
            return None
        raise Unprocessable(
            f"upstream: the output has shape {fmt(exe.output_shape)}, not a scalar; send "
            "'upstream' (dL/d(output), the same shape) for gradients or a trace, or ask "
            "for 'jacobian' alone", loc=("upstream",))
    up = _asarray(upstream, "upstream", ("upstream",))
    if up.dtype.kind not in "fiub":
        raise Unprocessable("upstream: must be numeric", loc=("upstream",))
    if up.shape != exe.output_shape:
        raise Unprocessable(f"upstream: shape {fmt(up.shape)} differs from the output's "
                            f"{fmt(exe.output_shape)}", loc=("upstream",))
    if reg.scalars:
        up = up.astype(np.dtype(dtype), copy=False)
        return up[()] if up.ndim == 0 else up
    return reg.to_device(up.astype(_host_dtype(dtype), copy=False))


def _host_dtype(dtype: Any) -> Any:
    """The NumPy dtype of a namespace's float dtype (float64 / float32)."""
    return np.float32 if "32" in str(dtype) else np.float64


# --- trace, Jacobians, Hessians, checks -----------------------------------------------


def _trace(exe: Executable, vals: list[Any], dtype: Any) -> list[dict[str, Any]]:
    xp = exe.plan.registry.xp
    records = []
    for node, slot in exe.node_slots:
        shape = exe.slot_shapes[slot]
        records.append({
            "id": node.id,
            "op": node.op.name,
            "args": list(node.args),
            "shape": list(shape),
            "value": xp.asarray(vals[slot], dtype=dtype),
            "grad": _slot_value(xp, vals, exe.node_grad_slots.get(node.id), shape, dtype),
        })
    return records


def _trace_backward(exe: Executable, vals: list[Any], dtype: Any) -> list[dict[str, Any]]:
    """The backward graph's nodes (the lecture's red numbers, as a graph of their own)."""
    xp = exe.plan.registry.xp
    names = exe.slot_names
    grad_of = {s: n for n, s in exe.node_grad_slots.items()}
    grad_of.update({s: n for n, s in exe.grad_slots.items()})
    records = []
    for slot, op, args, origin in exe.backward_records:
        rec = {
            "id": names[slot],
            "op": op,
            "args": [names[a] for a in args],
            "shape": list(exe.slot_shapes[slot]),
            "value": xp.asarray(vals[slot], dtype=dtype),
            "vjp_of": origin,
        }
        if slot in grad_of:
            rec["grad_of"] = grad_of[slot]
        records.append(rec)
    return records


def _no_deadline() -> None:
    return None


def _jacobians(exe: Executable, arrays: Mapping[str, Any], wrt: tuple[str, ...], dtype: Any,
               tick: Callable[[], None] = _no_deadline) -> dict[str, Any]:
    """Row k of every Jacobian is the VJP of the k-th one-hot seed; the forward runs once
    and only the backward steps (the suffix) run per row."""
    xp = exe.plan.registry.xp
    out_shape = exe.output_shape
    rows = size_of(out_shape)
    jac = {n: xp.zeros((rows, size_of(exe.slot_shapes[exe.input_slots[n]])), dtype=dtype)
           for n in wrt}
    vals = exe.forward(arrays, dtype)
    seed = xp.zeros(out_shape, dtype=dtype)
    for k in range(rows):
        tick()
        at = _unravel(k, out_shape)
        seed[at] = 1.0
        exe.backward(vals, seed)
        for n in wrt:
            g = exe.gradient(vals, n)
            if g is not None:
                jac[n][k, ...] = xp.reshape(xp.asarray(g, dtype=dtype), (-1,))
        # Only now: a gradient may be the seed itself (add and identity pass g on).
        seed[at] = 0.0
    return {n: xp.reshape(j, out_shape + exe.slot_shapes[exe.input_slots[n]])
            for n, j in jac.items()}


def _unravel(k: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The index tuple of flat (row-major) position ``k``: the standard has no flat views
    to write through, but every namespace takes ``a[i, j] = v``."""
    at = []
    for d in reversed(shape):
        k, r = divmod(k, d)
        at.append(r)
    return tuple(reversed(at))


def _hessian(exe: Executable, arrays: Mapping[str, Any], wrt: tuple[str, ...], upstream: Any,
             dtype: Any, tick: Callable[[], None] = _no_deadline) -> dict[str, dict[str, Any]]:
    """Column by column: the HVP with each basis vector, one compiled HVP executable whose
    forward and first-order backward (the prefix) run once."""
    xp = exe.plan.registry.xp
    shapes = {n: exe.slot_shapes[exe.input_slots[n]] for n in wrt}
    sizes = {n: size_of(s) for n, s in shapes.items()}
    hess = {a: {b: xp.zeros((sizes[a], sizes[b]), dtype=dtype) for b in wrt} for a in wrt}
    vals = exe.start(arrays, dtype)
    vals[exe.seed_slot] = _seed(exe, upstream, dtype, required=True)
    directions = {n: xp.zeros(shapes[n], dtype=dtype) for n in wrt}
    for n, slot in exe.hvp_leaves.items():
        vals[slot] = directions[n]
    run_steps(exe.prefix, vals)
    for a in wrt:
        for j in range(sizes[a]):
            tick()
            at = _unravel(j, shapes[a])
            directions[a][at] = 1.0  # in place: the leaf slot holds this array
            run_steps(exe.suffix, vals)
            for b in wrt:
                slot = exe.hvp_slots.get(b)
                if slot is not None:
                    hess[a][b][j, ...] = xp.reshape(xp.asarray(vals[slot], dtype=dtype), (-1,))
            directions[a][at] = 0.0
    return {a: {b: xp.reshape(h, shapes[a] + shapes[b]) for b, h in row.items()}
            for a, row in hess.items()}


def _f64_forward(plan: Plan, base: Mapping[str, Any]) -> Callable[[], Any]:
    xp = plan.registry.xp
    f64 = plan.specialize({n: tuple(a.shape) for n, a in base.items()}, ())

    def run() -> Any:
        out = f64.forward(base, xp.float64)[f64.output_slot]
        return xp.asarray(out, dtype=xp.float64, copy=True)

    return run


def _check(plan: Plan, arrays: Mapping[str, Any], wrt: tuple[str, ...], result: Result,
           upstream: Any, tick: Callable[[], None] = _no_deadline
           ) -> dict[str, dict[str, float]]:
    """Compare with central differences computed in float64 from the same inputs."""
    xp = plan.registry.xp
    # Fresh float64 arrays (0-d ones too, never scalars): perturbed in place below.
    base = {n: (a if n in plan.label_inputs else xp.asarray(a, dtype=xp.float64, copy=True))
            for n, a in arrays.items()}
    forward = _f64_forward(plan, base)
    use_jacobian = result.jacobians is not None
    weights = None if use_jacobian else (
        xp.ones((), dtype=xp.float64) if upstream is None
        else plan.registry.to_device(np.asarray(upstream, dtype=np.float64)))
    report = {}
    for name in wrt:
        x = base[name]
        shape = tuple(x.shape)
        n = size_of(shape)
        numeric = xp.zeros((size_of(result.output.shape) if use_jacobian else 1, n),
                           dtype=xp.float64)
        for j in range(n):
            tick()
            at = _unravel(j, shape)
            orig = float(x[at])  # a host read per perturbed element: the check is slow anyway
            h = CHECK_STEP * max(1.0, abs(orig))
            x[at] = orig + h  # in place: ``forward`` reads x
            plus = forward()
            x[at] = orig - h
            minus = forward()
            x[at] = orig
            diff = (plus - minus) / (2 * h)
            numeric[:, j] = xp.reshape(diff, (-1,)) if use_jacobian else xp.sum(weights * diff)
        got = result.jacobians[name] if use_jacobian else result.gradients[name]
        analytic = xp.reshape(xp.asarray(got, dtype=xp.float64), numeric.shape)
        report[name] = errors(analytic, numeric, xp)
    return report


def _check_hvp(plan: Plan, arrays: Mapping[str, Any], wrt: tuple[str, ...],
               directions: Mapping[str, Any], result: Result, upstream: Any,
               tick: Callable[[], None] = _no_deadline) -> dict[str, dict[str, float]]:
    """The HVP against central differences of the exact gradient along v, in float64:
    (∇s(x + h v) - ∇s(x - h v)) / 2h."""
    xp = plan.registry.xp
    base = {n: (a if n in plan.label_inputs else xp.asarray(a, dtype=xp.float64, copy=True))
            for n, a in arrays.items()}
    exe = plan.specialize({n: tuple(a.shape) for n, a in base.items()}, wrt)
    seed = _seed(exe, upstream, xp.float64, required=True)
    v = {n: xp.asarray(d, dtype=xp.float64) for n, d in directions.items()}
    vmax = max((_absmax(xp, d) for d in v.values()), default=0.0)
    xmax = max((_absmax(xp, base[n]) for n in v), default=0.0)
    h = CHECK_STEP * max(1.0, xmax) / max(vmax, 1e-300)

    def grads_at(sign: float) -> dict[str, Any]:
        tick()
        moved = {**base, **{n: base[n] + sign * h * d for n, d in v.items()}}
        vals = exe.backward(exe.forward(moved, xp.float64), seed)
        return {n: xp.zeros(base[n].shape, dtype=xp.float64) if exe.gradient(vals, n) is None
                else xp.asarray(exe.gradient(vals, n), dtype=xp.float64, copy=True) for n in wrt}

    if vmax == 0.0:
        numeric = {n: xp.zeros(base[n].shape, dtype=xp.float64) for n in wrt}
    else:
        plus, minus = grads_at(1.0), grads_at(-1.0)
        numeric = {n: (plus[n] - minus[n]) / (2 * h) for n in wrt}
    assert result.hvp is not None
    return {n: errors(xp.asarray(result.hvp[n], dtype=xp.float64), numeric[n], xp) for n in wrt}


def _absmax(xp: Any, a: Any) -> float:
    return float(xp.max(xp.abs(a))) if size_of(a.shape) else 0.0


def errors(analytic: Any, numeric: Any, xp: Any = None) -> dict[str, float]:
    """max |a-n| and max |a-n| / max(|a|, |n|, tiny), as docs/api.md §4 defines them."""
    if xp is None:
        import numpy as xp  # callers outside the engine (tests) compare NumPy arrays
    if size_of(analytic.shape) == 0:
        return {"max_abs_error": 0.0, "max_rel_error": 0.0}
    diff = xp.abs(analytic - numeric)
    tiny = xp.finfo(xp.float64).smallest_normal
    scale = xp.maximum(xp.maximum(xp.abs(analytic), xp.abs(numeric)), tiny)
    return {"max_abs_error": float(xp.max(diff)),
            "max_rel_error": float(xp.max(diff / scale))}
