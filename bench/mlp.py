"""The MLP endpoint against hand-written NumPy, and where an HTTP request's time goes.

    .venv/bin/python -m bench.mlp [--repeat 7] [--no-gunicorn] [--dtypes float32,float64]

An MLP 784 → 1024 → 1024 → 10, batch 256, ReLU hidden layers, softmax cross-entropy,
gradients of every weight and bias (the default ``wrt``), in float32 and float64:

(a) The engine in-process: the MLP lowered by ``service.flows.mlp_graph`` and compiled once, then
    ``execute`` timed, against a hand-written NumPy forward + backward of the same net
    (written the way one would by hand, not tuned), interleaved in the same run.
    Target: engine ≤ 1.10× NumPy.
(b) ``POST /v1/mlp/gradients`` with every tensor as a b64 object (and ``encoding: b64``)
    through Flask's test client, and through a real gunicorn (``tests/e2e/server.py``, one
    worker, so BLAS gets every core as in-process) against the in-process engine time.
    Target: ≤ 1.5×. The request's stages are timed one by one, in-process, with the
    service's own functions: body parse (orjson), validation (pydantic), decode (base64 +
    frombuffer + shape checks), plan lookup (cache hit), engine, encode (tensors → b64 +
    orjson). "Flask + WSGI" is the round trip minus the stages.
(c) The same with JSON nested lists both ways (reported, no target).

Also the achieved GFLOP/s (forward + backward = 3× the forward matmul FLOPs) against the
NumPy matmul peak of this machine (a large square matmul, measured in the same run).

Timing: every comparison is interleaved (round-robin), and both the median and the
minimum of the runs are shown; on a shared machine the minimum (the run least disturbed by
other processes) is the steadier figure, and the stage breakdown uses it. An A/A row (the
NumPy code against itself) shows the noise floor of the ratios.

Not a test: nothing here asserts a speed. Prints markdown tables.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import orjson

from bench.engine import relu_mlp_softmax_ce
from schemas import MLPRequest
from service.config import load_settings
from service.engine import REGISTRY, Query, compile_graph, execute
from service.flows import mlp_graph as mlp
from service.flows.codec import encode_tensor
from service.flows.driver import Env
from service.flows.mlp import MLPFlow, decode
from service.http.responses import json_response
from service.store.cache import GraphCache
from service.store.memory import MemoryStore

SIZES = (784, 1024, 1024, 10)
BATCH = 256
URL = "/v1/mlp/gradients"
FORWARD_FLOPS = 2 * BATCH * sum(i * o for i, o in zip(SIZES, SIZES[1:]))
TRAIN_FLOPS = 3 * FORWARD_FLOPS
PEAK_N = 1536  # the square matmul that stands for this machine's NumPy peak


# --- the network and its request ---------------------------------------------------------------


def make_net(dtype: str, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    np_dtype = np.dtype(dtype)
    Ws = [(rng.standard_normal((o, i)) / np.sqrt(i)).astype(np_dtype)
          for i, o in zip(SIZES, SIZES[1:])]
    bs = [(0.1 * rng.standard_normal(o)).astype(np_dtype) for o in SIZES[1:]]
    x = rng.standard_normal((BATCH, SIZES[0])).astype(np_dtype)
    y = rng.integers(0, SIZES[-1], size=BATCH)
    return {"Ws": Ws, "bs": bs, "x": x, "y": y, "dtype": dtype}


def request_body(net: dict[str, Any], form: str) -> bytes:
    """The request as bytes: every tensor a b64 object, or JSON nested lists."""
    dtype = net["dtype"]

    def tensor(a: np.ndarray) -> Any:
        if form == "b64":
            return encode_tensor(a, "b64", dtype)
        return a  # orjson writes it as nested lists

    acts = ["relu"] * (len(SIZES) - 2) + ["identity"]
    body = {
        "layers": [{"weight": tensor(W), "bias": tensor(b), "activation": a}
                   for W, b, a in zip(net["Ws"], net["bs"], acts)],
        "inputs": tensor(net["x"]),
        "loss": {"type": "softmax_cross_entropy", "targets": net["y"].tolist()},
        "dtype": dtype,
        "encoding": "b64" if form == "b64" else "json",
    }
    return orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)


# --- hand-written NumPy ----------------------------------------------------------------------


def numpy_forward_backward(Ws: list[np.ndarray], bs: list[np.ndarray], x: np.ndarray,
                           y: np.ndarray) -> tuple[float, list[np.ndarray], list[np.ndarray]]:
    """ReLU MLP + softmax cross-entropy by hand (weights' gradients only, as the endpoint's
    default ``wrt``)."""
    loss, dWs, dbs, _ = relu_mlp_softmax_ce(Ws, bs, x, y, input_grad=False)
    return loss, dWs, dbs


# --- timing ----------------------------------------------------------------------------------


def interleaved(fns: dict[str, Callable[[], Any]], repeat: int) -> dict[str, list[float]]:
    """Time several functions round-robin, so drift (clocks, other load) hits them alike."""
    for fn in fns.values():
        fn()  # warm-up: caches, allocator, the plan's specialization
    out: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            out[k].append(time.perf_counter() - t)
    return out


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def paired(a: list[float], b: list[float]) -> float:
    """Median over the rounds of a[i] / b[i]: each ratio from runs made side by side."""
    return statistics.median(x / y for x, y in zip(a, b))


def square_operands(dtype: str, n: int = PEAK_N) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return (rng.standard_normal((n, n)).astype(dtype), rng.standard_normal((n, n)).astype(dtype))


# --- (a) engine vs NumPy -----------------------------------------------------------------------


def engine_setup(net: dict[str, Any]) -> tuple[Any, dict[str, np.ndarray], list[str], str]:
    acts = tuple(["relu"] * (len(SIZES) - 2) + ["identity"])
    arch = mlp.Architecture(tuple((o, i) for i, o in zip(SIZES, SIZES[1:])), acts,
                            "softmax_cross_entropy", False, 2)
    plan = compile_graph(mlp.lower(arch), REGISTRY)
    values = {mlp.INPUT: net["x"], mlp.TARGETS: net["y"]}
    wrt = []
    for i, (W, b) in enumerate(zip(net["Ws"], net["bs"])):
        values[mlp.weight_name(i)] = W
        values[mlp.bias_name(i)] = b
        wrt += [mlp.weight_name(i), mlp.bias_name(i)]
    return plan, values, wrt, arch.output_node


def bench_engine(net: dict[str, Any], repeat: int) -> dict[str, list[float]]:
    """Engine, hand-written NumPy, NumPy again (A/A) and the peak matmul, round-robin."""
    plan, values, wrt, out_node = engine_setup(net)
    dtype = net["dtype"]

    query = Query(wrt=wrt, dtype=dtype, fetch=(out_node,))

    def engine() -> Any:
        return execute(plan, values, query)

    def numpy() -> Any:
        return numpy_forward_backward(net["Ws"], net["bs"], net["x"], net["y"])

    # Same answer first: a fast wrong engine is no result.
    r = engine()
    loss, dWs, dbs = numpy()
    tol = 1e-3 if dtype == "float32" else 1e-9
    assert abs(float(r.output) - loss) <= tol * max(1.0, abs(loss)), (float(r.output), loss)
    for i, (dW, db) in enumerate(zip(dWs, dbs)):
        np.testing.assert_allclose(r.gradients[mlp.weight_name(i)], dW, rtol=tol,
                                   atol=tol * float(np.abs(dW).max()))
        np.testing.assert_allclose(r.gradients[mlp.bias_name(i)], db, rtol=tol,
                                   atol=tol * float(np.abs(db).max()))
    a, b = square_operands(dtype)
    return interleaved({"engine": engine, "numpy": numpy, "numpy A/A": numpy,
                        "matmul": lambda: a @ b}, repeat)


# --- (b), (c) HTTP -----------------------------------------------------------------------------


def quiet_access_log() -> None:
    # Keep the log's cost (it runs per request in production too) but not its output.
    for handler in logging.getLogger("gradserve.access").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(open(os.devnull, "w"))  # noqa: SIM115 - lives for the run


def stages(body: bytes, repeat: int) -> dict[str, float]:
    """Least seconds of each stage of the request, run in-process one by one."""
    settings = load_settings(env={})
    cache = GraphCache(REGISTRY, settings.limits, store=MemoryStore())
    data = orjson.loads(body)
    req = MLPRequest.model_validate(data)
    env = Env(settings, cache)
    flow = MLPFlow(req)
    plan, _ = flow.resolve(env)
    bound, query = flow.bind(plan, env)
    result = execute(plan, bound, query, limits=settings.limits)

    def encode() -> Any:
        return json_response(flow.encode(plan, "hit", result, env))

    fns = {
        "parse (orjson)": lambda: orjson.loads(body),
        "validate (pydantic)": lambda: MLPRequest.model_validate(data),
        "decode (tensors)": lambda: decode(req, settings),
        "plan (cache hit)": lambda: mlp.plan_for(flow.mlp.architecture, cache),
        "engine": lambda: execute(plan, bound, query, limits=settings.limits),
        "encode (tensors + orjson)": encode,
    }
    return {k: min(v) for k, v in interleaved(fns, repeat).items()}


def bench_http(body: bytes, repeat: int, gunicorn: Any) -> dict[str, Any]:
    """Round trips (test client, gunicorn) interleaved with the in-process engine."""
    from tests.conftest import build_app

    app = build_app()
    quiet_access_log()
    client = app.test_client()
    settings = load_settings(env={})
    req = MLPRequest.model_validate(orjson.loads(body))
    flow = MLPFlow(req)
    env = Env(settings, GraphCache(REGISTRY, settings.limits, store=MemoryStore()))
    plan, _ = flow.resolve(env)
    bound, query = flow.bind(plan, env)

    def post() -> bytes:
        r = client.post(URL, data=body, content_type="application/json")
        assert r.status_code == 200, r.get_data()[:300]
        return r.get_data()

    fns = {"engine": lambda: execute(plan, bound, query, limits=settings.limits),
           "test client": post}
    if gunicorn is not None:
        def post_real() -> bytes:
            status, _, data = gunicorn.request(
                "POST", URL, body=body, headers={"Content-Type": "application/json"})
            assert status == 200, data[:300]
            return data

        fns["gunicorn"] = post_real
    out: dict[str, Any] = interleaved(fns, repeat)
    out["request_bytes"], out["response_bytes"] = len(body), len(post())
    out["stages"] = stages(body, repeat)
    return out


# --- report ------------------------------------------------------------------------------------


def ms(s: float) -> str:
    return f"{s * 1e3:.1f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=5,
                   help="rounds of the b64 HTTP measurement; the engine comparison runs 3x "
                   "as many, the JSON one about half")
    p.add_argument("--dtypes", default="float32,float64")
    p.add_argument("--no-gunicorn", action="store_true", help="skip the real gunicorn")
    args = p.parse_args(argv)
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    start = time.perf_counter()
    load_start = os.getloadavg()

    server = None
    if not args.no_gunicorn:
        try:
            from tests.e2e.server import GunicornServer

            server = GunicornServer(workers=1, threads=1, request_timeout=120.0).start()
        except Exception as exc:  # noqa: BLE001 - the rest of the bench still runs
            print(f"(no gunicorn run: {exc.__class__.__name__}: {str(exc)[:200]})")
            server = None
    rows = []
    try:
        for dtype in dtypes:
            net = make_net(dtype)
            eng = bench_engine(net, args.repeat * 3)
            http = {form: bench_http(request_body(net, form), rounds(args, form), server)
                    for form in ("b64", "json")}
            rows.append((dtype, eng, http))
    finally:
        if server is not None:
            server.stop()
    report(rows, args, load_start, time.perf_counter() - start, server is not None)
    return 0


def rounds(args: Any, form: str) -> int:
    return args.repeat if form == "b64" else max(2, args.repeat // 2 + 1)


def report(rows: list[Any], args: Any, load_start: tuple[float, ...], elapsed: float,
           with_gunicorn: bool) -> None:
    def load(avg: tuple[float, ...]) -> str:
        return " / ".join(f"{x:.1f}" for x in avg)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"\n## MLP {' → '.join(map(str, SIZES))}, batch {BATCH}, ReLU, softmax CE\n")
    print(f"NumPy {np.__version__}, {cores} CPU cores; load average (1/5/15 min) "
          f"{load(load_start)} at the start, {load(os.getloadavg())} at the end. "
          f"Forward + backward = 3 × forward matmul FLOPs = {TRAIN_FLOPS / 1e9:.2f} GFLOP; "
          f"peak = the fastest {PEAK_N}×{PEAK_N} matmul, run in the same rounds. Ratios are "
          "the median of per-round ratios (runs made side by side); times median / min ms.\n")
    n_a = args.repeat * 3
    print(f"### (a) engine in-process vs hand-written NumPy ({n_a} rounds)\n")
    print("| dtype | NumPy | engine | engine / NumPy (target ≤ 1.10) | A/A: NumPy / NumPy "
          "| NumPy GFLOP/s | engine GFLOP/s | matmul peak GFLOP/s | engine % of peak |")
    print("|---|---|---|---|---|---|---|---|---|")
    for dtype, eng, _ in rows:
        tn, te = eng["numpy"], eng["engine"]
        ratio = paired(te, tn)
        peak = 2 * PEAK_N ** 3 / min(eng["matmul"]) / 1e9
        gf_n, gf_e = TRAIN_FLOPS / min(tn) / 1e9, TRAIN_FLOPS / min(te) / 1e9
        print(f"| {dtype} | {ms(med(tn))} / {ms(min(tn))} | {ms(med(te))} / {ms(min(te))} | "
              f"{ratio:.3f} {'ok' if ratio <= 1.10 else 'MISSED'} | "
              f"{paired(eng['numpy A/A'], tn):.3f} | {gf_n:.1f} | {gf_e:.1f} | {peak:.1f} | "
              f"{100 * gf_e / peak:.0f}% |")

    for form, title, target in (("b64", "(b) HTTP round trip, b64 tensors both ways", 1.5),
                                ("json", "(c) HTTP round trip, JSON nested lists both ways",
                                 None)):
        print(f"\n### {title} ({rounds(args, form)} rounds)\n")
        print("| dtype | request MB | response MB | engine | test client | test client / "
              "engine | gunicorn | gunicorn / engine |")
        print("|---|---|---|---|---|---|---|---|")
        for dtype, _, http in rows:
            h = http[form]
            cols = []
            for key in ("test client", "gunicorn"):
                if key not in h:
                    cols.append("— | —")
                    continue
                ratio = paired(h[key], h["engine"])
                mark = "" if target is None else (" ok" if ratio <= target else " MISSED")
                cols.append(f"{ms(med(h[key]))} / {ms(min(h[key]))} | {ratio:.2f}{mark}")
            print(f"| {dtype} | {h['request_bytes'] / 1e6:.1f} | {h['response_bytes'] / 1e6:.1f}"
                  f" | {ms(med(h['engine']))} / {ms(min(h['engine']))} | {cols[0]} | "
                  f"{cols[1]} |")
        print(f"\nWhere the test-client round trip goes ({form}; each stage run in-process "
              "with the service's functions, min ms; the rest is the round trip's min minus "
              "the stages: werkzeug's request and response handling, the test client):\n")
        names = list(rows[0][2][form]["stages"])
        print("| dtype | " + " | ".join(names) + " | Flask + WSGI (rest) | round trip |")
        print("|---|" + "---|" * (len(names) + 2))
        for dtype, _, http in rows:
            h = http[form]
            st = h["stages"]
            tc = min(h["test client"])
            print(f"| {dtype} | " + " | ".join(ms(st[n]) for n in names)
                  + f" | {ms(tc - sum(st.values()))} | {ms(tc)} |")
    if not with_gunicorn:
        print("\n(no gunicorn: its columns are empty)")
    print(f"\n(bench ran {elapsed:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
