"""Write the ONNX backend node tests that exercise the lowered op types (the forward
conformance suite of test_node_conformance.py) into tests/engine/onnx/node_cases/.

    PYTHONPATH=. python tests/engine/onnx/make_node_cases.py

Collecting every node case of the ``onnx`` package (``onnx.backend.test.case.node``) takes
~30 s, so the filtered subset is committed: the cases whose every node is an op type of
the lowering table. Each case keeps its model as the package wrote it except for the
opset: a case written at an opset above 21 is set to 21 when its op's schema is the same
at both (the semantics are then identical); a case of a newer op version is left out.
A case is one file ``<name>.npz`` (no pickle): the model bytes, the inputs and expected
outputs by position, and its tolerances.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
from onnx import defs

from service.engine.onnx.load import OPSETS
from service.engine.onnx.table import TABLE

OUT = Path(__file__).with_name("node_cases")
TOP = OPSETS.stop - 1


def _opset(model) -> int | None:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return None


def _fits(model) -> bool:
    """Every op type lowered, and (at opset TOP if the model's is higher) the same schema."""
    version = _opset(model)
    if version is None or version < OPSETS.start:
        return False
    for node in model.graph.node:
        if node.op_type not in TABLE or node.domain not in ("", "ai.onnx"):
            return False
        if version > TOP:
            try:
                now = defs.get_schema(node.op_type, version).since_version
            except Exception:
                return False
            if now > TOP:
                return False
    return True


def main() -> None:
    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cases = node.collect_testcases(None)
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    kept = 0
    for case in cases:
        model = case.model
        if model is None or not case.data_sets or not _fits(model):
            continue
        for imp in model.opset_import:
            if imp.domain in ("", "ai.onnx") and imp.version > TOP:
                imp.version = TOP
        inputs, outputs = case.data_sets[0]
        if any(not isinstance(a, np.ndarray) for a in (*inputs, *outputs)):
            continue
        arrays = {"model": np.frombuffer(model.SerializeToString(), dtype=np.uint8),
                  "tol": np.asarray([case.rtol, case.atol])}
        arrays.update({f"in{i}": a for i, a in enumerate(inputs)})
        arrays.update({f"out{i}": a for i, a in enumerate(outputs)})
        if any(a.dtype == object for a in arrays.values()):
            continue
        np.savez_compressed(OUT / f"{case.name}.npz", **arrays)
        kept += 1
    print(f"{kept} of {len(cases)} node cases written to {OUT}")


if __name__ == "__main__":
    main()
