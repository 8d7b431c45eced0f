"""Planning a request's work: the executables it runs, each checked against the limits.

From the bound values and the query: the main executable (its ``Want``), the Jacobian's
and the Hessian's (suffix re-run per row / column), the seed, and the check's cost. Every
estimate is checked here, before anything is computed or moved to the device; a refusal is
a 413 naming the setting (``loc``: the option that asked for the work).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.engine.bind import Bound, check_labels, seed
from service.engine.compiler import Executable, Plan, Want
from service.engine.errors import LimitExceeded
from service.engine.limits import Limits
from service.engine.query import Query
from service.engine.registry import size_of


@dataclass(slots=True)
class Work:
    """What a request runs: the main executable and, if asked, the derivative drivers'."""

    want: Want
    exe: Executable
    jacobian: Executable | None
    hessian: Executable | None
    seed: Any  # the first-order backward pass's seed; None: no such pass


def want_of(bound: Bound, query: Query) -> Want:
    """The main executable's kind of request."""
    upstream, trace = query.upstream, query.trace or query.trace_backward
    # With a Jacobian, an upstream given is used too: the gradients are its VJP.
    grads = ((not query.jacobian or upstream is not None)
             and (bool(bound.wrt) or upstream is not None)) or trace
    return Want(wrt=bound.wrt, grads=grads or bound.hvp is not None, all_grads=trace,
                keep_values=trace, fetch=query.fetch,
                hvp=None if bound.hvp is None else tuple(bound.hvp),
                jvp=None if bound.tangents is None else tuple(bound.tangents),
                trace_backward=query.trace_backward)


def plan_work(plan: Plan, bound: Bound, query: Query, limits: Limits) -> Work:
    """Specialize and check everything the request runs, in the order its errors come."""
    np_dtype, itemsize = plan.registry.dtypes[query.dtype]
    want = want_of(bound, query)
    exe = plan.specialize(bound.shapes, want=want)
    exe.check_limits(limits, itemsize)
    check_labels(exe, bound.host)
    jac = _jacobian_work(plan, bound, limits, itemsize, exe) if query.jacobian else None
    hess = _hessian_work(plan, bound, limits, itemsize) if query.hessian else None
    first = None
    if want.grads:
        # No gradient asked for (wrt: []) and no trace: a forward pass needs no upstream.
        first = seed(exe, query.upstream, np_dtype, required=True)
    elif query.hessian:
        seed(exe, query.upstream, np_dtype, required=True)
    if query.check:
        _check_work(bound, limits, exe, bool(bound.hvp))
    return Work(want, exe, jac, hess, first)


def _wrt_elements(bound: Bound) -> int:
    return sum(size_of(bound.shapes[n]) for n in bound.wrt)


def _jacobian_work(plan: Plan, bound: Bound, limits: Limits, itemsize: int,
                   exe: Executable) -> Executable:
    rows = size_of(exe.output_shape)
    if rows > limits.max_jacobian_rows:
        raise LimitExceeded("max_jacobian_rows", limits.max_jacobian_rows, rows,
                            "Jacobian rows (output elements)", loc=("jacobian",))
    entries = rows * _wrt_elements(bound)
    if entries > limits.max_jacobian_elements:
        raise LimitExceeded("max_jacobian_elements", limits.max_jacobian_elements,
                            entries, "Jacobian entries", loc=("jacobian",))
    jac = plan.specialize(bound.shapes, want=Want(wrt=bound.wrt, repeat="seed"))
    jac.check_limits(limits, itemsize, extra_bytes=entries * itemsize, repeats=rows,
                     what=" for the Jacobian")
    return jac


def _hessian_work(plan: Plan, bound: Bound, limits: Limits, itemsize: int) -> Executable:
    n_in = _wrt_elements(bound)
    if n_in * n_in > limits.max_hessian_elements:
        raise LimitExceeded("max_hessian_elements", limits.max_hessian_elements,
                            n_in * n_in, "Hessian entries", loc=("hessian",))
    hess = plan.specialize(bound.shapes, want=Want(wrt=bound.wrt, hvp=bound.wrt,
                                                   repeat="hvp"))
    hess.check_limits(limits, itemsize, extra_bytes=n_in * n_in * itemsize,
                      repeats=n_in, what=" for the Hessian")
    return hess


def _check_work(bound: Bound, limits: Limits, exe: Executable, hvp: bool) -> None:
    n_check = _wrt_elements(bound)
    if n_check > limits.max_check_elements:
        raise LimitExceeded("max_check_elements", limits.max_check_elements, n_check,
                            "input elements to perturb for the check", loc=("check",))
    work = 2 * n_check * exe.forward_flops + (2 * exe.flops if hvp else 0)
    if work > limits.max_flops:
        raise LimitExceeded("max_flops", limits.max_flops, work,
                            "estimated gradient-check work (flops)", loc=("check",))
    # The check holds float64 copies of the inputs and one forward pass at a time.
    if exe.peak_elements * 8 > limits.max_memory_bytes:
        raise LimitExceeded("max_memory_bytes", limits.max_memory_bytes,
                            exe.peak_elements * 8, "estimated peak bytes of the check",
                            loc=("check",))
