"""Status, time and worker RSS growth per class of validation-boundary attack.

    .venv/bin/python -m bench.boundary [--only wrt-objects,...] [--size wrt-objects=2097152]

Sends every class of ``tests/e2e/boundary_cases.py`` once, at the size the test sends (or the
one given), to a one-worker gunicorn on the default settings, sampling the worker's ``VmRSS``
every 5 ms, and prints one row per class: the status, the seconds to the answer, the worker's
RSS before and its growth while the request was served, and whether the worker was replaced.
Run from another checkout's root (with this file and ``tests/e2e/boundary_cases.py`` copied
in) to measure older code the same way; there, pass smaller sizes for the classes that grew a
worker by gigabytes.
"""

from __future__ import annotations

import argparse
import threading
import time

from tests.e2e.boundary_cases import attacks, request, setup_requests
from tests.e2e.resource_cases import rss_mb, send
from tests.e2e.server import GunicornServer


class Sampler:
    """The highest VmRSS of any worker since :meth:`reset`."""

    def __init__(self, srv: GunicornServer) -> None:
        self.srv = srv
        self.peak = 0.0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            for pid in self.srv.worker_pids():
                self.peak = max(self.peak, rss_mb(pid)[0])
            time.sleep(0.005)

    def reset(self) -> float:
        now = max((rss_mb(p)[0] for p in self.srv.worker_pids()), default=0.0)
        self.peak = now
        return now


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="")
    parser.add_argument("--size", action="append", default=[], help="name=size")
    parser.add_argument("--timeout", type=float, default=120.0, help="per request (s)")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    sizes = {k: int(v) for k, v in (s.split("=", 1) for s in args.size)}
    env = {"GRADSERVE_LOG_LEVEL": "warning", "GRADSERVE_MAX_REQUESTS": "0",
           "GRADSERVE_TIMEOUT": str(int(args.timeout) + 10)}
    with GunicornServer(env, workers=1, threads=2, request_timeout=args.timeout) as srv:
        for raw in setup_requests():
            send(srv.host, srv.port, raw)
        sampler = Sampler(srv)
        sampler.thread.start()
        print("| class | size | status | seconds | RSS before (MiB) | RSS growth (MiB) "
              "| worker replaced |")
        print("|---|---|---|---|---|---|---|")
        for attack in attacks():
            if only and attack.name not in only:
                continue
            size = sizes.get(attack.name, attack.size)
            raw = request(attack, size)
            pids = srv.worker_pids()
            time.sleep(0.2)
            before = sampler.reset()
            status, body, secs = send(srv.host, srv.port, raw, timeout=args.timeout)
            time.sleep(0.05)
            grown = sampler.peak - before
            replaced = srv.worker_pids() != pids
            print(f"| {attack.name} | {size:,} {attack.unit} ({len(raw) / 2**20:.1f} MiB) "
                  f"| {status} | {secs:.2f} | {before:.0f} | {grown:.0f} | {replaced} |",
                  flush=True)
            if replaced:
                time.sleep(2.0)  # the master forks a new worker
        sampler.stop.set()


if __name__ == "__main__":
    main()
