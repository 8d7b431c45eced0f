"""Training steps over the Open Inference Protocol: an infer request whose ``parameters``
name an ``optimizer`` is a step (docs/oip.md, "Training steps").

Request: the model's inputs (the parameters' current values among them), the state's slots
as inputs ``state:<param>:<slot>``, and as request parameters ``optimizer`` (its type),
``params`` (the inputs to update, comma-separated), ``steps``, ``step`` (the state's count)
and any hyperparameter by torch.optim's name (``betas`` as ``"0.9,0.999"``). Outputs:
``value:<param>`` (updated), ``state:<param>:<slot>``, ``state:step`` and ``losses`` (the
objective where each step started). The model's output is the objective: a scalar.

The steps are ``service.flows.step``'s: the same engine, optimizer and checks as
``POST /v1/graphs/{id}/step``, in OIP's words.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from schemas.steps import MAX_STEPS
from service.engine import Plan, Query
from service.engine.optim import check_state, init_state, make_optimizer
from service.engine.training import Trained, check_steps, step_flops, train
from service.errors import ProblemError, Unprocessable
from service.flows import step as steps_flow
from service.flows.driver import Env, run_plan
from service.flows.oip import MODEL_VERSION, Decoded, InferFlow, _check_model, _flag, _inputs
from service.flows.oip_codec import encode_response
from service.runtime import tracing

STATE = "state:"
VALUE = "value:"
STEP = "state:step"
LOSSES = "losses"
#: Request parameters that are not hyperparameters.
CONTROL = frozenset({"optimizer", "params", "steps", "step", "binary_data_output"})


def run_infer(flow: InferFlow, env: Env) -> tuple[bytes, int | None]:
    """``POST /v2/models/{name}/infer``: a step when its parameters name an optimizer, the
    gradient infer of ``service.flows.oip`` otherwise."""
    try:
        plan, cache = flow.resolve(env)
        env.note(plan.graph_id, cache)
        decoded = flow.decode(env)
        if "optimizer" not in (decoded.request.parameters or {}):
            return run_plan(flow, plan, cache, env)
        return _step(flow, plan, decoded, env)
    except ProblemError as err:
        raise _reword(flow.reword(err, env)) from None


def _bad(msg: str, *loc: str | int) -> Unprocessable:
    return Unprocessable(msg, loc=loc)


def _control(params: dict[str, Any]) -> tuple[str, list[str] | None, int, int | None]:
    kind = params["optimizer"]
    if not isinstance(kind, str):
        raise _bad("parameters.optimizer: the optimizer's type, a string such as \"adam\"",
                   "parameters", "optimizer")
    names = params.get("params")
    if names is not None and (not isinstance(names, str) or not names.strip()):
        raise _bad("parameters.params: the inputs to update, comma-separated (\"W,b\")",
                   "parameters", "params")
    steps = params.get("steps", 1)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= MAX_STEPS:
        raise _bad(f"parameters.steps: an integer from 1 to {MAX_STEPS}", "parameters", "steps")
    count = params.get("step")
    return kind, None if names is None else [n.strip() for n in names.split(",")], steps, count


def _hyper(params: dict[str, Any]) -> dict[str, Any]:
    hyper = {k: v for k, v in params.items() if k not in CONTROL}
    betas = hyper.get("betas")
    if isinstance(betas, str):
        try:
            hyper["betas"] = [float(b) for b in betas.split(",")]
        except ValueError:
            raise _bad("parameters.betas: two numbers, \"beta1,beta2\"", "parameters",
                       "betas") from None
    return hyper


def _step(flow: InferFlow, plan: Plan, decoded: Decoded, env: Env) -> tuple[bytes, int | None]:
    req = decoded.request
    _check_model(flow.name, plan, req, env)
    params = dict(req.parameters or {})
    kind, names, steps, count = _control(params)
    opt = make_optimizer(kind, _hyper(params))
    slots: dict[str, dict[str, np.ndarray]] = {}
    rest = []
    for t in decoded.inputs:
        if t.name.startswith(STATE):
            param, _, slot = t.name[len(STATE):].rpartition(":")
            slots.setdefault(param, {})[slot] = t.array
        else:
            rest.append(t)
    values, upstream, float_types = _inputs(flow.name, plan, Decoded(req, rest))
    if upstream is not None:
        raise _bad("a step minimizes the model's output: send no 'grad:output'", "inputs")
    if names is None:
        raise _bad("parameters.params: name the inputs to update (comma-separated); the "
                   f"model's: {', '.join(plan.float_inputs)}", "parameters", "params")
    if len(set(names)) != len(names):
        raise _bad("parameters.params: each input once", "parameters", "params")
    for name in names:
        if name not in plan.float_inputs:
            raise _bad(f"parameters.params: '{name}' is not a float input of model "
                       f"'{flow.name}' ({', '.join(plan.float_inputs)})", "parameters", "params")
    at = {n: values[n] for n in names}
    if slots and count is None:
        raise _bad("parameters.step: the state's step count goes with its slots (the "
                   "'state:step' output of the previous step)", "parameters", "step")
    state = init_state(opt, at) if count is None else check_state(opt, at, count, slots)
    dtype = "float64" if "FP64" in float_types or not float_types else "float32"
    query = Query(wrt=tuple(names), dtype=dtype)
    job = steps_flow.Job(values, tuple(names), opt, state, query)
    steps_flow.estimate(job, steps, "json", dtype, env)
    if steps > 1:
        check_steps(step_flops(plan, values, query, env.settings.limits),
                    sum(a.size for a in at.values()), opt, steps, env.settings.limits)
    with tracing.span("train", graph_id=plan.graph_id):
        trained = train(steps_flow.objective(plan, query, env), values, tuple(names), opt,
                        state, steps, np.float64 if dtype == "float64" else np.float32,
                        deadline=env.deadline)
    header: dict[str, Any] = {"model_name": flow.name, "model_version": MODEL_VERSION}
    if req.id is not None:
        header["id"] = req.id
    return encode_response(header, _outputs(req, trained))


def _outputs(req: Any, trained: Trained) -> list[tuple[str, np.ndarray, bool]]:
    """Every output (or those asked for, in their order) with its binary flag."""
    every: dict[str, np.ndarray] = {f"{VALUE}{n}": v for n, v in trained.params.items()}
    for n, slots in trained.state.slots.items():
        every.update({f"{STATE}{n}:{s}": v for s, v in slots.items()})
    every[STEP] = np.asarray([trained.state.step], dtype=np.int64)
    every[LOSSES] = np.asarray(trained.losses, dtype=np.float64)
    default = _flag((req.parameters or {}).get("binary_data_output"),
                    "parameters.binary_data_output")
    if req.outputs is None:
        return [(n, a, default) for n, a in every.items()]
    out = []
    for j, o in enumerate(req.outputs):
        if o.name not in every:
            raise _bad(f"output '{o.name}' is not an output of a step (outputs: "
                       f"{', '.join(every)})", "outputs", j, "name")
        binary = (o.parameters or {}).get("binary_data")
        out.append((o.name, every[o.name], default if binary is None else
                    _flag(binary, f"outputs.{j}.parameters.binary_data")))
    return out


def _reword(err: ProblemError) -> ProblemError:
    """The step's field names in OIP's: a slot is an input, a hyperparameter a parameter."""
    loc = err.loc
    if not loc:
        return err
    new: tuple[str | int, ...] | None = None
    if loc[:2] == ("state", "slots") and len(loc) >= 3:
        new = ("inputs", STATE + ":".join(str(p) for p in loc[2:]))
    elif loc == ("state", "step"):
        new = ("parameters", "step")
    elif loc[0] == "optimizer" and len(loc) >= 2:
        new = ("parameters", "optimizer" if loc[1] == "type" else str(loc[1]))
    elif loc == ("steps",):
        new = ("parameters", "steps")
    elif loc[0] == "values" and len(loc) == 2:
        new = ("inputs", str(loc[1]))
    if new is None:
        return err
    old = ".".join(str(p) for p in loc) + ":"
    if err.detail.startswith(old):
        word = "input" if new[0] == "inputs" else "parameter"
        err.detail = f"{word} '{new[1]}':" + err.detail[len(old):]
        err.args = (err.detail,)
    err.loc = new
    return err
