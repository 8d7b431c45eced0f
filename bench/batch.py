"""Batches in one vectorized pass against the loops they replace, side by side in one run.

    .venv/bin/python -m bench.batch [--repeat 3] [--quick]

In this process (no HTTP), median of ``--repeat`` timings, each against its baseline:

- per-example gradients of an MLP 784-128-10 (softmax cross-entropy, B = 256): one
  ``batched`` + ``per_example`` execution against 256 executions of the same plan, one
  example each (the limits raised: 256 × 101,770 per-example parameters pass the default
  tensor limit, which answers 413 naming the product);
- ``directions: 16`` JVP on a 1,000-node graph (a chain of elementwise ops and small
  matmuls) against 16 single JVPs;
- the Jacobian of a 64-output graph: the block driver (one batched run) against the row
  loop it replaced (``derivatives.jacobians``, one backward pass per row).

- the floor of the first: bare NumPy writing the same per-example gradients (the outer
  products, into fresh memory) against the same 256 runs: the most any one pass could gain;
- a wide layer's two products for 8 stacked examples, the engine's blocked product against
  ``np.matmul`` (what a merged batch of 8 runs per layer).

Every case computes with one BLAS thread, as a worker does (``OPENBLAS_NUM_THREADS``).

The dynamic-batching rows (over HTTP, gunicorn) come from ``bench.batch_http``.

Not a test: nothing here asserts a speed. The machine is shared; compare rows of one run.
"""

from __future__ import annotations

import os

# One BLAS thread, as each gunicorn worker computes with (gunicorn.conf.py: the cores shared
# among the workers); before NumPy loads OpenBLAS. An explicit value wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from service.engine import REGISTRY, Query, compile_graph, execute, graph_from_dict
from service.engine.compiler import Want
from service.engine.derivatives import jacobians
from service.engine.limits import Limits

BIG = Limits(max_tensor_elements=1 << 26, max_total_elements=1 << 28,
             max_memory_bytes=4 << 30)


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Median seconds of ``repeat`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mlp_plan(sizes: tuple[int, ...]) -> Any:
    inputs = {"x": {"shape": [1, sizes[0]]}, "y": {"shape": [1]}}
    nodes, prev = [], "x"
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        inputs[f"W{i}"] = {"shape": [n_out, n_in]}
        inputs[f"b{i}"] = {"shape": [n_out]}
        nodes.append({"id": f"h{i}", "op": "linear", "args": [prev, f"W{i}", f"b{i}"]})
        prev = f"h{i}"
        if i < len(sizes) - 2:
            nodes.append({"id": f"a{i}", "op": "relu", "args": [prev]})
            prev = f"a{i}"
    nodes.append({"id": "loss", "op": "softmax_cross_entropy", "args": [prev, "y"]})
    spec = {"inputs": inputs, "nodes": nodes, "output": "loss"}
    return compile_graph(graph_from_dict(spec), REGISTRY)


def per_example(repeat: int, batch: int) -> tuple[float, float]:
    sizes = (784, 128, 10)
    plan = mlp_plan(sizes)
    rng = np.random.default_rng(0)
    w = {}
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        w[f"W{i}"] = rng.standard_normal((n_out, n_in)) * 0.05
        w[f"b{i}"] = np.zeros(n_out)
    xs = rng.standard_normal((batch, 1, 784))
    ys = rng.integers(0, 10, (batch, 1))
    wrt = tuple(w)
    q = Query(wrt=wrt, batched=("x", "y"), per_example=True)

    def batched() -> Any:
        return execute(plan, {**w, "x": xs, "y": ys}, q, limits=BIG)

    def loop() -> Any:
        return [execute(plan, {**w, "x": xs[i], "y": ys[i]}, Query(wrt=wrt), limits=BIG)
                for i in range(batch)]

    def floor() -> Any:
        """Bare NumPy: the per-example gradients' bytes written once (each layer's outer
        products and bias rows), nothing else: no vectorized pass can beat it."""
        g1 = rng_g1[:, :, None] * xs[:, 0, None, :]
        g2 = rng_g2[:, :, None] * rng_g1[:, None, :]
        return g1, g2, rng_g1.copy(), rng_g2.copy()

    rng_g1 = rng.standard_normal((batch, sizes[1]))
    rng_g2 = rng.standard_normal((batch, sizes[2]))
    got, want = batched(), loop()
    assert np.allclose(got.gradients["W0"][7], want[7].gradients["W0"])
    return timed(loop, repeat), timed(batched, repeat), timed(floor, repeat)


def chain_plan(n: int, width: int) -> Any:
    inputs = {"x": {"shape": [width]}, "M": {"shape": [width, width]}}
    nodes, prev = [], "x"
    ops = ("tanh", "sin", "sigmoid", "cos")
    for i in range(n - 1):
        if i % 10 == 9:
            nodes.append({"id": f"n{i}", "op": "matmul", "args": ["M", prev]})
        else:
            nodes.append({"id": f"n{i}", "op": ops[i % 4], "args": [prev]})
        prev = f"n{i}"
    nodes.append({"id": "out", "op": "sum", "args": [prev]})
    return compile_graph(graph_from_dict({"inputs": inputs, "nodes": nodes, "output": "out"}),
                         REGISTRY)


def directions(repeat: int, k: int) -> tuple[float, float]:
    plan = chain_plan(1000, 16)
    rng = np.random.default_rng(1)
    v = {"x": rng.standard_normal(16), "M": rng.standard_normal((16, 16)) * 0.3}
    ts = rng.standard_normal((k, 16))

    def vectorized() -> Any:
        return execute(plan, v, Query(wrt=[], tangents={"x": ts}, directions=k))

    def loop() -> Any:
        return [execute(plan, v, Query(wrt=[], tangents={"x": ts[i]})) for i in range(k)]

    assert np.allclose(vectorized().jvp[3], loop()[3].jvp)
    return timed(loop, repeat), timed(vectorized, repeat)


def jacobian(repeat: int, rows: int) -> tuple[float, float]:
    spec = {"inputs": {"x": {"shape": [32]}, "W": {"shape": [rows, 32]}},
            "nodes": [{"id": "h", "op": "matmul", "args": ["W", "x"]},
                      {"id": "t", "op": "tanh", "args": ["h"]},
                      {"id": "s", "op": "softmax", "args": ["t"]},
                      {"id": "o", "op": "mul", "args": ["s", "t"]}], "output": "o"}
    plan = compile_graph(graph_from_dict(spec), REGISTRY)
    rng = np.random.default_rng(2)
    v = {"x": rng.standard_normal(32), "W": rng.standard_normal((rows, 32))}
    shapes = {n: a.shape for n, a in v.items()}
    wrt = ("W", "x")
    exe = plan.specialize(shapes, want=Want(wrt=wrt, repeat="seed"))

    def blocks() -> Any:
        return execute(plan, v, Query(jacobian=True)).jacobians

    def rows_loop() -> Any:
        return jacobians(exe, v, wrt, np.float64)

    assert np.allclose(blocks()["W"], rows_loop()["W"])
    return timed(rows_loop, repeat), timed(blocks, repeat)


def rows(repeat: int, m: int) -> tuple[float, float]:
    """A wide layer's two products for ``m`` stacked examples (``x @ W`` forward, ``g @ W.T``
    its VJP; W 4096 x 4096 float32): one ``np.matmul`` each against the engine's blocked
    product (``ops.products.rows_matmul``)."""
    from service.engine.ops.products import rows_matmul

    rng = np.random.default_rng(4)
    w = rng.standard_normal((4096, 4096)).astype(np.float32)
    x = rng.standard_normal((m, 4096)).astype(np.float32)
    assert np.allclose(rows_matmul(np, x, w), x @ w, rtol=1e-3, atol=1e-2)
    return (timed(lambda: (np.matmul(x, w), np.matmul(x, w.T)), repeat),
            timed(lambda: (rows_matmul(np, x, w), rows_matmul(np, x, w.T)), repeat))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="smaller sizes (a smoke run)")
    args = parser.parse_args(argv)
    batch, k, n_out = (16, 4, 8) if args.quick else (256, 16, 64)
    print(f"{'case':58} {'baseline':>10} {'batched':>10} {'ratio':>7}")
    loop, vectorized, floor = per_example(args.repeat, batch)
    for name, (base, new) in (
        (f"per-example grads MLP 784-128-10, B={batch} (vs {batch} runs)", (loop, vectorized)),
        ("  floor: bare NumPy writing that answer (vs the runs)", (loop, floor)),
        (f"directions={k} JVP, 1,000-node graph (vs {k} JVPs)", directions(args.repeat, k)),
        (f"Jacobian, {n_out} outputs (vs the row loop)", jacobian(args.repeat, n_out)),
        ("8 rows x 4096^2 float32, x@W + g@W.T (vs np.matmul)", rows(args.repeat, 8)),
    ):
        print(f"{name:58} {base * 1e3:8.1f}ms {new * 1e3:8.1f}ms {base / new:6.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
