"""The ONNX package's own backend node tests, as a forward conformance suite of the import.

Every node case (``onnx.backend.test.case.node``) whose nodes are all op types of the
lowering table is kept in ``node_cases/`` (written by ``make_node_cases.py``, which says
how). Each is imported, compiled and run for every output, and compared with the case's
expected outputs at its own tolerances. A case passes when every output matches; one the
import refuses (float16 data, an integer output, a form a lowering does not take) fails.
The pass count per op type must not drop below ``node_conformance.json``, the recorded one
(raise it there when a lowering gets better: the test says so)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from service.engine import REGISTRY, Query, execute
from service.engine.errors import ProblemError
from service.engine.onnx import compile_model, import_model

HERE = Path(__file__).parent
CASES = sorted((HERE / "node_cases").glob("*.npz"))
RECORD = HERE / "node_conformance.json"


def frozen(proto: onnx.ModelProto, arrays: dict[str, np.ndarray]) -> tuple[bytes, dict]:
    """The case with its integer and boolean inputs made initializers holding the case's
    values (the node tests feed axes, pads, shapes and starts as inputs; an exported model
    holds them as constants, which is what the import takes)."""
    proto = onnx.ModelProto.FromString(proto.SerializeToString())
    keep, fixed = [], {}
    for i, v in enumerate(proto.graph.input):
        arr = arrays[f"in{i}"]
        if arr.dtype.kind in "iub":
            proto.graph.initializer.append(onnx.numpy_helper.from_array(arr, v.name))
        else:
            keep.append(v)
            fixed[f"in{len(keep) - 1}"] = arr
    del proto.graph.input[:]
    proto.graph.input.extend(keep)
    rest = {k: a for k, a in arrays.items() if not k.startswith("in")}
    return proto.SerializeToString(), {**rest, **fixed}


def run_case(path: Path) -> tuple[str, bool, str]:
    """(the case's op type, whether it passes, why not). A case with integer inputs that
    the import refuses runs again with them frozen (see ``frozen``)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    data = arrays["model"].tobytes()
    proto = onnx.load_from_string(data)
    op_type = proto.graph.node[-1].op_type if len(proto.graph.node) else "?"
    result = _run(data, arrays)
    ints = any(arrays[k].dtype.kind in "iub" for k in arrays if k.startswith("in"))
    if not result[0] and result[1].startswith("422") and ints:
        result = _run(*frozen(proto, arrays))
    return op_type, *result


def _run(data: bytes, arrays: dict[str, np.ndarray]) -> tuple[bool, str]:
    rtol, atol = (float(v) for v in arrays["tol"])
    try:
        plan = compile_model(import_model(data), REGISTRY)
        model = plan.model
        feeds = {name: arrays[f"in{i}"] for i, name in enumerate(model.inputs)}
        for i, name in enumerate(model.outputs):
            expected = arrays[f"out{i}"]
            got = np.asarray(execute(plan, feeds, Query(wrt=(), dtype=model.dtype,
                                                        output=name)).output)
            if got.shape != expected.shape:
                return False, f"output {name}: shape {got.shape} != {expected.shape}"
            np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    except ProblemError as err:
        return False, f"{err.status}: {err.detail[:160]}"
    except AssertionError as err:
        return False, str(err).strip().splitlines()[0][:160]
    return True, ""


@pytest.fixture(scope="module")
def results() -> dict[str, tuple[str, bool, str]]:
    return {p.stem: run_case(p) for p in CASES}


def counts(results: dict[str, tuple[str, bool, str]]) -> dict[str, list[int]]:
    passed, total = Counter(), Counter()
    for op_type, ok, _ in results.values():
        total[op_type] += 1
        passed[op_type] += ok
    return {op: [passed[op], total[op]] for op in sorted(total)}


def test_the_subset_is_there() -> None:
    assert len(CASES) >= 300, "run tests/engine/onnx/make_node_cases.py"


def test_no_op_type_passes_fewer_cases_than_recorded(results: Any) -> None:
    now = counts(results)
    recorded = json.loads(RECORD.read_text())
    worse = {op: (now.get(op, [0, 0]), rec) for op, rec in recorded["per_op_type"].items()
             if now.get(op, [0, 0])[0] < rec[0]}
    failing = sorted(f"{name}: {why}" for name, (_, ok, why) in results.items() if not ok)
    assert not worse, f"fewer node cases pass: {worse}\n" + "\n".join(failing)
    passed = sum(p for p, _ in now.values())
    assert passed >= recorded["passed"]
    better = {op: v for op, v in now.items() if v[0] > recorded["per_op_type"].get(op,
                                                                                 [0])[0]}
    assert not better, (f"more node cases pass than recorded: raise {RECORD.name} to "
                        f"{json.dumps(now)}")


if __name__ == "__main__":  # print the per-op table and every failure's reason
    res = {p.stem: run_case(p) for p in CASES}
    table = counts(res)
    for name, (op, ok, why) in sorted(res.items()):
        if not ok:
            print(f"FAIL {name}: {why}")
    print(json.dumps({"passed": sum(p for p, _ in table.values()), "total": len(res),
                      "per_op_type": table}, indent=1))
