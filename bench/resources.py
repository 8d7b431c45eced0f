"""Peak worker RSS and answers per class of resource attack, against a real gunicorn.

    .venv/bin/python -m bench.resources [--classes shape-attrs,responses,...]
    .venv/bin/python -m bench.resources --plans 10000 [--plan-budget-mib 256] [--skip-classes]

Sends every variant of ``tests/e2e/resource_cases.py`` one at a time to a 2-worker gunicorn
on the default settings, sampling each worker's ``VmRSS`` every 10 ms, and prints one row
per class: the statuses, the slowest answer, the highest RSS of any worker while the class
ran, and whether a worker was replaced. Run from another checkout's root (with this file and
``tests/e2e/resource_cases.py`` copied in) to measure older code the same way.

``--plans N``: the plan cache's byte budget against RSS. One worker of 8 threads with
``GRADSERVE_PLAN_CACHE_BYTES`` at ``--plan-budget-mib``, and 4 clients sending N distinct
graphs between them (expressions with their own constants, graph specs of 40-80 nodes on
inputs of many shapes, and some with a loss, so each entry also holds a loss plan): every
one a cache miss, compiled, run, kept, and evicted once the budget is spent. Prints the
worker's RSS and the cache's counted bytes (``gradserve_plan_cache_bytes``) every N/10
graphs: past the fill, RSS should stay flat within the budget.
"""

from __future__ import annotations

import argparse
import base64
import random
import re
import threading
import time
from collections import Counter
from typing import Any

import numpy as np

from tests.e2e.resource_cases import rss_mb, send, variants
from tests.e2e.server import GunicornServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", default="")
    parser.add_argument("--timeout", type=float, default=200.0, help="per request (s)")
    parser.add_argument("--plans", type=int, default=0, help="distinct graphs to stream")
    parser.add_argument("--plan-budget-mib", type=int, default=256)
    parser.add_argument("--plan-elements", type=int, default=0,
                        help="run the graph specs on inputs of about this many elements")
    parser.add_argument("--skip-classes", action="store_true")
    parser.add_argument("--env", default="", help="extra K=V,K=V for the plan stream's server")
    args = parser.parse_args()
    if args.plans:
        extra = dict(kv.split("=", 1) for kv in args.env.split(",") if kv)
        plan_stream(args.plans, args.plan_budget_mib, extra, args.plan_elements)
    if args.skip_classes:
        return
    wanted = set(filter(None, args.classes.split(",")))
    cases = [v for v in variants() if not wanted or v.cls in wanted]
    env = {"GRADSERVE_LOG_LEVEL": "warning", "GRADSERVE_MAX_REQUESTS": "0"}
    with GunicornServer(env, workers=2, threads=2, request_timeout=200) as srv:
        pids = srv.worker_pids()
        peak = {"now": 0.0}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for pid in srv.worker_pids():
                    peak["now"] = max(peak["now"], rss_mb(pid)[0])
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        base = max(rss_mb(p)[0] for p in pids)
        print(f"workers at start: {base:.0f} MiB RSS")
        print("| class | variants | statuses | slowest (s) | peak worker RSS (MiB) |")
        print("|---|---|---|---|---|")
        for cls in dict.fromkeys(v.cls for v in cases):
            peak["now"] = 0.0
            statuses: Counter[int] = Counter()
            slowest = 0.0
            group = [v for v in cases if v.cls == cls]
            for v in group:
                status, _, secs = send(srv.host, srv.port, v.raw, timeout=args.timeout)
                statuses[status] += 1
                slowest = max(slowest, secs)
            time.sleep(0.05)
            hist = ", ".join(f"{s}x{n}" for s, n in sorted(statuses.items()))
            print(f"| {cls} | {len(group)} | {hist} | {slowest:.2f} | {peak['now']:.0f} |")
        stop.set()
        print(f"worker pids unchanged: {srv.worker_pids() == pids}")


def tensor(n: int, value: float) -> dict[str, Any]:
    data = base64.b64encode(np.full(n, value).tobytes()).decode()
    return {"shape": [n], "dtype": "float64", "b64": data}


def distinct_graph(i: int, rng: random.Random, elements: int = 0) -> dict[str, Any]:
    """The i-th graph of the stream: never seen before (its constants or shapes differ).
    ``elements``: graph specs run on inputs of about that many elements (b64 both ways), so
    each request also allocates and frees ~40 temporaries of that size."""
    if i % 3 == 0 and not elements:
        terms = " + ".join(f"{rng.random():.9f} * tanh(W{k % 3} @ x + {i}.5)" for k in range(6))
        mats = {f"W{k}": [[0.01 * (k + 1)] * 8] * 8 for k in range(3)}
        return {"expression": f"sum({terms})", "values": {**mats, "x": [0.2] * 8}}
    n = 40 + i % 41
    m = (elements or 2) + i % 97
    nodes = [{"id": "a0", "op": "mul", "args": ["x", "x"]}]
    for k in range(1, n):
        nodes.append({"id": f"a{k}", "op": rng.choice(["add", "mul", "sub"]),
                      "args": [f"a{k - 1}", rng.choice(["x", "a0"])]})
    body: dict[str, Any] = {"values": {"x": tensor(m, 0.5) if elements else [0.5] * m}}
    if elements:
        body["encoding"] = "b64"
    if i % 3 == 1:
        nodes.append({"id": "out", "op": "sum", "args": [f"a{n - 1}"]})
    else:  # a loss: the entry holds the loss plan too
        nodes.append({"id": "out", "op": "tanh", "args": [f"a{n - 1}"]})
        body["loss"] = {"type": "mse",
                        "targets": tensor(m, 0.1) if elements else [0.1] * m}
    body["graph"] = {"inputs": {"x": {"shape": [m]}}, "nodes": nodes, "output": "out"}
    return body


def plan_stream(total: int, budget_mib: int, extra: dict[str, str], elements: int = 0
                ) -> None:
    env = {"GRADSERVE_LOG_LEVEL": "warning", "GRADSERVE_MAX_REQUESTS": "0",
           "GRADSERVE_PLAN_CACHE_BYTES": str(budget_mib << 20), "GRADSERVE_L1_SIZE": "1000000",
           **extra}
    with GunicornServer(env, workers=1, threads=8, request_timeout=60) as srv:
        (pid,) = srv.worker_pids()
        base = rss_mb(pid)[0]
        print(f"\n## Plan cache budget {budget_mib} MiB vs RSS: {total} distinct graphs, "
              f"1 worker x 8 threads, 4 clients; inputs of ~{elements or 'a few'} elements; "
              f"extra env {extra or '-'}\n")
        print(f"worker at start: {base:.0f} MiB RSS. Busy: the highest RSS sampled while the "
              "graphs ran (their temporaries included); idle: after they finished and a "
              "second passed (what the worker keeps).\n")
        print("| graphs sent | busy RSS (MiB) | idle RSS (MiB) | idle - start | counted plan "
              "bytes (MiB) | statuses |")
        print("|---|---|---|---|---|---|")
        statuses: Counter[int] = Counter()
        step = max(1, total // 10)
        rngs = [random.Random(k) for k in range(4)]
        for done in range(step, total + step, step):
            todo = list(range(done - step, min(done, total)))
            busy = run_round(srv, pid, todo, rngs, elements, statuses)
            time.sleep(1.1)  # past the allocator's once-a-second trim
            srv.get("/healthz")  # a request after it: the trim runs
            report(srv, pid, min(done, total), base, busy, statuses)
        print(f"\nworker pid unchanged: {srv.worker_pids() == [pid]}")


def run_round(srv: GunicornServer, pid: int, todo: list[int], rngs: list[random.Random],
              elements: int, statuses: Counter) -> float:
    """Send the graphs ``todo`` from 4 clients; the highest worker RSS sampled meanwhile."""
    peak = [0.0]
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_mb(pid)[0])
            time.sleep(0.01)

    def client(k: int) -> None:
        for i in todo[k::4]:
            status, _, _ = srv.post("/v1/gradients", distinct_graph(i, rngs[k], elements),
                                    timeout=60)
            statuses[status] += 1

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    sampler.join()
    return peak[0]


def report(srv: GunicornServer, pid: int, done: int, base: float, busy: float,
           statuses: Counter) -> None:
    _, _, text = srv.get("/metrics")
    counted = sum(float(m) for m in re.findall(
        rb"^gradserve_plan_cache_bytes(?:\{[^}]*\})? ([0-9.e+]+)$", text, re.M))
    now = rss_mb(pid)[0]
    hist = ", ".join(f"{s}x{n}" for s, n in sorted(statuses.items()))
    print(f"| {done} | {busy:.0f} | {now:.0f} | {now - base:+.0f} | {counted / 2**20:.1f} | "
          f"{hist} |", flush=True)


if __name__ == "__main__":
    main()
