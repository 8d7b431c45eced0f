"""Registering an ONNX model (``POST /v1/graphs`` with ``application/onnx`` bytes or JSON
``{"onnx": "<base64>"}``) and the words a model adds to a registered graph's body.

The bytes are checked against GRADSERVE_MAX_MODEL_BYTES before anything else (the base64
text by its decoded length, before it is decoded), then imported and compiled by the engine
(``service.engine.onnx``), which refuses the whole model before anything is stored; the L1
alias is the SHA-256 of the bytes, so registering the same model again parses nothing.
"""

from __future__ import annotations

import binascii
import hashlib
from typing import Any

import pybase64

from service.config import Settings
from service.engine import REGISTRY, Plan
from service.engine.onnx import compile_model, import_model
from service.errors import LimitExceeded, Unprocessable
from service.store.cache import GraphCache


def onnx_bytes(text: str, settings: Settings) -> bytes:
    """The model bytes of the JSON form's base64 text (size checked before decoding)."""
    limit = settings.limits.max_model_bytes
    decoded = len(text) * 3 // 4
    if decoded > limit + 2:
        raise LimitExceeded("max_model_bytes", limit, decoded, "the ONNX model's size (bytes)",
                            loc=("onnx",))
    try:
        return pybase64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise Unprocessable("onnx: not base64 (the standard alphabet, padded) of a serialized "
                            "ModelProto", loc=("onnx",)) from None


def register_onnx(data: bytes, cache: GraphCache, settings: Settings, *,
                  name: str | None = None) -> tuple[Plan, bool]:
    """Import, compile and store a model; returns (plan, created)."""
    limits = settings.limits
    if len(data) > limits.max_model_bytes:
        raise LimitExceeded("max_model_bytes", limits.max_model_bytes, len(data),
                            "the ONNX model's size (bytes)", loc=("onnx",))
    alias = "onnx:" + hashlib.sha256(data).hexdigest()

    def build() -> Plan:
        return compile_model(import_model(data, limits), REGISTRY, limits)  # type: ignore[no-any-return]

    return cache.register(alias, build, kind="onnx")


def graph_body(plan: Plan) -> dict[str, Any]:
    """A registered graph's body: its canonical spec and, for a model, its words (inputs
    with their declared shapes and dtypes, parameters' shapes and dtypes, outputs, opset)."""
    body = {"graph_id": plan.graph_id, **plan.canonical}
    model = plan.model
    if model is not None:
        sig = model.signature
        body["inputs"] = sig.get("inputs") or {n: {} for n in model.inputs}
        body["parameters"] = model.describe()
        body["outputs"] = list(model.outputs)
        body["opset"] = model.opset
        body["dtype"] = model.dtype
    return body
