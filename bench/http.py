"""HTTP overhead of gradserve against a bare Flask app, and the cost of tensor wire forms.

    .venv/bin/python -m bench.http [--seconds 5] [--rounds 3] [--connections 16]
                                   [--no-flask-dispatch]

1. The pinned method. Two real gunicorns with the same settings (``gunicorn.conf.py``, one
   gthread worker: the server is pinned to CPU 0, so gunicorn's default is one worker) run
   side by side: ``bench.bare_app`` (parse a small JSON body, answer a small one) and
   gradserve (``service.wsgi:app``). The load generator is pinned to CPU 1: ``wrk -t1 -c16``
   (Debian's ``wrk``) when it is installed, else a Python keep-alive client (the output says
   which). Each case runs on bare Flask and on gradserve alternately, ``--rounds`` times;
   the report gives each run's requests/s, p50 and p99, the machine's load average next to
   it, and the median of the per-round ratios gradserve / bare. A third gunicorn runs
   gradserve with ``GRADSERVE_GATEWAY=false`` (the gradient routes through Flask's own
   dispatch: hooks and views) in the same rotation, for what the gateway is worth
   (``--no-flask-dispatch`` leaves it out).

   Cases: the lecture's sigmoid as an expression (``POST /v1/gradients``), as a graph spec,
   by id (``POST /v1/graphs/{id}/gradients``), and a mix of the three in turn.
2. A 1024x1024 float32 tensor as JSON nested lists and as a b64 object: time from the
   request bytes to an ndarray, against ``np.frombuffer`` of the raw bytes (a zero-copy view)
   and ``np.frombuffer(...).copy()`` (one 4 MiB memcpy, the least a decoder that owns its
   memory can do); also through ``service.flows.codec.decode_tensor`` when it exists (which
   adds the request model's validation and the finiteness check).

Why pinned: on 2 cores, unpinned, the load generator and the server fight for the same core
and most keep-alive connections land on one worker; the ratio then swings 0.3-1.4x from run
to run. Pinned, the server has one core to itself and requests/s is its CPU cost per
request. Other load on the machine still shows: compare ratios from the same run, and read
the load average printed next to each. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import inspect
import json
import os
import re
import shutil
import statistics
import subprocess  # noqa: S404 - runs wrk, a fixed argv
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from tests.e2e.server import GunicornServer

SIGMOID_EXPR = "1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))"
SIGMOID_VALUES = {"w0": 2, "x0": -1, "w1": -3, "x1": -2, "w2": -3}
SIGMOID = {"expression": SIGMOID_EXPR, "values": SIGMOID_VALUES}
SIGMOID_GRAPH = {
    "inputs": {name: {} for name in ("w0", "x0", "w1", "x1", "w2")},
    "nodes": [
        {"id": "a", "op": "mul", "args": ["w0", "x0"]},
        {"id": "b", "op": "mul", "args": ["w1", "x1"]},
        {"id": "c", "op": "add", "args": ["a", "b"]},
        {"id": "d", "op": "add", "args": ["c", "w2"]},
        {"id": "e", "op": "neg", "args": ["d"]},
        {"id": "f", "op": "exp", "args": ["e"]},
        {"id": "h", "op": "add", "args": ["f", 1]},
        {"id": "out", "op": "reciprocal", "args": ["h"]},
    ],
    "output": "out",
}
PATH = "/v1/gradients"
PHASE_TIME_LIMIT_S = 40.0  # a phase that runs longer stops early (and says so)
SERVER_CPU, CLIENT_CPU = 0, 1


def cases(graph_id: str) -> dict[str, list[tuple[str, bytes]]]:
    """Each case: the (path, body) requests a connection sends in turn."""
    expr = (PATH, orjson.dumps(SIGMOID))
    spec = (PATH, orjson.dumps({"graph": SIGMOID_GRAPH, "values": SIGMOID_VALUES}))
    by_id = (f"/v1/graphs/{graph_id}/gradients", orjson.dumps({"values": SIGMOID_VALUES}))
    return {"expression": [expr], "graph spec": [spec], "by id": [by_id],
            "mixed": [expr, spec, by_id]}


# --- wrk ---------------------------------------------------------------------------------------

_WRK_SCRIPT = """
local reqs = {%s}
local i = 0
request = function()
  i = i %% #reqs + 1
  return reqs[i]
end
"""


def _lua_string(data: bytes) -> str:
    return "[==[" + data.decode() + "]==]"


def run_wrk(url: str, requests: list[tuple[str, bytes]], seconds: float,
            connections: int) -> dict[str, Any]:
    """One wrk run pinned to CLIENT_CPU: requests/s, p50/p99 in ms, non-2xx count."""
    items = ", ".join(
        f'wrk.format("POST", "{path}", {{["Content-Type"]="application/json"}}, '
        f"{_lua_string(body)})" for path, body in requests)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_WRK_SCRIPT % items)
    try:
        argv = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency",
                "-s", script.name, url]
        if shutil.which("taskset"):
            argv = ["taskset", "-c", str(CLIENT_CPU), *argv]
        out = subprocess.run(argv, capture_output=True, text=True, check=True,  # noqa: S603
                             timeout=seconds + 30).stdout
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    return {"rps": rps, "p50": _wrk_ms(out, "50%"), "p99": _wrk_ms(out, "99%"),
            "errors": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": errors.group(0) if errors else ""}


def _wrk_ms(out: str, pct: str) -> float:
    m = re.search(rf"^\s+{re.escape(pct)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    if m is None:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


# --- the Python fallback: closed-loop keep-alive clients ----------------------------------------


class Phase:
    """One load phase: ``clients`` threads, each with one keep-alive connection, sending
    ``requests`` in turn for ``seconds``."""

    def __init__(self, host: str, port: int, requests: list[tuple[str, bytes]], clients: int,
                 seconds: float) -> None:
        self.host, self.port, self.requests = host, port, requests
        self.clients, self.seconds = clients, seconds
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors = 0
        self.wall = 0.0

    def _client(self, stop: float) -> None:
        headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        mine: list[float] = []
        errors = i = 0
        try:
            while time.perf_counter() < stop:
                path, body = self.requests[i % len(self.requests)]
                i += 1
                start = time.perf_counter()
                try:
                    conn.request("POST", path, body=body, headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                except (http.client.HTTPException, ConnectionError):
                    conn.close()
                    conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                    errors += 1
                    continue
                mine.append(time.perf_counter() - start)
                errors += resp.status != 200
        finally:
            conn.close()
            with self.lock:
                self.latencies.extend(mine)
                self.errors += errors

    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        stop = start + min(self.seconds, PHASE_TIME_LIMIT_S)
        threads = [threading.Thread(target=self._client, args=(stop,), daemon=True)
                   for _ in range(self.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.wall = time.perf_counter() - start
        lat = sorted(self.latencies)
        return {"rps": len(lat) / self.wall, "p50": percentile(lat, 0.50) * 1e3,
                "p99": percentile(lat, 0.99) * 1e3, "errors": self.errors,
                "socket_errors": ""}


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


# --- the A/B runs ------------------------------------------------------------------------------


def load_average() -> float:
    return os.getloadavg()[0]


def pinned_server(app: str, env: dict[str, str], threads: int = 8) -> GunicornServer:
    """A gunicorn started with this process pinned to SERVER_CPU: master and workers (and
    any recycled worker, forked by the master) inherit it."""
    pinned = hasattr(os, "sched_setaffinity")
    before = os.sched_getaffinity(0) if pinned else None
    if pinned:
        os.sched_setaffinity(0, {SERVER_CPU})
    try:
        server = GunicornServer({"GRADSERVE_LOG_LEVEL": "warning", **env}, workers=1,
                                threads=threads, app=app, startup_timeout=60.0)
        server.start()
    finally:
        if pinned and before is not None:
            os.sched_setaffinity(0, before)
    return server


def http_bench(args: argparse.Namespace) -> None:
    use_wrk = shutil.which("wrk") is not None and not args.python_client
    pinned = hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2
    client = (f"wrk -t1 -c{args.connections}" if use_wrk
              else f"Python keep-alive client, {args.connections} connections (wrk not found)")
    print(f"## HTTP: bare Flask vs gradserve, {args.rounds} alternating rounds of "
          f"{args.seconds:g} s per case (+{args.warmup:g} s warm-up)\n")
    print(f"- load generator: {client}" + (f", pinned to CPU {CLIENT_CPU}" if pinned else ""))
    print("- servers: gunicorn.conf.py, 1 gthread worker x 8 threads each"
          + (f", pinned to CPU {SERVER_CPU}" if pinned else " (NOT pinned: fewer than 2 CPUs)"))
    print(f"- load average at start: {load_average():.2f} (other work on the machine shows "
          "in every number below)\n")
    env = {"GRADSERVE_MAX_REQUESTS": str(args.max_requests)}
    bare = pinned_server("bench.bare_app:app", env)
    grad = pinned_server("service.wsgi:app", env)
    # The same gradserve with GRADSERVE_GATEWAY=false: the gradient routes through Flask's
    # dispatch (hooks and views), for what the gateway itself is worth.
    flask = (pinned_server("service.wsgi:app", {**env, "GRADSERVE_GATEWAY": "false"})
             if args.flask_dispatch else None)
    servers = [s for s in (bare, grad, flask) if s is not None]
    try:
        for server in servers[1:]:
            status, _, reg = server.post("/v1/graphs", {"graph": SIGMOID_GRAPH})
            if status not in (200, 201):
                raise SystemExit(f"POST /v1/graphs answered {status}: {reg!r}")
        graph_id = json.loads(reg)["graph_id"]
        status, _, answer = grad.post(PATH, SIGMOID)
        if status != 200:
            raise SystemExit(f"gradserve: POST {PATH} answered {status}: {answer!r}")

        def one(server: GunicornServer, requests: list[tuple[str, bytes]],
                seconds: float) -> dict[str, Any]:
            if use_wrk:
                return run_wrk(server.url, requests, seconds, args.connections)
            return Phase(server.host, server.port, requests, args.connections, seconds).run()

        extra = (" gradserve, Flask dispatch req/s | p50/p99 ms | ratio |" if flask else "")
        print("| case | round | load | bare req/s | bare p50/p99 ms | gradserve req/s | "
              "gradserve p50/p99 ms | ratio |" + extra)
        print("|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|---:|" if flask else ""))
        summary = []
        for name, requests in cases(graph_id).items():
            for server in servers:  # warm-up: L1, plan cache, connection pools
                one(server, requests, args.warmup)
            ratios: list[float] = []
            flask_ratios: list[float] = []
            for rnd in range(1, args.rounds + 1):
                load = load_average()
                order = servers if rnd % 2 else servers[::-1]
                runs = {id(s): one(s, requests, args.seconds) for s in order}
                b, g = runs[id(bare)], runs[id(grad)]
                ratio = g["rps"] / b["rps"] if b["rps"] else float("nan")
                ratios.append(ratio)
                errors = b["errors"] or g["errors"]
                row = (f"| {name} | {rnd} | {load:.2f} | {b['rps']:.0f} | "
                       f"{b['p50']:.2f}/{b['p99']:.2f} | {g['rps']:.0f} | "
                       f"{g['p50']:.2f}/{g['p99']:.2f} | {ratio:.2f}x |")
                if flask is not None:
                    f = runs[id(flask)]
                    errors = errors or f["errors"]
                    flask_ratios.append(f["rps"] / b["rps"] if b["rps"] else float("nan"))
                    row += (f" {f['rps']:.0f} | {f['p50']:.2f}/{f['p99']:.2f} | "
                            f"{flask_ratios[-1]:.2f}x |")
                print(row + (" (errors!)" if errors else ""), flush=True)
            summary.append((name, ratios, flask_ratios))
        print("\n| case | median ratio gradserve / bare (req/s) | min | max |"
              + (" Flask dispatch: median (min-max) |" if flask else ""))
        print("|---|---:|---:|---:|" + ("---:|" if flask else ""))
        for name, ratios, flask_ratios in summary:
            row = (f"| {name} | **{statistics.median(ratios):.2f}x** | {min(ratios):.2f}x | "
                   f"{max(ratios):.2f}x |")
            if flask_ratios:
                row += (f" {statistics.median(flask_ratios):.2f}x "
                        f"({min(flask_ratios):.2f}-{max(flask_ratios):.2f}) |")
            print(row)
        print(f"\nload average at end: {load_average():.2f}\n")
        sample = json.loads(answer)
        print(f"gradserve answered output={sample.get('output')} "
              f"gradients={sample.get('gradients')}\n")
    finally:
        for server in servers:
            server.stop()


# --- tensor decoding ---------------------------------------------------------------------------


def _codec_decoders() -> dict[str, Callable[[bytes], np.ndarray]] | None:
    """Decoders through the service's own codec, if it is there."""
    try:
        from service.flows.codec import decode_tensor
    except ImportError:
        return None
    params = inspect.signature(decode_tensor).parameters
    kwargs: dict[str, Any] = {}
    if "max_elements" in params:
        kwargs["max_elements"] = 1 << 24
    if "loc" in params:
        kwargs["loc"] = ("values", "x")
    try:
        from schemas.tensors import B64Tensor

        def as_b64(obj: Any) -> Any:
            return B64Tensor.model_validate(obj)
    except ImportError:
        def as_b64(obj: Any) -> Any:
            return obj

    return {
        "nested": lambda doc: decode_tensor(orjson.loads(doc), **kwargs),
        "b64": lambda doc: decode_tensor(as_b64(orjson.loads(doc)), **kwargs),
    }


def best_of(fn: Callable[[], Any], repeat: int, min_time: float = 0.2) -> float:
    """Median seconds per call over ``repeat`` timings (loops batched for fast calls)."""
    fn()
    loops = 1
    while True:
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        if time.perf_counter() - start >= min_time / repeat or loops >= 1 << 20:
            break
        loops *= 4
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - start) / loops)
    return statistics.median(times)


def tensor_bench(repeat: int) -> list[tuple[str, int, float]]:
    shape = (1024, 1024)
    arr = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    raw = arr.astype("<f4").tobytes()
    # What a NumPy client sends: orjson writes float32 in its shortest round-trip form.
    nested_doc = orjson.dumps(arr, option=orjson.OPT_SERIALIZE_NUMPY)
    b64_doc = orjson.dumps({"shape": list(shape), "dtype": "float32",
                            "b64": base64.b64encode(raw).decode()})

    def nested_plain() -> np.ndarray:
        return np.asarray(orjson.loads(nested_doc), dtype=np.float32)

    def b64_plain() -> np.ndarray:
        obj = orjson.loads(b64_doc)
        return np.frombuffer(base64.b64decode(obj["b64"]), dtype="<f4").reshape(obj["shape"])

    decoders: list[tuple[str, bytes, Callable[[], np.ndarray]]] = [
        ("JSON nested lists → orjson.loads + np.asarray", nested_doc, nested_plain),
        ("b64 object → orjson.loads + b64decode + np.frombuffer", b64_doc, b64_plain),
    ]
    codec = _codec_decoders()
    if codec is not None:
        decoders += [
            ("JSON nested lists → service.flows.codec.decode_tensor", nested_doc,
             lambda: codec["nested"](nested_doc)),
            ("b64 object → service.flows.codec.decode_tensor", b64_doc,
             lambda: codec["b64"](b64_doc)),
        ]
    for label, _, fn in decoders:
        out = fn()
        if out.shape != shape or not np.allclose(out, arr):
            raise SystemExit(f"{label}: decoded tensor differs from the original")
    rows = [
        ("raw bytes → np.frombuffer (zero-copy view)", len(raw),
         best_of(lambda: np.frombuffer(raw, dtype="<f4").reshape(shape), repeat)),
        ("raw bytes → np.frombuffer + copy", len(raw),
         best_of(lambda: np.frombuffer(raw, dtype="<f4").reshape(shape).copy(), repeat)),
    ]
    rows += [(label, len(doc), best_of(fn, repeat)) for label, doc, fn in decoders]
    return rows


# --- report ------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.http", description=__doc__.split(
        "\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per run")
    parser.add_argument("--warmup", type=float, default=1.0, help="per server and case")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--max-requests", type=int, default=0,
                        help="GRADSERVE_MAX_REQUESTS of both servers (0: never recycle)")
    parser.add_argument("--python-client", action="store_true", help="even if wrk is there")
    parser.add_argument("--no-flask-dispatch", dest="flask_dispatch", action="store_false",
                        help="skip the third server (gradserve with GRADSERVE_GATEWAY=false)")
    parser.add_argument("--repeat", type=int, default=7, help="timings per tensor decoder")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-tensor", action="store_true")
    args = parser.parse_args(argv)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# bench.http — Python {sys.version.split()[0]}, NumPy {np.__version__}, "
          f"{cores} cores\n")

    if not args.skip_http:
        http_bench(args)

    if not args.skip_tensor:
        print("## Tensor decoding: 1024x1024 float32, request bytes → ndarray "
              f"(median of {args.repeat})\n")
        rows = tensor_bench(args.repeat)
        view, copy = rows[0][2], rows[1][2]
        print("| form | bytes | ms | x frombuffer | x frombuffer+copy |")
        print("|---|---:|---:|---:|---:|")
        for label, size, seconds in rows:
            print(f"| {label} | {size:,} | {seconds * 1e3:.3f} | {seconds / view:,.0f} | "
                  f"{seconds / copy:,.2f} |")
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
