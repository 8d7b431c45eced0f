"""The CNN ops (ops/cnn.py, ops/norms.py) against the same computation by hand in NumPy.

    .venv/bin/python -m bench.ops [--rounds 9] [--quick]

(a) conv2d forward + backward: x (32, 16, 32, 32), w (32, 16, 3, 3), padding 1, float64,
    gradients of x and w for a random upstream, against a hand-written im2col (the padded
    input's sliding windows copied into one matrix, one GEMM per example; dW from the same
    matrix, dx by adding each tap's columns back).
(b) max_pool2d 2x2 forward + backward on (32, 16, 32, 32), against the reshape trick
    (windows as two extra axes, the max over them, ties split).
(c) layer_norm forward + backward on (128, 64, 256) over the last axis, against the
    textbook formulas (the hand version keeps xhat from its forward).

Each row runs ``execute`` (binding, limits, the result) and the raw executable
(``Executable.forward`` / ``backward``), alternating with the hand NumPy round by round;
the table shows the minimum and the median per call, the ratio of the medians and the
paired ratio (median over rounds of engine / NumPy in the same round). Not a test: nothing
asserts a speed. The target is a ratio at most 1.5.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from bench.engine import calls_for, round_robin
from service.engine import REGISTRY, Query, compile_graph, execute, parse_expression


def _engine(text: str, values: dict[str, np.ndarray], upstream: np.ndarray
            ) -> dict[str, Callable[[], Any]]:
    """The engine's two rows for ``text``: through ``execute`` and the raw executable."""
    plan = compile_graph(parse_expression(text, REGISTRY).graph, REGISTRY)
    wrt = tuple(values)
    exe = plan.specialize({k: v.shape for k, v in values.items()}, wrt)
    slots = [exe.grad_slots[n] for n in wrt]

    def through_execute() -> Any:
        return execute(plan, values, Query(upstream=upstream)).gradients

    def raw() -> Any:
        vals = exe.backward(exe.forward(values), upstream)
        return vals[exe.output_slot], [vals[s] for s in slots]

    return {"engine: execute()": through_execute, "engine: raw executable": raw}


# --- (a) conv2d ---------------------------------------------------------------------------------

def conv_numpy(x: np.ndarray, w: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, ...]:
    """Forward and backward of conv2d (stride 1, padding 1) by im2col, by hand."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = sliding_window_view(xp, (kh, kw), axis=(2, 3))  # (n, c, h, w, kh, kw), a view
    cols = win.transpose(0, 1, 4, 5, 2, 3).reshape(n, c * kh * kw, h * wd)  # the copy
    wm = w.reshape(o, -1)
    out = (wm @ cols).reshape(n, o, h, wd)
    g2 = g.reshape(n, o, h * wd)
    dw = np.einsum("nop,nkp->ok", g2, cols, optimize=True).reshape(w.shape)
    dcols = (wm.T @ g2).reshape(n, c, kh, kw, h, wd)
    dxp = np.zeros_like(xp)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i:i + h, j:j + wd] += dcols[:, :, i, j]
    return out, dxp[:, :, 1:-1, 1:-1], dw


def bench_conv(rounds: int, budget: float) -> dict[str, list[float]]:
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal((32, 16, 32, 32)), rng.standard_normal((32, 16, 3, 3))
    g = rng.standard_normal((32, 32, 32, 32))
    fns = _engine("conv2d(x, w, padding=1)", {"x": x, "w": w}, g)
    fns["hand NumPy im2col"] = lambda: conv_numpy(x, w, g)
    ref, grads = conv_numpy(x, w, g), execute(
        compile_graph(parse_expression("conv2d(x, w, padding=1)", REGISTRY).graph, REGISTRY),
        {"x": x, "w": w}, Query(upstream=g))
    np.testing.assert_allclose(grads.output, ref[0], atol=1e-9)
    np.testing.assert_allclose(grads.gradients["x"], ref[1], atol=1e-9)
    np.testing.assert_allclose(grads.gradients["w"], ref[2], atol=1e-8)
    return round_robin(fns, rounds, calls_for(fns["hand NumPy im2col"], budget))


# --- (b) max_pool2d -----------------------------------------------------------------------------

def pool_numpy(x: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    n, c, h, w = x.shape
    x6 = x.reshape(n, c, h // 2, 2, w // 2, 2)
    out = x6.max(axis=(3, 5))
    hit = x6 == out[:, :, :, None, :, None]
    share = g / hit.sum(axis=(3, 5))
    return out, (hit * share[:, :, :, None, :, None]).reshape(x.shape)


def bench_pool(rounds: int, budget: float) -> dict[str, list[float]]:
    rng = np.random.default_rng(1)
    x, g = rng.standard_normal((32, 16, 32, 32)), rng.standard_normal((32, 16, 16, 16))
    fns = _engine("max_pool2d(x, kernel_size=2)", {"x": x}, g)
    fns["hand NumPy reshape"] = lambda: pool_numpy(x, g)
    return round_robin(fns, rounds, calls_for(fns["hand NumPy reshape"], budget))


# --- (c) layer_norm -----------------------------------------------------------------------------

def layer_norm_numpy(x: np.ndarray, s: np.ndarray, b: np.ndarray, g: np.ndarray
                     ) -> tuple[np.ndarray, ...]:
    xc = x - x.mean(axis=-1, keepdims=True)
    inv = 1.0 / np.sqrt((xc * xc).mean(axis=-1, keepdims=True) + 1e-5)
    xhat = xc * inv
    out = xhat * s + b
    gs = g * s
    dx = inv * (gs - gs.mean(axis=-1, keepdims=True)
                - xhat * (gs * xhat).mean(axis=-1, keepdims=True))
    return out, dx, (g * xhat).sum(axis=(0, 1)), g.sum(axis=(0, 1))


def bench_layer_norm(rounds: int, budget: float) -> dict[str, list[float]]:
    rng = np.random.default_rng(2)
    x, g = rng.standard_normal((128, 64, 256)), rng.standard_normal((128, 64, 256))
    s, b = rng.standard_normal(256), rng.standard_normal(256)
    fns = _engine("layer_norm(x, s, b)", {"x": x, "s": s, "b": b}, g)
    fns["hand NumPy formulas"] = lambda: layer_norm_numpy(x, s, b, g)
    return round_robin(fns, rounds, calls_for(fns["hand NumPy formulas"], budget))


# --- the report ---------------------------------------------------------------------------------

def print_table(title: str, times: dict[str, list[float]]) -> None:
    base = list(times.values())[-1]
    print(f"\n### {title}\n")
    print(f"| {'':26} | {'min ms':>8} | {'median ms':>9} | {'÷ NumPy median':>14} "
          f"| {'÷ NumPy paired':>14} |")
    print(f"|{'-' * 28}|{'-' * 10}|{'-' * 11}|{'-' * 16}|{'-' * 16}|")
    for name, ts in times.items():
        ratio = statistics.median(ts) / statistics.median(base)
        paired = statistics.median(t / b for t, b in zip(ts, base))
        print(f"| {name:26} | {min(ts) * 1e3:8.2f} | {statistics.median(ts) * 1e3:9.2f} "
              f"| {ratio:14.2f} | {paired:14.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ops", description=__doc__)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--quick", action="store_true", help="3 rounds, short batches")
    args = parser.parse_args()
    rounds, budget = (3, 0.2) if args.quick else (args.rounds, 1.0)
    print_table("conv2d 32x16x32x32 * 32x16x3x3, padding 1: forward + backward",
                bench_conv(rounds, budget))
    print_table("max_pool2d 2x2 on 32x16x32x32: forward + backward", bench_pool(rounds, budget))
    print_table("layer_norm over 256 of 128x64x256: forward + backward",
                bench_layer_norm(rounds, budget))


if __name__ == "__main__":
    main()
