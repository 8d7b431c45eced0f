"""The engine on a GPU (CuPy) against the engine on NumPy on the same machine.

    .venv/bin/python -m bench.gpu [--quick]

Needs ``pip install '.[gpu]'`` and a CUDA device; without either it says so and exits 0.

(a) Correctness: every case of the op table of tests/engine/test_ops.py (every op, its
    broadcasting and attrs cases) and an MLP, executed on CuPy and on NumPy from the same
    inputs: output and every gradient must agree to 1e-10 (float64) / 1e-5 (float32),
    relative to the largest magnitude of the NumPy result (max |a - b| / max |b|).
(b) Throughput: MLP 784-1024-1024-10 and 4096-4096-4096-10 (ReLU, softmax cross-entropy,
    float32), batch 256 and 4096, gradients of every weight and bias per second: through
    ``execute`` on CuPy and on NumPy (host arrays in, host arrays out, as the service runs
    it: one transfer each way per tensor), through HTTP on CuPy (POST /v1/mlp/gradients
    with b64 tensors, Flask's test client in this process), and ``torch.autograd`` on the
    GPU when torch is installed there (never a dependency).

Limits are raised for the big networks (the defaults would answer 413). Not a test; it
asserts only the correctness bounds of (a). ``--backend array-api-strict`` runs the same
script with array-api-strict in CuPy's place (a CPU smoke test of the script itself: its
timings say nothing about a GPU).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

SIZES = {"784-1024-1024-10": (784, 1024, 1024, 10), "4096-4096-4096-10": (4096, 4096, 4096, 10)}
BATCHES = (256, 4096)
TOL = {"float64": 1e-10, "float32": 1e-5}


def gpu_backend(name: str) -> Any:
    """The backend to measure, or None (with the reason printed) when there is no GPU."""
    from service.engine.backend import BackendUnavailable, load_backend

    try:
        return load_backend(name)
    except BackendUnavailable as exc:
        print(f"No GPU available: {exc}. Nothing measured.")
        return None


def rel_error(a: Any, b: Any) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        return float("inf")
    if a.size == 0:
        return 0.0
    both = np.isfinite(a) & np.isfinite(b)
    if not np.array_equal(np.isfinite(a), np.isfinite(b)):
        return float("inf")
    scale = max(float(np.max(np.abs(b[both]), initial=0.0)), 1e-300)
    return float(np.max(np.abs(a[both] - b[both]), initial=0.0)) / scale


# --- (a) correctness ---------------------------------------------------------------------


def check_op_table(reg: Any, ref: Any) -> list[str]:
    """Every case of the op table, both precisions; returns the failures."""
    from service.engine import Query, compile_graph, execute, graph_from_dict
    from tests.engine.test_ops import DOMAINS, _instance

    cases = [(name, i, case) for name, cs in DOMAINS.items() for i, case in enumerate(cs)]
    failures = []
    worst = {"float64": 0.0, "float32": 0.0}
    for name, i, case in cases:
        plan, values, floats = _instance(name, i, case)
        spec = plan.canonical
        on_gpu = compile_graph(graph_from_dict(spec), reg)
        on_cpu = compile_graph(graph_from_dict(spec), ref)
        shape = on_cpu.specialize({n: np.shape(v) for n, v in values.items()}, ()).output_shape
        up = None if shape == () else np.random.default_rng(i).standard_normal(shape)
        for dtype, tol in TOL.items():
            a = execute(on_gpu, values, Query(upstream=up, dtype=dtype))
            b = execute(on_cpu, values, Query(upstream=up, dtype=dtype))
            pairs = [("output", a.output, b.output)]
            pairs += [(f"d/d{n}", a.gradients[n], b.gradients[n]) for n in floats]
            for what, x, y in pairs:
                err = rel_error(x, y)
                worst[dtype] = max(worst[dtype], err)
                if not err <= tol:
                    failures.append(f"{name}[{i}] {dtype} {what}: relative error {err:.2e}")
    print(f"op table: {len(cases)} cases x 2 dtypes; worst relative error float64 "
          f"{worst['float64']:.1e} (bound 1e-10), float32 {worst['float32']:.1e} (bound 1e-5)")
    return failures


def mlp_case(sizes: tuple[int, ...], batch: int, dtype: str, seed: int = 0
             ) -> tuple[Any, dict[str, np.ndarray], list[str]]:
    """The lowered MLP graph, its values (host arrays) and the gradient names."""
    from service.flows import mlp_graph as mlp

    rng = np.random.default_rng(seed)
    acts = tuple(["relu"] * (len(sizes) - 2) + ["identity"])
    arch = mlp.Architecture(tuple((o, i) for i, o in zip(sizes, sizes[1:])), acts,
                            "softmax_cross_entropy", False, 2)
    values = {mlp.INPUT: rng.standard_normal((batch, sizes[0])).astype(dtype),
              mlp.TARGETS: rng.integers(0, sizes[-1], size=batch)}
    wrt = []
    for k, (i, o) in enumerate(zip(sizes, sizes[1:])):
        values[mlp.weight_name(k)] = (rng.standard_normal((o, i)) / np.sqrt(i)).astype(dtype)
        values[mlp.bias_name(k)] = (0.1 * rng.standard_normal(o)).astype(dtype)
        wrt += [mlp.weight_name(k), mlp.bias_name(k)]
    return mlp.lower(arch), values, wrt


def check_mlp(reg: Any, ref: Any, limits: Any) -> list[str]:
    from service.engine import Query, compile_graph, execute

    failures = []
    for dtype, tol in TOL.items():
        graph, values, wrt = mlp_case((784, 256, 128, 10), 64, dtype)
        a = execute(compile_graph(graph, reg), values, Query(wrt=wrt, dtype=dtype), limits=limits)
        b = execute(compile_graph(graph, ref), values, Query(wrt=wrt, dtype=dtype), limits=limits)
        errs = [rel_error(a.output, b.output)] + [rel_error(a.gradients[n], b.gradients[n])
                                                  for n in wrt]
        print(f"MLP 784-256-128-10 batch 64 {dtype}: worst relative error {max(errs):.1e}")
        if not max(errs) <= tol:
            failures.append(f"MLP {dtype}: relative error {max(errs):.2e} > {tol}")
    return failures


# --- (b) throughput ----------------------------------------------------------------------


def best_per_s(fn: Callable[[], Any], seconds: float, sync: Callable[[], None]
               ) -> tuple[float, float]:
    """Calls per second: the best of several timed batches after a warm-up call."""
    fn()
    sync()
    rates = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(rates) < 3:
        t = time.perf_counter()
        fn()
        sync()
        rates.append(1.0 / (time.perf_counter() - t))
        if len(rates) >= 50:
            break
    return max(rates), statistics.median(rates)


def torch_runner(graph_values: dict[str, np.ndarray], sizes: tuple[int, ...]) -> Any:
    """torch.autograd on CUDA for the same MLP, or None when torch/CUDA is not there."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    from service.flows import mlp_graph as mlp

    dev = torch.device("cuda")
    x = torch.from_numpy(graph_values[mlp.INPUT]).to(dev)
    y = torch.from_numpy(graph_values[mlp.TARGETS]).to(dev)
    params = []
    for k in range(len(sizes) - 1):
        params.append(torch.from_numpy(graph_values[mlp.weight_name(k)]).to(dev)
                      .requires_grad_())
        params.append(torch.from_numpy(graph_values[mlp.bias_name(k)]).to(dev)
                      .requires_grad_())

    def step() -> Any:
        h = x
        for k in range(0, len(params), 2):
            h = torch.nn.functional.linear(h, params[k], params[k + 1])
            if k + 2 < len(params):
                h = torch.relu(h)
        loss = torch.nn.functional.cross_entropy(h, y)
        grads = torch.autograd.grad(loss, params)
        return [g.cpu() for g in grads]  # to the host, as the engine's results are

    return step, torch.cuda.synchronize


def throughput(backend: Any, ref: Any, reg: Any, limits: Any, seconds: float,
               small: bool = False) -> None:
    import orjson

    from bench.mlp import quiet_access_log
    from service.engine import Query, compile_graph, execute
    from service.flows import mlp_graph as mlp
    from service.flows.codec import encode_tensor
    from tests.conftest import build_app

    sync = _sync(backend)
    app = build_app(limits=limits, max_body_bytes=1 << 31)
    quiet_access_log()
    client = app.test_client()
    on = f"({backend.name})"
    rows = []
    for label, sizes in list(SIZES.items())[:1 if small else None]:
        for batch in BATCHES[:1 if small else None]:
            graph, values, wrt = mlp_case(sizes, batch, "float32")
            gpu_plan, cpu_plan = compile_graph(graph, reg), compile_graph(graph, ref)
            row = {"net": label, "batch": batch}
            query = Query(wrt=wrt, dtype="float32")
            row[f"engine {on}"] = best_per_s(lambda p=gpu_plan, v=values, q=query: execute(
                p, v, q, limits=limits), seconds, sync)
            row["engine (NumPy)"] = best_per_s(lambda p=cpu_plan, v=values, q=query: execute(
                p, v, q, limits=limits), seconds, _no_sync)
            body = orjson.dumps({
                "layers": [{"weight": encode_tensor(values[mlp.weight_name(k)], "b64", "float32"),
                            "bias": encode_tensor(values[mlp.bias_name(k)], "b64", "float32"),
                            "activation": "relu" if k < len(sizes) - 2 else "identity"}
                           for k in range(len(sizes) - 1)],
                "inputs": encode_tensor(values[mlp.INPUT], "b64", "float32"),
                "loss": {"type": "softmax_cross_entropy", "targets": values[mlp.TARGETS].tolist()},
                "dtype": "float32", "encoding": "b64"})

            def post(body: bytes = body) -> None:
                r = client.post("/v1/mlp/gradients", data=body, content_type="application/json")
                assert r.status_code == 200, r.get_data()[:300]

            row[f"HTTP b64 {on}"] = best_per_s(post, seconds, sync)
            runner = torch_runner(values, sizes)
            if runner is not None:
                row["torch.autograd (GPU)"] = best_per_s(runner[0], seconds, runner[1])
            rows.append(row)
            print(_row(row), flush=True)


def _row(row: dict[str, Any]) -> str:
    cells = [f"{row['net']:>18} | {row['batch']:>5}"]
    for key, value in row.items():
        if key in ("net", "batch"):
            continue
        best, median = value
        cells.append(f"{key}: {best:8.1f}/s (median {median:8.1f})")
    engines = [v[0] for k, v in row.items() if k.startswith("engine")]
    cells.append(f"engine ÷ NumPy {engines[0] / engines[1]:5.1f}x")
    return " | ".join(cells)


def _no_sync() -> None:
    return None


def _sync(backend: Any) -> Callable[[], None]:
    if backend.name != "cupy":
        return _no_sync
    import cupy

    return cupy.cuda.get_current_stream().synchronize


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="short timing batches")
    parser.add_argument("--backend", default="cupy", choices=("cupy", "array-api-strict"),
                        help="array-api-strict: a CPU smoke test of this script")
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--small", action="store_true",
                        help="throughput of the smallest net and batch only")
    args = parser.parse_args(argv)

    backend = gpu_backend(args.backend)
    if backend is None:
        return 0
    # The HTTP app computes on the process's registry: make it this backend.
    os.environ["GRADSERVE_BACKEND"] = args.backend
    from service.engine import DEFAULT_LIMITS, REGISTRY, build_registry

    reg = REGISTRY
    ref = build_registry(np)
    print(f"backend {backend.name} on {backend.device}; reference NumPy {np.__version__}")
    limits = replace(DEFAULT_LIMITS, max_flops=10**16, max_memory_bytes=1 << 40,
                     max_total_elements=1 << 36, max_tensor_elements=1 << 34)
    failures = check_op_table(reg, ref) + check_mlp(reg, ref, limits)
    for f in failures:
        print("FAIL", f)
    if not args.skip_throughput:
        throughput(backend, ref, reg, limits, 0.5 if args.quick else 3.0, args.small)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
