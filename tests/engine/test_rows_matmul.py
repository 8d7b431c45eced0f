"""The blocked product of a few rows against a large matrix (``ops.common.rows_matmul``):
equal to ``np.matmul`` for every row count, layout and dtype, blocked only where it is
meant to be, and the ops that use it give a batched run the lone runs' answers."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from service.engine import REGISTRY, Query, compile_graph, execute, graph_from_dict
from service.engine.backend import current
from service.engine.ops import common
from service.engine.ops.common import rows_matmul

# 1024 x 1100 = 1,126,400 elements: over the size where blocking starts; neither side a
# multiple of a block, so every loop ends on a short block.
K, N = 1024, 1100


class Counting:
    """NumPy with its matmul calls counted (passed as both the namespace and ``_NP``)."""

    def __init__(self) -> None:
        self.calls = 0
        self._matmul = np.matmul

    def matmul(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self._matmul(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Counting:
    xp = Counting()
    monkeypatch.setattr(common, "_NP", xp)
    return xp


def operands(m: int, dtype: str, transposed: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(m)
    a = rng.standard_normal((m, K)).astype(dtype)
    w = rng.standard_normal((N, K) if transposed else (K, N)).astype(dtype)
    return a, (w.T if transposed else w)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("transposed", [False, True], ids=["plain", "transposed"])
@pytest.mark.parametrize("m", [1, 2, 3, 5, 8, 9])
def test_equals_matmul(counting: Counting, m: int, dtype: str, transposed: bool) -> None:
    a, b = operands(m, dtype, transposed)
    got = rows_matmul(counting, a, b)
    want = np.matmul(a, b)
    assert got.shape == want.shape and got.dtype == want.dtype
    tol = 2e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
    blocked = 2 <= m <= 8 and (transposed or m * 16 * N <= 1 << 19)
    assert (counting.calls > 1) == blocked, counting.calls


def test_small_or_foreign_operands_are_one_product(counting: Counting) -> None:
    rng = np.random.default_rng(0)
    for a, b in [(rng.standard_normal((4, 64)), rng.standard_normal((64, 64))),  # small
                 (rng.standard_normal((4, K)).astype("float32"),
                  rng.standard_normal((K, N))),  # mixed dtypes
                 (rng.standard_normal((4, K)), rng.standard_normal(K))]:  # a vector
        counting.calls = 0
        np.testing.assert_array_equal(rows_matmul(counting, a, b), np.matmul(a, b))
        assert counting.calls == 1


def test_another_namespace_or_blas_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = operands(4, "float64", True)
    xp = Counting()
    rows_matmul(xp, a, b)  # a namespace that is not the detected NumPy
    assert xp.calls == 1
    monkeypatch.setattr(common, "_NP", None)  # a build without OpenBLAS
    xp.calls = 0
    rows_matmul(xp, a, b)
    assert xp.calls == 1


def test_a_wide_batched_layer_equals_its_lone_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """A linear layer, a matmul and their VJPs over 6 examples (the blocked products)
    against one run per example."""
    spec = {"inputs": {"x": {"shape": [K]}, "W": {"shape": [N, K]}, "c": {"shape": [N]},
                       "V": {"shape": [N, 8]}},
            "nodes": [{"id": "h", "op": "linear", "args": ["x", "W", "c"]},
                      {"id": "a", "op": "tanh", "args": ["h"]},
                      {"id": "o", "op": "matmul", "args": ["a", "V"]},
                      {"id": "s", "op": "sum", "args": ["o"]}],
            "output": "s"}
    plan = compile_graph(graph_from_dict(spec), REGISTRY)
    rng = np.random.default_rng(3)
    w = {"W": rng.standard_normal((N, K)) * 0.03, "c": rng.standard_normal(N),
         "V": rng.standard_normal((N, 8))}
    xs = rng.standard_normal((6, K))
    blocks = common._NP is np and current().xp is np  # this build and backend block
    if blocks:
        counter = Counting()
        monkeypatch.setattr(np, "matmul", counter.matmul)
    got = execute(plan, {**w, "x": xs}, Query(wrt=("x",), batched=("x",)))
    monkeypatch.undo()
    if blocks:
        assert counter.calls > 50, counter.calls  # blocks of W and W.T, not two products
    for i in range(6):
        one = execute(plan, {**w, "x": xs[i]}, Query(wrt=("x",)))
        np.testing.assert_allclose(got.output[i], one.output, rtol=1e-12)
        np.testing.assert_allclose(got.gradients["x"][i], one.gradients["x"], rtol=1e-10,
                                   atol=1e-12)
