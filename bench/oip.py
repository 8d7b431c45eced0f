"""MLP gradients over the Open Inference Protocol (tritonclient.http) against the engine.

    .venv/bin/python -m bench.oip [--repeat 9] [--json-repeat 3]

An MLP 784 → 1024 → 1024 → 10, batch 256, float32, ReLU, softmax cross-entropy, registered
with ``POST /v1/mlp/graphs``; every gradient (all weights and biases and the input) and the
loss. In one run, round-robin so that drift and other load hit every row alike:

- ``engine``: the in-process engine, ``execute`` on the compiled plan (the baseline);
- ``OIP binary``: ``tritonclient.http`` with binary inputs and outputs against a real
  gunicorn (one worker, one thread, so BLAS gets every core as in-process). Target: ≤ 1.25×
  the engine;
- ``OIP http.client``: the very bytes tritonclient sends (its own request builder), sent
  with ``http.client`` on a keep-alive connection and parsed with tritonclient's own
  ``InferResult``: the same work as ``OIP binary`` but geventhttpclient's transport (its
  4 KiB response reads, the request copied into one ``sendall``), so the two rows side by
  side show what the transport costs;
- ``v1 b64``: ``POST /v1/mlp/gradients`` with b64 tensors both ways, same server
  (http.client, the same request's work: wrt weights and inputs);
- ``OIP JSON``: tritonclient with JSON data both ways (fewer rounds: tritonclient itself
  converts ~1.8 M numbers to Python floats and back, which dominates).

Ratios are the median of per-round ratios (runs made side by side); the min ratio (of the
least disturbed runs) is shown too. The client runs on the same machine as the server and
its CPU time is part of the round trip, as it would be for a co-located client. Not a
test: nothing here asserts a speed. Prints a markdown table and the raw numbers as JSON.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from bench.mlp import SIZES, make_net, request_body
from service.engine import REGISTRY, Query, compile_graph, execute
from service.flows import mlp_graph as mlp

ARCH = {"layers": [{"in_features": i, "out_features": o,
                    "activation": "relu" if k < len(SIZES) - 2 else "identity"}
                   for k, (i, o) in enumerate(zip(SIZES, SIZES[1:]))],
        "loss": "softmax_cross_entropy", "name": "bench-mlp"}
TARGET = 1.25


def interleaved(fns: dict[str, Callable[[], Any]], repeat: int, every: dict[str, int]
                ) -> dict[str, list[float]]:
    """Round-robin timings; ``every[k] = n`` runs ``k`` only every n-th round."""
    for fn in fns.values():
        fn()  # warm-up: plan specialization, connections, allocator
    out: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeat):
        for k, fn in fns.items():
            if r % every.get(k, 1):
                continue
            t = time.perf_counter()
            fn()
            out[k].append(time.perf_counter() - t)
    return out


def paired(a: list[float], b: list[float], step: int = 1) -> float:
    """Median over the rounds of a[i] / (the engine's time in the same round)."""
    return statistics.median(x / b[i * step] for i, x in enumerate(a))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=9, help="rounds (engine, binary, b64)")
    p.add_argument("--json-every", type=int, default=3,
                   help="run the slow JSON row every n-th round only")
    args = p.parse_args(argv)
    import tritonclient.http as th

    from tests.e2e.server import GunicornServer

    logging.getLogger("gradserve.access").disabled = True
    net = make_net("float32")
    load_start = os.getloadavg()
    server = GunicornServer({"GRADSERVE_LOG_LEVEL": "warning"}, workers=1, threads=1,
                            request_timeout=120.0).start()
    try:
        status, _, raw = server.post("/v1/mlp/graphs", ARCH)
        assert status in (200, 201), raw
        graph_id = json.loads(raw)["graph_id"]

        # The baseline: the same graph, compiled in-process, all gradients.
        arch = mlp.Architecture(tuple((o, i) for i, o in zip(SIZES, SIZES[1:])),
                                tuple(layer["activation"] for layer in ARCH["layers"]),
                                "softmax_cross_entropy", False, 2)
        plan = compile_graph(mlp.lower(arch), REGISTRY)
        assert plan.graph_id == graph_id
        values: dict[str, np.ndarray] = {mlp.INPUT: net["x"], mlp.TARGETS: net["y"]}
        for i, (w, b) in enumerate(zip(net["Ws"], net["bs"])):
            values[mlp.weight_name(i)], values[mlp.bias_name(i)] = w, b
        wrt = list(plan.float_inputs)

        query = Query(wrt=wrt, dtype="float32")

        def engine() -> Any:
            return execute(plan, values, query)

        client = th.InferenceServerClient(f"{server.host}:{server.port}",
                                          connection_timeout=60, network_timeout=120)

        def oip(binary: bool) -> Callable[[], Any]:
            def call() -> Any:
                inputs = []
                for name in plan.input_order:
                    arr = values[name]
                    dt = "INT64" if name in plan.label_inputs else "FP32"
                    inp = th.InferInput(name, list(arr.shape), dt)
                    inp.set_data_from_numpy(arr.astype(np.int64) if dt == "INT64" else arr,
                                            binary_data=binary)
                    inputs.append(inp)
                outputs = [th.InferRequestedOutput(n, binary_data=binary)
                           for n in ["output"] + [f"grad:{n}" for n in wrt]]
                res = client.infer("bench-mlp", inputs, outputs=outputs)
                return {o: res.as_numpy(o) for o in ["output"] + [f"grad:{n}" for n in wrt]}
            return call

        from tritonclient.http._infer_result import InferResult
        from tritonclient.http._utils import _get_inference_request

        names = ["output"] + [f"grad:{n}" for n in wrt]
        conn: list[http.client.HTTPConnection] = []

        def oip_http_client() -> Any:
            inputs = []
            for name in plan.input_order:
                arr = values[name]
                dt = "INT64" if name in plan.label_inputs else "FP32"
                inp = th.InferInput(name, list(arr.shape), dt)
                inp.set_data_from_numpy(arr.astype(np.int64) if dt == "INT64" else arr)
                inputs.append(inp)
            body, json_size = _get_inference_request(
                inputs, "", [th.InferRequestedOutput(n) for n in names], 0, False, False, 0,
                None, None)
            if not conn:
                conn.append(http.client.HTTPConnection(server.host, server.port, timeout=120))
            c = conn[0]
            try:
                c.request("POST", "/v2/models/bench-mlp/infer", body=body, headers={
                    "Inference-Header-Content-Length": str(json_size),
                    "Content-Type": "application/octet-stream"})
                resp = c.getresponse()
                data = resp.read()
            except (OSError, http.client.HTTPException):  # closed by the keepalive timeout
                conn.clear()
                return oip_http_client()
            assert resp.status == 200, data[:300]
            n = resp.getheader("Inference-Header-Content-Length")
            res = InferResult.from_response_body(data, header_length=int(n))
            return {o: res.as_numpy(o) for o in names}

        v1_body = request_body(net, "b64")
        v1 = orjson.loads(v1_body)
        v1["wrt"] = ["weights", "inputs"]
        v1_body = orjson.dumps(v1)

        def v1_b64() -> Any:
            # A fresh connection per request: an idle keep-alive one may have been closed
            # by gunicorn's keepalive timeout while the other rows ran (setup: ~0.2 ms).
            status, _, data = server.request("POST", "/v1/mlp/gradients", body=v1_body,
                                             headers={"Content-Type": "application/json"})
            assert status == 200, data[:300]
            return data

        # Same answer first, bit for bit: a fast wrong path is no result.
        ref = engine()
        got = oip(True)()
        assert got["output"].tobytes() == np.asarray(ref.output).tobytes()
        for n in wrt:
            assert got[f"grad:{n}"].tobytes() == ref.gradients[n].tobytes(), n

        got = oip_http_client()
        for n in wrt:
            assert got[f"grad:{n}"].tobytes() == ref.gradients[n].tobytes(), n
        fns = {"engine": engine, "OIP binary": oip(True),
               "OIP http.client": oip_http_client, "v1 b64": v1_b64,
               "OIP JSON": oip(False)}
        start = time.perf_counter()
        times = interleaved(fns, args.repeat, {"OIP JSON": args.json_every})
        elapsed = time.perf_counter() - start
        client.close()
        parts = stages(plan, values, wrt, args.repeat)
    finally:
        server.stop()
    report(times, args, load_start, elapsed)
    print("\nWhere an OIP binary request's time goes, each stage run in-process on its own "
          "(min ms; the rest of the round trip is the HTTP transfer of ~8 MB each way, "
          "gunicorn and geventhttpclient):\n")
    print("| " + " | ".join(parts) + " |")
    print("|" + "---|" * len(parts))
    print("| " + " | ".join(f"{v * 1e3:.1f}" for v in parts.values()) + " |")
    return 0


def stages(plan: Any, values: dict[str, np.ndarray], wrt: list[str], repeat: int
           ) -> dict[str, float]:
    """Least seconds of each stage of an OIP binary request, in-process."""
    import tritonclient.http as th
    from tritonclient.http._infer_result import InferResult
    from tritonclient.http._utils import _get_inference_request

    from service.config import load_settings
    from service.engine import Query, execute
    from service.flows.driver import Env, run_plan
    from service.flows.oip import InferFlow
    from service.flows.oip_codec import decode_request, encode_response, oip_buffer
    from service.http.reader import read_environ_body

    settings = load_settings(env={})
    names = ["output"] + [f"grad:{n}" for n in wrt]

    def build() -> tuple[bytes, int]:
        inputs = []
        for name in plan.input_order:
            arr = values[name]
            dt = "INT64" if name in plan.label_inputs else "FP32"
            inp = th.InferInput(name, list(arr.shape), dt)
            inp.set_data_from_numpy(arr.astype(np.int64) if dt == "INT64" else arr)
            inputs.append(inp)
        outputs = [th.InferRequestedOutput(n) for n in names]
        return _get_inference_request(inputs, "", outputs, 0, False, False, 0, None, None)

    body, header_length = build()
    decoded = decode_request(body, str(header_length), max_elements=1 << 24)
    answer, answer_header = run_plan(InferFlow("bench-mlp", body, str(header_length)), plan,
                                     "hit", Env(settings, None))  # type: ignore[arg-type]
    bound = {t.name: t.array for t in decoded.inputs}
    query = Query(wrt=tuple(wrt), dtype="float32")
    result = execute(plan, bound, query, limits=settings.limits)
    outs = [(n, result.output if n == "output" else result.gradients[n[5:]], True)
            for n in names]

    def parse() -> Any:
        res = InferResult.from_response_body(answer, header_length=answer_header)
        return [res.as_numpy(n) for n in names]

    fns = {
        "client: build request": build,
        "server: read + decode (framing, views)": lambda: decode_request(
            read_environ_body({"wsgi.input": io.BytesIO(body),
                               "CONTENT_LENGTH": str(len(body))}, len(body), 10.0,
                              into=oip_buffer(str(header_length))),
            str(header_length), max_elements=1 << 24),
        "server: engine": lambda: execute(plan, bound, query, limits=settings.limits),
        "server: encode": lambda: encode_response({"model_name": "m"}, outs),
        "client: parse response": parse,
    }
    return {k: min(v) for k, v in interleaved(fns, repeat, {}).items()}


def report(times: dict[str, list[float]], args: Any, load_start: tuple[float, ...],
           elapsed: float) -> None:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    eng = times["engine"]
    print(f"\n## OIP: MLP {' → '.join(map(str, SIZES))}, batch 256, float32, all gradients\n")
    print(f"NumPy {np.__version__}, {cores} CPU cores; load average (1/5/15 min) "
          f"{' / '.join(f'{x:.1f}' for x in load_start)} at the start, "
          f"{' / '.join(f'{x:.1f}' for x in os.getloadavg())} at the end; {elapsed:.0f} s. "
          f"{args.repeat} rounds (JSON every {args.json_every}th); times median / min ms; "
          "ratio = median of per-round ratios to the engine (min ratio in brackets).\n")
    print("| path | median ms | min ms | / engine | target |")
    print("|---|---|---|---|---|")
    rows: dict[str, Any] = {}
    for name, ts in times.items():
        step = args.json_every if name == "OIP JSON" else 1
        ratio = 1.0 if name == "engine" else paired(ts, eng, step)
        lo = 1.0 if name == "engine" else min(ts) / min(eng)
        target = ""
        if name == "OIP binary":
            target = f"≤ {TARGET} {'ok' if ratio <= TARGET else 'MISSED'}"
        print(f"| {name} | {statistics.median(ts) * 1e3:.1f} | {min(ts) * 1e3:.1f} | "
              f"{ratio:.2f} ({lo:.2f}) | {target} |")
        rows[name] = {"median_ms": statistics.median(ts) * 1e3, "min_ms": min(ts) * 1e3,
                      "ratio_median": ratio, "ratio_min": lo, "runs": len(ts)}
    print("\n```json")
    print(json.dumps({"bench": "oip", "load_start": load_start, "rows": rows}, indent=1))
    print("```")
    sys.stdout.flush()


if __name__ == "__main__":
    raise SystemExit(main())
