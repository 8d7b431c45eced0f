"""GRADSERVE_MAX_INFLIGHT: past it, a /v1 request waits at most GRADSERVE_ADMISSION_WAIT_S
for a slot, then is refused (503 + Retry-After); operational routes are never refused."""

from __future__ import annotations

import threading

from flask import request

from service.runtime import metrics

# A gradient check perturbs 60 * 60 + 60 elements, two forward passes each: ~0.1 s.
SLOW = {"expression": "sum(tanh(W @ x))", "check": True,
        "values": {"W": [[0.01] * 60] * 60, "x": [0.2] * 60}}


def test_saturated_worker_answers_503_after_the_bounded_wait(make_app):
    app = make_app(max_inflight=1, threads=4, admission_wait_s=0.01)
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
    assert "GRADSERVE_ADMISSION_WAIT_S" in rejected.json["detail"]
    assert metrics.REJECTED._value.get() > before
    # Once the slot is free again, requests are served.
    ok = app.test_client().post("/v1/gradients", json={"expression": "x * 2",
                                                       "values": {"x": 1}})
    assert ok.status_code == 200 and ok.json["output"] == 2.0


def test_a_request_waits_for_a_slot_within_the_bounded_wait(make_app):
    """With a wait longer than the slow request, the second one is served, not refused."""
    app = make_app(max_inflight=1, threads=4, admission_wait_s=20)
    started, results = threading.Event(), {}

    @app.before_request
    def _signal():
        if request.headers.get("X-Slow"):
            started.set()

    def slow():
        results["slow"] = app.test_client().post("/v1/gradients", json=SLOW,
                                                 headers={"X-Slow": "1"}).status_code

    t = threading.Thread(target=slow)
    t.start()
    assert started.wait(5)
    resp = app.test_client().post("/v1/gradients", json={"expression": "x * 2",
                                                         "values": {"x": 1}})
    t.join()
    assert results["slow"] == 200
    assert resp.status_code == 200 and resp.json["output"] == 2.0


def test_the_wait_never_runs_past_the_request_deadline(make_app):
    import time

    app = make_app(max_inflight=1, threads=4, admission_wait_s=30, request_deadline_s=0.3)
    started, release = threading.Event(), threading.Event()

    @app.before_request
    def _hold():
        if request.headers.get("X-Slow"):
            started.set()
            release.wait(10)

    t = threading.Thread(target=lambda: app.test_client().post(
        "/v1/gradients", json={"expression": "x", "values": {"x": 1}}, headers={"X-Slow": "1"}))
    t.start()
    assert started.wait(5)
    t0 = time.monotonic()
    resp = app.test_client().post("/v1/gradients", json={"expression": "x", "values": {"x": 1}})
    elapsed = time.monotonic() - t0
    release.set()
    t.join()
    assert resp.status_code == 503 and resp.headers["Retry-After"]
    assert elapsed < 2.0


class _Recording:
    """A semaphore stand-in that records every acquire (and never grants one)."""

    def __init__(self) -> None:
        self.calls = 0

    def acquire(self, *args: object, **kwargs: object) -> bool:
        self.calls += 1
        return False

    def release(self) -> None:  # pragma: no cover - nothing is ever acquired
        raise AssertionError("released a slot never granted")


def test_health_never_waits_for_a_compute_slot_nor_parses_a_body(make_app, monkeypatch):
    """The mechanism behind "health is fast under load", with no clock in it: /healthz
    neither asks for a compute slot nor parses what it is sent, so no flood of compute and
    no hostile body can queue it (the latency under load is bench/overload.py's)."""
    from service.http import body

    app = make_app(max_inflight=1, admission_wait_s=5.0)
    st = app.extensions["gradserve"]
    slots = _Recording()
    st.inflight = slots

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("a body was parsed")

    monkeypatch.setattr(body, "parse_json", never)
    monkeypatch.setattr(body, "validate", never)
    client = app.test_client()
    for data in (None, b"{not json" * 10_000, b"[" * 100_000):
        resp = client.get("/healthz", data=data, content_type="application/json")
        assert resp.status_code == 200 and resp.get_data(as_text=True).strip() == "ok"
    assert slots.calls == 0
    # The same app's compute route does ask (and, given no slot, refuses): the stand-in
    # is in the path health does not take.
    monkeypatch.undo()
    resp = client.post("/v1/gradients", json={"expression": "x * 2", "values": {"x": 1}})
    assert resp.status_code == 503 and slots.calls == 1
