"""The gradient check: derivatives against central differences computed in float64.

Both checks start from float64 copies of the inputs (0-d ones too, never scalars: they are
perturbed in place) and read one perturbed element per step on the host, as a check must;
each reports ``max_abs_error`` and ``max_rel_error`` per input (docs/api.md §4).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from service.engine.bind import seed
from service.engine.compiler import Plan
from service.engine.derivatives import no_deadline, unravel
from service.engine.registry import size_of
from service.engine.result import Result

# Central-difference step for float64: about cbrt(machine epsilon), scaled by |x|.
CHECK_STEP = 6e-6


def _f64_base(plan: Plan, arrays: Mapping[str, Any]) -> dict[str, Any]:
    xp = plan.registry.xp
    return {n: (a if n in plan.label_inputs else xp.asarray(a, dtype=xp.float64, copy=True))
            for n, a in arrays.items()}


def _f64_forward(plan: Plan, base: Mapping[str, Any]) -> Callable[[], Any]:
    xp = plan.registry.xp
    f64 = plan.specialize({n: tuple(a.shape) for n, a in base.items()}, ())

    def run() -> Any:
        out = f64.forward(base, xp.float64)[f64.output_slot]
        return xp.asarray(out, dtype=xp.float64, copy=True)

    return run


def check(plan: Plan, arrays: Mapping[str, Any], wrt: tuple[str, ...], result: Result,
          upstream: Any, tick: Callable[[], None] = no_deadline
          ) -> dict[str, dict[str, float]]:
    """The gradients (or, where computed, the Jacobians) of ``result`` against central
    differences of the output."""
    xp = plan.registry.xp
    base = _f64_base(plan, arrays)
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
            at = unravel(j, shape)
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


def check_hvp(plan: Plan, arrays: Mapping[str, Any], wrt: tuple[str, ...],
              directions: Mapping[str, Any], result: Result, upstream: Any,
              tick: Callable[[], None] = no_deadline) -> dict[str, dict[str, float]]:
    """The HVP against central differences of the exact gradient along v, in float64:
    (∇s(x + h v) - ∇s(x - h v)) / 2h."""
    xp = plan.registry.xp
    base = _f64_base(plan, arrays)
    exe = plan.specialize({n: tuple(a.shape) for n, a in base.items()}, wrt)
    first = seed(exe, upstream, xp.float64, required=True)
    v = {n: xp.asarray(d, dtype=xp.float64) for n, d in directions.items()}
    vmax = max((_absmax(xp, d) for d in v.values()), default=0.0)
    xmax = max((_absmax(xp, base[n]) for n in v), default=0.0)
    h = CHECK_STEP * max(1.0, xmax) / max(vmax, 1e-300)

    def grads_at(sign: float) -> dict[str, Any]:
        tick()
        moved = {**base, **{n: base[n] + sign * h * d for n, d in v.items()}}
        vals = exe.backward(exe.forward(moved, xp.float64), first)
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
