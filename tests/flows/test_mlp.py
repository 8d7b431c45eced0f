"""POST /v1/mlp/gradients (docs/api.md §6).

The engine's answers are checked against an independent reference written here by hand
(NumPy forward and backward, no code shared with the engine) and spot-checked against
central differences of that reference's forward pass.
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np
import pytest

from schemas import MLPResponse
from service.engine.limits import Limits
from tests.conftest import build_app

URL = "/v1/mlp/gradients"
ACTIVATIONS = ("relu", "sigmoid", "tanh", "identity")
LOSSES = ("softmax_cross_entropy", "hinge", "mse", None)


@pytest.fixture(scope="module")
def client():
    """One app for the module: its plan cache is what the cache tests look at."""
    return build_app().test_client()


def post(client, body: dict[str, Any]):
    return client.post(URL, json=body)


# --- the independent reference ------------------------------------------------------------

def _act(name: str, z: np.ndarray) -> np.ndarray:
    if name == "relu":
        return np.where(z > 0, z, 0.0)
    if name == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if name == "tanh":
        return np.tanh(z)
    return z


def _act_grad(name: str, z: np.ndarray, h: np.ndarray) -> np.ndarray:
    """d act / d z, elementwise, from the pre-activation z and the activation h."""
    if name == "relu":
        return (z > 0).astype(np.float64)
    if name == "sigmoid":
        return h * (1.0 - h)
    if name == "tanh":
        return 1.0 - h * h
    return np.ones_like(z)


def ref_forward(Ws, bs, acts, x):
    """Per layer (input, pre-activation, activation); every array 2-d (batch, features)."""
    a = x if x.ndim == 2 else x[None, :]
    layers = []
    for W, b, act in zip(Ws, bs, acts):
        z = np.einsum("bi,oi->bo", a, W) + b
        h = _act(act, z)
        layers.append((a, z, h))
        a = h
    return layers


def ref_loss(out: np.ndarray, kind: str | None, targets: Any, upstream: Any):
    """(data loss or None, d objective / d out) for a 2-d output."""
    n = out.shape[0]
    rows = np.arange(n)
    if kind == "softmax_cross_entropy":
        t = np.asarray(targets, dtype=np.int64).reshape(-1)
        shifted = out - out.max(axis=1, keepdims=True)
        p = np.exp(shifted) / np.exp(shifted).sum(axis=1, keepdims=True)
        loss = -np.mean(np.log(p[rows, t]))
        onehot = np.zeros_like(out)
        onehot[rows, t] = 1.0
        return loss, (p - onehot) / n
    if kind == "hinge":
        t = np.asarray(targets, dtype=np.int64).reshape(-1)
        margins = out - out[rows, t][:, None] + 1.0
        margins[rows, t] = 0.0
        active = (margins > 0).astype(np.float64)
        d = active.copy()
        d[rows, t] = -active.sum(axis=1)
        return np.maximum(margins, 0.0).sum() / n, d / n
    if kind == "mse":
        diff = out - np.asarray(targets).reshape(out.shape)
        return np.mean(diff ** 2), 2.0 * diff / diff.size
    return None, np.asarray(upstream, dtype=np.float64).reshape(out.shape)


def reference(Ws, bs, acts, x, kind=None, targets=None, l2=0.0, upstream=None):
    """Output, loss (with the l2 term) and the gradients, by the chain rule written out."""
    layers = ref_forward(Ws, bs, acts, x)
    out = layers[-1][2]
    loss, d = ref_loss(out, kind, targets, upstream)
    if loss is not None:
        loss += 0.5 * l2 * sum(float(np.sum(W * W)) for W in Ws)
    dWs, dbs = [None] * len(Ws), [None] * len(Ws)
    for i in reversed(range(len(Ws))):
        a, z, h = layers[i]
        dz = d * _act_grad(acts[i], z, h)
        dWs[i] = dz.T @ a + l2 * Ws[i]
        dbs[i] = dz.sum(axis=0)
        d = dz @ Ws[i]
    squeeze = x.ndim == 1
    return {
        "output": out[0] if squeeze else out,
        "loss": loss,
        "weights": dWs,
        "biases": dbs,
        "inputs": d[0] if squeeze else d,
    }


def objective(Ws, bs, acts, x, kind, targets, l2, upstream) -> float:
    """The scalar the gradients are of: the loss, or <upstream, output>."""
    out = ref_forward(Ws, bs, acts, x)[-1][2]
    loss, _ = ref_loss(out, kind, targets, upstream)
    if loss is None:
        return float(np.sum(np.asarray(upstream).reshape(out.shape) * out))
    return loss + 0.5 * l2 * sum(float(np.sum(W * W)) for W in Ws)


def central_difference(f, arr: np.ndarray, index: tuple[int, ...], h: float = 1e-6) -> float:
    orig = arr[index]
    arr[index] = orig + h
    plus = f()
    arr[index] = orig - h
    minus = f()
    arr[index] = orig
    return (plus - minus) / (2 * h)


# --- random MLPs against the reference ----------------------------------------------------

def _cases() -> list[dict[str, Any]]:
    cases = []
    k = 0
    for kind in LOSSES:
        for act in ACTIVATIONS:
            cases.append({"loss": kind, "act": act, "depth": 1 + k % 3,
                          "l2": 0.3 * (k % 2) if kind else 0.0,
                          "rank": 1 if k % 5 in (3, 4) else 2, "batch": 1 + (k * 7) % 5,
                          "seed": k})
            k += 1
    return cases


def _random_request(case: dict[str, Any]):
    rng = np.random.default_rng(case["seed"])
    widths = [int(w) for w in rng.integers(1, 7, size=case["depth"] + 1)]
    if case["loss"] in ("softmax_cross_entropy", "hinge"):
        widths[-1] = max(widths[-1], 2)
    acts = [ACTIVATIONS[(case["seed"] + i) % 4] for i in range(case["depth"] - 1)] + [case["act"]]
    Ws = [rng.normal(size=(widths[i + 1], widths[i])) for i in range(case["depth"])]
    bs = [rng.normal(size=(widths[i + 1],)) for i in range(case["depth"])]
    batch = case["batch"]
    x = rng.normal(size=(batch, widths[0]) if case["rank"] == 2 else (widths[0],))
    out_shape = (batch, widths[-1]) if case["rank"] == 2 else (widths[-1],)
    targets = upstream = None
    if case["loss"] in ("softmax_cross_entropy", "hinge"):
        targets = rng.integers(0, widths[-1], size=batch if case["rank"] == 2 else None)
    elif case["loss"] == "mse":
        targets = rng.normal(size=out_shape)
    else:
        upstream = rng.normal(size=out_shape)
    body: dict[str, Any] = {
        "layers": [{"weight": W.tolist(), "bias": b.tolist(), "activation": a}
                   for W, b, a in zip(Ws, bs, acts)],
        "inputs": x.tolist(),
        "wrt": ["weights", "inputs"],
        "dtype": "float64",
    }
    if case["loss"] is not None:
        body["loss"] = {"type": case["loss"], "targets": targets.tolist()}
        body["l2"] = case["l2"]
    else:
        body["upstream"] = upstream.tolist()
    return body, (Ws, bs, acts, x, case["loss"], targets, body.get("l2", 0.0), upstream)


@pytest.mark.parametrize("case", _cases(),
                         ids=lambda c: f"{c['loss']}-{c['act']}-d{c['depth']}-r{c['rank']}"
                         f"-l2{c['l2']:g}")
def test_random_mlp_matches_reference_and_central_differences(client, case):
    body, args = _random_request(case)
    r = post(client, body)
    assert r.status_code == 200, r.json
    got = r.json
    MLPResponse.model_validate(got)
    ref = reference(*args)
    Ws, bs, acts, x, kind, targets, l2, upstream = args

    def close(a, b):
        b = np.asarray(b, dtype=np.float64)
        scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-300)
        np.testing.assert_allclose(np.asarray(a, dtype=np.float64), b, rtol=1e-6,
                                   atol=1e-12 * scale)

    close(got["output"], ref["output"])
    assert np.shape(got["output"]) == np.shape(ref["output"])
    if kind is None:
        assert "loss" not in got
    else:
        assert got["loss"] == pytest.approx(ref["loss"], rel=1e-9)
    layers = got["gradients"]["layers"]
    assert len(layers) == len(Ws)
    for i, layer in enumerate(layers):
        close(layer["weight"], ref["weights"][i])
        close(layer["bias"], ref["biases"][i])
    close(got["gradients"]["inputs"], ref["inputs"])
    assert np.shape(got["gradients"]["inputs"]) == x.shape

    # Central differences of the reference's forward pass, a few entries of each tensor.
    Ws = [W.copy() for W in Ws]
    bs = [b.copy() for b in bs]
    x = x.copy()

    def f() -> float:
        return objective(Ws, bs, acts, x, kind, targets, l2, upstream)

    rng = np.random.default_rng(case["seed"] + 1000)
    checks = [(Ws[0], layers[0]["weight"]), (bs[-1], layers[-1]["bias"]),
              (Ws[-1], layers[-1]["weight"]), (x, got["gradients"]["inputs"])]
    for arr, analytic in checks:
        analytic = np.asarray(analytic)
        for _ in range(2):
            index = tuple(int(rng.integers(0, d)) for d in arr.shape)
            numeric = central_difference(f, arr, index)
            assert analytic[index] == pytest.approx(numeric, rel=1e-5, abs=1e-7), index


def test_hand_checked_two_layer_mse_with_l2(client):
    """A 2-2-1 net, worked on paper.

    x = [1, 2]; W1 = [[1, -1], [2, 0]], b1 = [0, -1], relu; W2 = [[3, -2]], b2 = [0.5];
    mse against target 0.5; l2 = 0.1.

    Forward: z1 = W1 x + b1 = [1 - 2 + 0, 2 + 0 - 1] = [-1, 1]; h1 = relu(z1) = [0, 1];
    out = 3*0 - 2*1 + 0.5 = -1.5. Data loss (-1.5 - 0.5)^2 = 4; l2 term
    0.5 * 0.1 * (1 + 1 + 4 + 0 + 9 + 4) = 0.95; loss = 4.95.

    Backward: dout = 2 * (-1.5 - 0.5) / 1 = -4.
    dW2 = dout * h1 + 0.1 * W2 = [0, -4] + [0.3, -0.2] = [[0.3, -4.2]]; db2 = [-4].
    dh1 = dout * W2 = [-12, 8]; dz1 = dh1 * relu'(z1) = [0, 8] (z1[0] < 0).
    dW1 = outer(dz1, x) + 0.1 * W1 = [[0, 0], [8, 16]] + [[0.1, -0.1], [0.2, 0]]
        = [[0.1, -0.1], [8.2, 16]]; db1 = [0, 8].
    dx = dz1 @ W1 = 0 * [1, -1] + 8 * [2, 0] = [16, 0].
    """
    body = {
        "layers": [
            {"weight": [[1, -1], [2, 0]], "bias": [0, -1], "activation": "relu"},
            {"weight": [[3, -2]], "bias": [0.5]},
        ],
        "inputs": [[1, 2]],
        "loss": {"type": "mse", "targets": [[0.5]]},
        "l2": 0.1,
        "wrt": ["weights", "inputs"],
    }
    got = post(client, body).json
    assert got["output"] == [[-1.5]]
    assert got["loss"] == pytest.approx(4.95)
    (l1, l2) = got["gradients"]["layers"]
    np.testing.assert_allclose(l1["weight"], [[0.1, -0.1], [8.2, 16]])
    np.testing.assert_allclose(l1["bias"], [0, 8])
    np.testing.assert_allclose(l2["weight"], [[0.3, -4.2]])
    np.testing.assert_allclose(l2["bias"], [-4])
    np.testing.assert_allclose(got["gradients"]["inputs"], [[16, 0]])


def test_single_example_cross_entropy_is_a_batch_of_one(client):
    """1-d inputs: output (out,), one label as a number or a 1-element list."""
    W = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    base = {"layers": [{"weight": W, "bias": [0, 0, 0]}], "inputs": [1.0, 2.0],
            "wrt": ["weights", "inputs"]}
    a = post(client, {**base, "loss": {"type": "softmax_cross_entropy", "targets": 2}}).json
    b = post(client, {**base, "loss": {"type": "softmax_cross_entropy", "targets": [2]}}).json
    batched = post(client, {**base, "inputs": [[1.0, 2.0]],
                            "loss": {"type": "softmax_cross_entropy", "targets": [2]}}).json
    assert a["output"] == [1.0, 2.0, 3.0]
    assert {**a, "cache": None} == {**b, "cache": None}
    assert a["loss"] == pytest.approx(batched["loss"])
    np.testing.assert_allclose(a["gradients"]["inputs"], batched["gradients"]["inputs"][0])
    np.testing.assert_allclose(a["gradients"]["layers"][0]["weight"],
                               batched["gradients"]["layers"][0]["weight"])
    s = np.array([1.0, 2.0, 3.0])
    assert a["loss"] == pytest.approx(np.log(np.exp(s).sum()) - 3.0)


def test_wrt_selects_the_gradients_returned(client):
    base = {"layers": [{"weight": [[1.0, 2.0]], "bias": [0.0]}], "inputs": [[1.0, 1.0]],
            "upstream": [[1.0]]}
    assert set(post(client, base).json["gradients"]) == {"layers"}
    only_inputs = post(client, {**base, "wrt": ["inputs"]}).json
    assert only_inputs["gradients"] == {"inputs": [[1.0, 2.0]]}
    forward_only = post(client, {**base, "wrt": []}).json
    assert forward_only["gradients"] == {} and forward_only["output"] == [[3.0]]
    twice = post(client, {**base, "wrt": ["inputs", "inputs"]}).json
    assert twice["gradients"] == only_inputs["gradients"]


# --- validation: every error names the layer and field ------------------------------------

def _valid() -> dict[str, Any]:
    return {
        "layers": [
            {"weight": [[1, 2], [3, 4], [5, 6]], "bias": [0, 0, 0], "activation": "relu"},
            {"weight": [[1, 0, 1], [0, 1, 0]], "bias": [0, 0]},
        ],
        "inputs": [[1, 2], [3, 4]],
        "loss": {"type": "softmax_cross_entropy", "targets": [0, 1]},
    }


def _with(path: tuple, value: Any) -> dict[str, Any]:
    body = _valid()
    target = body
    for key in path[:-1]:
        target = target[key]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return body


_DELETE = object()

BAD = [
    ("weight chain", ("layers", 1, "weight"), [[1, 0], [0, 1]], ["layers", 1, "weight"]),
    ("bias shape", ("layers", 0, "bias"), [0, 0], ["layers", 0, "bias"]),
    ("bias 2-d", ("layers", 1, "bias"), [[0, 0]], ["layers", 1, "bias"]),
    ("weight 1-d", ("layers", 0, "weight"), [1, 2, 3], ["layers", 0, "weight"]),
    ("weight 3-d", ("layers", 0, "weight"), [[[1, 2]], [[3, 4]], [[5, 6]]],
     ["layers", 0, "weight"]),
    ("weight empty", ("layers", 0, "weight"), {"shape": [3, 0], "data": []},
     ["layers", 0, "weight"]),
    ("weight ragged", ("layers", 0, "weight"), [[1, 2], [3]], ["layers", 0, "weight"]),
    ("weight non-finite b64", ("layers", 0, "weight"),
     {"shape": [3, 2], "dtype": "float64",
      "b64": base64.b64encode(np.full(6, np.nan).tobytes()).decode()},
     ["layers", 0, "weight"]),
    ("input width", ("inputs",), [[1, 2, 3]], ["inputs"]),
    ("input 3-d", ("inputs",), [[[1, 2]]], ["inputs"]),
    ("input scalar", ("inputs",), 1.0, ["inputs"]),
    ("empty batch with a loss", ("inputs",), {"shape": [0, 2], "data": []}, ["inputs"]),
    ("label out of range", ("loss", "targets"), [0, 2], ["loss", "targets"]),
    ("label negative", ("loss", "targets"), [-1, 0], ["loss", "targets"]),
    ("label not an integer", ("loss", "targets"), [0, 0.5], ["loss", "targets"]),
    ("label count", ("loss", "targets"), [0, 1, 1], ["loss", "targets"]),
    ("labels 2-d", ("loss", "targets"), [[0], [1]], ["loss", "targets"]),
    ("unknown activation", ("layers", 1, "activation"), "softplus",
     ["layers", 1, "activation"]),
    ("unknown loss", ("loss", "type"), "nll", ["loss", "type"]),
    ("negative l2", ("l2",), -0.5, ["l2"]),
    ("wrt value", ("wrt",), ["weights", "biases"], ["wrt", 1]),
    ("no layers", ("layers",), [], ["layers"]),
]


@pytest.mark.parametrize("name,path,value,loc", BAD, ids=[b[0] for b in BAD])
def test_invalid_request_is_422_naming_the_field(client, name, path, value, loc):
    r = post(client, _with(path, value))
    assert r.status_code == 422, r.json
    assert r.mimetype == "application/problem+json"
    problem = r.json
    assert problem["status"] == 422 and problem["title"] == "Unprocessable Content"
    assert problem["errors"][0]["loc"] == loc, problem


def test_hinge_labels_are_checked_like_cross_entropy(client):
    body = _with(("loss",), {"type": "hinge", "targets": [3, 0]})
    r = post(client, body)
    assert r.status_code == 422 and r.json["errors"][0]["loc"] == ["loss", "targets"]
    assert "[0, 2)" in r.json["detail"]


def test_mse_targets_must_match_the_output(client):
    body = _with(("loss",), {"type": "mse", "targets": [[0, 1]]})
    r = post(client, body)
    assert r.status_code == 422 and r.json["errors"][0]["loc"] == ["loss", "targets"]
    assert "(2, 2)" in r.json["detail"]


def test_single_example_label_count(client):
    body = _with(("inputs",), [1, 2])
    r = post(client, body)  # two labels for one example
    assert r.status_code == 422 and r.json["errors"][0]["loc"] == ["loss", "targets"]


def test_loss_or_upstream_exactly_one(client):
    body = _with(("loss",), _DELETE)
    r = post(client, body)
    assert r.status_code == 422 and r.json["errors"][0]["loc"] == ["loss"]
    assert "'loss'" in r.json["detail"] and "'upstream'" in r.json["detail"]
    both = {**_valid(), "upstream": [[0, 0], [0, 0]]}
    r = post(client, both)
    assert r.status_code == 422 and r.json["errors"][0]["loc"] == ["upstream"]


def test_upstream_shape_must_be_the_output_shape(client):
    body = {**_with(("loss",), _DELETE), "upstream": [[1, 1, 1], [1, 1, 1]]}
    r = post(client, body)
    assert r.status_code == 422 and r.json["errors"][0]["loc"] == ["upstream"]
    assert "(2, 2)" in r.json["detail"]


def test_l2_needs_a_loss(client):
    body = {**_with(("loss",), _DELETE), "upstream": [[1, 1], [1, 1]], "l2": 0.1}
    r = post(client, body)
    assert r.status_code == 422 and r.json["errors"][0]["loc"] == ["l2"]


def test_sizes_are_limited_before_the_work():
    c = build_app(limits=Limits(max_tensor_elements=5, max_flops=10_000)).test_client()
    r = post(c, _valid())  # the first weight has 6 elements
    assert r.status_code == 413 and r.json["errors"][0]["loc"] == ["layers", 0, "weight"]
    small = {"layers": [{"weight": [[1.0] * 5] * 1, "bias": [0.0]}],
             "inputs": {"shape": [4000, 5], "b64": base64.b64encode(
                 np.zeros(20000).tobytes()).decode()}, "upstream": 1.0}
    r = post(c, small)
    assert r.status_code == 413 and r.json["errors"][0]["loc"] == ["inputs"]
    app2 = build_app(limits=Limits(max_flops=10_000))
    big = {"layers": [{"weight": np.ones((50, 50)).tolist(), "bias": [0.0] * 50}],
           "inputs": np.ones((10, 50)).tolist(), "upstream": np.ones((10, 50)).tolist()}
    r = post(app2.test_client(), big)
    assert r.status_code == 413 and "GRADSERVE_MAX_FLOPS" in r.json["detail"]


# --- the compiled plan is cached per architecture -----------------------------------------

def _targets(loss: str, batch: int | None, classes: int) -> Any:
    if loss == "mse":
        return np.zeros((batch, classes) if batch else classes).tolist()
    return [0] * batch if batch else 0


def _net(seed: int, sizes=(3, 4, 2), acts=("tanh", "identity"), batch: int | None = 2,
         loss="hinge", l2=0.0) -> dict[str, Any]:
    """A random net; ``batch=None`` sends one example (1-d inputs)."""
    rng = np.random.default_rng(seed)
    body: dict[str, Any] = {
        "layers": [{"weight": rng.normal(size=(o, i)).tolist(), "bias": rng.normal(size=o).tolist(),
                    "activation": a} for i, o, a in zip(sizes, sizes[1:], acts)],
        "inputs": rng.normal(size=(batch, sizes[0]) if batch else sizes[0]).tolist(),
        "loss": {"type": loss, "targets": _targets(loss, batch, sizes[-1])},
        "l2": l2,
    }
    return body


def test_new_weights_of_the_same_architecture_hit_the_cache():
    c = build_app().test_client()
    first = post(c, _net(1)).json
    second = post(c, _net(2)).json
    assert first["cache"] == "miss" and second["cache"] == "hit"
    assert first["graph_id"] == second["graph_id"]
    assert first["gradients"] != second["gradients"]
    # The batch size and the l2 value are not part of the architecture's graph.
    assert post(c, _net(3, batch=5)).json["graph_id"] == first["graph_id"]
    on = post(c, _net(4, l2=0.1)).json
    assert on["graph_id"] != first["graph_id"]
    again = post(c, _net(5, l2=2.0)).json
    assert again["graph_id"] == on["graph_id"] and again["cache"] == "hit"


@pytest.mark.parametrize("change", [
    {"sizes": (3, 5, 2)}, {"sizes": (3, 4, 4, 2), "acts": ("tanh", "tanh", "identity")},
    {"acts": ("relu", "identity")}, {"acts": ("tanh", "sigmoid")},
    {"loss": "softmax_cross_entropy"}, {"loss": "mse"}, {"l2": 0.5}, {"batch": None},
])
def test_another_architecture_gets_another_graph_id(client, change):
    base = post(client, _net(0)).json["graph_id"]
    other = post(client, _net(0, **change)).json
    assert other["graph_id"] != base


@pytest.mark.parametrize("loss", ["mse", "hinge"])
def test_input_rank_is_part_of_the_architecture(client, loss):
    batch = post(client, _net(0, loss=loss)).json
    single = post(client, _net(0, loss=loss, batch=None)).json
    assert single["graph_id"] != batch["graph_id"]
    assert np.shape(single["output"]) == (2,) and np.shape(batch["output"]) == (2, 2)


# --- dtypes and encodings -----------------------------------------------------------------

def _b64(arr: np.ndarray, dtype: str) -> dict[str, Any]:
    a = np.ascontiguousarray(arr, dtype="<f4" if dtype == "float32" else "<f8")
    return {"shape": list(a.shape), "dtype": dtype, "b64": base64.b64encode(a.tobytes()).decode()}


def _from_b64(obj: dict[str, Any]) -> np.ndarray:
    dtype = {"float32": "<f4", "float64": "<f8"}[obj["dtype"]]
    return np.frombuffer(base64.b64decode(obj["b64"]), dtype=dtype).reshape(obj["shape"])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_b64_round_trip(client, dtype):
    rng = np.random.default_rng(7)
    Ws = [rng.normal(size=(5, 4)), rng.normal(size=(3, 5))]
    bs = [rng.normal(size=5), rng.normal(size=3)]
    x = rng.normal(size=(6, 4))
    y = np.array([0, 1, 2, 2, 1, 0])
    body = {
        "layers": [{"weight": _b64(W, dtype), "bias": _b64(b, dtype), "activation": a}
                   for W, b, a in zip(Ws, bs, ("sigmoid", "identity"))],
        "inputs": _b64(x, dtype),
        "loss": {"type": "softmax_cross_entropy", "targets": y.tolist()},
        "l2": 0.01, "wrt": ["weights", "inputs"], "dtype": dtype, "encoding": "b64",
    }
    got = post(client, body).json
    if dtype == "float32":  # the reference runs on the same float32-rounded values
        Ws = [W.astype(np.float32).astype(np.float64) for W in Ws]
        bs = [b.astype(np.float32).astype(np.float64) for b in bs]
        x = x.astype(np.float32).astype(np.float64)
    ref = reference(Ws, bs, ["sigmoid", "identity"], x, "softmax_cross_entropy", y, 0.01)
    rtol = 1e-4 if dtype == "float32" else 1e-10
    out = _from_b64(got["output"])
    assert out.dtype == np.dtype(dtype) and out.shape == (6, 3)
    np.testing.assert_allclose(out, ref["output"], rtol=rtol)
    assert isinstance(got["loss"], float)
    assert got["loss"] == pytest.approx(ref["loss"], rel=rtol)
    for i, layer in enumerate(got["gradients"]["layers"]):
        for key, want in (("weight", ref["weights"][i]), ("bias", ref["biases"][i])):
            g = _from_b64(layer[key])
            assert g.dtype == np.dtype(dtype) and g.shape == want.shape
            np.testing.assert_allclose(g, want, rtol=rtol, atol=rtol * 1e-2)
    gx = _from_b64(got["gradients"]["inputs"])
    np.testing.assert_allclose(gx, ref["inputs"], rtol=rtol, atol=rtol * 1e-2)


def test_float32_json_output(client):
    body = {"layers": [{"weight": [[0.1, 0.2]], "bias": [0.3]}], "inputs": [1.0, 1.0],
            "upstream": [1.0], "dtype": "float32", "wrt": ["weights", "inputs"]}
    got = post(client, body).json
    assert got["output"][0] == pytest.approx(np.float32(0.1) + np.float32(0.2) + np.float32(0.3))
    assert got["gradients"]["inputs"] == pytest.approx([0.1, 0.2], rel=1e-7)


def test_non_finite_results_are_null_with_a_warning(client):
    body = {"layers": [{"weight": [[1e30, 1e30]], "bias": [0.0]}], "inputs": [[1e30, 1e30]],
            "loss": {"type": "mse", "targets": [[0.0]]}, "dtype": "float32"}
    r = post(client, body)
    assert r.status_code == 200
    got = r.json
    assert got["output"] == [[None]] and got["loss"] is None
    assert any(w.startswith("output") for w in got["warnings"])
    assert any(w.startswith("loss") for w in got["warnings"])
