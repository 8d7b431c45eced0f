"""execute: run a Plan on input values — output, gradients, Jacobians, JVPs, HVPs,
Hessians, checks, traces.

Every array operation goes through the registry's namespace ``xp`` (``plan.registry.xp``),
with functions of the Python array API standard where one exists; NumPy-only calls are
guarded (``errstate``) so another namespace runs the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from service.engine.compiler import Executable, Plan, Want, run_steps
from service.engine.limits import DEFAULT_LIMITS, Deadline, Limits
from service.engine.registry import size_of
from service.engine.shapes import fmt
from service.errors import LimitExceeded, Unprocessable

DTYPES = ("float64", "float32")
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
    *,
    wrt: Sequence[str] | None = None,
    upstream: Any = None,
    trace: bool = False,
    trace_backward: bool = False,
    jacobian: bool = False,
    check: bool = False,
    tangents: Mapping[str, Any] | None = None,
    hvp: Mapping[str, Any] | None = None,
    hessian: bool = False,
    dtype: str = "float64",
    limits: Limits = DEFAULT_LIMITS,
    fetch: Sequence[str] = (),
    deadline: Deadline | None = None,
) -> Result:
    """Run ``plan``; raises ProblemErrors naming the field at fault.

    ``tangents`` (input → direction) asks for the JVP ``Σ J_i t_i``; ``hvp`` (wrt input →
    direction) for the Hessian-vector product of the scalar objective; ``hessian`` for
    every block of its Hessian over the wrt inputs. ``fetch`` names intermediate nodes
    whose forward values are returned in ``Result.fetched`` (the MLP endpoint reads the
    network's output this way). ``deadline`` is checked between phases and in every
    Jacobian row, Hessian column and check step. Every estimate is checked against
    ``limits`` before anything is computed.
    """
    xp = plan.registry.xp
    np_dtype, itemsize = plan.registry.dtypes[dtype]
    wrt_names = _resolve_wrt(plan, wrt)
    arrays = _bind_values(plan, values, np_dtype)
    shapes = {name: arr.shape for name, arr in arrays.items()}
    _check_declared(plan, shapes)
    t_arrays = _directions(plan, tangents, shapes, np_dtype, "tangents", plan.float_inputs)
    v_arrays = _directions(plan, hvp, shapes, np_dtype, "hvp", wrt_names)
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
    _check_labels(exe, arrays)

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
    xp = plan.registry.xp
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
        arr = _asarray(xp, value, f"{field}: '{name}'", loc)
        if arr.dtype.kind not in "fiub":
            raise Unprocessable(f"{field}: '{name}' must be numeric", loc=loc)
        if arr.shape != shapes[name]:
            raise Unprocessable(f"{field}: '{name}' has shape {fmt(arr.shape)}, the input has "
                                f"{fmt(shapes[name])}", loc=loc)
        # A fresh array: the Hessian loop writes into direction arrays.
        out[name] = xp.asarray(arr, dtype=dtype, copy=True)
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


def _bind_values(plan: Plan, values: Mapping[str, Any], dtype: Any) -> dict[str, Any]:
    xp = plan.registry.xp
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
        arr = _asarray(xp, values[name], f"values: '{name}'", ("values", name))
        if arr.dtype.kind not in "fiub":
            raise Unprocessable(f"values: '{name}' must be numeric", loc=("values", name))
        if name in plan.label_inputs:
            out[name] = _labels(xp, arr, name)
        elif arr.ndim == 0:
            # A 0-d value runs as a NumPy scalar: same semantics, far cheaper arithmetic.
            out[name] = _astype(xp, arr, dtype)[()]
        else:
            out[name] = _astype(xp, arr, dtype, copy=False)
    return out


def _astype(xp: Any, arr: Any, dtype: Any, copy: bool = True) -> Any:
    """The array's own ``astype`` where it has one (NumPy's and CuPy's are C calls; the
    standard's function form costs ~1 µs more per call in NumPy), else ``xp.astype``."""
    method = getattr(arr, "astype", None)
    return method(dtype, copy=copy) if method is not None else xp.astype(arr, dtype, copy=copy)


def _asarray(xp: Any, value: Any, what: str, loc: tuple[str, ...]) -> Any:
    """xp.asarray, with a ragged or otherwise unconvertible value as a 422, not a 500."""
    try:
        return xp.asarray(value)
    except (ValueError, TypeError, OverflowError):
        raise Unprocessable(f"{what} is not a rectangular numeric array", loc=loc) from None


def _labels(xp: Any, arr: Any, name: str) -> Any:
    if arr.dtype.kind == "f":
        if not xp.all(xp.isfinite(arr)) or not xp.all(arr == xp.floor(arr)):
            raise Unprocessable(f"values: '{name}' holds class labels, which must be integers",
                                loc=("values", name))
    # Beyond int64 a cast wraps (uint64) or is undefined (float): refuse before casting. Any
    # such label is out of every class range anyway.
    if arr.size and arr.dtype.kind in "fu" and float(xp.max(xp.abs(arr))) >= 2.0**62:
        raise Unprocessable(f"values: labels '{name}' are out of range", loc=("values", name))
    return xp.astype(arr, xp.int64)


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
    xp = exe.plan.registry.xp
    if upstream is None:
        if exe.output_shape == ():
            return dtype(1.0)  # a scalar, so a scalar graph's backward stays scalar math
        if not required:
            return None
        raise Unprocessable(
            f"upstream: the output has shape {fmt(exe.output_shape)}, not a scalar; send "
            "'upstream' (dL/d(output), the same shape) for gradients or a trace, or ask "
            "for 'jacobian' alone", loc=("upstream",))
    up = _asarray(xp, upstream, "upstream", ("upstream",))
    if up.dtype.kind not in "fiub":
        raise Unprocessable("upstream: must be numeric", loc=("upstream",))
    up = _astype(xp, up, dtype, copy=False)
    if up.shape != exe.output_shape:
        raise Unprocessable(f"upstream: shape {fmt(up.shape)} differs from the output's "
                            f"{fmt(exe.output_shape)}", loc=("upstream",))
    return up[()] if up.ndim == 0 else up


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
    seed = xp.zeros(rows, dtype=dtype)
    for k in range(rows):
        tick()
        seed[k] = 1.0
        exe.backward(vals, seed.reshape(out_shape))
        for n in wrt:
            g = exe.gradient(vals, n)
            if g is not None:
                jac[n][k] = xp.reshape(xp.asarray(g), (-1,))
        # Only now: a gradient may be a view of the seed itself (add and identity pass g on).
        seed[k] = 0.0
    return {n: j.reshape(out_shape + exe.slot_shapes[exe.input_slots[n]])
            for n, j in jac.items()}


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
        flat = directions[a].reshape(-1)  # a view: writes go to the direction itself
        for j in range(sizes[a]):
            tick()
            flat[j] = 1.0
            run_steps(exe.suffix, vals)
            for b in wrt:
                slot = exe.hvp_slots.get(b)
                if slot is not None:
                    hess[a][b][j] = xp.reshape(xp.asarray(vals[slot]), (-1,))
            flat[j] = 0.0
    return {a: {b: h.reshape(shapes[a] + shapes[b]) for b, h in row.items()}
            for a, row in hess.items()}


def _f64_forward(plan: Plan, base: Mapping[str, Any]) -> Callable[[], Any]:
    xp = plan.registry.xp
    f64 = plan.specialize({n: a.shape for n, a in base.items()}, ())

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
        else xp.asarray(upstream, dtype=xp.float64))
    report = {}
    for name in wrt:
        x = base[name]
        numeric = xp.zeros((size_of(result.output.shape) if use_jacobian else 1, x.size),
                           dtype=xp.float64)
        flat = x.reshape(-1)  # a view: perturbs x in place
        for j in range(x.size):
            tick()
            orig = flat[j]
            h = CHECK_STEP * max(1.0, abs(orig))
            flat[j] = orig + h
            plus = forward()
            flat[j] = orig - h
            minus = forward()
            flat[j] = orig
            diff = (plus - minus) / (2 * h)
            numeric[:, j] = diff.reshape(-1) if use_jacobian else xp.sum(weights * diff)
        if use_jacobian:
            analytic = xp.asarray(result.jacobians[name], dtype=xp.float64).reshape(numeric.shape)
        else:
            analytic = xp.asarray(result.gradients[name], dtype=xp.float64).reshape(numeric.shape)
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
    exe = plan.specialize({n: a.shape for n, a in base.items()}, wrt)
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
    return float(xp.max(xp.abs(a))) if a.size else 0.0


def errors(analytic: Any, numeric: Any, xp: Any = None) -> dict[str, float]:
    """max |a-n| and max |a-n| / max(|a|, |n|, tiny), as docs/api.md §4 defines them."""
    if xp is None:
        import numpy as xp  # callers outside the engine (tests) compare NumPy arrays
    if analytic.size == 0:
        return {"max_abs_error": 0.0, "max_rel_error": 0.0}
    diff = xp.abs(analytic - numeric)
    tiny = xp.finfo(xp.float64).smallest_normal
    scale = xp.maximum(xp.maximum(xp.abs(analytic), xp.abs(numeric)), tiny)
    return {"max_abs_error": float(xp.max(diff)),
            "max_rel_error": float(xp.max(diff / scale))}
