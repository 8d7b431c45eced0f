"""API keys (docs/api.md §7, 401): every /v1 route behind the key, the operational endpoints
open, a timing-safe comparison against every configured key, and keys never in the logs.

The app is built as production builds it (``create_app(load_settings(...), store=...)``);
the Flask test client is enough here: authentication happens before any route runs.
"""

from __future__ import annotations

import hmac
import io
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from service import create_app
from service.config import load_settings
from service.store.memory import MemoryStore
from tests.conftest import StrictClient
from tests.lecture import EX3, assert_lecture, lecture_request, problem

KEYS = ("k1-0123456789abcdef", "k2-fedcba9876543210")
GOOD = lecture_request("neuron_sum", "expression")
MLP = {
    "layers": [{"weight": [[0.5, -0.25]], "bias": [0.1], "activation": "identity"}],
    "inputs": [[1.0, 2.0]],
    "loss": {"type": "mse", "targets": [[0.0]]},
}


def _app(**overrides: Any) -> Flask:
    settings = load_settings(env={}, **{"api_keys": KEYS, **overrides})
    app = create_app(settings, store=MemoryStore())
    app.test_client_class = StrictClient
    return app


@pytest.fixture
def keyed() -> FlaskClient:
    return _app().test_client()


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _register(client: FlaskClient) -> str:
    resp = client.post("/v1/graphs", json={"graph": EX3["graph"]}, headers=bearer(KEYS[0]))
    assert resp.status_code in (200, 201), resp.get_data(as_text=True)
    return resp.get_json()["graph_id"]


def v1_calls(graph_id: str) -> dict[str, tuple[str, str, Any]]:
    """One valid call per /v1 route: rule -> (method, path, json body or None)."""
    return {
        "/v1/gradients": ("POST", "/v1/gradients", GOOD),
        "/v1/graphs": ("POST", "/v1/graphs", {"expression": "x * y"}),
        "/v1/graphs/<graph_id>": ("GET", f"/v1/graphs/{graph_id}", None),
        "/v1/graphs/<graph_id>/gradients": (
            "POST", f"/v1/graphs/{graph_id}/gradients", {"values": EX3["values"]}),
        "/v1/graphs/<graph_id>/onnx": ("GET", f"/v1/graphs/{graph_id}/onnx", None),
        "/v1/ops": ("GET", "/v1/ops", None),
        "/v1/mlp/gradients": ("POST", "/v1/mlp/gradients", MLP),
        "/v1/mlp/graphs": ("POST", "/v1/mlp/graphs",
                           {"layers": [{"in_features": 2, "out_features": 1}]}),
        "/v1/graphs/<graph_id>/step": (
            "POST", f"/v1/graphs/{graph_id}/step",
            {"values": EX3["values"], "params": [next(iter(EX3["values"]))],
             "optimizer": {"type": "sgd", "lr": 0.1}}),
        "/v1/mlp/step": ("POST", "/v1/mlp/step", {**MLP, "optimizer": {"type": "adam"}}),
    }


def _call(client: FlaskClient, call: tuple[str, str, Any], headers: dict[str, str]) -> Any:
    method, path, body = call
    return client.open(path, method=method, json=body, headers=headers)


def test_the_route_table_is_complete(keyed):
    """A new /v1 route must be added to v1_calls (and so get every test below)."""
    rules = {r.rule for r in keyed.application.url_map.iter_rules()
             if r.rule.startswith("/v1")}
    assert rules == set(v1_calls("g-x"))


# --- every /v1 route: missing, wrong, right --------------------------------------------------

WRONG = [
    {},
    {"Authorization": ""},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer wrong"},
    {"Authorization": f"Basic {KEYS[0]}"},
    {"Authorization": KEYS[0]},
    {"Authorization": f"Token {KEYS[0]}"},
    {"Authorization": f"Bearer {KEYS[0]},{KEYS[1]}"},
    {"Authorization": f"Bearer {KEYS[0]}{KEYS[1]}"},
    {"Authorization": f"Bearer {KEYS[0].upper()}"},  # keys are case-sensitive
    {"X-API-Key": KEYS[0]},  # not a scheme this service takes
]


@pytest.mark.parametrize("rule", sorted(v1_calls("g-x")))
def test_every_v1_route_needs_a_key(keyed, rule):
    call = v1_calls(_register(keyed))[rule]
    for headers in WRONG:
        resp = _call(keyed, call, headers)
        body = problem(resp, 401)
        assert body["title"] == "Unauthorized"
        assert resp.headers["WWW-Authenticate"].startswith("Bearer"), headers
        text = resp.get_data(as_text=True)
        assert KEYS[0] not in text and KEYS[1] not in text


@pytest.mark.parametrize("key", KEYS)
@pytest.mark.parametrize("rule", sorted(v1_calls("g-x")))
def test_every_v1_route_with_a_right_key(keyed, rule, key):
    call = v1_calls(_register(keyed))[rule]
    resp = _call(keyed, call, bearer(key))
    assert resp.status_code in (200, 201), (rule, resp.get_data(as_text=True)[:500])
    assert "WWW-Authenticate" not in resp.headers


def test_unknown_v1_paths_need_the_key_too(keyed):
    # A 401 before routing: no probing which /v1 paths exist without a key.
    problem(keyed.get("/v1/nope"), 401)
    problem(keyed.post("/v1/graphs/g-123/gradients", json={}), 401)
    problem(keyed.get("/v1/nope", headers=bearer(KEYS[0])), 404)


def test_the_key_is_checked_before_the_body_is_read(keyed):
    problem(keyed.post("/v1/gradients", data="{bad", content_type="application/json"), 401)
    problem(keyed.post("/v1/gradients", data="{}", content_type="text/plain"), 401)
    problem(keyed.post("/v1/gradients", data="{bad", content_type="application/json",
                       headers=bearer(KEYS[0])), 400)


def test_a_right_key_gets_the_right_answer(keyed):
    resp = keyed.post("/v1/gradients", json=GOOD, headers=bearer(KEYS[1]))
    assert resp.status_code == 200
    assert_lecture(resp.get_json(), "neuron_sum")


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_scheme_is_case_insensitive(keyed, scheme):
    resp = keyed.post("/v1/gradients", json=GOOD,
                      headers={"Authorization": f"{scheme} {KEYS[0]}"})
    assert resp.status_code == 200


@pytest.mark.parametrize("cut", [1, 4, len(KEYS[0]) // 2, len(KEYS[0]) - 1])
def test_a_prefix_of_a_key_is_not_a_key(keyed, cut):
    problem(keyed.post("/v1/gradients", json=GOOD, headers=bearer(KEYS[0][:cut])), 401)


@pytest.mark.parametrize("extra", ["x", " x", "\x00", KEYS[0][-1]])
def test_a_key_with_more_after_it_is_not_a_key(keyed, extra):
    problem(keyed.post("/v1/gradients", json=GOOD,
                       headers={"Authorization": f"Bearer {KEYS[0]}{extra}"}), 401)


def test_non_ascii_and_odd_headers_are_401s_not_500s(keyed):
    for value in ["Bearer \u00e9\u00e8", "Bearer " + "a" * 8000, "Bearer\tk1", "  Bearer k1"]:
        resp = keyed.post("/v1/gradients", json=GOOD, headers={"Authorization": value})
        problem(resp, 401)


# --- the operational endpoints -----------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json"])
def test_operational_endpoints_are_open_by_default(keyed, path):
    assert keyed.get(path).status_code == 200
    assert keyed.get(path, headers=bearer("wrong")).status_code == 200


def test_metrics_behind_the_key_when_asked():
    client = _app(metrics_require_key=True).test_client()
    resp = client.get("/metrics")
    problem(resp, 401)
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    problem(client.get("/metrics", headers=bearer("wrong")), 401)
    assert client.get("/metrics", headers=bearer(KEYS[1])).status_code == 200
    # Health checks of an orchestrator carry no key: they stay open.
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


# --- keys from a file --------------------------------------------------------------------


def test_keys_from_api_keys_file(tmp_path):
    path = tmp_path / "keys"
    path.write_text("file-key-one\n\n  file-key-two  \nfile-key-3,file-key-4\n",
                    encoding="utf-8")
    client = _app(api_keys=(), api_keys_file=str(path)).test_client()
    for key in ("file-key-one", "file-key-two", "file-key-3", "file-key-4"):
        assert client.post("/v1/gradients", json=GOOD, headers=bearer(key)).status_code == 200
    problem(client.post("/v1/gradients", json=GOOD), 401)
    problem(client.post("/v1/gradients", json=GOOD, headers=bearer("file-key")), 401)
    # A blank line is not an empty key that an empty token would match.
    problem(client.post("/v1/gradients", json=GOOD, headers={"Authorization": "Bearer "}), 401)


def test_keys_from_the_file_and_the_variable_together(tmp_path):
    path = tmp_path / "keys"
    path.write_text("from-file\n", encoding="utf-8")
    client = _app(api_keys_file=str(path)).test_client()
    assert client.post("/v1/gradients", json=GOOD, headers=bearer("from-file")).status_code == 200
    assert client.post("/v1/gradients", json=GOOD, headers=bearer(KEYS[0])).status_code == 200


def test_keys_from_the_environment():
    settings = load_settings(env={"GRADSERVE_API_KEYS": f" {KEYS[0]} ,{KEYS[1]},"})
    client = create_app(settings, store=MemoryStore()).test_client()
    assert client.post("/v1/gradients", json=GOOD, headers=bearer(KEYS[1])).status_code == 200
    assert client.post("/v1/gradients", json=GOOD, headers=bearer("")).status_code == 401


# --- timing-safe comparison --------------------------------------------------------------


@pytest.fixture
def compare_calls(monkeypatch) -> list[tuple[bytes, bytes]]:
    """Every call of hmac.compare_digest while the test runs (still doing the comparison)."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def counting(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)
    return calls


@pytest.mark.parametrize("token", [KEYS[0], KEYS[1], "wrong", "", KEYS[0][:3]])
def test_every_key_is_compared_with_compare_digest(keyed, compare_calls, token):
    """The comparison is hmac.compare_digest against every configured key, whichever (if
    any) matches: the time taken says nothing about which key, or how much of one, was
    right."""
    keyed.post("/v1/gradients", json=GOOD, headers=bearer(token))
    compared = sorted(bytes(b) if isinstance(b, bytes) else b.encode() for _, b in compare_calls)
    assert compared == sorted(k.encode() for k in KEYS), compare_calls
    given = {bytes(a) if isinstance(a, bytes) else a.encode() for a, _ in compare_calls}
    assert given == {token.encode()}


# --- keys never in the logs --------------------------------------------------------------


@pytest.fixture
def captured_logs() -> Iterator[io.StringIO]:
    """Everything the access and error loggers write (they do not propagate to root)."""
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    handler.setLevel(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("gradserve.access", "gradserve.error",
                                              "gradserve", "service", "werkzeug")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield buf
    finally:
        root.removeHandler(handler)
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)


def test_keys_are_absent_from_the_logs(captured_logs):
    client = _app(log_level="debug").test_client()
    gid = _register(client)
    for call in v1_calls(gid).values():
        for headers in (bearer(KEYS[0]), bearer(KEYS[1]), bearer(KEYS[0] + "x"),
                        bearer(KEYS[0][:-1]), {"Authorization": KEYS[1]}, {}):
            _call(client, call, headers)
    # Bad requests and errors with a valid key are logged too.
    client.post("/v1/gradients", data="{bad", content_type="application/json",
                headers=bearer(KEYS[0]))
    client.post("/v1/gradients", json={"expression": "__import__('os')", "values": {}},
                headers=bearer(KEYS[0]))
    text = captured_logs.getvalue()
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) >= 6 * 6, text[-2000:]  # the access log did see the requests
    assert '"status":401' in text and '"status":200' in text
    for key in KEYS:
        for fragment in (key, key[:-1], key.upper(), key[3:]):
            assert fragment not in text, f"a key shows in the logs: {fragment!r}"
    assert "Bearer" not in text and "Authorization" not in text


# --- metrics -----------------------------------------------------------------------------


def _auth_failures(client: FlaskClient) -> float:
    text = client.get("/metrics", headers=bearer(KEYS[0])).get_data(as_text=True)
    total = 0.0
    for line in text.splitlines():
        if line.startswith("gradserve_auth_failures_total"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_401s_are_counted(keyed):
    before = _auth_failures(keyed)
    for headers in WRONG[:5]:
        problem(keyed.post("/v1/gradients", json=GOOD, headers=headers), 401)
    problem(keyed.get("/v1/ops"), 401)
    # Successful requests and open endpoints do not count.
    assert keyed.post("/v1/gradients", json=GOOD, headers=bearer(KEYS[0])).status_code == 200
    keyed.get("/healthz")
    assert _auth_failures(keyed) - before == 6


def test_401s_on_metrics_are_counted():
    client = _app(metrics_require_key=True).test_client()
    before = _auth_failures(client)
    problem(client.get("/metrics"), 401)
    problem(client.get("/metrics", headers=bearer("nope")), 401)
    assert _auth_failures(client) - before == 2
