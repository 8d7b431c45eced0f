"""execute: run a Plan on input values — output, gradients, Jacobians, checks, trace."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.engine.compiler import Executable, Plan
from service.engine.limits import DEFAULT_LIMITS, Deadline, Limits
from service.engine.registry import size_of
from service.engine.shapes import fmt
from service.errors import LimitExceeded, Unprocessable

DTYPES = {"float64": np.float64, "float32": np.float32}
# Central-difference step for float64: about cbrt(machine epsilon), scaled by |x|.
CHECK_STEP = 6e-6


@dataclass
class Result:
    output: Any
    gradients: dict[str, Any]
    jacobians: dict[str, Any] | None = None
    trace: list[dict[str, Any]] | None = None
    check: dict[str, dict[str, float]] | None = None
    fetched: dict[str, Any] | None = None


def execute(
    plan: Plan,
    values: Mapping[str, Any],
    *,
    wrt: Sequence[str] | None = None,
    upstream: Any = None,
    trace: bool = False,
    jacobian: bool = False,
    check: bool = False,
    dtype: str = "float64",
    limits: Limits = DEFAULT_LIMITS,
    fetch: Sequence[str] = (),
    deadline: Deadline | None = None,
) -> Result:
    """Forward and backward over ``plan``; raises ProblemErrors naming the field at fault.

    ``fetch`` names intermediate nodes whose forward values are returned in
    ``Result.fetched`` (the MLP endpoint reads the network's output this way).
    ``deadline`` is checked between phases and in every Jacobian row and check step.
    """
    np_dtype = DTYPES[dtype]
    wrt_names = _resolve_wrt(plan, wrt)
    arrays = _bind_values(plan, values, np_dtype)
    shapes = {name: arr.shape for name, arr in arrays.items()}
    _check_declared(plan, shapes)
    exe = plan.specialize(shapes, wrt_names, all_grads=trace, keep_values=trace,
                          fetch=tuple(fetch))
    exe.check_limits(limits)
    _check_labels(exe, arrays)

    if jacobian:
        rows = size_of(exe.output_shape)
        if rows > limits.max_jacobian_rows:
            raise LimitExceeded("max_jacobian_rows", limits.max_jacobian_rows, rows,
                                "Jacobian rows (output elements)", loc=("jacobian",))
        entries = rows * sum(size_of(shapes[n]) for n in wrt_names)
        if entries > limits.max_jacobian_elements:
            raise LimitExceeded("max_jacobian_elements", limits.max_jacobian_elements,
                                entries, "Jacobian entries", loc=("jacobian",))
        if rows * exe.flops > limits.max_flops:
            raise LimitExceeded("max_flops", limits.max_flops, rows * exe.flops,
                                "estimated Jacobian work (flops)", loc=("jacobian",))
    seed = None
    if ((not jacobian or upstream is not None) and (wrt_names or upstream is not None)) \
            or trace:
        # No gradient asked for (wrt: []) and no trace: a forward pass needs no upstream.
        # With a Jacobian, an upstream given is used too: the gradients are its VJP.
        seed = _seed(exe, upstream, np_dtype, required=True)
    if check:
        n_check = sum(size_of(shapes[n]) for n in wrt_names)
        if n_check > limits.max_check_elements:
            raise LimitExceeded("max_check_elements", limits.max_check_elements, n_check,
                                "input elements to perturb for the check", loc=("check",))
        work = 2 * n_check * exe.forward_flops
        if work > limits.max_flops:
            raise LimitExceeded("max_flops", limits.max_flops, work,
                                "estimated gradient-check work (flops)", loc=("check",))

    tick = deadline.check if deadline is not None else _no_deadline
    tick()
    with np.errstate(all="ignore"):
        vals = exe.forward(arrays, np_dtype)
        tick()
        output = np.asarray(vals[exe.output_slot], dtype=np_dtype)
        result = Result(output=output, gradients={})
        if fetch:
            result.fetched = {n: np.asarray(vals[exe.slot_of[n]], dtype=np_dtype) for n in fetch}
        if seed is not None:
            grads = exe.backward(vals, seed)
            tick()
            result.gradients = {n: _grad(grads, exe, n, np_dtype) for n in wrt_names}
            if trace:
                result.trace = _trace(exe, vals, grads, np_dtype)
        if jacobian:
            result.jacobians = _jacobians(exe, vals, wrt_names, np_dtype, tick)
            if seed is None:
                result.gradients = {}
        if check:
            result.check = _check(plan, exe, arrays, wrt_names, result, upstream, tick)
    return result


# --- binding ------------------------------------------------------------------------------


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
            # A 0-d value runs as a NumPy scalar: same semantics, far cheaper arithmetic.
            out[name] = arr.astype(dtype)[()]
        else:
            out[name] = arr.astype(dtype, copy=False)
    return out


def _asarray(value: Any, what: str, loc: tuple[str, ...]) -> Any:
    """np.asarray, with a ragged or otherwise unconvertible value as a 422, not a 500."""
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
    if upstream is None:
        if exe.output_shape == ():
            return dtype(1.0)  # a scalar, so a scalar graph's backward stays scalar math
        if not required:
            return None
        raise Unprocessable(
            f"upstream: the output has shape {fmt(exe.output_shape)}, not a scalar; send "
            "'upstream' (dL/d(output), the same shape) for gradients or a trace, or ask "
            "for 'jacobian' alone", loc=("upstream",))
    up = _asarray(upstream, "upstream", ("upstream",))
    if up.dtype.kind not in "fiub":
        raise Unprocessable("upstream: must be numeric", loc=("upstream",))
    up = up.astype(dtype, copy=False)
    if up.shape != exe.output_shape:
        raise Unprocessable(f"upstream: shape {fmt(up.shape)} differs from the output's "
                            f"{fmt(exe.output_shape)}", loc=("upstream",))
    return up[()] if up.ndim == 0 else up


def _grad(grads: list[Any], exe: Executable, name: str, dtype: Any) -> Any:
    slot = exe.input_slots[name]
    g = grads[slot]
    if g is None:
        return np.zeros(exe.slot_shapes[slot], dtype=dtype)
    return g if getattr(g, "dtype", None) == dtype else np.asarray(g, dtype=dtype)


# --- trace, Jacobians, checks -------------------------------------------------------------


def _trace(exe: Executable, vals: list[Any], grads: list[Any], dtype: Any
           ) -> list[dict[str, Any]]:
    records = []
    for node, slot in exe.node_slots:
        g = grads[slot]
        shape = exe.slot_shapes[slot]
        records.append({
            "id": node.id,
            "op": node.op.name,
            "args": list(node.args),
            "shape": list(shape),
            "value": np.asarray(vals[slot], dtype=dtype),
            "grad": np.zeros(shape, dtype=dtype) if g is None else np.asarray(g, dtype=dtype),
        })
    return records


def _no_deadline() -> None:
    return None


def _jacobians(exe: Executable, vals: list[Any], wrt: tuple[str, ...], dtype: Any,
               tick: Callable[[], None] = _no_deadline) -> dict[str, Any]:
    """Row k of every Jacobian is the VJP of the k-th one-hot seed; the forward runs once."""
    out_shape = exe.output_shape
    rows = size_of(out_shape)
    jac = {n: np.zeros((rows, size_of(exe.slot_shapes[exe.input_slots[n]])), dtype=dtype)
           for n in wrt}
    seed = np.zeros(rows, dtype=dtype)
    for k in range(rows):
        tick()
        seed[k] = 1.0
        grads = exe.backward(vals, seed.reshape(out_shape))
        for n in wrt:
            g = grads[exe.input_slots[n]]
            if g is not None:
                jac[n][k] = np.ravel(g)
        # Only now: a gradient may be a view of the seed itself (add and identity pass g on).
        seed[k] = 0.0
    return {n: j.reshape(out_shape + exe.slot_shapes[exe.input_slots[n]])
            for n, j in jac.items()}


def _check(plan: Plan, exe: Executable, arrays: Mapping[str, Any], wrt: tuple[str, ...],
           result: Result, upstream: Any, tick: Callable[[], None] = _no_deadline
           ) -> dict[str, dict[str, float]]:
    """Compare with central differences computed in float64 from the same inputs."""
    # Fresh float64 arrays (0-d ones too, never scalars): perturbed in place below.
    base = {n: (a if n in plan.label_inputs else np.array(a, dtype=np.float64)) for n, a in
            arrays.items()}
    f64 = plan.specialize({n: a.shape for n, a in base.items()}, (), keep_values=False)
    out_slot = f64.output_slot
    use_jacobian = result.jacobians is not None
    weights = None if use_jacobian else (
        np.ones((), np.float64) if upstream is None else np.asarray(upstream, np.float64))
    report = {}
    for name in wrt:
        x = base[name]
        numeric = np.zeros((size_of(f64.output_shape) if use_jacobian else 1, x.size))
        flat = x.reshape(-1)
        for j in range(x.size):
            tick()
            orig = flat[j]
            h = CHECK_STEP * max(1.0, abs(orig))
            flat[j] = orig + h
            plus = np.array(f64.forward(base, np.float64)[out_slot], np.float64)
            flat[j] = orig - h
            minus = np.array(f64.forward(base, np.float64)[out_slot], np.float64)
            flat[j] = orig
            diff = (plus - minus) / (2 * h)
            numeric[:, j] = diff.reshape(-1) if use_jacobian else np.sum(weights * diff)
        if use_jacobian:
            analytic = np.asarray(result.jacobians[name], np.float64).reshape(numeric.shape)
        else:
            analytic = np.asarray(result.gradients[name], np.float64).reshape(numeric.shape)
        report[name] = errors(analytic, numeric)
    return report


def errors(analytic: Any, numeric: Any) -> dict[str, float]:
    """max |a-n| and max |a-n| / max(|a|, |n|, tiny), as API.md §4 defines them."""
    if analytic.size == 0:
        return {"max_abs_error": 0.0, "max_rel_error": 0.0}
    diff = np.abs(analytic - numeric)
    scale = np.maximum(np.maximum(np.abs(analytic), np.abs(numeric)), np.finfo(np.float64).tiny)
    return {"max_abs_error": float(np.max(diff)), "max_rel_error": float(np.max(diff / scale))}
