"""Slow clients on bare gunicorn (``make run``'s server, no proxy in front).

    .venv/bin/python -m bench.slowclients [--slow 32] [--seconds 5]

One worker of 8 threads. Two phases in one run, each ``--seconds`` long: first alone, then
with ``--slow`` connections that sent half a body and as many that sent half a head, all
held open (``GRADSERVE_BODY_TIMEOUT_S`` is 60 s here, so none is cut meanwhile). In each
phase a health prober (``GET /healthz`` every 20 ms, a fresh connection each) and a fast
client (the lecture's gradient, back to back on one connection) run side by side; printed:
health p50 / p99 and the fast client's requests per second, and the second phase against
the first. Not a test: nothing here asserts a speed (tests/e2e/test_transport.py counts
the same thing instead).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import statistics
import threading
import time

from tests.e2e.server import GunicornServer
from tests.lecture import EX1

BODY = json.dumps({"expression": EX1["expression"], "values": EX1["values"]}).encode()


def phase(srv: GunicornServer, seconds: float) -> dict[str, float]:
    stop = threading.Event()
    health: list[float] = []
    failures = [0]
    fast = [0]

    def prober() -> None:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                status, _, _ = srv.get("/healthz", timeout=10)
                if status != 200:
                    failures[0] += 1
            except OSError:
                failures[0] += 1
            health.append(time.perf_counter() - t)
            time.sleep(0.02)

    def client() -> None:
        conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
        while not stop.is_set():
            try:
                conn.request("POST", "/v1/gradients", body=BODY,
                             headers={"Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                fast[0] += resp.status == 200
                failures[0] += resp.status != 200
            except (OSError, http.client.HTTPException):
                failures[0] += 1
                conn.close()
                conn = http.client.HTTPConnection(srv.host, srv.port, timeout=10)
        conn.close()

    threads = [threading.Thread(target=prober), threading.Thread(target=client)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    health.sort()
    return {"health_p50_ms": statistics.median(health) * 1e3,
            "health_p99_ms": health[min(len(health) - 1, int(0.99 * len(health)))] * 1e3,
            "probes": len(health), "fast_rps": fast[0] / seconds, "failures": failures[0]}


def open_slow(srv: GunicornServer, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection((srv.host, srv.port), timeout=60)
        s.sendall(b"POST /v1/gradients HTTP/1.1\r\nHost: b\r\nContent-Type: application/json"
                  b"\r\nContent-Length: 100000\r\n\r\n" + BODY[:20])
        socks.append(s)
        h = socket.create_connection((srv.host, srv.port), timeout=60)
        h.sendall(b"POST /v1/gradients HTTP/1.1\r\nHost: b\r\nContent-Le")
        socks.append(h)
    return socks


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slow", type=int, default=32)
    p.add_argument("--seconds", type=float, default=5.0)
    args = p.parse_args(argv)
    env = {"GRADSERVE_LOG_LEVEL": "warning", "GRADSERVE_BODY_TIMEOUT_S": "60"}
    load = os.getloadavg()
    with GunicornServer(env, workers=1, threads=8) as srv:
        alone = phase(srv, args.seconds)
        socks = open_slow(srv, args.slow)
        time.sleep(0.3)
        slow = phase(srv, args.seconds)
        for s in socks:
            s.close()
    print(f"\n## Slow clients on bare gunicorn: 1 worker x 8 threads, {args.slow} half-sent "
          f"bodies + {args.slow} half-sent heads held open; {args.seconds:g} s a phase; load "
          f"average {load[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end\n")
    print("| phase | health p50 ms | health p99 ms | probes | fast client req/s | failures |")
    print("|---|---|---|---|---|---|")
    for name, r in (("alone", alone), (f"{args.slow}+{args.slow} slow", slow)):
        print(f"| {name} | {r['health_p50_ms']:.1f} | {r['health_p99_ms']:.1f} | "
              f"{r['probes']} | {r['fast_rps']:.0f} | {r['failures']} |")
    print(f"\nwith slow clients / alone: fast client {slow['fast_rps'] / alone['fast_rps']:.2f}x"
          f", health p99 {slow['health_p99_ms'] / alone['health_p99_ms']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
