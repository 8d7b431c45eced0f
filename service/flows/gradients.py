"""``POST /v1/gradients``, ``POST /v1/graphs/{id}/gradients`` and ``POST /v1/graphs``: a graph
written as JSON nodes or as an expression (or registered before, by id), its values and
options, answered with docs/api.md §4's body.

A graph's JSON is validated once, by the IR loader (``graph_from_dict``), and only on an L1
miss: the request models pass it through (see ``schemas.graphs``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from math import isfinite
from typing import Any

import numpy as np

from schemas import GradientOptions, RegisterRequest
from service.config import Settings
from service.engine import REGISTRY, Plan, Query, Result, graph_from_dict, parse_expression
from service.engine.ir import GraphIR, check_node_count
from service.engine.model import default_dtype, output_plan, prepare
from service.errors import GraphError, ProblemError
from service.flows import response_size
from service.flows.codec import decode_tensor
from service.flows.driver import Env, query_from
from service.flows.encoder import Encoder
from service.flows.models import onnx_bytes, register_onnx
from service.store.cache import GraphCache, alias_key


def size_gate(raw: Any, settings: Settings) -> None:
    """Before a body's fields are validated: refuse an oversized graph (413), so that a
    giant body is answered by its size whatever else is wrong with it. The same check the
    loader runs (``ir.check_node_count``), only earlier."""
    if isinstance(raw, dict):
        check_node_count(raw.get("graph"), settings.limits.max_nodes)


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


def register(req: RegisterRequest, cache: GraphCache, settings: Settings) -> tuple[Plan, bool]:
    """``POST /v1/graphs``: compile and store; returns (plan, created)."""
    if req.onnx is not None:
        return register_onnx(onnx_bytes(req.onnx, settings), cache, settings)
    try:
        return cache.register(*_builder(req, settings))
    except GraphError as err:
        raise expression_error(err, req.expression, settings) from None


def expression_error(err: GraphError, text: str | None, settings: Settings) -> GraphError:
    """For a graph written as an expression, a GraphError points at the expression (and,
    for a generated node such as '%3', quotes the text the node came from)."""
    if text is None:
        return err
    if err.node is not None and err.node.startswith("%"):
        sources = parse_expression(text, REGISTRY, max_length=settings.max_expression_length,
                                   max_depth=settings.max_expression_depth).sources
        if err.node in sources:
            err.detail = f"{err.detail} (in `{sources[err.node]}`)"
            err.args = (err.detail,)
    if err.loc and err.loc[0] == "graph":
        err.loc = ("expression",)
    return err


class GradientsFlow:
    """One gradient request on an inline graph, an expression or a graph id."""

    __slots__ = ("req", "graph_id", "plain", "estimated", "dtype")

    def __init__(self, req: GradientOptions, graph_id: str | None = None) -> None:
        self.req = req
        self.graph_id = graph_id or getattr(req, "graph_id", None)
        self.plain = False  # scalar values and a plain query: no decoding, plain floats out
        self.estimated = 0  # the response-size estimate, in bytes
        self.dtype = req.dtype  # a model's own when the request names none (see bind)

    @property
    def batchable(self) -> bool:
        """A registered graph's request with decoded values (dynamic batching)."""
        return self.graph_id is not None and not self.plain

    def resolve(self, env: Env) -> tuple[Plan, str]:
        if self.graph_id is not None:
            plan, cache = env.cache.plan_for_id(self.graph_id)
        else:
            plan, cache = env.cache.plan_for(*_builder(self.req, env.settings))
        if self.req.output is not None:
            plan = output_plan(plan, self.req.output)  # another of a model's outputs
        return plan, cache

    def bind(self, plan: Plan, env: Env) -> tuple[Mapping[str, Any], Query]:
        req = self.req
        limit = env.settings.limits.max_tensor_elements
        if plan.model is not None:
            return self._bind_model(plan, limit)
        if _scalar_values(req.values, plan):
            query = query_from(req, limit, dict.fromkeys(req.values, ()))
            if query.is_plain:  # floats as they are: the engine's scalar path
                self.plain = True
                return req.values, query
        else:
            query = None
        # Values first, then the options' tensors: a request's first error is its values'.
        # Each is checked against its declared shape before its elements are converted.
        labels = plan.label_inputs  # class labels and conditions: true/false are 1/0 too
        declared = plan.inputs
        batched = frozenset(req.batched or ())  # (B,) + the declared shape: checked later
        values = {name: decode_tensor(v, max_elements=limit, loc=("values", name),
                                      booleans=name in labels,
                                      expect=None if name in batched else declared.get(name),
                                      whose="the graph declares")
                  for name, v in req.values.items()}
        if query is None:
            query = query_from(req, limit, {n: a.shape for n, a in values.items()})
        return values, query

    def _bind_model(self, plan: Plan, limit: int) -> tuple[Mapping[str, Any], Query]:
        """A model's request: its default dtype, its parameters filled in, wrt words."""
        req = self.req
        labels = plan.label_inputs
        values = {name: decode_tensor(v, max_elements=limit, loc=("values", name),
                                      booleans=name in labels)
                  for name, v in req.values.items()}
        given = {} if "dtype" in req.model_fields_set else {"dtype": default_dtype(plan)}
        query = query_from(req, limit, **given)
        self.dtype = query.dtype
        _, values, query = prepare(plan, values, query)
        return values, query

    def estimate(self, plan: Plan, values: Mapping[str, Any], query: Query, env: Env) -> None:
        limit = env.settings.max_response_bytes
        if self.plain:
            self.estimated = response_size.check_scalar_gradients(plan, query,
                                                                  self.req.encoding, limit)
        else:
            self.estimated = response_size.check_gradients(plan, values, query,
                                                           self.req.encoding, limit,
                                                           env.settings.limits)

    def encode(self, plan: Plan, cache: str, result: Result, env: Env) -> dict[str, Any]:
        req = self.req
        if self.plain and req.encoding == "json" and req.dtype == "float64":
            plain = _plain_floats(result)
            if plain is not None:
                return {"graph_id": plan.graph_id, "output": plain[0], "gradients": plain[1],
                        "cache": cache}
        return encode_result(plan, cache, result, req.encoding, self.dtype,
                             env.settings.max_response_bytes, self.estimated)

    def reword(self, err: ProblemError, env: Env) -> ProblemError:
        if isinstance(err, GraphError):
            return expression_error(err, getattr(self.req, "expression", None), env.settings)
        return err


def _scalar_values(values: Mapping[str, Any], plan: Plan) -> bool:
    """One finite float per input of ``plan`` (and no other name)."""
    inputs = plan.inputs
    if len(values) != len(inputs):
        return False
    for name, v in values.items():
        if type(v) is not float or not isfinite(v) or name not in inputs:
            return False  # decode_tensor has something to say, or to convert
    return True


def encode_result(plan: Plan, cache: str, result: Result, encoding: str, dtype: str,
                  max_response_bytes: int, estimated: int = 0) -> dict[str, Any]:
    """docs/api.md §4's body from the engine's result: every field the result has."""
    out = Encoder(encoding, dtype)
    body = {
        "graph_id": plan.graph_id,
        "output": out("output", result.output),
        "gradients": {n: out(f"gradients.{n}", g) for n, g in result.gradients.items()},
        "cache": cache,
    }
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
        # Known only now: its exact size is checked before it is encoded.
        response_size.check_backward_trace(result.trace_backward, encoding, dtype,
                                           max_response_bytes, so_far=estimated)
        body["trace_backward"] = [
            {**rec, "value": out(f"trace_backward.{rec['id']}.value", rec["value"])}
            for rec in result.trace_backward
        ]
    if result.loss is not None and np.ndim(result.loss):  # per example (batched)
        body["loss"] = out("loss", result.loss)
    elif result.loss is not None:
        loss = float(result.loss)
        if not isfinite(loss):
            out.warnings.append("loss is non-finite (NaN or Infinity), written as null")
        body["loss"] = loss if isfinite(loss) else None
    if result.check is not None:
        body["check"] = result.check
    if result.hvp_check is not None:
        body["hvp_check"] = result.hvp_check
    if out.warnings:
        body["warnings"] = out.warnings
    return body


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
