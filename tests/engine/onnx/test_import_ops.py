"""Every op type of the lowering table, imported from a model built with onnx.helper:
forward against onnxruntime (float32 rel 1e-5, float64 rel 1e-9, where onnxruntime has the
float64 kernel) and gradients against float64 central differences. An op type of the table
without a case here fails ``test_every_lowered_op_type_has_a_case``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from onnx import helper

from service.engine.onnx.table import TABLE
from tests.engine.onnx.models import (
    central_differences,
    forward,
    gradients,
    model_bytes,
    ort_run,
    plan_of,
)

R = np.random.default_rng(7)


def f(*shape: int, lo: float = -1.5, hi: float = 1.5) -> np.ndarray:
    return R.uniform(lo, hi, shape)


def i64(*v: int) -> np.ndarray:
    return np.asarray(v, dtype=np.int64)


def N(op: str, ins: list[str], outs: list[str] | None = None, **attrs: Any) -> Any:
    return helper.make_node(op, ins, outs or ["y"], **attrs)


# (id, nodes, inputs (float ones cast per dtype), float initializers, int initializers, opset)
CASES: list[tuple[Any, ...]] = [
    ("Add", [N("Add", ["a", "b"])], {"a": f(2, 3), "b": f(3)}, {}, {}, 18),
    ("Sub", [N("Sub", ["a", "b"])], {"a": f(2, 3), "b": f(2, 1)}, {}, {}, 18),
    ("Mul", [N("Mul", ["a", "W"])], {"a": f(2, 3)}, {"W": f(2, 3)}, {}, 18),
    ("Div", [N("Div", ["a", "b"])], {"a": f(2, 3), "b": f(2, 3, lo=0.5, hi=2)}, {}, {}, 18),
    ("Pow", [N("Pow", ["a", "b"])], {"a": f(2, 3, lo=0.5, hi=2), "b": f(2, 3)}, {}, {}, 18),
    ("Neg", [N("Neg", ["a"])], {"a": f(4)}, {}, {}, 18),
    ("Exp", [N("Exp", ["a"])], {"a": f(4)}, {}, {}, 18),
    ("Log", [N("Log", ["a"])], {"a": f(4, lo=0.2, hi=3)}, {}, {}, 18),
    ("Sqrt", [N("Sqrt", ["a"])], {"a": f(4, lo=0.2, hi=3)}, {}, {}, 18),
    ("Abs", [N("Abs", ["a"])], {"a": f(4) + 0.1}, {}, {}, 18),
    ("Reciprocal", [N("Reciprocal", ["a"])], {"a": f(4, lo=0.5, hi=2)}, {}, {}, 18),
    ("Sigmoid", [N("Sigmoid", ["a"])], {"a": f(4)}, {}, {}, 18),
    ("Tanh", [N("Tanh", ["a"])], {"a": f(4)}, {}, {}, 18),
    ("Relu", [N("Relu", ["a"])], {"a": f(2, 4)}, {}, {}, 18),
    ("Sin", [N("Sin", ["a"])], {"a": f(4)}, {}, {}, 18),
    ("Cos", [N("Cos", ["a"])], {"a": f(4)}, {}, {}, 18),
    ("Floor", [N("Floor", ["a"])], {"a": f(4) + 0.01}, {}, {}, 18),
    ("Ceil", [N("Ceil", ["a"])], {"a": f(4) + 0.01}, {}, {}, 18),
    ("Sign", [N("Sign", ["a"])], {"a": f(4) + 0.01}, {}, {}, 18),
    ("Max", [N("Max", ["a", "b"])], {"a": f(2, 3), "b": f(3)}, {}, {}, 18),
    ("Min", [N("Min", ["a", "b"])], {"a": f(2, 3), "b": f(3)}, {}, {}, 18),
    ("LeakyRelu", [N("LeakyRelu", ["a"], alpha=0.2)], {"a": f(5)}, {}, {}, 18),
    ("Elu", [N("Elu", ["a"], alpha=0.7)], {"a": f(5)}, {}, {}, 18),
    ("Softplus", [N("Softplus", ["a"])], {"a": f(5)}, {}, {}, 18),
    ("Erf", [N("Erf", ["a"])], {"a": f(5)}, {}, {}, 18),
    ("Gelu", [N("Gelu", ["a"])], {"a": f(5)}, {}, {}, 20),
    ("Gelu-tanh", [N("Gelu", ["a"], approximate="tanh")], {"a": f(5)}, {}, {}, 20),
    ("Clip", [N("Clip", ["a", "lo", "hi"])], {"a": f(6)}, {"lo": np.asarray(-0.5),
                                                          "hi": np.asarray(0.7)}, {}, 13),
    ("Where", [N("Where", ["c", "a", "b"])], {"c": np.asarray([True, False, True]),
                                              "a": f(2, 3), "b": f(3)}, {}, {}, 18),
    ("MatMul", [N("MatMul", ["a", "W"])], {"a": f(2, 3, 4)}, {"W": f(4, 5)}, {}, 18),
    ("Gemm", [N("Gemm", ["a", "W", "c"], transB=1)], {"a": f(2, 3)},
     {"W": f(4, 3), "c": f(4)}, {}, 18),
    ("Gemm-alpha", [N("Gemm", ["a", "W", "c"], transA=1, alpha=0.5, beta=2.0)],
     {"a": f(3, 2)}, {"W": f(3, 4), "c": f(2, 4)}, {}, 13),
    ("Conv", [N("Conv", ["x", "W", "c"], pads=[1, 1, 1, 1], strides=[2, 1])],
     {"x": f(1, 2, 5, 5)}, {"W": f(3, 2, 3, 3), "c": f(3)}, {}, 18),
    ("Conv-uneven", [N("Conv", ["x", "W"], pads=[0, 1, 1, 0], dilations=[1, 2], group=2)],
     {"x": f(1, 2, 5, 6)}, {"W": f(4, 1, 2, 2)}, {}, 18),
    ("Conv-same", [N("Conv", ["x", "W"], auto_pad="SAME_UPPER", strides=[2, 2])],
     {"x": f(1, 1, 5, 5)}, {"W": f(2, 1, 3, 3)}, {}, 18),
    ("MaxPool", [N("MaxPool", ["x"], kernel_shape=[2, 2], strides=[2, 2])],
     {"x": f(1, 2, 4, 6)}, {}, {}, 18),
    ("MaxPool-pad", [N("MaxPool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
     {"x": f(1, 1, 4, 4)}, {}, {}, 13),
    ("AveragePool", [N("AveragePool", ["x"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])],
     {"x": f(1, 2, 4, 4)}, {}, {}, 18),
    ("AveragePool-incl", [N("AveragePool", ["x"], kernel_shape=[2, 2], pads=[1, 1, 1, 1],
                            count_include_pad=1, strides=[2, 2])],
     {"x": f(1, 1, 4, 4)}, {}, {}, 19),
    ("GlobalAveragePool", [N("GlobalAveragePool", ["x"])], {"x": f(2, 3, 4, 4)}, {}, {}, 18),
    ("BatchNormalization", [N("BatchNormalization", ["x", "s", "b", "m", "v"],
                              epsilon=1e-3)], {"x": f(2, 3, 2, 2)},
     {"s": f(3), "b": f(3), "m": f(3), "v": f(3, lo=0.5, hi=2)}, {}, 15),
    ("LayerNormalization", [N("LayerNormalization", ["x", "s", "b"], axis=-1)],
     {"x": f(2, 3, 4)}, {"s": f(4), "b": f(4)}, {}, 17),
    ("LayerNormalization-noB", [N("LayerNormalization", ["x", "s"], axis=1)],
     {"x": f(2, 3, 4)}, {"s": f(3, 4)}, {}, 18),
    ("Softmax", [N("Softmax", ["a"], axis=1)], {"a": f(2, 3, 4)}, {}, {}, 18),
    ("LogSoftmax", [N("LogSoftmax", ["a"])], {"a": f(2, 5)}, {}, {}, 13),
    ("ReduceSum", [N("ReduceSum", ["a", "ax"], keepdims=0)], {"a": f(2, 3, 4)}, {},
     {"ax": i64(0, 2)}, 13),
    ("ReduceMean", [N("ReduceMean", ["a"], axes=[1])], {"a": f(2, 3, 4)}, {}, {}, 17),
    ("ReduceMean-18", [N("ReduceMean", ["a", "ax"])], {"a": f(2, 3, 4)}, {},
     {"ax": i64(-1)}, 18),
    ("ReduceMax", [N("ReduceMax", ["a", "ax"], keepdims=0)], {"a": f(2, 3, 4)}, {},
     {"ax": i64(1)}, 18),
    ("ReduceMin", [N("ReduceMin", ["a"], keepdims=1)], {"a": f(2, 3)}, {}, {}, 18),
    ("Reshape", [N("Reshape", ["a", "s"])], {"a": f(2, 3, 4)}, {}, {"s": i64(0, -1)}, 18),
    ("Flatten", [N("Flatten", ["a"], axis=2)], {"a": f(2, 3, 4, 2)}, {}, {}, 18),
    ("Flatten-0", [N("Flatten", ["a"], axis=0)], {"a": f(2, 3)}, {}, {}, 13),
    ("Transpose", [N("Transpose", ["a"], perm=[2, 0, 1])], {"a": f(2, 3, 4)}, {}, {}, 18),
    ("Transpose-default", [N("Transpose", ["a"])], {"a": f(2, 3, 4)}, {}, {}, 13),
    ("Concat", [N("Concat", ["a", "b", "a"], axis=1)], {"a": f(2, 3), "b": f(2, 1)}, {},
     {}, 18),
    ("Split", [N("Split", ["a", "sp"], ["y", "z"], axis=1), N("Mul", ["y", "z"], ["w"])],
     {"a": f(2, 4)}, {}, {"sp": i64(2, 2)}, 13),
    ("Split-18", [N("Split", ["a"], ["y", "z", "u"], axis=0, num_outputs=3),
                  N("Concat", ["u", "y"], ["w"], axis=0)], {"a": f(7, 2)}, {}, {}, 18),
    ("Slice", [N("Slice", ["a", "st", "en", "ax", "sp"])], {"a": f(4, 5)}, {},
     {"st": i64(1, -1), "en": i64(2**62, -5), "ax": i64(0, 1), "sp": i64(2, -2)}, 18),
    ("Squeeze", [N("Squeeze", ["a", "ax"])], {"a": f(2, 1, 3, 1)}, {}, {"ax": i64(1)}, 13),
    ("Unsqueeze", [N("Unsqueeze", ["a", "ax"])], {"a": f(2, 3)}, {}, {"ax": i64(0, -1)}, 21),
    ("Expand", [N("Expand", ["a", "s"])], {"a": f(3, 1)}, {}, {"s": i64(2, 3, 4)}, 18),
    ("Gather", [N("Gather", ["E", "t"], axis=0)], {"t": np.asarray([[0, 2], [2, 3]])},
     {"E": f(4, 3)}, {}, 18),
    ("Gather-const", [N("Gather", ["a", "i"], axis=1)], {"a": f(2, 4)}, {},
     {"i": i64(3, 0, 3)}, 18),
    ("Gather-scalar", [N("Gather", ["a", "i"], axis=1)], {"a": f(2, 4)}, {},
     {"i": np.asarray(-1, dtype=np.int64)}, 18),
    ("Shape", [N("Shape", ["a"], ["s"]), N("Gather", ["s", "zero"], ["b"]),
               N("Unsqueeze", ["b", "zero1"], ["b1"]), N("Concat", ["b1", "m1"], ["t"], axis=0),
               N("Reshape", ["a", "t"])], {"a": f(2, 3, 4)}, {},
     {"zero": np.asarray(0, dtype=np.int64), "zero1": i64(0), "m1": i64(-1)}, 18),
    ("Constant", [N("Constant", [], ["k"], value_floats=[1.0, 2.0, 3.0]),
                  N("Mul", ["a", "k"])], {"a": f(2, 3)}, {}, {}, 18),
    ("Constant-scalar", [N("Constant", [], ["k"], value_float=2.5), N("Add", ["a", "k"])],
     {"a": f(2, 3)}, {}, {}, 13),
    ("ConstantOfShape", [N("ConstantOfShape", ["s"], ["k"],
                           value=helper.make_tensor("v", 1, [1], [0.5])),
                         N("Add", ["a", "k"])], {"a": np.float32(1) * f(2, 3)}, {},
     {"s": i64(2, 3)}, 18),
    ("Cast", [N("Cast", ["a"], to=-1)], {"a": f(3)}, {}, {}, 18),  # to: the model's type
    ("Identity", [N("Identity", ["a"])], {"a": f(3)}, {}, {}, 18),
    ("Dropout", [N("Dropout", ["a", "r"])], {"a": f(3)}, {"r": np.asarray(0.3)}, {}, 13),
    ("Pad", [N("Pad", ["a", "p", "v"])], {"a": f(2, 3)}, {"v": np.asarray(0.5)},
     {"p": i64(1, 0, 0, 2)}, 18),
    ("Pad-axes", [N("Pad", ["a", "p", "", "ax"])], {"a": f(2, 3)}, {},
     {"p": i64(1, 2), "ax": i64(-1)}, 18),
]


def _retyped(node: Any, dtype: str) -> Any:
    """A node's float constants (Constant, ConstantOfShape's value, Cast's target) in the
    model's dtype: an ONNX model is all one float type."""
    elem = 1 if dtype == "float32" else 11
    out = helper.make_node(node.op_type, list(node.input), list(node.output))
    for a in node.attribute:
        value = helper.get_attribute_value(a)
        if a.name in ("value_float", "value_floats"):
            arr = np.asarray(value, dtype=dtype)
            value = helper.make_tensor("v", elem, arr.shape, arr.reshape(-1).tolist())
            out.attribute.append(helper.make_attribute("value", value))
            continue
        if a.name == "value" and value.data_type in (1, 11):
            from onnx import numpy_helper

            value = numpy_helper.from_array(numpy_helper.to_array(value).astype(dtype))
        if node.op_type == "Cast" and a.name == "to":
            value = elem
        out.attribute.append(helper.make_attribute(a.name, value))
    return out


def _model(case: tuple[Any, ...], dtype: str) -> tuple[bytes, dict[str, np.ndarray]]:
    _, nodes, inputs, floats, ints, opset = case
    nodes = [_retyped(n, dtype) for n in nodes]
    cast = {n: (a.astype(dtype) if a.dtype.kind == "f" else a) for n, a in inputs.items()}
    inits = {**{n: np.asarray(a, dtype=dtype) for n, a in floats.items()}, **ints}
    out = nodes[-1].output[0]
    return model_bytes(nodes, cast, [out], inits, opset=opset), cast


def test_every_lowered_op_type_has_a_case() -> None:
    covered = {n.op_type for case in CASES for n in case[1]}
    assert set(TABLE) <= covered, sorted(set(TABLE) - covered)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_forward_matches_onnxruntime(case: tuple[Any, ...], dtype: str) -> None:
    data, feeds = _model(case, dtype)
    plan = plan_of(data)
    assert plan.model.dtype == dtype
    ours = forward(plan, feeds)
    assert ours.dtype == np.dtype(dtype)
    try:
        (ref,) = ort_run(data, feeds)
        # onnxruntime's float64 tanh-GELU uses float32 constants (test_gelu_tanh_exact
        # holds ours to the formula in float64)
        rtol = 1e-5 if dtype == "float32" else 1e-7 if case[0] == "Gelu-tanh" else 1e-9
    except Exception as exc:  # onnxruntime lacks some float64 kernels (Conv, Gelu, ...)
        assert dtype == "float64" and "NOT_IMPLEMENTED" in str(exc), exc
        data32, feeds32 = _model(case, "float32")
        (ref,) = ort_run(data32, feeds32)
        rtol = 1e-5  # the float32 oracle bounds the float64 run as well
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref.astype(ours.dtype), rtol=rtol, atol=rtol)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_gradients_match_central_differences(case: tuple[Any, ...]) -> None:
    data, feeds = _model(case, "float64")
    plan = plan_of(data)
    out = forward(plan, feeds, "float64")
    upstream = R.uniform(-1, 1, out.shape)
    grads = gradients(plan, feeds, upstream, "all")
    floats = [n for n in (*plan.model.inputs, *sorted(plan.model.parameters))
              if n in plan.float_inputs]
    assert sorted(grads) == sorted(floats)
    numeric = central_differences(plan, feeds, upstream, floats)
    for name in floats:
        np.testing.assert_allclose(grads[name], numeric[name], rtol=1e-5, atol=1e-6,
                                   err_msg=name)


def test_gelu_tanh_exact() -> None:
    x = np.linspace(-3, 3, 13)
    plan = plan_of(model_bytes([N("Gelu", ["a"], approximate="tanh")], {"a": x}, ["y"],
                               opset=20))
    exact = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    np.testing.assert_allclose(forward(plan, {"a": x}), exact, rtol=1e-13, atol=1e-15)


def test_constants_of_the_model_are_neither_values_nor_wrt() -> None:
    from service.engine import Query, execute
    from service.engine.errors import ProblemError

    case = next(c for c in CASES if c[0] == "Gather-const")
    data, feeds = _model(case, "float64")
    plan = plan_of(data)
    (const,) = plan.model.constants  # the indices, kept as a constant input
    assert const not in plan.model.describe()
    for query, values in ((Query(wrt=(const,)), feeds), (Query(wrt=()), {**feeds, const: 0})):
        with pytest.raises(ProblemError) as err:
            execute(plan, values, query)
        assert err.value.status == 422 and "constant of the model" in err.value.detail
