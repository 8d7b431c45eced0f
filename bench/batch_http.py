"""Dynamic batching over HTTP: batching on against ``GRADSERVE_BATCH_MAX_SIZE=1``.

    .venv/bin/python -m bench.batch_http [--seconds 5] [--rounds 2] [--model 784-512-10]
                                         [--connections 16] [--registered NAME --url URL]

Two real gunicorns (one gthread worker of 16 threads each, pinned to CPU 0 as
``bench.http``'s are), the same settings but ``GRADSERVE_BATCH_MAX_SIZE`` (8, the default,
against 1) run side by side; ``wrk -t1 -c16`` pinned to CPU 1 sends 16 concurrent clients'
requests, one example each, to a registered MLP graph (float32, ReLU, the input gradient
asked for: a saliency map), its weights in every request as b64 float32 (the JSON graph
spec has inputs, not stored parameters). Each round runs both servers in turn; the report
gives requests/s and p50 of each and their ratios, with the load average. Before the timed
runs every distinct request is answered by both servers and the answers compared.

Where batching pays is a model whose compute per example dominates the HTTP cost: with the
weights in every request the body's decoding grows with the model too, so a wide model
(784-4096-4096-10) needs stored parameters (a registered ONNX model): ``--registered NAME
--url URL`` benches a model already registered on a running server under NAME (its one
input ``x`` of shape (1, 784), the gradient ``grad:x``, over the Open Inference Protocol)
against the same server; run it once with batching on and once with it off.

Not a test: nothing here asserts a speed. The machine is shared; compare rows of one run.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
from typing import Any

import numpy as np

from bench.http import load_average, pinned_server, run_wrk


def b64(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return {"shape": list(a.shape), "dtype": "float32", "b64": base64.b64encode(a).decode()}


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


def bodies(sizes: tuple[int, ...], n: int) -> list[bytes]:
    rng = np.random.default_rng(0)
    weights = {}
    for i, (n_in, n_out) in enumerate(zip(sizes, sizes[1:])):
        weights[f"W{i}"] = b64(rng.standard_normal((n_out, n_in)) / np.sqrt(n_in))
        weights[f"b{i}"] = b64(np.zeros(n_out))
    return [json.dumps({"values": {**weights, "x": b64(rng.standard_normal((1, sizes[0])))},
                        "wrt": ["x"], "dtype": "float32", "encoding": "b64"}).encode()
            for _ in range(n)]


def registered(args: argparse.Namespace) -> int:
    """``--registered NAME --url URL``: OIP infer requests (x alone, its gradient) to a
    model with stored parameters on a running server; run once per server setting."""
    if not args.url:
        raise SystemExit("--registered needs --url (the running server)")
    rng = np.random.default_rng(0)
    path = f"/v2/models/{args.registered}/infer"
    reqs = [(path, json.dumps({"inputs": [{"name": "x", "shape": [1, 784], "datatype": "FP32",
                                           "data": rng.standard_normal(784).tolist()}],
                               "outputs": [{"name": "grad:x"}]}).encode()) for _ in range(4)]
    print(f"model {args.registered} at {args.url}, {args.connections} clients")
    for r in range(args.rounds):
        got = run_wrk(args.url, reqs, args.seconds, args.connections)
        print(f"round {r}: {got['rps']:.1f} requests/s, p50 {got['p50']:.1f} ms, "
              f"p99 {got['p99']:.1f} ms, non-2xx {got['errors']}, load "
              f"{load_average():.1f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.batch_http",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--model", default="784-512-10")
    parser.add_argument("--window-us", default="2000")
    parser.add_argument("--registered", metavar="NAME",
                        help="a model registered on --url (stored parameters, input x)")
    parser.add_argument("--url", help="with --registered: the running server")
    args = parser.parse_args(argv)
    if args.registered:
        return registered(args)
    sizes = tuple(int(s) for s in args.model.split("-"))
    reqs = bodies(sizes, 4)
    common = {"GRADSERVE_THREADS": "16", "GRADSERVE_ADMISSION_WAIT_S": "30",
              "GRADSERVE_BATCH_WINDOW_US": args.window_us}
    servers = {"on": pinned_server("service.wsgi:app", {**common,
                                                        "GRADSERVE_BATCH_MAX_SIZE": "8"}),
               "off": pinned_server("service.wsgi:app", {**common,
                                                         "GRADSERVE_BATCH_MAX_SIZE": "1"})}
    try:
        paths = {}
        for name, server in servers.items():
            status, _, body = server.post("/v1/graphs", {"graph": mlp_spec(sizes)})
            paths[name] = f"/v1/graphs/{json.loads(body)['graph_id']}/gradients"
        for body in reqs:  # every distinct request: the same answer from both servers
            answers = [json.loads(s.request("POST", paths[n], body, {
                "Content-Type": "application/json"})[2]) for n, s in servers.items()]
            assert answers[0]["gradients"] == answers[1]["gradients"], "answers differ"
        print(f"model {args.model} float32, input gradient, {args.connections} clients, "
              f"window {args.window_us} us")
        print(f"{'round':>5} {'on rps':>9} {'off rps':>9} {'ratio':>6} {'on p50':>9} "
              f"{'off p50':>9} {'p50 ratio':>9} {'load':>5}")
        for r in range(args.rounds):
            got = {n: run_wrk(s.url, [(paths[n], b) for b in reqs], args.seconds,
                              args.connections) for n, s in servers.items()}
            on, off = got["on"], got["off"]
            print(f"{r:>5} {on['rps']:9.1f} {off['rps']:9.1f} {on['rps'] / off['rps']:6.2f} "
                  f"{on['p50']:7.1f}ms {off['p50']:7.1f}ms {on['p50'] / off['p50']:9.2f} "
                  f"{load_average():5.1f}")
        metrics = servers["on"].get("/metrics")[2].decode()
        lines = [ln for ln in metrics.splitlines() if ln.startswith("gradserve_batch_size_")]
        print("\n".join(lines))
    finally:
        for server in servers.values():
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
