"""A registered graph written as an ONNX model: the forward graph, or the forward and
backward graph as one model (docs/onnx.md, "Export").

The export walks the same joint graph a gradient request runs (``joint.build_joint``: the
forward nodes, then the backward graph ``autodiff.backprop`` builds out of registry ops,
internal ones included), specialized to static input shapes, and writes every slot it
needs through its op's lowering (``export_ops.TABLE``, with ``export_nn`` and
``export_windows``). So the
model computes what gradserve computes, op for op. Its outputs are ``output``, ``loss``
(with a loss) and ``grad:<input>`` for each ``wrt`` input; its inputs are the graph's own,
``upstream`` (a non-scalar output without a loss) and ``targets`` (with a loss). Every op
is checked before anything is written: one without a lowering is a 422 naming it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from service.engine import loss as L
from service.engine.compiler import Plan, Want, infer_shapes
from service.engine.errors import LimitExceeded, Unprocessable
from service.engine.joint import Joint, build_joint
from service.engine.limits import DEFAULT_LIMITS, Deadline, Limits
from service.engine.onnx.export_emit import ELEMENT, NODES_PER_GRAPH_NODE, Emitter
from service.engine.onnx.export_native import TABLE as _NATIVE  # noqa: F401 - wraps windows'
from service.engine.onnx.export_nn import TABLE as _NN  # noqa: F401 - they fill TABLE
from service.engine.onnx.export_ops import TABLE
from service.engine.onnx.export_windows import TABLE as _WINDOWS  # noqa: F401
from service.engine.registry import Shape, size_of
from service.engine.schedule import schedule

OPSET = 18
TICK = 256  # tape slots written between two deadline checks
PRODUCER = "gradserve"


@dataclass(frozen=True)
class Export:
    """What to write: ``gradients`` with respect to ``wrt`` (None: every float input),
    the objective ``loss`` (a loss type) if any, in ``dtype``, for these input shapes
    (an input not named here: its declared shape; no shape declared: a scalar)."""

    shapes: Mapping[str, Shape] | None = None
    gradients: bool = False
    wrt: tuple[str, ...] | None = None
    loss: str | None = None
    dtype: str = "float64"
    # Inputs written into the model as initializers (an imported model's parameters and
    # constants); those in ``feedable`` are graph inputs too, so a run may override them.
    tensors: Mapping[str, Any] | None = None
    feedable: frozenset[str] = frozenset()


def export_model(plan: Plan, spec: Export = Export(), limits: Limits = DEFAULT_LIMITS,
                 deadline: Deadline | None = None) -> onnx.ModelProto:
    """The ONNX model of ``plan`` as ``spec`` asks; ProblemErrors name what is wrong.
    ``deadline`` is checked every few hundred nodes written (a 503 past it)."""
    if spec.dtype not in ELEMENT:
        raise Unprocessable(f"dtype: must be float64 or float32, got {spec.dtype[:20]!r}",
                            loc=("dtype",))
    tensors = spec.tensors or {}
    shapes = input_shapes(plan, {**{n: np.shape(t) for n, t in tensors.items()},
                                 **(spec.shapes or {})})
    target = plan
    names = {n: n for n in plan.input_order}
    if spec.loss is not None:
        target = L.loss_plan(plan, spec.loss)
        shapes[L.TARGETS] = _targets_shape(plan, shapes, spec.loss)
        names[L.TARGETS] = "targets" if "targets" not in names else L.TARGETS
    wrt = _wrt(plan, spec)
    want = Want(wrt=wrt, grads=bool(wrt), fetch=(plan.output,) if spec.loss else ())
    joint = build_joint(target, shapes, infer_shapes(target, shapes, limits=None), want)
    steps = schedule(target, joint, want, 0).steps
    _check(plan, joint, steps, limits)
    return _write(plan, target, joint, steps, names, spec, wrt, limits, deadline)


def input_shapes(plan: Plan, given: Mapping[str, Shape]) -> dict[str, Shape]:
    for name in given:
        if name not in plan.inputs:
            known = ", ".join(plan.input_order) or "none"
            raise Unprocessable(f"shape: '{name[:64]}' is not an input of the graph "
                                f"(inputs: {known})", loc=("shape", name[:64]))
    out = {}
    for name in plan.input_order:
        declared = plan.inputs[name]
        shape = tuple(given.get(name, declared if declared is not None else ()))
        if declared is not None and shape != tuple(declared):
            raise Unprocessable(f"shape: input '{name}' is declared {list(declared)}, not "
                                f"{list(shape)}", loc=("shape", name))
        out[name] = shape
    return out


def _targets_shape(plan: Plan, shapes: Mapping[str, Shape], kind: str) -> Shape:
    out = infer_shapes(plan, shapes, limits=None)[plan.output]
    assert out is not None
    return tuple(out) if kind == "mse" else tuple(out[:1])


def _wrt(plan: Plan, spec: Export) -> tuple[str, ...]:
    if not spec.gradients:
        return ()
    if spec.wrt is None:
        return plan.float_inputs
    for name in spec.wrt:
        if name not in plan.inputs:
            raise Unprocessable(f"wrt: '{name[:64]}' is not an input of the graph (float "
                                f"inputs: {', '.join(plan.float_inputs) or 'none'})",
                                loc=("wrt", name[:64]))
        if name in plan.label_inputs:
            raise Unprocessable(f"wrt: '{name}' holds integer labels and has no gradient",
                                loc=("wrt", name))
    return tuple(dict.fromkeys(spec.wrt))


def _check(plan: Plan, joint: Joint, steps: Sequence[int], limits: Limits) -> None:
    """Every op has a lowering, and the model stays within the request limits."""
    tape = joint.tape
    missing = sorted({tape.ops[s].name for s in steps  # type: ignore[union-attr]
                      if tape.ops[s].name not in TABLE})  # type: ignore[union-attr]
    if missing:
        raise Unprocessable(f"cannot export to ONNX: no ONNX lowering for op(s) "
                            f"{', '.join(repr(m) for m in missing)}", loc=("graph",))
    biggest = max((size_of(tape.shapes[s]) for s in range(len(tape))), default=0)
    if biggest > limits.max_tensor_elements:
        raise LimitExceeded("max_tensor_elements", limits.max_tensor_elements, biggest,
                            "the export's largest tensor (elements)", loc=("shape",))


def _value_info(name: str, elem: int, shape: Shape) -> Any:
    return helper.make_tensor_value_info(name, elem, list(shape))


def _inputs(em: Emitter, target: Plan, joint: Joint, names: Mapping[str, str], spec: Export,
            value: dict[int, str]) -> list[Any]:
    """The model's inputs (an imported model's tensors as initializers, the feedable ones
    listed as inputs too) and the seed: 1 for a scalar output, else the ``upstream`` input."""
    tape, slot_of = joint.tape, joint.slot_of
    inputs = []
    tensors = spec.tensors or {}
    for name in target.input_order:
        slot = slot_of[name]
        value[slot] = names[name]
        label = name in target.label_inputs
        elem = TensorProto.INT64 if label else em.elem
        if label:
            em.labels.add(names[name])
        if name in tensors:
            em.initializer(names[name], tensors[name], label)
            if name not in spec.feedable:
                continue
        inputs.append(_value_info(names[name], elem, tape.shapes[slot]))
    if joint.seed >= 0:
        if joint.out_shape == ():
            value[joint.seed] = em.const(1.0)
        else:
            value[joint.seed] = "upstream"
            inputs.append(_value_info("upstream", em.elem, joint.out_shape))
    return inputs


def _write(plan: Plan, target: Plan, joint: Joint, steps: Sequence[int],
           names: Mapping[str, str], spec: Export, wrt: tuple[str, ...], limits: Limits,
           deadline: Deadline | None) -> onnx.ModelProto:
    tape, slot_of = joint.tape, joint.slot_of
    em = Emitter(spec.dtype, limits.max_memory_bytes, limits.max_nodes * NODES_PER_GRAPH_NODE)
    value: dict[int, str] = {}
    inputs = _inputs(em, target, joint, names, spec, value)
    consts = dict(tape.const_values)

    def read(slot: int) -> str:
        """A slot's value; a constant is written when first read (none goes unused)."""
        if slot not in value:
            value[slot] = em.const(consts[slot])
        return value[slot]

    for i, s in enumerate(steps):
        if deadline is not None and i % TICK == 0:
            deadline.check()
        op = tape.ops[s]
        assert op is not None
        em.origin = tape.names[s]
        if size_of(tape.shapes[s]) == 0:  # an empty result is that (onnxruntime's Expand
            value[s] = em.const(np.zeros(tape.shapes[s]))  # to a zero dim keeps a 1)
            continue
        args = [read(a) for a in tape.args[s]]
        value[s] = TABLE[op.name](em, args, [tape.shapes[a] for a in tape.args[s]],
                                  tape.shapes[s], tape.attrs[s])
    em.origin = ""
    outputs = []

    def emit_output(name: str, slot: int | None, shape: Shape) -> None:
        source = read(slot) if slot is not None else em.const(np.zeros(shape))
        em.nodes.append(helper.make_node("Identity", [source], [name], name=f"out/{name}"))
        outputs.append(_value_info(name, em.elem, shape))

    emit_output("output", slot_of[plan.output], tape.shapes[slot_of[plan.output]])
    if spec.loss is not None:
        emit_output("loss", joint.out, ())
    for name in wrt:
        emit_output(f"grad:{name}", joint.grad_slots.get(name), tape.shapes[slot_of[name]])
    graph = helper.make_graph(em.nodes, plan.graph_id, inputs, outputs, em.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name=PRODUCER)
    model.ir_version = 8
    return model
