"""Jacobians and Hessians: blocks of rows (columns) in one batched run each, and the
earlier drivers by repeated suffix runs (a row or column per run; the benchmarks' baseline).

The block drivers (``jacobian_blocks``, ``hessian_blocks``) batch the plan over a block of
rows (batching.py): one run computes the VJPs of a block of one-hot seeds (HVPs of a block
of basis directions), as many rows per run as the memory budget allows.

Each row-loop driver runs its executable's prefix once and its suffix (``Want.repeat``) once per
row or column, writing one element of a direction in place between runs: the standard has
no flat views to write through, but every namespace takes ``a[i, j] = v``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from service.engine.batching import batched_plan, feed_values
from service.engine.bind import HOST_DTYPES, seed
from service.engine.compiler import Executable, Want, infer_shapes, run_steps
from service.engine.limits import Limits
from service.engine.query import Query
from service.engine.registry import size_of


def no_deadline() -> None:
    return None


def unravel(k: int, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The index tuple of flat (row-major) position ``k``."""
    at = []
    for d in reversed(shape):
        k, r = divmod(k, d)
        at.append(r)
    return tuple(reversed(at))


def jacobians(exe: Executable, arrays: Mapping[str, Any], wrt: tuple[str, ...], dtype: Any,
              tick: Callable[[], None] = no_deadline) -> dict[str, Any]:
    """Row k of every Jacobian is the VJP of the k-th one-hot seed; the forward runs once
    and only the backward steps (the suffix) run per row."""
    xp = exe.plan.registry.xp
    out_shape = exe.output_shape
    rows = size_of(out_shape)
    jac = {n: xp.zeros((rows, size_of(exe.slot_shapes[exe.input_slots[n]])), dtype=dtype)
           for n in wrt}
    vals = exe.forward(arrays, dtype)
    one_hot = xp.zeros(out_shape, dtype=dtype)
    for k in range(rows):
        tick()
        at = unravel(k, out_shape)
        one_hot[at] = 1.0
        exe.backward(vals, one_hot)
        for n in wrt:
            g = exe.gradient(vals, n)
            if g is not None:
                jac[n][k, ...] = xp.reshape(xp.asarray(g, dtype=dtype), (-1,))
        # Only now: a gradient may be the seed itself (add and identity pass g on).
        one_hot[at] = 0.0
    return {n: xp.reshape(j, out_shape + exe.slot_shapes[exe.input_slots[n]])
            for n, j in jac.items()}


def hessian(exe: Executable, arrays: Mapping[str, Any], wrt: tuple[str, ...], upstream: Any,
            dtype: Any, tick: Callable[[], None] = no_deadline) -> dict[str, dict[str, Any]]:
    """Column by column: the HVP with each basis vector, one compiled HVP executable whose
    forward and first-order backward (the prefix) run once."""
    xp = exe.plan.registry.xp
    shapes = {n: exe.slot_shapes[exe.input_slots[n]] for n in wrt}
    sizes = {n: size_of(s) for n, s in shapes.items()}
    hess = {a: {b: xp.zeros((sizes[a], sizes[b]), dtype=dtype) for b in wrt} for a in wrt}
    vals = exe.start(arrays, dtype)
    vals[exe.seed_slot] = seed(exe, upstream, dtype, required=True)
    directions = {n: xp.zeros(shapes[n], dtype=dtype) for n in wrt}
    for n, slot in exe.hvp_leaves.items():
        vals[slot] = directions[n]
    run_steps(exe.prefix, vals)
    for a in wrt:
        for j in range(sizes[a]):
            tick()
            at = unravel(j, shapes[a])
            directions[a][at] = 1.0  # in place: the leaf slot holds this array
            run_steps(exe.suffix, vals)
            for b in wrt:
                slot = exe.hvp_slots.get(b)
                if slot is not None:
                    hess[a][b][j, ...] = xp.reshape(xp.asarray(vals[slot], dtype=dtype), (-1,))
            directions[a][at] = 0.0
    return {a: {b: xp.reshape(h, shapes[a] + shapes[b]) for b, h in row.items()}
            for a, row in hess.items()}


# --- the vectorized drivers: many rows or columns per run ---------------------------------

MAX_BLOCK = 256  # rows (columns) per batched run, at most


def block_size(plan: Any, shapes: Mapping[str, Any], wrt: tuple[str, ...], want: Want,
               limits: Limits, itemsize: int, total: int) -> int:
    """How many rows (columns) one batched run takes: the single run's peak bytes times
    the block within half the memory budget, its largest tensor times the block within
    the tensor limit."""
    exe = plan.specialize(shapes, want=want)
    per = max(exe.peak_elements * itemsize * 2, 1)
    fit = min(limits.max_memory_bytes // per,
              limits.max_tensor_elements // max(exe.max_elements, 1),
              limits.max_total_elements // max(exe.peak_elements * 2, 1))
    return max(1, min(total, MAX_BLOCK, fit))


def _lead_shapes(values: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    return {n: tuple(np.shape(v)) for n, v in values.items()}


def _broadcast(values: Mapping[str, Any], names: Any, k: int, dtype: Any) -> dict[str, Any]:
    out = dict(values)
    for n in names:
        v = np.asarray(values[n], dtype=dtype)
        out[n] = np.broadcast_to(v, (k, *v.shape))
    return out


def jacobian_blocks(plan: Any, values: Mapping[str, Any], wrt: tuple[str, ...], dtype: str,
                    limits: Limits, deadline: Any, run: Callable[..., Any],
                    lead: int | None = None) -> dict[str, Any]:
    """Every Jacobian of the output, a block of rows per run: the plan batched over the
    block (batching.py), the wrt inputs broadcast, the block's one-hot seeds its upstream.
    ``lead``: the plan's output and wrt inputs carry a leading example axis of that size
    (the batched option): each example's own Jacobian, ``(B,) + output + input``."""
    host, itemsize = HOST_DTYPES[dtype], plan.registry.dtypes[dtype][1]
    shapes = _lead_shapes(values)
    out = tuple(infer_shapes(plan, shapes, limits=None)[plan.output])
    ex_out = out[1:] if lead else out
    rows = size_of(ex_out)
    names = tuple(n for n in wrt if n in plan.inputs)
    if not names:
        return {}
    ex = {n: shapes[n][1:] if lead else shapes[n] for n in names}
    k = block_size(plan, shapes, names, Want(wrt=names), limits, itemsize, rows)
    bp = batched_plan(plan, shapes, frozenset(names), k, limits)
    fed = feed_values(bp, _broadcast(values, names, k, host), host)
    pre = (lead,) if lead else ()
    jac = {n: np.zeros((*pre, rows, size_of(ex[n])), dtype=host) for n in names}
    for r0 in range(0, rows, k):
        if deadline is not None:
            deadline.check()
        seeds, cnt = _unit_rows(k, rows, r0, host)
        seeds = seeds.reshape((k, *ex_out))
        if lead:
            seeds = np.broadcast_to(seeds[:, None], (k, lead, *ex_out))
        res = run(bp.plan, fed, Query(wrt=names, upstream=seeds, dtype=dtype), limits=limits,
                  deadline=deadline)
        for n in names:
            g = np.asarray(res.gradients[n])[:cnt]
            if lead:
                jac[n][:, r0:r0 + cnt] = np.moveaxis(g, 0, 1).reshape(lead, cnt, -1)
            else:
                jac[n][r0:r0 + cnt] = g.reshape(cnt, -1)
    return {n: j.reshape((*pre, *ex_out, *ex[n])) for n, j in jac.items()}


def _unit_rows(k: int, total: int, start: int, host: Any) -> tuple[np.ndarray, int]:
    """Rows ``start`` to ``start + k`` of the ``total``-square identity (zero rows past its
    end: a last block that is not full), and how many are the identity's."""
    cnt = min(k, total - start)
    rows = np.zeros((k, total), dtype=host)
    rows[np.arange(cnt), start + np.arange(cnt)] = 1.0
    return rows, cnt


def hessian_blocks(plan: Any, values: Mapping[str, Any], wrt: tuple[str, ...], upstream: Any,
                   dtype: str, limits: Limits, deadline: Any, run: Callable[..., Any],
                   lead: int | None = None) -> dict[str, dict[str, Any]]:
    """Every block of the objective's Hessian, a block of columns per run: the plan batched
    over the block, the wrt inputs broadcast, the basis vectors its HVP directions.
    ``lead``: per example, ``hessian[a][b]`` ``(B,) + shape_a + shape_b``."""
    host, itemsize = HOST_DTYPES[dtype], plan.registry.dtypes[dtype][1]
    shapes = _lead_shapes(values)
    names = tuple(n for n in wrt if n in plan.inputs)
    if not names:
        return {}
    ex = {n: shapes[n][1:] if lead else shapes[n] for n in names}
    sizes = {n: size_of(s) for n, s in ex.items()}
    cols = sum(sizes.values())
    k = block_size(plan, shapes, names, Want(wrt=names, hvp=names), limits, itemsize,
                   max(cols, 1))
    bp = batched_plan(plan, shapes, frozenset(names), k, limits)
    fed = feed_values(bp, _broadcast(values, names, k, host), host)
    up = None
    if upstream is not None:
        u = np.asarray(upstream, dtype=host)
        up = np.broadcast_to(u, (k, *u.shape))
    elif bp.output_shape == (k,):
        up = np.ones(k, dtype=host)
    pre = (lead,) if lead else ()
    hess = {a: {b: np.zeros((*pre, sizes[a], sizes[b]), dtype=host) for b in names}
            for a in names}
    offsets, at = {}, 0
    for n in names:
        offsets[n], at = at, at + sizes[n]
    for c0 in range(0, cols, k):
        if deadline is not None:
            deadline.check()
        basis, cnt = _unit_rows(k, cols, c0, host)
        dirs = {}
        for n in names:
            part = basis[:, offsets[n]:offsets[n] + sizes[n]].reshape((k, *ex[n]))
            dirs[n] = np.broadcast_to(part[:, None], (k, lead, *ex[n])) if lead else part
        res = run(bp.plan, fed, Query(wrt=names, upstream=up, hvp=dirs, dtype=dtype),
                  limits=limits, deadline=deadline)
        for j in range(c0, c0 + cnt):
            a = next(n for n in names if offsets[n] <= j < offsets[n] + sizes[n])
            for b in names:
                h = np.asarray(res.hvp[b])[j - c0]
                if lead:
                    hess[a][b][:, j - offsets[a]] = h.reshape(lead, -1)
                else:
                    hess[a][b][j - offsets[a]] = h.reshape(-1)
    return {a: {b: h.reshape((*pre, *ex[a], *ex[b])) for b, h in row.items()}
            for a, row in hess.items()}
