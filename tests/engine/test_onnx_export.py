"""ONNX export (service/engine/onnx/export.py): for every op of the registry, public and
internal, the exported forward model and the exported forward-and-backward model run in
onnxruntime and give gradserve's numbers (float64 and float32).

The cases are the op tests' own tables (``tests/engine/test_ops.py``'s ``DOMAINS``, and
``tests/engine/test_internal_ops.py``'s ``INTERNAL`` for the internal ops, each made visible
for its test as there); a gradient model of a public op also runs the internal ops its
backward graph is built from.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from service.engine import (
    REGISTRY,
    Query,
    compile_graph,
    execute,
    graph_from_dict,
    parse_expression,
)
from service.engine.errors import ProblemError
from service.engine.limits import DEFAULT_LIMITS, Deadline
from service.engine.onnx import compile_model, export_ops, import_model
from service.engine.onnx.export import Export, export_model
from tests.engine.test_internal_ops import INTERNAL
from tests.engine.test_ops import DOMAINS, L, _instance, _zero_size_variants

PUBLIC = [pytest.param(n, i, c, id=f"{n}-{i}") for n, cs in DOMAINS.items()
          for i, c in enumerate(cs)]
HIDDEN = [pytest.param(n, i, c, id=f"{n}-{i}") for n, cs in INTERNAL.items()
          for i, c in enumerate(cs)]
TOL = {"float64": {"rtol": 1e-9, "atol": 1e-12}, "float32": {"rtol": 2e-4, "atol": 2e-5}}


def run_model(model: onnx.ModelProto, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
    onnx.checker.check_model(model, full_check=True)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    wanted = {i.name for i in sess.get_inputs()}
    outs = sess.run(None, {k: v for k, v in feeds.items() if k in wanted})
    return {o.name: v for o, v in zip(sess.get_outputs(), outs)}


def feeds_for(plan: Any, values: dict[str, Any], dtype: str) -> dict[str, np.ndarray]:
    return {n: (np.asarray(v, dtype=np.int64) if n in plan.label_inputs
                else np.asarray(v, dtype=dtype)) for n, v in values.items()}


def check_export(plan: Any, values: dict[str, Any], floats: list[str], dtype: str) -> None:
    shapes = {n: np.shape(v) for n, v in values.items()}
    tol = TOL[dtype]
    feeds = feeds_for(plan, values, dtype)
    forward = run_model(export_model(plan, Export(shapes=shapes, dtype=dtype)), feeds)
    ours = execute(plan, feeds, Query(wrt=(), dtype=dtype))
    assert forward["output"].dtype == np.dtype(dtype)
    np.testing.assert_allclose(forward["output"], ours.output, **tol, err_msg="forward")

    rng = np.random.default_rng(5)
    out_shape = np.shape(ours.output)
    upstream = None if out_shape == () else rng.standard_normal(out_shape).astype(dtype)
    model = export_model(plan, Export(shapes=shapes, gradients=True, dtype=dtype))
    both = run_model(model, {**feeds, **({} if upstream is None else {"upstream": upstream})})
    ours = execute(plan, feeds, Query(upstream=upstream, dtype=dtype))
    np.testing.assert_allclose(both["output"], ours.output, **tol, err_msg="output")
    assert {o.name for o in model.graph.output} == {"output", *(f"grad:{n}" for n in floats)}
    for n in floats:
        np.testing.assert_allclose(both[f"grad:{n}"], ours.gradients[n], **tol,
                                   err_msg=f"grad:{n}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("name", "i", "case"), PUBLIC)
def test_public_op_exports(name: str, i: int, case: Any, dtype: str) -> None:
    plan, values, floats = _instance(name, i, case)
    check_export(plan, values, floats, dtype)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize(("name", "i", "case"), HIDDEN)
def test_internal_op_exports(name: str, i: int, case: Any, dtype: str,
                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRY._ops, name, REGISTRY.op(name))
    plan, values, floats = _instance(name, i, case)
    if name == "extreme_share":
        values["a1"] = np.max(values["a0"], axis=1, keepdims=True)
    check_export(plan, values, floats, dtype)


def test_every_op_has_a_lowering() -> None:
    ops = {op.name for op in (*REGISTRY, *REGISTRY.internal_ops())}
    assert ops - set(export_ops.TABLE) == set()
    assert set(export_ops.TABLE) - ops == set(), "lowerings of unknown ops"


def test_an_op_without_a_lowering_is_a_422_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    plan, values, _ = _instance("softplus", 0, DOMAINS["softplus"][0])
    monkeypatch.delitem(export_ops.TABLE, "sigmoid")  # softplus's VJP is made of sigmoid
    export_model(plan, Export(shapes={n: np.shape(v) for n, v in values.items()}))
    with pytest.raises(ProblemError) as info:
        export_model(plan, Export(shapes={n: np.shape(v) for n, v in values.items()},
                                  gradients=True))
    assert info.value.status == 422 and "'sigmoid'" in info.value.detail


def _mlp_plan() -> Any:
    spec = {"inputs": {"x": {"shape": [4, 3]}, "W": {"shape": [2, 3]}, "b": {"shape": [2]}},
            "nodes": [{"id": "h", "op": "linear", "args": ["x", "W", "b"]},
                      {"id": "out", "op": "tanh", "args": ["h"]}],
            "output": "out"}
    return compile_graph(graph_from_dict(spec), REGISTRY)


@pytest.mark.parametrize("kind", ["mse", "softmax_cross_entropy", "hinge"])
def test_gradient_model_with_a_loss(kind: str) -> None:
    plan = _mlp_plan()
    rng = np.random.default_rng(0)
    values = {"x": rng.standard_normal((4, 3)), "W": rng.standard_normal((2, 3)),
              "b": rng.standard_normal(2)}
    targets = rng.standard_normal((4, 2)) if kind == "mse" else np.array([0, 1, 1, 0])
    model = export_model(plan, Export(gradients=True, wrt=("W", "x"), loss=kind))
    names = [i.name for i in model.graph.input]
    assert "targets" in names and "upstream" not in names
    got = run_model(model, {**values, "targets": targets})
    ours = execute(plan, values, Query(wrt=("W", "x"), loss=(kind, targets)))
    assert set(got) == {"output", "loss", "grad:W", "grad:x"}
    np.testing.assert_allclose(got["loss"], ours.loss, rtol=1e-12)
    np.testing.assert_allclose(got["output"], ours.output, rtol=1e-12)
    for n in ("W", "x"):
        np.testing.assert_allclose(got[f"grad:{n}"], ours.gradients[n], rtol=1e-10, atol=1e-14)


def test_expression_inputs_default_to_scalars() -> None:
    graph = parse_expression("1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))", REGISTRY).graph
    plan = compile_graph(graph, REGISTRY)
    values = {"w0": 2.0, "x0": -1.0, "w1": -3.0, "x1": -2.0, "w2": -3.0}
    got = run_model(export_model(plan, Export(gradients=True)),
                    {n: np.asarray(v) for n, v in values.items()})
    assert abs(float(got["output"]) - 0.7310585786300049) < 1e-15
    assert abs(float(got["grad:w0"]) + 0.19661193324148185) < 1e-15
    assert abs(float(got["grad:x1"]) + 0.5898357997244456) < 1e-15


def test_wrt_chooses_the_gradient_outputs() -> None:
    model = export_model(_mlp_plan(), Export(gradients=True, wrt=("x",)))
    assert [o.name for o in model.graph.output] == ["output", "grad:x"]
    assert [i.name for i in model.graph.input] == ["W", "b", "x", "upstream"]


@pytest.mark.parametrize(("spec", "status", "words"), [
    (Export(wrt=("nope",), gradients=True), 422, "wrt: 'nope'"),
    (Export(shapes={"x": (5, 3)}), 422, "declared [4, 3]"),
    (Export(shapes={"y": (1,)}), 422, "'y' is not an input"),
    (Export(dtype="float16"), 422, "dtype"),
    (Export(loss="l1", gradients=True), 422, "loss"),
])
def test_bad_exports_name_what_is_wrong(spec: Export, status: int, words: str) -> None:
    with pytest.raises(ProblemError) as info:
        export_model(_mlp_plan(), spec)
    assert info.value.status == status and words in info.value.detail


def test_the_constants_and_nodes_written_are_bounded_before_the_file_is_made() -> None:
    spec = {"inputs": {"x": {"shape": [64, 64]}},
            "nodes": [{"id": "d", "op": "dropout", "args": ["x"],
                       "attrs": {"p": 0.5, "seed": 1, "training": True}}],
            "output": "d"}
    plan = compile_graph(graph_from_dict(spec), REGISTRY)
    export_model(plan)  # the mask: 64*64 float64 = 32 KiB
    with pytest.raises(ProblemError) as info:
        export_model(plan, limits=replace(DEFAULT_LIMITS, max_memory_bytes=16 << 10))
    assert info.value.status == 413 and "GRADSERVE_MAX_MEMORY_BYTES" in info.value.detail
    conv, values, _ = _instance("conv2d", 0, DOMAINS["conv2d"][0])
    shapes = {n: np.shape(v) for n, v in values.items()}
    with pytest.raises(ProblemError) as info:
        export_model(conv, Export(shapes=shapes, gradients=True),
                     limits=replace(DEFAULT_LIMITS, max_nodes=1))
    assert info.value.status == 413 and "GRADSERVE_MAX_NODES" in info.value.detail


def test_a_float32_model_exports_in_float64_too() -> None:
    """An imported model's parameters cast into the asked dtype; float64 runs Cody's erf
    and the per-tap windows where onnxruntime has no float64 kernels."""
    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "onnx"
    for name in ("transformer", "cnn"):
        plan = compile_model(import_model((fixtures / f"{name}.onnx").read_bytes()), REGISTRY)
        with np.load(fixtures / f"{name}.npz") as z:
            x = z["x"].astype(np.float64)
        params = plan.model.parameters
        model = export_model(plan, Export(shapes={"x": x.shape}, gradients=True, wrt=("x",),
                                          dtype="float64", tensors=params))
        out_shape = execute(plan, {"x": x}, Query(wrt=(), dtype="float64")).output.shape
        up = np.random.default_rng(2).standard_normal(out_shape)
        got = run_model(model, {"x": x, "upstream": up})
        ours = execute(plan, {"x": x}, Query(wrt=("x",), upstream=up, dtype="float64"))
        assert got["grad:x"].dtype == np.float64
        np.testing.assert_allclose(got["output"], ours.output, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got["grad:x"], ours.gradients["x"], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("name", "case"), _zero_size_variants())
def test_zero_size_arguments_export_too(name: str, case: Any) -> None:
    """Where gradserve runs an op on an empty tensor, its exported models give the same
    (empty, or zero) answers; where it refuses the shapes, the export refuses them the same
    way. (onnxruntime's MatMul, Einsum and Conv crash the process on a sum over an empty
    axis: the export writes such products as the zeros they are.)"""
    names = [f"a{k}" for k in range(len(case.args))]
    values = {n: (np.zeros(a.batch, dtype=np.int64) if isinstance(a, L) else np.ones(a.shape))
              for n, a in zip(names, case.args)}
    spec = {"inputs": {n: {} for n in names},
            "nodes": [{"id": "out", "op": name, "args": names, "attrs": case.attrs}],
            "output": "out"}
    plan = compile_graph(graph_from_dict(spec), REGISTRY)
    shapes = {n: np.shape(v) for n, v in values.items()}
    try:
        plan.specialize(shapes, ())
    except ProblemError:
        with pytest.raises(ProblemError) as info:
            export_model(plan, Export(shapes=shapes))
        assert info.value.status == 422
        return
    floats = [n for n in names if n not in plan.label_inputs]
    for dtype in ("float64", "float32"):  # float32: onnxruntime's own Conv and pools
        check_export(plan, values, floats, dtype)


def test_a_deadline_stops_a_long_export() -> None:
    plan, values, _ = _instance("conv2d", 0, DOMAINS["conv2d"][0])
    shapes = {n: np.shape(v) for n, v in values.items()}
    with pytest.raises(ProblemError) as info:
        export_model(plan, Export(shapes=shapes, gradients=True),
                     deadline=Deadline.after(-1.0))
    assert info.value.status == 503 and "GRADSERVE_REQUEST_DEADLINE_S" in info.value.detail
