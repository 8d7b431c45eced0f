"""Peak worker RSS and answers per class of resource attack, against a real gunicorn.

    .venv/bin/python -m bench.resources [--classes shape-attrs,responses,...]

Sends every variant of ``tests/e2e/resource_cases.py`` one at a time to a 2-worker gunicorn
on the default settings, sampling each worker's ``VmRSS`` every 10 ms, and prints one row
per class: the statuses, the slowest answer, the highest RSS of any worker while the class
ran, and whether a worker was replaced. Run from another checkout's root (with this file and
``tests/e2e/resource_cases.py`` copied in) to measure older code the same way.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter

from tests.e2e.resource_cases import rss_mb, send, variants
from tests.e2e.server import GunicornServer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--classes", default="")
    parser.add_argument("--timeout", type=float, default=200.0, help="per request (s)")
    args = parser.parse_args()
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


if __name__ == "__main__":
    main()
