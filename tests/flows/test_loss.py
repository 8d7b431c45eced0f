"""``loss`` on a gradient request: the objective is a loss of the output. The oracle is the
same graph with the loss written into it by hand (an input for the targets and one more
node), which the engine already answers exactly; and, for the values, NumPy formulas."""

from __future__ import annotations

import numpy as np
import pytest

from tests.lecture import problem

RNG = np.random.default_rng(7)
X = RNG.standard_normal((5, 3))
W = RNG.standard_normal((3, 4))
LABELS = [0, 3, 1, 1, 2]
MSE_T = RNG.standard_normal((5, 4))


def _post(client, body):
    resp = client.post("/v1/gradients", json=body)
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


CASES = [
    ("softmax_cross_entropy", LABELS),
    ("hinge", LABELS),
    ("mse", MSE_T.tolist()),
]


@pytest.mark.parametrize("kind,targets", CASES)
@pytest.mark.parametrize("form", ["expression", "graph"])
@pytest.mark.parametrize("options", [{}, {"dtype": "float32"}, {"wrt": ["W"]},
                                     {"hvp": {"W": (0.1 * W).tolist()}}, {"check": True},
                                     {"trace": True}, {"hessian": True, "wrt": ["x"]}])
def test_loss_equals_the_loss_written_into_the_graph(client, kind, targets, form, options):
    values = {"x": X.tolist(), "W": W.tolist()}
    if form == "expression":
        body = {"expression": "tanh(x @ W)", "values": values}
        by_hand = {"expression": f"{kind}(tanh(x @ W), t)", "values": {**values, "t": targets}}
    else:
        nodes = [{"id": "h", "op": "matmul", "args": ["x", "W"]},
                 {"id": "out", "op": "tanh", "args": ["h"]}]
        body = {"graph": {"inputs": {"x": {}, "W": {}}, "nodes": nodes, "output": "out"},
                "values": values}
        by_hand = {"graph": {"inputs": {"x": {}, "W": {}, "t": {}},
                             "nodes": [*nodes, {"id": "l", "op": kind, "args": ["out", "t"]}],
                             "output": "l"},
                   "values": {**values, "t": targets}}
    wrt = options.get("wrt", ["W", "x"])
    got = _post(client, {**body, **options, "loss": {"type": kind, "targets": targets}})
    want = _post(client, {**by_hand, **options, "wrt": wrt})
    plain = _post(client, {**body, "wrt": [], "dtype": options.get("dtype", "float64")})
    # The graph, its id and its output are the request's own; the loss is the objective.
    assert got["graph_id"] == plain["graph_id"]
    np.testing.assert_allclose(got["output"], plain["output"], rtol=1e-6)
    rtol = 1e-5 if options.get("dtype") == "float32" else 1e-12
    np.testing.assert_allclose(got["loss"], want["output"], rtol=rtol)
    assert set(got["gradients"]) == set(want["gradients"]) == set(wrt)
    for name in wrt:
        np.testing.assert_allclose(got["gradients"][name], want["gradients"][name], rtol=rtol,
                                   atol=1e-14)
    for field in ("hvp", "hessian"):
        if field in options:
            assert got[field].keys() == want[field].keys()
    if "hvp" in options:
        for name in wrt:
            np.testing.assert_allclose(got["hvp"][name], want["hvp"][name], rtol=1e-10,
                                       atol=1e-14)
    if "hessian" in options:
        np.testing.assert_allclose(got["hessian"]["x"]["x"], want["hessian"]["x"]["x"],
                                   rtol=1e-10, atol=1e-14)
    if options.get("check"):
        for name in wrt:
            assert got["check"][name]["max_rel_error"] < 1e-6
    if options.get("trace"):
        assert [r["op"] for r in got["trace"]][-1] == kind


def test_the_loss_values_are_the_textbook_ones(client):
    scores = X @ W
    shifted = scores - scores.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    ce = -logp[np.arange(5), LABELS].mean()
    got = _post(client, {"expression": "x @ W", "values": {"x": X.tolist(), "W": W.tolist()},
                         "loss": {"type": "softmax_cross_entropy", "targets": LABELS}})
    np.testing.assert_allclose(got["loss"], ce, rtol=1e-13)
    # dL/dscores = (softmax - onehot) / batch, and dW = xᵀ · dscores.
    d = np.exp(logp)
    d[np.arange(5), LABELS] -= 1
    np.testing.assert_allclose(got["gradients"]["W"], X.T @ (d / 5), rtol=1e-12)
    got = _post(client, {"expression": "x @ W", "values": {"x": X.tolist(), "W": W.tolist()},
                         "loss": {"type": "mse", "targets": MSE_T.tolist()}})
    np.testing.assert_allclose(got["loss"], np.mean((scores - MSE_T) ** 2), rtol=1e-13)


def test_a_registered_graph_takes_a_loss(client):
    gid = client.post("/v1/graphs", json={"expression": "x @ W"}).get_json()["graph_id"]
    body = {"values": {"x": X.tolist(), "W": W.tolist()},
            "loss": {"type": "hinge", "targets": LABELS}}
    first = client.post(f"/v1/graphs/{gid}/gradients", json=body).get_json()
    again = client.post(f"/v1/graphs/{gid}/gradients", json=body).get_json()
    assert first["graph_id"] == gid and again == first and first["cache"] == "hit"
    assert first["loss"] > 0


@pytest.mark.parametrize("loss,extra,where,words", [
    ({"type": "softmax_cross_entropy", "targets": [0, 1, 4, 1, 2]}, {}, ["loss", "targets"],
     "[0, 4)"),
    ({"type": "softmax_cross_entropy", "targets": [0, 1, 0.5, 1, 2]}, {}, ["loss", "targets"],
     "integers"),
    ({"type": "softmax_cross_entropy", "targets": [0, 1, 2]}, {}, ["loss", "targets"], "(3,)"),
    ({"type": "mse", "targets": [[1.0, 2.0]]}, {}, ["loss", "targets"], "same shape"),
    ({"type": "hinge", "targets": LABELS}, {"upstream": np.ones((5, 4)).tolist()},
     ["upstream"], "not both"),
    ({"type": "mse", "targets": MSE_T.tolist()}, {"jacobian": True}, ["jacobian"], "jacobian"),
    ({"type": "mse", "targets": MSE_T.tolist()}, {"wrt": ["t"]}, ["wrt", 0], "not an input"),
    ({"type": "mse", "targets": MSE_T.tolist()}, {"values": {"x": X.tolist(), "W": W.tolist(),
                                                             "zz": 1.0}},
     ["values", "zz"], "(inputs: W, x)"),
    ({"type": "mse", "targets": MSE_T.tolist()}, {"tangents": {"q": 1.0}}, ["tangents", "q"],
     "(inputs: W, x)"),
    ({"type": "mse", "targets": MSE_T.tolist()}, {"values": {"x": X.tolist(), "W": W.tolist(),
                                                             "%loss.targets": 1.0}},
     ["values", "%loss.targets"], "not an input of the graph (inputs: W, x)"),
    ({"type": "l1", "targets": LABELS}, {}, ["loss", "type"], "softmax_cross_entropy"),
])
def test_bad_loss_is_a_422_naming_the_field(client, loss, extra, where, words):
    body = {"expression": "x @ W", "values": {"x": X.tolist(), "W": W.tolist()}, "loss": loss,
            **extra}
    doc = problem(client.post("/v1/gradients", json=body), 422)
    assert doc["errors"][0]["loc"][:len(where)] == where, doc
    assert words in doc["detail"], doc
    if "%loss.targets" not in body["values"]:  # the engine's own names never leak
        assert "%loss" not in doc["detail"], doc


def test_a_graph_with_the_reserved_names_is_refused(client):
    graph = {"inputs": {"x": {}}, "nodes": [{"id": "%loss", "op": "square", "args": ["x"]}],
             "output": "%loss"}
    doc = problem(client.post("/v1/gradients", json={
        "graph": graph, "values": {"x": 2.0}, "loss": {"type": "mse", "targets": 1.0}}), 422)
    assert doc["errors"][0]["loc"] == ["loss"]


def test_loss_over_oversized_targets_is_a_413_naming_the_field(make_app):
    from service.engine.limits import Limits

    client = make_app(limits=Limits(max_tensor_elements=10)).test_client()
    doc = problem(client.post("/v1/gradients", json={
        "expression": "sum(x)", "values": {"x": [1.0]},
        "loss": {"type": "mse", "targets": list(range(11))}}), 413)
    assert doc["errors"][0]["loc"] == ["loss", "targets"]
