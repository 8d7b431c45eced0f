"""compile_graph: validate a GraphIR, sort it, prune it, infer shapes → an immutable Plan.

A :class:`Plan` is shape-generic (inputs may omit shapes) and cached per graph. For each
set of actual input shapes and each kind of request (which gradients, directions, trace)
it builds, once, an :class:`Executable`: the *joint* graph (forward, then the backward
graph the VJP rules build, then second-order parts) as one flat tuple of steps, with every
shape, broadcast reduction and freed slot decided in advance by a liveness analysis, and
the whole cost (flops, peak live bytes) estimated before anything runs.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any, NamedTuple

from service.engine import ir
from service.engine.autodiff import Tape, backprop, inner
from service.engine.errors import GraphError, LimitExceeded
from service.engine.limits import DEFAULT_LIMITS, Limits
from service.engine.registry import Op, Registry, Shape, ShapeError, size_of
from service.engine.shapes import fmt

SPECIALIZATIONS_PER_PLAN = 32
# Per-worker bytes of cached objects, for the byte-bounded plan cache: measured with
# tracemalloc on a 2,000-node chain (plan ~730 B a node, executable ~330 B a slot, first
# and second order alike) and rounded up.
PLAN_BYTES_PER_NODE = 800
EXE_BYTES_PER_SLOT = 400
# Values smaller than this are never freed early (see _liveness).
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
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def base_nbytes(self) -> int:
        return PLAN_BYTES_PER_NODE * len(self.nodes) + 2 * len(self.canonical_json)

    @property
    def nbytes(self) -> int:
        """Estimated bytes this plan holds in the worker (itself and its specializations)."""
        return self.base_nbytes + sum(e.nbytes for e in list(self._specs.values()))

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
        registry=registry,
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


class Step(NamedTuple):
    """One node of the joint graph: ``vals[out] = fn(*vals[args])``, then free ``free``."""

    fn: Any
    args: tuple[int, ...]
    out: int
    free: tuple[int, ...]


def run_steps(steps: tuple[Step, ...], vals: list[Any]) -> None:
    """The executor: one flat loop over prebuilt tuples (arity picked by a length test,
    cheaper than building an argument list per call)."""
    for fn, a, o, free in steps:
        if len(a) == 2:
            vals[o] = fn(vals[a[0]], vals[a[1]])
        elif len(a) == 1:
            vals[o] = fn(vals[a[0]])
        else:
            vals[o] = fn(*[vals[i] for i in a])
        if free:
            for i in free:
                vals[i] = None


@dataclass(frozen=True)
class Executable:
    """A plan bound to input shapes and a :class:`Want`: the joint graph's steps, its slots
    and cost estimates.

    ``prefix`` is the forward pass (what depends on no direction leaf: seed, v, t, u);
    ``suffix`` everything after. With ``want.repeat`` the suffix may be re-run with new
    direction values (Jacobian rows, Hessian columns): it then frees only its own slots.
    """

    plan: Plan
    want: Want
    n_slots: int
    input_slots: dict[str, int]
    constants: tuple[tuple[int, Any], ...]  # (slot, float64 scalar of the namespace)
    f64: Any  # the namespace's float64 scalar type
    prefix: tuple[Step, ...]
    suffix: tuple[Step, ...]
    output_slot: int
    output_shape: Shape
    seed_slot: int  # -1: no first-order backward pass
    u_slot: int  # the JVP's dummy upstream; -1 when none
    grad_slots: dict[str, int]  # wrt input → slot of its gradient (absent: zero)
    hvp_leaves: dict[str, int]  # wrt input → slot of its direction v
    hvp_slots: dict[str, int]  # wrt input → slot of its Hessian-vector product
    tangent_leaves: dict[str, int]
    jvp_slot: int  # -1: zero (or not asked)
    node_slots: tuple[tuple[PlanNode, int], ...]
    node_grad_slots: dict[str, int]  # node id → its gradient's slot (trace)
    backward_records: tuple[tuple[int, str, tuple[int, ...], str], ...]  # trace_backward
    slot_of: dict[str, int]
    slot_names: tuple[str, ...]
    slot_shapes: tuple[Shape, ...]
    wrt: tuple[str, ...]
    label_bounds: tuple[tuple[str, int], ...]  # label input → number of classes
    max_elements: int
    largest: tuple[str, tuple[str | int, ...]]  # the biggest tensor: what it is and loc
    peak_elements: int  # most elements live at once (liveness schedule; views not counted)
    flops: int
    forward_flops: int
    suffix_flops: int
    # Constants in another precision, made once per dtype on a device backend (a 0-d device
    # array per constant per run would be a host-to-device copy each). Never written to.
    device_constants: dict[Any, tuple[tuple[int, Any], ...]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return EXE_BYTES_PER_SLOT * self.n_slots

    def check_limits(self, limits: Limits, itemsize: int = 8, extra_bytes: int = 0,
                     repeats: int = 1, what: str = "") -> None:
        """Refuse (413 naming the setting) before anything is allocated.

        ``repeats`` suffix runs (Jacobian rows, Hessian columns) multiply the suffix's work;
        ``extra_bytes`` are what the caller allocates besides the slots (results).
        """
        if self.max_elements > limits.max_tensor_elements:
            name, loc = self.largest
            raise LimitExceeded("max_tensor_elements", limits.max_tensor_elements,
                                self.max_elements, f"the element count of {name}",
                                loc=loc or None)
        if self.peak_elements > limits.max_total_elements:
            raise LimitExceeded("max_total_elements", limits.max_total_elements,
                                self.peak_elements,
                                "estimated elements held at once by the request")
        peak = self.peak_elements * itemsize + extra_bytes
        if peak > limits.max_memory_bytes:
            raise LimitExceeded("max_memory_bytes", limits.max_memory_bytes, peak,
                                f"estimated peak bytes of the request{what}")
        device = self.plan.registry.memory_bytes  # a GPU's memory: 413, not out-of-memory
        if device is not None and peak > device:
            raise LimitExceeded("device_memory_bytes", device, peak,
                                f"estimated peak device bytes of the request{what}")
        flops = self.flops + max(repeats - 1, 0) * self.suffix_flops
        if flops > limits.max_flops:
            raise LimitExceeded("max_flops", limits.max_flops, flops,
                                f"estimated work (flops){what}")

    def start(self, values: Mapping[str, Any], dtype: Any = None) -> list[Any]:
        """A slot list with the inputs and constants in place (the other leaves empty)."""
        vals: list[Any] = [None] * self.n_slots
        for name, slot in self.input_slots.items():
            vals[slot] = values[name]
        # Constants are stored as floats (0-d float64 when run: 1.0 / 0.0 must give inf, not
        # raise); another precision converts them per run, so a node of constants alone
        # (exp(2.0)) does not turn float32 values downstream into float64.
        if dtype is None or dtype is self.f64:
            for slot, c in self.constants:
                vals[slot] = c
        elif self.plan.registry.scalars:
            for slot, c in self.constants:
                vals[slot] = dtype(c)
        else:
            cached = self.device_constants.get(dtype)
            if cached is None:
                scalar = self.plan.registry.scalar
                cached = tuple((slot, scalar(float(c), dtype)) for slot, c in self.constants)
                self.device_constants[dtype] = cached
            for slot, c in cached:
                vals[slot] = c
        return vals

    def forward(self, values: Mapping[str, Any], dtype: Any = None) -> list[Any]:
        """Run the forward pass; returns the slot list (freed slots are None)."""
        vals = self.start(values, dtype)
        run_steps(self.prefix, vals)
        return vals

    def backward(self, vals: list[Any], seed: Any) -> list[Any]:
        """Run the rest of the joint graph with ``seed`` = d(objective)/d(output)."""
        if self.seed_slot >= 0:
            vals[self.seed_slot] = seed
        run_steps(self.suffix, vals)
        return vals

    def gradient(self, vals: list[Any], name: str) -> Any:
        """The gradient of wrt input ``name`` after a run (None: identically zero)."""
        slot = self.grad_slots.get(name)
        return None if slot is None else vals[slot]


def _bind(fn: Any, attrs: dict[str, Any]) -> Any:
    return partial(fn, **attrs) if attrs else fn


def _build_executable(plan: Plan, shapes: Mapping[str, Shape], want: Want) -> Executable:  # noqa: C901
    node_shapes = _infer_shapes(plan, shapes, limits=None)
    f64 = plan.registry.xp.float64
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
    n_forward = len(tape)
    out = slot_of[plan.output]
    out_shape = tape.shapes[out]
    for name in want.fetch:
        if name not in slot_of:
            raise GraphError(f"cannot fetch '{name}': not a node or input of the plan")

    wrt_slots = {n: slot_of[n] for n in want.wrt}
    seed = u = -1
    grads: dict[int, int] = {}
    if want.grads or want.all_grads or want.hvp is not None:
        # Which slots need a gradient: the wrt inputs (and, for a trace, every node; also
        # one computed from constants alone). Constants themselves never get one.
        seed = tape.leaf("seed", out_shape)
        targets = set(wrt_slots.values())
        if want.all_grads:
            targets.update(slot_of[n] for n in plan.float_inputs)
            targets.update(slot_of[n.id] for n in plan.nodes)
        if want.hvp is not None:
            targets.update(slot_of[n] for n in want.hvp)
        grads = backprop(tape, out, seed, targets)
    grad_slots = {n: grads[s] for n, s in wrt_slots.items() if s in grads}

    hvp_leaves: dict[str, int] = {}
    hvp_slots: dict[str, int] = {}
    if want.hvp is not None:
        hvp_leaves = {n: tape.leaf(f"v.{n}", tape.shapes[slot_of[n]]) for n in want.hvp}
        s2 = inner(tape, [(grads[slot_of[n]], v) for n, v in hvp_leaves.items()
                          if slot_of[n] in grads])
        if s2 is not None:
            second = backprop(tape, s2, tape.const(1.0), wrt_slots.values())
            hvp_slots = {n: second[s] for n, s in wrt_slots.items() if s in second}

    tangent_leaves: dict[str, int] = {}
    jvp_slot = -1
    if want.jvp is not None:
        # J·t as the transpose of the VJP: vjp(u) is linear in a dummy upstream u, and
        # d/du Σ <vjp_i(u), t_i> = Σ J_i t_i. Only VJP rules are needed.
        u = tape.leaf("u", out_shape)
        tangent_leaves = {n: tape.leaf(f"t.{n}", tape.shapes[slot_of[n]]) for n in want.jvp}
        gu = backprop(tape, out, u, [slot_of[n] for n in want.jvp])
        s = inner(tape, [(gu[slot_of[n]], t) for n, t in tangent_leaves.items()
                         if slot_of[n] in gu])
        if s is not None:
            jv = backprop(tape, s, tape.const(1.0), [u]).get(u)
            jvp_slot = -1 if jv is None else jv

    node_grad_slots = {n.id: grads[slot_of[n.id]] for n in plan.nodes
                       if want.all_grads and slot_of[n.id] in grads}

    # --- prune to what the request reads, split, schedule ---------------------------------
    results = {out, *grad_slots.values(), *hvp_slots.values(), *(slot_of[n] for n in want.fetch)}
    if jvp_slot >= 0:
        results.add(jvp_slot)
    if want.keep_values:
        results.update(slot_of[n.id] for n in plan.nodes)
        results.update(node_grad_slots.values())
    n = len(tape)
    needed = bytearray(n)
    for r in results:
        needed[r] = 1
    ops, args = tape.ops, tape.args
    for s in range(n - 1, -1, -1):
        if needed[s] and ops[s] is not None:
            for a in args[s]:
                needed[a] = 1
    if want.trace_backward:
        for s in range(n_forward, n):
            if ops[s] is not None and needed[s]:
                results.add(s)
    directions = [x for x in (seed, u) if x >= 0]
    directions += [*hvp_leaves.values(), *tangent_leaves.values()]
    varying = directions
    if want.repeat == "seed":
        varying = [seed]
    elif want.repeat == "hvp":
        varying = list(hvp_leaves.values())
    dep = depends_on_any(tape, directions)
    steps = [s for s in range(n) if ops[s] is not None and needed[s]]
    prefix = [s for s in steps if not dep[s]]
    suffix = [s for s in steps if dep[s]]
    if want.repeat:
        vary = depends_on_any(tape, varying)
        prefix, suffix = ([s for s in steps if not vary[s]], [s for s in steps if vary[s]])

    sizes = [size_of(sh) for sh in tape.shapes]
    frees = _liveness(tape, prefix, suffix, results, sizes, bool(want.repeat))
    peak = _peak(tape, prefix, suffix, frees, sizes)

    def step(s: int) -> Step:
        return Step(_bind(ops[s].forward, tape.attrs[s]), args[s], s,  # type: ignore[union-attr]
                    tuple(frees.get(s, ())))

    label_bounds: dict[str, int] = {}
    for node in plan.nodes:
        kinds = node.op.arg_kinds
        if "label" not in kinds:
            continue
        # The classes are the last axis of the op's scores (its float argument), wherever
        # the op puts its labels.
        node_args = tape.args[slot_of[node.id]]
        classes = tape.shapes[node_args[kinds.index("float")]][-1]
        for a, kind in zip(node.args, kinds):
            if kind == "label":
                label_bounds[a] = min(label_bounds.get(a, classes), classes)  # type: ignore

    biggest = max(range(n), key=sizes.__getitem__, default=-1)
    largest: tuple[str, tuple[str | int, ...]] = ("", ())
    if biggest >= 0:
        name = tape.names[biggest]
        what = f"{fmt(tape.shapes[biggest])}"
        if name in plan.inputs and ops[biggest] is None:
            largest = (f"'{name}' {what}", ("values", name))
        elif biggest < n_forward and ops[biggest] is not None:
            index = next(p.index for p in plan.nodes if p.id == name)
            largest = (f"'{name}' {what}", ("graph", "nodes", index))
        elif biggest >= n_forward:
            origin = tape.origin[biggest]
            largest = (f"a backward temporary {what}"
                       + (f" of node '{origin}'" if origin else ""), ())

    def cost(s: int) -> int:
        return ops[s].cost([tape.shapes[a] for a in args[s]], tape.shapes[s],  # type: ignore
                           tape.attrs[s])

    fwd_flops = sum(cost(s) for s in steps if s < n_forward)
    suffix_flops = sum(cost(s) for s in suffix)
    total_flops = sum(cost(s) for s in prefix) + suffix_flops
    backward_records = tuple(
        (s, ops[s].name, args[s], tape.origin[s])  # type: ignore[union-attr]
        for s in steps if s >= n_forward) if want.trace_backward else ()
    return Executable(
        plan=plan,
        want=want,
        n_slots=n,
        input_slots={name: slot_of[name] for name in plan.input_order},
        constants=tuple((slot, plan.registry.scalar(c, f64)) for slot, c in tape.const_values),
        f64=f64,
        prefix=tuple(step(s) for s in prefix),
        suffix=tuple(step(s) for s in suffix),
        output_slot=out,
        output_shape=out_shape,
        seed_slot=seed,
        u_slot=u,
        grad_slots=grad_slots,
        hvp_leaves=hvp_leaves,
        hvp_slots=hvp_slots,
        tangent_leaves=tangent_leaves,
        jvp_slot=jvp_slot,
        node_slots=tuple((p, slot_of[p.id]) for p in plan.nodes),
        node_grad_slots=node_grad_slots,
        backward_records=backward_records,
        slot_of=slot_of,
        slot_names=tuple(tape.names),
        slot_shapes=tuple(tape.shapes),
        wrt=want.wrt,
        label_bounds=tuple(sorted(label_bounds.items())),
        max_elements=max(sizes, default=0),
        largest=largest,
        peak_elements=peak,
        flops=total_flops,
        forward_flops=fwd_flops,
        suffix_flops=suffix_flops,
    )


def depends_on_any(tape: Tape, leaves: list[int]) -> bytearray:
    """Per slot: 1 if it reads (through any argument) one of ``leaves``."""
    dep = bytearray(len(tape))
    for x in leaves:
        dep[x] = 1
    for s, (op, a) in enumerate(zip(tape.ops, tape.args)):
        if op is not None and not dep[s] and any(dep[i] for i in a):
            dep[s] = 1
    return dep


def _liveness(tape: Tape, prefix: list[int], suffix: list[int], keep: set[int],
              sizes: list[int], repeat: bool) -> dict[int, list[int]]:
    """Step slot → the slots to free after it: every computed slot after its last use.

    Never freed: results, leaves (the caller holds them anyway) and values under
    ``FREE_MIN_ELEMENTS`` (a free costs more time than the memory it returns is worth; the
    peak estimate counts them as held). With ``repeat`` the suffix is re-run, so a prefix slot the
    suffix reads is kept to the end and the suffix frees only its own slots.
    """
    ops, args = tape.ops, tape.args
    order = prefix + suffix
    last: dict[int, int] = {}
    for s in order:
        for a in args[s]:
            last[a] = s
    if repeat:
        in_suffix = set(suffix)
        read_by_suffix = {a for s in suffix for a in args[s]}
    frees: dict[int, list[int]] = {}
    for a, s in last.items():
        if a in keep or ops[a] is None or sizes[a] < FREE_MIN_ELEMENTS:
            continue
        if repeat and a not in in_suffix and a in read_by_suffix:
            continue
        frees.setdefault(s, []).append(a)
    # A computed slot nobody reads (only possible for a result) is kept as a result.
    return frees


def _peak(tape: Tape, prefix: list[int], suffix: list[int], frees: dict[int, list[int]],
          sizes: list[int]) -> int:
    """The most elements live at once over prefix + one suffix run (a repeated suffix frees
    its own slots, so more runs hold no more). Views (reshape, broadcast_to, transpose)
    share memory and count nothing."""
    ops = tape.ops
    held = [0 if ops[s] is not None and ops[s].view else sizes[s]  # type: ignore[union-attr]
            for s in range(len(tape))]
    live = sum(held[s] for s in range(len(tape)) if ops[s] is None)
    peak = live
    for s in prefix + suffix:
        live += held[s]
        peak = max(peak, live)
        for f in frees.get(s, ()):
            live -= held[f]
    return peak
