"""Inline gradient requests under load while the Redis graph store is stopped and restarted.

    .venv/bin/python -m bench.faults [--clients 4] [--before 5] [--outage 10] [--after 5]

A private redis-server and a real gunicorn (2 gthread workers of 2 threads) with
``GRADSERVE_REDIS_URL``, ``GRADSERVE_STORE_TIMEOUT_MS=100`` and
``GRADSERVE_BREAKER_COOLDOWN_S=0.5``. ``--clients`` threads, each on its own keep-alive
connection, send inline expression requests back to back (the lecture's three examples,
with values that change every request; every answer is checked against plain-Python
arithmetic). Meanwhile one more thread polls ``/readyz`` and another registers a new graph
every 100 ms. The timeline: ``--before`` seconds with Redis up, then Redis is stopped
(SIGTERM) for ``--outage`` seconds, then started again (empty) for ``--after`` seconds.

Reported per phase (by the time a request started): requests, errors (anything but a
correct 200), p50 / p99 / max latency; the /readyz answers (status and store state); and
what registration got (201 before and after, 503 with Retry-After during; never a 500).

Inline graphs never need the store (docs/api.md §5): the outage must not cost them a single
error, and their latency must not move. Not a test: ``tests/e2e/test_load_faults.py`` runs
the same load, shorter, and asserts it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from tests.e2e.server import GunicornServer
from tests.redis_server import RedisServer

PHASES = ("before", "outage", "after")
SERVER_ENV = {
    "GRADSERVE_STORE_TIMEOUT_MS": "100",
    "GRADSERVE_BREAKER_COOLDOWN_S": "0.5",
    "GRADSERVE_LOG_LEVEL": "warning",
}


# --- requests with answers computed by hand ---------------------------------------------------


def inline_request(i: int) -> tuple[dict[str, Any], float, dict[str, Any]]:
    """The i-th inline request: (body, expected output, expected gradients)."""
    a = ((i * 7919) % 1000) / 100.0 - 5.0  # values in [-5, 5), different every request
    b = ((i * 104729) % 1000) / 250.0 - 2.0
    kind = i % 3
    if kind == 0:  # (x + y) * z
        x, y, z = a, b, 1.5
        body = {"expression": "(x + y) * z", "values": {"x": x, "y": y, "z": z}}
        return body, (x + y) * z, {"x": z, "y": z, "z": x + y}
    if kind == 1:  # the sigmoid neuron
        w0, x0, w1, x1, w2 = a / 5, -1.0, b, -2.0, -3.0
        s = w0 * x0 + w1 * x1 + w2
        f = 1 / (1 + math.exp(-s))
        d = f * (1 - f)
        body = {"expression": "1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))",
                "values": {"w0": w0, "x0": x0, "w1": w1, "x1": x1, "w2": w2}}
        return body, f, {"w0": x0 * d, "x0": w0 * d, "w1": x1 * d, "x1": w1 * d, "w2": d}
    # sum((W @ x) ** 2)
    W = [[0.1, a / 10], [-0.3, 0.8]]
    x = [0.2, b / 4]
    q = [W[0][0] * x[0] + W[0][1] * x[1], W[1][0] * x[0] + W[1][1] * x[1]]
    body = {"expression": "sum((W @ x) ** 2)", "values": {"W": W, "x": x}}
    grads = {"W": [[2 * q[0] * x[0], 2 * q[0] * x[1]], [2 * q[1] * x[0], 2 * q[1] * x[1]]],
             "x": [2 * (W[0][0] * q[0] + W[1][0] * q[1]), 2 * (W[0][1] * q[0] + W[1][1] * q[1])]}
    return body, q[0] ** 2 + q[1] ** 2, grads


def close(actual: Any, expected: Any, tol: float = 1e-9) -> bool:
    if isinstance(expected, list):
        return (isinstance(actual, list) and len(actual) == len(expected)
                and all(close(a, e, tol) for a, e in zip(actual, expected)))
    return (isinstance(actual, int | float) and not isinstance(actual, bool)
            and abs(actual - expected) <= tol * max(1.0, abs(expected)))


def check_answer(data: bytes, output: float, gradients: dict[str, Any]) -> str | None:
    """None if the body has this output and these gradients, else what is wrong."""
    try:
        doc = json.loads(data)
    except ValueError:
        return "not JSON"
    if not close(doc.get("output"), output):
        return f"output {doc.get('output')!r} != {output!r}"
    got = doc.get("gradients") or {}
    for name, value in gradients.items():
        if not close(got.get(name), value):
            return f"gradient {name} {got.get(name)!r} != {value!r}"
    return None


# --- the load --------------------------------------------------------------------------------


@dataclass
class Sample:
    phase: str
    latency: float
    error: str | None  # None: a correct 200


@dataclass
class OutageRun:
    """The load of the module docstring against ``server`` while ``redis`` goes away."""

    server: GunicornServer
    redis: RedisServer
    clients: int = 4
    before_s: float = 5.0
    outage_s: float = 10.0
    after_s: float = 5.0
    samples: list[Sample] = field(default_factory=list)
    readyz: list[tuple[str, int, str]] = field(default_factory=list)  # phase, status, store
    registrations: list[tuple[str, int, str | None]] = field(default_factory=list)
    phase: str = "before"
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _counter: int = 0

    def _next(self) -> int:
        with self._lock:
            self._counter += 1
            return self._counter

    def _connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.server.host, self.server.port, timeout=10)

    def _client(self) -> None:
        conn = self._connect()
        mine: list[Sample] = []
        try:
            while not self._stop.is_set():
                body, output, grads = inline_request(self._next())
                phase = self.phase
                start = time.perf_counter()
                try:
                    conn.request("POST", "/v1/gradients", body=json.dumps(body),
                                 headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    mine.append(Sample(phase, time.perf_counter() - start,
                                       type(exc).__name__))
                    conn.close()
                    conn = self._connect()
                    continue
                latency = time.perf_counter() - start
                error = (f"HTTP {resp.status}" if resp.status != 200
                         else check_answer(data, output, grads))
                mine.append(Sample(phase, latency, error))
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
        finally:
            conn.close()
            with self._lock:
                self.samples.extend(mine)

    def _poll_readyz(self) -> None:
        while not self._stop.wait(0.05):
            phase = self.phase
            try:
                status, _, data = self.server.get("/readyz", timeout=5)
                store = json.loads(data).get("store", "?")
            except (OSError, ValueError, http.client.HTTPException) as exc:
                status, store = 0, type(exc).__name__
            with self._lock:
                self.readyz.append((phase, status, store))

    def _register(self) -> None:
        k = 0
        while not self._stop.wait(0.1):
            k += 1
            phase = self.phase
            body = {"expression": f"x * y + {k}.5"}  # a graph never registered before
            try:
                status, headers, _ = self.server.post("/v1/graphs", body, timeout=5)
                retry_after = headers.get("Retry-After")
            except (OSError, http.client.HTTPException) as exc:
                status, retry_after = 0, type(exc).__name__
            with self._lock:
                self.registrations.append((phase, status, retry_after))

    def run(self) -> OutageRun:
        workers = [threading.Thread(target=self._client, daemon=True)
                   for _ in range(self.clients)]
        workers += [threading.Thread(target=self._poll_readyz, daemon=True),
                    threading.Thread(target=self._register, daemon=True)]
        for t in workers:
            t.start()
        try:
            time.sleep(self.before_s)
            self.phase = "outage"  # from the moment the server is asked to stop
            self.redis.stop()
            time.sleep(self.outage_s)
            # "after" from the moment the restart is asked for: a loaded machine may take a
            # while to bring Redis up, and what succeeds meanwhile is not "during the outage".
            self.phase = "after"
            self.redis.start()
            time.sleep(self.after_s)
        finally:
            self._stop.set()
            for t in workers:
                t.join(30)
        return self


# --- reporting -------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summary(run: OutageRun) -> dict[str, dict[str, Any]]:
    """Per phase: requests, errors (with kinds), p50/p99/max latency in ms."""
    out = {}
    for phase in PHASES:
        samples = [s for s in run.samples if s.phase == phase]
        lat = [s.latency for s in samples]
        errors = Counter(s.error for s in samples if s.error is not None)
        out[phase] = {
            "requests": len(samples),
            "errors": sum(errors.values()),
            "error_kinds": dict(errors),
            "p50_ms": percentile(lat, 0.50) * 1e3,
            "p99_ms": percentile(lat, 0.99) * 1e3,
            "max_ms": max(lat, default=float("nan")) * 1e3,
            "readyz": dict(Counter(f"{st} {store}" for ph, st, store in run.readyz
                                   if ph == phase)),
            "register": dict(Counter(
                f"{st}" + (" +Retry-After" if st == 503 and ra and ra.isdigit() else "")
                for ph, st, ra in run.registrations if ph == phase)),
        }
    return out


def markdown(stats: dict[str, dict[str, Any]], title: str) -> str:
    lines = [f"### {title}", "",
             "| phase | inline requests | errors | p50 ms | p99 ms | max ms | /readyz "
             "(status store: count) | POST /v1/graphs (status: count) |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for phase, s in stats.items():
        readyz = ", ".join(f"{k}: {v}" for k, v in sorted(s["readyz"].items())) or "-"
        reg = ", ".join(f"{k}: {v}" for k, v in sorted(s["register"].items())) or "-"
        lines.append(f"| {phase} | {s['requests']} | {s['errors']} | {s['p50_ms']:.2f} | "
                     f"{s['p99_ms']:.2f} | {s['max_ms']:.2f} | {readyz} | {reg} |")
    kinds = {p: s["error_kinds"] for p, s in stats.items() if s["error_kinds"]}
    if kinds:
        lines += ["", f"errors: {kinds}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--before", type=float, default=5.0, help="seconds with Redis up")
    parser.add_argument("--outage", type=float, default=10.0, help="seconds with Redis down")
    parser.add_argument("--after", type=float, default=5.0, help="seconds after the restart")
    args = parser.parse_args(argv)
    started = time.monotonic()
    with RedisServer() as redis_server:
        env = {**SERVER_ENV, "GRADSERVE_REDIS_URL": redis_server.url}
        with GunicornServer(env, workers=2, threads=2) as server:
            pids = server.worker_pids()
            run = OutageRun(server, redis_server, args.clients, args.before, args.outage,
                            args.after).run()
            same_workers = server.worker_pids() == pids
            tracebacks = server.logs().count("Traceback")
    stats = summary(run)
    print(markdown(stats, f"Inline requests while Redis is stopped and restarted "
                          f"({args.clients} clients, gunicorn 2 workers x 2 threads, store "
                          f"timeout 100 ms, breaker cooldown 0.5 s)"))
    print()
    print(f"- same worker pids before and after: {same_workers}; tracebacks in the server "
          f"log: {tracebacks}")
    print(f"- wall time: {time.monotonic() - started:.1f} s")
    failed = sum(s["errors"] for s in stats.values())
    return 0 if failed == 0 and same_workers and not tracebacks else 1


if __name__ == "__main__":
    raise SystemExit(main())
