"""The engine alone against the same computation written by hand in NumPy.

    .venv/bin/python -m bench.engine [--rounds 7] [--quick]

(a) The lecture's sigmoid graph, ``1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))``, on 0-d float64
    arrays: one forward + backward per call through ``execute`` (validation, binding,
    limits, result) and through the raw ``Executable.forward`` / ``backward``, against the
    same gates written out in NumPy. This is the per-call overhead of the engine.
(b) A 1,000-node elementwise chain (tanh, * 0.9, + 0.1, sin, repeated) on shape (4,):
    per-node microseconds of the engine against a hand-written NumPy loop over the same
    steps (forward, keeping every intermediate, then the backward in reverse).
(c) An MLP 784 → 1024 → 1024 → 10, batch 256, float32, ReLU, softmax cross-entropy, built
    from ``linear`` / ``relu`` / ``softmax_cross_entropy`` nodes with the labels as an input,
    gradients of every weight, bias and the input, against hand-written NumPy
    (dW = gᵀ·x, dx = g·W, ...). Also the achieved GFLOP/s, counting forward + backward as
    3× the forward matmul FLOPs (exact here: dx is computed for every layer), and a bare
    float32 matmul measured in the same run as this machine's peak.

(d) HVP cost: the 1,000-node chain and the MLP's weights, an HVP (reverse over reverse on
    the joint graph) against one gradient of the same graph; torch.func's HVP on the same
    MLP as a reference when torch is installed (never a dependency).

Every comparison runs round-robin (engine, NumPy, engine, ...) so drift hits both alike;
each round times a batch of calls and the table shows the minimum and the median over the
rounds, per call. The ratio column is engine / NumPy of the minima (the least disturbed
runs on a shared machine). Not a test: nothing here asserts a speed. BLAS settings
(``OPENBLAS_CORETYPE``, thread counts) are read and printed, never set: the bench measures
the machine as the service would run on it.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from service.engine import (
    REGISTRY,
    Query,
    compile_graph,
    execute,
    graph_from_dict,
    parse_expression,
)

BLAS_ENV = ("OPENBLAS_CORETYPE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

# --- timing -------------------------------------------------------------------------------


def round_robin(fns: dict[str, Callable[[], Any]], rounds: int, calls: int
                ) -> dict[str, list[float]]:
    """Seconds per call of each function, one entry per round; functions alternate."""
    for fn in fns.values():
        fn()  # warm-up: the plan's specialization, caches, the allocator
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            out[name].append((time.perf_counter() - start) / calls)
    return out


def calls_for(fn: Callable[[], Any], budget_s: float) -> int:
    """How many calls make one round of about ``budget_s``."""
    fn()
    start = time.perf_counter()
    n = 0
    while time.perf_counter() - start < budget_s / 10:
        fn()
        n += 1
    return max(1, 10 * n)


Row = tuple[str, float, float, str, str]


def rows_for(times: dict[str, list[float]], unit: float, baseline: str, per: int = 1
             ) -> list[Row]:
    """(name, min, median, ratio of minima, paired ratio) rows in ``unit`` / ``per``.

    The paired ratio is the median over rounds of this round's time over the baseline's
    time in the same round: runs made side by side, so load that comes and goes cancels.
    """
    base = times[baseline]
    out = []
    for name, ts in times.items():
        lo = f"{min(ts) / min(base):.2f}"
        paired = f"{statistics.median(t / b for t, b in zip(ts, base)):.2f}"
        out.append((name, min(ts) / unit / per, statistics.median(ts) / unit / per, lo, paired))
    return out


def print_table(title: str, unit: str, rows: list[Row]) -> None:
    print(f"\n### {title}\n")
    print(f"| {'':40} | {'min ' + unit:>14} | {'median ' + unit:>14} | {'÷ NumPy min':>11} "
          f"| {'÷ NumPy paired':>14} |")
    print(f"|{'-' * 42}|{'-' * 16}|{'-' * 16}|{'-' * 13}|{'-' * 16}|")
    for name, lo, mid, ratio, paired in rows:
        print(f"| {name:40} | {lo:14.2f} | {mid:14.2f} | {ratio:>11} | {paired:>14} |")


# --- (a) the lecture's sigmoid --------------------------------------------------------------

SIGMOID = "1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))"
SIG_VALUES = {"w0": 2.0, "x0": -1.0, "w1": -3.0, "x1": -2.0, "w2": -3.0}


def sigmoid_numpy(w0: Any, x0: Any, w1: Any, x1: Any, w2: Any) -> tuple[Any, ...]:
    """The gates of the lecture, forward then backward (on 0-d arrays or NumPy scalars)."""
    a = w0 * x0
    b = w1 * x1
    c = a + b
    d = c + w2
    e = np.negative(d)
    f = np.exp(e)
    g = f + 1.0
    h = np.reciprocal(g)
    dg = -(1.0 / (g * g))
    de = dg * f
    dd = np.negative(de)
    return h, dd * x0, dd * w0, dd * x1, dd * w1, dd


def bench_sigmoid(rounds: int, budget: float) -> list[Row]:
    plan = compile_graph(parse_expression(SIGMOID, REGISTRY).graph, REGISTRY)
    values = {k: np.asarray(v) for k, v in SIG_VALUES.items()}
    wrt = plan.float_inputs
    exe = plan.specialize({k: () for k in values}, wrt)
    # execute() runs 0-d values as NumPy scalars; the raw row does the same.
    scalars = {k: v[()] for k, v in values.items()}
    seed = np.float64(1.0)
    slots = [exe.grad_slots[n] for n in wrt]

    def engine() -> Any:
        return execute(plan, values)

    def raw() -> Any:
        vals = exe.backward(exe.forward(scalars), seed)
        return vals[exe.output_slot], [vals[s] for s in slots]

    def numpy() -> Any:
        return sigmoid_numpy(values["w0"], values["x0"], values["w1"], values["x1"],
                             values["w2"])

    def numpy_scalars() -> Any:
        return sigmoid_numpy(scalars["w0"], scalars["x0"], scalars["w1"], scalars["x1"],
                             scalars["w2"])

    r = engine()
    h, dw0, dx0, dw1, dx1, dw2 = numpy()
    assert abs(float(r.output) - float(h)) < 1e-15
    assert abs(float(r.gradients["w0"]) - float(dw0)) < 1e-15
    calls = calls_for(engine, budget)
    times = round_robin({"execute() (validate, bind, run, result)": engine,
                         "execute() on Python floats": lambda: execute(plan, SIG_VALUES),
                         "Executable.forward + backward (scalars)": raw,
                         "NumPy by hand (NumPy scalars)": numpy_scalars,
                         "NumPy by hand (0-d arrays)": numpy}, rounds, calls)
    return rows_for(times, 1e-6, "NumPy by hand (NumPy scalars)")


# --- (b) a 1,000-node elementwise chain -----------------------------------------------------

CHAIN_STEPS = ("tanh", "mul", "add", "sin")


def chain_spec(n: int) -> dict[str, Any]:
    nodes = []
    prev = "x"
    for i in range(n):
        op = CHAIN_STEPS[i % 4]
        args = [prev, 0.9] if op == "mul" else [prev, 0.1] if op == "add" else [prev]
        nodes.append({"id": f"n{i}", "op": op, "args": args})
        prev = f"n{i}"
    nodes.append({"id": "f", "op": "sum", "args": [prev]})
    return {"inputs": {"x": {"shape": [4]}}, "nodes": nodes, "output": "f"}


def chain_numpy(x: np.ndarray, n: int) -> tuple[float, np.ndarray]:
    """The same chain by hand: forward keeping what the backward needs, then backward."""
    saved = []
    v = x
    for i in range(n):
        step = CHAIN_STEPS[i % 4]
        if step == "tanh":
            v = np.tanh(v)
            saved.append(v)
        elif step == "mul":
            v = v * 0.9
            saved.append(None)
        elif step == "add":
            v = v + 0.1
            saved.append(None)
        else:
            saved.append(v)
            v = np.sin(v)
    out = float(np.sum(v))
    g = np.ones_like(v)
    for i in reversed(range(n)):
        step = CHAIN_STEPS[i % 4]
        if step == "tanh":
            t = saved[i]
            g = g * (1.0 - t * t)
        elif step == "mul":
            g = g * 0.9
        elif step == "sin":
            g = g * np.cos(saved[i])
    return out, g


def bench_chain(rounds: int, budget: float, n: int = 1000) -> list[Row]:
    plan = compile_graph(graph_from_dict(chain_spec(n)), REGISTRY)
    x = np.linspace(-1.0, 1.0, 4)
    exe = plan.specialize({"x": (4,)}, ("x",))
    seed = np.ones(())

    def engine() -> Any:
        return execute(plan, {"x": x})

    def raw() -> Any:
        return exe.backward(exe.forward({"x": x}), seed)

    def numpy() -> Any:
        return chain_numpy(x, n)

    r = engine()
    out, g = numpy()
    assert abs(float(r.output) - out) < 1e-12
    np.testing.assert_allclose(r.gradients["x"], g, rtol=1e-12)
    calls = calls_for(engine, budget)
    times = round_robin({"execute()": engine, "Executable.forward + backward": raw,
                         "NumPy by hand": numpy}, rounds, calls)
    return rows_for(times, 1e-6, "NumPy by hand", per=n)


# --- (c) MLP 784 → 1024 → 1024 → 10 ---------------------------------------------------------

SIZES = (784, 1024, 1024, 10)
BATCH = 256
FORWARD_FLOPS = 2 * BATCH * sum(i * o for i, o in zip(SIZES, SIZES[1:]))
TRAIN_FLOPS = 3 * FORWARD_FLOPS


def mlp_spec() -> dict[str, Any]:
    inputs: dict[str, Any] = {"x": {"shape": [BATCH, SIZES[0]]}, "y": {"shape": [BATCH]}}
    nodes = []
    prev = "x"
    layers = len(SIZES) - 1
    for i, (n_in, n_out) in enumerate(zip(SIZES, SIZES[1:])):
        inputs[f"W{i}"] = {"shape": [n_out, n_in]}
        inputs[f"b{i}"] = {"shape": [n_out]}
        nodes.append({"id": f"z{i}", "op": "linear", "args": [prev, f"W{i}", f"b{i}"]})
        prev = f"z{i}"
        if i < layers - 1:
            nodes.append({"id": f"h{i}", "op": "relu", "args": [prev]})
            prev = f"h{i}"
    nodes.append({"id": "loss", "op": "softmax_cross_entropy", "args": [prev, "y"]})
    return {"inputs": inputs, "nodes": nodes, "output": "loss"}


def mlp_values(dtype: str = "float32", seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    values: dict[str, np.ndarray] = {
        "x": rng.standard_normal((BATCH, SIZES[0])).astype(dtype),
        "y": rng.integers(0, SIZES[-1], BATCH),
    }
    for i, (n_in, n_out) in enumerate(zip(SIZES, SIZES[1:])):
        values[f"W{i}"] = (rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(dtype)
        values[f"b{i}"] = (0.1 * rng.standard_normal(n_out)).astype(dtype)
    return values


def relu_mlp_softmax_ce(Ws: list[np.ndarray], bs: list[np.ndarray], x: np.ndarray,
                        y: np.ndarray, *, input_grad: bool
                        ) -> tuple[float, list[np.ndarray], list[np.ndarray], np.ndarray | None]:
    """ReLU MLP + softmax cross-entropy, forward and backward, as one writes it by hand
    (the baseline of this benchmark and of bench/mlp.py)."""
    acts, pres = [x], []
    a = x
    for i, (W, b) in enumerate(zip(Ws, bs)):
        z = a @ W.T + b
        pres.append(z)
        a = np.maximum(z, 0) if i < len(Ws) - 1 else z
        acts.append(a)
    s = acts[-1]
    n = s.shape[0]
    rows = np.arange(n)
    shifted = s - s.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    total = e.sum(axis=1, keepdims=True)
    loss = float(np.mean(np.log(total[:, 0]) - shifted[rows, y]))
    g = e / total
    g[rows, y] -= 1
    g /= n
    dWs: list[np.ndarray] = [np.empty(0)] * len(Ws)
    dbs: list[np.ndarray] = [np.empty(0)] * len(Ws)
    for i in reversed(range(len(Ws))):
        if i < len(Ws) - 1:
            g = g * (pres[i] > 0)
        dWs[i] = g.T @ acts[i]
        dbs[i] = g.sum(axis=0)
        if i or input_grad:
            g = g @ Ws[i]
    return loss, dWs, dbs, (g if input_grad else None)


def mlp_numpy(v: dict[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
    """Forward and backward of the same net by hand, the input's gradient included."""
    layers = len(SIZES) - 1
    Ws = [v[f"W{i}"] for i in range(layers)]
    bs = [v[f"b{i}"] for i in range(layers)]
    loss, dWs, dbs, dx = relu_mlp_softmax_ce(Ws, bs, v["x"], v["y"], input_grad=True)
    grads = {f"W{i}": dW for i, dW in enumerate(dWs)}
    grads.update({f"b{i}": db for i, db in enumerate(dbs)})
    grads["x"] = dx  # type: ignore[assignment]
    return loss, grads


def bench_mlp(rounds: int, calls: int) -> tuple[list[Row], list[tuple[str, float, float, str]]]:
    plan = compile_graph(graph_from_dict(mlp_spec()), REGISTRY)
    values = mlp_values()
    wrt = plan.float_inputs  # every weight, bias and x

    f32 = Query(dtype="float32")

    def engine() -> Any:
        return execute(plan, values, f32)

    def numpy() -> Any:
        return mlp_numpy(values)

    r = engine()
    loss, grads = numpy()
    assert r.output.dtype == np.float32
    assert abs(float(r.output) - loss) < 1e-4 * max(1.0, abs(loss))
    for name in wrt:
        assert r.gradients[name].dtype == np.float32, name
        np.testing.assert_allclose(r.gradients[name], grads[name], rtol=1e-3,
                                   atol=1e-3 * float(np.abs(grads[name]).max()))

    rng = np.random.default_rng(1)
    sq = [rng.standard_normal((1536, 1536)).astype(np.float32) for _ in range(2)]
    lay = [rng.standard_normal((BATCH, 1024)).astype(np.float32),
           rng.standard_normal((1024, 1024)).astype(np.float32)]

    def peak_square() -> Any:
        return sq[0] @ sq[1]

    def peak_layer() -> Any:
        return lay[0] @ lay[1]

    times = round_robin({"engine execute() (float32)": engine,
                         "NumPy by hand (float32)": numpy,
                         "matmul 1536x1536 @ 1536x1536": peak_square,
                         "matmul 256x1024 @ 1024x1024": peak_layer}, rounds, calls)
    ms = rows_for({k: times[k] for k in list(times)[:2]}, 1e-3, "NumPy by hand (float32)")
    flops = {"engine execute() (float32)": TRAIN_FLOPS, "NumPy by hand (float32)": TRAIN_FLOPS,
             "matmul 1536x1536 @ 1536x1536": 2 * 1536**3,
             "matmul 256x1024 @ 1024x1024": 2 * BATCH * 1024 * 1024}
    gf = [(name, flops[name] / min(ts) / 1e9, flops[name] / statistics.median(ts) / 1e9)
          for name, ts in times.items()]
    peak = max(g[1] for g in gf[2:])
    return ms, [(n, lo, mid, f"{lo / peak:.0%}") for n, lo, mid in gf]


# --- (d) second order: HVP against one gradient ------------------------------------------


def torch_hvp(values: dict[str, np.ndarray], v: dict[str, np.ndarray]) -> Callable[[], Any] | None:
    """torch.func's HVP (jvp of grad) on the same MLP, if torch is installed (reference)."""
    try:
        import torch
        from torch.func import grad, jvp
    except ImportError:
        return None
    params = {k: torch.from_numpy(np.ascontiguousarray(a)) for k, a in values.items()
              if k not in ("x", "y")}
    x, y = torch.from_numpy(values["x"]), torch.from_numpy(values["y"])
    dirs = {k: torch.from_numpy(v[k]) for k in params}

    def loss(p: dict[str, Any]) -> Any:
        h = x
        for i in range(len(SIZES) - 1):
            h = torch.nn.functional.linear(h, p[f"W{i}"], p[f"b{i}"])
            if i < len(SIZES) - 2:
                h = torch.relu(h)
        return torch.nn.functional.cross_entropy(h, y)

    def run() -> Any:
        return jvp(grad(loss), (params,), (dirs,))[1]

    return run


def bench_hvp(rounds: int, budget: float, calls: int) -> list[Row]:
    """HVP (reverse over reverse on the joint graph) ÷ one gradient, same graph, same run."""
    rows: list[Row] = []
    plan = compile_graph(graph_from_dict(chain_spec(1000)), REGISTRY)
    x = np.linspace(-1.0, 1.0, 4)
    v = {"x": np.ones(4)}

    def chain_grad() -> Any:
        return execute(plan, {"x": x})

    hvp = Query(hvp=v)

    def chain_hvp() -> Any:
        return execute(plan, {"x": x}, hvp)

    times = round_robin({"chain: gradient": chain_grad, "chain: HVP": chain_hvp}, rounds,
                        calls_for(chain_grad, budget))
    rows += rows_for(times, 1e-3, "chain: gradient")

    mplan = compile_graph(graph_from_dict(mlp_spec()), REGISTRY)
    values = mlp_values()
    weights = [k for k in mplan.float_inputs if k != "x"]
    rng = np.random.default_rng(5)
    mv = {k: rng.standard_normal(values[k].shape).astype(np.float32) for k in weights}

    grad_query = Query(wrt=weights, dtype="float32")
    hvp_query = Query(wrt=weights, hvp=mv, dtype="float32")

    def mlp_grad() -> Any:
        return execute(mplan, values, grad_query)

    def mlp_hvp() -> Any:
        return execute(mplan, values, hvp_query)

    fns = {"MLP: gradient (weights)": mlp_grad, "MLP: HVP (weights)": mlp_hvp}
    reference = torch_hvp(values, mv)
    if reference is not None:
        fns["MLP: torch.func HVP (reference)"] = reference
    times = round_robin(fns, rounds, calls)
    rows += rows_for(times, 1e-3, "MLP: gradient (weights)")
    return rows


# --- main -----------------------------------------------------------------------------------


def blas_name() -> str:
    try:
        deps = np.show_config(mode="dicts")["Build Dependencies"]  # type: ignore[index]
        blas = deps.get("blas", {})
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - informative only
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7, help="rounds per comparison")
    parser.add_argument("--quick", action="store_true", help="3 rounds, short batches")
    args = parser.parse_args()
    rounds = 3 if args.quick else args.rounds
    budget = 0.05 if args.quick else 0.25  # seconds per round of (a) and (b)

    env_before = {k: os.environ.get(k) for k in BLAS_ENV}
    print("## gradserve engine vs hand-written NumPy\n")
    print(f"- Python {platform.python_version()}, NumPy {np.__version__}, BLAS {blas_name()}, "
          f"{os.cpu_count()} CPUs")
    print("- " + ", ".join(f"{k}={v if v is not None else '(unset)'}"
                           for k, v in env_before.items()) + " (read, not set)")
    started = time.perf_counter()

    print_table("(a) lecture sigmoid, forward + backward, 0-d float64", "µs/call",
                bench_sigmoid(rounds, budget))
    print_table("(b) 1,000-node elementwise chain on (4,), forward + backward", "µs/node",
                bench_chain(rounds, budget))
    ms, gf = bench_mlp(rounds, 2 if args.quick else 4)
    print_table(f"(c) MLP {' → '.join(map(str, SIZES))}, batch {BATCH}, float32, "
                "forward + backward", "ms/call", ms)
    print(f"\nGFLOP/s (fwd + bwd = 3 × {FORWARD_FLOPS / 1e9:.2f} GFLOP forward); peak = the "
          "faster bare matmul:\n")
    print(f"| {'':40} | {'GFLOP/s best':>14} | {'GFLOP/s median':>14} | {'best/peak':>11} |")
    print(f"|{'-' * 42}|{'-' * 16}|{'-' * 16}|{'-' * 13}|")
    for name, lo, mid, share in gf:
        print(f"| {name:40} | {lo:14.1f} | {mid:14.1f} | {share:>11} |")
    print_table("(d) Hessian-vector product, ratios ÷ one gradient of the same graph "
                "(chain; MLP weights, float32)",
                "ms/call", bench_hvp(rounds, budget, 2 if args.quick else 4))

    assert {k: os.environ.get(k) for k in BLAS_ENV} == env_before, "BLAS env changed"
    print(f"\n({rounds} rounds each, total {time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
