"""Reading an ONNX model: size first, then parse, checker, shape inference, and every
refusal that concerns the whole model, all before a node is lowered.

Each refusal is a 4xx naming what is wrong: the node (its ``name`` and ``op_type``), the
value, or the model. The byte size is checked before protobuf sees a byte (413, naming
GRADSERVE_MAX_MODEL_BYTES); declared dims are checked before anything is allocated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import onnx
from google.protobuf.message import DecodeError
from onnx import TensorProto, shape_inference

from service.engine import ir
from service.engine.errors import GraphError, LimitExceeded, Unprocessable
from service.engine.limits import Limits

OPSETS = range(13, 22)  # the default domain's opsets 13 through 21
DEFAULT_DOMAINS = ("", "ai.onnx")
CONTROL_FLOW = ("If", "Loop", "Scan", "SequenceMap")
#: Element types a model's values may have: floats compute, integers and booleans are
#: indices, shapes and conditions.
FLOAT_TYPES = {TensorProto.FLOAT: "float32", TensorProto.DOUBLE: "float64"}
INDEX_TYPES = {TensorProto.INT64: "int64", TensorProto.INT32: "int32",
               TensorProto.BOOL: "bool"}
ALLOWED_TYPES = {**FLOAT_TYPES, **INDEX_TYPES}


@dataclass
class Loaded:
    """A checked model: the proto (shapes inferred) and what the lowering needs of it."""

    model: onnx.ModelProto
    opset: int
    value_info: dict[str, Any]  # value name -> its TypeProto (inputs, inferred, outputs)
    dtype: str  # the model's float element type


def refuse(detail: str, *, node: Any = None, loc: tuple[Any, ...] = ("onnx",)) -> GraphError:
    """A 422 naming the ONNX node (its name and op_type) when there is one."""
    if node is not None:
        label = f"node '{node.name}' ({node.op_type})" if node.name else f"a {node.op_type} node"
        return GraphError(f"{label}: {detail}", node=(node.name or node.op_type)[:128],
                          loc=loc)
    return GraphError(detail, loc=loc)


def load(data: bytes, limits: Limits) -> Loaded:
    """Parse and check ``data`` (a serialized ModelProto), refusing the whole model at the
    first problem; nothing is lowered or run here."""
    if len(data) > limits.max_model_bytes:
        raise LimitExceeded("max_model_bytes", limits.max_model_bytes, len(data),
                            "the ONNX model's size (bytes)", loc=("onnx",))
    model = onnx.ModelProto()
    try:
        model.ParseFromString(bytes(data))
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise refuse(f"the body is not an ONNX model (a serialized ModelProto): "
                     f"{str(exc)[:120] or 'truncated or corrupt bytes'}") from None
    if not model.HasField("graph") or not model.opset_import:
        raise refuse("the body is not an ONNX model (a serialized ModelProto): no graph or "
                     "no opset_import")
    opset = _check_opsets(model)
    _check_external(model)
    _check_nodes(model.graph)
    _check_names(model.graph)
    _check_declared(model.graph, limits)
    light = _light(model)
    try:
        onnx.checker.check_model(light)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise refuse(f"the ONNX checker refuses the model: {_first_line(exc)}") from None
    try:
        inferred = shape_inference.infer_shapes(light, check_type=True, strict_mode=True,
                                                data_prop=True)
    except (shape_inference.InferenceError, onnx.checker.ValidationError, ValueError,
            RuntimeError) as exc:
        raise refuse("the model's declared shapes or types contradict ONNX shape inference: "
                     f"{_first_line(exc)}") from None
    info = _value_info(inferred.graph)
    _check_types(model.graph, info, limits)
    return Loaded(model, opset, info, _float_type(model.graph, info))


#: A float initializer bigger than this is left out of what the checker and shape inference
#: see (each serializes the whole model): it stands there as a graph input of its type and
#: shape, and its bytes are checked against its dims here.
LIGHT_BYTES = 1 << 16


def _light(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as the checker and shape inference need it: big float initializers as
    typed graph inputs (their data plays no part in either), everything else as it is."""
    graph = model.graph
    big = [t for t in graph.initializer
           if t.data_type in FLOAT_TYPES and math.prod(t.dims) * 4 > LIGHT_BYTES]
    if not big:
        return model
    for t in big:
        _check_data(t)
    light = onnx.ModelProto()
    light.CopyFrom(model)
    names = {t.name for t in big}
    keep = [t for t in light.graph.initializer if t.name not in names]
    del light.graph.initializer[:]
    light.graph.initializer.extend(keep)
    light.graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type,
                                                                list(t.dims)) for t in big)
    return light


def _check_data(t: TensorProto) -> None:
    """A float initializer's data is as long as its dims say (what the checker would)."""
    count = math.prod(t.dims)
    itemsize = 4 if t.data_type == TensorProto.FLOAT else 8
    if t.HasField("raw_data"):  # (each read of raw_data copies it: read once)
        ok = len(t.raw_data) == count * itemsize
    else:
        ok = len(t.float_data if t.data_type == TensorProto.FLOAT else t.double_data) == count
    if not ok:
        raise refuse(f"initializer '{t.name}' holds data of another size than its dims "
                     f"{list(t.dims)} say", loc=("onnx", "initializer", t.name))


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def _check_opsets(model: onnx.ModelProto) -> int:
    opset = None
    for imp in model.opset_import:
        if imp.domain in DEFAULT_DOMAINS:
            opset = imp.version
    if opset is None:
        raise refuse("the model imports no opset of the default ONNX domain")
    if opset not in OPSETS:
        raise refuse(f"opset {opset} of the default domain is not supported: opsets "
                     f"{OPSETS.start} through {OPSETS.stop - 1} are", loc=("onnx", "opset"))
    return opset


def _check_external(model: onnx.ModelProto) -> None:
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL or t.external_data:
            raise refuse(f"initializer '{t.name}' keeps its data in an external file; send "
                         "one self-contained model (onnx.save_model(..., "
                         "save_as_external_data=False))", loc=("onnx", "initializer", t.name))
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t") and (attr.t.data_location == TensorProto.EXTERNAL):
                raise refuse("its tensor attribute keeps its data in an external file",
                             node=node)


def _check_nodes(graph: onnx.GraphProto) -> None:
    """Domains and control flow, for every node, before the checker runs."""
    for node in graph.node:
        if node.domain not in DEFAULT_DOMAINS:
            raise refuse(f"domain '{node.domain}' is not supported: only the default ONNX "
                         "domain is (no custom or contrib ops)", node=node)
        if node.op_type in CONTROL_FLOW or any(
                a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                for a in node.attribute):
            raise refuse("control flow (If, Loop, Scan: subgraphs) is not supported; export "
                         "the model with its loops unrolled and branches resolved", node=node)
        if node.op_type == "Constant" and any(a.name == "sparse_value" for a in node.attribute):
            raise refuse("sparse constants are not supported", node=node)


def _check_names(graph: onnx.GraphProto) -> None:
    """Every value defined once; no initializer that is also a graph input."""
    inputs = {i.name for i in graph.input}
    for t in graph.initializer:
        if t.name in inputs:
            raise refuse(f"initializer '{t.name}' shadows the graph input of the same name "
                         "(a default value for an input is not supported: make it either an "
                         "input or an initializer)", loc=("onnx", "initializer", t.name))
    seen: set[str] = set()
    defined = [*(i.name for i in graph.input), *(t.name for t in graph.initializer),
               *(o for n in graph.node for o in n.output if o)]
    for name in defined:
        if name in seen:
            raise refuse(f"value '{name}' is defined more than once (duplicate value names)",
                         loc=("onnx", "value", name))
        seen.add(name)


def _check_declared(graph: onnx.GraphProto, limits: Limits) -> None:
    """Declared dims of initializers, inputs and outputs within the limits, before the
    checker or shape inference looks at them."""
    for t in graph.initializer:
        _check_size(tuple(t.dims), f"initializer '{t.name}'", limits)
    for v in (*graph.input, *graph.output, *graph.value_info):
        if v.type.HasField("tensor_type") and v.type.tensor_type.HasField("shape"):
            dims = tuple(d.dim_value for d in v.type.tensor_type.shape.dim
                         if d.HasField("dim_value"))
            _check_size(dims, f"value '{v.name}'", limits)


def _value_info(graph: onnx.GraphProto) -> dict[str, Any]:
    info = {v.name: v.type for v in graph.value_info}
    info.update({v.name: v.type for v in graph.input})
    info.update({v.name: v.type for v in graph.output})
    return info


def elem_type(info: dict[str, Any], name: str) -> int:
    t = info.get(name)
    return t.tensor_type.elem_type if t is not None and t.HasField("tensor_type") else 0


def dims_of(info: dict[str, Any], name: str) -> tuple[int | str | None, ...] | None:
    """A value's inferred dims: ints, symbol names, None for an unknown dim; None when its
    rank is unknown."""
    t = info.get(name)
    if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return tuple(out)


def _check_types(graph: onnx.GraphProto, info: dict[str, Any], limits: Limits) -> None:
    """Element types a model may use, and declared dims within the limits."""
    for t in graph.initializer:
        _check_type(t.data_type, f"initializer '{t.name}'", ("onnx", "initializer", t.name))
        _check_size(tuple(t.dims), f"initializer '{t.name}'", limits)
    for v in (*graph.input, *graph.output):
        _check_type(elem_type(info, v.name), f"value '{v.name}'", ("onnx", "value", v.name))
        dims = dims_of(info, v.name) or ()
        _check_size(tuple(d for d in dims if isinstance(d, int)), f"value '{v.name}'", limits)
    for node in graph.node:
        for name in node.output:
            if name and name in info:
                et = elem_type(info, name)
                if et and et not in ALLOWED_TYPES:
                    raise refuse(f"its output '{name}' has element type "
                                 f"{TensorProto.DataType.Name(et)}; " + _TYPES_TEXT, node=node)
                dims = dims_of(info, name) or ()
                _check_size(tuple(d for d in dims if isinstance(d, int)),
                            f"value '{name}' (node '{node.name or node.op_type}')", limits)


_TYPES_TEXT = ("supported: float32 and float64 models (int64/int32/bool for indices, shapes "
               "and conditions); float16, bfloat16 and int8 models are not")


def _check_type(et: int, what: str, loc: tuple[Any, ...]) -> None:
    if et not in ALLOWED_TYPES:
        name = TensorProto.DataType.Name(et) if et else "an unknown type"
        raise refuse(f"{what} has element type {name}; {_TYPES_TEXT}", loc=loc)


def _check_size(dims: tuple[int, ...], what: str, limits: Limits) -> None:
    if any(d < 0 or d > ir.MAX_DIM for d in dims):
        raise Unprocessable(f"{what}: a dim is out of range [0, 2^53]", loc=("onnx",))
    size = math.prod(dims)
    if size > limits.max_tensor_elements:
        raise LimitExceeded("max_tensor_elements", limits.max_tensor_elements, size,
                            f"{what}'s declared elements", loc=("onnx",))


def _float_type(graph: onnx.GraphProto, info: dict[str, Any]) -> str:
    """The model's element type: its first float input's (else first float output's)."""
    for v in (*graph.input, *graph.output):
        et = elem_type(info, v.name)
        if et in FLOAT_TYPES:
            return FLOAT_TYPES[et]
    return "float32"
