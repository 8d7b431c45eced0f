"""Training steps against gradients: what a step costs on top of its gradient, and what
``steps: K`` saves over K requests.

    .venv/bin/python -m bench.step [--repeat 5] [--small-steps 100]

(a) ``POST /v1/mlp/step`` (one SGD step: the answer is the updated weights, as big as the
    gradients) against ``POST /v1/mlp/gradients`` on the 784 → 1024 → 1024 → 10 MLP, batch
    256, ReLU, softmax cross-entropy, float64, every tensor b64 both ways, through Flask's
    test client (the whole request: parse, validate, decode, engine, update, encode).
    Target: ≤ 1.15×. Adam is reported too: its request and answer carry two slots per
    parameter, three times the tensors (no target: the wire is the cost).
(b) ``steps: 100`` in one request against 100 requests of one step each (the state sent
    back every time) on a small MLP (2 → 100 → 3, the 300-point spiral), Adam.

Every comparison is interleaved (round-robin) in the same run; the median and the minimum
of the runs are shown, the minimum being the steadier figure on a shared machine. Not a
test: nothing here asserts a speed. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import base64
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from service import create_app
from service.config import load_settings
from service.store.memory import MemoryStore

SIZES = (784, 1024, 1024, 10)
BATCH = 256


def b64(arr: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(arr, dtype="<f8")
    return {"shape": list(a.shape), "dtype": "float64",
            "b64": base64.b64encode(a.tobytes()).decode()}


def unb64(t: Any) -> np.ndarray:
    if isinstance(t, dict):
        return np.frombuffer(base64.b64decode(t["b64"]), dtype="<f8").reshape(t["shape"])
    return np.asarray(t, dtype=np.float64)


def mlp(sizes: tuple[int, ...], batch: int, seed: int = 0
        ) -> tuple[list[dict[str, Any]], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        layers.append({"weight": rng.standard_normal((n_out, n_in)) / np.sqrt(n_in),
                       "bias": np.zeros(n_out),
                       "activation": "relu" if i < len(sizes) - 2 else "identity"})
    return layers, rng.standard_normal((batch, sizes[0])), rng.integers(0, sizes[-1], batch)


def body_of(layers: list[dict[str, Any]], x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    return {"layers": [{"weight": b64(la["weight"]), "bias": b64(la["bias"]),
                        "activation": la["activation"]} for la in layers],
            "inputs": b64(x), "loss": {"type": "softmax_cross_entropy", "targets": b64(y)},
            "encoding": "b64"}


def interleave(cases: dict[str, Callable[[], object]], repeat: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in cases}
    for fn in cases.values():
        fn()  # warm: compile, caches
    for _ in range(repeat):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def post(client: Any, url: str, body: dict[str, Any]) -> dict[str, Any]:
    resp = client.post(url, json=body)
    assert resp.status_code == 200, resp.get_data(as_text=True)[:300]
    return resp.get_json()


def big(client: Any, repeat: int) -> None:
    layers, x, y = mlp(SIZES, BATCH)
    base = body_of(layers, x, y)
    sgd = {**base, "optimizer": {"type": "sgd", "lr": 0.01}}
    adam = {**base, "optimizer": {"type": "adam"}}
    first = post(client, "/v1/mlp/step", adam)
    adam_again = {**adam, "layers": [{"weight": la["weight"], "bias": la["bias"],
                                      "activation": la["activation"]}
                                     for la in first["layers"]], "state": first["state"]}
    times = interleave({
        "gradients": lambda: post(client, "/v1/mlp/gradients", base),
        "step sgd": lambda: post(client, "/v1/mlp/step", sgd),
        "step adam (state in and out)": lambda: post(client, "/v1/mlp/step", adam_again),
    }, repeat)
    print(f"\n(a) {'-'.join(map(str, SIZES))}, batch {BATCH}, float64, b64, "
          f"Flask test client, {repeat} runs\n")
    print("| request | median ms | min ms | ratio to gradients (median · min) |")
    print("|---|---:|---:|---:|")
    g_med, g_min = statistics.median(times["gradients"]), min(times["gradients"])
    for name, ts in times.items():
        med, low = statistics.median(ts), min(ts)
        print(f"| {name} | {med * 1e3:.1f} | {low * 1e3:.1f} | "
              f"{med / g_med:.3f} · {low / g_min:.3f} |")


def small(client: Any, repeat: int, k: int) -> None:
    from tests.client.spiral import spiral

    x, y = spiral()
    layers, _, _ = mlp((2, 100, 3), len(x), seed=1)
    base = {**body_of(layers, x, y), "encoding": "json", "optimizer": {"type": "adam"}}

    def one_request() -> None:
        post(client, "/v1/mlp/step", {**base, "steps": k})

    def k_requests() -> None:
        body = base
        for _ in range(k):
            out = post(client, "/v1/mlp/step", body)
            body = {**base, "layers": out["layers"], "state": out["state"]}

    times = interleave({f"steps: {k}": one_request, f"{k} requests": k_requests}, repeat)
    one, many = times[f"steps: {k}"], times[f"{k} requests"]
    print(f"\n(b) 2-100-3 on the 300-point spiral, Adam, JSON, {repeat} runs\n")
    print("| form | median ms | min ms | per step (min) |")
    print("|---|---:|---:|---:|")
    for name, ts in times.items():
        print(f"| {name} | {statistics.median(ts) * 1e3:.1f} | {min(ts) * 1e3:.1f} | "
              f"{min(ts) / k * 1e3:.2f} ms |")
    print(f"\n{k} requests / one request of {k} steps: "
          f"{statistics.median(many) / statistics.median(one):.2f}× (median), "
          f"{min(many) / min(one):.2f}× (min)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--small-steps", type=int, default=100)
    args = parser.parse_args()
    logging.getLogger("gradserve").setLevel(logging.WARNING)  # no access lines
    app = create_app(load_settings(env={}), store=MemoryStore())
    client = app.test_client()
    big(client, args.repeat)
    small(client, args.repeat, args.small_steps)


if __name__ == "__main__":
    main()
