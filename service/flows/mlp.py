"""``POST /v1/mlp/gradients`` (docs/api.md §6) as a flow: decode and check the weights and
inputs → the architecture's graph (``service.flows.mlp_graph``, compiled once per
architecture) → execute on the same engine as every other graph → encode."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas import MLPRequest
from service.config import Settings
from service.engine import Plan, Query, Result
from service.engine.shapes import fmt
from service.errors import ProblemError
from service.flows import mlp_per_example as per_example
from service.flows import response_size
from service.flows.codec import decode_tensor
from service.flows.driver import Env
from service.flows.encoder import Encoder
from service.flows.mlp_graph import (
    INPUT,
    L2,
    TARGETS,
    Architecture,
    _fail,
    bias_name,
    plan_for,
    weight_name,
)


@dataclass
class MLPValues:
    """A validated request: its architecture and the engine's input values."""

    architecture: Architecture
    values: dict[str, np.ndarray]
    upstream: np.ndarray | None
    wrt: tuple[str, ...]  # "weights" and/or "inputs", in the request's order, once each


# --- validation ---------------------------------------------------------------------------


def decode(req: MLPRequest, settings: Settings) -> MLPValues:
    """Decode every tensor (sizes checked before allocation) and check that they fit.

    Every error is a 422 whose ``loc`` names the layer and field at fault.
    """
    limit = settings.limits.max_tensor_elements
    values: dict[str, np.ndarray] = {}
    sizes = _layers(req, limit, values)
    x = decode_tensor(req.inputs, max_elements=limit, loc=("inputs",))
    width = sizes[0][1]
    if x.ndim not in (1, 2):
        raise _fail(("inputs",), f"must be (batch, {width}) or ({width},), got shape "
                    f"{fmt(x.shape)}")
    if x.shape[-1] != width:
        hint = ""
        if x.shape[-1] == sizes[0][0]:
            hint = (" (is layers.0.weight transposed? weights are (out, in), as "
                    "torch.nn.Linear's)")
        raise _fail(("inputs",), f"has width {x.shape[-1]} but layers.0.weight "
                    f"{fmt(sizes[0])} takes {width} inputs{hint}")
    values[INPUT] = x
    out_shape = (*x.shape[:-1], sizes[-1][0])

    loss = req.loss.type if req.loss is not None else None
    upstream = None
    if req.loss is not None:
        if x.ndim == 2 and x.shape[0] == 0:
            raise _fail(("inputs",), "a loss needs at least one example (batch is 0)")
        values[TARGETS] = _targets(req.loss.type, req.loss.targets, x, out_shape, limit)
    else:
        upstream = decode_tensor(req.upstream, max_elements=limit, loc=("upstream",))
        if upstream.shape != out_shape:
            raise _fail(("upstream",), f"must have the output's shape {fmt(out_shape)}, got "
                        f"{fmt(upstream.shape)}")
    if req.l2 > 0:
        if req.loss is None:
            raise _fail(("l2",), "l2 adds to the loss: give a 'loss' (with 'upstream', add "
                        "l2 * W to the returned weight gradients yourself)")
        values[L2] = np.asarray(req.l2, dtype=np.float64)

    arch = Architecture(tuple(sizes), tuple(layer.activation for layer in req.layers), loss,
                        req.l2 > 0, x.ndim)
    return MLPValues(arch, values, upstream, tuple(dict.fromkeys(req.wrt)))


def _layers(req: MLPRequest, limit: int, values: dict[str, np.ndarray]
            ) -> list[tuple[int, int]]:
    """Each layer's weight and bias decoded into ``values`` and checked to chain; the
    (out, in) of every layer."""
    sizes: list[tuple[int, int]] = []
    for i, layer in enumerate(req.layers):
        wloc: tuple[str | int, ...] = ("layers", i, "weight")
        bloc: tuple[str | int, ...] = ("layers", i, "bias")
        w = decode_tensor(layer.weight, max_elements=limit, loc=wloc)
        if w.ndim != 2:
            raise _fail(wloc, f"must be 2-d (out, in), got shape {fmt(w.shape)}")
        if 0 in w.shape:
            raise _fail(wloc, f"must have at least one row and one column, got {fmt(w.shape)}")
        if sizes and w.shape[1] != sizes[-1][0]:
            prev_out = sizes[-1][0]
            if w.shape[0] == prev_out:
                raise _fail(wloc, f"shape {fmt(w.shape)} looks transposed: weights are (out, "
                            f"in), as torch.nn.Linear's; layer {i - 1} has {prev_out} "
                            f"outputs, so send the ({w.shape[1]}, {prev_out}) transpose")
            raise _fail(wloc, f"shape {fmt(w.shape)} takes {w.shape[1]} inputs, but layer "
                        f"{i - 1} has {prev_out} outputs: layer {i}'s in must equal layer "
                        f"{i - 1}'s out (expected ({w.shape[0]}, {prev_out}))")
        b = decode_tensor(layer.bias, max_elements=limit, loc=bloc)
        if b.shape != (w.shape[0],):
            hint = ""
            if b.shape == (w.shape[1],):
                # Often an (in, out) weight with a right bias: say so, whichever is at fault.
                hint = (f"; or, if layers.{i}.weight is (in, out), send its transpose "
                        f"({w.shape[1]}, {w.shape[0]}): weights are (out, in), as "
                        "torch.nn.Linear's")
            raise _fail(bloc, f"must have shape ({w.shape[0]},) for weight {fmt(w.shape)}, "
                        f"got {fmt(b.shape)}{hint}")
        sizes.append((int(w.shape[0]), int(w.shape[1])))
        values[weight_name(i)] = w
        values[bias_name(i)] = b
    return sizes


def _targets(kind: str, wire: Any, x: np.ndarray, out_shape: tuple[int, ...], limit: int
             ) -> np.ndarray:
    loc: tuple[str | int, ...] = ("loss", "targets")
    t = decode_tensor(wire, max_elements=limit, loc=loc)
    if kind == "mse":
        if t.shape != out_shape:
            raise _fail(loc, f"mse takes targets shaped like the output {fmt(out_shape)}, got "
                        f"{fmt(t.shape)}")
        return t
    classes = out_shape[-1]
    if x.ndim == 1:
        if t.shape not in ((), (1,)):
            raise _fail(loc, f"{kind} of a single example (1-d inputs) takes one integer "
                        f"label (a number or a 1-element list), got shape {fmt(t.shape)}")
        t = t.reshape(1)
    elif t.shape != (x.shape[0],):
        raise _fail(loc, f"{kind} takes one integer class label per example, shape "
                    f"({x.shape[0]},), got {fmt(t.shape)}")
    if not np.all(t == np.floor(t)):
        raise _fail(loc, f"{kind} takes integer class labels, got a non-integer value")
    if t.size and (t.min() < 0 or t.max() >= classes):
        raise _fail(loc, f"class labels must lie in [0, {classes}) for an output of {classes} "
                    f"classes, got {t.min():g}..{t.max():g}")
    return t.astype(np.int64)


# --- running ------------------------------------------------------------------------------


def engine_wrt(mlp: MLPValues) -> list[str]:
    """The engine inputs the request differentiates."""
    names: list[str] = []
    for what in mlp.wrt:
        if what == "weights":
            for i in range(len(mlp.architecture.sizes)):
                names += [weight_name(i), bias_name(i)]
        else:
            names.append(INPUT)
    return names


def encode(mlp: MLPValues, plan: Plan, cache_result: str, result: Result, dtype: str,
           encoding: str) -> dict[str, Any]:
    """The response body of docs/api.md §6 (tensors as ``encoding`` asks, warnings
    collected)."""
    arch = mlp.architecture
    out = Encoder(encoding, dtype)
    body: dict[str, Any] = {}
    if arch.loss is not None:
        assert result.fetched is not None
        body["output"] = out("output", result.fetched[arch.output_node])
        loss = float(result.output)
        if not np.isfinite(loss):
            out.warnings.append("loss is non-finite (NaN or Infinity), written as null")
        body["loss"] = loss if np.isfinite(loss) else None
    else:
        body["output"] = out("output", result.output)
    grads: dict[str, Any] = {}
    if "weights" in mlp.wrt:
        grads["layers"] = [
            {"weight": out(f"gradients.layers.{i}.weight", result.gradients[weight_name(i)]),
             "bias": out(f"gradients.layers.{i}.bias", result.gradients[bias_name(i)])}
            for i in range(len(arch.sizes))
        ]
    if "inputs" in mlp.wrt:
        grads["inputs"] = out("gradients.inputs", result.gradients[INPUT])
    body["gradients"] = grads
    body["graph_id"] = plan.graph_id
    body["cache"] = cache_result
    if out.warnings:
        body["warnings"] = out.warnings
    return body


class MLPFlow:
    """One ``POST /v1/mlp/gradients`` request. Its graph depends on the weights' shapes, so
    resolving it decodes and checks the request first."""

    __slots__ = ("req", "mlp")

    def __init__(self, req: MLPRequest) -> None:
        self.req = req
        self.mlp: MLPValues | None = None

    batchable = False  # weights come with every request: nothing to merge on

    def resolve(self, env: Env) -> tuple[Plan, str]:
        self.mlp = decode(self.req, env.settings)
        arch = self.mlp.architecture
        if self.req.per_example:
            x = self.mlp.values[INPUT]
            per_example.check_size(arch.sizes, 1 if x.ndim == 1 else x.shape[0],
                                   env.settings.limits.max_tensor_elements)
            arch = per_example.architecture(arch)
        return plan_for(arch, env.cache)

    def bind(self, plan: Plan, env: Env) -> tuple[Mapping[str, Any], Query]:
        mlp = self.mlp
        assert mlp is not None
        arch = mlp.architecture
        # With a loss, the network's output is fetched from its node.
        fetch = (arch.output_node,) if arch.loss is not None else ()
        query = Query(wrt=tuple(engine_wrt(mlp)), upstream=mlp.upstream, fetch=fetch,
                      dtype=self.req.dtype)
        if self.req.per_example:
            return per_example.bind(mlp, query)
        return mlp.values, query

    def estimate(self, plan: Plan, values: Mapping[str, Any], query: Query, env: Env) -> None:
        mlp = self.mlp
        assert mlp is not None
        response_size.check_mlp(mlp.architecture.sizes, mlp.values[INPUT].shape, mlp.wrt,
                                self.req.encoding, self.req.dtype,
                                env.settings.max_response_bytes,
                                per_example=self.req.per_example)

    def encode(self, plan: Plan, cache: str, result: Result, env: Env) -> dict[str, Any]:
        assert self.mlp is not None
        if self.req.per_example:
            result = per_example.result(self.mlp, result, self.req.l2)
        return encode(self.mlp, plan, cache, result, self.req.dtype, self.req.encoding)

    def reword(self, err: ProblemError, env: Env) -> ProblemError:
        return err  # the MLP's fields are the engine's words (upstream) or its own (layers)
