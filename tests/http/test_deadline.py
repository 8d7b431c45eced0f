"""GRADSERVE_REQUEST_DEADLINE_S: a request past its budget is a 503 problem+json
(docs/api.md §7 allows no other 5xx)."""

from __future__ import annotations

from service.engine.limits import Deadline
from service.errors import DeadlineExceeded
from service.runtime import metrics

JACOBIAN = {"expression": "tanh(W @ x)", "jacobian": True,
            "values": {"W": [[0.1] * 60] * 60, "x": [0.2] * 60}}


def test_a_request_past_its_deadline_is_a_503(make_app):
    client = make_app(request_deadline_s=1e-9).test_client()
    before = metrics.DEADLINES._value.get()
    resp = client.post("/v1/gradients", json=JACOBIAN)
    assert resp.status_code == 503
    assert resp.content_type == "application/problem+json"
    assert "GRADSERVE_REQUEST_DEADLINE_S" in resp.json["detail"]
    assert resp.headers["Retry-After"]
    assert metrics.DEADLINES._value.get() == before + 1
    # The worker is fine afterwards.
    ok = make_app().test_client().post("/v1/gradients", json=JACOBIAN)
    assert ok.status_code == 200 and len(ok.json["jacobians"]["W"]) == 60


def test_mlp_requests_have_the_deadline_too(make_app):
    client = make_app(request_deadline_s=1e-9).test_client()
    resp = client.post("/v1/mlp/gradients", json={
        "layers": [{"weight": [[1.0, 2.0]], "bias": [0.0]}], "inputs": [[1.0, 1.0]],
        "upstream": [[1.0]]})
    assert resp.status_code == 503


def test_deadline_checks_the_clock():
    Deadline.after(60).check()
    try:
        Deadline.after(-1).check()
    except DeadlineExceeded as exc:
        assert exc.status == 503
    else:
        raise AssertionError("an expired deadline did not raise")
