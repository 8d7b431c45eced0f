"""``/metrics`` scrape time under load with worker recycling: does it stay flat?

    .venv/bin/python -m bench.scrape [--seconds 120] [--max-requests 1000] [--clients 4]

gradserve under a real gunicorn (2 gthread workers) recycling a worker every
``--max-requests`` requests (an hour of recycling at the production default compressed into
minutes), loaded by ``--clients`` keep-alive clients sending the lecture's sigmoid (inline
and by id). A scraper fetches ``/metrics`` every ``--interval`` seconds and times it.
Prints, per tenth of the run: the median and max scrape time over HTTP, the time to read
and render the metric files alone (in this process), the metric files on disk
(live workers + archives: should stay flat) and the workers recycled so far; then the
request totals ``/metrics`` reports against the requests the clients got answers to (they
must agree: a recycled worker's counts are flushed at its exit and folded into the archive).
Not a test: nothing here asserts a speed; the machine is shared.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import threading
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from bench.http import SIGMOID, SIGMOID_GRAPH, SIGMOID_VALUES
from tests.e2e.server import GunicornServer


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scrape",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--max-requests", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--interval", type=float, default=1.0)
    args = parser.parse_args(argv)

    env = {"GRADSERVE_MAX_REQUESTS": str(args.max_requests),
           "GRADSERVE_MAX_REQUESTS_JITTER": str(args.max_requests // 10),
           "GRADSERVE_LOG_LEVEL": "warning"}
    with GunicornServer(env, workers=2, threads=4, startup_timeout=60.0) as srv:
        status, _, raw = srv.post("/v1/graphs", {"graph": SIGMOID_GRAPH})
        gid = json.loads(raw)["graph_id"]
        bodies = [("/v1/gradients", json.dumps(SIGMOID).encode()),
                  (f"/v1/graphs/{gid}/gradients", json.dumps({"values": SIGMOID_VALUES}).encode())]
        stop = time.monotonic() + args.seconds
        answered = [0]
        lock = threading.Lock()
        pids: set[int] = set()

        def client() -> None:
            conn = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
            i = mine = 0
            while time.monotonic() < stop:
                path, body = bodies[i % 2]
                i += 1
                try:
                    conn.request("POST", path, body=body,
                                 headers={"Content-Type": "application/json"})
                    resp = conn.getresponse()
                    resp.read()
                    mine += resp.status == 200
                    if resp.getheader("Connection", "").lower() == "close":
                        conn.close()
                except (http.client.HTTPException, OSError):
                    conn.close()
                    conn = http.client.HTTPConnection(srv.host, srv.port, timeout=30)
            conn.close()
            with lock:
                answered[0] += mine

        # (t, scrape ms, collect ms, files, recycled)
        samples: list[tuple[float, float, float, int, int]] = []
        threads = [threading.Thread(target=client, daemon=True) for _ in range(args.clients)]
        start = time.monotonic()
        for t in threads:
            t.start()
        metrics_dir = Path(srv.tmpdir or ".", "metrics")
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            status, _, _ = srv.get("/metrics")
            ms = (time.perf_counter() - t0) * 1e3
            # The files alone: what a scrape costs whatever the workers are doing (a scrape
            # over HTTP also waits for a worker that may be booting or busy).
            t0 = time.perf_counter()
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(metrics_dir))
            generate_latest(registry)
            collect_ms = (time.perf_counter() - t0) * 1e3
            pids.update(srv.worker_pids())
            files = len(list(metrics_dir.glob("*.db")))
            samples.append((time.monotonic() - start, ms, collect_ms, files,
                            max(0, len(pids) - 2)))
            time.sleep(args.interval)
        for t in threads:
            t.join()
        time.sleep(1.0)  # the last flushes
        _, _, text = srv.get("/metrics")
        reported = sum(s.value for f in text_string_to_metric_families(text.decode())
                       for s in f.samples if s.name == "gradserve_requests_total"
                       and s.labels.get("status") == "200"
                       and s.labels.get("route", "").endswith("/gradients"))

    print(f"# bench.scrape — {args.seconds:g} s, max_requests {args.max_requests}, "
          f"{args.clients} clients, load average {os.getloadavg()[0]:.2f} (shared machine)\n")
    print("| window | scrapes | HTTP median ms | HTTP max ms | files only, median ms | "
          "metric files | workers recycled |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    tenth = args.seconds / 10
    for k in range(10):
        window = [s for s in samples if k * tenth <= s[0] < (k + 1) * tenth]
        if not window:
            continue
        ms = [s[1] for s in window]
        collect = [s[2] for s in window]
        print(f"| {k * tenth:.0f}-{(k + 1) * tenth:.0f} s | {len(ms)} | "
              f"{statistics.median(ms):.1f} | {max(ms):.1f} | "
              f"{statistics.median(collect):.2f} | {window[-1][3]} | {window[-1][4]} |")
    print(f"\n200 answers the clients got (+1 warm-up registration aside): {answered[0]}; "
          f"/metrics reports {reported:.0f} for the gradient routes\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
