"""GRADSERVE_MAX_INFLIGHT: past it, a /v1 request is refused at once (503 + Retry-After)
rather than queued; operational routes are never refused."""

from __future__ import annotations

import threading

from flask import request

from service import metrics

# A gradient check perturbs 60 * 60 + 60 elements, two forward passes each: ~0.1 s.
SLOW = {"expression": "sum(tanh(W @ x))", "check": True,
        "values": {"W": [[0.01] * 60] * 60, "x": [0.2] * 60}}


def test_saturated_worker_answers_503_at_once(make_app):
    app = make_app(max_inflight=1, threads=4)
    started, results = threading.Event(), {}

    @app.before_request  # runs after the app's own hook: the slot is taken by then
    def _signal():
        if request.headers.get("X-Slow"):
            started.set()

    def slow():
        results["slow"] = app.test_client().post("/v1/gradients", json=SLOW,
                                                 headers={"X-Slow": "1"}).status_code

    before = metrics.REJECTED._value.get()
    t = threading.Thread(target=slow)
    t.start()
    assert started.wait(5)
    rejected = None
    while t.is_alive() and rejected is None:
        resp = app.test_client().post("/v1/gradients", json={"expression": "x * 2",
                                                              "values": {"x": 1}})
        if resp.status_code == 503:
            rejected = resp
    assert app.test_client().get("/healthz").status_code == 200
    t.join()
    assert results["slow"] == 200
    assert rejected is not None, "the slow request finished before a second one was refused"
    assert rejected.content_type == "application/problem+json"
    assert rejected.headers["Retry-After"] and "GRADSERVE_MAX_INFLIGHT" in rejected.json["detail"]
    assert metrics.REJECTED._value.get() > before
    # Once the slot is free again, requests are served.
    ok = app.test_client().post("/v1/gradients", json={"expression": "x * 2",
                                                       "values": {"x": 1}})
    assert ok.status_code == 200 and ok.json["output"] == 2.0
