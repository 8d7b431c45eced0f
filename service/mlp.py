"""``POST /v1/mlp/gradients`` without Flask: validate → lower to the graph IR → compile
(cached per architecture) → execute on the same engine as every other graph → encode.
``service.compute.mlp_request`` runs these steps, in the same flow module as every other
endpoint.

An MLP is lowered to ordinary graph nodes; there is no second backprop implementation.
Layer ``i`` becomes ``layers.{i}.linear = linear(prev, layers.{i}.weight, layers.{i}.bias)``
(``x @ W.T + b``, PyTorch's ``Linear``) followed by ``layers.{i}.{activation}`` (no node for
``identity``). A loss adds ``loss = <loss op>(net output, targets)``. With ``l2 > 0`` the
data loss is ``loss.data`` and ``loss = loss.data + 0.5 * l2 * sum_i sum(W_i ** 2)``, built
from ``square``, ``sum``, ``add`` and ``mul`` nodes with ``l2`` a scalar *input* of the
graph, so the graph (and its id) depends on whether l2 is on, never on its value.

The graph declares the shapes of the weights and biases (so the ``graph_id`` depends on the
layer sizes) and, for a single example, of the input; not of a batch or of the targets:
requests with another batch size reuse the same compiled plan. The cache alias is the
architecture (sizes, activations, loss type, l2 on/off, input rank): a repeat request with
new weights is a cache ``hit``.

Decisions where docs/api.md §6 is silent:

- **1-D inputs** ``(in,)`` are one example without a batch axis, as a PyTorch ``Linear``
  takes them: the output is ``(out,)`` and ``gradients.inputs`` is ``(in,)``. ``mse``
  targets are then ``(out,)``. ``softmax_cross_entropy`` and ``hinge`` treat the example as
  a batch of one: their targets are one integer label, sent as a number or a 1-element
  list, and the graph reshapes the scores to ``(1, out)`` before the loss node.
- **The reported loss includes the l2 term** (it is the value whose gradients are
  returned), and the weight gradients include ``l2 * W``; biases are not regularized.
- **l2 needs a loss**: with ``upstream`` the objective is implicit, so ``l2 > 0`` without
  ``loss`` is a 422 (add ``l2 * W`` to the returned weight gradients yourself).
- **wrt**: ``"weights"`` returns ``gradients.layers`` (weight and bias of every layer),
  ``"inputs"`` returns ``gradients.inputs``; each key is present only when asked for.
  Repeated names count once; ``[]`` runs the forward pass only (output and loss).
- Class labels may be sent in any tensor form; they must be integers in ``[0, out)``.
- Weights must have at least one row and one column; with a loss the batch must not be
  empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from schemas import MLPRequest
from schemas.oip import MLPGraphRequest
from service.codec import decode_tensor
from service.config import Settings
from service.encoder import Encoder
from service.engine import Plan, Query, Result, execute
from service.engine.ir import GraphIR, NodeIR
from service.engine.limits import Deadline
from service.engine.shapes import fmt
from service.errors import Unprocessable
from service.graphs import GraphCache, alias_key

INPUT = "x"
TARGETS = "targets"
L2 = "l2"
LOSS = "loss"
LABEL_LOSSES = ("softmax_cross_entropy", "hinge")


def weight_name(i: int) -> str:
    return f"layers.{i}.weight"


def bias_name(i: int) -> str:
    return f"layers.{i}.bias"


@dataclass(frozen=True)
class Architecture:
    """What the compiled graph depends on: everything but the values."""

    sizes: tuple[tuple[int, int], ...]  # (out, in) of each layer's weight
    activations: tuple[str, ...]
    loss: str | None
    l2: bool
    input_rank: int  # 1: one example (in,); 2: a batch (batch, in)

    def key(self) -> str:
        """The GraphCache alias of this architecture."""
        return alias_key("mlp", {
            "sizes": [list(s) for s in self.sizes],
            "activations": list(self.activations),
            "loss": self.loss,
            "l2": self.l2,
            "input_rank": self.input_rank,
        })

    @property
    def output_node(self) -> str:
        """The node whose value is the network's output."""
        last = len(self.sizes) - 1
        act = self.activations[last]
        return f"layers.{last}.linear" if act == "identity" else f"layers.{last}.{act}"


@dataclass
class MLPValues:
    """A validated request: its architecture and the engine's input values."""

    architecture: Architecture
    values: dict[str, np.ndarray]
    upstream: np.ndarray | None
    wrt: tuple[str, ...]  # "weights" and/or "inputs", in the request's order, once each


# --- validation ---------------------------------------------------------------------------


def _fail(loc: tuple[str | int, ...], msg: str) -> Unprocessable:
    path = ".".join(str(p) for p in loc)
    return Unprocessable(f"{path}: {msg}", loc=loc)


def decode(req: MLPRequest, settings: Settings) -> MLPValues:
    """Decode every tensor (sizes checked before allocation) and check that they fit.

    Every error is a 422 whose ``loc`` names the layer and field at fault.
    """
    limit = settings.limits.max_tensor_elements
    values: dict[str, np.ndarray] = {}
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


# --- lowering -----------------------------------------------------------------------------


def lower(arch: Architecture) -> GraphIR:
    """The graph of an architecture (see the module docstring for its node names)."""
    # A batch's size varies, so a 2-d input's shape stays open; a single example's is
    # declared, which also makes the input rank part of the graph (and of its id).
    width = arch.sizes[0][1]
    inputs: list[tuple[str, tuple[int, ...] | None]] = [
        (INPUT, (width,) if arch.input_rank == 1 else None)]
    nodes: list[NodeIR] = []
    prev = INPUT
    for i, ((out, inp), act) in enumerate(zip(arch.sizes, arch.activations)):
        w, b = weight_name(i), bias_name(i)
        inputs += [(w, (out, inp)), (b, (out,))]
        prev_id = f"layers.{i}.linear"
        nodes.append(NodeIR(prev_id, "linear", (prev, w, b)))
        if act != "identity":
            nodes.append(NodeIR(f"layers.{i}.{act}", act, (prev_id,)))
            prev_id = f"layers.{i}.{act}"
        prev = prev_id
    if arch.loss is None:
        return GraphIR(tuple(sorted(inputs)), tuple(nodes), prev)

    inputs.append((TARGETS, None))
    scores = prev
    if arch.input_rank == 1 and arch.loss in LABEL_LOSSES:
        # One example is a batch of one for the label losses, which take (batch, classes).
        scores = "scores"
        nodes.append(NodeIR(scores, "reshape", (prev,), (("shape", (1, -1)),)))
    data_loss = "loss.data" if arch.l2 else LOSS
    nodes.append(NodeIR(data_loss, arch.loss, (scores, TARGETS)))
    if arch.l2:
        inputs.append((L2, ()))
        total = ""
        for i in range(len(arch.sizes)):
            w = weight_name(i)
            nodes.append(NodeIR(f"{w}.square", "square", (w,)))
            nodes.append(NodeIR(f"{w}.sumsq", "sum", (f"{w}.square",)))
            if not total:
                total = f"{w}.sumsq"
            else:
                nodes.append(NodeIR(f"l2.sumsq.{i}", "add", (total, f"{w}.sumsq")))
                total = f"l2.sumsq.{i}"
        nodes.append(NodeIR("l2.half", "mul", (L2, 0.5)))
        nodes.append(NodeIR("l2.penalty", "mul", ("l2.half", total)))
        nodes.append(NodeIR(LOSS, "add", (data_loss, "l2.penalty")))
    return GraphIR(tuple(sorted(inputs)), tuple(nodes), LOSS)


def architecture_of(req: MLPGraphRequest) -> Architecture:
    """The architecture of ``POST /v1/mlp/graphs`` (422 when the layers do not chain)."""
    for i in range(1, len(req.layers)):
        prev, layer = req.layers[i - 1], req.layers[i]
        if layer.in_features != prev.out_features:
            raise _fail(("layers", i, "in_features"),
                        f"is {layer.in_features}, but layer {i - 1} has {prev.out_features} "
                        f"outputs: layer {i}'s in_features must equal layer {i - 1}'s "
                        "out_features")
    if req.l2 and req.loss is None:
        raise _fail(("l2",), "l2 adds to the loss: give a 'loss'")
    sizes = tuple((layer.out_features, layer.in_features) for layer in req.layers)
    return Architecture(sizes, tuple(layer.activation for layer in req.layers), req.loss,
                        req.l2, 2 if req.batched else 1)


def register(arch: Architecture, cache: GraphCache, name: str | None = None
             ) -> tuple[Plan, bool]:
    """Register an architecture's graph (the same graph, and id, the MLP endpoint runs)."""
    return cache.register(arch.key(), lambda: lower(arch), name=name)


def plan_for(arch: Architecture, cache: GraphCache) -> tuple[Plan, str]:
    """The compiled plan of an architecture: ``hit`` when this worker has compiled it."""
    return cache.plan_for(arch.key(), lambda: lower(arch))


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


def run(mlp: MLPValues, plan: Plan, dtype: str, settings: Settings,
        deadline: Deadline | None = None) -> Result:
    """Execute the plan; with a loss, the network's output is fetched from its node."""
    arch = mlp.architecture
    fetch = [arch.output_node] if arch.loss is not None else []
    return execute(plan, mlp.values, Query(wrt=engine_wrt(mlp), upstream=mlp.upstream,
                                           dtype=dtype, fetch=fetch),
                   limits=settings.limits, deadline=deadline)


def encode(mlp: MLPValues, plan: Plan, cache_result: str, result: Result, dtype: str,
           encoding: str) -> dict[str, Any]:
    """The response body of docs/api.md §6 (tensors as ``encoding`` asks, warnings collected)."""
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
