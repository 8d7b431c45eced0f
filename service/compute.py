"""The request flow between the wire and the engine: lower → compile (cached) → execute →
encode. Knows the wire models and the engine; knows nothing of Flask."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from schemas import GradientOptions, GradientRequest, RegisterRequest
from service import response_size
from service.codec import decode_tensor, encode_tensor, is_finite
from service.config import Settings
from service.engine import REGISTRY, Plan, execute, graph_from_dict, parse_expression
from service.engine.ir import GraphIR
from service.engine.limits import Deadline
from service.errors import GraphError, LimitExceeded
from service.graphs import GraphCache, alias_key


def _expression_graph(text: str, settings: Settings) -> GraphIR:
    return parse_expression(text, REGISTRY, max_length=settings.max_expression_length,
                            max_depth=settings.max_expression_depth).graph


def check_graph_size(raw: Any, settings: Settings) -> None:
    """Refuse a graph over GRADSERVE_MAX_NODES before validating it node by node (Pydantic
    costs ~10 µs a node: a 100,000-node body would hold a worker for a second)."""
    graph = raw.get("graph") if isinstance(raw, dict) else None
    nodes = graph.get("nodes") if isinstance(graph, dict) else None
    limit = settings.limits.max_nodes
    if isinstance(nodes, list) and len(nodes) > limit:
        raise LimitExceeded("max_nodes", limit, len(nodes), "graph size (nodes)",
                            loc=("graph", "nodes"))


def resolve_plan(req: GradientRequest | RegisterRequest, raw: dict[str, Any],
                 cache: GraphCache, settings: Settings) -> tuple[Plan, str]:
    """The compiled plan of a request's graph (``graph``, ``expression`` or ``graph_id``)."""
    graph_id = getattr(req, "graph_id", None)
    if graph_id is not None:
        return cache.plan_for_id(graph_id)
    if req.expression is not None:
        text = req.expression
        return cache.plan_for(alias_key("expr", text), lambda: _expression_graph(text, settings))
    spec = raw["graph"]
    return cache.plan_for(alias_key("spec", spec), lambda: graph_from_dict(spec))


def register(req: RegisterRequest, raw: dict[str, Any], cache: GraphCache,
             settings: Settings) -> tuple[Plan, bool]:
    if req.expression is not None:
        text = req.expression
        return cache.register(alias_key("expr", text), lambda: _expression_graph(text, settings))
    spec = raw["graph"]
    return cache.register(alias_key("spec", spec), lambda: graph_from_dict(spec))


@contextmanager
def expression_errors(text: str | None, settings: Settings) -> Iterator[None]:
    """For a graph written as an expression, a GraphError points at the expression (and,
    for a generated node such as '%3', quotes the text the node came from)."""
    try:
        yield
    except GraphError as exc:
        if text is None:
            raise
        if exc.node is not None and exc.node.startswith("%"):
            sources = parse_expression(text, REGISTRY, max_length=settings.max_expression_length,
                                       max_depth=settings.max_expression_depth).sources
            if exc.node in sources:
                exc.detail = f"{exc.detail} (in `{sources[exc.node]}`)"
                exc.args = (exc.detail,)
        if exc.loc and exc.loc[0] == "graph":
            exc.loc = ("expression",)
        raise


def gradients(plan: Plan, cache_result: str, opts: GradientOptions, settings: Settings,
              deadline: Deadline | None = None) -> dict[str, Any]:
    """Decode the values, run the engine, encode the response body of API.md §4."""
    limit = settings.limits.max_tensor_elements
    values = {name: decode_tensor(v, max_elements=limit, loc=("values", name))
              for name, v in opts.values.items()}
    upstream = None
    if opts.upstream is not None:
        upstream = decode_tensor(opts.upstream, max_elements=limit, loc=("upstream",))
    response_size.check_gradients(plan, values, opts, settings.max_response_bytes,
                                  settings.limits)
    result = execute(plan, values, wrt=opts.wrt, upstream=upstream, trace=opts.trace,
                     jacobian=opts.jacobian, check=opts.check, dtype=opts.dtype,
                     limits=settings.limits, deadline=deadline)
    out = Encoder(opts.encoding, opts.dtype)
    body: dict[str, Any] = {
        "graph_id": plan.graph_id,
        "output": out("output", result.output),
        "gradients": {n: out(f"gradients.{n}", g) for n, g in result.gradients.items()},
        "cache": cache_result,
    }
    if result.jacobians is not None:
        body["jacobians"] = {n: out(f"jacobians.{n}", j) for n, j in result.jacobians.items()}
    if result.trace is not None:
        body["trace"] = [
            {**rec, "value": out(f"trace.{rec['id']}.value", rec["value"]),
             "grad": out(f"trace.{rec['id']}.grad", rec["grad"])}
            for rec in result.trace
        ]
    if result.check is not None:
        body["check"] = result.check
    if out.warnings:
        body["warnings"] = out.warnings
    return body


class Encoder:
    """Encodes response tensors and collects a warning for each non-finite one."""

    def __init__(self, encoding: str, dtype: str) -> None:
        self.encoding = encoding
        self.dtype = dtype
        self.warnings: list[str] = []

    def __call__(self, name: str, arr: Any) -> Any:
        if not is_finite(arr):
            self.warnings.append(f"{name} has non-finite values (NaN or Infinity)"
                                 + (", written as null" if self.encoding == "json" else ""))
        return encode_tensor(arr, self.encoding, self.dtype)
