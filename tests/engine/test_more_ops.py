"""Exact checks of the more elementwise ops and reductions (docs/api.md §3) and of the expression
text that writes them: erf's accuracy, gelu's two forms, softplus's switch, the conventions at
kinks, bounds and zeros (prod with zeros, std and norm at zero, clip at its bounds), var/std
against NumPy, where's condition through the HTTP app, string and list attrs, the refusals'
words. The gradient, JVP and HVP checks against differences are test_ops' DOMAINS rows."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest

from service.engine import REGISTRY, Query, compile_graph, execute, graph_from_dict
from service.engine import parse_expression as parse
from service.errors import GraphError, ProblemError
from tests.engine.numeric import dev, host

# --- helpers ------------------------------------------------------------------------------


def _forward(name: str, x: Any, **attrs: Any) -> np.ndarray:
    """The op's raw forward on the test backend, attrs normalized as a graph's are."""
    op = REGISTRY.get(name)
    return host(op.forward(dev(np.asarray(x, dtype=np.float64)), **op.normalize_attrs(attrs)))


def _run(text: str, values: dict[str, Any], **options: Any) -> Any:
    plan = compile_graph(parse(text, REGISTRY).graph, REGISTRY)
    return execute(plan, {k: np.asarray(v) for k, v in values.items()}, Query(**options))


def _graph(op: str, args: list[str], attrs: dict[str, Any] | None = None,
           shapes: dict[str, list[int]] | None = None) -> dict[str, Any]:
    inputs = {a: ({"shape": shapes[a]} if shapes and a in shapes else {}) for a in args}
    return {"inputs": inputs, "output": "f",
            "nodes": [{"id": "f", "op": op, "args": args, "attrs": attrs or {}}]}


# --- erf ----------------------------------------------------------------------------------


def test_erf_matches_math_erf_to_a_few_ulps() -> None:
    x = np.concatenate([np.linspace(-30, 30, 60_001), np.geomspace(1e-300, 30, 20_001),
                        -np.geomspace(1e-300, 30, 2_001),
                        [0.46875, 0.46875 + 1e-15, 4.0, 4.0 + 1e-14, 26.5, 27.0, 1e300]])
    ref = np.array([math.erf(v) for v in x])
    got = _forward("erf", x)
    zero = ref == 0
    assert np.all(got[zero] == 0)
    rel = np.abs(got[~zero] - ref[~zero]) / np.abs(ref[~zero])
    assert float(np.max(rel)) < 1e-15, (float(np.max(rel)), x[~zero][np.argmax(rel)])


def test_erf_special_values() -> None:
    got = _forward("erf", [0.0, -0.0, np.inf, -np.inf, np.nan, 1e308, -1e308])
    assert got[0] == 0.0 and got[1] == 0.0 and math.copysign(1.0, got[1]) == -1.0
    assert got[2:4].tolist() == [1.0, -1.0] and np.isnan(got[4])
    assert got[5:].tolist() == [1.0, -1.0]


def test_erf_float32_stays_float32() -> None:
    x = np.linspace(-5, 5, 101, dtype=np.float32)
    out = host(REGISTRY.get("erf").forward(dev(x)))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [math.erf(v) for v in x], rtol=2e-7, atol=1e-7)


def test_erf_gradient_is_two_over_sqrt_pi_exp() -> None:
    x = np.array([-2.0, -0.3, 0.0, 0.7, 3.0])
    r = _run("sum(erf(x))", {"x": x}, hessian=True)
    np.testing.assert_allclose(r.gradients["x"], 2 / np.sqrt(np.pi) * np.exp(-x * x),
                               rtol=1e-15)
    np.testing.assert_allclose(np.diag(r.hessian["x"]["x"]),
                               -4 * x / np.sqrt(np.pi) * np.exp(-x * x), rtol=1e-14, atol=1e-300)


# --- gelu ---------------------------------------------------------------------------------


def test_gelu_exact_is_x_phi_x_with_an_accurate_lower_tail() -> None:
    x = np.concatenate([np.linspace(-37, 8, 4_501), [0.0, -1e-300, 1e-300]])
    ref = np.array([0.5 * v * math.erfc(-v / math.sqrt(2)) for v in x])
    got = _forward("gelu", x)
    nz = ref != 0
    # Relative accuracy even where 1 + erf(x/sqrt 2) would cancel (x << 0); the bound is the
    # conditioning of erfc at x/sqrt(2) (a rounding of the argument costs ~x^2 ulps).
    rel = np.abs(got[nz] - ref[nz]) / np.abs(ref[nz]) / np.maximum(1.0, x[nz] ** 2)
    assert float(np.max(rel)) < 1e-15
    assert got[-3] == 0.0


def test_gelu_tanh_is_pytorchs_formula_and_close_to_exact() -> None:
    x = np.linspace(-6, 6, 1201)
    tanh = _forward("gelu", x, approximate="tanh")
    formula = 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x ** 3)))
    np.testing.assert_allclose(tanh, formula, rtol=1e-14, atol=1e-300)
    exact = _forward("gelu", x)
    assert 1e-4 < float(np.max(np.abs(tanh - exact))) < 1e-3  # the approximation's known size
    # Both forms' gradients against their own closed forms.
    for form in ("none", "tanh"):
        r = _run(f'sum(gelu(x, approximate="{form}"))', {"x": x})
        if form == "none":
            phi = np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
            cdf = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])
            expected = cdf + x * phi
        else:
            k, c = np.sqrt(2 / np.pi), 0.044715
            t = np.tanh(k * (x + c * x ** 3))
            expected = 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * k * (1 + 3 * c * x * x)
        np.testing.assert_allclose(r.gradients["x"], expected, rtol=1e-13, atol=1e-15)


def test_gelu_refuses_an_unknown_form() -> None:
    with pytest.raises(GraphError) as info:
        compile_graph(graph_from_dict(_graph("gelu", ["x"], {"approximate": "erf"})), REGISTRY)
    assert info.value.node == "f" and "approximate" in info.value.detail
    assert '"none", "tanh"' in info.value.detail


# --- softplus, leaky_relu, elu --------------------------------------------------------------


def test_softplus_switches_to_x_above_the_threshold() -> None:
    beta, threshold = 2.0, 1.0
    x = np.array([0.4, 0.499, 0.5, 0.501, 0.6, 30.0, -30.0])
    out = _forward("softplus", x, beta=beta, threshold=threshold)
    above = beta * x > threshold
    np.testing.assert_array_equal(out[above], x[above])
    np.testing.assert_allclose(out[~above], np.log1p(np.exp(beta * x[~above])) / beta,
                               rtol=1e-15)
    r = _run("sum(softplus(x, beta=2, threshold=1))", {"x": x})
    sig = 1 / (1 + np.exp(-beta * x))
    np.testing.assert_allclose(r.gradients["x"], np.where(above, 1.0, sig), rtol=1e-15)
    # The default threshold 20: linear from x = 20 on, no overflow far beyond it.
    big = _forward("softplus", [19.0, 21.0, 1e300, -1e300])
    assert big[1:3].tolist() == [21.0, 1e300] and big[3] == 0.0
    assert big[0] == pytest.approx(math.log1p(math.exp(19.0)), rel=1e-15)


def test_softplus_refuses_beta_zero() -> None:
    with pytest.raises(GraphError) as info:
        compile_graph(graph_from_dict(_graph("softplus", ["x"], {"beta": 0},
                                             shapes={"x": [3]})), REGISTRY)
    assert info.value.node == "f" and "'beta'" in info.value.detail


def test_leaky_relu_and_elu_at_zero_follow_pytorch() -> None:
    # leaky_relu'(0) = negative_slope (PyTorch: x > 0 ? g : g * slope); elu'(0) = alpha.
    x = np.array([-1.0, 0.0, 2.0])
    r = _run("sum(leaky_relu(x, negative_slope=0.1))", {"x": x}, hessian=True)
    assert r.gradients["x"].tolist() == [0.1, 0.1, 1.0]
    assert not np.any(r.hessian["x"]["x"])  # kinked: zero second derivative
    r = _run("sum(elu(x, alpha=0.5))", {"x": x}, hessian=True)
    np.testing.assert_allclose(r.gradients["x"], [0.5 * np.exp(-1.0), 0.5, 1.0], rtol=1e-15)
    np.testing.assert_allclose(np.diag(r.hessian["x"]["x"]), [0.5 * np.exp(-1.0), 0.5, 0.0],
                               rtol=1e-15)
    out = _forward("elu", [-1e-10, -800.0, 800.0], alpha=2.0)
    np.testing.assert_allclose(out, [2 * math.expm1(-1e-10), -2.0, 800.0], rtol=1e-15)


# --- clip ---------------------------------------------------------------------------------


def test_clip_gradient_at_and_beyond_its_bounds() -> None:
    # PyTorch's clamp_backward: 1 where min <= x <= max (both bounds included), else 0.
    x = np.array([-2.0, -1.0, 0.5, 1.0, 3.0])
    r = _run("sum(clip(x, min=-1, max=1))", {"x": x}, hessian=True)
    assert r.output == pytest.approx(-1 - 1 + 0.5 + 1 + 1)
    assert r.gradients["x"].tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]
    assert not np.any(r.hessian["x"]["x"])
    r = _run("sum(clip(x, min=None, max=1))", {"x": x})
    assert r.gradients["x"].tolist() == [1.0, 1.0, 1.0, 1.0, 0.0]
    r = _run("sum(clip(x, min=0.5, max=null))", {"x": x})
    assert r.gradients["x"].tolist() == [0.0, 0.0, 1.0, 1.0, 1.0]
    # min > max: every value is max (min(max(x, lo), hi)), and no gradient anywhere.
    r = _run("clip(x, min=2, max=1)", {"x": x}, upstream=np.ones(5))
    assert r.output.tolist() == [1.0] * 5 and not np.any(r.gradients["x"])
    assert np.isnan(_forward("clip", [np.nan], min=0.0, max=1.0)[0])


def test_clip_needs_a_bound() -> None:
    with pytest.raises(GraphError) as info:
        compile_graph(graph_from_dict(_graph("clip", ["x"], shapes={"x": [2]})), REGISTRY)
    assert info.value.node == "f" and "'min' or 'max'" in info.value.detail
    with pytest.raises(GraphError) as info:
        compile_graph(graph_from_dict(_graph("clip", ["x"], {"min": "a"})), REGISTRY)
    assert info.value.node == "f" and "number or null" in info.value.detail


# --- sign, floor, ceil --------------------------------------------------------------------


def test_sign_floor_ceil_values_and_zero_gradients() -> None:
    x = np.array([-1.5, -0.0, 0.0, 0.25, 2.0, 2.5])
    for name, ref in (("sign", np.sign), ("floor", np.floor), ("ceil", np.ceil)):
        np.testing.assert_array_equal(_forward(name, x), ref(x))
        r = _run(f"sum({name}(x) * x)", {"x": x}, hessian=True)
        np.testing.assert_array_equal(r.gradients["x"], ref(x))  # d/dx of f(x)*x: f(x)
        assert not np.any(r.hessian["x"]["x"])
    # abs, whose VJP uses sign, is unchanged: 0 at 0.
    assert _run("sum(abs(x))", {"x": x}).gradients["x"].tolist() == [-1, 0, 0, 1, 1, 1]


# --- prod ---------------------------------------------------------------------------------


def _others(x: np.ndarray, skip: tuple[int, ...]) -> float:
    return float(np.prod([v for j, v in enumerate(x) if j not in skip]))


@pytest.mark.parametrize("x", [[2.0, -3.0, 0.5, 4.0], [2.0, 0.0, 3.0, 4.0],
                               [2.0, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 1.5], [0.0], [5.0]],
                         ids=["no-zero", "one-zero", "two-zeros", "three-zeros", "0", "5"])
def test_prod_gradient_and_hessian_with_zeros(x: list[float]) -> None:
    """d prod/dx_i = prod of the others, d2/dx_i dx_k = prod of all but i and k (0 on the
    diagonal): exact whatever the zeros, as PyTorch's prod_backward."""
    a = np.array(x)
    n = len(a)
    r = _run("prod(x)", {"x": a}, hessian=True, hvp={"x": np.arange(1.0, n + 1)})
    assert float(r.output) == float(np.prod(a))
    np.testing.assert_array_equal(r.gradients["x"], [_others(a, (i,)) for i in range(n)])
    hessian = np.array([[0.0 if i == k else _others(a, (i, k)) for k in range(n)]
                        for i in range(n)])
    np.testing.assert_array_equal(r.hessian["x"]["x"], hessian)
    np.testing.assert_array_equal(r.hvp["x"], hessian @ np.arange(1.0, n + 1))


def test_prod_with_zeros_along_an_axis_and_in_float32() -> None:
    x = np.array([[1.0, 0.0, 3.0], [2.0, 5.0, 0.5], [0.0, 0.0, 7.0]])
    expected = np.array([[_others(row, (i,)) for i in range(3)] for row in x])
    for dtype, keepdims in itertools.product(("float64", "float32"), (False, True)):
        up = np.array([1.0, -2.0, 3.0]).reshape((3, 1) if keepdims else (3,))
        r = _run(f"prod(x, axis=1, keepdims={keepdims})", {"x": x.astype(dtype)},
                 upstream=up, dtype=dtype)
        assert r.gradients["x"].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(r.gradients["x"], expected * up.reshape(3, 1))


# --- var, std -----------------------------------------------------------------------------


@pytest.mark.parametrize("correction", [0, 1, 2, 0.5])
@pytest.mark.parametrize("axis", [None, 0, 1, [0, 2], -1])
def test_var_and_std_match_numpy(correction: float, axis: Any) -> None:
    x = np.random.default_rng(3).standard_normal((4, 3, 5))
    ax = tuple(axis) if isinstance(axis, list) else axis
    n = x.size if axis is None else int(np.prod([x.shape[a] for a in np.atleast_1d(axis)]))
    mean = np.mean(x, axis=ax, keepdims=True)
    for name, ref in (("var", np.var), ("std", np.std)):
        text = f"{name}(x, axis={axis}, correction={correction})"
        expected = ref(x, axis=ax, ddof=correction)
        up = np.random.default_rng(4).standard_normal(np.shape(expected))
        r = _run(text, {"x": x}, upstream=None if np.ndim(expected) == 0 else up)
        np.testing.assert_allclose(r.output, expected, rtol=1e-13)
        weight = 1.0 if np.ndim(expected) == 0 else np.expand_dims(up, ax if ax is not None
                                                                   else ())
        scale = 2.0 if name == "var" else 1.0 / np.reshape(
            ref(x, axis=ax, ddof=correction, keepdims=True), np.shape(mean))
        grad = weight * scale * (x - mean) / (n - correction)
        np.testing.assert_allclose(r.gradients["x"], grad, rtol=1e-12, atol=1e-15)


def test_std_at_zero_variance_has_zero_gradient_and_finite_hessian() -> None:
    # PyTorch's std_backward masks g / (2 std) to 0 where std == 0.
    x = np.array([[2.0, 2.0, 2.0], [1.0, 2.0, 4.0]])
    r = _run("sum(std(x, axis=1))", {"x": x}, hessian=True, tangents={"x": np.ones((2, 3))})
    assert r.output == pytest.approx(np.std(x[1], ddof=1))
    assert r.gradients["x"][0].tolist() == [0.0, 0.0, 0.0]
    h = r.hessian["x"]["x"]
    assert np.all(np.isfinite(h)) and not np.any(h[0, :, 0, :])
    assert np.isfinite(r.jvp)


def test_var_refuses_a_correction_that_leaves_nothing_to_divide_by() -> None:
    for attrs, shape in (({}, [1]), ({"correction": 3}, [3]), ({"axis": 0}, [1, 4]),
                         ({"correction": 0}, [0])):
        with pytest.raises(GraphError) as info:
            compile_graph(graph_from_dict(_graph("var", ["x"], attrs, {"x": shape})), REGISTRY)
        assert info.value.node == "f", attrs
    assert "'correction'" in info.value.detail or "zero-size" in info.value.detail


# --- norm ---------------------------------------------------------------------------------


@pytest.mark.parametrize("ord_", [1, 2, "inf"])
def test_norm_matches_numpy_and_pytorchs_gradients(ord_: Any) -> None:
    x = np.array([[3.0, -4.0, 1.0], [-2.0, 0.5, 2.0]])
    np_ord = np.inf if ord_ == "inf" else ord_
    shown = f'"{ord_}"' if ord_ == "inf" else ord_
    r = _run(f"norm(x, axis=1, ord={shown})", {"x": x}, upstream=np.array([1.0, -2.0]))
    np.testing.assert_allclose(r.output, np.linalg.norm(x, ord=np_ord, axis=1), rtol=1e-15)
    if ord_ == 1:
        expected = np.sign(x)
    elif ord_ == 2:
        expected = x / np.linalg.norm(x, axis=1, keepdims=True)
    else:  # the largest |x|; row 2 has a tie (|-2| = |2|): split evenly, with the signs
        expected = np.array([[0.0, -1.0, 0.0], [-0.5, 0.0, 0.5]])
    np.testing.assert_allclose(r.gradients["x"], expected * [[1.0], [-2.0]], rtol=1e-15)
    assert float(_run(f"norm(x, ord={shown})", {"x": x}).output) == pytest.approx(
        np.linalg.norm(x.ravel(), ord=np_ord), rel=1e-15)


@pytest.mark.parametrize("ord_", ["1", "2", '"inf"'])
def test_norm_at_zero_has_zero_gradient(ord_: str) -> None:
    r = _run(f"norm(x, ord={ord_})", {"x": np.zeros(3)}, hessian=True)
    assert float(r.output) == 0.0 and r.gradients["x"].tolist() == [0.0, 0.0, 0.0]
    assert np.all(np.isfinite(r.hessian["x"]["x"]))


def test_norm_ord_forms() -> None:
    # ord 2.0 is ord 2 (one canonical graph); 3, "fro" and true are refused, naming the attr.
    ids = {compile_graph(parse(t, REGISTRY).graph, REGISTRY).graph_id
           for t in ("norm(x)", "norm(x, ord=2)", "norm(x, ord=2.0)")}
    assert len(ids) == 1
    for bad in (3, "fro", True, None):
        with pytest.raises(GraphError) as info:
            compile_graph(graph_from_dict(_graph("norm", ["x"], {"ord": bad})), REGISTRY)
        assert info.value.node == "f" and "'ord'" in info.value.detail
    with pytest.raises(GraphError, match="zero-size"):
        compile_graph(graph_from_dict(_graph("norm", ["x"], {"ord": "inf"}, {"x": [0]})),
                      REGISTRY)
    assert float(_run("norm(x, ord=1)", {"x": np.zeros(0)}).output) == 0.0


# --- where: broadcasting, and a condition that is no tensor to differentiate --------------


def test_where_broadcasts_and_routes_the_gradient() -> None:
    c = np.array([1, 0, 1])
    a = np.arange(6.0).reshape(2, 3)
    r = _run("where(c, a, b)", {"c": c, "a": a, "b": np.array(-1.0)},
             upstream=np.ones((2, 3)), hessian=False)
    np.testing.assert_array_equal(r.output, [[0.0, -1.0, 2.0], [3.0, -1.0, 5.0]])
    np.testing.assert_array_equal(r.gradients["a"], [[1, 0, 1], [1, 0, 1]])
    assert float(r.gradients["b"]) == 2.0
    assert set(r.gradients) == {"a", "b"}
    # Booleans are conditions too (a NumPy bool array given to the engine).
    r2 = _run("sum(where(c, a, 0))", {"c": np.array([True, False, True]), "a": a})
    np.testing.assert_array_equal(r2.gradients["a"], r.gradients["a"])


def _post(client: Any, expression: str, values: dict[str, Any], **options: Any) -> Any:
    return client.post("/v1/gradients", json={"expression": expression, "values": values,
                                              **options})


def test_where_over_http(client: Any) -> None:
    a = [[1.0, 2.0], [3.0, 4.0]]
    for cond in ([True, False], [1, 0], [1.0, 0.0], [[1], [0]]):
        resp = _post(client, "sum(where(c, a, b))", {"c": cond, "a": a, "b": 5.0})
        assert resp.status_code == 200, resp.get_json()
    resp = _post(client, "sum(where(c, a, b))", {"c": [True, False], "a": a, "b": 5.0},
                 hessian=True, tangents={"a": [[1.0, 1.0], [1.0, 1.0]]})
    body = resp.get_json()
    assert resp.status_code == 200 and body["output"] == 14.0
    assert body["gradients"] == {"a": [[1.0, 0.0], [1.0, 0.0]], "b": 2.0}
    assert body["jvp"] == 2.0


@pytest.mark.parametrize(("values", "options", "fragment"), [
    ({"c": [1, 0]}, {"wrt": ["c"]}, "has no gradient"),
    ({"c": [1, 0]}, {"tangents": {"c": [1.0, 1.0]}}, "labels"),
    ({"c": [2, 0]}, {}, "[0, 2)"),
    ({"c": [-1, 0]}, {}, "[0, 2)"),
    ({"c": [0.5, 1]}, {}, "integers"),
])
def test_where_condition_is_not_differentiable_nor_anything_but_0_1(
        client: Any, values: dict[str, Any], options: dict[str, Any], fragment: str) -> None:
    resp = _post(client, "sum(where(c, a, 0))", {**values, "a": [1.0, 2.0]}, **options)
    assert resp.status_code == 422, resp.get_json()
    assert fragment in resp.get_json()["detail"]


def test_where_condition_must_be_an_input_used_only_as_one(client: Any) -> None:
    for text in ("sum(where(c, a, 0) + c)", "sum(where(exp(c), a, 0))", "sum(where(2, a, 0))"):
        resp = _post(client, text, {"c": [1, 0], "a": [1.0, 2.0]})
        assert resp.status_code == 422, text
    with pytest.raises(GraphError) as info:
        compile_graph(graph_from_dict(_graph("where", ["c", "a", "b"],
                                             shapes={"c": [2], "a": [3], "b": [3]})), REGISTRY)
    assert info.value.node == "f" and "broadcast" in info.value.detail


# --- expressions: list and string attrs, null, the refusals' words -----------------------


def _nodes(text: str) -> list[tuple[str, tuple[Any, ...], dict[str, Any]]]:
    return [(n.op, n.args, n.attr_dict) for n in parse(text, REGISTRY).graph.nodes]


def test_string_list_and_null_attrs() -> None:
    assert _nodes('gelu(x, approximate="tanh")') == [("gelu", ("x",), {"approximate": "tanh"})]
    assert _nodes("gelu(x, approximate='none')") == [("gelu", ("x",), {"approximate": "none"})]
    assert _nodes('norm(x, ord="inf", axis=[0, 1])') == [
        ("norm", ("x",), {"ord": "inf", "axis": (0, 1)})]
    assert _nodes("reshape(x, shape=[2, 2])") == [("reshape", ("x",), {"shape": (2, 2)})]
    assert _nodes("clip(x, min=None, max=1)") == _nodes("clip(x, min=null, max=1)") == [
        ("clip", ("x",), {"min": None, "max": 1})]
    assert _nodes("sum(x, keepdims=true)") == _nodes("sum(x, keepdims=True)")
    assert _nodes("where(m, x, 0)") == [("where", ("m", "x", 0.0), {})]


def test_expressions_that_parsed_before_keep_their_graph_ids() -> None:
    # Computed from the tree before strings, null and these ops existed (git f4c339e).
    ids = {
        "1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))":
            "g-a1a6755db0aedcae4190864e9c72455e083b47ae6331243f127237e1058009ef",
        "q = W @ x; f = sum(q ** 2)":
            "g-b440c777a409e004dcba9e589b52b133a39f31734762fbe3bb96f8809cd2fa4b",
        "sum(x, axis=[0, 1], keepdims=True)":
            "g-52cdd363a9f1e6090fcff9a4b8205beae8c30d60ca91b8c7d12f31e9a46b9f43",
        "reshape(x, shape=(-1, 2))":
            "g-248afecd17a7bd1faa6b1aad35fdfd75f5b2dfc6b8f6120f8f4be9624a435f81",
    }
    for text, gid in ids.items():
        assert compile_graph(parse(text, REGISTRY).graph, REGISTRY).graph_id == gid, text


@pytest.mark.parametrize(("text", "fragments"), [
    ("W.T", ["transpose(W)"]),
    ("x.sum()", ["sum(x"]),
    ("x.sum(axis=0)", ["sum(x"]),
    ("np.exp(x)", ["exp(...)", "by name"]),
    ("torch.tanh(x) + 1", ["tanh(...)"]),
    ("x ^ 2", ["x ** 2", "pow(x, 2)"]),
    ("(x + 1) ^ y", ["**", "pow("]),
    ("2x + 1", ["2*x"]),
    ("exp(*x)", ["unpacking", "each argument"]),
    ("sum(**k)", ["unpacking", "name=value"]),
    ("a if c else b", ["where(c, a, b)"]),
    ("x[0]", ["slice(", "gather("]),
    ("x[1:2] + 1", ["slice("]),
    ("a < b", ["where("]),
    ("x // 2", ["floor("]),
    ("'tanh'", ["attr values", 'approximate="tanh"']),
    ("gelu(x, approximate='sigmoid')", ['"none", "tanh"']),
    ("sum(x, axis='a')", ["'axis'"]),
    ("sum(x, 0)", ["name=value", "axis="]),
    ("x \u2212 1", ["'-'"]),
    ("gelu(x, approximate=\"tanh)", ["not closed"]),
    ("sum(x, axis=y)", ["not an attr value", "stride=[2, 2]"]),
    ("x = 1 = 2", ["only one '='"]),
    ("a = b += 1", ["only one '='"]),
    ("x y", ["operator between them"]),
])
def test_refusals_say_what_to_write_instead(text: str, fragments: list[str]) -> None:
    with pytest.raises(GraphError) as info:
        parse(text, REGISTRY)
    detail = info.value.detail
    assert detail.startswith("expression: ") and "(line 1, column" in detail
    for fragment in fragments:
        assert fragment in detail, (fragment, detail)
    for python_words in ("starred", "not allowed (only", "invalid literal"):
        assert python_words not in detail


def test_every_op_example_parses_and_compiles() -> None:
    ops = [op for op in REGISTRY if op.example]
    assert {"erf", "gelu", "clip", "where", "prod", "var", "std", "norm"} <= {o.name for o in ops}
    for op in ops:
        try:
            graph = parse(op.example, REGISTRY).graph
            compile_graph(graph, REGISTRY)
        except ProblemError as exc:  # pragma: no cover - the message is the point
            raise AssertionError(f"{op.name}: {op.example!r}: {exc.detail}") from None
        assert any(n.op == op.name for n in graph.nodes), op.name


def test_new_ops_local_texts_and_kinks() -> None:
    kinked = {op.name for op in REGISTRY if op.kinked}
    assert {"leaky_relu", "clip", "sign", "floor", "ceil", "norm"} <= kinked
    assert not {"erf", "gelu", "elu", "softplus", "where", "prod", "var", "std"} & kinked
    for name in ("erf", "gelu", "leaky_relu", "elu", "softplus", "clip", "sign"):
        assert REGISTRY.get(name).local, name
    assert REGISTRY.get("where").describe()["args"][0] == {
        "name": "cond", "kind": "label", "differentiable": False}
    assert "sign" not in {op.name for op in REGISTRY.internal_ops()}
