"""The joint graph of one specialization: forward nodes, then what a Want adds on a Tape.

In order: input leaves and constants, the forward nodes, the seed and the first-order
backward graph (``backprop``), the HVP's direction leaves and second backward, the JVP's
dummy upstream and tangent leaves (see docs/engine.md, "Higher order"). Nothing here is
pruned or scheduled yet (schedule.py does that).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from service.engine.autodiff import Tape, backprop, inner
from service.engine.errors import GraphError
from service.engine.registry import Shape

if TYPE_CHECKING:
    from service.engine.compiler import Plan, Want


@dataclass(slots=True)
class Joint:
    """A built tape and the slots the request reads from it (-1: none)."""

    tape: Tape
    slot_of: dict[str, int]  # every input and forward node → its slot
    n_forward: int  # slots below this are inputs, constants and forward nodes
    out: int
    seed: int = -1
    u: int = -1  # the JVP's dummy upstream
    grads: dict[int, int] = field(default_factory=dict)  # slot → its gradient's slot
    grad_slots: dict[str, int] = field(default_factory=dict)
    hvp_leaves: dict[str, int] = field(default_factory=dict)
    hvp_slots: dict[str, int] = field(default_factory=dict)
    tangent_leaves: dict[str, int] = field(default_factory=dict)
    jvp_slot: int = -1
    node_grad_slots: dict[str, int] = field(default_factory=dict)

    @property
    def out_shape(self) -> Shape:
        return self.tape.shapes[self.out]


def build_joint(plan: Plan, shapes: Mapping[str, Shape], node_shapes: Mapping[str, Shape],
                want: Want) -> Joint:
    """The joint graph for these input shapes (``node_shapes``: every node's) and ``want``."""
    joint = _forward(plan, shapes, node_shapes)
    for name in want.fetch:
        if name not in joint.slot_of:
            raise GraphError(f"cannot fetch '{name}': not a node or input of the plan")
    if want.grads or want.all_grads or want.hvp is not None:
        _first_order(plan, joint, want)
    if want.hvp is not None:
        _hvp(joint, want.wrt, want.hvp)
    if want.jvp is not None:
        _jvp(joint, want.jvp)
    if want.all_grads:
        slot_of, grads = joint.slot_of, joint.grads
        joint.node_grad_slots = {n.id: grads[slot_of[n.id]] for n in plan.nodes
                                 if slot_of[n.id] in grads}
    return joint


def _forward(plan: Plan, shapes: Mapping[str, Shape], node_shapes: Mapping[str, Shape]
             ) -> Joint:
    tape = Tape(plan.registry)
    slot_of: dict[str, int] = {}
    for name in plan.input_order:
        slot_of[name] = tape.leaf(name, tuple(shapes[name]))
    for node in plan.nodes:
        for a in node.args:
            if not isinstance(a, str):
                tape.const(a)
    for node in plan.nodes:
        args = tuple(slot_of[a] if isinstance(a, str) else tape.const(a) for a in node.args)
        slot_of[node.id] = tape.node(node.op, args, node.attrs, node_shapes[node.id], node.id)
    return Joint(tape, slot_of, len(tape), slot_of[plan.output])


def _first_order(plan: Plan, joint: Joint, want: Want) -> None:
    """The seed leaf and the backward graph to every slot that needs a gradient: the wrt
    inputs (and, for a trace, every node; also one computed from constants alone).
    Constants themselves never get one."""
    tape, slot_of = joint.tape, joint.slot_of
    joint.seed = tape.leaf("seed", joint.out_shape)
    targets = {slot_of[n] for n in want.wrt}
    if want.all_grads:
        targets.update(slot_of[n] for n in plan.float_inputs)
        targets.update(slot_of[n.id] for n in plan.nodes)
    if want.hvp is not None:
        targets.update(slot_of[n] for n in want.hvp)
    joint.grads = grads = backprop(tape, joint.out, joint.seed, targets)
    joint.grad_slots = {n: grads[slot_of[n]] for n in want.wrt if slot_of[n] in grads}


def _hvp(joint: Joint, wrt: tuple[str, ...], directions: tuple[str, ...]) -> None:
    """Reverse over reverse: s2 = Σ <g_i, v_i>, and its gradient with respect to wrt."""
    tape, slot_of, grads = joint.tape, joint.slot_of, joint.grads
    joint.hvp_leaves = {n: tape.leaf(f"v.{n}", tape.shapes[slot_of[n]]) for n in directions}
    s2 = inner(tape, [(grads[slot_of[n]], v) for n, v in joint.hvp_leaves.items()
                      if slot_of[n] in grads])
    if s2 is not None:
        wrt_slots = {n: slot_of[n] for n in wrt}
        second = backprop(tape, s2, tape.const(1.0), wrt_slots.values())
        joint.hvp_slots = {n: second[s] for n, s in wrt_slots.items() if s in second}


def _jvp(joint: Joint, inputs: tuple[str, ...]) -> None:
    """J·t as the transpose of the VJP: vjp(u) is linear in a dummy upstream u, and
    d/du Σ <vjp_i(u), t_i> = Σ J_i t_i. Only VJP rules are needed."""
    tape, slot_of = joint.tape, joint.slot_of
    joint.u = u = tape.leaf("u", joint.out_shape)
    joint.tangent_leaves = {n: tape.leaf(f"t.{n}", tape.shapes[slot_of[n]]) for n in inputs}
    gu = backprop(tape, joint.out, u, [slot_of[n] for n in inputs])
    s = inner(tape, [(gu[slot_of[n]], t) for n, t in joint.tangent_leaves.items()
                     if slot_of[n] in gu])
    if s is not None:
        jv = backprop(tape, s, tape.const(1.0), [u]).get(u)
        joint.jvp_slot = -1 if jv is None else jv


def label_bounds(plan: Plan, joint: Joint) -> tuple[tuple[str, int, int, str], ...]:
    """Label input → (lo, hi, what): the range [lo, hi) its values must lie in and what the
    op calls them. Class labels: [0, the op's ``label_classes``) where it has one (where's
    0/1 condition: 2), else [0, the last axis of the op's scores (its float argument)),
    wherever the op puts its labels; an op with a ``label_range`` rule says its own (gather:
    [-n, n)). The narrowest over the ops that read the input."""
    tape, slot_of = joint.tape, joint.slot_of
    bounds: dict[str, tuple[int, int, str]] = {}
    for node in plan.nodes:
        kinds = node.op.kinds_for(len(node.args))
        if "label" not in kinds:
            continue
        shapes = [tape.shapes[a] for a in tape.args[slot_of[node.id]]]
        rule = node.op.label_range
        if rule is None:
            lo, hi = 0, node.op.label_classes or shapes[kinds.index("float")][-1]
        else:
            lo, hi = rule(*shapes, **node.attrs)
        for j, (a, kind) in enumerate(zip(node.args, kinds)):
            if kind == "label":
                what = node.op.arg_names[min(j, len(node.op.arg_names) - 1)]
                old = bounds.get(a)  # type: ignore[arg-type]
                if old is not None:
                    lo, hi, what = max(lo, old[0]), min(hi, old[1]), old[2]
                bounds[a] = (lo, hi, what)  # type: ignore[index]
    return tuple(sorted((name, *b) for name, b in bounds.items()))
