"""What the compiled-graph cache saves, over HTTP through real gunicorns.

    .venv/bin/python -m bench.cache [--reps 15] [--sigmoid-reps 40] [--profile]

Two graphs, both as JSON graph specs: a chain of 2,000 nodes (1,999 elementwise ops over a
(4,) input, then ``sum``) and the lecture's sigmoid neuron (8 nodes). For each graph and
each shared store (the embedded SQLite file, and a private redis-server), three latencies,
each the median over ``--reps`` repetitions:

(a) compile   ``POST /v1/gradients`` with a graph the worker never saw (``cache: miss``);
(b) L1 hit    the same body again on the same keep-alive connection (``cache: hit``);
(c) store hit the graph registered on instance A, then its first ``POST
              /v1/graphs/{id}/gradients`` on instance B, whose L1 never saw it: a load from
              the shared store, re-validated, re-hashed and compiled (``cache: hit``).

Every repetition uses a graph of its own (one constant differs), so each (a) and (c) is a
true first sight. Instances A and B are separate gunicorns (1 worker, 2 threads) sharing
the store: the same GRADSERVE_DATA_DIR for SQLite, the same GRADSERVE_REDIS_URL for Redis.
Latency is the client's, on a keep-alive connection (request bytes out to response bytes
in), so it includes HTTP, JSON parsing and the gradient computation itself.

``--profile`` then runs the same three paths in this process (Flask test client, no
HTTP) under cProfile and prints where the time goes. Not a test: nothing here asserts a
speed; the target (an L1 hit on the 2,000-node graph at least 10x faster than a compile)
is reported as met or missed.
"""

from __future__ import annotations

import argparse
import cProfile
import http.client
import io
import json
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests.e2e.server import ROOT, GunicornServer

CHAIN_NODES = 2000
TARGET_RATIO = 10.0
TIME_LIMIT_S = 150.0  # the whole run; a case that would pass it is cut short (and says so)
_UNARY = ("sin", "tanh", "cos", "sigmoid")


def chain_graph(rep: int) -> dict[str, Any]:
    """2,000 nodes: elementwise ops over x (4,), then sum; ``rep`` sets one constant."""
    nodes: list[dict[str, Any]] = [
        {"id": "n0", "op": "mul", "args": ["x", 1.0 + rep / 1024]}]
    for i in range(1, CHAIN_NODES - 1):
        prev = f"n{i - 1}"
        if i % 2:
            nodes.append({"id": f"n{i}", "op": _UNARY[(i // 2) % len(_UNARY)], "args": [prev]})
        else:
            nodes.append({"id": f"n{i}", "op": "add" if i % 4 else "mul",
                          "args": [prev, 0.5 if i % 4 else 1.25]})
    last = f"n{CHAIN_NODES - 1}"
    nodes.append({"id": last, "op": "sum", "args": [f"n{CHAIN_NODES - 2}"]})
    return {"inputs": {"x": {"shape": [4]}}, "nodes": nodes, "output": last}


def sigmoid_graph(rep: int) -> dict[str, Any]:
    """The lecture's neuron; ``rep`` changes the constant of ``1 + e`` (1 when rep is 0)."""
    return {
        "inputs": {"w0": {}, "x0": {}, "w1": {}, "x1": {}, "w2": {}},
        "nodes": [
            {"id": "a", "op": "mul", "args": ["w0", "x0"]},
            {"id": "b", "op": "mul", "args": ["w1", "x1"]},
            {"id": "c", "op": "add", "args": ["a", "b"]},
            {"id": "s", "op": "add", "args": ["c", "w2"]},
            {"id": "n", "op": "neg", "args": ["s"]},
            {"id": "e", "op": "exp", "args": ["n"]},
            {"id": "den", "op": "add", "args": [1 + rep / 1024, "e"]},
            {"id": "f", "op": "div", "args": [1, "den"]},
        ],
        "output": "f",
    }


GRAPHS: dict[str, tuple[Callable[[int], dict[str, Any]], dict[str, Any]]] = {
    f"chain {CHAIN_NODES:,} nodes": (chain_graph, {"x": [0.1, -0.2, 0.3, 0.4]}),
    "lecture sigmoid": (sigmoid_graph, {"w0": 2, "x0": -1, "w1": -3, "x1": -2, "w2": -3}),
}


# --- HTTP --------------------------------------------------------------------------------------


class Connection:
    """One keep-alive connection: with one worker per instance, always the same L1."""

    def __init__(self, server: GunicornServer) -> None:
        self.server = server
        self.conn = http.client.HTTPConnection(server.host, server.port, timeout=60)

    def post(self, path: str, body: bytes, want_cache: str | None = None
             ) -> tuple[float, str, dict[str, Any]]:
        """(client latency in s, request id, answer); any status but 200/201 stops the run."""
        rid = uuid.uuid4().hex
        start = time.perf_counter()
        self.conn.request("POST", path, body=body,
                          headers={"Content-Type": "application/json", "X-Request-ID": rid})
        resp = self.conn.getresponse()
        raw = resp.read()
        elapsed = time.perf_counter() - start
        if resp.status not in (200, 201):
            raise SystemExit(f"POST {path} answered {resp.status}: {raw[:500]!r}")
        doc = json.loads(raw)
        if want_cache is not None and doc.get("cache") != want_cache:
            raise SystemExit(f"POST {path}: cache {doc.get('cache')!r}, wanted {want_cache!r}")
        return elapsed, rid, doc

    def close(self) -> None:
        self.conn.close()


def server_latencies(*servers: GunicornServer) -> dict[str, float]:
    """Request id -> the server's own latency in s, from the JSON access log lines."""
    out: dict[str, float] = {}
    for server in servers:
        for line in server.logs("stdout").splitlines():
            if line.startswith("{") and '"latency_ms"' in line:
                try:
                    rec = json.loads(line)
                    out[rec["request_id"]] = rec["latency_ms"] / 1e3
                except (ValueError, KeyError, TypeError):
                    pass
    return out


def measure(graph: str, a: GunicornServer, b: GunicornServer, reps: int, tag: int,
            deadline: float) -> dict[str, Any]:
    """Medians in s of (a) compile, (b) L1 hit, (c) store hit and a by-id L1 hit, each as
    the client saw it and as the server logged it (``srv_`` keys)."""
    build, values = GRAPHS[graph]
    on_a, on_b = Connection(a), Connection(b)
    seen: dict[str, list[tuple[float, str]]] = {"compile": [], "l1": [], "store": [],
                                                "id_l1": []}
    try:
        # Warm-up: the first request of a worker pays for lazy imports and first-time paths.
        for rep in range(2):
            body = json.dumps({"graph": build(-1 - rep - 100 * tag), "values": values}).encode()
            on_a.post("/v1/gradients", body)
            on_b.post("/v1/gradients", body)
        for rep in range(reps):
            if time.monotonic() > deadline:
                break
            spec = build(1000 * tag + rep)
            body = json.dumps({"graph": spec, "values": values}).encode()
            seen["compile"].append(on_a.post("/v1/gradients", body, "miss")[:2])
            for _ in range(3):  # the very same body
                seen["l1"].append(on_a.post("/v1/gradients", body, "hit")[:2])
            # (c): a graph A registers (so not the one A just computed: fresh constant).
            spec = build(1000 * tag + 500 + rep)
            reg = on_a.post("/v1/graphs", json.dumps({"graph": spec}).encode())[2]
            by_id = f"/v1/graphs/{reg['graph_id']}/gradients"
            id_body = json.dumps({"values": values}).encode()
            seen["store"].append(on_b.post(by_id, id_body, "hit")[:2])
            seen["id_l1"].append(on_b.post(by_id, id_body, "hit")[:2])
    finally:
        on_a.close()
        on_b.close()
    time.sleep(0.2)  # let the servers flush their access log lines
    logged = server_latencies(a, b)
    result: dict[str, Any] = {"n": len(seen["compile"])}
    for key, pairs in seen.items():
        client = [t for t, _ in pairs]
        server = [logged[rid] for _, rid in pairs if rid in logged]
        result[key] = statistics.median(client) if client else float("nan")
        result["srv_" + key] = statistics.median(server) if server else float("nan")
    return result


@contextmanager
def instances(env: dict[str, str]) -> Iterator[tuple[GunicornServer, GunicornServer]]:
    """Two gunicorns (1 worker, 2 threads each) with the same store settings."""
    env = {"GRADSERVE_LOG_LEVEL": "warning", **env}
    with GunicornServer(env, workers=1, threads=2) as a, \
            GunicornServer(env, workers=1, threads=2) as b:
        yield a, b


@contextmanager
def stores() -> Iterator[Iterator[tuple[str, dict[str, str]]]]:
    """(name, env) of each store: SQLite in a shared directory, then a private Redis."""
    shared = tempfile.mkdtemp(prefix="gradserve-bench-cache-")
    redis_server: Any = None

    def each() -> Iterator[tuple[str, dict[str, str]]]:
        nonlocal redis_server
        yield "sqlite", {"GRADSERVE_DATA_DIR": shared}
        try:
            from tests.redis_server import RedisServer

            redis_server = RedisServer().start()
        except BaseException as exc:  # noqa: BLE001 - pytest.skip() raises a BaseException
            print(f"redis: skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
            return
        yield "redis", {"GRADSERVE_REDIS_URL": redis_server.url}

    try:
        yield each()
    finally:
        if redis_server is not None:
            redis_server.close()
        shutil.rmtree(shared, ignore_errors=True)


# --- in-process profile ------------------------------------------------------------------------


def _median_ms(fn: Callable[[], Any], n: int) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def stages(graph: str, n: int = 7) -> None:
    """Each step of the three paths, timed alone in this process (no profiler, no HTTP)."""
    import numpy as np
    import orjson

    from schemas import GradientOptions, GradientRequest
    from service.engine import REGISTRY, compile_graph, execute, graph_from_dict
    from service.store.cache import alias_key

    build, values = GRAPHS[graph]
    body = json.dumps({"graph": build(7000), "values": values}).encode()
    raw = orjson.loads(body)
    spec = raw["graph"]
    ir = graph_from_dict(spec)
    plan = compile_graph(ir, REGISTRY)
    arrays = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    execute(plan, arrays)
    options = {k: v for k, v in raw.items() if k != "graph"}
    parse_ms = _median_ms(lambda: orjson.loads(body), n)
    alias_ms = _median_ms(lambda: alias_key("spec", spec), n)
    options_ms = _median_ms(lambda: GradientOptions.model_validate(options), n)
    validate_ms = _median_ms(lambda: GradientRequest.model_validate(raw), n)
    from_dict_ms = _median_ms(lambda: graph_from_dict(spec), n)
    compile_ms = _median_ms(lambda: compile_graph(ir, REGISTRY), n)
    # A new plan's first run also builds its executable (kept in the plan for later runs).
    first_ms = _median_ms(lambda: execute(compile_graph(ir, REGISTRY), arrays), n) - compile_ms
    run_ms = _median_ms(lambda: execute(plan, arrays), n)
    blob = plan.canonical_json
    load_ms = _median_ms(lambda: compile_graph(graph_from_dict(orjson.loads(blob)), REGISTRY), n)
    rows = [
        ("parse the JSON body (orjson)", parse_ms, "a b"),
        ("L1 alias key (orjson sort_keys + sha256)", alias_ms, "a b"),
        ("validate the options only (L1 fast path)", options_ms, "b"),
        ("validate the whole request (Pydantic)", validate_ms, "a"),
        ("graph_from_dict", from_dict_ms, "a"),
        ("compile_graph (toposort, shapes, canonical hash)", compile_ms, "a"),
        ("first run's extra: build the executable", first_ms, "a c"),
        ("execute: forward + backward", run_ms, "a b c"),
        ("store load: decode + graph_from_dict + compile_graph", load_ms, "c"),
    ]
    print(f"\n### where the time goes, {graph} (in process, median of {n})\n")
    print("| step | ms | in path |")
    print("|---|---:|---|")
    for name, ms, paths in rows:
        print(f"| {name} | {ms:.2f} | {paths} |")
    a = parse_ms + alias_ms + validate_ms + from_dict_ms + compile_ms + first_ms + run_ms
    b = parse_ms + alias_ms + options_ms + run_ms
    print(f"\nsum for (a): {a:.1f} ms; for (b): {b:.1f} ms, of which execution "
          f"{run_ms / b:.0%}; (a) / (b) = {a / b:.1f}x. An L1 hit cannot be faster than "
          f"running the graph, so (a) / (b) is bounded by (a) / execution = "
          f"{a / run_ms:.1f}x.")


def profile(graph: str, top: int) -> None:
    """cProfile of (a), (b) and (c) in this process through the Flask test client: the
    functions of service/ and schemas/ with the most time of their own."""
    import logging

    from service import create_app
    from service.config import load_settings
    from service.store.memory import MemoryStore

    build, values = GRAPHS[graph]
    store = MemoryStore()
    one = create_app(load_settings(env={}, log_level="warning"), store=store).test_client()
    two = create_app(load_settings(env={}, log_level="warning"), store=store).test_client()
    logging.getLogger("gradserve.access").disabled = True
    reps = 10
    bodies = [json.dumps({"graph": build(9000 + rep), "values": values}).encode()
              for rep in range(reps)]
    stored = [json.dumps({"graph": build(9500 + rep)}).encode() for rep in range(reps)]
    ids = [one.post("/v1/graphs", data=b, content_type="application/json").get_json()[
        "graph_id"] for b in stored]
    id_body = json.dumps({"values": values}).encode()

    def compile_() -> None:
        for body in bodies:
            one.post("/v1/gradients", data=body, content_type="application/json")

    def hit() -> None:
        for _ in range(3):
            for body in bodies:
                one.post("/v1/gradients", data=body, content_type="application/json")

    def store_hit() -> None:
        for graph_id in ids:
            two.post(f"/v1/graphs/{graph_id}/gradients", data=id_body,
                     content_type="application/json")

    for name, fn, calls in (("(a) compile", compile_, reps), ("(b) L1 hit", hit, 3 * reps),
                            ("(c) store hit", store_hit, reps)):
        prof = cProfile.Profile()
        start = time.perf_counter()
        prof.runcall(fn)
        per_call = (time.perf_counter() - start) / calls
        out = io.StringIO()
        pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(
            r"service/|schemas/|pydantic|orjson", top)
        lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
        start_at = next((i for i, ln in enumerate(lines) if "ncalls" in ln), 0)
        print(f"\n### cProfile {graph}, {name}: {per_call * 1e3:.1f} ms a request under the "
              f"profiler; own time (tottime) of the top functions\n")
        print("```")
        print("\n".join(ln.replace(str(ROOT) + "/", "")[:140]
                        for ln in lines[start_at:start_at + top + 1]))
        print("```")


# --- report ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=15, help="repetitions, 2,000-node graph")
    parser.add_argument("--sigmoid-reps", type=int, default=40,
                        help="repetitions, sigmoid graph")
    parser.add_argument("--profile", action="store_true",
                        help="also profile the three paths in process")
    parser.add_argument("--top", type=int, default=25, help="profile lines to print")
    args = parser.parse_args(argv)

    started = time.monotonic()
    deadline = started + TIME_LIMIT_S
    rows: list[tuple[str, str, dict[str, Any]]] = []
    with stores() as each_store:
        for tag, (store, env) in enumerate(each_store):
            with instances(env) as (a, b):
                for graph in GRAPHS:
                    reps = args.reps if graph.startswith("chain") else args.sigmoid_reps
                    result = measure(graph, a, b, reps, 10 * tag + len(rows), deadline)
                    rows.append((graph, store, result))

    ms = 1e3
    print("\n| graph | store | n | (a) compile ms | (b) L1 hit ms | (c) store hit ms "
          "| by id, L1 ms | a / b | a / c |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for graph, store, r in rows:
        print(f"| {graph} | {store} | {r['n']} | {r['compile'] * ms:.2f} | {r['l1'] * ms:.2f} "
              f"| {r['store'] * ms:.2f} | {r['id_l1'] * ms:.2f} "
              f"| {r['compile'] / r['l1']:.1f}x | {r['compile'] / r['store']:.2f}x |")
    print("\nMedians of the client's latency on a keep-alive connection; (a) and (b) are the "
          "same JSON body, (c) is the first request by id on an instance whose L1 never saw "
          "the graph. The same, as the server logged it (no client, no socket):\n")
    print("| graph | store | (a) ms | (b) ms | (c) ms | by id, L1 ms | a / b |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for graph, store, r in rows:
        print(f"| {graph} | {store} | {r['srv_compile'] * ms:.2f} | {r['srv_l1'] * ms:.2f} "
              f"| {r['srv_store'] * ms:.2f} | {r['srv_id_l1'] * ms:.2f} "
              f"| {r['srv_compile'] / r['srv_l1']:.1f}x |")
    print()
    missed = False
    for graph, store, r in rows:
        if graph.startswith("chain"):
            ratio = r["compile"] / r["l1"]
            ok = ratio >= TARGET_RATIO
            missed |= not ok
            print(f"target, {store}: L1 hit {ratio:.1f}x faster than a compile on the "
                  f"{CHAIN_NODES:,}-node graph (>= {TARGET_RATIO:.0f}x): "
                  f"{'met' if ok else 'MISSED'}")
    if any(r["n"] < (args.reps if g.startswith("chain") else args.sigmoid_reps)
           for g, _, r in rows):
        print(f"(some cases were cut short by the {TIME_LIMIT_S:.0f} s time limit)")
    print(f"\nwall time: {time.monotonic() - started:.1f} s")
    if args.profile or missed:
        stages(next(iter(GRAPHS)))
    if args.profile:
        profile(next(iter(GRAPHS)), args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
