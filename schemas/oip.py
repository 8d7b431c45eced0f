"""Wire models of the Open Inference Protocol (KServe v2) endpoints under ``/v2``.

A model is a registered graph. The request's JSON part is validated here; element data
(``data``) is kept as parsed JSON and binary data is not seen at all: the service's OIP codec
turns both into NumPy in one step, so a large tensor is never walked element by element
by Pydantic.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StrictBool,
    StrictStr,
    WithJsonSchema,
)

from schemas.bounds import MaxItems
from schemas.requests import Activation, LossType, ModelName
from schemas.tensors import MAX_NDIM, NESTED_REF, Dim, Integral

#: The datatypes gradserve accepts and returns (OIP's names).
OIPDatatype = Literal["FP32", "FP64", "INT32", "INT64"]
TensorName = Annotated[StrictStr, Field(min_length=1, max_length=256)]
#: OIP parameters: a small map (its values are read one by one, by name).
Parameters = Annotated[dict[str, Any], MaxItems(64), WithJsonSchema({
    "type": "object", "description": "OIP parameters; gradserve reads binary_data_size "
    "(inputs), binary_data (outputs) and binary_data_output (request)"})]
_DATA_SCHEMA = {"anyOf": [{"$ref": NESTED_REF}, {"type": "null"}],
                "description": "the elements in row-major order, flat or nested; absent when "
                "parameters.binary_data_size says they follow the JSON"}


class InferInputTensor(BaseModel):
    """One input: a graph input by name, or ``grad:output`` (the upstream gradient)."""

    model_config = ConfigDict(extra="forbid")

    name: TensorName
    shape: Annotated[list[Dim], Field(max_length=MAX_NDIM)]
    # Checked by the service, so that a wrong one is named in the message with the input.
    datatype: Annotated[StrictStr, WithJsonSchema(
        {"type": "string", "enum": ["FP32", "FP64", "INT32", "INT64"]})]
    parameters: Parameters | None = None
    data: Annotated[Any, WithJsonSchema(_DATA_SCHEMA)] = None


class InferRequestedOutput(BaseModel):
    """``output`` or ``grad:<input>``; ``parameters.binary_data`` asks for binary data."""

    model_config = ConfigDict(extra="forbid")

    name: TensorName
    parameters: Parameters | None = None


class InferRequest(BaseModel):
    """``POST /v2/models/{name}/infer``: the JSON part of the body."""

    model_config = ConfigDict(extra="forbid")

    id: StrictStr | None = None
    # Sent by KServe's SDK (InferRequest.to_rest): checked against the path, then ignored.
    model_name: Annotated[StrictStr, Field(max_length=256)] | None = None
    model_version: Annotated[StrictStr, Field(max_length=64)] | None = None
    parameters: Parameters | None = None
    # A graph's inputs and 'grad:output'; its output and a gradient per input: at most as
    # many as the graph may have nodes, plus one.
    inputs: Annotated[list[InferInputTensor], MaxItems("max_nodes", plus=1)]
    outputs: Annotated[list[InferRequestedOutput], MaxItems("max_nodes", plus=1)] | None = None


class InferOutputTensor(BaseModel):
    name: str
    shape: list[int]
    datatype: OIPDatatype
    parameters: dict[str, Any] | None = None
    data: list[Any] | None = None


class InferResponse(BaseModel):
    """The JSON part of an infer response (binary outputs follow it in the body)."""

    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[InferOutputTensor]


class TensorMetadata(BaseModel):
    name: str
    datatype: OIPDatatype
    shape: list[int] = Field(description="-1 for a dimension the model does not fix")
    optional: bool | None = Field(None, description="an ONNX model's parameter: the model's "
                                  "own value when a request does not send it")


class ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[TensorMetadata]
    outputs: list[TensorMetadata]


class ModelConfigTensor(BaseModel):
    name: str
    data_type: Literal["TYPE_FP32", "TYPE_FP64", "TYPE_INT32", "TYPE_INT64"]
    dims: list[int] = Field(description="-1 for a dimension the model does not fix")
    optional: bool | None = Field(None, description="an ONNX model's parameter (an optional "
                                  "input, as Triton's configuration marks one)")


class ModelConfig(BaseModel):
    """``GET /v2/models/{name}/config``: a minimal Triton model configuration."""

    name: str
    platform: str
    backend: str
    version_policy: dict[str, Any]
    max_batch_size: int
    input: list[ModelConfigTensor]
    output: list[ModelConfigTensor]


class RepositoryIndexRequest(BaseModel):
    """``POST /v2/repository/index``: an optional body."""

    model_config = ConfigDict(extra="forbid")

    ready: StrictBool | None = None


class RepositoryIndexEntry(BaseModel):
    name: str
    version: str
    state: Literal["READY"]


class ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class OIPError(BaseModel):
    """Every error under /v2: what OIP clients (tritonclient, KServe's SDK) parse."""

    error: str


class ModelReady(BaseModel):
    name: str
    ready: bool


class ServerHealth(BaseModel):
    live: bool | None = None
    ready: bool | None = None


# --- registering an MLP architecture (POST /v1/mlp/graphs) -------------------------------


class MLPLayerSpec(BaseModel):
    """One ``Linear`` layer without its weights: ``act(x @ W.T + b)``, W (out, in)."""

    model_config = ConfigDict(extra="forbid")

    in_features: Annotated[int, Strict(), Field(ge=1, le=2**31), Integral]
    out_features: Annotated[int, Strict(), Field(ge=1, le=2**31), Integral]
    activation: Activation = "identity"


class MLPGraphRequest(BaseModel):
    """``POST /v1/mlp/graphs``: the architecture the MLP endpoint lowers, registered as a
    graph (so an MLP's gradients can be asked for over /v2 with weights as tensors)."""

    model_config = ConfigDict(extra="forbid")

    layers: Annotated[list[MLPLayerSpec], Field(min_length=1, max_length=64)]
    loss: LossType | None = Field(None, description="the loss node; none: the output is the "
                                  "network's, and OIP clients send grad:output")
    l2: StrictBool = Field(False, description="adds 0.5 * l2 * sum(W**2); l2 is then a "
                           "scalar input of the graph")
    batched: StrictBool = Field(True, description="inputs (batch, in); false: one example "
                                "(in,)")
    name: ModelName | None = None
