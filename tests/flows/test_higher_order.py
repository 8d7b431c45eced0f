"""docs/api.md §4.1 over HTTP: tangents → jvp, hvp → hvp, hessian → hessian, exact, combinable."""

from __future__ import annotations

import numpy as np
import pytest

from tests.lecture import locs, problem

CUBE = {"expression": "sum(x ** 3)", "values": {"x": [1, 2]}}


def post(client, body, path="/v1/gradients"):
    resp = client.post(path, json=body)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def test_contract_example_exact(client):
    body = post(client, {**CUBE, "hvp": {"x": [1, 0]}})
    assert body["hvp"] == {"x": [6.0, 0.0]}
    assert body["gradients"] == {"x": [3.0, 12.0]}
    body = post(client, {**CUBE, "hessian": True})
    assert body["hessian"] == {"x": {"x": [[6.0, 0.0], [0.0, 12.0]]}}
    body = post(client, {**CUBE, "tangents": {"x": [1, 1]}})
    assert body["jvp"] == 15.0


def test_all_combined_with_check_trace_b64_and_float32(client):
    body = post(client, {**CUBE, "hvp": {"x": [1, 0]}, "hessian": True,
                         "tangents": {"x": [1, 1]}, "check": True, "trace_backward": True})
    assert body["hvp"] == {"x": [6.0, 0.0]} and body["jvp"] == 15.0
    assert body["check"]["x"]["max_rel_error"] < 1e-6
    assert body["hvp_check"]["x"]["max_rel_error"] < 1e-6
    assert [r["id"] for r in body["trace"]] == ["%1", "%2"]
    assert body["trace_backward"] and all(r["vjp_of"] for r in body["trace_backward"])
    assert [r for r in body["trace_backward"] if r.get("grad_of") == "x"][0]["value"] == \
        [3.0, 12.0]
    body = post(client, {**CUBE, "hessian": True, "dtype": "float32", "encoding": "b64"})
    h = body["hessian"]["x"]["x"]
    assert h["dtype"] == "float32" and h["shape"] == [2, 2]


def test_registered_graph_and_pairs(client):
    resp = client.post("/v1/graphs", json={"expression": "sum(x * y) + sum(exp(x))"})
    gid = resp.get_json()["graph_id"]
    x, y = np.array([0.5, -1.0]), np.array([2.0, 3.0])
    body = post(client, {"values": {"x": x.tolist(), "y": y.tolist()}, "hessian": True,
                         "hvp": {"y": [1, 1]}, "tangents": {"x": [1, 0], "y": [0, 1]}},
                path=f"/v1/graphs/{gid}/gradients")
    h = body["hessian"]
    np.testing.assert_allclose(h["x"]["x"], np.diag(np.exp(x)), rtol=1e-15)
    np.testing.assert_array_equal(h["x"]["y"], np.eye(2))
    np.testing.assert_array_equal(h["y"]["x"], np.eye(2))
    np.testing.assert_array_equal(h["y"]["y"], np.zeros((2, 2)))
    np.testing.assert_array_equal(body["hvp"]["x"], [1.0, 1.0])
    np.testing.assert_array_equal(body["hvp"]["y"], [0.0, 0.0])
    # jvp = <grad_x, t_x> + <grad_y, t_y> = (y0 + e^x0) + x1
    assert body["jvp"] == pytest.approx(y[0] + np.exp(x[0]) + x[1], rel=1e-15)


def test_non_scalar_output_needs_upstream_for_hvp_not_for_jvp(client):
    base = {"expression": "x * x", "values": {"x": [1.0, 2.0]}}
    body = post(client, {**base, "tangents": {"x": [1, 1]}, "wrt": []})
    assert body["jvp"] == [2.0, 4.0]
    resp = client.post("/v1/gradients", json={**base, "hvp": {"x": [1, 1]}})
    assert ["upstream"] in locs(problem(resp, 422))
    body = post(client, {**base, "upstream": [1, 2], "hvp": {"x": [1, 1]}, "hessian": True})
    assert body["hvp"]["x"] == [2.0, 4.0]
    assert body["hessian"]["x"]["x"] == [[2.0, 0.0], [0.0, 4.0]]


@pytest.mark.parametrize(("extra", "loc"), [
    ({"tangents": {"z": [1, 1]}}, ["tangents", "z"]),
    ({"tangents": {"x": [1, 1, 1]}}, ["tangents", "x"]),
    ({"hvp": {"x": [1]}}, ["hvp", "x"]),
    ({"hvp": {"x": [1, 0]}, "wrt": ["y"]}, ["hvp", "x"]),
    ({"hvp": {"x": "no"}}, ["hvp", "x"]),
    ({"hessian": 1}, ["hessian"]),
])
def test_bad_fields_are_422_naming_them(client, extra, loc):
    body = {"expression": "sum(x * y)", "values": {"x": [1, 2], "y": [3, 4]}, **extra}
    resp = client.post("/v1/gradients", json=body)
    assert loc in locs(problem(resp, 422)) or loc[:1] in locs(problem(resp, 422))


def test_hessian_over_the_limit_is_413_before_work(client):
    body = {"expression": "sum(x * x)", "values": {"x": {"shape": [2000], "data": [1] * 2000}},
            "hessian": True}
    resp = client.post("/v1/gradients", json=body)
    body = problem(resp, 413)
    assert "max_hessian_elements" in body["detail"].lower()
