"""compile_graph: validate a GraphIR, sort it, prune it, infer shapes → an immutable Plan.

A :class:`Plan` is shape-generic (inputs may omit shapes) and cached per graph. For each
set of actual input shapes it builds, once, an :class:`Executable`: slot-indexed forward and
backward step lists with every shape, broadcast reduction, limit and freed value decided in
advance, so running a request is two tight loops over prebuilt tuples (as a JIT cache keyed
by shapes would).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np

from service.engine import ir
from service.engine.limits import DEFAULT_LIMITS, Limits
from service.engine.registry import PASS_THROUGH, Op, Registry, Shape, ShapeError, size_of
from service.engine.shapes import fmt
from service.errors import GraphError, LimitExceeded

SPECIALIZATIONS_PER_PLAN = 32


@dataclass(frozen=True)
class PlanNode:
    id: str
    op: Op
    args: tuple[ir.Arg, ...]
    attrs: dict[str, Any]
    index: int  # position in the graph as the client wrote it (for error locations)


@dataclass(eq=False)
class Plan:
    """A validated, topologically sorted graph pruned to the output's ancestors."""

    graph_id: str
    canonical: dict[str, Any]
    canonical_json: bytes
    nodes: tuple[PlanNode, ...]
    inputs: dict[str, Shape | None]  # every declared input (also unused ones)
    label_inputs: frozenset[str]
    float_inputs: tuple[str, ...]  # differentiable inputs, sorted
    output: str
    node_count: int  # nodes in the graph before pruning
    input_order: tuple[str, ...] = ()  # every input, sorted
    _specs: OrderedDict[Any, Executable] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def specialize(
        self,
        shapes: Mapping[str, Shape],
        wrt: tuple[str, ...],
        *,
        all_grads: bool = False,
        keep_values: bool = False,
        fetch: tuple[str, ...] = (),
    ) -> Executable:
        """The Executable for these input shapes (cached, at most 32 per plan).

        ``fetch`` names node values the caller reads after the forward pass (never freed).
        """
        key = (tuple(shapes[n] for n in self.input_order), wrt, all_grads, keep_values, fetch)
        exe = self._specs.get(key)  # a dict read is atomic; only inserts take the lock
        if exe is not None:
            return exe
        exe = _build_executable(self, shapes, wrt, all_grads, keep_values, fetch)
        with self._lock:
            self._specs[key] = exe
            while len(self._specs) > SPECIALIZATIONS_PER_PLAN:  # oldest first out
                self._specs.popitem(last=False)
        return exe


def compile_graph(graph: ir.GraphIR, registry: Registry, limits: Limits = DEFAULT_LIMITS) -> Plan:
    """Validate and compile; every error is a GraphError naming the node or input."""
    if len(graph.nodes) > limits.max_nodes:
        raise LimitExceeded("max_nodes", limits.max_nodes, len(graph.nodes), "graph size (nodes)",
                            loc=("graph", "nodes"))
    inputs = graph.input_shapes
    index: dict[str, int] = {}
    normalized: list[ir.NodeIR] = []
    ops: dict[str, Op] = {}
    for i, node in enumerate(graph.nodes):
        loc = ("graph", "nodes", i)
        if node.id in index:
            raise GraphError("duplicate node id", node=node.id, loc=(*loc, "id"))
        if node.id in inputs:
            raise GraphError("the id is also an input name", node=node.id, loc=(*loc, "id"))
        index[node.id] = i
        try:
            op = registry.get(node.op, node=node.id)
        except GraphError as exc:
            exc.loc = (*loc, "op")
            raise
        if len(node.args) != op.arity:
            raise GraphError(f"op '{op.name}' takes {op.arity} args, got {len(node.args)}",
                             node=node.id, loc=(*loc, "args"))
        try:
            attrs = op.normalize_attrs(node.attr_dict)
        except ValueError as exc:
            raise GraphError(str(exc), node=node.id, loc=(*loc, "attrs")) from None
        ops[node.id] = op
        normalized.append(ir.NodeIR(node.id, node.op, node.args, tuple(sorted(attrs.items()))))
    for i, node in enumerate(normalized):
        for j, a in enumerate(node.args):
            if isinstance(a, str) and a not in index and a not in inputs:
                raise GraphError(f"arg '{a}' is neither an input nor a node", node=node.id,
                                 loc=("graph", "nodes", i, "args", j))
    if graph.output not in index and graph.output not in inputs:
        raise GraphError(f"output '{graph.output}' is neither an input nor a node",
                         loc=("graph", "output"))

    norm_graph = ir.GraphIR(graph.inputs, tuple(normalized), graph.output)
    order = ir.toposort(norm_graph)
    canonical = ir.canonical_dict(norm_graph, order)
    blob = ir.canonical_json(canonical)

    # Prune to the output's ancestors (iteratively: a 100,000-deep chain must work).
    needed = {graph.output}
    for node in reversed(order):
        if node.id in needed:
            needed.update(a for a in node.args if isinstance(a, str))
    plan_nodes = tuple(
        PlanNode(n.id, ops[n.id], n.args, dict(n.attrs), index[n.id])
        for n in order if n.id in needed
    )

    labels = _label_inputs(plan_nodes, inputs, graph.output)
    plan = Plan(
        graph_id=ir.hash_canonical(blob),
        canonical=canonical,
        canonical_json=blob,
        nodes=plan_nodes,
        inputs=inputs,
        label_inputs=labels,
        float_inputs=tuple(sorted(set(inputs) - labels)),
        input_order=tuple(sorted(inputs)),
        output=graph.output,
        node_count=len(graph.nodes),
    )
    # Static check with the declared shapes: a graph whose declared shapes make a tensor over
    # the limit can never run, so it is refused here, before any request allocates anything.
    _infer_shapes(plan, inputs, limits=limits)
    return plan


def _label_inputs(nodes: tuple[PlanNode, ...], inputs: Mapping[str, Any], output: str
                  ) -> frozenset[str]:
    labels: set[str] = set()
    floats: set[str] = {output}
    for node in nodes:
        for j, (a, kind) in enumerate(zip(node.args, node.op.arg_kinds)):
            if kind == "label":
                if not isinstance(a, str) or a not in inputs:
                    raise GraphError(f"arg '{node.op.arg_names[j]}' takes integer class labels "
                                     "and must be an input of the graph", node=node.id,
                                     loc=("graph", "nodes", node.index, "args", j))
                labels.add(a)
            elif isinstance(a, str):
                floats.add(a)
    both = labels & floats
    if both:
        name = sorted(both)[0]
        raise GraphError(f"input '{name}' is used both as integer labels and as a tensor",
                         loc=("graph", "inputs", name))
    return frozenset(labels)


def _infer_shapes(
    plan: Plan, input_shapes: Mapping[str, Shape | None], limits: Limits | None
) -> dict[str, Shape | None]:
    """Run every shape rule; None propagates where an input's shape is not known yet."""
    shapes: dict[str, Shape | None] = dict(input_shapes)
    for node in plan.nodes:
        arg_shapes = [() if not isinstance(a, str) else shapes[a] for a in node.args]
        if None in arg_shapes:
            shapes[node.id] = None
            continue
        try:
            out = tuple(node.op.shape(*arg_shapes, **node.attrs))
        except ShapeError as exc:
            args = ", ".join(f"{a}{fmt(s)}" if isinstance(a, str) else repr(a)
                             for a, s in zip(node.args, arg_shapes))
            raise GraphError(f"{node.op.name}({args}): {exc}", node=node.id,
                             loc=("graph", "nodes", node.index)) from None
        if limits is not None and size_of(out) > limits.max_tensor_elements:
            raise LimitExceeded("max_tensor_elements", limits.max_tensor_elements,
                                size_of(out), f"node '{node.id}' {fmt(out)} elements",
                                loc=("graph", "nodes", node.index))
        shapes[node.id] = out
    return shapes


# --- executables --------------------------------------------------------------------------


@dataclass(frozen=True)
class Executable:
    """A plan bound to input shapes: slots, step tuples and cost estimates."""

    plan: Plan
    n_slots: int
    input_slots: dict[str, int]
    constants: tuple[tuple[int, float], ...]
    forward_steps: tuple[tuple[Any, tuple[int, ...], int, tuple[int, ...]], ...]
    backward_steps: tuple[tuple[int, tuple[tuple[Any, tuple[int, ...], int, Shape], ...]], ...]
    output_slot: int
    output_shape: Shape
    node_slots: tuple[tuple[PlanNode, int], ...]
    slot_of: dict[str, int]
    slot_shapes: tuple[Shape, ...]
    wrt: tuple[str, ...]
    label_bounds: tuple[tuple[str, int], ...]  # label input → number of classes
    max_elements: int
    largest: tuple[str, tuple[str | int, ...]]  # the biggest tensor: its name and loc
    total_elements: int
    flops: int
    forward_flops: int

    def check_limits(self, limits: Limits) -> None:
        if self.max_elements > limits.max_tensor_elements:
            name, loc = self.largest
            what = (f"the element count of '{name}' {fmt(self.slot_shapes[self.slot_of[name]])}"
                    if name else "the largest tensor's element count")
            raise LimitExceeded("max_tensor_elements", limits.max_tensor_elements,
                                self.max_elements, what, loc=loc or None)
        if self.total_elements > limits.max_total_elements:
            raise LimitExceeded("max_total_elements", limits.max_total_elements,
                                self.total_elements, "estimated elements held by the request")
        if self.flops > limits.max_flops:
            raise LimitExceeded("max_flops", limits.max_flops, self.flops,
                                "estimated work (flops)")

    def forward(self, values: Mapping[str, Any], dtype: Any = None) -> list[Any]:
        """Run the forward pass; returns the slot list (freed slots are None).

        ``dtype`` (a scalar type such as ``numpy.float32``) gives the constants the run's
        precision: as Python floats they keep float32 arrays float32, but a node of constants
        alone (``exp(2.0)``, ``2.0 + 1.0``) would return a float64 scalar and turn every
        float32 value downstream of it into float64.
        """
        vals: list[Any] = [None] * self.n_slots
        for name, slot in self.input_slots.items():
            vals[slot] = values[name]
        # Constants are stored as float64 scalars (never Python floats: 1.0 / 0.0 would raise
        # where NumPy gives inf); another precision converts them per run.
        for slot, c in self.constants:
            vals[slot] = c if dtype is None or dtype is np.float64 else dtype(c)
        for fn, a, o, free in self.forward_steps:
            if len(a) == 1:
                vals[o] = fn(vals[a[0]])
            elif len(a) == 2:
                vals[o] = fn(vals[a[0]], vals[a[1]])
            else:
                vals[o] = fn(*[vals[i] for i in a])
            if free:
                for i in free:
                    vals[i] = None
        return vals

    def backward(self, vals: list[Any], seed: Any) -> list[Any]:
        """Reverse pass from ``seed`` = d(objective)/d(output); returns per-slot gradients."""
        grads: list[Any] = [None] * self.n_slots
        grads[self.output_slot] = seed
        for o, rules in self.backward_steps:
            g = grads[o]
            if g is None:
                continue
            out = vals[o]
            for vjp, a, target, shape in rules:
                if vjp is None:  # a pass-through rule (add, sub's x, identity): dx = g
                    gi = g
                elif len(a) == 1:
                    gi = vjp(g, out, vals[a[0]])
                elif len(a) == 2:
                    gi = vjp(g, out, vals[a[0]], vals[a[1]])
                else:
                    gi = vjp(g, out, *[vals[i] for i in a])
                if gi.shape != shape:
                    gi = unbroadcast(gi, shape)
                prev = grads[target]
                grads[target] = gi if prev is None else prev + gi
        return grads


def unbroadcast(g: Any, shape: Shape) -> Any:
    """Sum a broadcast gradient back to its argument's shape: the one place this happens."""
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        i + lead for i, d in enumerate(shape) if d == 1 and g.shape[i + lead] != 1
    )
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g.reshape(shape)


def _const_key(value: float) -> str:
    return float(value).hex()


def _bind(fn: Any, attrs: dict[str, Any]) -> Any:
    return partial(fn, **attrs) if attrs else fn


def _build_executable(
    plan: Plan, shapes: Mapping[str, Shape], wrt: tuple[str, ...], all_grads: bool,
    keep_values: bool, fetch: tuple[str, ...] = (),
) -> Executable:
    node_shapes = _infer_shapes(plan, shapes, limits=None)
    slot_of: dict[str, int] = {}
    slot_shapes: list[Shape] = []
    for name in sorted(plan.inputs):
        slot_of[name] = len(slot_shapes)
        slot_shapes.append(tuple(shapes[name]))
    constants: list[tuple[int, float]] = []
    # Keyed by the float's bits: 0.0 == -0.0, but x / 0.0 and x / -0.0 differ.
    const_slot: dict[str, int] = {}
    for node in plan.nodes:
        for a in node.args:
            if not isinstance(a, str) and _const_key(a) not in const_slot:
                const_slot[_const_key(a)] = len(slot_shapes)
                constants.append((len(slot_shapes), np.float64(a)))
                slot_shapes.append(())
    for node in plan.nodes:
        slot_of[node.id] = len(slot_shapes)
        slot_shapes.append(node_shapes[node.id])  # type: ignore[arg-type]

    # Every node's argument slots and output slot, resolved once (graphs run to 10^5 nodes).
    args_of = [tuple(slot_of[a] if isinstance(a, str) else const_slot[_const_key(a)]
                     for a in node.args) for node in plan.nodes]
    out_of = [slot_of[node.id] for node in plan.nodes]

    # Which slots need a gradient: the wrt inputs and everything computed from them; for a
    # trace, every node (also one computed from constants alone). Constants themselves never
    # get one: no one reads it, and rules such as sum's expect an array, not a Python float.
    requires = {slot_of[n] for n in (plan.float_inputs if all_grads else wrt)}
    if all_grads:
        requires.update(out_of)
    for node, a_slots, o in zip(plan.nodes, args_of, out_of):
        if any(a in requires and k == "float" for a, k in zip(a_slots, node.op.arg_kinds)):
            requires.add(o)

    backward: list[tuple[int, tuple[tuple[Any, tuple[int, ...], int, Shape], ...]]] = []
    for name in fetch:
        if name not in slot_of:
            raise GraphError(f"cannot fetch '{name}': not a node or input of the plan")
    saved: set[int] = {slot_of[plan.output], *(slot_of[n] for n in fetch)}
    for node, arg_slots, o in zip(reversed(plan.nodes), reversed(args_of), reversed(out_of)):
        if o not in requires:
            continue
        rules = []
        for a_slot, vjp in zip(arg_slots, node.op.vjps):
            if vjp is None or a_slot not in requires:
                continue
            bound = None if vjp is PASS_THROUGH else _bind(vjp, node.attrs)
            rules.append((bound, arg_slots, a_slot, slot_shapes[a_slot]))
        if rules:
            backward.append((o, tuple(rules)))
            if "args" in node.op.saves:
                saved.update(arg_slots)
            if "out" in node.op.saves:
                saved.add(o)

    # Free after its last forward use every node value the backward pass does not read.
    last_use: dict[int, int] = {}
    for k, a_slots in enumerate(args_of):
        for a in a_slots:
            last_use[a] = k
    frees: list[list[int]] = [[] for _ in plan.nodes]
    if not keep_values:
        node_slot_set = set(out_of)
        for s, k in last_use.items():
            if s in node_slot_set and s not in saved:
                frees[k].append(s)
    forward = tuple(
        (_bind(node.op.forward, node.attrs), a_slots, o, tuple(free))
        for node, a_slots, o, free in zip(plan.nodes, args_of, out_of, frees)
    )

    label_bounds: dict[str, int] = {}
    for node, a_slots in zip(plan.nodes, args_of):
        for a, kind in zip(node.args, node.op.arg_kinds):
            if kind == "label":
                classes = slot_shapes[a_slots[0]][1]
                label_bounds[a] = min(label_bounds.get(a, classes), classes)  # type: ignore

    sizes = [size_of(s) for s in slot_shapes]
    biggest = max(range(len(sizes)), key=sizes.__getitem__, default=-1)
    largest: tuple[str, tuple[str | int, ...]] = ("", ())
    for node, o in zip(plan.nodes, out_of):
        if o == biggest:
            largest = (node.id, ("graph", "nodes", node.index))
    for name in plan.inputs:
        if slot_of[name] == biggest:
            largest = (name, ("values", name))
    costs = [node.op.cost([slot_shapes[a] for a in a_slots], slot_shapes[o], node.attrs)
             for node, a_slots, o in zip(plan.nodes, args_of, out_of)]
    fwd_flops = sum(costs)
    bwd_flops = sum(2 * c for c, o in zip(costs, out_of) if o in requires)
    return Executable(
        plan=plan,
        n_slots=len(slot_shapes),
        input_slots={n: slot_of[n] for n in sorted(plan.inputs)},
        constants=tuple(constants),
        forward_steps=forward,
        backward_steps=tuple(backward),
        output_slot=slot_of[plan.output],
        output_shape=slot_shapes[slot_of[plan.output]],
        node_slots=tuple((n, slot_of[n.id]) for n in plan.nodes),
        slot_of=slot_of,
        slot_shapes=tuple(slot_shapes),
        wrt=wrt,
        label_bounds=tuple(sorted(label_bounds.items())),
        max_elements=max(sizes, default=0),
        largest=largest,
        total_elements=sum(sizes) + sum(sizes[s] for s in requires),
        flops=fwd_flops + bwd_flops,
        forward_flops=fwd_flops,
    )
