"""The cost model covers the whole joint graph: backward temporaries, Jacobians, Hessians.

The class of issue 9 item 1: ``sum(a @ b)`` with broadcast batch axes used to materialize a
(B1, B2, n, k) temporary in matmul's VJP (1.1 GB from a 4 MB body). Now the broadcast axes
are summed inside the product (a contraction), and every temporary is a node the estimate
counts, so such requests either run in bounded memory or are refused with 413 first.
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest

from service.engine import REGISTRY, compile_graph, execute, parse_expression
from service.engine.limits import Limits
from tests.flows.test_limits import b64
from tests.lecture import problem

MATMUL = compile_graph(parse_expression("sum(a @ b)", REGISTRY).graph, REGISTRY)


@pytest.mark.parametrize(("sa", "sb"), [
    ((512, 1, 1, 512), (1, 512, 512, 1)),
    ((256, 1, 2, 256), (1, 256, 256, 2)),
    ((1, 512, 512), (512, 1, 512, 1)),
    ((512, 1, 512), (512,)),
    ((512,), (256, 1, 512, 2)),
])
def test_broadcast_matmul_vjp_runs_in_bounded_memory(sa, sb) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    out_elements = int(np.prod(np.broadcast_shapes(sa[:-2], sb[:-2]) if len(sa) > 1 and
                               len(sb) > 1 else (1,)))
    tracemalloc.start()
    try:
        r = execute(MATMUL, {"a": a, "b": b})
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Inputs are 2 MB each; the old VJP's temporary was B1*B2*n*k*8 bytes (1 GB for the
    # first case). Allow the output, gradients and a few operand copies.
    assert peak < 48 * 2**20 + 16 * out_elements, peak
    # Exact against the gradient written as one einsum over the broadcast shapes.
    g_out = np.ones(np.broadcast_shapes(np.shape(a @ b)))
    assert r.gradients["a"].shape == sa and r.gradients["b"].shape == sb
    if len(sa) == 4 and len(sb) == 4:
        ga = np.einsum("ijnm,xjkm->ink", g_out, b).reshape(sa) if sa[1] == 1 else None
        if ga is not None:
            np.testing.assert_allclose(r.gradients["a"], ga, rtol=1e-10)


def test_estimate_counts_backward_temporaries() -> None:
    exe = MATMUL.specialize({"a": (512, 1, 1, 512), "b": (1, 512, 512, 1)}, ("a", "b"))
    assert all(exe.slot_shapes[s] != (512, 512, 1, 512) for s in range(exe.n_slots))
    # Peak: inputs (2 x 262,144), output, seed, and the VJP's products.
    assert exe.peak_elements < 8 * 512 * 512
    assert exe.flops >= 3 * 2 * 512 ** 3  # forward and both VJP products


@pytest.mark.parametrize(("expr", "shapes", "extra", "setting"), [
    # Backward temporaries alone go over the memory budget.
    ("sum(exp(x) * sin(x) * cos(x))", {"x": (512, 512)}, {}, "max_memory_bytes"),
    # Same, reached only by the second-order part.
    ("sum(x * x * x)", {"x": (1024, 256)}, {"hvp": True}, "max_memory_bytes"),
    ("sum(a @ b)", {"a": (256, 1, 4, 256), "b": (1, 256, 256, 4)}, {}, "max_memory_bytes"),
    ("sum(x * x)", {"x": (64,)}, {"hessian": True}, "max_hessian_elements"),
    ("sum(x * x)", {"x": (600,)}, {"hessian": True}, "max_flops"),
])
def test_refused_with_413_naming_the_setting_before_work(make_app, expr, shapes, extra,
                                                         setting) -> None:
    limits = Limits(max_memory_bytes=2 << 20, max_hessian_elements=1000, max_flops=10**9)
    if setting == "max_flops":
        limits = Limits(max_flops=1_000_000, max_hessian_elements=10**6)
    client = make_app(limits=limits).test_client()
    values = {n: b64(np.ones(s)) for n, s in shapes.items()}
    body = {"expression": expr, "values": values}
    if extra.get("hvp"):
        body["hvp"] = {n: b64(np.ones(s)) for n, s in shapes.items()}
    if extra.get("hessian"):
        body["hessian"] = True
    tracemalloc.start()
    start = time.perf_counter()
    try:
        resp = client.post("/v1/gradients", json=body)
        elapsed = time.perf_counter() - start
    finally:
        tracemalloc.stop()
    detail = problem(resp, 413)["detail"]
    assert f"GRADSERVE_{setting.upper()}" in detail or setting in detail, detail
    assert elapsed < 1.0


def test_default_memory_budget_is_half_a_gib() -> None:
    assert Limits().max_memory_bytes == 512 * 2**20
