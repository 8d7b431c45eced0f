"""docs/onnx.md's supported-op table is the lowering table's (service/engine/onnx/gen.py):
an op type added, or its opsets or notes changed, without regenerating it fails here."""

from __future__ import annotations

import re

from service.engine.onnx import gen, table


def test_onnx_op_table_is_up_to_date() -> None:
    text = gen.ONNX_MD.read_text(encoding="utf-8")
    assert gen.onnx_md(text) == text, f"docs/onnx.md is stale: run `{gen.COMMAND}`"


def test_the_table_lists_every_lowered_op_type() -> None:
    rows = re.findall(r"^\| `(\w+)` \| (\d+)–(\d+) \|", gen.op_table(), flags=re.M)
    assert sorted({r[0] for r in rows}) == sorted(table.TABLE)
    for op_type, since, until in rows:
        assert table.lookup(op_type, int(since)) is not None
        assert table.lookup(op_type, int(until)) is not None


def test_the_contract_op_types_are_lowered_at_every_supported_opset() -> None:
    contract = ("Add Sub Mul Div Pow Neg Exp Log Sqrt Abs Reciprocal Sigmoid Tanh Relu "
                "LeakyRelu Elu Softplus Erf Clip Where MatMul Gemm Conv MaxPool AveragePool "
                "GlobalAveragePool BatchNormalization Softmax LogSoftmax ReduceSum ReduceMean "
                "ReduceMax ReduceMin Reshape Flatten Transpose Concat Split Slice Squeeze "
                "Unsqueeze Expand Gather Shape Constant ConstantOfShape Cast Identity Dropout "
                "Pad").split()
    for opset in range(13, 22):
        assert set(contract) <= set(table.supported(opset)), opset
    # the two that the default domain defines later: from their first opset on
    assert "LayerNormalization" in table.supported(17) and "Gelu" in table.supported(20)
