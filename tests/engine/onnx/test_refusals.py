"""Every class of refused model: a clear 4xx naming what is wrong (the node's name and
op_type, the value, or the limit), raised before anything is lowered or run; and over
HTTP, no 5xx and nothing stored."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from service.engine.errors import ProblemError
from service.engine.limits import Limits
from service.engine.onnx import import_model
from service.engine.onnx.table import supported
from tests.conftest import build_app
from tests.engine.onnx.models import model_bytes

X = np.ones((2, 3), dtype=np.float32)


def _relu_model(**kw: Any) -> onnx.ModelProto:
    return onnx.load_from_string(model_bytes([helper.make_node("Relu", ["x"], ["y"],
                                                               name="r")], {"x": X}, ["y"],
                                             **kw))


def _with(model: onnx.ModelProto, edit: Any) -> bytes:
    edit(model)
    return model.SerializeToString()


def _external(m: onnx.ModelProto) -> None:
    t = numpy_helper.from_array(np.ones(3, dtype=np.float32), "w")
    t.ClearField("raw_data")
    t.data_location = TensorProto.EXTERNAL
    t.external_data.add(key="location", value="weights.bin")
    m.graph.initializer.append(t)


def _custom_domain(m: onnx.ModelProto) -> None:
    m.graph.node[0].domain = "com.example"
    m.opset_import.append(helper.make_opsetid("com.example", 1))


def _shadow(m: onnx.ModelProto) -> None:
    m.graph.initializer.append(numpy_helper.from_array(X, "x"))


def _duplicate(m: onnx.ModelProto) -> None:
    m.graph.node.append(helper.make_node("Relu", ["x"], ["y"], name="again"))


def _contradiction(m: onnx.ModelProto) -> None:
    m.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 7


def _huge(m: onnx.ModelProto) -> None:
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1 << 40


def _float16(m: onnx.ModelProto) -> None:
    m.graph.input[0].type.tensor_type.elem_type = TensorProto.FLOAT16
    m.graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT16


def _int8(m: onnx.ModelProto) -> None:
    m.graph.initializer.append(numpy_helper.from_array(np.ones(2, dtype=np.int8), "q"))


def _if(m: onnx.ModelProto) -> None:
    branch = helper.make_graph([helper.make_node("Identity", ["x"], ["z"])], "b", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3])])
    m.graph.initializer.append(numpy_helper.from_array(np.asarray(True), "c"))
    m.graph.node.append(helper.make_node("If", ["c"], ["w"], name="branch",
                                         then_branch=branch, else_branch=branch))


def _unsupported(m: onnx.ModelProto) -> None:
    m.graph.node[0].op_type = "HardSwish"
    m.graph.node[0].name = "hs"


CASES = [
    ("truncated", _relu_model().SerializeToString()[:-7], 422, "not an ONNX model"),
    ("not-onnx", b"\x00\xffthis is not a model at all" * 3, 422, "not an ONNX model"),
    ("empty", b"", 422, "not an ONNX model"),
    ("external-data", _with(_relu_model(), _external), 422, "external file"),
    ("custom-domain", _with(_relu_model(), _custom_domain), 422, "node 'r' (Relu): domain"),
    ("control-flow", _with(_relu_model(), _if), 422, "node 'branch' (If): control flow"),
    ("opset-12", _relu_model(opset=12).SerializeToString(), 422, "opset 12"),
    ("opset-22", _relu_model(opset=22).SerializeToString(), 422, "opset 22"),
    ("shadowing", _with(_relu_model(), _shadow), 422, "shadows the graph input"),
    ("duplicate-names", _with(_relu_model(), _duplicate), 422, "defined more than once"),
    ("contradiction", _with(_relu_model(), _contradiction), 422, "contradict"),
    ("huge-dims", _with(_relu_model(), _huge), 413, "GRADSERVE_MAX_TENSOR_ELEMENTS"),
    ("float16", _with(_relu_model(), _float16), 422, "FLOAT16"),
    ("int8", _with(_relu_model(), _int8), 422, "INT8"),
    ("unsupported-op", _with(_relu_model(), _unsupported), 422, "node 'hs' (HardSwish)"),
]


@pytest.mark.parametrize(("data", "status", "words"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_refused_by_the_engine(data: bytes, status: int, words: str) -> None:
    with pytest.raises(ProblemError) as err:
        import_model(data)
    assert err.value.status == status
    assert words in err.value.detail, err.value.detail


def test_unsupported_op_lists_the_supported_ones() -> None:
    with pytest.raises(ProblemError) as err:
        import_model(_with(_relu_model(), _unsupported))
    for op_type in ("Conv", "Gemm", "LayerNormalization", "Reshape"):
        assert op_type in err.value.detail
    assert "Gelu" not in supported(18) and "Gelu" in supported(20)


def test_size_is_checked_before_parsing() -> None:
    data = _relu_model().SerializeToString()
    with pytest.raises(ProblemError) as err:
        import_model(data + b"\x00" * 10, Limits(max_model_bytes=len(data)))
    assert err.value.status == 413 and "GRADSERVE_MAX_MODEL_BYTES" in err.value.detail


def test_a_symbolic_dim_past_one_in_a_reshape_is_named() -> None:
    x = np.ones((2, 3, 4), dtype=np.float32)
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Reshape", ["x", "s"], ["t"], name="view"),
             helper.make_node("Reshape", ["t", "m"], ["y"], name="view2")]
    data = model_bytes(nodes, {"x": x}, ["y"], {"m": np.asarray([0, 0, -1], np.int64)},
                       dims={"x": ["b", "s", 4]})
    with pytest.raises(ProblemError) as err:
        import_model(data)
    assert "node 'view2' (Reshape)" in err.value.detail and "symbolic" in err.value.detail


@pytest.mark.parametrize(("data", "status", "words"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_refused_over_http_and_nothing_stored(data: bytes, status: int, words: str) -> None:
    app = build_app()
    client = app.test_client()
    resp = client.post("/v1/graphs?name=m", data=data, content_type="application/onnx")
    assert resp.status_code == status, resp.get_json()
    body = resp.get_json()
    assert words in body["detail"] and resp.mimetype == "application/problem+json"
    assert client.get("/v1/graphs").get_json()["graphs"] == []
    assert client.get("/v2/models/m").status_code == 404
    # the worker still serves: a good model registers next
    ok = client.post("/v1/graphs", data=_relu_model().SerializeToString(),
                     content_type="application/onnx")
    assert ok.status_code == 201


@pytest.mark.parametrize("cut", [4, 1000])
def test_a_big_initializer_whose_bytes_do_not_fit_its_dims(cut: int) -> None:
    w = np.ones((200, 200), dtype=np.float32)  # over load.LIGHT_BYTES: checked by length
    m = onnx.load_from_string(model_bytes([helper.make_node("MatMul", ["x", "w"], ["y"])],
                                          {"x": np.ones((2, 200), np.float32)}, ["y"],
                                          {"w": w}))
    t = m.graph.initializer[0]
    t.raw_data = t.raw_data[:-cut]
    with pytest.raises(ProblemError) as err:
        import_model(m.SerializeToString())
    assert err.value.status == 422 and "initializer 'w'" in err.value.detail


def test_constants_broadcast_into_a_huge_tensor_are_not_folded() -> None:
    """Two small constants whose broadcast is 10^10 elements: not computed at import (a
    memory bomb), left to run, and refused there by the tensor limit before anything is
    allocated."""
    a = np.ones((100_000, 1), dtype=np.float32)
    b = np.ones((1, 100_000), dtype=np.float32)
    nodes = [helper.make_node("Constant", [], ["a"], value=numpy_helper.from_array(a)),
             helper.make_node("Constant", [], ["b"], value=numpy_helper.from_array(b)),
             helper.make_node("Add", ["a", "b"], ["c"]),
             helper.make_node("Add", ["x", "c"], ["y"])]
    graph = helper.make_graph(nodes, "bomb",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                             ["m", "n"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    data = model.SerializeToString()
    with pytest.raises(ProblemError) as err:
        import_model(data)
    assert err.value.status == 413, err.value.detail


@pytest.mark.parametrize("nodes, ints, dims, words", [
    # an index out of range in a shape computation: shape inference names the node
    ([helper.make_node("Shape", ["x"], ["s"]),
      helper.make_node("Gather", ["s", "i"], ["d"], name="pick"),
      helper.make_node("Reshape", ["x", "d"], ["y"])], {"i": np.asarray([7], np.int64)},
     ["a"], "node name: pick"),
    # integer constants to a negative power: NumPy refuses the fold, the node is named
    ([helper.make_node("Pow", ["a", "b"], ["p"], name="pick"),
      helper.make_node("Reshape", ["x", "p"], ["y"])],
     {"a": np.asarray([2, 3], np.int64), "b": np.asarray([-1, 1], np.int64)}, ["a", "b"],
     "node 'pick' (Pow): cannot be lowered"),
])
def test_a_fold_that_cannot_be_done_names_the_node(nodes: list[Any], ints: dict,
                                                   dims: list[str], words: str) -> None:
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, dims)],
        [numpy_helper.from_array(v, k) for k, v in ints.items()])
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]
                             ).SerializeToString()
    with pytest.raises(ProblemError) as err:
        import_model(data)
    assert err.value.status == 422 and words in err.value.detail, err.value.detail
