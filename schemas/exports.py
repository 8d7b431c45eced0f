"""The query of ``GET /v1/graphs/{graph_id}/onnx``: what the exported ONNX model holds."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

LossType = Literal["softmax_cross_entropy", "hinge", "mse"]


class ExportQuery(BaseModel):
    """Query parameters of the ONNX export, as strings on the wire (``?gradients=true``)."""

    model_config = ConfigDict(extra="forbid")

    gradients: bool = Field(False, description="write the backward graph too: outputs "
                            "'grad:<input>' for the wrt inputs")
    wrt: str | None = Field(None, max_length=4096,
                            description="comma-separated input names, or 'inputs', "
                                        "'parameters', 'all' (default: every float input)")
    loss: LossType | None = Field(None, description="the objective: this loss of the output "
                                  "against a 'targets' input; adds the output 'loss'")
    dtype: Literal["float64", "float32"] | None = Field(
        None, description="the model's element type (default: the graph's own)")
    shape: list[str] = Field(default_factory=list, max_length=256,
                             description="'name:d0,d1,...' per input whose shape is not "
                                         "declared ('name:' for a scalar)")
