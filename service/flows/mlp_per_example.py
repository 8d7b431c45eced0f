"""``per_example`` on ``/v1/mlp/gradients``: each example's gradients of its own loss.

The batch's ``inputs`` (and the loss's ``targets``, or ``upstream``) become the batched
inputs of the same MLP graph with one row per example — ``(B, 1, in)`` — so each example's
loss is that of a batch of one (its cross-entropy, hinge or squared error, not divided by
the batch size), and the engine's ``per_example`` gives the weights' and biases' gradients
per example, ``(B, out, in)`` and ``(B, out)``. The ``l2`` term belongs to no example: the
per-example graph has none, and the answer's ``loss`` is still the batch loss, the mean of
the examples' losses plus ``0.5 * l2 * sum(W ** 2)`` (what the batch graph computes).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from service.engine import Query, Result
from service.errors import LimitExceeded
from service.flows.mlp_graph import INPUT, L2, TARGETS, weight_name

__all__ = ["architecture", "bind", "check_size", "result"]


def architecture(arch: Any) -> Any:
    """The per-example graph's architecture: the same layers and loss, one example of a
    batch per run (input rank 2), no l2 term."""
    return dataclasses.replace(arch, l2=False, input_rank=2)


def bind(mlp: Any, query: Query) -> tuple[dict[str, Any], Query]:
    """The values with one row per example, and the batched query."""
    x = mlp.values[INPUT]
    rows = x.reshape(-1, 1, x.shape[-1])
    values = {n: v for n, v in mlp.values.items() if n != L2}
    values[INPUT] = rows
    batched = [INPUT]
    if TARGETS in values:
        t = values[TARGETS]
        values[TARGETS] = t.reshape(rows.shape[0], 1, *t.shape[x.ndim - 1:]) \
            if mlp.architecture.loss == "mse" else t.reshape(-1, 1)
        batched.append(TARGETS)
    upstream = None
    if mlp.upstream is not None:
        upstream = mlp.upstream.reshape(rows.shape[0], 1, -1)
    return values, dataclasses.replace(query, upstream=upstream, batched=tuple(batched),
                                       per_example=True)


def result(mlp: Any, res: Result, l2: float) -> Result:
    """The batched run's answer in the MLP's shapes; ``loss`` (the graph's output per
    example) becomes the batch loss."""
    x = mlp.values[INPUT]
    arch = mlp.architecture
    if arch.loss is not None:
        out = res.fetched[arch.output_node]  # type: ignore[index]
        res.fetched = {arch.output_node: np.reshape(out, (*x.shape[:-1], out.shape[-1]))}
        penalty = sum(float(np.sum(np.square(mlp.values[weight_name(i)])))
                      for i in range(len(arch.sizes)))
        res.output = np.asarray(np.mean(res.output) + 0.5 * l2 * penalty)
    else:
        res.output = np.reshape(res.output, (*x.shape[:-1], res.output.shape[-1]))
    if INPUT in res.gradients:
        res.gradients[INPUT] = np.reshape(res.gradients[INPUT], x.shape)
    return res


def check_size(sizes: Any, batch: int, limit_elements: int) -> None:
    """B × parameters within the tensor limit, before anything runs (413 naming it)."""
    params = sum(o * i + o for o, i in sizes)
    biggest = max(o * i for o, i in sizes)
    if batch * biggest > limit_elements:
        raise LimitExceeded("max_tensor_elements", limit_elements, batch * biggest,
                            f"per-example weight gradients: B × parameters = {batch} × "
                            f"{params}", loc=("per_example",))
