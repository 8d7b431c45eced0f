"""Response bodies (for the OpenAPI document and response checks)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from schemas.tensors import TensorOut

CacheResult = Literal["hit", "miss"]


class CheckReport(BaseModel):
    max_abs_error: float
    max_rel_error: float


class TraceRecord(BaseModel):
    id: str
    op: str
    args: list[str | float]
    shape: list[int]
    value: TensorOut
    grad: TensorOut


class BackwardRecord(BaseModel):
    """A node of the backward graph (``trace_backward``)."""

    id: str
    op: str
    args: list[str]
    shape: list[int]
    value: TensorOut
    vjp_of: str = Field(description="the forward node whose VJP rule built this node")
    grad_of: str | None = Field(None, description="set when this node's value is the total "
                                "gradient of that node or input")


class GradientResponse(BaseModel):
    graph_id: str
    output: TensorOut
    gradients: dict[str, TensorOut]
    cache: CacheResult
    jacobians: dict[str, TensorOut] | None = None
    jvp: TensorOut | None = Field(None, description="with 'tangents': sum_i J_i t_i")
    hvp: dict[str, TensorOut] | None = Field(None, description="with 'hvp': H v per wrt input")
    hessian: dict[str, dict[str, TensorOut]] | None = None
    trace: list[TraceRecord] | None = None
    trace_backward: list[BackwardRecord] | None = None
    check: dict[str, CheckReport] | None = None
    hvp_check: dict[str, CheckReport] | None = Field(
        None, description="with 'check' and 'hvp': hvp against central differences of the "
        "gradient along v")
    loss: float | TensorOut | None = Field(
        None, description="with 'loss': the objective's value (null when non-finite, with a "
        "warning); with 'batched' too, each example's loss, a tensor (B,)")
    warnings: list[str] | None = None


class GraphResponse(BaseModel):
    """A registered graph: its id and canonical spec (an ONNX model: its words too)."""

    graph_id: str
    name: str | None = Field(None, description="the model name given at registration; "
                             "absent when none")
    inputs: dict[str, Any]
    output: str
    nodes: list[dict[str, Any]]
    parameters: dict[str, Any] | None = Field(
        None, description="an ONNX model's parameters: name -> {shape, dtype}, never the "
        "values; absent for other graphs")
    outputs: list[str] | None = Field(None, description="an ONNX model's outputs, the first "
                                      "being 'output'")
    opset: int | None = Field(None, description="an ONNX model's opset (default domain)")
    dtype: str | None = Field(None, description="an ONNX model's element type: its requests' "
                              "default dtype")


class GraphSummary(BaseModel):
    """One registered graph in ``GET /v1/graphs``."""

    graph_id: str
    name: str | None = Field(None, description="a model name bound to the graph (the first "
                             "in sort order when it has several); absent when none")
    kind: Literal["spec", "expression", "mlp", "onnx"] = Field(
        description="how the graph was first registered ('spec' for a graph stored by a "
                    "version that did not record it)")
    inputs: dict[str, Any] = Field(description="canonical inputs: name -> {shape?}")
    output: str


class GraphList(BaseModel):
    """A page of ``GET /v1/graphs``, in graph id order."""

    graphs: list[GraphSummary]
    next: str | None = Field(description="the cursor of the next page (pass it as "
                             "?cursor=), null on the last page")


class MLPLayerGradients(BaseModel):
    weight: TensorOut
    bias: TensorOut


class MLPGradients(BaseModel):
    """Each key only when asked for: ``layers`` with ``wrt: ["weights"]`` (the default),
    ``inputs`` with ``"inputs"``."""

    layers: list[MLPLayerGradients] | None = None
    inputs: TensorOut | None = None


class MLPResponse(BaseModel):
    output: TensorOut
    loss: float | None = None
    gradients: MLPGradients
    graph_id: str
    cache: CacheResult
    warnings: list[str] | None = None


class OpAttr(BaseModel):
    name: str
    kind: str
    default: Any
    doc: str


class OpInfo(BaseModel):
    name: str
    arity: int = Field(description="the number of args; with variadic, the fewest")
    variadic: bool = Field(False, description="the last arg repeats: the op takes arity or "
                                               "more args (concat, stack)")
    args: list[dict[str, Any]]
    attrs: list[OpAttr]
    category: str
    gradient: str = Field(description="one line: the op and its local gradient")


class OpsResponse(BaseModel):
    ops: list[OpInfo]
    backend: str = Field(description="the array backend computing: numpy, cupy or "
                                     "array-api-strict (GRADSERVE_BACKEND)")
    device: str = Field(description="where it computes: cpu, or cuda:N (the GPU's name)")


class ReadyResponse(BaseModel):
    status: Literal["ready", "starting", "draining"]
    store: Literal["ok", "degraded"]
    store_backend: str
    backend: str = Field(description="the array backend computing: numpy, cupy or "
                                     "array-api-strict (GRADSERVE_BACKEND)")
    device: str = Field(description="where it computes: cpu, or cuda:N (the GPU's name)")


class ProblemItem(BaseModel):
    loc: list[str | int]
    msg: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[ProblemItem] | None = None
