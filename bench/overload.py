"""Overload and slow clients against a real gunicorn on the default settings.

    .venv/bin/python -m bench.overload [--requests 64] [--held 8]

1. ``--requests`` parallel heavy requests (a gradient check of a 60 x 60 layer, ~0.5 s of
   CPU each) while a probe sends ``GET /healthz`` every 20 ms: the status histogram, the
   slowest answer, and the health latency (p50, p99, probes over 1 s or failed).
2. ``--held`` connections that send headers and half a body, then stop, while the probe
   runs and normal requests are sent: how the normal requests and the probes fare.

Run from another checkout's root (with this file copied in) to measure older code the same
way. Prints one markdown row per phase; not a test.
"""

from __future__ import annotations

import argparse
import socket
import threading
import time
from collections import Counter

from tests.e2e.server import GunicornServer

HEAVY = {"expression": "sum(tanh(W @ x))", "check": True,
         "values": {"W": [[0.01] * 60] * 60, "x": [0.2] * 60}}
NORMAL = {"expression": "(x + y) * z", "values": {"x": -2, "y": 5, "z": -4}}


def probe(srv: GunicornServer, stop: threading.Event, out: list[float], fails: list[str]
          ) -> None:
    while not stop.is_set():
        t0 = time.perf_counter()
        try:
            status = srv.get("/healthz", timeout=10)[0]
            if status != 200:
                fails.append(str(status))
        except OSError as exc:
            fails.append(type(exc).__name__)
        out.append(time.perf_counter() - t0)
        time.sleep(0.02)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--held", type=int, default=8)
    args = parser.parse_args()
    env = {"GRADSERVE_LOG_LEVEL": "warning", "GRADSERVE_MAX_REQUESTS": "0"}
    print("| phase | answers | slowest (s) | health p50 / p99 (ms) | probes > 1 s or failed |")
    print("|---|---|---|---|---|")
    # workers=2 as CI; threads as each checkout's default (the variable is not set).
    with _server(env) as srv:
        lat: list[float] = []
        fails: list[str] = []
        stop = threading.Event()
        prober = threading.Thread(target=probe, args=(srv, stop, lat, fails))
        results: list[tuple[int, float]] = []
        go = threading.Event()

        def heavy() -> None:
            go.wait()
            t0 = time.perf_counter()
            try:
                status = srv.post("/v1/gradients", HEAVY, timeout=200)[0]
            except OSError:
                status = 0
            results.append((status, time.perf_counter() - t0))

        threads = [threading.Thread(target=heavy) for _ in range(args.requests)]
        for t in threads:
            t.start()
        prober.start()
        time.sleep(0.1)
        go.set()
        for t in threads:
            t.join()
        stop.set()
        prober.join()
        hist = ", ".join(f"{s}x{n}" for s, n in sorted(Counter(s for s, _ in results).items()))
        slow = sum(1 for x in lat if x > 1.0) + len(fails)
        print(f"| {args.requests} heavy in parallel | {hist} | "
              f"{max(x for _, x in results):.2f} | {pct(lat, .5) * 1000:.0f} / "
              f"{pct(lat, .99) * 1000:.0f} | {slow} of {len(lat)} |")

        lat, fails = [], []
        stop = threading.Event()
        prober = threading.Thread(target=probe, args=(srv, stop, lat, fails))
        held = []
        for _ in range(args.held):
            sock = socket.create_connection((srv.host, srv.port), timeout=60)
            sock.sendall(b"POST /v1/gradients HTTP/1.1\r\nHost: t\r\nContent-Type: "
                         b"application/json\r\nContent-Length: 100000\r\n\r\n{\"exp")
            held.append(sock)
        prober.start()
        normal: list[tuple[int, float]] = []
        t_end = time.monotonic() + 15
        while time.monotonic() < t_end:
            t0 = time.perf_counter()
            try:
                status = srv.post("/v1/gradients", NORMAL, timeout=15)[0]
            except OSError:
                status = 0
            normal.append((status, time.perf_counter() - t0))
        stop.set()
        prober.join()
        for sock in held:
            sock.close()
        hist = ", ".join(f"{s}x{n}" for s, n in sorted(Counter(s for s, _ in normal).items()))
        slow = sum(1 for x in lat if x > 1.0) + len(fails)
        print(f"| {args.held} half-sent bodies held 15 s + normal requests | {hist} | "
              f"{max(x for _, x in normal):.2f} | {pct(lat, .5) * 1000:.0f} / "
              f"{pct(lat, .99) * 1000:.0f} | {slow} of {len(lat)} |")


class _server(GunicornServer):
    """GunicornServer without GRADSERVE_THREADS: each checkout's own default."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(env, workers=2, request_timeout=200)

    def _environment(self) -> dict[str, str]:
        env = super()._environment()
        env.pop("GRADSERVE_THREADS")
        return env


if __name__ == "__main__":
    main()
