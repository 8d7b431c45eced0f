"""Adversarial option combinations against the response-size estimate (bounded fuzzing).

For every generated request (graphs of one to three inputs, shapes up to 5 x 4, ``wrt`` with
up to 3,000 repeats, any mix of jacobian / hessian / hvp / tangents / trace / check / loss,
both encodings and dtypes), sent through the real app:

- the estimate's CPU time (``time.thread_time``, so other processes on the machine do not
  count; the garbage collector held off meanwhile) is under 50 ms, whatever ``wrt``
  repeats;
- for every answered request, the answer's bytes are at most the estimate (the estimate is
  an upper bound: no slack that way), and the estimate is at most 8 x the answer + 64 KiB
  (every JSON number is counted at its longest, 25 bytes, and every tensor with room for a
  warning: the slack stated, so that an estimate claiming 11 TB for 11 MB fails).

``trace_backward`` is generated for the timing only: its records are counted exactly, after
the engine built them (``check_backward_trace``), not by the estimate.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.flows.gradients import GradientsFlow

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
ESTIMATE_CPU_S = 0.050
SLACK_FACTOR, SLACK_BYTES = 8, 64 << 10

#: (expression, input names, output is a scalar, how the shapes relate)
GRAPHS = [
    ("sum(x*y)", ("x", "y"), True, "same"),
    ("x*y + x", ("x", "y"), False, "same"),
    ("sum(tanh(W @ x))", ("W", "x"), True, "matvec"),
    ("W @ x", ("W", "x"), False, "matvec"),
    ("sum(x*x*x) + sum(y) * z", ("x", "y", "z"), True, "same+scalar"),
]


def _shapes(kind: str, m: int, n: int) -> dict[str, tuple[int, ...]]:
    if kind == "matvec":
        return {"W": (m, n), "x": (n,)}
    if kind == "same+scalar":
        return {"x": (m, n), "y": (m, n), "z": ()}
    return {"x": (m, n), "y": (m, n)}


@st.composite
def requests(draw: Any) -> dict[str, Any]:
    expr, names, scalar, kind = draw(st.sampled_from(GRAPHS))
    m, n = draw(st.integers(1, 5)), draw(st.integers(1, 4))
    shapes = _shapes(kind, m, n)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    body: dict[str, Any] = {"expression": expr, "values": {
        k: rng.standard_normal(s).round(draw(st.sampled_from([1, 17]))).tolist()
        for k, s in shapes.items()}}
    repeats = draw(st.sampled_from([1, 2, 50, 3000]))
    if draw(st.booleans()):
        subset = draw(st.lists(st.sampled_from(names), min_size=0, max_size=3))
        body["wrt"] = subset * repeats
    for flag in ("jacobian", "hessian", "trace", "check", "trace_backward"):
        if draw(st.integers(0, 3)) == 0:
            body[flag] = True
    wrt = list(dict.fromkeys(body.get("wrt", names)))
    if draw(st.integers(0, 3)) == 0 and wrt:
        body["hvp"] = {k: np.ones(shapes[k]).tolist() for k in wrt[:draw(st.integers(1, 3))]}
    if draw(st.integers(0, 3)) == 0:
        body["tangents"] = {k: np.ones(shapes[k]).tolist() for k in names[:2]}
    if not scalar:
        out = (m,) if kind == "matvec" else (m, n)
        if draw(st.booleans()):
            body["upstream"] = np.full(out, 0.5).tolist()
        elif draw(st.booleans()):
            body["loss"] = {"type": "mse", "targets": np.zeros(out).tolist()}
    body["encoding"] = draw(st.sampled_from(["json", "b64"]))
    body["dtype"] = draw(st.sampled_from(["float64", "float32"]))
    return body


@pytest.fixture(scope="module")
def fuzz_app():
    from tests.conftest import build_app

    return build_app()


@FUZZ
@given(requests())
def test_estimates_are_fast_and_bound_every_answer(fuzz_app, monkeypatch, body):
    seen: dict[str, float] = {}
    real = GradientsFlow.estimate

    def timed(self, *args: Any, **kwargs: Any) -> None:
        gc.disable()  # a collection of the fuzzer's garbage is not the estimate's work
        start = time.thread_time()
        try:
            real(self, *args, **kwargs)
        finally:
            seen["cpu"] = time.thread_time() - start
            seen["estimate"] = self.estimated
            gc.enable()

    monkeypatch.setattr(GradientsFlow, "estimate", timed)
    resp = fuzz_app.test_client().post("/v1/gradients", json=body)
    assert resp.status_code < 500 or resp.status_code == 503, resp.get_data(as_text=True)
    if "cpu" in seen:
        assert seen["cpu"] < ESTIMATE_CPU_S, (seen, sorted(body))
    if resp.status_code != 200 or body.get("trace_backward"):
        return
    actual = len(resp.data)
    assert actual <= seen["estimate"], (actual, seen, sorted(body))
    assert seen["estimate"] <= SLACK_FACTOR * actual + SLACK_BYTES, (actual, seen, sorted(body))


def test_repeated_wrt_is_estimated_as_the_engine_answers_it(client):
    """``"wrt": ["x"] * 1000`` on x[1024] with the Hessian in b64: the estimate is the real
    11 MB answer, not 11 TB; ``["x"] * 3000`` on x[2] is answered at once."""
    estimates: list[int] = []
    real = GradientsFlow.estimate

    def record(self, *args: Any) -> None:
        real(self, *args)
        estimates.append(self.estimated)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(GradientsFlow, "estimate", record)
        resp = client.post("/v1/gradients", json={
            "expression": "sum(x*x)", "values": {"x": {"shape": [1024], "data": [0.5] * 1024}},
            "wrt": ["x"] * 1000, "hessian": True, "encoding": "b64"})
        assert resp.status_code == 200, resp.get_json()
        assert len(resp.data) <= estimates[-1] <= len(resp.data) + SLACK_BYTES
        start = time.thread_time()
        resp = client.post("/v1/gradients", json={
            "expression": "sum(x*x*x)", "values": {"x": [1.0, 2.0]}, "wrt": ["x"] * 3000,
            "hessian": True})
        assert resp.status_code == 200
        assert resp.get_json()["hessian"] == {"x": {"x": [[6.0, 0.0], [0.0, 12.0]]}}
        assert time.thread_time() - start < 1.0  # was 12 s of CPU: quadratic in len(wrt)
