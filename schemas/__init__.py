"""Wire models of the gradserve HTTP API v1 (Pydantic v2). Imports nothing from service/."""

from schemas.exports import ExportQuery
from schemas.graphs import (
    GRAPH_INPUT_SCHEMA,
    GRAPH_JSON_SCHEMA,
    GRAPH_NODE_SCHEMA,
    GraphJSON,
    graph_json_schema,
)
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
    GraphList,
    GraphResponse,
    GraphSummary,
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
from schemas.steps import (
    GraphStepRequest,
    GraphStepResponse,
    MLPStepRequest,
    MLPStepResponse,
    OptimizerState,
)
from schemas.tensors import B64Tensor, FlatTensor, Tensor, TensorOut, tensor_kind

__all__ = [
    "ExportQuery",
    "GRAPH_INPUT_SCHEMA", "GRAPH_JSON_SCHEMA", "GRAPH_NODE_SCHEMA", "GraphJSON",
    "graph_json_schema",
    "B64Tensor", "CheckReport", "FlatTensor", "GradientOptions", "GradientRequest",
    "GradientResponse", "GraphGradientRequest", "GraphList", "GraphResponse",
    "GraphStepRequest", "GraphStepResponse", "GraphSummary",
    "MLPGradients", "MLPLayer", "MLPLayerGradients", "MLPLoss", "MLPRequest",
    "MLPResponse", "MLPStepRequest", "MLPStepResponse", "OpAttr", "OpInfo", "OpsResponse",
    "OptimizerState", "Problem", "ProblemItem",
    "ReadyResponse", "RegisterRequest", "Tensor", "TensorOut", "TraceRecord", "tensor_kind",
]
