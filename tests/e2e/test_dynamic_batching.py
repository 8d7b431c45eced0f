"""Dynamic batching on a real gunicorn: 16 concurrent clients, one example each, to a
registered graph; every answer equals the unbatched one (the engine run alone, float64),
merged batches show in /metrics, and GRADSERVE_BATCH_MAX_SIZE=1 merges nothing. The client's
per_example / directions keywords against the same server."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import numpy as np
import pytest

from gradserve import Client
from service.engine import REGISTRY, Query, compile_graph, execute, parse_expression
from tests.e2e.server import GunicornServer

pytestmark = pytest.mark.e2e

EXPR = "sum(tanh(W @ x + b))"
RNG = np.random.default_rng(31)
W, B = RNG.standard_normal((32, 16)), RNG.standard_normal(32)
PLAN = compile_graph(parse_expression(EXPR, REGISTRY).graph, REGISTRY)


def _batch_counts(server: GunicornServer) -> tuple[float, float]:
    """(merged executions of 2 or more, all executions) from /metrics."""
    text = server.get("/metrics")[2].decode()
    def value(pattern: str) -> float:
        m = re.search(pattern, text, re.M)
        return float(m.group(1)) if m else 0.0
    ones = value(r'^gradserve_batch_size_bucket\{le="1\.0"\} (\S+)')
    total = value(r"^gradserve_batch_size_count (\S+)")
    return total - ones, total


def _round(server: GunicornServer, gid: str, xs: np.ndarray) -> list[dict[str, Any]]:
    barrier = threading.Barrier(len(xs))
    out: list[Any] = [None] * len(xs)

    def one(i: int) -> None:
        barrier.wait()
        status, _, body = server.post(f"/v1/graphs/{gid}/gradients", {
            "values": {"W": W.tolist(), "b": B.tolist(), "x": xs[i].tolist()},
            "wrt": ["x", "W"]})
        out[i] = (status, json.loads(body))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(xs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


@pytest.mark.parametrize("size", ["8", "1"])
def test_concurrent_answers_equal_unbatched_ones(size: str) -> None:
    env = {"GRADSERVE_BATCH_MAX_SIZE": size, "GRADSERVE_BATCH_WINDOW_US": "20000",
           "GRADSERVE_MAX_INFLIGHT": "2", "GRADSERVE_ADMISSION_WAIT_S": "20"}
    with GunicornServer(env, workers=1, threads=16) as server:
        status, _, body = server.post("/v1/graphs", {"expression": EXPR})
        gid = json.loads(body)["graph_id"]
        merged = 0.0
        for _ in range(8):  # merging needs overlap, which a loaded machine may not give at once
            xs = RNG.standard_normal((16, 16))
            for i, (status, body) in enumerate(_round(server, gid, xs)):
                assert status == 200, body
                alone = execute(PLAN, {"W": W, "b": B, "x": xs[i]}, Query(wrt=["x", "W"]))
                np.testing.assert_allclose(body["output"], alone.output, rtol=1e-12)
                for n in ("x", "W"):
                    np.testing.assert_allclose(body["gradients"][n], alone.gradients[n],
                                               rtol=1e-10, atol=1e-13)
            merged, total = _batch_counts(server)
            if size == "8" and merged:
                break
        if size == "8":
            assert merged > 0, "no merged batch in eight rounds of 16 concurrent requests"
        else:
            assert merged == 0 and total == 0  # off: the batcher is never entered

        with Client(server.url) as client:  # the client's keywords, same server
            xs = RNG.standard_normal((3, 16))
            got = client.gradients(gid, {"W": W, "b": B, "x": xs}, batched=["x"],
                                   per_example=True)
            assert got.gradients["W"].shape == (3, 32, 16)
            one = execute(PLAN, {"W": W, "b": B, "x": xs[1]}, Query())
            np.testing.assert_allclose(got.gradients["W"][1], one.gradients["W"], rtol=1e-10)
            d = client.gradients(gid, {"W": W, "b": B, "x": xs[0]}, wrt=[],
                                 tangents={"x": xs}, directions=3)
            assert np.shape(d.jvp) == (3,)


# --- a registered ONNX model: its parameters stored, each request only its example ---------

SIZES = (512, 1024, 4)  # wide enough that a run lasts while others arrive


def _onnx_mlp() -> bytes:
    from onnx import helper

    from tests.engine.onnx.models import model_bytes

    rng = np.random.default_rng(5)
    n_in, n_hidden, n_out = SIZES
    inits = {"W0": (rng.standard_normal((n_in, n_hidden)) / np.sqrt(n_in)).astype(np.float32),
             "b0": rng.standard_normal(n_hidden).astype(np.float32),
             "W1": (rng.standard_normal((n_hidden, n_out)) / 8).astype(np.float32),
             "b1": rng.standard_normal(n_out).astype(np.float32)}
    nodes = [helper.make_node("Gemm", ["x", "W0", "b0"], ["h"]),
             helper.make_node("Tanh", ["h"], ["a"]),
             helper.make_node("Gemm", ["a", "W1", "b1"], ["logits"])]
    return model_bytes(nodes, {"x": np.zeros((1, n_in), np.float32)}, ["logits"], inits,
                       dims={"x": ["N", n_in]})


def _alone(plan: Any, x: np.ndarray, up: np.ndarray) -> Any:
    """The engine alone on one example, float32 as the server computes it, and float64."""
    from service.engine.model import prepare

    out = []
    for dtype in ("float32", "float64"):
        _, values, query = prepare(plan, {"x": x}, Query(wrt=("x",), dtype=dtype, upstream=up))
        out.append(execute(plan, values, query))
    return out


def _examples(n: int) -> tuple[np.ndarray, np.ndarray]:
    xs = RNG.standard_normal((n, 1, SIZES[0])).astype(np.float32)
    ups = np.zeros((n, 1, SIZES[-1]), np.float32)
    ups[np.arange(n), 0, np.arange(n) % SIZES[-1]] = 1  # each client: the gradient of one logit
    return xs, ups


def _check(got_x: np.ndarray, got_out: np.ndarray, alone: list[Any]) -> None:
    """Equal to the example run alone, within float32 rounding (a merged run is one matrix
    product where the lone one is a matrix-vector product: BLAS sums in another order),
    each element measured against the largest one's size."""
    f32, f64 = alone
    for got, want, tol in ((got_x, f32.gradients["x"], 1e-5), (got_x, f64.gradients["x"], 1e-4),
                           (got_out, f32.output, 1e-5)):
        np.testing.assert_allclose(got, want, rtol=tol, atol=tol * float(np.max(np.abs(want))))


def _concurrently(n: int, one: Any) -> list[Any]:
    barrier = threading.Barrier(n)
    out: list[Any] = [None] * n

    def call(i: int) -> None:
        barrier.wait()
        out[i] = one(i)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_an_onnx_models_concurrent_requests_merge_over_v1_and_oip() -> None:
    """16 clients, one example each (x and the upstream of one logit), to a registered ONNX
    model with the default compute slots (2): the requests merge (the stored parameters are
    the same arrays) and each client gets its own input gradient, over /v1 and over OIP
    with tritonclient."""
    import tritonclient.http as tritonclient_http

    from tests.engine.onnx.models import plan_of

    data = _onnx_mlp()
    plan = plan_of(data)
    env = {"GRADSERVE_BATCH_MAX_SIZE": "8", "GRADSERVE_ADMISSION_WAIT_S": "20"}
    with GunicornServer(env, workers=1, threads=16) as server:
        status, _, raw = server.request("POST", "/v1/graphs?name=mlp", data,
                                        {"Content-Type": "application/onnx"})
        assert status == 201, raw
        path = f"/v1/graphs/{json.loads(raw)['graph_id']}/gradients"
        n = 16
        for _ in range(3):  # /v1, b64 tensors
            xs, ups = _examples(n)

            def v1(i: int, xs: np.ndarray = xs, ups: np.ndarray = ups) -> Any:
                status, _, body = server.post(path, {
                    "values": {"x": xs[i].tolist()}, "upstream": ups[i].tolist(),
                    "wrt": ["x"]})
                assert status == 200, body
                return json.loads(body)

            for i, body in enumerate(_concurrently(n, v1)):
                _check(np.asarray(body["gradients"]["x"]), np.asarray(body["output"]),
                       _alone(plan, xs[i], ups[i]))
            if _batch_counts(server)[0]:
                break
        merged_v1 = _batch_counts(server)[0]
        assert merged_v1 > 0, "no merged batch in three rounds of 16 concurrent requests"

        for _ in range(3):  # OIP, binary tensors, the real tritonclient
            xs, ups = _examples(n)

            def oip(i: int, xs: np.ndarray = xs, ups: np.ndarray = ups) -> Any:
                client = tritonclient_http.InferenceServerClient(
                    f"{server.host}:{server.port}", network_timeout=60)
                try:
                    ins = []
                    for name, arr in (("x", xs[i]), ("grad:output", ups[i])):
                        t = tritonclient_http.InferInput(name, list(arr.shape), "FP32")
                        t.set_data_from_numpy(arr, binary_data=True)
                        ins.append(t)
                    outs = [tritonclient_http.InferRequestedOutput(w, binary_data=True)
                            for w in ("output", "grad:x")]
                    res = client.infer("mlp", ins, outputs=outs)
                    return res.as_numpy("grad:x"), res.as_numpy("output")
                finally:
                    client.close()

            for i, (gx, output) in enumerate(_concurrently(n, oip)):
                assert gx.dtype == np.float32 and gx.shape == (1, SIZES[0])
                _check(gx, output, _alone(plan, xs[i], ups[i]))
            if _batch_counts(server)[0] > merged_v1:
                break
        assert _batch_counts(server)[0] > merged_v1, "no merged OIP batch in three rounds"
