"""What registering an ONNX model costs, and that a repeat pays no parsing, in process.

    .venv/bin/python -m bench.onnx_register [--mb 50] [--reps 3]

A float32 MLP of about ``--mb`` megabytes of weights (784 → H → H → 10, ReLU; H chosen for
the size) is built with onnx.helper. Each repetition, on a fresh app (in-memory store, its
own L1) through the Flask test client:

(a) register   ``POST /v1/graphs`` with the bytes as ``application/onnx``: size check,
               parse, checker, shape inference, lowering, compile, pack and store;
(b) first      the first ``POST /v1/graphs/{id}/gradients`` (batch 32, input gradient);
(c) repeat     the same request again (``cache: hit``: the L1 plan, nothing parsed);
(d) again      ``POST /v1/graphs`` with the same bytes again (the L1 alias: nothing parsed);
(e) engine     ``execute()`` alone on the L1 plan with the same values and query: what (c)
               costs without HTTP, JSON or the cache; (c) ÷ (e) near 1 means the repeat
               pays nothing for the model's size (no parse, no decode, no copy).

The baseline, measured in the same run on the same bytes: onnxruntime's
``InferenceSession`` creation (what a forward-only server pays to load the model). Medians
over ``--reps``; ratios are to that baseline. Not a test: nothing here asserts a speed;
the goal (registration under 2 s for 50 MB) is reported as met or missed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import numpy as np

GOAL_S = 2.0
BATCH = 8


def model(mb: float) -> bytes:
    from onnx import TensorProto, helper, numpy_helper

    # 784*H + H*H + 10*H floats = mb MB  ->  H^2 + 794 H - mb*2^20/4 = 0
    floats = mb * (1 << 20) / 4
    h = int((-794 + (794**2 + 4 * floats) ** 0.5) / 2)
    rng = np.random.default_rng(0)
    shapes = {"w1": (h, 784), "b1": (h,), "w2": (h, h), "b2": (h,), "w3": (10, h), "b3": (10,)}
    inits = [numpy_helper.from_array((rng.standard_normal(s) * 0.01).astype(np.float32), n)
             for n, s in shapes.items()]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h1"], transB=1),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Gemm", ["r1", "w2", "b2"], ["h2"], transB=1),
             helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("Gemm", ["r2", "w3", "b3"], ["y"], transB=1)]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 784])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]
                             ).SerializeToString()


def timed(fn: Any) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def one_round(data: bytes) -> dict[str, float]:
    import onnxruntime as ort

    from service.config import load_settings
    from service.store.memory import MemoryStore
    from tests.conftest import build_app

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    t_ort, _ = timed(lambda: ort.InferenceSession(data, opts,
                                                  providers=["CPUExecutionProvider"]))
    limits = load_settings(env={}).limits
    app = build_app(store=MemoryStore(), limits=limits)
    client = app.test_client()
    t_reg, resp = timed(lambda: client.post("/v1/graphs", data=data,
                                            content_type="application/onnx"))
    assert resp.status_code == 201, resp.get_json()
    gid = resp.get_json()["graph_id"]
    x = np.random.default_rng(1).standard_normal((BATCH, 784)).astype(np.float32)
    body = {"values": {"x": {"shape": [BATCH, 784], "dtype": "float32",
                             "b64": __import__("base64").b64encode(x.tobytes()).decode()}},
            "upstream": np.ones((BATCH, 10)).tolist(), "encoding": "b64"}
    t_first, r1 = timed(lambda: client.post(f"/v1/graphs/{gid}/gradients", json=body))
    t_repeat, r2 = timed(lambda: client.post(f"/v1/graphs/{gid}/gradients", json=body))
    assert r1.status_code == r2.status_code == 200 and r2.get_json()["cache"] == "hit"
    t_again, r3 = timed(lambda: client.post("/v1/graphs", data=data,
                                            content_type="application/onnx"))
    assert r3.status_code == 200
    from service.engine import Query, execute

    plan, _ = app.extensions["gradserve"].cache.plan_for_id(gid)
    query = Query(wrt=("x",), upstream=np.ones((BATCH, 10), np.float32), dtype="float32")
    t_engine = min(timed(lambda: execute(plan, {"x": x}, query))[0] for _ in range(3))
    return {"ort_session": t_ort, "register": t_reg, "first": t_first, "repeat": t_repeat,
            "register_again": t_again, "engine": t_engine}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args(argv)
    data = model(args.mb)
    print(f"model: {len(data) / 1e6:.1f} MB ({len(data):,} bytes), {args.reps} rounds")
    rounds = [one_round(data) for _ in range(args.reps)]
    med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    base = med["ort_session"]
    for key, what in (("ort_session", "onnxruntime InferenceSession (baseline)"),
                      ("register", "(a) POST /v1/graphs, application/onnx"),
                      ("first", f"(b) first gradient request (batch {BATCH})"),
                      ("repeat", "(c) the same request again (L1 hit)"),
                      ("register_again", "(d) the same registration again (L1 alias)"),
                      ("engine", "(e) execute() alone, same values and query")):
        print(f"{what:48s} {med[key] * 1e3:9.1f} ms   {med[key] / base:6.2f}x baseline")
    print(f"registration of {len(data) / 1e6:.0f} MB: {med['register']:.2f} s, goal < "
          f"{GOAL_S:.0f} s: {'met' if med['register'] < GOAL_S else 'missed'}; the repeat "
          f"request (c) costs {med['repeat'] / med['engine']:.2f}x the engine alone (e)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
