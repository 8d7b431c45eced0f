"""``POST /v1/graphs/{graph_id}/step`` and ``POST /v1/mlp/step``: a gradient request's
graph and values, then optimizer steps (``service.engine.training``) on the parameters.

Both are the gradient flows' pieces around a different middle: resolve the plan as the
gradient flow does (graph id, or the MLP's architecture), decode the values, the optimizer
and the state (checked against each other before any step), refuse over the limits (the
answer's size; K steps' work), then ``train``, whose objective is one ``execute`` — the
same engine run as ``/gradients``. The answer is every updated parameter and the new state,
or an error: nothing is stored, so sending back ``values`` and ``state`` continues the run
on any replica.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas import MLPRequest
from schemas.steps import GraphStepRequest, MLPStepRequest, optimizer_options
from service.engine import Plan, Query, execute
from service.engine.model import default_dtype, resolve_wrt_word
from service.engine.model import prepare as prepare_model
from service.engine.optim import Optimizer, State, check_state, init_state, make_optimizer
from service.engine.training import Objective, Trained, check_steps, step_flops, train
from service.errors import LimitExceeded, ProblemError, Unprocessable
from service.flows import mlp as mlp_flow
from service.flows.codec import decode_tensor
from service.flows.driver import Env
from service.flows.encoder import Encoder
from service.flows.mlp_graph import bias_name, plan_for, weight_name
from service.flows.response_size import ITEM_BYTES, RECORD_OVERHEAD, tensor_bytes
from service.runtime import tracing


@dataclass
class Job:
    """A step request, decoded and checked: what ``train`` runs."""

    values: dict[str, np.ndarray]
    params: tuple[str, ...]  # engine input names
    optimizer: Optimizer
    state: State
    query: Query
    echoed: tuple[str, ...] = ()  # tensors the answer carries besides the parameters


def run_step(flow: GraphStepFlow | MLPStepFlow, env: Env) -> dict[str, Any]:
    """resolve → prepare → estimate (answer size, K steps' work) → train → encode."""
    try:
        plan, cache = flow.resolve(env)
        env.note(plan.graph_id, cache)
        job = flow.prepare(plan, env)
        estimate(job, flow.req.steps, flow.req.encoding, flow.req.dtype, env)
        limits = env.settings.limits
        if flow.req.steps > 1:
            elements = sum(job.values[n].size for n in job.params)
            check_steps(step_flops(plan, job.values, job.query, limits), elements,
                        job.optimizer, flow.req.steps, limits)
        with tracing.span("train", graph_id=plan.graph_id):
            trained = train(objective(plan, job.query, env), job.values, job.params,
                            job.optimizer, job.state, flow.req.steps,
                            _NP_DTYPES[flow.req.dtype], deadline=env.deadline)
        return flow.encode(plan, cache, trained, env)
    except ProblemError as err:
        raise reword(err, flow.req) from None


_NP_DTYPES = {"float64": np.float64, "float32": np.float32}


def objective(plan: Plan, query: Query, env: Env) -> Objective:
    """values → (the objective, its gradients): one ``execute``, as ``/gradients`` runs."""
    limits = env.settings.limits

    def run(values: Mapping[str, np.ndarray]) -> tuple[Any, Mapping[str, np.ndarray]]:
        result = execute(plan, values, query, limits=limits, deadline=env.deadline)
        value = result.loss if query.loss is not None else result.output
        return value, result.gradients

    return run


def reword(err: ProblemError, req: Any) -> ProblemError:
    """A gradient request's words said of a step: it has no ``upstream``, so an output that
    is not a scalar needs a ``loss``."""
    if err.loc == ("upstream",) and getattr(req, "upstream", None) is None:
        return Unprocessable("loss: a step minimizes one number, and the graph's output is "
                             "not a scalar: give 'loss' (type and targets), or register a "
                             "graph whose output is the objective", loc=("loss",))
    return err


def estimate(job: Job, steps: int, encoding: str, dtype: str, env: Env) -> None:
    """413 before any step when the answer (parameters, slots, losses) would pass
    GRADSERVE_MAX_RESPONSE_BYTES."""
    slots = len(job.optimizer.slots)
    total = steps * (ITEM_BYTES["float64"] * 4) + RECORD_OVERHEAD * 2
    for name in job.params:
        total += (1 + slots) * (tensor_bytes(job.values[name].shape, encoding, dtype)
                                + RECORD_OVERHEAD)
    for name in job.echoed:
        total += tensor_bytes(job.values[name].shape, encoding, dtype) + RECORD_OVERHEAD
    limit = env.settings.max_response_bytes
    if total > limit:
        err = LimitExceeded("max_response_bytes", limit, total,
                            "the estimated response size in bytes", loc=("encoding",))
        err.detail += "; update fewer 'params', or ask 'encoding': 'b64'"
        err.args = (err.detail,)
        raise err


def _state(opt: Optimizer, params: Mapping[str, np.ndarray], wire: Any, limit: int
           ) -> State:
    """The state sent (decoded, then checked against optimizer and parameters) or, absent,
    the first step's."""
    if wire is None:
        return init_state(opt, params)
    slots = {name: {slot: decode_tensor(t, max_elements=limit,
                                        loc=("state", "slots", name, slot))
                    for slot, t in per.items()}
             for name, per in wire.slots.items()}
    return check_state(opt, params, wire.step, slots)


def _optimizer(req: GraphStepRequest | MLPStepRequest) -> Optimizer:
    return make_optimizer(req.optimizer.type, optimizer_options(req.optimizer))


def _state_body(out: Encoder, trained: Trained) -> dict[str, Any]:
    return {"step": trained.state.step,
            "slots": {n: {s: out(f"state.slots.{n}.{s}", v) for s, v in slots.items()}
                      for n, slots in trained.state.slots.items()}}


class GraphStepFlow:
    """One ``POST /v1/graphs/{graph_id}/step``: any registered graph (spec, expression,
    MLP architecture)."""

    __slots__ = ("req", "graph_id", "dtype")

    def __init__(self, req: GraphStepRequest, graph_id: str) -> None:
        self.req = req
        self.graph_id = graph_id
        self.dtype = req.dtype

    def resolve(self, env: Env) -> tuple[Plan, str]:
        return env.cache.plan_for_id(self.graph_id)

    def prepare(self, plan: Plan, env: Env) -> Job:
        req = self.req
        limit = env.settings.limits.max_tensor_elements
        labels = plan.label_inputs
        values = {name: decode_tensor(v, max_elements=limit, loc=("values", name),
                                      booleans=name in labels)
                  for name, v in req.values.items()}
        if plan.model is not None:  # a model: its stored parameters are where steps start
            if "dtype" not in req.model_fields_set:
                self.dtype = default_dtype(plan)
            _, values, _ = prepare_model(plan, values, Query(wrt=(), dtype=self.dtype))
        params = self._params(plan, values)
        loss = None
        if req.loss is not None:
            loss = (req.loss.type, decode_tensor(req.loss.targets, max_elements=limit,
                                                 loc=("loss", "targets")))
        opt = _optimizer(req)
        state = _state(opt, {n: values[n] for n in params}, req.state, limit)
        return Job(values, params, opt, state, Query(wrt=params, loss=loss, dtype=self.dtype))

    def _params(self, plan: Plan, values: Mapping[str, np.ndarray]) -> tuple[str, ...]:
        if self.req.params is None and plan.model is not None and plan.model.parameters:
            return resolve_wrt_word(plan, "parameters")  # a model's: every stored parameter
        if self.req.params is None:
            raise Unprocessable("params: name the inputs to update (this graph has no stored "
                                f"parameters); its inputs: {', '.join(plan.input_order)}",
                                loc=("params",))
        floats = set(plan.float_inputs)
        for i, name in enumerate(self.req.params):
            if name not in plan.inputs:
                raise Unprocessable(f"params.{i}: '{name}' is not an input of the graph "
                                    f"(inputs: {', '.join(plan.input_order)})",
                                    loc=("params", i))
            if name not in floats:
                raise Unprocessable(f"params.{i}: '{name}' is not a differentiable input "
                                    "(a class label or condition)", loc=("params", i))
            if name not in values:
                raise Unprocessable(f"values.{name}: missing: a parameter's value is where "
                                    "its steps start", loc=("values", name))
        return tuple(self.req.params)

    def encode(self, plan: Plan, cache: str, trained: Trained, env: Env) -> dict[str, Any]:
        out = Encoder(self.req.encoding, self.dtype)
        body = {"graph_id": plan.graph_id,
                "values": {n: out(f"values.{n}", v) for n, v in trained.params.items()},
                "state": _state_body(out, trained),
                "loss": trained.losses[0], "losses": trained.losses, "cache": cache}
        if out.warnings:
            body["warnings"] = out.warnings
        return body


class MLPStepFlow:
    """One ``POST /v1/mlp/step``: ``/v1/mlp/gradients``'s network, its layers updated."""

    __slots__ = ("req", "mlp")

    def __init__(self, req: MLPStepRequest) -> None:
        self.req = req
        self.mlp: mlp_flow.MLPValues | None = None

    def resolve(self, env: Env) -> tuple[Plan, str]:
        req = self.req
        grad_req = MLPRequest.model_construct(
            layers=req.layers, inputs=req.inputs, loss=req.loss, upstream=None, l2=req.l2,
            wrt=["weights"], dtype=req.dtype, encoding=req.encoding)
        self.mlp = mlp_flow.decode(grad_req, env.settings)
        return plan_for(self.mlp.architecture, env.cache)

    def prepare(self, plan: Plan, env: Env) -> Job:
        mlp = self.mlp
        assert mlp is not None
        n = len(mlp.architecture.sizes)
        every = [name for i in range(n) for name in (weight_name(i), bias_name(i))]
        params = every if self.req.params is None else list(self.req.params)
        for i, name in enumerate(params):
            if name in params[:i]:
                raise Unprocessable(f"params.{i}: '{name}' is given twice (each parameter "
                                    "once)", loc=("params", i))
            if name not in every:
                raise Unprocessable(f"params.{i}: '{name}' is not a layer of this network "
                                    f"(it has layers 0..{n - 1})", loc=("params", i))
        opt = _optimizer(self.req)
        limit = env.settings.limits.max_tensor_elements
        state = _state(opt, {p: mlp.values[p] for p in params}, self.req.state, limit)
        return Job(dict(mlp.values), tuple(params), opt, state,
                   Query(wrt=tuple(params), dtype=self.req.dtype),
                   echoed=tuple(n for n in every if n not in params))

    def encode(self, plan: Plan, cache: str, trained: Trained, env: Env) -> dict[str, Any]:
        out = Encoder(self.req.encoding, self.req.dtype)
        layers = []
        for i, layer in enumerate(self.req.layers):
            w, b = weight_name(i), bias_name(i)
            assert self.mlp is not None
            layers.append({
                "weight": out(f"layers.{i}.weight", trained.params.get(w, self.mlp.values[w])),
                "bias": out(f"layers.{i}.bias", trained.params.get(b, self.mlp.values[b])),
                "activation": layer.activation})
        body = {"layers": layers, "state": _state_body(out, trained),
                "loss": trained.losses[0], "losses": trained.losses,
                "graph_id": plan.graph_id, "cache": cache}
        if out.warnings:
            body["warnings"] = out.warnings
        return body
