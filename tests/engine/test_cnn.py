"""The CNN lecture's facts, checked exactly on the service's ops (ops/cnn.py, ops/norms.py).

conv2d against a direct loop over every output element (written here, no engine code);
"the conv layer's gradient is a convolution" (dW is conv2d of x with g, dx is conv2d of g
with the flipped, transposed weight, both computed by the service's own conv2d); max pool
routes the gradient to the max (ties split), average pool spreads it evenly; batch norm's
input gradient sums to zero over the batch; dropout's mask depends on its seed alone; bad
attrs and shapes are 422s naming the node and the attr; an oversized convolution is a 413
before anything is allocated. The central-difference tables (test_ops, test_higher_order,
test_internal_ops) cover every order on every case.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from service.engine import REGISTRY, Query, compile_graph, execute, graph_from_dict
from service.engine import parse_expression as parse
from service.engine.errors import LimitExceeded
from service.engine.limits import Limits
from service.engine.ops.norms import dropout_mask
from service.errors import GraphError

# --- references, by definition ----------------------------------------------------------------


def conv_loop(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None, stride: Any = 1,
              padding: Any = 0, dilation: Any = 1, groups: int = 1) -> np.ndarray:
    """out[n, o, p, q] = b[o] + sum_{c, i, j} w[o, c, i, j] * xpad[n, g*C/G + c, p*s + i*d,
    q*s + j*d], one output element at a time."""
    sh, sw = (stride, stride) if isinstance(stride, int) else stride
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    pad = [padding] * 4 if isinstance(padding, int) else list(padding)
    top, left, bottom, right = pad * 2 if len(pad) == 2 else pad
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    n, _, hp, wp = xp.shape
    o, cg, kh, kw = w.shape
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, o, ho, wo))
    per_group = o // groups
    for b_, oc, p, q in itertools.product(range(n), range(o), range(ho), range(wo)):
        first = (oc // per_group) * cg
        total = 0.0
        for c, i, j in itertools.product(range(cg), range(kh), range(kw)):
            total += w[oc, c, i, j] * xp[b_, first + c, p * sh + i * dh, q * sw + j * dw]
        out[b_, oc, p, q] = total + (0.0 if b is None else b[oc])
    return out


def run(text: str, values: dict[str, Any], **query: Any) -> Any:
    plan = compile_graph(parse(text, REGISTRY).graph, REGISTRY)
    return execute(plan, {k: np.asarray(v, dtype=float) for k, v in values.items()},
                   Query(**query))


def graph(op: str, args: list[str], attrs: dict[str, Any], shapes: dict[str, Any]) -> Any:
    spec = {"inputs": {n: {"shape": list(s)} for n, s in shapes.items()},
            "nodes": [{"id": "out", "op": op, "args": args, "attrs": attrs}], "output": "out"}
    return compile_graph(graph_from_dict(spec), REGISTRY)


RNG = np.random.default_rng(0)
CONVS = [
    ((2, 3, 5, 5), (4, 3, 3, 3), {}),
    ((1, 2, 6, 5), (3, 2, 3, 2), {"stride": 2, "padding": 1}),
    ((2, 2, 7, 6), (2, 2, 2, 3), {"stride": [2, 1], "padding": [1, 0, 2, 1]}),
    ((1, 3, 7, 7), (2, 3, 3, 3), {"dilation": 2, "padding": 2}),
    ((2, 4, 5, 5), (4, 1, 3, 3), {"groups": 4, "padding": 1}),
    ((1, 4, 5, 4), (6, 2, 2, 2), {"groups": 2, "stride": [1, 2], "dilation": [2, 1]}),
    ((1, 1, 4, 4), (1, 1, 4, 4), {}),
]


def _attr_text(attrs: dict[str, Any]) -> str:
    return "".join(f", {k}={v}" for k, v in attrs.items())


# --- conv2d -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("xs", "ws", "attrs"), CONVS)
def test_conv2d_equals_the_direct_loop(xs: Any, ws: Any, attrs: dict[str, Any]) -> None:
    x, w, b = RNG.standard_normal(xs), RNG.standard_normal(ws), RNG.standard_normal(ws[0])
    with_bias = run(f"conv2d(x, w, b{_attr_text(attrs)})", {"x": x, "w": w, "b": b},
                    wrt=[])
    np.testing.assert_allclose(with_bias.output, conv_loop(x, w, b, **attrs), atol=1e-12)
    no_bias = run(f"conv2d(x, w{_attr_text(attrs)})", {"x": x, "w": w}, wrt=[])
    np.testing.assert_allclose(no_bias.output, conv_loop(x, w, **attrs), atol=1e-12)


@pytest.mark.parametrize(("xs", "ws", "attrs"), CONVS)
def test_conv2d_gradients_equal_the_loops_transpose(xs: Any, ws: Any, attrs: dict[str, Any]
                                                   ) -> None:
    """dx and dW of <g, conv(x, w)> from the loop's own linearity: the loop applied to
    basis vectors would be slow, so compare <g, conv(x, w)> = <dx, x> = <dW, w> (the
    output is linear in each) and the bias gradient, sum of g over N, H, W."""
    x, w, b = RNG.standard_normal(xs), RNG.standard_normal(ws), RNG.standard_normal(ws[0])
    out = conv_loop(x, w, b, **attrs)
    g = RNG.standard_normal(out.shape)
    r = run(f"conv2d(x, w, b{_attr_text(attrs)})", {"x": x, "w": w, "b": b}, upstream=g)
    inner = float(np.sum(g * (out - b[None, :, None, None])))
    assert np.isclose(np.sum(r.gradients["x"] * x), inner)
    assert np.isclose(np.sum(r.gradients["w"] * w), inner)
    np.testing.assert_allclose(r.gradients["b"], g.sum(axis=(0, 2, 3)))


def test_the_conv_layers_gradient_is_a_convolution() -> None:
    """The lecture: dL/dW is the convolution of the input with the upstream gradient, and
    dL/dx the (full) convolution of the upstream gradient with the flipped weight; both
    computed here by the service's own conv2d."""
    x, w = RNG.standard_normal((2, 3, 6, 6)), RNG.standard_normal((4, 3, 3, 3))
    g = RNG.standard_normal((2, 4, 6, 6))
    grads = run("conv2d(x, w, padding=1)", {"x": x, "w": w}, upstream=g).gradients
    # dW[o, c] = sum_n x[n, c] * g[n, o]: batch and channels swap places.
    dw = run("conv2d(xt, gt, padding=1)", {"xt": x.transpose(1, 0, 2, 3),
                                           "gt": g.transpose(1, 0, 2, 3)}, wrt=[]).output
    np.testing.assert_allclose(grads["w"], dw.transpose(1, 0, 2, 3), atol=1e-12)
    # dx = conv of g with W flipped in space, in/out channels swapped, padding k - 1 - p.
    wf = w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)
    dx = run("conv2d(g, wf, padding=1)", {"g": g, "wf": wf}, wrt=[]).output
    np.testing.assert_allclose(grads["x"], dx, atol=1e-12)


def test_conv2d_hessian_in_the_weight_is_exact() -> None:
    """sum(conv(x, w)^2) is quadratic in w: its Hessian is 2 * C C^T with C the im2col
    matrix (each weight's inputs, stacked over the output positions)."""
    x, w = RNG.standard_normal((1, 1, 4, 4)), RNG.standard_normal((1, 1, 2, 2))
    r = run("sum(conv2d(x, w) ** 2)", {"x": x, "w": w}, wrt=["w"], hessian=True)
    cols = np.array([[x[0, 0, p + i, q + j] for i in range(2) for j in range(2)]
                     for p in range(3) for q in range(3)])
    np.testing.assert_allclose(np.reshape(r.hessian["w"]["w"], (4, 4)), 2 * cols.T @ cols,
                               atol=1e-10)


def test_the_bias_is_optional_in_expressions_and_graph_specs() -> None:
    x, w = RNG.standard_normal((1, 2, 4, 4)), RNG.standard_normal((3, 2, 3, 3))
    plan = graph("conv2d", ["x", "w"], {"padding": 1}, {"x": x.shape, "w": w.shape})
    r = execute(plan, {"x": x, "w": w}, Query(upstream=np.ones((1, 3, 4, 4))))
    assert set(r.gradients) == {"x", "w"}
    np.testing.assert_allclose(r.output, conv_loop(x, w, padding=1), atol=1e-12)
    for text in ("conv2d(x)", "conv2d(x, w, b, c)"):
        with pytest.raises(GraphError, match=r"takes 2 or 3 positional arguments"):
            parse(text, REGISTRY)
    with pytest.raises(GraphError, match="takes 2 or 3 args"):
        graph("conv2d", ["x"], {}, {"x": x.shape})
    listed = REGISTRY.get("conv2d").describe()["args"]
    assert [a.get("optional", False) for a in listed] == [False, False, True]


# --- pooling ------------------------------------------------------------------------------------

X44 = np.array([[1.0, 3.0, 2.0, 0.0],
                [4.0, 2.0, 1.0, 5.0],
                [0.0, 1.0, 7.0, 7.0],
                [2.0, 6.0, 3.0, 1.0]])


def test_max_pool_routes_the_gradient_to_the_max() -> None:
    r = run("sum(max_pool2d(x, kernel_size=2) * u)", {"x": X44[None, None],
                                                     "u": [[[[1.0, 2.0], [3.0, 4.0]]]]},
            wrt=["x"])
    assert r.output == 1 * 4 + 2 * 5 + 3 * 6 + 4 * 7
    # Each window's upstream lands on its max; the tied 7s of the last window split it.
    np.testing.assert_array_equal(r.gradients["x"][0, 0], [[0, 0, 0, 0],
                                                          [1, 0, 0, 2],
                                                          [0, 0, 2, 2],
                                                          [0, 3, 0, 0]])


def test_overlapping_max_windows_add_up_and_padding_never_wins() -> None:
    x = -np.ones((1, 1, 3, 3))
    x[0, 0, 1, 1] = -0.5  # the max of every 2x2 window of the padded input, all 4 of them
    r = run("sum(max_pool2d(x, kernel_size=2, stride=1))", {"x": x})
    assert r.output == -2.0 and r.gradients["x"][0, 0, 1, 1] == 4.0
    # One window over the top-left 2x2 and its padding: padding never wins, even over -1s,
    # and the four tied -1s share the gradient.
    r = run("sum(max_pool2d(x, kernel_size=3, stride=3, padding=1))", {"x": -np.ones((1, 1, 3, 3))})
    assert r.output == -1.0
    np.testing.assert_array_equal(r.gradients["x"][0, 0], [[0.25, 0.25, 0], [0.25, 0.25, 0],
                                                          [0, 0, 0]])


def test_avg_pool_spreads_the_gradient_evenly() -> None:
    r = run("sum(avg_pool2d(x, kernel_size=2))", {"x": X44[None, None]})
    np.testing.assert_array_equal(r.gradients["x"], np.full((1, 1, 4, 4), 0.25))
    # Padding counted (PyTorch's default): a corner window holds 1 element of 4.
    ones = np.ones((1, 1, 3, 3))
    r = run("avg_pool2d(x, kernel_size=2, stride=2, padding=1)", {"x": ones}, wrt=[])
    np.testing.assert_array_equal(r.output[0, 0], [[0.25, 0.5], [0.5, 1.0]])
    r = run("avg_pool2d(x, kernel_size=2, stride=2, padding=1, count_include_pad=False)",
            {"x": ones}, upstream=np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(r.output[0, 0], np.ones((2, 2)))
    np.testing.assert_array_equal(r.gradients["x"][0, 0], [[1, 0.5, 0.5], [0.5, 0.25, 0.25],
                                                          [0.5, 0.25, 0.25]])


def test_global_avg_pool_keeps_the_axes() -> None:
    x = RNG.standard_normal((2, 3, 4, 5))
    r = run("global_avg_pool2d(x)", {"x": x}, upstream=np.ones((2, 3, 1, 1)))
    np.testing.assert_allclose(r.output, x.mean(axis=(2, 3), keepdims=True))
    np.testing.assert_allclose(r.gradients["x"], np.full(x.shape, 1 / 20))


# --- normalization --------------------------------------------------------------------------


def test_batch_norm_train_input_gradient_sums_to_zero_over_the_batch() -> None:
    x = RNG.standard_normal((5, 3, 4, 2)) * 3 + 1
    scale, bias = RNG.standard_normal(3), RNG.standard_normal(3)
    g = RNG.standard_normal(x.shape)
    r = run("batch_norm_train(x, s, c)", {"x": x, "s": scale, "c": bias}, upstream=g)
    mean, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
    xhat = (x - mean) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(r.output, xhat * scale[:, None, None] + bias[:, None, None])
    dx = r.gradients["x"]
    np.testing.assert_allclose(dx.sum(axis=(0, 2, 3)), 0.0, atol=1e-12)
    np.testing.assert_allclose(r.gradients["s"], (g * xhat).sum(axis=(0, 2, 3)))
    np.testing.assert_allclose(r.gradients["c"], g.sum(axis=(0, 2, 3)))
    # The textbook formula (Ioffe & Szegedy).
    m = x.size / 3
    gs = g * scale[:, None, None]
    ref = (m * gs - gs.sum(axis=(0, 2, 3), keepdims=True)
           - xhat * (gs * xhat).sum(axis=(0, 2, 3), keepdims=True)) / (m * np.sqrt(var + 1e-5))
    np.testing.assert_allclose(dx, ref, atol=1e-12)


def test_batch_norm_inference_form() -> None:
    x = RNG.standard_normal((4, 3, 2, 2))
    s, c, mu = RNG.standard_normal(3), RNG.standard_normal(3), RNG.standard_normal(3)
    var = RNG.uniform(0.5, 2.0, 3)
    g = RNG.standard_normal(x.shape)
    r = run("batch_norm(x, s, c, mu, var, epsilon=0.001)",
            {"x": x, "s": s, "c": c, "mu": mu, "var": var}, upstream=g)
    k = (s / np.sqrt(var + 1e-3))[:, None, None]
    np.testing.assert_allclose(r.output, (x - mu[:, None, None]) * k + c[:, None, None])
    np.testing.assert_allclose(r.gradients["x"], g * k)
    # The mean enters as -mean * k: its gradient is minus the input gradient's channel sum.
    np.testing.assert_allclose(r.gradients["mu"], -r.gradients["x"].sum(axis=(0, 2, 3)))


def test_layer_norm_normalizes_the_trailing_axes() -> None:
    x = RNG.standard_normal((2, 3, 4)) * 2 - 1
    s, c = RNG.standard_normal((3, 4)), RNG.standard_normal((3, 4))
    g = RNG.standard_normal(x.shape)
    r = run("layer_norm(x, s, c, axis=1)", {"x": x, "s": s, "c": c}, upstream=g)
    mean, var = x.mean(axis=(1, 2), keepdims=True), x.var(axis=(1, 2), keepdims=True)
    xhat = (x - mean) / np.sqrt(var + 1e-5)
    np.testing.assert_allclose(r.output, xhat * s + c)
    np.testing.assert_allclose(r.gradients["x"].sum(axis=(1, 2)), 0.0, atol=1e-12)
    np.testing.assert_allclose(r.gradients["s"], (g * xhat).sum(axis=0))
    np.testing.assert_allclose(r.gradients["c"], g.sum(axis=0))


# --- dropout ----------------------------------------------------------------------------------


def test_dropout_mask_is_a_function_of_the_seed_alone() -> None:
    x = RNG.standard_normal((40, 50))
    text = "dropout(x, p=0.25, seed=11, training=True)"
    first, again = run(text, {"x": x}, wrt=[]), run(text, {"x": x + 1.0}, wrt=[])
    kept = first.output != 0
    np.testing.assert_array_equal(kept, again.output != 0)  # the same mask on every call
    np.testing.assert_allclose(first.output[kept], x[kept] / 0.75)
    assert abs(kept.mean() - 0.75) < 0.03
    mask = dropout_mask(11, 0.25, (40, 50))
    np.testing.assert_array_equal(mask != 0, kept)
    other = run("dropout(x, p=0.25, seed=12, training=True)", {"x": x}, wrt=[])
    assert np.any((other.output != 0) != kept)
    g = RNG.standard_normal(x.shape)
    np.testing.assert_allclose(run(text, {"x": x}, upstream=g).gradients["x"], g * mask)
    # Not training: the identity, value and gradient.
    r = run("dropout(x, p=0.25, seed=11)", {"x": x}, upstream=g)
    np.testing.assert_array_equal(r.output, x)
    np.testing.assert_array_equal(r.gradients["x"], g)
    assert not np.any(run("dropout(x, p=1.0, training=True)", {"x": x}, wrt=[]).output)


# --- refusals: 422 naming the node and the attr, 413 before anything runs ----------------------

BAD = [
    ("conv2d", {"stride": 0}, "stride", "at least 1"),
    ("conv2d", {"stride": [1, 2, 3]}, "stride", "pair"),
    ("conv2d", {"padding": -1}, "padding", "negative"),
    ("conv2d", {"padding": [1, 1, 1]}, "padding", "top, left, bottom, right"),
    ("conv2d", {"dilation": [1, 0]}, "dilation", "at least 1"),
    ("conv2d", {"groups": 0}, "groups", "at least 1"),
    ("conv2d", {"groups": 4}, "groups", "divide"),
    ("conv2d", {"dilation": 3}, "padding", "larger than the padded input"),
    ("max_pool2d", {}, "kernel_size", "required"),
    ("max_pool2d", {"kernel_size": 2, "padding": 2}, "padding", "half the kernel"),
    ("max_pool2d", {"kernel_size": 9}, "kernel_size", "larger than the padded input"),
    ("avg_pool2d", {"kernel_size": 2, "stride": 0}, "stride", "at least 1"),
    ("dropout", {"p": 1.5}, "p", "[0, 1]"),
    ("dropout", {"seed": -1}, "seed", "negative"),
    ("layer_norm", {"axis": 4}, "axis", "out of range"),
    ("batch_norm_train", {"epsilon": -1.0}, "epsilon", "negative"),
]


@pytest.mark.parametrize(("op", "attrs", "attr", "message"), BAD)
def test_bad_attrs_are_graph_errors_naming_node_and_attr(op: str, attrs: dict[str, Any],
                                                         attr: str, message: str) -> None:
    shapes = {"conv2d": {"x": (1, 6, 5, 5), "w": (2, 6, 3, 3)}, "layer_norm":
              {"x": (2, 3, 4, 5), "s": (5,), "c": (5,)}, "batch_norm_train":
              {"x": (2, 3, 4, 5), "s": (3,), "c": (3,)}}.get(op, {"x": (1, 2, 5, 5)})
    with pytest.raises(GraphError) as info:
        graph(op, list(shapes), attrs, shapes)
    err = info.value
    assert err.node == "out" and f"'{attr}'" in str(err) and message in str(err), str(err)
    assert err.loc == ("graph", "nodes", 0, "attrs", attr)


@pytest.mark.parametrize(("op", "shapes", "message"), [
    ("conv2d", {"x": (1, 3, 5), "w": (2, 3, 3, 3)}, "4-d (N, C, H, W)"),
    ("conv2d", {"x": (1, 3, 5, 5), "w": (2, 3, 3)}, "4-d (O, C/groups, kh, kw)"),
    ("conv2d", {"x": (1, 3, 5, 5), "w": (2, 4, 3, 3)}, "input channels"),
    ("conv2d", {"x": (1, 3, 5, 5), "w": (2, 3, 3, 3), "b": (3,)}, "bias must be (2,)"),
    ("conv2d", {"x": (1, 3, 2, 5), "w": (2, 3, 3, 3)}, "larger than the padded input"),
    ("max_pool2d", {"x": (2, 5, 5)}, "4-d"),
    ("global_avg_pool2d", {"x": (2, 3, 0, 4)}, "empty"),
    ("batch_norm", {"x": (4, 3), "s": (3,), "c": (3,), "m": (2,), "v": (3,)}, "mean must be"),
    ("layer_norm", {"x": (2, 3), "s": (2, 3), "c": (3,)}, "scale must be (3,)"),
])
def test_bad_shapes_are_graph_errors(op: str, shapes: dict[str, Any], message: str) -> None:
    attrs = {"kernel_size": 2} if op == "max_pool2d" else {}
    with pytest.raises(GraphError) as info:
        graph(op, list(shapes), attrs, shapes)
    assert info.value.node == "out" and message in str(info.value), str(info.value)


def test_an_oversized_convolution_is_refused_before_it_runs() -> None:
    """x is 4M elements and the output too, but the im2col buffer is 16*64*49*4096 = 205M
    elements: the request's peak, scratch counted, is over max_total_elements."""
    plan = graph("conv2d", ["x", "w"], {"padding": 3},
                 {"x": (16, 64, 64, 64), "w": (64, 64, 7, 7)})
    exe = plan.specialize({"x": (16, 64, 64, 64), "w": (64, 64, 7, 7)}, ())
    assert exe.peak_elements > 16 * 64 * 49 * 4096
    assert exe.flops >= 2 * 16 * 64 * 4096 * 64 * 49
    with pytest.raises(LimitExceeded) as info:
        exe.check_limits(Limits())
    assert info.value.limit == "max_total_elements"
    # The flops bound on its own: forward and both gradients are three products of
    # 2*N*O*Ho*Wo*C*kh*kw each, under a budget of two.
    shapes = {"x": (8, 32, 32, 32), "w": (32, 32, 3, 3)}
    exe = graph("conv2d", ["x", "w"], {}, shapes).specialize(shapes, ("x", "w"))
    product = 2 * 8 * 32 * 30 * 30 * 32 * 9
    exe.check_limits(Limits(max_flops=4 * product))
    with pytest.raises(LimitExceeded, match="MAX_FLOPS"):
        exe.check_limits(Limits(max_flops=2 * product))


def test_a_huge_window_is_refused_for_its_tap_loop() -> None:
    """Each tap is a step of a Python loop: a 1000x1000 window is over the flops budget."""
    shapes = {"x": (1, 1, 1000, 1000)}
    exe = graph("max_pool2d", ["x"], {"kernel_size": 1000}, shapes).specialize(shapes, ("x",))
    with pytest.raises(LimitExceeded, match="MAX_FLOPS"):
        exe.check_limits(Limits())


# --- the worked example of docs/cnn.md (and the playground's preset) -------------------------

TINY_CNN = ("h = relu(conv2d(x, w, b))\np = max_pool2d(h, kernel_size=2)\n"
            "s = linear(reshape(p, shape=[1, 8]), W, c)\nloss = softmax_cross_entropy(s, y)")
TINY_VALUES = {
    "x": [[[[0.1, 0.5, 0.9, 0.2, -0.4, 0.4], [0.0, 0.8, 1.0, 0.3, -0.5, 0.1],
            [-0.2, 0.6, 0.7, 0.1, -0.4, 0.25], [0.3, 0.9, 0.6, -0.1, -0.6, 0.0],
            [0.2, 0.4, 0.8, 0.0, -0.2, 0.3], [-0.1, 0.7, 0.5, -0.2, -0.7, 0.1]]]],
    "w": [[[[1, 0, -1], [1, 0, -1], [1, 0, -1]]], [[[1, 1, 1], [0, 0, 0], [-1, -1, -1]]]],
    "b": [0.0, 0.1],
    "W": [[0.2, -0.1, 0.3, 0.0, 0.1, 0.2, -0.2, 0.1], [-0.3, 0.2, 0.1, 0.4, 0.0, -0.1, 0.2, 0.3],
          [0.1, 0.3, -0.2, 0.1, 0.2, 0.0, 0.1, -0.1]],
    "c": [0.0, 0.1, -0.1],
    "y": [1],
}


def test_the_tiny_cnn_of_the_docs() -> None:
    """conv -> relu -> 2x2 max pool -> linear -> cross-entropy on a 1x1x6x6 input, against
    the same net in plain NumPy; and its conv layer's weight gradient is the convolution of
    the input with the gradient arriving at the conv's output."""
    values = {k: np.asarray(v, dtype=float) for k, v in TINY_VALUES.items()}
    plan = compile_graph(parse(TINY_CNN, REGISTRY).graph, REGISTRY)
    r = execute(plan, {**values, "y": np.array([1])}, Query(trace=True))
    x, w, b, wl, c = (values[k] for k in ("x", "w", "b", "W", "c"))
    h = np.maximum(conv_loop(x, w, b), 0.0)
    p = h.reshape(1, 2, 2, 2, 2, 2).max(axis=(3, 5))
    s = p.reshape(1, 8) @ wl.T + c
    z = s - s.max()
    loss = np.log(np.exp(z).sum()) - z[0, 1]
    assert np.isclose(r.output, loss) and round(float(r.output), 4) == 0.5882
    probs = np.exp(z) / np.exp(z).sum()
    np.testing.assert_allclose(r.gradients["c"], probs[0] - [0, 1, 0])
    np.testing.assert_allclose(r.gradients["W"], np.outer(probs[0] - [0, 1, 0], p.ravel()))
    g_conv = next(t["grad"] for t in r.trace if t["op"] == "conv2d")
    dw = run("conv2d(xt, gt)", {"xt": x.transpose(1, 0, 2, 3),
                                "gt": g_conv.transpose(1, 0, 2, 3)}, wrt=[]).output
    np.testing.assert_allclose(r.gradients["w"], dw.transpose(1, 0, 2, 3), atol=1e-15)
    np.testing.assert_allclose(r.gradients["b"], g_conv.sum(axis=(0, 2, 3)))
    assert np.round(r.gradients["w"][0, 0, 0], 4).tolist() == [0.0008, 0.1758, 0.1627]
