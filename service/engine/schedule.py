"""The schedule of a joint graph: prune to what the request reads, split into prefix and
suffix, free every slot after its last reader (liveness), and replay it for the peak.

``prefix`` is what depends on no direction leaf (seed, v, t, u): the forward pass, plus
backward pieces that need no upstream; ``suffix`` the rest. With ``Want.repeat`` the split
is by the varying leaves only, and the suffix may be re-run (Jacobian rows, Hessian
columns): it then frees only its own slots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from service.engine.autodiff import Tape
from service.engine.joint import Joint
from service.engine.registry import size_of

if TYPE_CHECKING:
    from service.engine.compiler import Plan, Want


@dataclass(slots=True)
class Schedule:
    steps: list[int]  # every computed slot the request needs, in tape order
    prefix: list[int]
    suffix: list[int]
    frees: dict[int, list[int]]  # step slot → the slots freed after it
    sizes: list[int]  # elements per slot
    peak: int  # most elements live at once


def schedule(plan: Plan, joint: Joint, want: Want, free_min: int) -> Schedule:
    """Prune, split and free (slots under ``free_min`` elements are never freed)."""
    tape = joint.tape
    results = _results(plan, joint, want)
    needed = _needed(tape, results)
    ops = tape.ops
    if want.trace_backward:
        for s in range(joint.n_forward, len(tape)):
            if ops[s] is not None and needed[s]:
                results.add(s)
    steps = [s for s in range(len(tape)) if ops[s] is not None and needed[s]]
    if want.repeat == "seed":
        varying = [joint.seed]
    elif want.repeat == "hvp":
        varying = list(joint.hvp_leaves.values())
    else:
        varying = [x for x in (joint.seed, joint.u) if x >= 0]
        varying += [*joint.hvp_leaves.values(), *joint.tangent_leaves.values()]
    dep = depends_on_any(tape, varying)
    prefix = [s for s in steps if not dep[s]]
    suffix = [s for s in steps if dep[s]]
    sizes = [size_of(sh) for sh in tape.shapes]
    frees = liveness(tape, prefix, suffix, results, sizes, bool(want.repeat), free_min)
    return Schedule(steps, prefix, suffix, frees, sizes,
                    peak(tape, prefix, suffix, frees, sizes, scratch(tape, steps)))


def scratch(tape: Tape, steps: list[int]) -> dict[int, int]:
    """Step slot → the elements its forward allocates besides its result and frees before
    it returns (``Op.scratch``: an im2col buffer), for the ops that declare any."""
    ops, args, shapes, attrs = tape.ops, tape.args, tape.shapes, tape.attrs
    out: dict[int, int] = {}
    for s in steps:
        rule = ops[s].scratch  # type: ignore[union-attr]
        if rule is not None:
            out[s] = rule([shapes[a] for a in args[s]], shapes[s], attrs[s])
    return out


def _results(plan: Plan, joint: Joint, want: Want) -> set[int]:
    """The slots the request reads after the run (never freed)."""
    slot_of = joint.slot_of
    results = {joint.out, *joint.grad_slots.values(), *joint.hvp_slots.values(),
               *(slot_of[n] for n in want.fetch)}
    if joint.jvp_slot >= 0:
        results.add(joint.jvp_slot)
    if want.keep_values:
        results.update(slot_of[n.id] for n in plan.nodes)
        results.update(joint.node_grad_slots.values())
    return results


def _needed(tape: Tape, results: set[int]) -> bytearray:
    """Per slot: 1 if a result reads it (through any chain of arguments)."""
    needed = bytearray(len(tape))
    for r in results:
        needed[r] = 1
    ops, args = tape.ops, tape.args
    for s in range(len(tape) - 1, -1, -1):
        if needed[s] and ops[s] is not None:
            for a in args[s]:
                needed[a] = 1
    return needed


def depends_on_any(tape: Tape, leaves: list[int]) -> bytearray:
    """Per slot: 1 if it reads (through any argument) one of ``leaves``."""
    dep = bytearray(len(tape))
    for x in leaves:
        dep[x] = 1
    for s, (op, a) in enumerate(zip(tape.ops, tape.args)):
        if op is not None and not dep[s] and any(dep[i] for i in a):
            dep[s] = 1
    return dep


def liveness(tape: Tape, prefix: list[int], suffix: list[int], keep: set[int],
             sizes: list[int], repeat: bool, free_min: int) -> dict[int, list[int]]:
    """Step slot → the slots to free after it: every computed slot after its last use.

    Never freed: results, leaves (the caller holds them anyway) and values under
    ``free_min`` elements (a free costs more time than the memory it returns is worth;
    the peak estimate counts them as held). With ``repeat`` the suffix is re-run, so a
    prefix slot the suffix reads is kept to the end and the suffix frees only its own slots.
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
        if a in keep or ops[a] is None or sizes[a] < free_min:
            continue
        if repeat and a not in in_suffix and a in read_by_suffix:
            continue
        frees.setdefault(s, []).append(a)
    # A computed slot nobody reads (only possible for a result) is kept as a result.
    return frees


def peak(tape: Tape, prefix: list[int], suffix: list[int], frees: dict[int, list[int]],
         sizes: list[int], temporaries: dict[int, int] | None = None) -> int:
    """The most elements live at once over prefix + one suffix run (a repeated suffix frees
    its own slots, so more runs hold no more). Views (reshape, broadcast_to, transpose)
    share memory and count nothing; a step's ``temporaries`` (its scratch) count while it
    runs."""
    ops = tape.ops
    temporaries = temporaries or {}
    held = [0 if ops[s] is not None and ops[s].view else sizes[s]  # type: ignore[union-attr]
            for s in range(len(tape))]
    live = sum(held[s] for s in range(len(tape)) if ops[s] is None)
    most = live
    for s in prefix + suffix:
        live += held[s]
        most = max(most, live + temporaries.get(s, 0))
        for f in frees.get(s, ()):
            live -= held[f]
    return most
