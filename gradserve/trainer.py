"""Training through the step endpoints (docs/training.md), NumPy in and out.

:meth:`Client.step <gradserve.client.Client.step>` and ``Client.mlp_step`` post one
request; :class:`Trainer` keeps the values and the optimizer state between calls, so a
training loop is two lines::

    from gradserve.client import Client
    from gradserve.trainer import Trainer

    with Client() as gs:
        t = Trainer.mlp(gs, layers, inputs, ("softmax_cross_entropy", labels),
                        {"type": "adam", "lr": 0.01})
        for _ in range(10):
            t.step(steps=50)        # 50 steps in one request; t.losses grows by 50

The server keeps nothing: the state travels with every request, so any replica serves the
next step, and a failed request (a 503 past the deadline) changes nothing here either.
Imports nothing from the server packages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gradserve.tensors import from_wire, to_wire

if TYPE_CHECKING:
    from gradserve.client import Client


@dataclass
class StepResult:
    """One step request's answer: the updated parameters (``values``; for an MLP also
    ``layers``, the request's layers updated), the state to send back, the objective where
    the first step started (``loss``) and where each did (``losses``)."""

    values: dict[str, Any]
    state: dict[str, Any]
    loss: float
    losses: list[float]
    graph_id: str
    cache: str
    layers: list[dict[str, Any]] | None = None
    warnings: list[str] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_body(cls, body: dict[str, Any]) -> StepResult:
        state = body["state"]
        slots = {p: {s: from_wire(v) for s, v in per.items()}
                 for p, per in state["slots"].items()}
        layers = body.get("layers")
        values: dict[str, Any] = {n: from_wire(v) for n, v in body.get("values", {}).items()}
        if layers is not None:
            layers = [{"weight": from_wire(layer["weight"]), "bias": from_wire(layer["bias"]),
                       "activation": layer["activation"]} for layer in layers]
            for i, layer in enumerate(layers):
                values[f"layers.{i}.weight"] = layer["weight"]
                values[f"layers.{i}.bias"] = layer["bias"]
        return cls(values=values, state={"step": state["step"], "slots": slots},
                   loss=float(body["loss"]), losses=[float(x) for x in body["losses"]],
                   graph_id=body.get("graph_id", ""), cache=body.get("cache", ""),
                   layers=layers, warnings=list(body.get("warnings") or []), raw=body)


def optimizer_body(optimizer: str | Mapping[str, Any]) -> dict[str, Any]:
    """``"adam"`` or ``{"type": "adam", "lr": 0.01}`` → the wire object."""
    if isinstance(optimizer, str):
        return {"type": optimizer}
    out = dict(optimizer)
    if "betas" in out:
        out["betas"] = list(out["betas"])
    return out


def state_body(state: Mapping[str, Any] | None, threshold: int) -> dict[str, Any] | None:
    """A state as a step answered it (NumPy slots) → the wire object."""
    if state is None:
        return None
    return {"step": int(state["step"]),
            "slots": {p: {s: to_wire(v, threshold) for s, v in per.items()}
                      for p, per in state.get("slots", {}).items()}}


def step_options(optimizer: str | Mapping[str, Any], state: Mapping[str, Any] | None,
                 steps: int, dtype: str | None, threshold: int) -> dict[str, Any]:
    """The fields both step endpoints share."""
    body: dict[str, Any] = {"optimizer": optimizer_body(optimizer), "steps": int(steps)}
    wire_state = state_body(state, threshold)
    if wire_state is not None:
        body["state"] = wire_state
    if dtype is not None:
        body["dtype"] = dtype
    return body


def layers_body(layers: Sequence[Any], threshold: int) -> list[dict[str, Any]]:
    """``{"weight", "bias", "activation"}`` dicts or ``(weight, bias[, activation])``
    tuples → the wire layers."""
    out = []
    for layer in layers:
        if not isinstance(layer, Mapping):
            weight, bias, *act = layer
            layer = {"weight": weight, "bias": bias, "activation": act[0] if act else "identity"}
        out.append({"weight": to_wire(layer["weight"], threshold),
                    "bias": to_wire(layer["bias"], threshold),
                    "activation": layer.get("activation", "identity")})
    return out


def loss_body(loss: Any, threshold: int) -> dict[str, Any]:
    """``{"type", "targets"}`` or a ``(type, targets)`` tuple → the wire loss."""
    kind, targets = (loss["type"], loss["targets"]) if isinstance(loss, Mapping) else loss
    return {"type": kind, "targets": to_wire(targets, threshold)}


class Trainer:
    """Keeps a run's values and optimizer state between step requests.

    ``Trainer(client, graph, values, params, optimizer, loss=None)`` trains the inputs
    ``params`` of a graph (an expression, a graph spec, or a graph id; registered once);
    :meth:`Trainer.mlp` trains an MLP's layers. :meth:`step` posts ``steps`` steps and
    keeps what comes back; ``losses`` is the whole run's objective, step by step.
    """

    def __init__(self, client: Client, graph: str | Mapping[str, Any] | None,
                 values: Mapping[str, Any], params: Sequence[str] | None,
                 optimizer: str | Mapping[str, Any], loss: Any = None, *,
                 dtype: str | None = None) -> None:
        self.client = client
        self.graph_id = None if graph is None else client.graph_id_of(graph)
        self.values = dict(values)
        self.params = None if params is None else list(params)
        self.optimizer = optimizer_body(optimizer)
        self.loss = loss
        self.dtype = dtype
        self.state: dict[str, Any] | None = None
        self.losses: list[float] = []
        self.layers: list[dict[str, Any]] | None = None
        self.inputs: Any = None

    @classmethod
    def mlp(cls, client: Client, layers: Sequence[Any], inputs: Any, loss: Any,
            optimizer: str | Mapping[str, Any], *, params: Sequence[str] | None = None,
            dtype: str | None = None) -> Trainer:
        """A trainer of ``/v1/mlp/step``: ``layers`` as ``Client.mlp_gradients`` takes them."""
        t = cls(client, None, {}, params, optimizer, loss, dtype=dtype)
        t.layers = [dict(layer) if isinstance(layer, Mapping) else
                    {"weight": layer[0], "bias": layer[1],
                     "activation": layer[2] if len(layer) > 2 else "identity"}
                    for layer in layers]
        t.inputs = inputs
        return t

    @property
    def step_count(self) -> int:
        """Steps taken so far (the state's count)."""
        return 0 if self.state is None else int(self.state["step"])

    def step(self, steps: int = 1) -> StepResult:
        """``steps`` steps in one request; the values and state are replaced only once the
        server has answered (an error leaves them as they were)."""
        if self.layers is not None:
            r = self.client.mlp_step(self.layers, self.inputs, self.loss, self.optimizer,
                                     params=self.params, state=self.state, steps=steps,
                                     dtype=self.dtype)
            assert r.layers is not None
            self.layers = r.layers
        else:
            assert self.graph_id is not None
            r = self.client.step(self.graph_id, self.values, self.optimizer,
                                 params=self.params, state=self.state, steps=steps,
                                 loss=self.loss, dtype=self.dtype)
            self.values.update(r.values)
        self.state = r.state
        self.losses += r.losses
        return r
