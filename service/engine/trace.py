"""Traces: every forward node's value and gradient, and the backward graph's own nodes."""

from __future__ import annotations

from typing import Any

from service.engine.compiler import Executable
from service.engine.result import slot_value


def trace(exe: Executable, vals: list[Any], dtype: Any) -> list[dict[str, Any]]:
    """One record per forward node: its value and its gradient (the lecture's numbers)."""
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
            "grad": slot_value(xp, vals, exe.node_grad_slots.get(node.id), shape, dtype),
        })
    return records


def trace_backward(exe: Executable, vals: list[Any], dtype: Any) -> list[dict[str, Any]]:
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
