"""HTTP overhead of gradserve against a bare Flask app, and the cost of tensor wire forms.

    .venv/bin/python -m bench.http [--clients 8] [--requests 4000]

1. Two real gunicorns with the same settings (``gunicorn.conf.py``, 2 gthread workers of 2
   threads): ``bench.bare_app`` (parse a small JSON body, answer a small one) and gradserve
   (``service.wsgi:app``). Both get the same closed-loop load: ``--clients`` threads, each
   with one keep-alive ``http.client`` connection, sending the lecture's sigmoid request to
   ``POST /v1/gradients`` back to back, ``--warmup`` requests and then ``--requests``
   measured ones. Prints requests/s, p50 and p99, and gradserve's ratio to the baseline.
2. A 1024x1024 float32 tensor as JSON nested lists and as a b64 object: time from the
   request bytes to an ndarray, against ``np.frombuffer`` of the raw bytes (a zero-copy view)
   and ``np.frombuffer(...).copy()`` (one 4 MiB memcpy, the least a decoder that owns its
   memory can do); also through ``service.codec.decode_tensor`` when it exists (which
   adds the request model's validation and the finiteness check).

The load generator runs on the same machine as the servers (a Python client, so its own
CPU use is part of what the numbers show); compare the two rows with each other, not with
other machines. Not a test: nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import inspect
import json
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from tests.e2e.server import GunicornServer

SIGMOID = {
    "expression": "1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))",
    "values": {"w0": 2, "x0": -1, "w1": -3, "x1": -2, "w2": -3},
}
PATH = "/v1/gradients"
PHASE_TIME_LIMIT_S = 40.0  # a phase that runs longer stops early (and says so)


# --- closed-loop HTTP load ---------------------------------------------------------------------


class Phase:
    """One load phase: ``total`` requests shared by ``clients`` threads."""

    def __init__(self, host: str, port: int, body: bytes, clients: int, total: int) -> None:
        self.host, self.port, self.body = host, port, body
        self.clients, self.total = clients, total
        self.issued = 0
        self.lock = threading.Lock()
        self.latencies: list[float] = []
        self.errors: dict[str, int] = {}
        self.deadline = 0.0
        self.wall = 0.0

    def _ticket(self) -> bool:
        with self.lock:
            if self.issued >= self.total or time.perf_counter() > self.deadline:
                return False
            self.issued += 1
            return True

    def _error(self, kind: str) -> None:
        with self.lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def _client(self) -> None:
        headers = {"Content-Type": "application/json", "Connection": "keep-alive"}
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        mine: list[float] = []
        try:
            while self._ticket():
                for attempt in (1, 2):
                    start = time.perf_counter()
                    try:
                        conn.request("POST", PATH, body=self.body, headers=headers)
                        resp = conn.getresponse()
                        resp.read()
                    except (http.client.HTTPException, ConnectionError) as exc:
                        # The server may close an idle keep-alive connection: reconnect once.
                        conn.close()
                        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                        if attempt == 2:
                            self._error(type(exc).__name__)
                        continue
                    mine.append(time.perf_counter() - start)
                    if resp.status != 200:
                        self._error(f"HTTP {resp.status}")
                    if resp.getheader("Connection", "").lower() == "close":
                        conn.close()
                        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
                    break
        finally:
            conn.close()
            with self.lock:
                self.latencies.extend(mine)

    def run(self) -> Phase:
        threads = [threading.Thread(target=self._client, daemon=True)
                   for _ in range(self.clients)]
        start = time.perf_counter()
        self.deadline = start + PHASE_TIME_LIMIT_S
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.wall = time.perf_counter() - start
        return self


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * len(sorted_values)) - 1))
    return sorted_values[index]


def load_test(name: str, app: str, args: argparse.Namespace) -> dict[str, Any]:
    body = json.dumps(SIGMOID).encode()
    with GunicornServer({"GRADSERVE_LOG_LEVEL": "warning"}, workers=args.workers,
                        threads=args.threads, app=app) as server:
        status, _, answer = server.post(PATH, SIGMOID)
        if status != 200:
            raise SystemExit(f"{name}: POST {PATH} answered {status}: {answer[:500]!r}")
        Phase(server.host, server.port, body, args.clients, args.warmup).run()
        phase = Phase(server.host, server.port, body, args.clients, args.requests).run()
    lat = sorted(phase.latencies)
    return {
        "name": name,
        "done": len(lat),
        "errors": sum(phase.errors.values()),
        "error_kinds": phase.errors,
        "rps": len(lat) / phase.wall if phase.wall else float("nan"),
        "p50": percentile(lat, 0.50) * 1e3,
        "p99": percentile(lat, 0.99) * 1e3,
        "stopped_early": len(lat) + sum(phase.errors.values()) < args.requests,
        "sample": json.loads(answer) if name == "gradserve" else None,
    }


# --- tensor decoding ---------------------------------------------------------------------------


def _codec_decoders() -> dict[str, Callable[[bytes], np.ndarray]] | None:
    """Decoders through the service's own codec, if it is there."""
    try:
        from service.codec import decode_tensor
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
            ("JSON nested lists → service.codec.decode_tensor", nested_doc,
             lambda: codec["nested"](nested_doc)),
            ("b64 object → service.codec.decode_tensor", b64_doc,
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
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=4000)
    parser.add_argument("--warmup", type=int, default=400)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=7, help="timings per tensor decoder")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-tensor", action="store_true")
    args = parser.parse_args(argv)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"# bench.http — Python {sys.version.split()[0]}, NumPy {np.__version__}, "
          f"{cores} cores\n")

    if not args.skip_http:
        print(f"## HTTP: POST {PATH}, sigmoid expression, {args.workers} workers x "
              f"{args.threads} gthread threads, {args.clients} keep-alive clients, "
              f"{args.warmup} warm-up + {args.requests} requests\n")
        results = [load_test("bare Flask", "bench.bare_app:app", args),
                   load_test("gradserve", "service.wsgi:app", args)]
        print("| server | requests | errors | req/s | p50 ms | p99 ms |")
        print("|---|---:|---:|---:|---:|---:|")
        for r in results:
            note = " (stopped at the time limit)" if r["stopped_early"] else ""
            print(f"| {r['name']}{note} | {r['done']} | {r['errors']} | {r['rps']:.0f} | "
                  f"{r['p50']:.2f} | {r['p99']:.2f} |")
        bare, grad = results
        print(f"| **gradserve / bare** | | | {grad['rps'] / bare['rps']:.2f}x | "
              f"{grad['p50'] / bare['p50']:.2f}x | {grad['p99'] / bare['p99']:.2f}x |\n")
        for r in results:
            if r["error_kinds"]:
                print(f"{r['name']} errors: {r['error_kinds']}")
        sample = grad["sample"] or {}
        print(f"gradserve answered output={sample.get('output')} "
              f"gradients={sample.get('gradients')}\n")

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
