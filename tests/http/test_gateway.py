"""The gateway (service/http/gateway.py) serves the two gradient routes without Flask's request
machinery. It must answer exactly what the Flask views answer: the same status, headers and
body bytes, the same access line and metrics, for good requests and for every kind of bad
one. Each case runs on two apps with the same settings: one as built (through the gateway)
and one with ``GRADSERVE_GATEWAY=false`` (Flask's own dispatch: the views and hooks)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service.flows import driver
from service.http.gateway import Gateway
from service.runtime import metrics
from tests.lecture import EX1, EX2, EX3, PROBLEM

SIGMOID = {"expression": EX2["expression"], "values": EX2["values"]}
SPEC = {"graph": EX2["graph"], "values": EX2["values"]}
MATMUL = {"expression": EX3["expression"], "values": EX3["values"]}
KEY = "k-gateway-test"
RID = "client-request-7"


def _with(base: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {**base, **extra}


# (name, path, body as JSON or raw bytes, headers). "{id}" stands for EX2's graph id.
CASES: list[tuple[str, str, Any, dict[str, str]]] = [
    ("expression", "/v1/gradients", SIGMOID, {}),
    ("expression again (a hit)", "/v1/gradients", SIGMOID, {}),
    ("graph spec", "/v1/gradients", SPEC, {}),
    ("lecture (x+y)*z", "/v1/gradients", {"expression": EX1["expression"],
                                          "values": EX1["values"]}, {}),
    ("tensors", "/v1/gradients", MATMUL, {}),
    ("by id", "/v1/graphs/{id}/gradients", {"values": EX2["values"]}, {}),
    ("wrt", "/v1/gradients", _with(SIGMOID, wrt=["x0", "w2"]), {}),
    ("float32 b64", "/v1/gradients", _with(MATMUL, dtype="float32", encoding="b64"), {}),
    ("trace", "/v1/gradients", _with(SIGMOID, trace=True), {}),
    ("jacobian", "/v1/gradients", _with(MATMUL, jacobian=True), {}),
    ("check", "/v1/gradients", _with(MATMUL, check=True), {}),
    ("hessian", "/v1/gradients", _with(SIGMOID, hessian=True, wrt=["w0", "x0"]), {}),
    ("client request id", "/v1/gradients", SIGMOID, {"X-Request-ID": RID}),
    ("bad request id", "/v1/gradients", SIGMOID, {"X-Request-ID": "no spaces allowed"}),
    ("charset", "/v1/gradients", SIGMOID, {"Content-Type": "application/json; charset=utf-8"}),
    ("+json", "/v1/gradients", SIGMOID, {"Content-Type": "application/vnd.x+json"}),
    # bad input
    ("not JSON", "/v1/gradients", b'{"expression": ', {}),
    ("not an object", "/v1/gradients", [1, 2], {}),
    ("NaN", "/v1/gradients", b'{"expression": "x", "values": {"x": NaN}}', {}),
    ("1e999", "/v1/gradients", b'{"expression": "x", "values": {"x": 1e999}}', {}),
    ("text/plain", "/v1/gradients", SIGMOID, {"Content-Type": "text/plain"}),
    ("no content type", "/v1/gradients", SIGMOID, {"Content-Type": ""}),
    ("unknown field", "/v1/gradients", _with(SIGMOID, expresion="x"), {}),
    ("both forms", "/v1/gradients", _with(SPEC, expression="x"), {}),
    ("syntax error", "/v1/gradients", {"expression": "1 / (1 + exp(", "values": {}}, {}),
    ("unknown op", "/v1/gradients", {"expression": "frob(x)", "values": {"x": 1}}, {}),
    ("missing value", "/v1/gradients", {"expression": "x * y", "values": {"x": 1}}, {}),
    ("unknown value", "/v1/gradients", _with(SIGMOID, values={**EX2["values"], "q": 1}), {}),
    ("ragged", "/v1/gradients", {"expression": "sum(x)", "values": {"x": [[1], [1, 2]]}}, {}),
    ("shape mismatch", "/v1/gradients", {"expression": "sum(W @ x)",
                                         "values": {"W": [[1, 2]], "x": [1, 2, 3]}}, {}),
    ("bad wrt", "/v1/gradients", _with(SIGMOID, wrt=["nope"]), {}),
    ("graph error", "/v1/gradients", {"graph": {"inputs": {"x": {}}, "nodes": [
        {"id": "f", "op": "mul", "args": ["x", "y"]}], "output": "f"}, "values": {"x": 1}}, {}),
    ("too many nodes", "/v1/gradients", {"graph": {"inputs": {"x": {}}, "nodes": [
        {"id": f"n{i}", "op": "neg", "args": [f"n{i - 1}" if i else "x"]} for i in range(40)],
        "output": "n39"}, "values": {"x": 1}}, {}),
    ("too many nodes, unknown field", "/v1/gradients", {"graph": {"inputs": {"x": {}}, "nodes": [
        {"id": f"n{i}", "op": "neg", "args": [f"n{i - 1}" if i else "x"]} for i in range(40)],
        "output": "n39"}, "values": {"x": 1}, "bogus": 1}, {}),
    ("tensor over the limit", "/v1/gradients", {"expression": "sum(x)",
                                                "values": {"x": [0.5] * 300}}, {}),
    ("body over the limit", "/v1/gradients", {"expression": "x", "values": {"x": 1},
                                              "pad": "p" * 5000}, {}),
    ("unknown graph id", "/v1/graphs/g-" + "0" * 64 + "/gradients", {"values": {"x": 1}}, {}),
    ("by id, graph field", "/v1/graphs/{id}/gradients", SPEC, {}),
    ("by id, bad values", "/v1/graphs/{id}/gradients", {"values": {"w0": "a"}}, {}),
    # not the gateway's: the same answer, by Flask, either way
    ("malformed id", "/v1/graphs/g-xyz/gradients", {"values": {}}, {}),
    ("trailing slash", "/v1/gradients/", SIGMOID, {}),
    ("mlp", "/v1/mlp/gradients", {"values": {}}, {}),
]

def _app(make_app: Callable[..., Flask], gateway: bool, **overrides: Any) -> Flask:
    from service.engine.limits import Limits

    app = make_app(max_body_bytes=4096, limits=Limits(max_nodes=32, max_tensor_elements=256),
                   gateway=gateway, **overrides)
    assert isinstance(app.wsgi_app, Gateway) is gateway  # GRADSERVE_GATEWAY=false: Flask's
    app.test_client_class = FlaskClient  # a 500 is compared too, not refused
    return app


def _send(client: FlaskClient, path: str, body: Any, headers: dict[str, str],
          graph_id: str, method: str = "POST") -> Any:
    headers = dict(headers)
    ctype = headers.pop("Content-Type", "application/json")
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    kwargs: dict[str, Any] = {"data": data, "headers": headers}
    if ctype:
        kwargs["content_type"] = ctype
    return client.open(path.replace("{id}", graph_id), method=method, **kwargs)


def _counters() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the error and cache counters (the test process's registry)."""
    metrics.TALLY.flush()
    out = {}
    for metric in (metrics.LIMITS, metrics.DEADLINES, metrics.AUTH_FAILURES, metrics.REJECTED,
                   metrics.CACHE):
        for family in metric.collect():
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _delta(before: dict[Any, float], after: dict[Any, float]) -> dict[Any, float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v != before.get(k, 0.0)}


def _answer(resp: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    headers = [(k, v) for k, v in resp.headers.to_wsgi_list() if k != "X-Request-ID"]
    return resp.status_code, headers, resp.get_data()


@pytest.fixture
def pair(make_app: Callable[..., Flask]) -> dict[str, Any]:
    apps = {"gateway": _app(make_app, True), "flask": _app(make_app, False)}
    ids = set()
    for app in apps.values():
        resp = app.test_client().post("/v1/graphs", json={"graph": EX2["graph"]})
        assert resp.status_code == 201
        ids.add(resp.json["graph_id"])
    (graph_id,) = ids
    return {"apps": apps, "graph_id": graph_id}


def test_the_gateway_answers_what_flask_answers(pair: dict[str, Any],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    served = []
    real_serve = Gateway.serve

    def counting(self: Gateway, *args: Any) -> Any:
        served.append(args[2])  # the path
        return real_serve(self, *args)

    monkeypatch.setattr(Gateway, "serve", counting)
    gw, fl = pair["apps"]["gateway"].test_client(), pair["apps"]["flask"].test_client()
    statuses = set()
    for name, path, body, headers in CASES:
        c0 = _counters()
        a = _send(gw, path, body, headers, pair["graph_id"])
        c1 = _counters()
        b = _send(fl, path, body, headers, pair["graph_id"])
        assert _answer(a) == _answer(b), name
        assert _delta(c0, c1) == _delta(c1, _counters()), name  # the same counters moved
        statuses.add(a.status_code)
        if a.status_code >= 400:
            assert a.content_type == PROBLEM, name
        if "X-Request-ID" in headers and " " not in headers["X-Request-ID"]:
            assert a.headers["X-Request-ID"] == b.headers["X-Request-ID"] == RID
        else:
            assert len(a.headers["X-Request-ID"]) == 32 and a.headers["X-Request-ID"] != \
                b.headers["X-Request-ID"]
    # The table reaches every kind of answer, and the gateway served exactly its routes.
    assert {200, 400, 404, 413, 415, 422} <= statuses
    gateway_cases = [c for c in CASES if c[0] not in ("malformed id", "trailing slash", "mlp")]
    assert len(served) == len(gateway_cases)
    assert not any(p.endswith("/") or "xyz" in p or "mlp" in p for p in served)


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_go_to_flask(pair: dict[str, Any], method: str) -> None:
    gw, fl = pair["apps"]["gateway"].test_client(), pair["apps"]["flask"].test_client()
    a = _send(gw, "/v1/gradients", SIGMOID, {}, pair["graph_id"], method=method)
    b = _send(fl, "/v1/gradients", SIGMOID, {}, pair["graph_id"], method=method)
    assert a.status_code == 405 and _answer(a) == _answer(b)


def test_api_keys_on_the_gateway(make_app: Callable[..., Flask]) -> None:
    answers = []
    for gateway in (True, False):
        client = _app(make_app, gateway, api_keys=(KEY, "other")).test_client()
        row = []
        for auth in (None, "Bearer wrong", f"Basic {KEY}", f"Bearer {KEY}", f"bearer  {KEY} "):
            headers = {"Authorization": auth} if auth else {}
            row.append(_answer(_send(client, "/v1/gradients", SIGMOID, headers, "")))
        answers.append(row)
    assert answers[0] == answers[1]
    assert [a[0] for a in answers[0]] == [401, 401, 401, 200, 200]
    assert ("WWW-Authenticate", 'Bearer realm="gradserve"') in answers[0][0][1]


def test_a_saturated_worker_answers_503_on_the_gateway(make_app: Callable[..., Flask]) -> None:
    app = _app(make_app, True, max_inflight=1, admission_wait_s=0.01)
    st = app.extensions["gradserve"]
    before = metrics.REJECTED._value.get()
    assert st.inflight.acquire(timeout=1)  # a slow request holds the only slot
    try:
        resp = app.test_client().post("/v1/gradients", json=SIGMOID)
    finally:
        st.inflight.release()
    assert resp.status_code == 503 and resp.content_type == PROBLEM
    assert resp.headers["Retry-After"] and "GRADSERVE_MAX_INFLIGHT" in resp.json["detail"]
    assert metrics.REJECTED._value.get() == before + 1
    # The slot it never took is not given back twice; the next request is served.
    assert app.test_client().post("/v1/gradients", json=SIGMOID).status_code == 200
    assert st.inflight.acquire(timeout=0.1)
    st.inflight.release()


def test_an_unexpected_error_is_a_logged_500_and_the_next_request_is_served(
        make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    app = _app(make_app, True)
    real = driver.execute
    monkeypatch.setattr(driver, "execute",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with caplog.at_level(logging.ERROR, logger="gradserve.error"):
        resp = app.test_client().post("/v1/gradients", json=SIGMOID,
                                      headers={"X-Request-ID": RID})
    assert resp.status_code == 500 and resp.content_type == PROBLEM
    assert resp.json["detail"] == f"internal error; request id {RID}"
    assert "boom" not in resp.get_data(as_text=True)
    assert any(RID in r.getMessage() and r.exc_info for r in caplog.records)
    monkeypatch.setattr(driver, "execute", real)
    st = app.extensions["gradserve"]
    assert st.inflight.acquire(timeout=0.1)  # the slot came back
    st.inflight.release()
    assert app.test_client().post("/v1/gradients", json=SIGMOID).status_code == 200


def _access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [json.loads(r.getMessage()) for r in caplog.records
            if r.name == "gradserve.access"]


def _request_counts() -> dict[tuple[str, ...], float]:
    """Every (route, method, status) count of the requests metric, as it stands."""
    return {(smp.labels["route"], smp.labels["method"], smp.labels["status"]): smp.value
            for m in metrics.REQUESTS.collect() for smp in m.samples
            if smp.name.endswith("_total")}


@pytest.mark.parametrize("path,body", [
    ("/v1/gradients", SIGMOID),
    ("/v1/graphs/{id}/gradients", {"values": EX2["values"]}),
    ("/v1/gradients", {"expression": "x +"}),
])
def test_access_line_and_metrics_are_the_same(pair: dict[str, Any], path: str, body: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    lines, counts = [], []
    for which in ("gateway", "flask"):
        client = pair["apps"][which].test_client()
        metrics.TALLY.flush()
        # Read before the request: the tally may flush by itself while it is served (its
        # flush is also time-driven), so a count read after it could already include it.
        before = _request_counts()
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="gradserve.access"):
            resp = _send(client, path, body, {"X-Request-ID": RID}, pair["graph_id"])
        (line,) = _access_lines(caplog)
        metrics.TALLY.flush()
        after = _request_counts()
        key = (line["route"], "POST", str(resp.status_code))
        counts.append(after.get(key, 0) - before.get(key, 0))
        assert sum(after.values()) - sum(before.values()) == counts[-1]  # nothing else
        for volatile in ("ts", "latency_ms"):
            assert isinstance(line.pop(volatile), float)
        lines.append(line)
    assert lines[0] == lines[1]
    assert lines[0]["request_id"] == RID and lines[0]["path"] == path.replace(
        "{id}", pair["graph_id"])
    assert counts == [1, 1]


def test_the_setting_reads_from_the_environment() -> None:
    from service.config import load_settings

    assert load_settings(env={}).gateway is True
    assert load_settings(env={"GRADSERVE_GATEWAY": "false"}).gateway is False


def test_a_hook_added_later_sees_every_request(make_app: Callable[..., Flask]) -> None:
    """An extension's before_request hook must not be skipped: the gateway steps aside, even
    after it served requests itself (Flask, having seen none, still accepts new hooks)."""
    app = _app(make_app, True)
    assert app.test_client().post("/v1/gradients", json=SIGMOID).status_code == 200
    seen = []
    app.before_request(lambda: seen.append(1))
    assert app.test_client().post("/v1/gradients", json=SIGMOID).status_code == 200
    assert seen == [1]
