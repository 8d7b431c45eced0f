"""Dynamic batching over HTTP: batching on against ``GRADSERVE_BATCH_MAX_SIZE=1``.

    .venv/bin/python -m bench.batch_http [--model 784-4096-4096-10] [--seconds 5]
                                         [--rounds 3] [--connections 16] [--max-size 8]
                                         [--threads 16] [--window-us 2000] [--spec]
                                         [--no-single]

Two real gunicorns (one gthread worker each, ``--threads`` threads, pinned to CPU 0 as
``bench.http``'s are), the same settings but ``GRADSERVE_BATCH_MAX_SIZE`` (``--max-size``
against 1), run side by side. Each registers the same ONNX MLP (float32, ReLU between the
layers, logits out), made here with ``onnx.helper`` and random weights: its parameters are
stored, so a request carries only its example ``x`` (1 × 784, b64) and its ``upstream``
(a one-hot row: the gradient of one logit, a saliency map), asking the input gradient.
``wrk -t1 -c16`` pinned to CPU 1 sends 16 concurrent clients' requests; the servers take
turns, ``--rounds`` times, and the report gives each run's requests/s, p50 and p99, the
load average, and the medians of the per-round ratios on ÷ off. Then the same with one
client (``-c1``, its requests one after another): the case the batcher must not slow down.

Answers: before the timed runs, rounds of 16 concurrent requests go to the "on" server
until some of them merged (its /metrics says so), and each answer is compared with the
"off" server's answer to the same request: the report gives how many are bitwise equal
and the largest relative difference (a merged run is one matrix product where the lone
one is a matrix-vector product; BLAS may round them differently in float32).

``--spec``: the older case, a graph spec registered as JSON whose weights travel in every
request (b64), where the body's decoding dominates and merging gains little.

Not a test: nothing here asserts a speed. The machine is shared; compare rows of one run.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import statistics
import sys
import threading
from typing import Any

import numpy as np

from bench.http import load_average, pinned_server, run_wrk
from tests.e2e.server import GunicornServer


def b64(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return {"shape": list(a.shape), "dtype": "float32", "b64": base64.b64encode(a).decode()}


def unb64(t: dict[str, Any]) -> np.ndarray:
    return np.frombuffer(base64.b64decode(t["b64"]), dtype=t["dtype"]).reshape(t["shape"])


def onnx_mlp(sizes: tuple[int, ...], seed: int = 0) -> bytes:
    """An ONNX MLP (Gemm, Relu, ..., Gemm: logits), float32 random weights, input
    ``x`` of shape (N, sizes[0])."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        w = (rng.standard_normal((n_in, n_out)) / np.sqrt(n_in)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"W{i}"),
                  numpy_helper.from_array(np.zeros(n_out, np.float32), f"b{i}")]
        last = i == len(sizes) - 2
        nodes.append(helper.make_node("Gemm", [prev, f"W{i}", f"b{i}"],
                                      ["logits" if last else f"h{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"h{i}"], [f"a{i}"]))
            prev = f"a{i}"
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", sizes[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", sizes[-1]])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    return model.SerializeToString()  # type: ignore[no-any-return]


def onnx_bodies(sizes: tuple[int, ...], n: int) -> list[bytes]:
    """``n`` distinct requests: an example and the one-hot upstream of one logit."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        up = np.zeros((1, sizes[-1]), np.float32)
        up[0, i % sizes[-1]] = 1
        out.append(json.dumps({"values": {"x": b64(rng.standard_normal((1, sizes[0])))},
                               "upstream": b64(up), "wrt": ["x"], "encoding": "b64"}).encode())
    return out


def mlp_spec(sizes: tuple[int, ...]) -> dict[str, Any]:
    inputs: dict[str, Any] = {"x": {"shape": [1, sizes[0]]}}
    nodes, prev = [], "x"
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        inputs[f"W{i}"], inputs[f"b{i}"] = {"shape": [n_out, n_in]}, {"shape": [n_out]}
        nodes.append({"id": f"h{i}", "op": "linear", "args": [prev, f"W{i}", f"b{i}"]})
        prev = f"h{i}"
        if i < len(sizes) - 2:
            nodes.append({"id": f"a{i}", "op": "relu", "args": [prev]})
            prev = f"a{i}"
    nodes.append({"id": "out", "op": "logsumexp", "args": [prev]})  # a scalar per example
    return {"inputs": inputs, "nodes": nodes, "output": "out"}


def spec_bodies(sizes: tuple[int, ...], n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    weights = {}
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        weights[f"W{i}"] = b64(rng.standard_normal((n_out, n_in)) / np.sqrt(n_in))
        weights[f"b{i}"] = b64(np.zeros(n_out))
    return [json.dumps({"values": {**weights, "x": b64(rng.standard_normal((1, sizes[0])))},
                        "wrt": ["x"], "dtype": "float32", "encoding": "b64"}).encode()
            for _ in range(n)]


def register(server: GunicornServer, sizes: tuple[int, ...], spec: bool) -> str:
    if spec:
        status, _, body = server.post("/v1/graphs", {"graph": mlp_spec(sizes)})
    else:
        status, _, body = server.request("POST", "/v1/graphs", onnx_mlp(sizes),
                                         {"Content-Type": "application/onnx"}, timeout=120)
    assert status in (200, 201), body[:300]
    return f"/v1/graphs/{json.loads(body)['graph_id']}/gradients"


def merged_count(server: GunicornServer) -> tuple[float, float]:
    """(executions that merged 2 or more requests, all executions) from /metrics."""
    text = server.get("/metrics")[2].decode()

    def value(pattern: str) -> float:
        m = re.search(pattern, text, re.M)
        return float(m.group(1)) if m else 0.0
    total = value(r"^gradserve_batch_size_count (\S+)")
    return total - value(r'^gradserve_batch_size_bucket\{le="1\.0"\} (\S+)'), total


def concurrent(server: GunicornServer, path: str, reqs: list[bytes]) -> list[dict[str, Any]]:
    barrier = threading.Barrier(len(reqs))
    out: list[Any] = [None] * len(reqs)

    def one(i: int) -> None:
        barrier.wait()
        status, _, body = server.request("POST", path, reqs[i],
                                         {"Content-Type": "application/json"}, timeout=120)
        assert status == 200, body[:300]
        out[i] = json.loads(body)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(reqs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return out


def check_answers(servers: dict[str, GunicornServer], paths: dict[str, str],
                  reqs: list[bytes]) -> str:
    """Concurrent rounds on "on" until some merged; each answer against "off"'s."""
    alone = [json.loads(servers["off"].request("POST", paths["off"], b, {
        "Content-Type": "application/json"}, timeout=120)[2]) for b in reqs]
    equal, worst, rounds = 0, 0.0, 0
    for _ in range(5):
        rounds += 1
        for got, want in zip(concurrent(servers["on"], paths["on"], reqs), alone):
            a, b = unb64(got["gradients"]["x"]), unb64(want["gradients"]["x"])
            equal += bool(np.array_equal(a, b))
            worst = max(worst, float(np.max(np.abs(a - b)) / (np.max(np.abs(b)) or 1.0)))
            assert np.allclose(a, b, rtol=1e-4, atol=1e-5 * np.max(np.abs(b))), "answers differ"
        if merged_count(servers["on"])[0]:
            break
    merged, total = merged_count(servers["on"])
    return (f"answers: {rounds * len(reqs)} concurrent answers from 'on' ({merged:.0f} of "
            f"{total:.0f} executions merged) against 'off': {equal} bitwise equal, largest "
            f"difference {worst:.1e} of the gradient's largest element")


def rotation(servers: dict[str, GunicornServer], paths: dict[str, str], reqs: list[bytes],
             args: argparse.Namespace, connections: int) -> None:
    print(f"\n{connections} client(s), {args.rounds} alternating rounds of {args.seconds:g} s")
    print(f"{'round':>5} {'server':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>7} "
          f"{'load':>5}")
    ratios: dict[str, list[float]] = {"rps": [], "p50": [], "p99": []}
    for r in range(args.rounds):
        got = {}
        for name in (("on", "off") if r % 2 == 0 else ("off", "on")):
            got[name] = run_wrk(servers[name].url, [(paths[name], b) for b in reqs],
                                args.seconds, connections)
            g = got[name]
            print(f"{r:>5} {name:>6} {g['rps']:8.1f} {g['p50']:8.1f} {g['p99']:8.1f} "
                  f"{g['errors']:>7} {load_average():5.1f}")
        for k in ratios:
            ratios[k].append(got["on"][k] / got["off"][k])
    print(f"median on/off: throughput {statistics.median(ratios['rps']):.2f}x, p50 "
          f"{statistics.median(ratios['p50']):.2f}x, p99 {statistics.median(ratios['p99']):.2f}x"
          f" (per round: {', '.join(f'{x:.2f}' for x in ratios['rps'])})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_http",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--model", default="784-4096-4096-10")
    parser.add_argument("--max-size", default="8")
    parser.add_argument("--window-us", default="2000")
    parser.add_argument("--spec", action="store_true",
                        help="a JSON graph spec, its weights in every request")
    parser.add_argument("--no-single", action="store_true", help="skip the one-client runs")
    args = parser.parse_args(argv)
    sizes = tuple(int(s) for s in args.model.split("-"))
    reqs = (spec_bodies if args.spec else onnx_bodies)(sizes, args.connections)
    common = {"GRADSERVE_ADMISSION_WAIT_S": "30", "GRADSERVE_BATCH_WINDOW_US": args.window_us,
              "GRADSERVE_MAX_MODEL_BYTES": str(1 << 30),
              "GRADSERVE_MAX_BODY_BYTES": str(1 << 30),
              "GRADSERVE_BODY_BYTES_IN_FLIGHT": str(2 << 30)}
    servers = {name: pinned_server("service.wsgi:app",
                                   {**common, "GRADSERVE_BATCH_MAX_SIZE": size}, args.threads)
               for name, size in (("on", args.max_size), ("off", "1"))}
    try:
        paths = {name: register(s, sizes, args.spec) for name, s in servers.items()}
        kind = ("graph spec, weights in every request" if args.spec
                else "registered ONNX, stored parameters")
        print(f"model {args.model} float32 ({kind}), input gradient; one worker of "
              f"{args.threads} threads per server; on: GRADSERVE_BATCH_MAX_SIZE="
              f"{args.max_size}, window {args.window_us} us; off: =1")
        print(check_answers(servers, paths, reqs))
        rotation(servers, paths, reqs, args, args.connections)
        if not args.no_single:
            before = merged_count(servers["on"])
            rotation(servers, paths, reqs[:1], args, 1)
            after = merged_count(servers["on"])
            print(f"one client: {after[0] - before[0]:.0f} merged of "
                  f"{after[1] - before[1]:.0f} executions on 'on'")
        text = servers["on"].get("/metrics")[2].decode()
        print("\n".join(ln for ln in text.splitlines()
                        if ln.startswith(("gradserve_batch_size_", "gradserve_batch_queue"))
                        and ("_sum" in ln or "_count" in ln)))
    finally:
        for server in servers.values():
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
