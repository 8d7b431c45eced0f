"""A scheduled joint graph's cost: flops from every step's cost rule, and its biggest
tensor (what the max_tensor_elements refusal names). The peak is the schedule's."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

from service.engine.joint import Joint
from service.engine.schedule import Schedule
from service.engine.shapes import fmt

if TYPE_CHECKING:
    from service.engine.compiler import Plan


class Flops(NamedTuple):
    total: int  # prefix once and suffix once
    forward: int  # the forward nodes alone
    suffix: int  # one suffix run (a repeated suffix multiplies this)


def flops(joint: Joint, sched: Schedule) -> Flops:
    tape = joint.tape
    ops, args, shapes, attrs = tape.ops, tape.args, tape.shapes, tape.attrs

    def cost(s: int) -> int:
        return ops[s].cost([shapes[a] for a in args[s]], shapes[s], attrs[s])  # type: ignore

    suffix = sum(cost(s) for s in sched.suffix)
    return Flops(total=sum(cost(s) for s in sched.prefix) + suffix,
                 forward=sum(cost(s) for s in sched.steps if s < joint.n_forward),
                 suffix=suffix)


def largest(plan: Plan, joint: Joint, sizes: list[int]) -> tuple[str, tuple[str | int, ...]]:
    """The biggest slot: what it is (an input, a node, a backward temporary) and its loc."""
    tape, n_forward = joint.tape, joint.n_forward
    biggest = max(range(len(tape)), key=sizes.__getitem__, default=-1)
    if biggest < 0:
        return ("", ())
    name = tape.names[biggest]
    what = f"{fmt(tape.shapes[biggest])}"
    computed = tape.ops[biggest] is not None
    if name in plan.inputs and not computed:
        return (f"'{name}' {what}", ("values", name))
    if biggest < n_forward and computed:
        index = next(p.index for p in plan.nodes if p.id == name)
        return (f"'{name}' {what}", ("graph", "nodes", index))
    if biggest >= n_forward:
        origin = tape.origin[biggest]
        return (f"a backward temporary {what}" + (f" of node '{origin}'" if origin else ""), ())
    return ("", ())
