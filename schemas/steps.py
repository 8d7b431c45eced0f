"""Training-step bodies: ``POST /v1/graphs/{graph_id}/step`` and ``POST /v1/mlp/step``
(docs/training.md). An optimizer is one of torch.optim's, with its hyperparameters' names;
a field left out takes torch.optim's default (the service fills them in, so the same
defaults hold over OIP's parameters)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool, model_validator

from schemas.bounds import MaxItems
from schemas.errors import CrossFieldError
from schemas.graphs import Name
from schemas.requests import DType, Encoding, MLPLayer, MLPLoss, NameList, NameMap, Number
from schemas.tensors import Integral, Tensor, TensorOut

NonNegative = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
Beta = Annotated[float, Strict(), Field(ge=0, lt=1, allow_inf_nan=False)]
#: One request's steps at most (the work and time limits usually bind first).
MAX_STEPS = 10_000


class _Optimizer(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    weight_decay: NonNegative | None = Field(None, description="L2 penalty added to the "
                                             "gradient (adamw: decoupled); default 0 "
                                             "(adamw: 0.01)")
    maximize: StrictBool | None = Field(None, description="ascend instead; default false")


class SGD(_Optimizer):
    """torch.optim.SGD."""

    type: Literal["sgd"]
    lr: NonNegative = Field(description="required (torch's default changed between versions)")
    momentum: NonNegative | None = Field(None, description="default 0")
    dampening: NonNegative | None = Field(None, description="default 0")
    nesterov: StrictBool | None = Field(None, description="default false; needs momentum > 0 "
                                        "and dampening 0")


class Adam(_Optimizer):
    """torch.optim.Adam, and AdamW (decoupled weight decay)."""

    type: Literal["adam", "adamw"]
    lr: NonNegative | None = Field(None, description="default 0.001")
    betas: Annotated[tuple[Beta, Beta], Field(max_length=2)] | None = Field(
        None, description="default [0.9, 0.999]")
    eps: NonNegative | None = Field(None, description="default 1e-8")
    amsgrad: StrictBool | None = Field(None, description="default false")


class RMSprop(_Optimizer):
    """torch.optim.RMSprop."""

    type: Literal["rmsprop"]
    lr: NonNegative | None = Field(None, description="default 0.01")
    alpha: NonNegative | None = Field(None, description="default 0.99")
    eps: NonNegative | None = Field(None, description="default 1e-8")
    momentum: NonNegative | None = Field(None, description="default 0")
    centered: StrictBool | None = Field(None, description="default false")


class Adagrad(_Optimizer):
    """torch.optim.Adagrad."""

    type: Literal["adagrad"]
    lr: NonNegative | None = Field(None, description="default 0.01")
    lr_decay: NonNegative | None = Field(None, description="default 0")
    eps: NonNegative | None = Field(None, description="default 1e-10")
    initial_accumulator_value: NonNegative | None = Field(None, description="default 0: the "
                                                          "'sum' slot before the first step")


Optimizer = Annotated[SGD | Adam | RMSprop | Adagrad, Field(discriminator="type")]


def optimizer_options(opt: SGD | Adam | RMSprop | Adagrad) -> dict[str, object]:
    """The hyperparameters a request set (the rest take the service's torch defaults)."""
    return opt.model_dump(exclude_unset=True, exclude_none=True, exclude={"type"})


class OptimizerState(BaseModel):
    """What the previous step answered: the step count and each parameter's slots."""

    model_config = ConfigDict(extra="forbid")

    step: Annotated[int, Strict(), Field(ge=0), Integral]
    slots: Annotated[dict[Name, Annotated[dict[Name, Tensor], Field(max_length=8)]],
                     MaxItems("max_nodes")] = Field(
        default_factory=dict, description="parameter -> slot -> tensor shaped as the "
        "parameter; slot names are torch.optim's state keys")


class _StepOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    optimizer: Optimizer
    state: OptimizerState | None = Field(None, description="the 'state' the previous step "
                                         "returned; absent on the first step")
    steps: Annotated[int, Strict(), Field(ge=1, le=MAX_STEPS), Integral] = Field(
        1, description="steps on the same values in one request")
    dtype: DType = "float64"
    encoding: Encoding = "json"


class GraphStepRequest(_StepOptions):
    """``POST /v1/graphs/{graph_id}/step``: the objective is the graph's scalar output, or
    ``loss`` of its output."""

    values: NameMap = Field(default_factory=dict, description="a value for every input")
    params: Annotated[NameList, Field(min_length=1, json_schema_extra={"uniqueItems": True})
                      ] | None = Field(
        None, description="the inputs to update, each once (default: a model's stored "
        "parameters; required for a graph without them)")
    loss: MLPLoss | None = Field(None, description="the objective is this loss of the "
                                 "output against 'targets'")

    @model_validator(mode="after")
    def _distinct(self) -> GraphStepRequest:
        if self.params is not None and len(set(self.params)) != len(self.params):
            raise CrossFieldError("each parameter once", loc=("params",))
        return self


class MLPStepRequest(_StepOptions):
    """``POST /v1/mlp/step``: ``/v1/mlp/gradients``'s network and loss (required), with
    ``layers`` updated."""

    layers: Annotated[list[MLPLayer], Field(min_length=1, max_length=64)]
    inputs: Tensor = Field(description="(batch, in) or (in,)")
    loss: MLPLoss
    l2: Annotated[Number, Field(ge=0)] = 0.0
    params: Annotated[list[Annotated[str, Field(pattern=r"^layers\.\d+\.(weight|bias)$")]],
                      Field(min_length=1, max_length=128,
                            json_schema_extra={"uniqueItems": True})] | None = Field(
        None, description="'layers.<i>.weight' / 'layers.<i>.bias' to update; default all")


# --- answers ------------------------------------------------------------------------------


class StateOut(BaseModel):
    """The state to send back with the next step."""

    step: int = Field(description="steps taken so far")
    slots: dict[str, dict[str, TensorOut]] = Field(description="parameter -> slot -> tensor")


class _StepAnswer(BaseModel):
    state: StateOut
    loss: float = Field(description="the objective at the values the first step started from")
    losses: list[float] = Field(description="the objective where each step started")
    graph_id: str
    cache: str
    warnings: list[str] | None = None


class GraphStepResponse(_StepAnswer):
    values: dict[str, TensorOut] = Field(description="every parameter, updated")


class MLPLayerOut(BaseModel):
    weight: TensorOut
    bias: TensorOut
    activation: str


class MLPStepResponse(_StepAnswer):
    layers: list[MLPLayerOut] = Field(description="the request's layers, updated: send them "
                                      "back as they are")
