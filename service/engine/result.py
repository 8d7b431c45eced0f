"""Result: what ``execute`` returns; reading result slots; the one move back to the host."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
    loss: Any = None  # the objective's value, with Query.loss


def slot_value(xp: Any, vals: list[Any], slot: int | None, shape: tuple[int, ...],
               dtype: Any) -> Any:
    """A result slot's value in ``dtype`` (zeros where the graph has no path: None)."""
    if slot is None:
        return xp.zeros(shape, dtype=dtype)
    g = vals[slot]
    if type(g) is dtype:  # a 0-d value run as a NumPy scalar: the common small case
        return g
    return g if getattr(g, "dtype", None) == dtype and getattr(g, "shape", None) == shape \
        else xp.broadcast_to(xp.asarray(g, dtype=dtype), shape)


def results_to_host(reg: Any, result: Result) -> Result:
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
