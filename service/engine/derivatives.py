"""Derivatives by repeated suffix runs: Jacobian rows, Hessian columns.

Each driver runs its executable's prefix once and its suffix (``Want.repeat``) once per
row or column, writing one element of a direction in place between runs: the standard has
no flat views to write through, but every namespace takes ``a[i, j] = v``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from service.engine.bind import seed
from service.engine.compiler import Executable, run_steps
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
