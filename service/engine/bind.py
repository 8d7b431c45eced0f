"""Binding: a request's values, wrt, directions and upstream, validated and cast on the host.

Everything here runs with NumPy on the host before anything moves to the device: a value
that is not numeric, not rectangular, of the wrong shape or (labels) not integral or out of
range is a 422 naming the field (``loc``) in engine words (see ``service.engine.errors``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.engine.compiler import Executable, Plan
from service.engine.errors import Detail, Ref, Unprocessable
from service.engine.query import DTYPES, Query
from service.engine.shapes import fmt

HOST_DTYPES = {name: np.dtype(name) for name in DTYPES}


@dataclass(slots=True)
class Bound:
    """A request's values, bound: host arrays (NumPy scalars for 0-d values on NumPy),
    their shapes, the wrt inputs and the validated directions."""

    host: dict[str, Any]
    shapes: dict[str, tuple[int, ...]]
    wrt: tuple[str, ...]
    tangents: dict[str, Any] | None
    hvp: dict[str, Any] | None


def bind(plan: Plan, values: Mapping[str, Any], query: Query) -> Bound:
    """Validate and cast everything the request gives, in the order its errors are raised."""
    host_dtype = HOST_DTYPES[query.dtype]
    wrt = resolve_wrt(plan, query.wrt)
    host = bind_values(plan, values, host_dtype, plan.registry.scalars)
    shapes = {name: tuple(arr.shape) for name, arr in host.items()}
    check_declared(plan, shapes)
    tangents = directions(plan, query.tangents, shapes, host_dtype, "tangents",
                          plan.float_inputs)
    hvp = directions(plan, query.hvp, shapes, host_dtype, "hvp", wrt)
    return Bound(host, shapes, wrt, tangents, hvp)


def _inputs(plan: Plan) -> str:
    return ", ".join(sorted(plan.inputs)) or "none"


def resolve_wrt(plan: Plan, wrt: Sequence[str] | None) -> tuple[str, ...]:
    """The inputs to differentiate: every float input for None, else ``wrt`` deduplicated."""
    if wrt is None:
        return plan.float_inputs
    seen: dict[str, None] = {}  # a dict: membership in O(1), first-seen order kept
    for i, name in enumerate(wrt):
        if name in plan.label_inputs:
            raise Unprocessable(Detail("{wrt}: {name!q} holds integer labels and has no "
                                       "gradient", name=name), loc=("wrt", i))
        if name not in plan.inputs:
            raise Unprocessable(Detail("{wrt}: {name!q} is not an input of the graph (inputs: "
                                       "{inputs})", name=name, inputs=_inputs(plan)),
                                loc=("wrt", i))
        seen[name] = None
    return tuple(seen)


def bind_values(plan: Plan, values: Mapping[str, Any], dtype: Any, scalars: bool
                ) -> dict[str, Any]:
    """Validate and cast every input on the host (NumPy); labels as int64. With ``scalars``
    (NumPy backend) a 0-d value runs as a NumPy scalar: same semantics, cheaper arithmetic."""
    for name in values:
        if name not in plan.inputs:
            raise Unprocessable(Detail("{values}: {name!q} is not an input of the graph "
                                       "(inputs: {inputs})", name=name, inputs=_inputs(plan)),
                                loc=("values", name))
    out = {}
    for name in plan.input_order:
        if name not in values:
            raise Unprocessable(Detail("{values}: missing a value for input {name!q}",
                                       name=name), loc=("values", name))
        arr = asarray(values[name], ("values", name))
        if arr.dtype.kind not in "fiub":
            raise Unprocessable(Detail("{values}: {name!q} must be numeric", name=name),
                                loc=("values", name))
        if name in plan.label_inputs:
            out[name] = labels(arr, name)
        elif arr.ndim == 0:
            arr = arr.astype(dtype)  # a fresh array: checks perturb inputs in place
            out[name] = arr[()] if scalars else arr
        else:
            out[name] = arr.astype(dtype, copy=False)
    return out


def asarray(value: Any, loc: tuple[str, ...]) -> Any:
    """A request value as a host NumPy array; ragged or unconvertible: a 422, not a 500.
    ``loc`` is (option,) or (option, input name): the message names the same."""
    if type(value) is np.ndarray:
        return value
    try:
        return np.asarray(value)
    except (ValueError, TypeError, OverflowError):
        if len(loc) == 1:
            detail = Detail("{field} is not a rectangular numeric array", field=Ref(loc[0]))
        else:
            detail = Detail("{field}: {name!q} is not a rectangular numeric array",
                            field=Ref(loc[0]), name=loc[1])
        raise Unprocessable(detail, loc=loc) from None


def labels(arr: Any, name: str) -> Any:
    """Class labels as int64: integral, and small enough to cast."""
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.floor(arr)):
            raise Unprocessable(Detail("{values}: {name!q} holds class labels, which must be "
                                       "integers", name=name), loc=("values", name))
    # Beyond int64 a cast wraps (uint64) or is undefined (float): refuse before casting. Any
    # such label is out of every class range anyway.
    if arr.size and arr.dtype.kind in "fu" and float(np.max(np.abs(arr))) >= 2.0**62:
        raise Unprocessable(Detail("{values}: labels {name!q} are out of range", name=name),
                            loc=("values", name))
    return arr.astype(np.int64)


def check_declared(plan: Plan, shapes: Mapping[str, tuple[int, ...]]) -> None:
    for name, declared in plan.inputs.items():
        if declared is not None and tuple(declared) != shapes[name]:
            raise Unprocessable(Detail("{values}: {name!q} has shape {shape}, the graph "
                                       "declares {declared}", name=name,
                                       shape=fmt(shapes[name]), declared=fmt(declared)),
                                loc=("values", name))


def check_labels(exe: Executable, arrays: Mapping[str, Any]) -> None:
    """Every label within its op's range (known once the shapes are): [0, classes) for
    class labels, [-n, n) for gather's indices."""
    for name, lo, hi, what in exe.label_bounds:
        y = arrays[name]
        if y.size and (int(y.min()) < lo or int(y.max()) >= hi):
            raise Unprocessable(Detail("{values}: {what} {name!q} must lie in [{lo}, {hi}), "
                                       "got {min}..{max}", what=what, name=name, lo=lo, hi=hi,
                                       min=int(y.min()), max=int(y.max())),
                                loc=("values", name))


def directions(plan: Plan, given: Mapping[str, Any] | None, shapes: Mapping[str, Any],
               dtype: Any, field: str, allowed: Sequence[str]) -> dict[str, Any] | None:
    """Validate ``tangents`` / ``hvp``: known inputs, in ``allowed``, the input's shape."""
    if given is None:
        return None
    out = {}
    option = Ref(field)
    for name, value in given.items():
        loc = (field, name)
        if name not in plan.inputs:
            raise Unprocessable(Detail("{field}: {name!q} is not an input of the graph "
                                       "(inputs: {inputs})", field=option, name=name,
                                       inputs=_inputs(plan)), loc=loc)
        if name not in allowed:
            why = ("holds integer labels" if name in plan.label_inputs
                   else "is not among the inputs differentiated (wrt)")
            raise Unprocessable(Detail("{field}: {name!q} {why}", field=option, name=name,
                                       why=why), loc=loc)
        arr = asarray(value, loc)
        if arr.dtype.kind not in "fiub":
            raise Unprocessable(Detail("{field}: {name!q} must be numeric", field=option,
                                       name=name), loc=loc)
        if arr.shape != shapes[name]:
            raise Unprocessable(Detail("{field}: {name!q} has shape {shape}, the input has "
                                       "{expected}", field=option, name=name,
                                       shape=fmt(arr.shape), expected=fmt(shapes[name])),
                                loc=loc)
        # A fresh array: the Hessian loop writes into direction arrays.
        out[name] = np.array(arr, dtype=dtype, copy=True)
    return out


def seed(exe: Executable, upstream: Any, dtype: Any, *, required: bool) -> Any:
    """The backward pass's seed: ``upstream`` validated and cast (on the device), or 1 for a
    scalar output; None where none is given, none is ``required`` and the output is not a
    scalar."""
    reg = exe.plan.registry
    if upstream is None:
        if exe.output_shape == ():
            # A scalar, so a scalar graph's backward stays scalar math (NumPy).
            return reg.scalar(1.0, dtype)
        if not required:
            return None
        raise Unprocessable(Detail(
            "{upstream}: the output has shape {shape}, not a scalar; send {upstream!q} "
            "(dL/d(output), the same shape) for gradients or a trace, or ask for {jacobian!q} "
            "alone", shape=fmt(exe.output_shape)), loc=("upstream",))
    up = asarray(upstream, ("upstream",))
    if up.dtype.kind not in "fiub":
        raise Unprocessable(Detail("{upstream}: must be numeric"), loc=("upstream",))
    if up.shape != exe.output_shape:
        raise Unprocessable(Detail("{upstream}: shape {shape} differs from the output's "
                                   "{expected}", shape=fmt(up.shape),
                                   expected=fmt(exe.output_shape)), loc=("upstream",))
    if reg.scalars:
        up = up.astype(np.dtype(dtype), copy=False)
        return up[()] if up.ndim == 0 else up
    return reg.to_device(up.astype(host_dtype(dtype), copy=False))


def host_dtype(dtype: Any) -> Any:
    """The NumPy dtype of a namespace's float dtype (float64 / float32)."""
    return np.float32 if "32" in str(dtype) else np.float64
