"""The shape ops beyond the central-difference table (test_ops.DOMAINS): exact values
against NumPy, exact gradients where they are known in closed form (the embedding lookup's
repeated indices), variadic concat/stack in graph specs and expressions, the attrs each shape
rule refuses (a GraphError naming the node and the attr, before anything runs), the indices
of gather through the app (not in wrt, out of range: 422s naming the input) and the cost."""

from __future__ import annotations

import itertools
from typing import Any

import array_api_strict
import numpy as np
import pytest

from service.engine import REGISTRY, Query, compile_graph, execute, graph_from_dict
from service.engine import parse_expression as parse
from service.engine.limits import Limits
from service.engine.ops import indexing
from service.errors import GraphError, LimitExceeded

RNG = np.random.default_rng(5)


def one_node(op: str, nargs: int = 1, inputs: dict[str, Any] | None = None,
             **attrs: Any) -> dict[str, Any]:
    names = [f"a{k}" for k in range(nargs)]
    return {"inputs": inputs or {n: {} for n in names},
            "nodes": [{"id": "f", "op": op, "args": names, "attrs": attrs}], "output": "f"}


def run_graph(spec: dict[str, Any], values: dict[str, Any], **query: Any) -> Any:
    return execute(compile_graph(graph_from_dict(spec), REGISTRY), values, Query(**query))


def run_text(text: str, values: dict[str, Any], **query: Any) -> Any:
    return execute(compile_graph(parse(text, REGISTRY).graph, REGISTRY), values, Query(**query))


# --- values against NumPy ---------------------------------------------------------------------

SLICES = [(s, e, st) for s, e, st in itertools.product([None, -7, -3, -1, 0, 2, 5, 9],
                                                         [None, -9, -2, 0, 3, 6, 2**53],
                                                         [1, 2, -1, -3])]


@pytest.mark.parametrize(("start", "end", "step"), SLICES)
def test_slice_is_numpys_slice_and_its_gradient_puts_g_back(start: Any, end: Any,
                                                             step: int) -> None:
    x = RNG.standard_normal((2, 6))
    big = 2**53 if step > 0 else -2**53  # an omitted bound: past the end in the step's way
    attrs = {"starts": [big * -1 if start is None else start],
             "ends": [big if end is None else end], "axes": [-1], "steps": [step]}
    want = x[:, start:end:step]
    g = RNG.standard_normal(want.shape)
    r = run_graph(one_node("slice", **attrs), {"a0": x}, upstream=g)
    np.testing.assert_array_equal(r.output, want)
    expected = np.zeros_like(x)
    expected[:, start:end:step] = g
    np.testing.assert_array_equal(r.gradients["a0"], expected)


@pytest.mark.parametrize("pads", [[1, 2, 0, 3], [0, 0, 0, 0], [2, 0, 1, 1], [-1, 1, 0, -2],
                                  [-3, 0, 0, 0], [1, -4, -1, 2]])
def test_pad_is_numpys_pad_then_onnxs_crop_and_its_gradient_the_inverse(pads: list[int]
                                                                         ) -> None:
    x = RNG.standard_normal((3, 4))
    padded = np.pad(x, [(max(pads[0], 0), max(pads[2], 0)), (max(pads[1], 0), max(pads[3], 0))],
                    constant_values=1.5)
    # A negative pad crops from that side, as ONNX's Pad does.
    want = padded[max(-pads[0], 0):padded.shape[0] - max(-pads[2], 0),
                  max(-pads[1], 0):padded.shape[1] - max(-pads[3], 0)]
    g = RNG.standard_normal(want.shape)
    r = run_graph(one_node("pad", pads=pads, value=1.5), {"a0": x}, upstream=g)
    np.testing.assert_array_equal(r.output, want)
    # The gradient: each x entry that survived gets its g entry, the cropped ones 0.
    marker = np.arange(x.size, dtype=float).reshape(x.shape) + 1
    moved = run_graph(one_node("pad", pads=pads, value=0.0), {"a0": marker}, wrt=()).output
    expected = np.zeros(x.size)
    expected[moved[moved > 0].astype(int) - 1] = g[moved > 0]
    np.testing.assert_array_equal(r.gradients["a0"], expected.reshape(x.shape))


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concat_and_stack_of_n_args_in_graph_specs_and_expressions(n: int, axis: int) -> None:
    xs = [RNG.standard_normal((2, k + 1)) if axis else RNG.standard_normal((2, 3))
          for k in range(n)]
    if axis == 0:
        xs = [RNG.standard_normal((k + 1, 3)) for k in range(n)]
    names = [f"a{k}" for k in range(n)]
    values = dict(zip(names, xs))
    want = np.concatenate(xs, axis=axis)
    g = RNG.standard_normal(want.shape)
    for r in (run_graph(one_node("concat", n, axis=axis), values, upstream=g),
              run_text(f"concat({', '.join(names)}, axis={axis})", values, upstream=g)):
        np.testing.assert_array_equal(r.output, want)
        parts = np.split(g, np.cumsum([x.shape[axis] for x in xs])[:-1], axis=axis)
        for name, part in zip(names, parts):
            np.testing.assert_array_equal(r.gradients[name], part)
    same = [RNG.standard_normal((2, 3)) for _ in range(n)]
    values = dict(zip(names, same))
    want = np.stack(same, axis=axis)
    g = RNG.standard_normal(want.shape)
    for r in (run_graph(one_node("stack", n, axis=axis), values, upstream=g),
              run_text(f"stack({', '.join(names)}, axis={axis})", values, upstream=g)):
        np.testing.assert_array_equal(r.output, want)
        for k, name in enumerate(names):
            np.testing.assert_array_equal(r.gradients[name], np.take(g, k, axis=axis))


def test_a_variadic_node_takes_more_args_than_a_fixed_op_may() -> None:
    xs = {f"a{k}": RNG.standard_normal(2) for k in range(40)}
    r = run_graph(one_node("concat", 40), xs, upstream=np.ones(80))
    assert r.output.shape == (80,) and all(np.all(g == 1) for g in r.gradients.values())
    r = run_text("sum(stack(a, a, a, b) * w)", {"a": 1.0, "b": 2.0, "w": [1.0, 2.0, 3.0, 4.0]})
    assert (float(r.gradients["a"]), float(r.gradients["b"])) == (6.0, 4.0)


@pytest.mark.parametrize(("op", "attrs", "shape", "reference"), [
    ("flatten", {}, (2, 3, 4), lambda x: x.reshape(-1)),
    ("flatten", {"start_axis": 1}, (2, 3, 4), lambda x: x.reshape(2, -1)),
    ("flatten", {"start_axis": -3, "end_axis": 1}, (2, 3, 4), lambda x: x.reshape(6, 4)),
    ("flatten", {}, (), lambda x: x.reshape(1)),
    ("squeeze", {}, (1, 3, 1), lambda x: np.squeeze(x)),
    ("squeeze", {"axes": [-1]}, (1, 3, 1), lambda x: np.squeeze(x, -1)),
    ("unsqueeze", {"axes": [0, -1]}, (3, 2), lambda x: x[None, :, :, None]),
    ("unsqueeze", {"axes": [0]}, (), lambda x: x.reshape(1)),
    ("expand", {"shape": [2, 1, 3]}, (4, 1), lambda x: np.broadcast_to(x, (2, 4, 3))),
    ("expand", {"shape": [1]}, (2, 2), lambda x: x),
])
def test_reshaping_ops_against_numpy(op: str, attrs: dict[str, Any], shape: tuple[int, ...],
                                     reference: Any) -> None:
    x = RNG.standard_normal(shape)
    want = reference(x)
    g = RNG.standard_normal(want.shape)
    r = run_graph(one_node(op, **attrs), {"a0": x}, upstream=None if want.shape == () else g)
    np.testing.assert_array_equal(r.output, want)
    # Their gradients: g carried back (expand's summed over the broadcast axes).
    back = _sum_to(g, x.shape) if op == "expand" else np.reshape(g, x.shape)
    np.testing.assert_allclose(r.gradients["a0"], back, rtol=1e-14)


def _sum_to(g: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    lead = g.ndim - len(shape)
    g = np.sum(g, axis=tuple(range(lead))) if lead else g
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    return np.sum(g, axis=axes, keepdims=True).reshape(shape) if axes else g.reshape(shape)


# --- gather: the embedding lookup -------------------------------------------------------------


@pytest.mark.parametrize(("xshape", "ishape", "axis"), [
    ((5, 3), (7,), 0), ((5, 3), (2, 4), 0), ((3, 5), (6,), 1), ((2, 3, 4), (3, 2), -1),
    ((4,), (), 0), ((1, 2), (5,), 0)])
def test_gather_is_take_and_repeated_indices_sum_their_gradients(
        xshape: tuple[int, ...], ishape: tuple[int, ...], axis: int) -> None:
    x = RNG.standard_normal(xshape)
    n = xshape[axis]
    idx = RNG.integers(-n, n, ishape)
    if idx.size > 1:  # the same row twice, once as a negative index
        last = int(idx.flat[-1])
        idx.flat[0] = last - n if last >= 0 else last + n
    want = np.take(x, idx, axis=axis)
    g = RNG.standard_normal(want.shape) if want.shape else np.float64(1.0)
    r = run_graph(one_node("gather", 2, axis=axis), {"a0": x, "a1": idx},
                  upstream=None if want.shape == () else g)
    np.testing.assert_array_equal(r.output, want)
    expected = np.zeros_like(x)
    a = axis % len(xshape)
    np.add.at(expected, (slice(None),) * a + (idx % n,), g)
    np.testing.assert_allclose(r.gradients["a0"], expected, rtol=1e-15, atol=1e-15)
    assert set(r.gradients) == {"a0"}  # the indices have none


def test_an_embedding_lookup_counts_each_token_and_its_second_order_is_exact() -> None:
    E = RNG.standard_normal((6, 4))
    tokens = np.array([[1, 3, 1], [5, 1, -1]])  # token 1 three times, 5 twice (-1 is 5)
    counts = np.bincount(tokens.ravel() % 6, minlength=6)[:, None]
    r = run_text("sum(gather(E, t) ** 2)", {"E": E, "t": tokens}, hvp={"E": np.ones((6, 4))},
                 tangents={"E": np.ones((6, 4))})
    np.testing.assert_allclose(r.gradients["E"], 2 * counts * E, rtol=1e-14)
    np.testing.assert_allclose(r.hvp["E"], 2 * counts * np.ones((6, 4)), rtol=1e-14)
    np.testing.assert_allclose(r.jvp, np.sum(2 * counts * E), rtol=1e-14)
    h = run_text("sum(gather(E, t) ** 2)", {"E": E[:3, :1], "t": [0, 2, 2]},
                 hessian=True).hessian["E"]["E"]
    np.testing.assert_array_equal(np.reshape(h, (3, 3)), np.diag([2.0, 0.0, 4.0]))


def test_the_portable_scatter_add_matches_numpys_add_at() -> None:
    """array-api-strict has no scatter: its one-hot product must sum repeats as add.at."""
    g = RNG.standard_normal((2, 6, 3))
    idx = np.array([0, 3, 3, -1, 0, 3])
    fast = indexing._scatter_add(np)(g, idx, shape=(2, 4, 3), axis=1)
    xp = array_api_strict
    slow = indexing._scatter_add(xp)(xp.asarray(g), xp.asarray(idx), shape=(2, 4, 3), axis=-2)
    np.testing.assert_allclose(np.asarray(slow), fast, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(fast[:, 3], g[:, 1] + g[:, 2] + g[:, 3] + g[:, 5])


# --- bad attrs: GraphErrors naming the node and the attr, at compile time -----------------


BAD = [
    ("concat", 2, [[2, 3], [3, 3]], {"axis": 1}, "axis"),
    ("concat", 2, [[2, 3], [2, 3]], {"axis": 2}, "axis"),
    ("concat", 2, [[2, 3], [2]], {}, "axis"),
    ("concat", 1, [[]], {}, "stack"),
    ("stack", 2, [[2, 3], [2, 3]], {"axis": -4}, "axis"),
    ("stack", 2, [[2, 3], [3, 2]], {}, "shape"),
    ("slice", 1, [[4, 4]], {"starts": [0, 1], "ends": [2]}, "ends"),
    ("slice", 1, [[4, 4]], {"starts": [0], "ends": [2], "axes": [0, 1]}, "axes"),
    ("slice", 1, [[4, 4]], {"starts": [0], "ends": [2], "steps": [1, 1]}, "steps"),
    ("slice", 1, [[4, 4]], {"starts": [0, 0], "ends": [2, 2], "axes": [1, -1]}, "axes"),
    ("slice", 1, [[4, 4]], {"starts": [0], "ends": [2], "axes": [2]}, "axes"),
    ("slice", 1, [[4, 4]], {"starts": [0], "ends": [2], "steps": [0]}, "steps"),
    ("slice", 1, [[4]], {"starts": [0, 0], "ends": [1, 1]}, "starts"),
    ("squeeze", 1, [[1, 3]], {"axes": [1]}, "axes"),
    ("squeeze", 1, [[1, 3]], {"axes": [0, -2]}, "axes"),
    ("unsqueeze", 1, [[3]], {"axes": [0, 0]}, "axes"),
    ("unsqueeze", 1, [[3]], {"axes": [2]}, "axes"),
    ("unsqueeze", 1, [[1] * 32], {"axes": [0]}, "axes"),
    ("expand", 1, [[2, 3]], {"shape": [4, 3]}, "shape"),
    ("expand", 1, [[3]], {"shape": [-1, 3]}, "shape"),
    ("flatten", 1, [[2, 3]], {"start_axis": 1, "end_axis": 0}, "start_axis"),
    ("flatten", 1, [[2, 3]], {"end_axis": 2}, "end_axis"),
    ("pad", 1, [[2, 3]], {"pads": [1, 1]}, "pads"),
    ("pad", 1, [[2, 3]], {"pads": [-2, 0, -1, 0]}, "pads"),
    ("gather", 2, [[2, 3], [4]], {"axis": 2}, "axis"),
    ("gather", 2, [[], [4]], {}, "gather"),
    ("gather", 2, [[0, 3], [4]], {}, "entries"),
]


@pytest.mark.parametrize(("op", "nargs", "shapes", "attrs", "word"), BAD,
                         ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_bad_attrs_and_shapes_are_graph_errors_naming_node_and_attr(
        op: str, nargs: int, shapes: list[list[int]], attrs: dict[str, Any], word: str) -> None:
    inputs = {f"a{k}": {"shape": s} for k, s in enumerate(shapes)}
    spec = one_node(op, nargs, inputs, **attrs)
    spec["nodes"].insert(0, {"id": "pre", "op": "neg", "args": ["a0"]})
    with pytest.raises(GraphError) as err:
        compile_graph(graph_from_dict(spec), REGISTRY)  # the declared shapes: nothing runs
    assert err.value.node == "f" and word in str(err.value), str(err.value)


@pytest.mark.parametrize(("attrs", "message"), [
    ({"pads": [1] * 65}, "at most 64 entries"), ({"steps": 2}, "list of integers"),
    ({"starts": [0.5], "ends": [1]}, "list of integers"), ({"ends": [2**60]}, r"2\^53")])
def test_the_ints_attr_kind_refuses_by_its_own_rules(attrs: dict[str, Any], message: str
                                                     ) -> None:
    op = "pad" if "pads" in attrs else "slice"
    with pytest.raises(GraphError, match=message) as err:
        compile_graph(graph_from_dict(one_node(op, **attrs)), REGISTRY)
    assert err.value.node == "f"


def test_pads_take_two_entries_per_axis_of_a_32_d_tensor() -> None:
    x = np.ones((1,) * 32)
    r = run_graph(one_node("pad", pads=[0] * 31 + [1] + [0] * 32), {"a0": x},
                  upstream=np.ones((1,) * 31 + (2,)))
    assert r.output.shape == (1,) * 31 + (2,) and r.gradients["a0"].shape == x.shape


def test_arity_errors_say_at_least() -> None:
    with pytest.raises(GraphError, match=r"takes at least 1 args, got 0"):
        compile_graph(graph_from_dict(one_node("concat", 0)), REGISTRY)
    with pytest.raises(GraphError, match=r"stack\(\) takes at least 1 positional arguments"):
        parse("stack(axis=0)", REGISTRY)
    with pytest.raises(GraphError, match=r"gather\(\) takes 2 positional arguments, got 3"):
        parse("gather(x, i, j)", REGISTRY)


# --- the cost: views hold nothing, a huge pad is refused before it runs ---------------------


def test_views_count_no_elements_and_a_huge_pad_is_a_413_before_running() -> None:
    spec = {"inputs": {"x": {"shape": [1000]}},
            "nodes": [{"id": "s", "op": "slice", "args": ["x"],
                       "attrs": {"starts": [10], "ends": [-10]}},
                      {"id": "u", "op": "unsqueeze", "args": ["s"]},
                      {"id": "f", "op": "sum", "args": ["u"]}], "output": "f"}
    exe = compile_graph(graph_from_dict(spec), REGISTRY).specialize({"x": (1000,)}, ())
    assert exe.peak_elements < 1100  # x and scalars: the slice and unsqueeze share x
    spec["nodes"][0] = {"id": "s", "op": "pad", "args": ["x"], "attrs": {"pads": [0, 10**7]}}
    with pytest.raises(LimitExceeded, match="MAX_TENSOR_ELEMENTS"):
        compile_graph(graph_from_dict(spec), REGISTRY,
                      limits=Limits(max_tensor_elements=10**6))


# --- gather's indices through the app ---------------------------------------------------------

GATHER = {"inputs": {"E": {"shape": [4, 2]}, "t": {}},
          "nodes": [{"id": "g", "op": "gather", "args": ["E", "t"]},
                    {"id": "f", "op": "sum", "args": ["g"]}], "output": "f"}
TABLE = [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0], [6.0, 7.0]]


def _problem(resp: Any) -> dict[str, Any]:
    assert resp.status_code == 422, resp.get_data(as_text=True)[:500]
    assert resp.mimetype == "application/problem+json"
    return resp.get_json()


def test_gather_through_the_app_sums_repeats_and_takes_negative_indices(client: Any) -> None:
    resp = client.post("/v1/gradients", json={"graph": GATHER, "values": {
        "E": TABLE, "t": [[1, -1], [1, 3]]}})
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    assert body["output"] == 2 + 3 + 6 + 7 + 2 + 3 + 6 + 7
    assert body["gradients"] == {"E": [[0.0, 0.0], [2.0, 2.0], [0.0, 0.0], [2.0, 2.0]]}
    resp = client.post("/v1/gradients", json={"expression": "sum(gather(E, t, axis=1))",
                                              "values": {"E": TABLE, "t": [0, 0, 0]}})
    assert resp.get_json()["gradients"]["E"] == [[3.0, 0.0]] * 4


@pytest.mark.parametrize(("t", "extra", "words", "loc"), [
    ([0, 1], {"wrt": ["t"]}, ["'t'", "no gradient"], ["wrt", 0]),
    ([0, 4], {}, ["indices 't'", "[-4, 4)", "0..4"], ["values", "t"]),
    ([-5, 0], {}, ["indices 't'", "[-4, 4)"], ["values", "t"]),
    ([0.5, 1], {}, ["'t'", "integers"], ["values", "t"]),
    ([0, 1], {"hvp": {"t": [1, 1]}}, ["'t'", "labels"], ["hvp", "t"]),
])
def test_gather_indices_are_refused_in_wrt_and_out_of_range(
        client: Any, t: list[Any], extra: dict[str, Any], words: list[str], loc: list[Any]
        ) -> None:
    body = _problem(client.post("/v1/gradients", json={"graph": GATHER, "values": {
        "E": TABLE, "t": t}, **extra}))
    for w in words:
        assert w in body["detail"], body["detail"]
    assert loc in [item["loc"] for item in body.get("errors") or []], body


def test_indices_must_be_an_input(client: Any) -> None:
    graph = {"inputs": {"E": {}}, "nodes": [{"id": "g", "op": "gather", "args": ["E", 1]}],
             "output": "g"}
    body = _problem(client.post("/v1/gradients", json={"graph": graph, "values": {"E": TABLE},
                                                       "upstream": [1.0, 1.0]}))
    assert "'indices'" in body["detail"] and "input of the graph" in body["detail"]


def test_the_listing_says_variadic(client: Any) -> None:
    ops = {op["name"]: op for op in client.get("/v1/ops").get_json()["ops"]}
    for name in ("concat", "stack"):
        assert ops[name]["variadic"] is True and ops[name]["arity"] == 1
        assert ops[name]["args"] == [{"name": "tensors", "kind": "float",
                                      "differentiable": True}]
    assert ops["gather"]["variadic"] is False
    assert [a["differentiable"] for a in ops["gather"]["args"]] == [True, False]
    assert all(REGISTRY.get(n).example for n in ("concat", "stack", "slice", "squeeze",
                                                 "unsqueeze", "expand", "flatten", "pad",
                                                 "gather", "reshape"))


# --- second order through the adjoint pairs, in one graph --------------------------------------


def test_hvp_and_jvp_through_every_shape_op_match_differences_of_the_gradient() -> None:
    """concat/slice/pad/gather/stack/expand between nonlinear ops: the HVP (reverse over
    reverse, so unslice's and scatter_add's own VJPs) against central differences of the
    engine's gradient, and the JVP against differences of the forward."""
    text = ("c = concat(a, b ** 2, axis=1); s = slice(c, starts=[-1, 4], ends=[-10, 0], "
            "axes=[0, 1], steps=[-1, -2]); p = pad(s * s, pads=[1, -1, 0, 2], value=0.5); "
            "e = gather(expand(p, shape=[2, 1, 1]), t, axis=-2); "
            "sum(sin(stack(e, squeeze(unsqueeze(e, axes=[0]), axes=[0]), axis=1)) * 2)")
    plan = compile_graph(parse(text, REGISTRY).graph, REGISTRY)
    values = {"a": RNG.standard_normal((3, 4)), "b": RNG.standard_normal((3, 2)),
              "t": np.array([[0, 2], [-1, 0]])}
    v = {n: RNG.standard_normal(values[n].shape) for n in ("a", "b")}
    r = execute(plan, values, Query(hvp=v, tangents=v))

    def grads(x: dict[str, Any]) -> np.ndarray:
        g = execute(plan, x, Query()).gradients
        return np.concatenate([np.ravel(g["a"]), np.ravel(g["b"])])

    def along(f: Any, h: float = 1e-3) -> Any:
        at = [f({**values, **{n: values[n] + k * h * v[n] for n in v}}) for k in (2, 1, -1, -2)]
        return (-at[0] + 8 * at[1] - 8 * at[2] + at[3]) / (12 * h)

    hv = np.concatenate([np.ravel(r.hvp["a"]), np.ravel(r.hvp["b"])])
    np.testing.assert_allclose(hv, along(grads), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(r.jvp, along(lambda x: execute(plan, x, Query(wrt=())).output),
                               rtol=1e-6, atol=1e-8)


def test_the_published_attr_list_bound_is_the_loaders() -> None:
    from schemas import graphs as wire
    from service.engine import ir

    assert wire.MAX_ATTR_LIST == ir.MAX_ATTR_LIST == 64 and wire.MAX_ARGS == ir.MAX_ARGS
    with pytest.raises(GraphError, match="65 entries, more than the 64"):
        compile_graph(parse(f"pad(x, pads=[{', '.join(['0'] * 65)}])", REGISTRY).graph,
                      REGISTRY)
