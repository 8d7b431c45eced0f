"""compile_graph: validate a GraphIR, sort it, prune it, infer shapes → an immutable Plan.

A :class:`Plan` is shape-generic (inputs may omit shapes) and cached per graph. For each
set of actual input shapes and each kind of request (which gradients, directions, trace)
it builds, once, an :class:`Executable` (``_build_executable``): the *joint* graph
(joint.py: forward, then the backward graph the VJP rules build, then second-order parts)
as one flat tuple of steps, with every shape, broadcast reduction and freed slot decided in
advance (schedule.py: prune, prefix/suffix, liveness), and the whole cost (cost.py: flops;
the schedule's peak live elements) estimated before anything runs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

from service.engine import ir
from service.engine.cost import flops, largest
from service.engine.errors import GraphError, LimitExceeded
from service.engine.executable import EXE_BYTES_PER_SLOT, Executable, Step, run_steps
from service.engine.joint import Joint, build_joint, label_bounds
from service.engine.limits import DEFAULT_LIMITS, Limits
from service.engine.registry import Op, Registry, Shape, ShapeError, size_of
from service.engine.schedule import Schedule, schedule
from service.engine.shapes import fmt

__all__ = ["EXE_BYTES_PER_SLOT", "Executable", "Plan", "PlanNode", "Step", "Want",
           "compile_graph", "infer_shapes", "run_steps"]

SPECIALIZATIONS_PER_PLAN = 32
# Per-worker bytes of cached objects, for the byte-bounded plan cache: measured with
# tracemalloc on a 2,000-node chain (plan ~730 B a node, executable ~330 B a slot, first
# and second order alike) and rounded up.
PLAN_BYTES_PER_NODE = 800  # and executable.EXE_BYTES_PER_SLOT
# Values smaller than this are never freed early (see schedule.liveness).
FREE_MIN_ELEMENTS = 16


@dataclass(frozen=True)
class PlanNode:
    id: str
    op: Op
    args: tuple[ir.Arg, ...]
    attrs: dict[str, Any]
    index: int  # position in the graph as the client wrote it (for error locations)


class Want(NamedTuple):
    """What one kind of request computes; with the input shapes, the specialization key.
    (A NamedTuple: built and hashed once per request, ~10x cheaper than a dataclass.)"""

    wrt: tuple[str, ...] = ()
    grads: bool = True  # the first-order backward pass from the seed (upstream)
    all_grads: bool = False  # every node's gradient (trace)
    keep_values: bool = False  # no node value is freed (trace)
    fetch: tuple[str, ...] = ()  # node values the caller reads after the run
    hvp: tuple[str, ...] | None = None  # wrt inputs with a direction leaf v
    jvp: tuple[str, ...] | None = None  # inputs with a tangent leaf t
    repeat: str = ""  # "seed" (Jacobian rows) | "hvp" (Hessian columns): suffix re-runs
    trace_backward: bool = False  # keep and report the backward nodes' values


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
    registry: Registry
    input_order: tuple[str, ...] = ()  # every input, sorted
    max_specializations: int = SPECIALIZATIONS_PER_PLAN
    # Called as on_resize(plan, change in nbytes, specializations evicted) when one is
    # added (the plan cache keeps its byte count and eviction metrics this way).
    on_resize: Any = field(default=None, repr=False)
    _specs: OrderedDict[Any, Executable] = field(default_factory=OrderedDict, repr=False)
    # The executor's prepared all-scalar runs (see ``scalar_path.scalar_run``), per (dtype,
    # wrt): each holds one of the executables above, so an eviction empties it.
    scalar_runs: dict[Any, Any] = field(default_factory=dict, repr=False)
    # The plans of this graph with a loss on top (engine/loss.py), per loss type.
    loss_plans: dict[str, Plan] = field(default_factory=dict, repr=False)
    # An imported model's tensors and words (engine/model.py); None for any other graph.
    model: Any = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def base_nbytes(self) -> int:
        held = self.model.nbytes if self.model is not None else 0
        return PLAN_BYTES_PER_NODE * len(self.nodes) + 2 * len(self.canonical_json) + held

    @property
    def nbytes(self) -> int:
        """Estimated bytes this plan holds in the worker: itself, its specializations and
        its loss plans (with theirs)."""
        return (self.base_nbytes + sum(e.nbytes for e in list(self._specs.values()))
                + sum(p.nbytes for p in list(self.loss_plans.values())))

    def specialize(
        self,
        shapes: Mapping[str, Shape],
        wrt: tuple[str, ...] = (),
        *,
        all_grads: bool = False,
        keep_values: bool = False,
        fetch: tuple[str, ...] = (),
        want: Want | None = None,
    ) -> Executable:
        """The Executable for these input shapes and this kind of request (cached, at most
        ``max_specializations`` per plan, least recently built first out).

        ``fetch`` names node values the caller reads after the forward pass (never freed).
        """
        if want is None:
            want = Want(wrt=tuple(wrt), grads=bool(wrt) or all_grads, all_grads=all_grads,
                        keep_values=keep_values, fetch=tuple(fetch))
        key = (tuple(shapes[n] for n in self.input_order), want)
        exe = self._specs.get(key)  # a dict read is atomic; only inserts take the lock
        if exe is not None:
            return exe
        exe = _build_executable(self, shapes, want)
        delta, evicted = exe.nbytes, 0
        with self._lock:
            raced = self._specs.get(key)
            if raced is not None:  # another thread built it meanwhile: use theirs
                return raced
            self._specs[key] = exe
            while len(self._specs) > self.max_specializations:
                _, old = self._specs.popitem(last=False)
                delta -= old.nbytes
                evicted += 1
            if evicted:
                self.scalar_runs.clear()
        hook = self.on_resize
        if hook is not None:
            hook(self, delta, evicted)
        return exe


def compile_graph(graph: ir.GraphIR, registry: Registry, limits: Limits = DEFAULT_LIMITS) -> Plan:
    """Validate and compile; every error is a GraphError naming the node or input."""
    if len(graph.nodes) > limits.max_nodes:
        raise LimitExceeded("max_nodes", limits.max_nodes, len(graph.nodes), "graph size (nodes)",
                            loc=("graph", "nodes"))
    inputs = graph.input_shapes
    index, normalized, ops = _normalize_nodes(graph, registry)
    _check_references(graph, normalized, index)

    norm_graph = ir.GraphIR(graph.inputs, tuple(normalized), graph.output)
    order = ir.toposort(norm_graph)
    canonical = ir.canonical_dict(norm_graph, order)
    blob = ir.canonical_json(canonical)
    plan_nodes = _prune(order, graph.output, ops, index)
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
        registry=registry,
    )
    # Static check with the declared shapes: a graph whose declared shapes make a tensor over
    # the limit can never run, so it is refused here, before any request allocates anything.
    infer_shapes(plan, inputs, limits=limits)
    return plan


def _normalize_nodes(graph: ir.GraphIR, registry: Registry
                     ) -> tuple[dict[str, int], list[ir.NodeIR], dict[str, Op]]:
    """Each node's id, op, arity and attrs checked; attrs normalized (defaults filled in).
    Returns node id → its position, the normalized nodes, node id → its op."""
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
        if not op.takes(len(node.args)):
            raise GraphError(f"op '{op.name}' takes {op.arity_text()} args, got "
                             f"{len(node.args)}", node=node.id, loc=(*loc, "args"))
        try:
            attrs = op.normalize_attrs(node.attr_dict)
        except ValueError as exc:
            raise GraphError(str(exc), node=node.id, loc=(*loc, "attrs")) from None
        ops[node.id] = op
        normalized.append(ir.NodeIR(node.id, node.op, node.args, tuple(sorted(attrs.items()))))
    return index, normalized, ops


def _check_references(graph: ir.GraphIR, nodes: list[ir.NodeIR], index: dict[str, int]
                      ) -> None:
    """Every arg name and the output name an input or a node."""
    inputs = graph.input_shapes
    for i, node in enumerate(nodes):
        for j, a in enumerate(node.args):
            if isinstance(a, str) and a not in index and a not in inputs:
                raise GraphError(f"arg '{a}' is neither an input nor a node", node=node.id,
                                 loc=("graph", "nodes", i, "args", j))
    if graph.output not in index and graph.output not in inputs:
        raise GraphError(f"output '{graph.output}' is neither an input nor a node",
                         loc=("graph", "output"))


def _prune(order: tuple[ir.NodeIR, ...], output: str, ops: dict[str, Op], index: dict[str, int]
           ) -> tuple[PlanNode, ...]:
    """The sorted nodes the output depends on (iteratively: a 100,000-deep chain must work)."""
    needed = {output}
    for node in reversed(order):
        if node.id in needed:
            needed.update(a for a in node.args if isinstance(a, str))
    return tuple(PlanNode(n.id, ops[n.id], n.args, dict(n.attrs), index[n.id])
                 for n in order if n.id in needed)


def _label_inputs(nodes: tuple[PlanNode, ...], inputs: Mapping[str, Any], output: str
                  ) -> frozenset[str]:
    labels: set[str] = set()
    floats: set[str] = {output}
    for node in nodes:
        for j, (a, kind) in enumerate(zip(node.args, node.op.kinds_for(len(node.args)))):
            if kind == "label":
                if not isinstance(a, str) or a not in inputs:
                    raise GraphError(f"arg '{node.op.arg_names[j]}' takes integers (labels "
                                     "or indices) and must be an input of the graph", node=node.id,
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


def infer_shapes(
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
            at = ("attrs", exc.attr) if exc.attr else ()
            raise GraphError(f"{node.op.name}({args}): {exc}", node=node.id,
                             loc=("graph", "nodes", node.index, *at)) from None
        if limits is not None and size_of(out) > limits.max_tensor_elements:
            raise LimitExceeded("max_tensor_elements", limits.max_tensor_elements,
                                size_of(out), f"node '{node.id}' {fmt(out)} elements",
                                loc=("graph", "nodes", node.index))
        shapes[node.id] = out
    return shapes


# --- specializations ----------------------------------------------------------------------


def _build_executable(plan: Plan, shapes: Mapping[str, Shape], want: Want) -> Executable:
    """The joint graph for these shapes and ``want``, scheduled and costed."""
    joint = build_joint(plan, shapes, infer_shapes(plan, shapes, limits=None), want)
    sched = schedule(plan, joint, want, FREE_MIN_ELEMENTS)
    return _executable(plan, want, joint, sched)


def _bind(fn: Any, attrs: dict[str, Any]) -> Any:
    return partial(fn, **attrs) if attrs else fn


def _executable(plan: Plan, want: Want, joint: Joint, sched: Schedule) -> Executable:
    tape, slot_of, frees = joint.tape, joint.slot_of, sched.frees
    ops, args = tape.ops, tape.args
    f64 = plan.registry.xp.float64

    def step(s: int) -> Step:
        return Step(_bind(ops[s].forward, tape.attrs[s]), args[s], s,  # type: ignore[union-attr]
                    tuple(frees.get(s, ())))

    cost = flops(joint, sched)
    backward_records = tuple(
        (s, ops[s].name, args[s], tape.origin[s])  # type: ignore[union-attr]
        for s in sched.steps if s >= joint.n_forward) if want.trace_backward else ()
    return Executable(
        plan=plan,
        want=want,
        n_slots=len(tape),
        input_slots={name: slot_of[name] for name in plan.input_order},
        constants=tuple((slot, plan.registry.scalar(c, f64)) for slot, c in tape.const_values),
        f64=f64,
        prefix=tuple(step(s) for s in sched.prefix),
        suffix=tuple(step(s) for s in sched.suffix),
        output_slot=joint.out,
        output_shape=joint.out_shape,
        seed_slot=joint.seed,
        u_slot=joint.u,
        grad_slots=joint.grad_slots,
        hvp_leaves=joint.hvp_leaves,
        hvp_slots=joint.hvp_slots,
        tangent_leaves=joint.tangent_leaves,
        jvp_slot=joint.jvp_slot,
        node_slots=tuple((p, slot_of[p.id]) for p in plan.nodes),
        node_grad_slots=joint.node_grad_slots,
        backward_records=backward_records,
        slot_of=slot_of,
        slot_names=tuple(tape.names),
        slot_shapes=tuple(tape.shapes),
        wrt=want.wrt,
        label_bounds=label_bounds(plan, joint),
        max_elements=max(sched.sizes, default=0),
        largest=largest(plan, joint, sched.sizes),
        peak_elements=sched.peak,
        flops=cost.total,
        forward_flops=cost.forward,
        suffix_flops=cost.suffix,
    )
