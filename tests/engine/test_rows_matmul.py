"""The products of a few rows against a large matrix (``ops.products.rows_matmul``): equal
to ``np.matmul`` for every row count, layout and dtype, each form used only where it is
meant to be and only where this machine's probe took it, and the ops that use them give a
batched run the lone runs' answers."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from service.engine import REGISTRY, Query, compile_graph, execute, graph_from_dict
from service.engine.backend import current
from service.engine.ops import products
from service.engine.ops.products import rows_matmul

# 1024 x 1100 = 1,126,400 elements: over the size where blocking starts; neither side a
# multiple of a block, so every loop ends on a short block.
K, N = 1024, 1100


class Counting:
    """NumPy with its matmul calls counted (passed as both the namespace and ``_NP``)."""

    def __init__(self) -> None:
        self.calls = 0
        self.left: list[tuple[int, ...]] = []  # each call's left operand's shape
        self._matmul = np.matmul

    def matmul(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.left.append(args[0].shape)
        return self._matmul(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> Counting:
    """The counting NumPy as the detected one, every form taken (as this machine's probe
    does: the forms' own tests below check the probe)."""
    xp = Counting()
    monkeypatch.setattr(products, "_NP", xp)
    monkeypatch.setattr(products, "_CHOICE", {"blocked_t": True, "split": True, "turned": True})
    return xp


def operands(m: int, dtype: str, transposed: bool) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(m)
    a = rng.standard_normal((m, K)).astype(dtype)
    w = rng.standard_normal((N, K) if transposed else (K, N)).astype(dtype)
    return a, (w.T if transposed else w)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("transposed", [False, True], ids=["plain", "transposed"])
@pytest.mark.parametrize("m", [0, 1, 2, 3, 5, 8, 9, 64, 65])
def test_equals_matmul(counting: Counting, m: int, dtype: str, transposed: bool) -> None:
    a, b = operands(m, dtype, transposed)
    got = rows_matmul(counting, a, b)
    want = np.matmul(a, b)
    assert got.shape == want.shape and got.dtype == want.dtype
    assert got.flags.c_contiguous
    tol = 2e-5 if dtype == "float32" else 1e-12
    np.testing.assert_allclose(got, want, rtol=tol, atol=tol * max(np.abs(want).max(initial=0), 1))
    blocked = 2 <= m <= 8 and (transposed or m * 16 * N <= 1 << 19)
    assert (counting.calls > 1) == blocked, counting.calls
    # float32 x @ W.T of up to 64 rows (not blocked): taken as (W @ x.T).T
    turned = not blocked and transposed and dtype == "float32" and m <= 64
    assert (counting.left[0] == (N, K)) == turned, counting.left


def test_small_or_foreign_operands_are_one_product(counting: Counting) -> None:
    rng = np.random.default_rng(0)
    for a, b in [(rng.standard_normal((4, 64)), rng.standard_normal((64, 64))),  # small
                 (rng.standard_normal((4, 64)).astype("float32"),
                  rng.standard_normal((64, 64)).astype("float32").T),  # a small W.T
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
    monkeypatch.setattr(products, "_NP", None)  # a build without OpenBLAS
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
    blocks = products._NP is np and current().xp is np  # this build and backend block
    if blocks:  # whatever this machine's probe says: the blocked forms, counted
        monkeypatch.setattr(products, "_CHOICE", {"blocked_t": True, "split": True,
                                                  "turned": True})
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


@pytest.mark.parametrize("m", [2, 16])
def test_a_form_the_probe_refused_is_not_used(counting: Counting,
                                              monkeypatch: pytest.MonkeyPatch, m: int) -> None:
    monkeypatch.setattr(products, "_CHOICE", {"blocked_t": False, "split": False,
                                              "turned": False})
    for transposed in (False, True):
        a, b = operands(m, "float32", transposed)
        counting.calls, counting.left = 0, []
        np.testing.assert_array_equal(rows_matmul(counting, a, b), np.matmul(a, b))
        assert counting.calls == 1 and counting.left == [(m, K)]


def test_the_probe_takes_a_form_only_when_it_is_clearly_faster() -> None:
    def slow() -> None:
        time.sleep(0.004)

    def fast() -> None:
        pass

    assert products._probe(slow, fast, rounds=2) is True
    assert products._probe(fast, slow, rounds=2) is False
    assert products._probe(slow, slow, rounds=3) is False  # no margin: the plain product


def test_each_form_is_probed_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(products, "_CHOICE", {})
    monkeypatch.setattr(products, "_probes", lambda np_: {
        f: (lambda f=f: calls.append(f) or True) for f in ("blocked_t", "split", "turned")})
    for _ in range(3):
        assert products._taken(np, "turned") is True
    assert calls == ["turned"]


def test_a_worker_probes_every_form_as_it_starts(monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn's post_worker_init calls warm_engine: every form decided before a request
    (on NumPy over OpenBLAS); another namespace decides nothing."""
    from service.http.warmup import warm_engine

    monkeypatch.setattr(products, "_CHOICE", {})
    monkeypatch.setattr(products, "_probes", lambda np_: {
        f: (lambda: True) for f in ("blocked_t", "split", "turned")})
    products.probe_all(object())
    assert products._CHOICE == {}
    if products._NP is np and current().xp is np:
        warm_engine()
        assert products._CHOICE == {"blocked_t": True, "split": True, "turned": True}
    else:
        warm_engine()
        assert products._CHOICE == {}
