"""The graph IR: what the front-ends (JSON spec, expression, MLP) lower to.

A :class:`GraphIR` is plain frozen data. :func:`graph_from_dict` builds one from the JSON
form of docs/api.md §2a, checking its form (it is also the loader for graphs read back from a
shared store, so it trusts nothing). :func:`canonical_json` and :func:`graph_id` give the
content address: the same graph written with another node order, whitespace or key order
hashes the same.
"""

from __future__ import annotations

import difflib
import hashlib
import heapq
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from service.engine.errors import GraphError, LimitExceeded

NAME_RE = re.compile(r"^[A-Za-z_%][A-Za-z0-9_.:%'\-]{0,127}$")
MAX_NDIM = 32
MAX_DIM = 2**53  # the canonical form's JSON encoder stops at 64-bit integers
MAX_ARGS = 256  # concat and stack take any number: this bounds the loader's work per node
# An attr list never needs more entries than two per axis (pad's pads); coerce_attr refuses
# a longer list of its kind (an axes list longer than MAX_NDIM, say) with its own message.
MAX_ATTR_LIST = 2 * MAX_NDIM
MAX_OP_LENGTH = 64

Arg = str | float


@dataclass(frozen=True)
class NodeIR:
    id: str
    op: str
    args: tuple[Arg, ...]
    attrs: tuple[tuple[str, Any], ...] = ()  # sorted (name, value) pairs

    @property
    def attr_dict(self) -> dict[str, Any]:
        return dict(self.attrs)


@dataclass(frozen=True)
class GraphIR:
    inputs: tuple[tuple[str, tuple[int, ...] | None], ...]  # sorted by name
    nodes: tuple[NodeIR, ...]
    output: str

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...] | None]:
        return dict(self.inputs)


def _fail(detail: str, loc: tuple[Any, ...], node: str | None = None) -> GraphError:
    return GraphError(detail, node=node, loc=("graph", *loc))


def _name(value: Any, loc: tuple[Any, ...], what: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise _fail(f"{what} must be a name of 1-128 characters [A-Za-z0-9_.:%-] starting "
                    f"with a letter, '_' or '%', got {str(value)[:64]!r}", loc)
    return value


def _shape(value: Any, loc: tuple[Any, ...]) -> tuple[int, ...] | None:
    if value is None:
        return None
    if not isinstance(value, list | tuple) or len(value) > MAX_NDIM or not all(
        isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in value
    ):
        raise _fail(f"shape must be a list of at most {MAX_NDIM} integers in [0, 2^53]", loc)
    return tuple(value)


_SCALAR = (type(None), bool, int, float, str)


def _attr_value(value: Any, loc: tuple[Any, ...], node: str) -> Any:
    """An attr value is a scalar or a flat list of scalars (no op takes more); checked
    without recursion, so a value nested 100,000 deep costs one isinstance."""
    if isinstance(value, _SCALAR):
        return value
    if isinstance(value, list | tuple):
        # No op's list attr has more entries than two per axis of a tensor; the length is
        # checked before the items, and the error never echoes the list.
        if len(value) > MAX_ATTR_LIST:
            raise _fail(f"an attr list has at most {MAX_ATTR_LIST} entries (two per axis of a "
                        f"{MAX_NDIM}-d tensor), got {len(value):,}", loc, node)
        if all(isinstance(v, _SCALAR) for v in value):
            return tuple(value)
    raise _fail("an attr value is a number, a boolean, null or a flat list of those", loc, node)


def check_node_count(spec: Any, max_nodes: int) -> None:
    """413 (GRADSERVE_MAX_NODES) for a graph JSON with too many nodes; anything else passes
    (the loader reports it). Cheap: one ``len``, so it may run before any other check."""
    nodes = spec.get("nodes") if isinstance(spec, Mapping) else None
    if isinstance(nodes, list) and len(nodes) > max_nodes:
        raise LimitExceeded("max_nodes", max_nodes, len(nodes), "graph size (nodes)",
                            loc=("graph", "nodes"))
    # Inputs count too: a graph of one node and a million declared inputs is no smaller.
    inputs = spec.get("inputs") if isinstance(spec, Mapping) else None
    if isinstance(inputs, Mapping) and len(inputs) > max_nodes:
        raise LimitExceeded("max_nodes", max_nodes, len(inputs), "graph inputs",
                            loc=("graph", "inputs"))


def _known_fields(obj: Mapping[str, Any], allowed: tuple[str, ...], loc: tuple[Any, ...],
                  what: str, node: str | None = None) -> None:
    """422 for the first unknown key of ``obj``, at its own loc, with the allowed keys and
    the likely intended one (``arg`` → ``args``)."""
    extra = sorted(k for k in obj if k not in allowed)
    if not extra:
        return
    name = str(extra[0])[:64]
    close = difflib.get_close_matches(name, allowed, n=1, cutoff=0.6)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    raise _fail(f"unknown {what} field '{name}'{hint}; allowed: {', '.join(allowed)}",
                (*loc, name), node[:128] if node else None)


def graph_from_dict(spec: Mapping[str, Any], *, max_nodes: int | None = None) -> GraphIR:
    """Build a GraphIR from the JSON form (docs/api.md §2a); form errors name the field.

    This is the only validator of a graph's JSON (the request models pass it through; its
    rules are published as ``schemas.GRAPH_JSON_SCHEMA``). ``max_nodes`` refuses a big
    graph (413 naming GRADSERVE_MAX_NODES) before any node is looked at.
    """
    if not isinstance(spec, Mapping):
        raise _fail("graph must be an object", ())
    _known_fields(spec, ("inputs", "nodes", "output"), (), "graph")
    raw_inputs = spec.get("inputs", {})
    if not isinstance(raw_inputs, Mapping):
        raise _fail("inputs must be an object of name -> {shape}", ("inputs",))
    inputs = []
    for name, decl in raw_inputs.items():
        _name(name, ("inputs", name), "input name")
        if decl is None:
            decl = {}
        if not isinstance(decl, Mapping):
            raise _fail("input must be an object with an optional 'shape'", ("inputs", name))
        _known_fields(decl, ("shape",), ("inputs", name), "input")
        inputs.append((name, _shape(decl.get("shape"), ("inputs", name, "shape"))))
    raw_nodes = spec.get("nodes")
    if not isinstance(raw_nodes, list):
        raise _fail("nodes must be a list", ("nodes",))
    if max_nodes is not None:
        check_node_count(spec, max_nodes)
    nodes = []
    for i, raw in enumerate(raw_nodes):
        if not isinstance(raw, Mapping):
            raise _fail("node must be an object", ("nodes", i))
        _known_fields(raw, ("id", "op", "args", "attrs"), ("nodes", i), "node",
                      raw.get("id") if isinstance(raw.get("id"), str) else None)
        nid = _name(raw.get("id"), ("nodes", i, "id"), "node id")
        op = raw.get("op")
        if not isinstance(op, str) or not op or len(op) > MAX_OP_LENGTH:
            raise _fail(f"op must be a string of 1-{MAX_OP_LENGTH} characters",
                        ("nodes", i, "op"), nid)
        args = raw.get("args", [])
        if not isinstance(args, list) or len(args) > MAX_ARGS:
            raise _fail(f"args must be a list of at most {MAX_ARGS}", ("nodes", i, "args"),
                        nid)
        out_args: list[Arg] = []
        for j, a in enumerate(args):
            if isinstance(a, bool) or not isinstance(a, str | int | float):
                raise _fail("an arg is a name or a number", ("nodes", i, "args", j), nid)
            if isinstance(a, str):
                out_args.append(a)
            else:
                try:
                    f = float(a)
                except OverflowError:
                    f = math.inf
                if not math.isfinite(f):
                    raise _fail("constant args must be finite", ("nodes", i, "args", j), nid)
                out_args.append(f)
        attrs = raw.get("attrs") or {}
        if not isinstance(attrs, Mapping) or not all(isinstance(k, str) for k in attrs):
            raise _fail("attrs must be an object", ("nodes", i, "attrs"), nid)
        frozen = ((k, _attr_value(v, ("nodes", i, "attrs", k), nid)) for k, v in attrs.items())
        nodes.append(NodeIR(nid, op, tuple(out_args), tuple(sorted(frozen))))
    output = _name(spec.get("output"), ("output",), "output")
    return GraphIR(tuple(sorted(inputs)), tuple(nodes), output)


def toposort(graph: GraphIR) -> tuple[NodeIR, ...]:
    """Kahn's algorithm, smallest id first among the ready nodes: deterministic, iterative.

    Raises GraphError naming a node on a cycle (and the cycle) when there is one. Callers
    have already checked that ids are unique and args resolve.
    """
    by_id = {n.id: n for n in graph.nodes}
    indegree = {n.id: 0 for n in graph.nodes}
    users: dict[str, list[str]] = {n.id: [] for n in graph.nodes}
    for n in graph.nodes:
        for a in set(a for a in n.args if isinstance(a, str) and a in by_id):
            indegree[n.id] += 1
            users[a].append(n.id)
    ready = [nid for nid, d in indegree.items() if d == 0]
    heapq.heapify(ready)
    order: list[NodeIR] = []
    while ready:
        nid = heapq.heappop(ready)
        order.append(by_id[nid])
        for u in users[nid]:
            indegree[u] -= 1
            if indegree[u] == 0:
                heapq.heappush(ready, u)
    if len(order) != len(by_id):
        stuck = {nid for nid, d in indegree.items() if d > 0}
        cycle = _find_cycle(by_id, stuck)
        raise GraphError(f"cycle: {' -> '.join(cycle)}", node=cycle[0],
                         loc=("graph", "nodes", _index(graph, cycle[0])))
    return tuple(order)


def _index(graph: GraphIR, nid: str) -> int:
    for i, n in enumerate(graph.nodes):
        if n.id == nid:
            return i
    return -1


def _find_cycle(by_id: dict[str, NodeIR], stuck: set[str]) -> list[str]:
    """Walk predecessors inside the stuck set until a node repeats (iteratively)."""
    start = min(stuck)
    seen: dict[str, int] = {}
    path: list[str] = []
    cur = start
    while cur not in seen:
        seen[cur] = len(path)
        path.append(cur)
        cur = next(a for a in sorted(set(by_id[cur].args) - {None}, key=str)
                   if isinstance(a, str) and a in stuck)
    cycle = path[seen[cur]:]
    cycle.reverse()
    return [*cycle, cycle[0]]


def canonical_dict(graph: GraphIR, order: tuple[NodeIR, ...]) -> dict[str, Any]:
    """The canonical JSON form: inputs by name, nodes topologically, attrs normalized."""
    return {
        "inputs": {
            name: ({"shape": list(shape)} if shape is not None else {})
            for name, shape in graph.inputs
        },
        "nodes": [
            {"id": n.id, "op": n.op, "args": list(n.args),
             **({"attrs": {k: _thaw(v) for k, v in n.attrs}} if n.attrs else {})}
            for n in order
        ],
        "output": graph.output,
    }


def _thaw(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def canonical_json(canonical: dict[str, Any]) -> bytes:
    return orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)


def hash_canonical(blob: bytes) -> str:
    return "g-" + hashlib.sha256(blob).hexdigest()
