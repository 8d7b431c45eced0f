"""Request bodies of docs/api.md §4-§6."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Strict,
    StrictBool,
    StrictStr,
    Tag,
    model_validator,
)

from schemas.bounds import MaxItems
from schemas.errors import CrossFieldError
from schemas.graphs import GraphJSON, Name
from schemas.tensors import Integral, Tensor

DType = Literal["float64", "float32"]
Encoding = Literal["json", "b64"]
GraphId = Annotated[StrictStr, Field(pattern=r"^g-[0-9a-f]{64}$")]
Expression = Annotated[StrictStr, Field(min_length=1)]
#: A model name: letters, digits, '.', '_', '-' (the service also refuses a graph id's form).
ModelName = Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")]


#: ``wrt`` as a word: a model's inputs, its parameters, or both.
WrtWord = Literal["inputs", "parameters", "all"]
#: The tags of ``wrt``'s two forms: a string is the word, anything else the list, so a bad
#: list gets its own errors only (an untagged union adds the word's too, and a loc part
#: naming Pydantic's branch). The error renderer leaves these tags out of a loc.
UNION_TAGS = frozenset({"wrt:names", "wrt:word"})
OnnxBase64 = Annotated[StrictStr, Field(min_length=1)]

LossType = Literal["softmax_cross_entropy", "hinge", "mse"]
#: A map from input names, or a list of them: at most as many as a graph may have nodes.
NameMap = Annotated[dict[Name, Tensor], MaxItems("max_nodes")]
NameList = Annotated[list[Name], MaxItems("max_nodes")]
Wrt = Annotated[Annotated[NameList, Tag("wrt:names")] | Annotated[WrtWord, Tag("wrt:word")],
                Discriminator(lambda v: "wrt:word" if isinstance(v, str) else "wrt:names")]
#: A number where JSON's true/false is not one (Pydantic's lax float takes them as 1/0).
Number = Annotated[float, Strict()]


class MLPLoss(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: LossType
    targets: Tensor = Field(description="integer labels (batch,) for softmax_cross_entropy "
                            "and hinge; a tensor shaped like the output for mse")


class GradientOptions(BaseModel):
    """What to compute for a graph (every field but the graph itself)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    values: NameMap = Field(default_factory=dict,
                                       description="a value for every input")
    wrt: Wrt | None = Field(
        None, description="inputs to differentiate: names, or 'inputs', 'parameters' or "
        "'all' (a model's inputs, its parameters, both); default: every differentiable "
        "input ('inputs' for a model with parameters); [] the forward pass alone")
    upstream: Tensor | None = Field(None, description="dL/d(output); required when the "
                                    "output is not a scalar")
    trace: StrictBool = False
    trace_backward: StrictBool = Field(False, description="with the trace, also every node "
                                       "of the backward graph (response field "
                                       "'trace_backward'); implies trace")
    jacobian: StrictBool = False
    check: StrictBool = Field(False, description="compare gradients (and hvp, when asked) "
                              "with central differences")
    tangents: NameMap | None = Field(
        None, description="forward mode: input -> direction; the response's 'jvp' is "
        "sum_i J_i t_i (inputs not named: zero direction)")
    hvp: NameMap | None = Field(
        None, description="a direction v over the wrt inputs (not named: zero); the "
        "response's 'hvp' is the Hessian of the objective times v, per wrt input")
    hessian: StrictBool = Field(False, description="the full Hessian of the objective over "
                                "the wrt inputs: hessian[a][b] has shape a.shape + b.shape")
    loss: MLPLoss | None = Field(None, description="the objective is this loss of the output "
                                 "against 'targets' (instead of 'upstream'); the answer adds "
                                 "'loss'")
    output: Name | None = Field(None, description="another of a model's outputs as the "
                                "output (default: its first)")
    dtype: DType = Field("float64", description="compute precision; a model's default is "
                         "its own element type")
    batched: Annotated[list[Name], Field(max_length=256)] | None = Field(
        None, description="inputs whose leading axis indexes independent examples (their "
        "values are (B,) + shape, one B for all): each example has its own objective; the "
        "output, the batched inputs' gradients, jvp, hvp, jacobian and hessian come per "
        "example with a leading B")
    per_example: StrictBool = Field(False, description="with 'batched': the gradients of "
                                    "the other (shared) inputs per example, (B,) + shape, "
                                    "instead of summed over the examples")
    directions: Annotated[int, Strict(), Field(ge=1, le=4096), Integral] | None = Field(
        None, description="K: every tensor of 'tangents' and 'hvp' has a leading axis of K "
        "directions, run as one vectorized pass; jvp is (K,) + output, hvp[name] (K,) + "
        "shape (with 'batched': (K, B) + ..., K outermost)")
    dtype: DType = "float64"
    encoding: Encoding = "json"


class GradientRequest(GradientOptions):
    """``POST /v1/gradients``: exactly one of ``graph``, ``expression``, ``graph_id``."""

    graph: GraphJSON | None = None
    expression: Expression | None = None
    graph_id: GraphId | None = None

    @model_validator(mode="after")
    def _exactly_one_graph(self) -> GradientRequest:
        fields = {"graph": self.graph, "expression": self.expression, "graph_id": self.graph_id}
        given = [k for k, v in fields.items() if v is not None]
        if len(given) != 1:
            raise CrossFieldError("give exactly one of 'graph', 'expression' or 'graph_id' "
                                  f"(got {', '.join(given) or 'none'})",
                                  loc=(given[1] if given else "graph",))
        return self


class GraphGradientRequest(GradientOptions):
    """``POST /v1/graphs/{graph_id}/gradients``."""


class RegisterRequest(BaseModel):
    """``POST /v1/graphs``: exactly one of ``graph``, ``expression`` and ``onnx``."""

    model_config = ConfigDict(extra="forbid")

    graph: GraphJSON | None = None
    expression: Expression | None = None
    onnx: OnnxBase64 | None = Field(None, description="an ONNX model: base64 of a serialized "
                                    "ModelProto (or POST the bytes as application/onnx)")
    name: ModelName | None = Field(None, description="a model name for the Open Inference "
                                   "Protocol (/v2/models/{name}), unique per store")

    @model_validator(mode="after")
    def _exactly_one_graph(self) -> RegisterRequest:
        fields = {"graph": self.graph, "expression": self.expression, "onnx": self.onnx}
        given = [k for k, v in fields.items() if v is not None]
        if len(given) != 1:
            raise CrossFieldError("give exactly one of 'graph', 'expression' and 'onnx' "
                                  f"(got {', '.join(given) or 'none'})",
                                  loc=(given[1] if given else "graph",))
        return self


Activation = Literal["relu", "sigmoid", "tanh", "identity"]


class MLPLayer(BaseModel):
    """One ``Linear`` layer and its activation: ``act(x @ weight.T + bias)``."""

    model_config = ConfigDict(extra="forbid")

    weight: Tensor = Field(description="(out, in), as PyTorch's Linear")
    bias: Tensor = Field(description="(out,)")
    activation: Activation = "identity"


class MLPRequest(BaseModel):
    """``POST /v1/mlp/gradients`` (docs/api.md §6)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    layers: Annotated[list[MLPLayer], Field(min_length=1, max_length=64)]
    inputs: Tensor = Field(description="(batch, in) or (in,)")
    loss: MLPLoss | None = None
    upstream: Tensor | None = None
    l2: Annotated[Number, Field(ge=0)] = 0.0
    wrt: Annotated[list[Literal["weights", "inputs"]], Field(max_length=8)] = Field(
        default_factory=lambda: ["weights"])
    per_example: StrictBool = Field(False, description="each example's gradients of its own "
                                    "loss (not divided by the batch size, without l2): "
                                    "gradients.layers[i].weight is (batch, out, in); 'loss' "
                                    "stays the batch loss")
    dtype: DType = "float64"
    encoding: Encoding = "json"

    @model_validator(mode="after")
    def _loss_or_upstream(self) -> MLPRequest:
        if (self.loss is None) == (self.upstream is None):
            raise CrossFieldError("give exactly one of 'loss' and 'upstream'",
                                  loc=("upstream" if self.loss is not None else "loss",))
        return self
