"""Wire models of the gradserve HTTP API v1 (Pydantic v2). Imports nothing from service/."""

from schemas.graphs import GRAPH_JSON_SCHEMA, GraphInput, GraphJSON, GraphNode, GraphSpec
from schemas.requests import (
    GradientOptions,
    GradientRequest,
    GraphGradientRequest,
    MLPLayer,
    MLPLoss,
    MLPRequest,
    RegisterRequest,
)
from schemas.responses import (
    CheckReport,
    GradientResponse,
    GraphResponse,
    MLPGradients,
    MLPLayerGradients,
    MLPResponse,
    OpAttr,
    OpInfo,
    OpsResponse,
    Problem,
    ProblemItem,
    ReadyResponse,
    TraceRecord,
)
from schemas.tensors import B64Tensor, FlatTensor, Tensor, TensorOut, tensor_kind

__all__ = [
    "GRAPH_JSON_SCHEMA", "GraphJSON",
    "B64Tensor", "CheckReport", "FlatTensor", "GradientOptions", "GradientRequest",
    "GradientResponse", "GraphGradientRequest", "GraphInput", "GraphNode", "GraphResponse",
    "GraphSpec", "MLPGradients", "MLPLayer", "MLPLayerGradients", "MLPLoss", "MLPRequest",
    "MLPResponse", "OpAttr", "OpInfo", "OpsResponse", "Problem", "ProblemItem",
    "ReadyResponse", "RegisterRequest", "Tensor", "TensorOut", "TraceRecord", "tensor_kind",
]
