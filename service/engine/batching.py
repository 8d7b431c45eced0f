"""Batching by transformation: a plan rewritten so that one run computes many examples.

:func:`batched_plan` takes a compiled :class:`~service.engine.compiler.Plan`, the concrete
input shapes, the inputs that carry a leading example axis of size ``B`` and returns a new
plan (vmap with ``in_dims=0``): every value that depends on a batched input gets the leading
axis, each node rewritten by its op's batching rule (``Op.batching``, a name of
``service.engine.batch_rules.RULES``); values that depend on no batched input are computed
once, as before. The result is an ordinary plan of registry ops, so the compiler, the
autodiff (backward graphs of the batched forward), the cost model and every limit apply
unchanged: the gradient of the summed per-example objectives is, for a batched input, its
per-example gradient, and for a shared input their sum. Per-example gradients of a shared
input come from making it batched, fed as a broadcast view of the one value (no copy), so
that its gradient is the per-example outer product the batched backward computes.

Some rules need an input's value in another form (a label input reshaped, class labels as
one-hot floats): such a *feed* is a new input of the batched plan, named after its source,
made from the source value on the host before the run (:class:`Feed`).
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.engine import ir
from service.engine.batch_rules import RULES
from service.engine.compiler import compile_graph, infer_shapes
from service.engine.errors import GraphError, Unprocessable
from service.engine.limits import Limits

__all__ = ["BatchedPlan", "Builder", "Feed", "batched_plan", "feed_values"]

Shape = tuple[int, ...]
PLANS_PER_PLAN = 16  # batched plans kept per plan (per shapes, batched set and B)


@dataclass(frozen=True)
class Feed:
    """A batched plan's input made on the host from ``source``'s value: ``kind`` is
    "reshape" (to ``param``, a shape), "onehot" (float one-hot over ``param`` classes), "offset"
    (indices into ``param`` entries, offset by example) or "broadcast" (to ``param``, a
    shape: a read-only view)."""

    source: str
    kind: str
    param: Any


@dataclass(frozen=True)
class BatchedPlan:
    plan: Any  # the rewritten Plan
    size: int  # B
    batched: frozenset[str]  # the inputs that carry the example axis
    feeds: tuple[tuple[str, Feed], ...]  # derived inputs, made before the run
    output_shape: Shape  # (B,) + the output's per-example shape


class Builder:
    """What a batching rule may do: add nodes (public registry ops) to the batched graph,
    ask for feeds, and broadcast an unbatched value to the batch."""

    def __init__(self, size: int, inputs: dict[str, Shape], labels: frozenset[str],
                 prefix: str = "%b") -> None:
        self.size = size
        self.prefix = prefix  # fresh node ids: no id of the plan starts with it
        self.inputs = inputs  # the batched graph's inputs → their shapes
        self.labels = labels
        self.nodes: list[ir.NodeIR] = []
        self.feeds: dict[str, Feed] = {}
        self._n = 0

    def op(self, name: str, *args: ir.Arg, **attrs: Any) -> str:
        self._n += 1
        nid = f"{self.prefix}{self._n}"
        fixed = tuple(sorted((k, _plain(v)) for k, v in attrs.items()))
        self.nodes.append(ir.NodeIR(nid, name, tuple(args), fixed))
        return nid

    def feed(self, source: str, kind: str, param: Any, shape: Shape) -> str:
        """A new input made from input ``source`` (see :class:`Feed`), of ``shape``."""
        name = f"{source}%{kind}{len(self.feeds)}"
        self.feeds[name] = Feed(source, kind, _plain(param))
        self.inputs[name] = tuple(shape)
        return name

    def align(self, ref: ir.Arg, rank: int, to: int) -> ir.Arg:
        """A batched value of example rank ``rank`` with size-1 axes inserted after the
        batch axis up to example rank ``to``, so it broadcasts against rank-``to`` values."""
        if isinstance(ref, float) or to <= rank:
            return ref
        axes = tuple(range(1, 1 + to - rank))
        if ref in self.labels:
            return self.feed(ref, "reshape", (self.size,) + (1,) * (to - rank)
                             + self.inputs[ref][1:], (self.size,) + (1,) * (to - rank)
                             + self.inputs[ref][1:])
        return self.op("unsqueeze", ref, axes=axes)

    def lift(self, ref: ir.Arg, shape: Shape) -> ir.Arg:
        """An unbatched value of ``shape`` broadcast to ``(B,) + shape`` (a view)."""
        if isinstance(ref, float):
            return self.op("expand", ref, shape=(self.size, *shape))
        if ref in self.labels:
            return self.feed(ref, "broadcast", (self.size, *shape), (self.size, *shape))
        return self.op("expand", self.op("unsqueeze", ref, axes=(0,)),
                       shape=(self.size, *shape))


def _plain(v: Any) -> Any:
    if isinstance(v, tuple | list):
        return tuple(_plain(x) for x in v)
    return v


_cache: weakref.WeakKeyDictionary[Any, OrderedDict[Any, BatchedPlan]] = \
    weakref.WeakKeyDictionary()
_lock = threading.Lock()


def batched_plan(plan: Any, shapes: Mapping[str, Shape], batched: frozenset[str], size: int,
                 limits: Limits) -> BatchedPlan:
    """``plan`` rewritten for ``size`` examples of the ``batched`` inputs (``shapes``: the
    inputs' per-example shapes), compiled; cached per plan. Raises a 422 naming an op that
    has no batching rule."""
    key = (tuple((n, tuple(shapes[n])) for n in plan.input_order), batched, size)
    with _lock:
        per = _cache.setdefault(plan, OrderedDict())
        hit = per.get(key)
        if hit is not None:
            per.move_to_end(key)
            return hit
    built = _build(plan, shapes, batched, size, limits)
    with _lock:
        per[key] = built
        while len(per) > PLANS_PER_PLAN:
            per.popitem(last=False)
    return built


def _build(plan: Any, shapes: Mapping[str, Shape], batched: frozenset[str], size: int,
           limits: Limits) -> BatchedPlan:
    node_shapes = infer_shapes(plan, dict(shapes), limits=None)
    deepest = max((len(s) for s in node_shapes.values() if s is not None), default=0)
    if deepest + 1 > ir.MAX_NDIM:
        raise Unprocessable(f"batched: a value of the graph has {deepest} dims; with the "
                            f"example axis it would have {deepest + 1} (at most "
                            f"{ir.MAX_NDIM})", loc=("batched",))
    inputs = {n: ((size, *shapes[n]) if n in batched else tuple(shapes[n]))
              for n in plan.input_order}
    taken = {n.id for n in plan.nodes} | set(plan.inputs)
    level = 0
    while any(t.startswith(f"%b{level}.") for t in taken):
        level += 1
    b = Builder(size, inputs, plan.label_inputs, f"%b{level}.")
    ref: dict[str, ir.Arg] = {n: n for n in plan.input_order}
    is_b = {n: n in batched for n in plan.input_order}
    for node in plan.nodes:
        flags = [isinstance(a, str) and is_b[a] for a in node.args]
        args = [ref[a] if isinstance(a, str) else float(a) for a in node.args]
        if not any(flags):
            ref[node.id] = _copy(b, node, args)
            is_b[node.id] = False
            continue
        rule = RULES.get(node.op.batching)
        if rule is None:
            raise Unprocessable(f"batched: op '{node.op.name}' (node '{node.id}') has no "
                                "batching rule yet; send the examples as separate requests",
                                loc=("batched",))
        arg_shapes = [node_shapes[a] if isinstance(a, str) else () for a in node.args]
        out = rule(b, node.op.name, args, flags, arg_shapes, node_shapes[node.id], node.attrs)
        ref[node.id] = _rename(b, out, node.id)
        is_b[node.id] = True
    out = ref[plan.output]
    if not is_b[plan.output]:  # the same for every example: computed once, broadcast
        if b.nodes and b.nodes[-1].id == plan.output:
            last = b.nodes.pop()
            out = b.op(last.op, *last.args, **dict(last.attrs))
        out = b.lift(out, tuple(node_shapes[plan.output]))
    if out != plan.output and isinstance(out, str) and out.startswith(b.prefix):
        out = _rename(b, out, plan.output)
    if out != plan.output:
        b.nodes.append(ir.NodeIR(plan.output, "identity", (out,), ()))
    graph = ir.GraphIR(tuple(sorted(b.inputs.items())), tuple(b.nodes), plan.output)
    try:
        bplan = compile_graph(graph, plan.registry, limits)
    except GraphError as err:
        if err.status == 413:
            err.loc = ("batched",)
            raise
        raise Unprocessable(f"batched: the batched graph does not compile: {err.detail}",
                            loc=("batched",)) from None
    return BatchedPlan(bplan, size, batched, tuple(b.feeds.items()),
                       (size, *node_shapes[plan.output]))


def _copy(b: Builder, node: Any, args: list[ir.Arg]) -> str:
    b.nodes.append(ir.NodeIR(node.id, node.op.name, tuple(args),
                             tuple(sorted((k, _plain(v)) for k, v in node.attrs.items()))))
    return node.id


def _rename(b: Builder, out: ir.Arg, nid: str) -> ir.Arg:
    """The rule's last node takes the original id (fetch and errors name it)."""
    last = b.nodes[-1] if b.nodes else None
    if last is not None and last.id == out and isinstance(out, str) \
            and out.startswith(b.prefix):
        b.nodes[-1] = ir.NodeIR(nid, last.op, last.args, last.attrs)
        return nid
    return out


def feed_values(bp: BatchedPlan, values: Mapping[str, Any], dtype: Any) -> dict[str, Any]:
    """The batched plan's values: the given ones and every feed made from them."""
    out = dict(values)
    for name, feed in bp.feeds:
        src = np.asarray(values[feed.source])
        if feed.kind == "reshape":
            out[name] = np.reshape(src, feed.param)
        elif feed.kind == "broadcast":
            out[name] = np.broadcast_to(src, feed.param)
        else:  # labels: as one-hot floats, or indices offset by example
            idx = np.asarray(src, dtype=np.int64)
            lo = -feed.param if feed.kind == "offset" else 0
            if idx.size and (int(idx.min()) < lo or int(idx.max()) >= feed.param):
                raise Unprocessable(f"values: labels '{feed.source}' must lie in "
                                    f"[{lo}, {feed.param}), got {int(idx.min())}.."
                                    f"{int(idx.max())}", loc=("values", feed.source))
            if feed.kind == "onehot":
                out[name] = (idx[..., None] == np.arange(feed.param)).astype(dtype)
            else:
                step = np.arange(idx.shape[0]).reshape((-1,) + (1,) * (idx.ndim - 1))
                out[name] = idx % feed.param + step * feed.param
    return out
