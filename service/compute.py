"""The request flow between the wire and the engine, for every endpoint: resolve the plan
(lower → compile, cached) → decode the tensors → execute → encode. Knows the wire models
and the engine; knows nothing of Flask.

A graph's JSON is validated once, by the IR loader (``graph_from_dict``), and only on an L1
miss: the request models pass it through (see ``schemas.graphs``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from math import isfinite
from typing import Any

import numpy as np

from schemas import GradientOptions, MLPRequest, RegisterRequest
from service import mlp, response_size
from service.codec import decode_tensor
from service.config import Settings
from service.encoder import Encoder
from service.engine import REGISTRY, Plan, Query, execute, graph_from_dict, parse_expression
from service.engine.ir import GraphIR, check_node_count
from service.engine.limits import Deadline
from service.errors import GraphError
from service.graphs import GraphCache, alias_key

__all__ = ["Encoder", "gradients", "gradients_request", "mlp_request", "register",
           "resolve_plan"]

#: Told the plan (and whether it was a cache hit) as soon as it is known, so that an error
#: further on is still logged with its graph id.
Note = Callable[[Plan, str], None]


def _no_note(plan: Plan, cache: str) -> None:
    return None


def _expression_graph(text: str, settings: Settings) -> GraphIR:
    return parse_expression(text, REGISTRY, max_length=settings.max_expression_length,
                            max_depth=settings.max_expression_depth).graph


def _builder(req: Any, settings: Settings) -> tuple[str | None, Callable[[], GraphIR]]:
    """The L1 alias and the lowering of a request's inline graph or expression."""
    if req.expression is not None:
        text = req.expression
        return alias_key("expr", text), lambda: _expression_graph(text, settings)
    spec = req.graph
    limit = settings.limits.max_nodes
    return alias_key("spec", spec), lambda: graph_from_dict(spec, max_nodes=limit)


def size_gate(raw: Any, settings: Settings) -> None:
    """Before a body's fields are validated: refuse an oversized graph (413), so that a
    giant body is answered by its size whatever else is wrong with it. The same check the
    loader runs (``ir.check_node_count``), only earlier."""
    if isinstance(raw, dict):
        check_node_count(raw.get("graph"), settings.limits.max_nodes)


def resolve_plan(req: Any, cache: GraphCache, settings: Settings,
                 graph_id: str | None = None) -> tuple[Plan, str]:
    """The compiled plan of a request's graph (``graph``, ``expression`` or a graph id)."""
    graph_id = graph_id or getattr(req, "graph_id", None)
    if graph_id is not None:
        return cache.plan_for_id(graph_id)
    return cache.plan_for(*_builder(req, settings))


def register(req: RegisterRequest, cache: GraphCache, settings: Settings) -> tuple[Plan, bool]:
    """``POST /v1/graphs``: compile and store; returns (plan, created)."""
    with expression_errors(req.expression, settings):
        return cache.register(*_builder(req, settings))


def gradients_request(req: GradientOptions, cache: GraphCache, settings: Settings,
                      deadline: Deadline | None = None, *, graph_id: str | None = None,
                      note: Note = _no_note) -> dict[str, Any]:
    """``POST /v1/gradients`` and ``/v1/graphs/{id}/gradients``: the response body."""
    with expression_errors(getattr(req, "expression", None), settings):
        plan, cache_result = resolve_plan(req, cache, settings, graph_id)
        note(plan, cache_result)
        return gradients(plan, cache_result, req, settings, deadline)


def mlp_request(req: MLPRequest, cache: GraphCache, settings: Settings,
                deadline: Deadline | None = None, *, note: Note = _no_note) -> dict[str, Any]:
    """``POST /v1/mlp/gradients``: decode, lower (cached per architecture), run, encode."""
    values = mlp.decode(req, settings)
    response_size.check_mlp(values.architecture.sizes, values.values[mlp.INPUT].shape,
                            values.wrt, req.encoding, req.dtype, settings.max_response_bytes)
    plan, cache_result = mlp.plan_for(values.architecture, cache)
    note(plan, cache_result)
    result = mlp.run(values, plan, req.dtype, settings, deadline)
    return mlp.encode(values, plan, cache_result, result, req.dtype, req.encoding)


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
    """Decode the values, run the engine, encode the response body of docs/api.md §4."""
    if (opts.upstream is None and opts.tangents is None and opts.hvp is None
            and not (opts.trace or opts.trace_backward or opts.jacobian or opts.check
                     or opts.hessian)):
        body = _scalar_gradients(plan, cache_result, opts, settings, deadline)
        if body is not None:
            return body
    limit = settings.limits.max_tensor_elements
    values = {name: decode_tensor(v, max_elements=limit, loc=("values", name))
              for name, v in opts.values.items()}
    upstream = None
    if opts.upstream is not None:
        upstream = decode_tensor(opts.upstream, max_elements=limit, loc=("upstream",))
    tangents = hvp = None
    if opts.tangents is not None:
        tangents = {n: decode_tensor(v, max_elements=limit, loc=("tangents", n))
                    for n, v in opts.tangents.items()}
    if opts.hvp is not None:
        hvp = {n: decode_tensor(v, max_elements=limit, loc=("hvp", n))
               for n, v in opts.hvp.items()}
    estimate = response_size.check_gradients(plan, values, opts, settings.max_response_bytes,
                                             settings.limits)
    result = execute(plan, values, Query(wrt=opts.wrt, upstream=upstream, trace=opts.trace,
                                         trace_backward=opts.trace_backward,
                                         jacobian=opts.jacobian, check=opts.check,
                                         tangents=tangents, hvp=hvp, hessian=opts.hessian,
                                         dtype=opts.dtype),
                     limits=settings.limits, deadline=deadline)
    out = Encoder(opts.encoding, opts.dtype)
    body = _first_order_body(plan, cache_result, result, out)
    if result.jacobians is not None:
        body["jacobians"] = {n: out(f"jacobians.{n}", j) for n, j in result.jacobians.items()}
    if result.jvp is not None:
        body["jvp"] = out("jvp", result.jvp)
    if result.hvp is not None:
        body["hvp"] = {n: out(f"hvp.{n}", h) for n, h in result.hvp.items()}
    if result.hessian is not None:
        body["hessian"] = {a: {b: out(f"hessian.{a}.{b}", h) for b, h in row.items()}
                           for a, row in result.hessian.items()}
    if result.trace is not None:
        body["trace"] = [
            {**rec, "value": out(f"trace.{rec['id']}.value", rec["value"]),
             "grad": out(f"trace.{rec['id']}.grad", rec["grad"])}
            for rec in result.trace
        ]
    if result.trace_backward is not None:
        response_size.check_backward_trace(result.trace_backward, opts.encoding, opts.dtype,
                                           settings.max_response_bytes, so_far=estimate)
        body["trace_backward"] = [
            {**rec, "value": out(f"trace_backward.{rec['id']}.value", rec["value"])}
            for rec in result.trace_backward
        ]
    if result.check is not None:
        body["check"] = result.check
    if result.hvp_check is not None:
        body["hvp_check"] = result.hvp_check
    if out.warnings:
        body["warnings"] = out.warnings
    return body


def _scalar_gradients(plan: Plan, cache_result: str, opts: GradientOptions, settings: Settings,
                      deadline: Deadline | None) -> dict[str, Any] | None:
    """:func:`gradients` for a request with no options beyond wrt, dtype and encoding whose
    values are one finite number per input: no decoding (the engine takes the floats as
    they are), a memoized size estimate, plain floats out. None (nothing done) otherwise."""
    values = opts.values
    inputs = plan.inputs
    if len(values) != len(inputs):
        return None
    for name, v in values.items():
        if type(v) is not float or not isfinite(v) or name not in inputs:
            return None  # decode_tensor has something to say, or to convert
    response_size.check_scalar_gradients(plan, opts, settings.max_response_bytes)
    result = execute(plan, values, Query(wrt=opts.wrt, dtype=opts.dtype),
                     limits=settings.limits, deadline=deadline)
    if opts.encoding == "json" and opts.dtype == "float64":
        plain = _plain_floats(result)
        if plain is not None:
            return {"graph_id": plan.graph_id, "output": plain[0], "gradients": plain[1],
                    "cache": cache_result}
    out = Encoder(opts.encoding, opts.dtype)
    body = _first_order_body(plan, cache_result, result, out)
    if out.warnings:
        body["warnings"] = out.warnings
    return body


def _first_order_body(plan: Plan, cache_result: str, result: Any, out: Encoder
                      ) -> dict[str, Any]:
    """The fields every gradient answer has: graph id, output, gradients, cache."""
    return {
        "graph_id": plan.graph_id,
        "output": out("output", result.output),
        "gradients": {n: out(f"gradients.{n}", g) for n, g in result.gradients.items()},
        "cache": cache_result,
    }


def _plain_floats(result: Any) -> tuple[float, dict[str, float]] | None:
    """What Encoder writes for finite 0-d float64 values in JSON, float(value), for the
    output and every gradient; None where one is anything else (Encoder then runs)."""
    output = result.output
    if not (type(output) is np.ndarray and output.shape == () and output.dtype is _F64):
        return None
    out = float(output)
    grads = {}
    for name, g in result.gradients.items():
        if type(g) is not np.float64 or not isfinite(g):
            return None
        grads[name] = float(g)
    return (out, grads) if isfinite(out) else None


_F64 = np.dtype(np.float64)
