"""ONNX models in: bytes → checked model → GraphIR of registry ops + the model's tensors.

:func:`import_model` does the whole import: ``load.py`` parses and refuses (size before
parsing, checker, shape inference, types, domains, control flow, opsets, names), then every
node is looked up in ``table.py``'s lowering table — all of them, before any is lowered, so
an unsupported op is named with the list of supported ones — and lowered by ``lower.py``
and the ``ops_*.py`` modules. :func:`compile_model` compiles the result into a plan that
carries its :class:`~service.engine.model.Model` (graph id: the hash of the packed graph and
tensors). Nothing here runs a model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from service.engine import ir
from service.engine.errors import GraphError
from service.engine.limits import DEFAULT_LIMITS, Limits
from service.engine.model import Model, attach, pack, unpack
from service.engine.onnx import ops_math, ops_nn, ops_shape  # noqa: F401 - they register
from service.engine.onnx.load import ALLOWED_TYPES, Loaded, dims_of, elem_type, load, refuse
from service.engine.onnx.lower import K, Lowerer, T, drop_unused, graph_values, ir_name
from service.engine.onnx.table import lookup, supported

__all__ = ["Imported", "compile_model", "import_model", "supported"]


@dataclass
class Imported:
    graph: ir.GraphIR
    model: Model
    origin: dict[str, Any]  # IR node id -> the ONNX node it came from (for errors)


def import_model(data: bytes, limits: Limits = DEFAULT_LIMITS) -> Imported:
    """Check and lower a serialized ONNX model; every refusal is a 4xx naming the node."""
    loaded = load(data, limits)
    graph = loaded.model.graph
    if len(graph.node) > limits.max_nodes:
        from service.engine.errors import LimitExceeded

        raise LimitExceeded("max_nodes", limits.max_nodes, len(graph.node),
                            "the ONNX model's nodes", loc=("onnx",))
    for node in graph.node:
        if lookup(node.op_type, loaded.opset) is None:
            raise refuse(f"op type {node.op_type} is not supported at opset {loaded.opset}; "
                         f"supported: {' '.join(supported(loaded.opset))}", node=node)
    lw = Lowerer(loaded)
    try:
        inputs = graph_values(lw)
    except FOLD_ERRORS as exc:
        raise refuse(f"an initializer cannot be read: {str(exc)[:200]}") from None
    for node in graph.node:
        _lower_node(lw, node)
    outputs = _outputs(lw, loaded)
    drop_unused(lw, outputs)
    ir_graph = ir.GraphIR(tuple(sorted(lw.inputs)), tuple(lw.nodes), outputs[0])
    model = Model(inputs=tuple(inputs), outputs=tuple(outputs), dtype=loaded.dtype,
                  opset=loaded.opset, parameters=lw.parameters, constants=lw.constants,
                  signature=_signature(loaded, inputs, outputs))
    return Imported(ir_graph, model, lw.origin)


#: What NumPy or onnx may raise while a node's known values are folded (an index out of
#: range, shapes that do not fit): the node is refused by name, never a 500.
FOLD_ERRORS = (ValueError, IndexError, TypeError, KeyError, ZeroDivisionError, OverflowError)


def _lower_node(lw: Lowerer, node: Any) -> None:
    entry = lookup(node.op_type, lw.opset)
    assert entry is not None
    lw.node = node
    try:
        ins = [lw.env[name] if name else None for name in node.input]
        outs = entry.fn(lw, node, ins, lw.attrs(node))
    except FOLD_ERRORS as exc:
        raise refuse(f"cannot be lowered: {str(exc)[:200] or type(exc).__name__}",
                     node=node) from None
    for name, value in zip(node.output, outs):
        if name:
            lw.env[name] = value
    lw.node = None


def _outputs(lw: Lowerer, loaded: Loaded) -> list[str]:
    """Each graph output an IR node named as the output (an identity where the value is
    already named otherwise)."""
    names = []
    for out in loaded.model.graph.output:
        value = lw.env.get(out.name)
        if isinstance(value, K) and value.symbolic:
            raise refuse(f"graph output '{out.name}' holds symbolic dims (a shape computed "
                         "from a dim of any size)", loc=("onnx", "output", out.name))
        if value is None:
            raise refuse(f"graph output '{out.name}' is not computed by any node",
                         loc=("onnx", "output", out.name))
        ref = lw.arg(value)  # a constant output: a constant of the model, or a number
        name = ir_name(out.name, lw.taken)
        lw.nodes.append(ir.NodeIR(name, "identity", (ref,)))
        lw.env[out.name] = T(name, lw.dims(value))
        names.append(name)
    return names


def _signature(loaded: Loaded, inputs: list[str], outputs: list[str]) -> dict[str, Any]:
    graph, info = loaded.model.graph, loaded.value_info

    def one(values: Any, names: list[str]) -> dict[str, Any]:
        return {name: {"shape": list(dims_of(info, v.name) or ()),
                       "dtype": ALLOWED_TYPES.get(elem_type(info, v.name), "float32")}
                for v, name in zip(values, names)}

    return {"inputs": one(graph.input, inputs), "outputs": one(graph.output, outputs)}


def compile_model(imported: Imported, registry: Any, limits: Limits = DEFAULT_LIMITS) -> Any:
    """The plan of an imported model, its Model attached and its graph id the hash of the
    packed form (graph and tensor bytes). A compile error names the ONNX node."""
    from service.engine.compiler import compile_graph

    try:
        plan = compile_graph(imported.graph, registry, limits)
    except GraphError as err:
        raise _reworded(err, imported) from None
    model = imported.model
    blob = pack(plan.canonical, model)
    _, stored = unpack(blob)  # the tensors as views of the packed bytes: held once
    model.parameters, model.constants, model.blob = stored.parameters, stored.constants, blob
    return attach(plan, model)


def _reworded(err: GraphError, imported: Imported) -> GraphError:
    node = imported.origin.get(err.node or "")
    if node is None:
        return err
    return refuse(f"lowered onto registry ops, it fails: {err.detail}", node=node)
