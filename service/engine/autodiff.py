"""Reverse mode as graph construction: the backward pass is more graph.

A :class:`Tape` is a graph being specialized to concrete shapes: one entry per value slot
(inputs, constants, direction leaves, forward nodes, and every node a VJP rule adds). The
VJP rules of the registry receive the tape as their builder (``b.op("mul", g, y)``), so
:func:`backprop` *appends* the backward graph to the forward graph in the same IR, made of
the same registry ops. Running it is the same executor loop as the forward pass; calling
:func:`backprop` again on the joint graph differentiates the backward pass itself, which is
how Hessian-vector products (reverse over reverse) and JVPs (the transpose of a VJP) are
built with one table of rules.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from service.engine.registry import Op, Ref, Registry, Shape


class Tape:
    """A shape-specialized graph under construction; slots are numbered in creation order,
    which is a topological order."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.ops: list[Op | None] = []  # None for a leaf (input, constant, direction)
        self.args: list[tuple[Ref, ...]] = []
        self.attrs: list[dict[str, Any]] = []
        self.shapes: list[Shape] = []
        self.names: list[str] = []
        self.origin: list[str] = []  # the forward node whose VJP added this one ("" if none)
        self.const_values: list[tuple[Ref, float]] = []
        self._consts: dict[str, Ref] = {}
        self._memo: dict[Any, Ref] = {}
        self._context = ""

    def __len__(self) -> int:
        return len(self.shapes)

    def _add(self, op: Op | None, args: tuple[Ref, ...], attrs: dict[str, Any], shape: Shape,
             name: str) -> Ref:
        self.ops.append(op)
        self.args.append(args)
        self.attrs.append(attrs)
        self.shapes.append(shape)
        self.names.append(name)
        self.origin.append(self._context)
        return len(self.shapes) - 1

    def leaf(self, name: str, shape: Shape) -> Ref:
        """An input or direction slot, filled per run."""
        return self._add(None, (), {}, tuple(shape), name)

    def const(self, value: float) -> Ref:
        """A 0-d constant; one slot per distinct float (keyed by its bits: 0.0 != -0.0)."""
        key = float(value).hex()
        ref = self._consts.get(key)
        if ref is None:
            ref = self._add(None, (), {}, (), repr(float(value)))
            self._consts[key] = ref
            self.const_values.append((ref, float(value)))
        return ref

    def node(self, op: Op, args: tuple[Ref, ...], attrs: dict[str, Any], shape: Shape,
             name: str) -> Ref:
        """A node of the user's graph (never merged with another)."""
        return self._add(op, args, attrs, tuple(shape), name)

    # --- the builder API the VJP rules see ------------------------------------------------
    def op(self, name: str, *args: Ref | float, **attrs: Any) -> Ref:
        """Add ``name(*args, **attrs)`` (floats become constants); identical nodes are
        built once (hash-consing), so rules may repeat a subexpression freely."""
        op = self.registry.op(name)
        refs = tuple(self.const(a) if isinstance(a, float) else a for a in args)
        full = {a.name: attrs.get(a.name, a.default) for a in op.attrs}
        key = (name, refs, tuple(full.items()))
        ref = self._memo.get(key)
        if ref is None:
            shape = tuple(op.shape(*[self.shapes[r] for r in refs], **full))
            ref = self._add(op, refs, full, shape, f"%b{len(self.shapes)}")
            self._memo[key] = ref
        return ref

    def shape(self, ref: Ref) -> Shape:
        return self.shapes[ref]


def depends_on(tape: Tape, targets: Iterable[Ref]) -> bytearray:
    """Per slot: 1 if it depends on a target through differentiable arguments."""
    dep = bytearray(len(tape))
    for t in targets:
        dep[t] = 1
    for s, (op, args) in enumerate(zip(tape.ops, tape.args)):
        if op is None or dep[s]:
            continue
        for a, vjp in zip(args, op.vjps_for(len(args))):
            if vjp is not None and dep[a]:
                dep[s] = 1
                break
    return dep


def backprop(tape: Tape, y: Ref, seed: Ref, targets: Iterable[Ref]) -> dict[Ref, Ref]:
    """Append the graph of d(<seed, y>)/d(slot) to the tape; returns slot → gradient node for
    every slot on a path from a target to ``y`` (the targets among them).

    Only slots that depend on a target are walked (tinygrad's rule: nothing off the path
    is differentiated). A rule's result of a broadcast shape is summed back to its
    argument's shape here, the one place that happens; fan-out sums with ``add`` nodes.
    """
    dep = depends_on(tape, targets)
    if not dep[y]:
        return {}
    grads: dict[Ref, Ref] = {y: seed}
    ops, args, attrs, shapes = tape.ops, tape.args, tape.attrs, tape.shapes
    for s in range(y, -1, -1):
        g = grads.get(s)
        op = ops[s]
        if g is None or op is None:
            continue
        tape._context = tape.names[s]
        a_s = args[s]
        for a, vjp in zip(a_s, op.vjps_for(len(a_s))):
            if vjp is None or not dep[a]:
                continue
            gi = vjp(tape, g, s, *a_s, **attrs[s])
            if gi is None:
                continue
            if shapes[gi] != shapes[a]:
                gi = tape.op("sum_to", gi, shape=shapes[a])
            prev = grads.get(a)
            grads[a] = gi if prev is None else tape.op("add", prev, gi)
    tape._context = ""
    return grads


def inner(tape: Tape, pairs: Iterable[tuple[Ref, Ref]]) -> Ref | None:
    """The scalar node Σ_i sum(a_i * b_i), or None for an empty sum."""
    total = None
    for a, b in pairs:
        term = tape.op("sum", tape.op("mul", a, b))
        total = term if total is None else tape.op("add", total, term)
    return total
