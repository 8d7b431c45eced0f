"""Soak: tens of thousands of mixed requests; does a worker's memory stay flat?

    .venv/bin/python -m bench.soak [--requests 20000] [--warmup 1000] [--clients 4]
                                   [--control-requests 4000]

1. gradserve under a real gunicorn (2 gthread workers x 2 threads, worker recycling off:
   ``GRADSERVE_MAX_REQUESTS=0``, so the same two processes serve everything). ``--clients``
   threads, each with one keep-alive connection, send ``--warmup`` requests and then
   ``--requests`` more, drawn from a fixed mix: the lecture's examples inline with values
   that change every request (answers checked against plain-Python arithmetic), graph specs
   with ``trace``, Jacobians, b64 tensors in and out, registered graphs by id, MLPs, a new
   expression every few requests (so the compiled-graph cache keeps evicting), and a
   sample of the hostile corpus of ``tests/e2e/test_hostile.py`` (its bodies under 20 KB).
   Each worker's RSS (``VmRSS`` of ``/proc/<pid>/status``) is read after the warm-up, at
   every quarter, and at the end.
2. The negative control: the same load and the same measurement against
   ``bench.leaky_app`` (which keeps 10-50 KB per request) under the same gunicorn
   settings, for ``--control-requests``. Its growth must be far over the 20 MB target, or
   the measurement could not have seen a leak in (1).

Prints markdown tables: RSS per worker (start, quarters, end, growth against the 20 MB
target), the status histogram per kind of request, 5xx count, throughput, and the
control's RSS. Exit status 1 when gradserve answered any 5xx, a valid request failed, a
worker grew 20 MB or more, a worker was replaced, or the control did not show its leak.
Not a test (it takes minutes); nothing else depends on its numbers.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import struct
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.faults import check_answer, inline_request
from tests.e2e.server import GunicornServer

TARGET_GROWTH_MB = 20.0
SERVER_ENV = {
    # Recycling would hide a leak (and change the pids under measurement): off.
    "GRADSERVE_MAX_REQUESTS": "0",
    "GRADSERVE_MAX_REQUESTS_JITTER": "0",
    "GRADSERVE_LOG_LEVEL": "warning",
}
TIME_LIMIT_S = 240.0  # a phase that runs longer stops early (and says so)


# --- the request mix -------------------------------------------------------------------------


@dataclass(frozen=True)
class Req:
    kind: str
    method: str
    path: str
    body: bytes | None
    valid: bool  # True: must be 2xx; False: must be 4xx
    check: Callable[[bytes], str | None] | None = None


def _b64(*xs: float) -> str:
    return base64.b64encode(struct.pack(f"<{len(xs)}d", *xs)).decode()


MLP = {
    "layers": [{"weight": [[0.5, -0.25, 0.1], [0.3, 0.2, -0.4]], "bias": [0.1, -0.1],
                "activation": "relu"},
               {"weight": [[1.0, -1.0], [0.5, 0.5], [-0.2, 0.3]], "bias": [0.0, 0.1, 0.2]}],
    "inputs": [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0]],
    "loss": {"type": "softmax_cross_entropy", "targets": [0, 2]},
    "wrt": ["weights", "inputs"],
}
TRACE_GRAPH = {
    "inputs": {"w0": {}, "x0": {}, "w1": {}, "x1": {}, "w2": {}},
    "nodes": [{"id": "a", "op": "mul", "args": ["w0", "x0"]},
              {"id": "b", "op": "mul", "args": ["w1", "x1"]},
              {"id": "c", "op": "add", "args": ["a", "b"]},
              {"id": "s", "op": "add", "args": ["c", "w2"]},
              {"id": "f", "op": "sigmoid", "args": ["s"]}],
    "output": "f",
}
REGISTERED = ["sum(tanh(W @ x))", "sum(softmax(z, axis=0) * t)", "mean((a - b) ** 2)"]
REGISTERED_VALUES = [
    {"W": [[0.1, 0.2], [0.3, -0.4]], "x": [1.0, -1.0]},
    {"z": [1.0, 2.0, 3.0], "t": [0.2, 0.3, 0.5]},
    {"a": [1.0, 2.0, 3.0, 4.0], "b": [0.5, 1.5, 2.5, 3.5]},
]


def hostile_sample(max_bytes: int = 20_000) -> list[Req]:
    """The hostile corpus of the e2e tests, bodies under ``max_bytes`` (no 1 MiB limit here,
    so the cases about the body limit are left out)."""
    from tests.e2e.test_hostile import hostile_cases

    out = []
    for case in hostile_cases():
        if case.chunked or len(case.body or b"") > max_bytes or case.name.startswith("body-"):
            continue
        if 200 in case.allowed or case.content_type != "application/json":
            continue  # the mix sends JSON; content-type cases are covered by the tests
        out.append(Req(f"hostile:{case.name}", case.method, case.path, case.body, False))
    return out


class Mix:
    """Request i of the soak (deterministic: the same i is the same request)."""

    # Out of every 100 requests:
    PLAN = ([("inline", 40), ("trace", 8), ("jacobian", 6), ("b64", 6), ("by-id", 10),
             ("get-id", 3), ("mlp", 5), ("new-graph", 7), ("hostile", 15)])

    def __init__(self, graph_ids: list[str]) -> None:
        self.graph_ids = graph_ids
        self.hostile = hostile_sample()
        self.slots = [kind for kind, n in self.PLAN for _ in range(n)]
        assert len(self.slots) == 100

    def __call__(self, i: int) -> Req:
        kind = self.slots[(i * 37) % 100]  # interleaved, not in blocks
        j = i // 100
        if kind == "inline":
            body, output, grads = inline_request(i)
            return Req(kind, "POST", "/v1/gradients", json.dumps(body).encode(), True,
                       lambda data: check_answer(data, output, grads))
        if kind == "trace":
            values = {"w0": 2.0, "x0": -1.0, "w1": -3.0, "x1": -2.0, "w2": -3.0 + j % 10}
            body = {"graph": TRACE_GRAPH, "values": values, "trace": True}
            return Req(kind, "POST", "/v1/gradients", json.dumps(body).encode(), True)
        if kind == "jacobian":
            body = {"expression": "tanh(W @ x)", "jacobian": True,
                    "values": {"W": [[0.1 * (k + j % 5) for k in range(4)] for _ in range(4)],
                               "x": [1.0, -0.5, 0.25, 2.0]}}
            return Req(kind, "POST", "/v1/gradients", json.dumps(body).encode(), True)
        if kind == "b64":
            body = {"expression": "sum(x * y)", "encoding": "b64",
                    "values": {"x": {"shape": [3], "dtype": "float64",
                                     "b64": _b64(1.0, 2.0, float(j % 7))},
                               "y": {"shape": [3], "dtype": "float64",
                                     "b64": _b64(0.5, -1.0, 3.0)}}}
            return Req(kind, "POST", "/v1/gradients", json.dumps(body).encode(), True)
        if kind == "by-id":
            k = j % len(self.graph_ids)
            path = f"/v1/graphs/{self.graph_ids[k]}/gradients"
            body = {"values": REGISTERED_VALUES[k]}
            return Req(kind, "POST", path, json.dumps(body).encode(), True)
        if kind == "get-id":
            return Req(kind, "GET", f"/v1/graphs/{self.graph_ids[j % len(self.graph_ids)]}",
                       None, True)
        if kind == "mlp":
            return Req(kind, "POST", "/v1/mlp/gradients", json.dumps(MLP).encode(), True)
        if kind == "new-graph":
            # A graph no one sent before: compiled, cached, and in time evicted.
            body = {"expression": f"sum(exp(x) * {i}.25 + x ** 2)", "values": {"x": [0.5, 1.5]}}
            return Req(kind, "POST", "/v1/gradients", json.dumps(body).encode(), True)
        return self.hostile[i % len(self.hostile)]


# --- load --------------------------------------------------------------------------------------


@dataclass
class Tally:
    statuses: Counter[tuple[str, int | str]]
    failures: list[str]
    done: int
    wall: float
    stopped_early: bool


def drive(server: GunicornServer, mix: Callable[[int], Req], start: int, count: int,
          clients: int, on_progress: Callable[[int], None] | None = None,
          check_answers: bool = True) -> Tally:
    """Send requests ``start .. start+count-1`` of ``mix`` from ``clients`` threads.

    Every request gets a ``(kind, status)`` count; a valid request that is not a 2xx, a
    hostile one that is not a 4xx, or (``check_answers``) a wrong answer is a failure.
    """
    lock = threading.Lock()
    state = {"next": start}
    statuses: Counter[tuple[str, int | str]] = Counter()
    failures: list[str] = []
    sent = [0]
    end = start + count
    deadline = time.monotonic() + TIME_LIMIT_S
    progress_every = max(1, count // 4)

    def ticket() -> int | None:
        with lock:
            i = state["next"]
            if i >= end or time.monotonic() > deadline:
                return None
            state["next"] = i + 1
        if on_progress is not None and i > start and (i - start) % progress_every == 0:
            on_progress(i - start)
        return i

    def client() -> None:
        conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
        mine: Counter[tuple[str, int | str]] = Counter()
        bad: list[str] = []
        n = 0
        try:
            while (i := ticket()) is not None:
                n += 1
                req = mix(i)
                group = req.kind.split(":")[0]
                headers = {"Content-Type": "application/json"} if req.body is not None else {}
                try:
                    conn.request(req.method, req.path, body=req.body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                except (OSError, http.client.HTTPException) as exc:
                    mine[(group, type(exc).__name__)] += 1
                    bad.append(f"{req.kind}: {exc!r}")
                    conn.close()
                    conn = http.client.HTTPConnection(server.host, server.port, timeout=30)
                    continue
                mine[(group, resp.status)] += 1
                ok = (200 <= resp.status < 300) if req.valid else (400 <= resp.status < 500)
                if ok and check_answers and req.check is not None:
                    problem = req.check(data)
                    if problem:
                        ok = False
                        mine[(group, "wrong answer")] += 1
                if not ok or resp.status >= 500:
                    bad.append(f"{req.kind}: {resp.status} {data[:160]!r}")
                if resp.getheader("Connection", "").lower() == "close":
                    conn.close()
        finally:
            conn.close()
            with lock:
                statuses.update(mine)
                failures.extend(bad)
                sent[0] += n

    began = time.perf_counter()
    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done = sent[0]
    return Tally(statuses, failures, done, time.perf_counter() - began, done < count)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


@dataclass
class Soak:
    name: str
    pids: list[int]
    rss: dict[int, list[tuple[str, float]]]
    tally: Tally
    warmup: Tally
    pids_after: list[int]


def soak(name: str, app: str, mix_for: Callable[[GunicornServer], Callable[[int], Req]],
         warmup: int, requests: int, clients: int, check_answers: bool = True) -> Soak:
    with GunicornServer(SERVER_ENV, workers=2, threads=2, app=app) as server:
        mix = mix_for(server)
        warm = drive(server, mix, 0, warmup, clients, check_answers=check_answers)
        pids = server.worker_pids()
        rss: dict[int, list[tuple[str, float]]] = defaultdict(list)

        def sample(label: str) -> None:
            for pid in pids:
                try:
                    rss[pid].append((label, rss_mb(pid)))
                except OSError:
                    rss[pid].append((label, float("nan")))

        sample("start")
        tally = drive(server, mix, warmup, requests, clients,
                      on_progress=lambda n: sample(f"{n * 100 // requests}%"),
                      check_answers=check_answers)
        sample("end")
        pids_after = server.worker_pids()
    return Soak(name, pids, dict(rss), tally, warm, pids_after)


def gradserve_mix(server: GunicornServer) -> Callable[[int], Req]:
    ids = []
    for text in REGISTERED:
        status, _, data = server.post("/v1/graphs", {"expression": text})
        if status not in (200, 201):
            raise SystemExit(f"registering {text!r}: {status} {data[:300]!r}")
        ids.append(json.loads(data)["graph_id"])
    return Mix(ids)


# --- report ------------------------------------------------------------------------------------


def rss_table(result: Soak) -> tuple[str, float]:
    labels = [label for label, _ in next(iter(result.rss.values()))]
    lines = ["| worker pid | " + " | ".join(f"RSS {lb} (MB)" for lb in labels)
             + " | growth (MB) | target < 20 MB |",
             "|---|" + "---:|" * (len(labels) + 1) + "---|"]
    worst = 0.0
    for pid, samples in result.rss.items():
        growth = samples[-1][1] - samples[0][1]
        worst = max(worst, growth)
        verdict = "met" if growth < TARGET_GROWTH_MB else "**missed**"
        lines.append(f"| {pid} | " + " | ".join(f"{v:.1f}" for _, v in samples)
                     + f" | {growth:+.1f} | {verdict} |")
    return "\n".join(lines), worst


def status_table(tally: Tally) -> str:
    groups = sorted({g for g, _ in tally.statuses})
    codes = sorted({c for _, c in tally.statuses}, key=str)
    lines = ["| kind | " + " | ".join(str(c) for c in codes) + " | total |",
             "|---|" + "---:|" * (len(codes) + 1)]
    for g in groups:
        row = [tally.statuses.get((g, c), 0) for c in codes]
        lines.append(f"| {g} | " + " | ".join(str(v) if v else "" for v in row)
                     + f" | {sum(row)} |")
    totals = [sum(n for (_, c), n in tally.statuses.items() if c == code) for code in codes]
    lines.append("| **all** | " + " | ".join(str(v) for v in totals)
                 + f" | {sum(totals)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--warmup", type=int, default=1_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--control-requests", type=int, default=4_000)
    args = parser.parse_args(argv)
    began = time.monotonic()

    result = soak("gradserve", "service.wsgi:app", gradserve_mix, args.warmup, args.requests,
                  args.clients)
    control = soak("leaky_app", "bench.leaky_app:app",
                   lambda server: Mix(["g-" + "0" * 64] * 3), min(args.warmup, 500),
                   args.control_requests, args.clients, check_answers=False)

    t = result.tally
    five_xx = sum(n for (_, c), n in t.statuses.items() if isinstance(c, int) and c >= 500)
    table, worst = rss_table(result)
    control_table, control_worst = rss_table(control)
    print(f"## Soak: {t.done:,} requests (+{result.warmup.done:,} warm-up) against gradserve, "
          f"gunicorn 2 workers x 2 threads, {args.clients} keep-alive clients\n")
    print(f"{t.done / t.wall:.0f} requests/s over {t.wall:.1f} s"
          + (" (stopped early at the time limit)" if t.stopped_early else "") + "\n")
    print("### RSS per worker (VmRSS after the warm-up, at each quarter, at the end)\n")
    print(table + "\n")
    print("### Status histogram by kind of request\n")
    print(status_table(t) + "\n")
    print(f"- 5xx answers: {five_xx}")
    print(f"- requests that did not get what they should (2xx valid / 4xx hostile / right "
          f"answer): {len(t.failures)}")
    if t.failures:
        print("\n| request | got | times | first answer |\n|---|---|---:|---|")
        grouped: dict[tuple[str, str], list[str]] = defaultdict(list)
        for line in t.failures:
            kind, _, rest = line.partition(": ")
            got, _, sample_body = rest.partition(" ")
            grouped[(kind, got)].append(sample_body)
        for (kind, got), bodies in sorted(grouped.items()):
            print(f"| {kind} | {got} | {len(bodies)} | `{bodies[0][:110]}` |")
        print()
    same = result.pids == result.pids_after
    print(f"- same worker pids throughout: {same} ({result.pids} -> {result.pids_after})\n")
    print(f"### Negative control: bench.leaky_app (10-50 KB kept per request), "
          f"{control.tally.done:,} requests\n")
    print(control_table + "\n")
    control_ok = control_worst > 2 * TARGET_GROWTH_MB
    print(f"- the control grew {control_worst:.1f} MB in its worst worker: the measurement "
          f"{'does' if control_ok else 'does NOT'} see a leak of this size\n")
    print(f"wall time: {time.monotonic() - began:.0f} s")
    passed = (five_xx == 0 and not t.failures and worst < TARGET_GROWTH_MB and same
              and control_ok and not t.stopped_early)
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
