"""The ``batched``, ``per_example`` and ``directions`` options: one vectorized run.

- ``batched``: the named inputs carry a leading example axis ``B``; the plan is rewritten by
  the ops' batching rules (batching.py) and the rewritten plan runs once. Its output is
  ``(B,) + output``; each example's objective is its own (``upstream`` is ``(B,) +
  output``, or each example's scalar output), so a batched input's gradient is per example
  and a shared input's the sum over the examples.
- ``per_example``: the shared inputs differentiated are made batched too, fed as broadcast
  views of the one value, so their gradients come out per example, ``(B,) + shape``.
- ``directions: K``: the inputs that have a tangent or a direction (and every input
  differentiated) get a leading axis of ``K`` broadcast copies, the tangents and
  directions are that axis: ``jvp`` is ``(K,) + output``, ``hvp[name]`` ``(K,) + shape``,
  one pass. With ``batched`` too the directions axis is outermost (the batched plan is
  batched again).

Every check here comes before anything runs: a 422 names the option or value at fault; the
per-example gradients' ``B × parameters`` past the tensor limit is a 413 naming the product.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from service.engine import loss
from service.engine.batching import batched_plan, feed_values
from service.engine.bind import HOST_DTYPES, asarray, resolve_wrt
from service.engine.derivatives import hessian_blocks, jacobian_blocks
from service.engine.errors import Detail, LimitExceeded, ProblemError, Ref, Unprocessable
from service.engine.limits import Deadline, Limits
from service.engine.registry import size_of
from service.engine.result import Result
from service.engine.shapes import fmt

__all__ = ["execute_batched", "execute_directions"]

Run = Callable[..., Result]


def _unsupported(query: Any, what: str) -> None:
    for name, asked in (("check", query.check), ("trace", query.trace),
                        ("trace_backward", query.trace_backward)):
        if asked:
            raise Unprocessable(f"{name}: not available with '{what}' (ask for it in a "
                                "request without it)", loc=(name,))


def batch_size(plan: Any, values: Mapping[str, Any], batched: tuple[str, ...]
               ) -> tuple[int, dict[str, Any]]:
    """B, and the batched inputs' values as arrays; 422s name the input at fault."""
    if not batched:
        raise Unprocessable("batched: name at least one input (whose leading axis indexes "
                            "the examples)", loc=("batched",))
    size, first, arrays = -1, "", {}
    for i, name in enumerate(batched):
        if name not in plan.inputs:
            raise Unprocessable(Detail("{batched}: {name!q} is not an input of the graph "
                                       "(inputs: {inputs})", batched=Ref("batched"), name=name,
                                       inputs=", ".join(plan.input_order) or "none"),
                                loc=("batched", i))
        if name in arrays:
            raise Unprocessable(f"batched: '{name}' is named twice", loc=("batched", i))
        if name not in values:
            raise Unprocessable(Detail("{values}: missing a value for input {name!q}",
                                       name=name), loc=("values", name))
        arr = asarray(values[name], ("values", name))
        if arr.ndim == 0:
            raise Unprocessable(f"batched: input '{name}' is a scalar; a batched input's "
                                "leading axis indexes its examples", loc=("batched", i))
        if size >= 0 and arr.shape[0] != size:
            raise Unprocessable(f"batched: input '{name}' has {arr.shape[0]} examples (its "
                                f"leading axis), '{first}' has {size}: every batched input "
                                "has the same leading size", loc=("batched", i))
        if size < 0:
            size, first = arr.shape[0], name
        arrays[name] = arr
    if size == 0:
        raise Unprocessable("batched: the batch is empty (leading size 0)", loc=("batched",))
    return size, arrays


def _shapes(plan: Any, values: Mapping[str, Any], arrays: Mapping[str, Any]
            ) -> dict[str, tuple[int, ...]]:
    """Every input's per-example shape, checked against the declared one."""
    shapes = {}
    for name in plan.input_order:
        if name in arrays:
            shape = tuple(arrays[name].shape[1:])
        elif name in values:
            shape = tuple(np.shape(asarray(values[name], ("values", name))))
        else:
            raise Unprocessable(Detail("{values}: missing a value for input {name!q}",
                                       name=name), loc=("values", name))
        declared = plan.inputs.get(name)
        if declared is not None and tuple(declared) != shape:
            raise Unprocessable(f"values: '{name}' has {'per-example ' * (name in arrays)}"
                                f"shape {fmt(shape)}, the graph declares {fmt(declared)}",
                                loc=("values", name))
        shapes[name] = shape
    return shapes


def check_per_example(size: int, shapes: Mapping[str, Any], names: Any, limits: Limits,
                      itemsize: int) -> None:
    """B × parameters: each per-example gradient within the tensor limit, all of them
    within the memory limit (a 413 naming the product)."""
    total = 0
    for name in sorted(names):
        n = size_of(shapes[name])
        total += size * n
        if size * n > limits.max_tensor_elements:
            raise LimitExceeded("max_tensor_elements", limits.max_tensor_elements, size * n,
                                f"per-example gradients of '{name}': B × parameters = "
                                f"{size} × {n}", loc=("per_example",))
    if total * itemsize > limits.max_memory_bytes:
        raise LimitExceeded("max_memory_bytes", limits.max_memory_bytes, total * itemsize,
                            f"bytes of the per-example gradients: B × parameters = {size} × "
                            f"{total // max(size, 1)}", loc=("per_example",))


def execute_batched(plan: Any, values: Mapping[str, Any], query: Any, limits: Limits,
                    deadline: Deadline | None, run: Run) -> Result:
    """``query.batched``: the batched plan, run once (``run`` is ``execute``)."""
    _unsupported(query, "batched")
    if query.loss is not None:
        return _batched_loss(plan, values, query, limits, deadline, run)
    size, arrays = batch_size(plan, values, query.batched)
    shapes = _shapes(plan, values, arrays)
    wrt = resolve_wrt(plan, query.wrt)
    batched = frozenset(query.batched)
    shared = {n for n in wrt if n not in batched}
    per = shared if (query.per_example or query.jacobian or query.hessian) else set()
    itemsize = plan.registry.dtypes[query.dtype][1]
    if query.per_example:
        check_per_example(size, shapes, per, limits, itemsize)
    bp = batched_plan(plan, shapes, batched | frozenset(per), size, limits)
    dtype = HOST_DTYPES[query.dtype]
    given = dict(values)
    for name in per:
        given[name] = np.broadcast_to(np.asarray(given[name], dtype=dtype),
                                      (size, *shapes[name]))
    inner = dataclasses.replace(_inner_query(query, bp, per, shapes, dtype), wrt=wrt)
    if query.jacobian and inner.upstream is None:  # the Jacobian alone: no gradients asked
        inner = dataclasses.replace(inner, wrt=())
    fed = feed_values(bp, given, dtype)
    result = run(bp.plan, fed, inner, limits=limits, deadline=deadline)
    if query.jacobian:
        result.jacobians = jacobian_blocks(bp.plan, fed, wrt, query.dtype, limits, deadline,
                                           run, lead=size)
        if query.upstream is None and bp.output_shape != (size,):
            result.gradients = {}
    if query.hessian:
        result.hessian = hessian_blocks(bp.plan, fed, wrt, inner.upstream, query.dtype,
                                        limits, deadline, run, lead=size)
    if not query.per_example and per:  # made per example for the drivers: summed back
        result.gradients = {n: (g.sum(axis=0) if n in per else g)
                            for n, g in result.gradients.items()}
        if result.hvp is not None:
            result.hvp = {n: (h.sum(axis=0) if n in per else h) for n, h in result.hvp.items()}
    return result


def _batched_loss(plan: Any, values: Mapping[str, Any], query: Any, limits: Limits,
                  deadline: Deadline | None, run: Run) -> Result:
    """``loss`` with ``batched``: each example's objective is its own loss (its output
    against its targets, ``(B,) + ...``); the loss plan batched, the targets with it; the
    answer's ``loss`` holds the per-example losses."""
    kind, targets = query.loss
    if query.upstream is not None or query.jacobian:
        name = "upstream" if query.upstream is not None else "jacobian"
        raise Unprocessable(f"{name}: not with 'loss' (the objective is the loss of the "
                            "output)", loc=(name,))
    if loss.TARGETS in values:
        raise Unprocessable(f"values: '{loss.TARGETS}' is not an input of the graph",
                            loc=("values", loss.TARGETS))
    size, _ = batch_size(plan, values, query.batched)
    t = asarray(targets, ("loss", "targets"))
    if t.ndim == 0 or t.shape[0] != size:
        raise Unprocessable(f"loss.targets: with 'batched', one set of targets per example: "
                            f"a leading axis of {size}, got shape {fmt(t.shape)}",
                            loc=("loss", "targets"))
    try:
        derived = loss.loss_plan(plan, kind)
        inner = dataclasses.replace(loss.loss_query(plan, query),
                                    batched=(*query.batched, loss.TARGETS))
        result = execute_batched(derived, {**values, loss.TARGETS: t}, inner, limits,
                                 deadline, run)
    except ProblemError as err:
        raise loss.reword(err, plan.output) from None
    return loss.split_result(result, plan, query)


def _inner_query(query: Any, bp: Any, per: set[str], shapes: Mapping[str, Any],
                 dtype: Any) -> Any:
    """The query the batched plan runs: the same, upstream checked for its B axis (or one
    1 per example for a scalar output), per-example directions broadcast."""
    upstream, size = query.upstream, bp.size
    if upstream is not None:
        up = asarray(upstream, ("upstream",))
        if up.ndim == 0 or up.shape[0] != size:
            raise Unprocessable(f"upstream: its leading axis must be the batch's {size} "
                                f"examples, got shape {fmt(up.shape)}", loc=("upstream",))
    elif bp.output_shape == (size,):
        upstream = np.ones(size, dtype=dtype)
    hvp = query.hvp
    if hvp is not None and per:
        hvp = {n: (np.broadcast_to(np.asarray(v, dtype=dtype), (size, *shapes[n]))
                   if n in per and np.shape(v) == tuple(shapes[n]) else v)
               for n, v in hvp.items()}
    return dataclasses.replace(query, batched=None, per_example=False, upstream=upstream,
                               hvp=hvp, jacobian=False, hessian=False)


def execute_directions(plan: Any, values: Mapping[str, Any], query: Any, limits: Limits,
                       deadline: Deadline | None, run: Run) -> Result:
    """``query.directions``: K tangents / directions in one pass of the plan batched over
    K broadcast copies of the inputs they belong to."""
    _unsupported(query, "directions")
    k = query.directions
    if query.tangents is None and query.hvp is None:
        raise Unprocessable("directions: give 'tangents' or 'hvp', each with a leading axis "
                            "of the K directions", loc=("directions",))
    dtype = HOST_DTYPES[query.dtype]
    wrt = resolve_wrt(plan, query.wrt)
    dirs: dict[str, dict[str, Any]] = {}
    for field, given in (("tangents", query.tangents), ("hvp", query.hvp)):
        if given is None:
            continue
        dirs[field] = {}
        for name, value in given.items():
            arr = asarray(value, (field, name))
            if arr.ndim == 0 or arr.shape[0] != k:
                raise Unprocessable(f"{field}: '{name}' must have a leading axis of the "
                                    f"{k} directions, got shape {fmt(arr.shape)}",
                                    loc=(field, name))
            dirs[field][name] = arr
    shapes = _shapes(plan, values, {})
    names = [n for n in (*dirs.get("tangents", {}), *dirs.get("hvp", {}), *wrt)
             if n in plan.inputs and n not in plan.label_inputs]
    batched = frozenset(names)
    bp = batched_plan(plan, shapes, batched, k, limits)
    given = dict(values)
    for name in batched:
        given[name] = np.broadcast_to(np.asarray(given[name], dtype=dtype), (k, *shapes[name]))
    upstream = query.upstream
    if upstream is not None:
        up = asarray(upstream, ("upstream",))
        upstream = np.broadcast_to(up, (k, *up.shape))
    inner = dataclasses.replace(query, directions=None, upstream=upstream,
                                tangents=dirs.get("tangents"), hvp=dirs.get("hvp"),
                                jacobian=False, hessian=False, wrt=wrt)
    if upstream is None and bp.output_shape == (k,):
        inner = dataclasses.replace(inner, upstream=np.ones(k, dtype=dtype))
    result = run(bp.plan, feed_values(bp, given, dtype), inner, limits=limits,
                 deadline=deadline)
    result.output = result.output[0]
    result.gradients = {n: g[0] if n in batched else g for n, g in result.gradients.items()}
    if result.fetched:
        result.fetched = {n: v[0] for n, v in result.fetched.items()}
    if query.jacobian or query.hessian:
        rest = run(plan, values, dataclasses.replace(query, directions=None, tangents=None,
                                                     hvp=None), limits=limits,
                   deadline=deadline)
        result.jacobians, result.hessian = rest.jacobians, rest.hessian
    return result
