"""An MLP's graph: its architecture lowered to ordinary registry nodes (the MLP flow,
``service.flows.mlp``, decodes the request and runs it; ``POST /v1/mlp/graphs`` registers
the same graph).

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

from schemas.oip import MLPGraphRequest
from service.engine import Plan
from service.engine.ir import GraphIR, NodeIR
from service.errors import Unprocessable
from service.store.cache import GraphCache, alias_key

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


def _fail(loc: tuple[str | int, ...], msg: str) -> Unprocessable:
    path = ".".join(str(p) for p in loc)
    return Unprocessable(f"{path}: {msg}", loc=loc)


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
