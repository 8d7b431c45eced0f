"""One table-driven test over the op registry: every op's VJPs, shape rule and float32 path.

``DOMAINS`` maps every registered op to cases: argument shapes (with broadcasting and 0-d
where the op allows them), attrs and a value domain per argument that keeps the finite
differences away from kinks, ties and the edges of the op's domain. Adding an op to the
registry without adding it here fails :func:`test_every_op_has_a_domain`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from service.engine import REGISTRY, Query, compile_graph, execute, graph_from_dict
from service.engine.ops import records
from service.engine.registry import Op, OpDef
from service.errors import GraphError
from tests.engine.numeric import (
    F32,
    assert_grad_close,
    dev,
    dev_values,
    forward,
    host,
    numeric_grad,
)

# --- the table ----------------------------------------------------------------------------


@dataclass(frozen=True)
class F:
    """A differentiable argument: its shape and the domain its values are drawn from.

    Domains: ``real`` (standard normal), ``pos`` (in [0.5, 2]), ``away0`` (|v| in [0.3, 1.5],
    either sign), ``grid0``/``grid1`` (distinct values on two interleaved lattices 0.2 apart,
    so no two values of one argument, nor of the two arguments, are within 0.1 of each other),
    ``frac`` (±(k + f), k a permutation of 0..n-1, f in [0.2, 0.8]: magnitudes at least 0.4
    apart, every value at least 0.2 from an integer: floor, ceil, clip at integer bounds).
    """

    shape: tuple[int, ...]
    domain: str = "real"


@dataclass(frozen=True)
class L:
    """An integer class-label argument: ``(batch,)`` labels in ``[0, classes)``."""

    batch: int
    classes: int


@dataclass(frozen=True)
class Case:
    args: tuple[F | L, ...]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:  # readable pytest ids
        parts = []
        for a in self.args:
            parts.append(f"L{a.batch}x{a.classes}" if isinstance(a, L)
                         else f"{a.shape}{'' if a.domain == 'real' else ':' + a.domain}")
        return ",".join(parts) + (f"|{self.attrs}" if self.attrs else "")


def _c(*args: F | L | tuple[int, ...], **attrs: Any) -> Case:
    return Case(tuple(a if isinstance(a, F | L) else F(a) for a in args), attrs)


def _binary(dx: str = "real", dy: str = "real") -> list[Case]:
    pairs = [((3, 4), (3, 4)), ((3, 1), (1, 4)), ((2, 3, 4), (4,)), ((4,), (2, 1, 4)),
             ((), ()), ((), (3,)), ((2, 3), ())]
    return [Case((F(a, dx), F(b, dy))) for a, b in pairs]


def _unary(domain: str = "real") -> list[Case]:
    return [Case((F(s, domain),)) for s in [(3, 4), (), (2, 1, 3)]]


def _reduction(domain: str = "real") -> list[Case]:
    f = lambda *s: F(s, domain)  # noqa: E731
    return [
        Case((f(3, 4),)),
        Case((f(3, 4),), {"axis": 0}),
        Case((f(3, 4),), {"axis": 1, "keepdims": True}),
        Case((f(3, 4),), {"axis": -1}),
        Case((f(2, 3, 4),), {"axis": [0, 2]}),
        Case((f(2, 3, 4),), {"axis": [-1, 1], "keepdims": True}),
        Case((f(2, 3, 4),), {"keepdims": True}),
        Case((f(),)),
    ]


def _softmaxes() -> list[Case]:
    return [_c((3, 4)), _c((3, 4), axis=0), _c((5,)), _c((2, 3, 4), axis=1),
            _c((2, 3, 4), axis=-3)]


_MATMUL = [
    _c((3, 4), (4, 5)), _c((4,), (4, 5)), _c((3, 4), (4,)), _c((4,), (4,)),
    _c((2, 3, 4), (4, 5)), _c((2, 3, 4), (2, 4, 5)), _c((2, 1, 3, 4), (3, 4, 2)),
    _c((4,), (2, 4, 3)), _c((2, 3, 4), (4,)), _c((1, 3, 4), (2, 4, 2)),
]

# The neural-net ops (ops/cnn.py): batch 1, odd sizes, stride > 1, dilation > 1, asymmetric
# padding [top, left, bottom, right], groups and depthwise (groups = channels), no bias.
_CONV2D = [
    _c((2, 3, 5, 5), (4, 3, 3, 3), (4,)),
    _c((1, 2, 6, 5), (3, 2, 3, 2), (3,), padding=1, stride=2),
    _c((2, 2, 7, 6), (2, 2, 2, 3), padding=[1, 0, 2, 1], stride=[2, 1]),
    _c((1, 3, 7, 7), (2, 3, 3, 3), (2,), dilation=2, padding=2),
    _c((2, 4, 5, 5), (4, 1, 3, 3), (4,), groups=4, padding=1),
    _c((1, 4, 5, 4), (6, 2, 2, 2), groups=2, stride=[1, 2], dilation=[2, 1]),
    _c((3, 2, 3, 3), (5, 2, 1, 1), (5,)),
    _c((1, 1, 3, 3), (1, 1, 3, 3)),
    _c((1, 2, 4, 5), (2, 2, 3, 3), (2,), padding=[0, 2], stride=3, dilation=[1, 2]),
]


def _pools(domain: str = "real") -> list[Case]:
    f = lambda *s: F(s, domain)  # noqa: E731
    return [_c(f(2, 3, 6, 6), kernel_size=2), _c(f(1, 2, 5, 7), kernel_size=3, stride=2, padding=1),
            _c(f(2, 1, 5, 5), kernel_size=[2, 3], stride=[1, 2], padding=[1, 0, 0, 1]),
            _c(f(1, 1, 7, 5), kernel_size=2), _c(f(1, 1, 3, 3), kernel_size=3, padding=1)]


DOMAINS: dict[str, list[Case]] = {
    "add": _binary(),
    "sub": _binary(),
    "mul": _binary(),
    "div": _binary("real", "away0"),
    "pow": _binary("pos", "real"),
    "maximum": _binary("grid0", "grid1"),
    "minimum": _binary("grid0", "grid1"),
    "neg": _unary(),
    "identity": _unary(),
    "exp": _unary(),
    "log": _unary("pos"),
    "sqrt": _unary("pos"),
    "square": _unary(),
    "abs": _unary("away0"),
    "reciprocal": _unary("away0"),
    "sigmoid": _unary(),
    "tanh": _unary(),
    "relu": _unary("away0"),
    "sin": _unary(),
    "cos": _unary(),
    "matmul": _MATMUL,
    "dot": [_c((4,), (4,)), _c((3, 4), (4,)), _c((4,), (4, 2)), _c((3, 4), (4, 2))],
    "transpose": [_c((3, 4)), _c((2, 3, 4), axes=[1, 2, 0]), _c((2, 3, 4), axes=[-1, 0, 1]),
                  _c(()), _c((5,), axes=[0])],
    "linear": [_c((5, 4), (3, 4), (3,)), _c((4,), (3, 4), (3,)), _c((2, 5, 4), (3, 4), (3,)),
               _c((1, 1), (1, 1), (1,))],
    "sum": _reduction(),
    "mean": _reduction(),
    "max": _reduction("grid0"),
    "min": _reduction("grid0"),
    "logsumexp": _reduction(),
    "reshape": [_c((3, 4), shape=[2, 6]), _c((3, 4), shape=[-1]), _c((), shape=[1, 1]),
                _c((2, 3, 4), shape=[4, -1]), _c((1, 1), shape=[])],
    "softmax": _softmaxes(),
    "log_softmax": _softmaxes(),
    "softmax_cross_entropy": [Case((F((5, 4)), L(5, 4))), Case((F((1, 3)), L(1, 3))),
                              Case((F((6, 1)), L(6, 1)))],
    # Scores on the lattice (steps of 0.4) keep every margin s_j - s_y + m at least 0.1 - noise
    # away from the hinge's kink for m = 1 and m = 0.5.
    "hinge": [Case((F((5, 4), "grid0"), L(5, 4))),
              Case((F((6, 3), "grid0"), L(6, 3)), {"margin": 0.5}),
              Case((F((2, 2), "grid0"), L(2, 2)), {"margin": 1}),
              Case((F((3, 1), "grid0"), L(3, 1)))],
    "mse": [_c((3, 4), (3, 4)), _c((5,), (5,)), _c((), ())],

    # --- the more elementwise ops and reductions (ops/elementwise.py, ops/reductions.py) ---
    "erf": _unary() + [_c((40,))],
    "gelu": _unary() + [_c((3, 4), approximate="tanh"), _c((), approximate="tanh"),
                        _c((2, 5), approximate="none")],
    "leaky_relu": _unary("away0") + [Case((F((3, 4), "away0"),), {"negative_slope": 0.2}),
                                     Case((F((5,), "away0"),), {"negative_slope": -1.5})],
    "elu": _unary("away0") + [Case((F((3, 4), "away0"),), {"alpha": 0.5}),
                              Case((F((2, 3), "away0"),), {"alpha": 2})],
    # threshold 0.5 with beta 2 puts the switch at x = 0.25, which away0 stays away from.
    "softplus": _unary() + [Case((F((3, 4), "away0"),), {"beta": 2.0, "threshold": 0.5}),
                            _c((2, 3), beta=0.5), _c((4,), beta=-1.5)],
    "clip": [Case((F((3, 4), "frac"),), {"min": -1, "max": 1}),
             Case((F((5,), "frac"),), {"min": 0}), Case((F((2, 3), "frac"),), {"max": 0.0}),
             Case((F((), "frac"),), {"min": -1.0, "max": 2.0}),
             Case((F((2, 1, 3), "frac"),), {"min": 1, "max": -1})],
    "where": [Case((L(4, 2), F((3, 4)), F((3, 4)))), Case((L(4, 2), F((4,)), F(()))),
              Case((L(3, 2), F((2, 1, 3)), F((1, 3)))), Case((L(1, 2), F((2, 3)), F((3,))))],
    "sign": _unary("away0"),
    "floor": _unary("frac"),
    "ceil": _unary("frac"),
    "prod": _reduction() + [_c((5,)), _c((2, 3, 4), axis=-2)],
    "var": _reduction()[:-1] + [_c((3, 4), axis=0, correction=0), _c((3, 4), axis=0, correction=2),
                                _c((2, 3, 4), axis=[0, 2], correction=0.5), _c((), correction=0),
                                _c((5,), correction=-1)],
    "std": _reduction()[:-1] + [_c((3, 4), axis=1, correction=0), _c((3, 4), correction=2),
                                _c((2, 3, 4), axis=[0, 2], keepdims=True, correction=0.5)],
    "norm": _reduction() + [
        Case((F((3, 4), "frac"),), {"ord": 1}), Case((F((3, 4), "frac"),), {"ord": 1, "axis": 0}),
        Case((F((2, 3, 4), "frac"),), {"ord": 1, "axis": [0, 2], "keepdims": True}),
        Case((F((3, 4), "frac"),), {"ord": "inf"}),
        Case((F((3, 4), "frac"),), {"ord": "inf", "axis": 1}),
        Case((F((2, 3, 4), "frac"),), {"ord": "inf", "axis": [-1, 0]}),
        Case((F((), "frac"),), {"ord": "inf"}), _c((3, 4), ord=2.0, axis=-1)],

    # --- the shape ops (ops/shape.py) ---
    # (0-d where the op takes it, batch 1, negative axes and steps, crops, 1 to 5 args of the
    # variadic concat/stack, gather's indices repeated: L(8, 5) draws 8 of 5 rows.)
    "flatten": [_c((2, 3, 4)), _c((2, 3, 4), start_axis=1), _c((), start_axis=-1),
                _c((2, 3, 4), start_axis=-2, end_axis=-1), _c((1, 5), end_axis=0),
                _c((3,))],
    "squeeze": [_c((3, 1, 4)), _c((1, 3, 1), axes=[-1]), _c((1, 1), axes=[0, 1]), _c((1,)),
                _c((2, 3), axes=[])],
    "unsqueeze": [_c((3, 4)), _c((3, 4), axes=[-1]), _c((), axes=[0, 1]),
                  _c((2, 3), axes=[1, -1]), _c((1,), axes=[0])],
    "expand": [_c((3,), shape=[2, 3]), _c((2, 1), shape=[2, 4]), _c((), shape=[3, 2]),
               _c((1, 3), shape=[2, 1, 1]), _c((3, 4), shape=[1]), _c((1, 1), shape=[1, 1])],
    "concat": [_c((2, 3), (2, 3)), _c((2, 3), (2, 1), (2, 4), axis=1),
               _c((2, 3), (1, 3), (3, 3), (2, 3), (1, 3)), _c((4,)),
               _c((2, 1, 3), (2, 2, 3), axis=-2), _c((1, 2), (1, 2), axis=-1)],
    "stack": [_c((3,), (3,)), _c((2, 3), (2, 3), (2, 3), axis=-1), _c((), (), ()),
              _c((2, 2), axis=1), _c((1, 3), (1, 3), (1, 3), (1, 3), (1, 3), axis=2)],
    "slice": [_c((5, 4), starts=[1], ends=[4]),
              _c((5, 4), starts=[-1, 3], ends=[-6, -100], axes=[0, 1], steps=[-2, -1]),
              _c((6,), starts=[1], ends=[100], steps=[2]),
              _c((2, 3, 4), starts=[0, 1], ends=[1, 3], axes=[-1, 1]),
              _c((1, 4), starts=[0], ends=[1], axes=[0]), _c(()),
              _c((5,), starts=[4], ends=[-100], steps=[-1]),
              _c((4, 6), starts=[-3], ends=[2**53], axes=[-1], steps=[3])],
    "pad": [_c((3, 4), pads=[1, 0, 2, 1]), _c((3, 4), pads=[0, -1, 1, -2], value=2.5),
            _c((5,), pads=[2, 3], value=-1), _c((2, 3, 2), pads=[1, 0, 0, 0, 2, 1]), _c(()),
            _c((1, 1), pads=[0, 0, 0, 0]), _c((4,), pads=[-4, 1])],
    "gather": [Case((F((5, 3)), L(4, 5))), Case((F((5, 3)), L(8, 5))),
               Case((F((3, 5)), L(6, 5)), {"axis": 1}),
               Case((F((2, 3, 4)), L(7, 4)), {"axis": -1}),
               Case((F((1, 2)), L(3, 1))), Case((F((4,)), L(1, 4)))],

    # --- the neural-net ops: convolution, pooling, normalization (ops/cnn.py) ---
    "conv2d": _CONV2D,
    "max_pool2d": _pools("grid0") + [_c(F((1, 2, 4, 4), "grid0"), kernel_size=3, stride=1)],
    "avg_pool2d": _pools() + [_c((1, 2, 5, 7), kernel_size=3, stride=2, padding=1,
                                 count_include_pad=False),
                              _c((2, 1, 5, 5), kernel_size=[2, 3], stride=[1, 2],
                                 padding=[1, 0, 0, 1], count_include_pad=False)],
    "global_avg_pool2d": [_c((2, 3, 4, 5)), _c((1, 1, 1, 1)), _c((1, 2, 3, 1))],
    "batch_norm": [_c((4, 3, 2, 2), (3,), (3,), (3,), F((3,), "pos")),
                   _c((5, 2), (2,), (2,), (2,), F((2,), "pos"), epsilon=1e-3),
                   _c((1, 3, 3, 1), (3,), (3,), (3,), F((3,), "pos")),
                   _c((2, 2, 3), (2,), (2,), (2,), F((2,), "pos"), epsilon=0.0)],
    "batch_norm_train": [_c((4, 3, 2, 2), (3,), (3,)), _c((6, 2), (2,), (2,)),
                         _c((1, 3, 3, 3), (3,), (3,), epsilon=1e-3), _c((3, 2, 5), (2,), (2,))],
    "layer_norm": [_c((3, 4), (4,), (4,)), _c((2, 3, 4), (3, 4), (3, 4), axis=1),
                   _c((2, 3, 4), (3, 4), (3, 4), axis=-2, epsilon=1e-3),
                   _c((5,), (5,), (5,), axis=0), _c((2, 3, 4), (2, 3, 4), (2, 3, 4), axis=0),
                   _c((1, 1, 3), (3,), (3,))],
    "dropout": [_c((3, 4)), _c((3, 4), p=0.3, seed=5, training=True), _c((), training=True),
                _c((2, 3, 4), seed=1, training=True), _c((2, 2), p=1.0, training=True),
                _c((4,), p=0.0, seed=3, training=True), _c((2, 3), p=0.9, training=False)],
}

CASES = [pytest.param(name, i, case, id=f"{name}-{i}-{case!r}")
         for name, cases in DOMAINS.items() for i, case in enumerate(cases)]


def test_every_op_has_a_domain() -> None:
    assert set(REGISTRY.names()) - set(DOMAINS) == set(), "ops without test domains"
    assert set(DOMAINS) - set(REGISTRY.names()) == set(), "domains of unknown ops"
    assert all(DOMAINS.values()), "an op with an empty case list"


def test_records_bind_to_the_registry_ops() -> None:
    """Each category module's records, bound to the registry's namespace, are its ops: an
    ``OpDef`` field ``Op`` lacks (or the reverse) would be lost in ``bind``."""
    assert [f.name for f in dataclasses.fields(OpDef)] == \
        [f.name for f in dataclasses.fields(Op)]
    defs = list(records())
    names = [op.name for op in (*REGISTRY, *REGISTRY.internal_ops())]
    assert sorted(d.name for d in defs) == sorted(names)
    for d in defs:
        assert isinstance(d, OpDef), d
        op = d.bind(REGISTRY.xp)
        assert op.vjps == d.vjps and op.shape == d.shape and op.doc == REGISTRY.op(d.name).doc
        assert callable(op.forward) and op.forward is not d.forward, d.name


# --- values -------------------------------------------------------------------------------


def _values(rng: np.random.Generator, arg: F, which: int) -> np.ndarray:
    shape, n = arg.shape, int(np.prod(arg.shape, dtype=int))
    if arg.domain == "real":
        v = rng.standard_normal(n)
    elif arg.domain == "pos":
        v = rng.uniform(0.5, 2.0, n)
    elif arg.domain == "away0":
        v = rng.choice([-1.0, 1.0], n) * rng.uniform(0.3, 1.5, n)
    elif arg.domain in ("grid0", "grid1"):
        offset = 0.2 if arg.domain == "grid1" else 0.0
        v = (rng.permutation(n) - n / 2) * 0.4 + offset + rng.uniform(-0.03, 0.03, n)
    elif arg.domain == "frac":
        v = rng.choice([-1.0, 1.0], n) * (rng.permutation(n) + rng.uniform(0.2, 0.8, n))
    else:  # pragma: no cover - a typo in the table
        raise AssertionError(arg.domain)
    return v.reshape(shape)


def _instance(name: str, i: int, case: Case) -> tuple[Any, dict[str, Any], list[str]]:
    """The one-node graph, its float64 input values and its differentiable input names."""
    rng = np.random.default_rng(1000 + 97 * i + sum(map(ord, name)))
    names = [f"a{k}" for k in range(len(case.args))]
    values: dict[str, Any] = {}
    floats = []
    for k, (n, arg) in enumerate(zip(names, case.args)):
        if isinstance(arg, L):
            values[n] = rng.integers(0, arg.classes, arg.batch)
        else:
            values[n] = _values(rng, arg, k)
            floats.append(n)
    spec = {
        "inputs": {n: {"shape": list(np.shape(values[n]))} for n in names},
        "nodes": [{"id": "out", "op": name, "args": names, "attrs": case.attrs}],
        "output": "out",
    }
    return compile_graph(graph_from_dict(spec), REGISTRY), values, floats


# --- the test -----------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "i", "case"), CASES)
def test_op(name: str, i: int, case: Case) -> None:
    op = REGISTRY.get(name)
    plan, values, floats = _instance(name, i, case)

    # Shape rule == the forward's actual shape.
    attrs = op.normalize_attrs(case.attrs)
    given = range(len(case.args))  # a variadic op's or an optional trailing arg's count
    arg_shapes = [np.shape(values[f"a{k}"]) for k in given]
    expected_shape = tuple(op.shape(*arg_shapes, **attrs))
    out = host(op.forward(*[dev(values[f"a{k}"]) for k in given], **attrs))
    assert out.shape == expected_shape
    assert out.dtype == np.float64

    # VJPs against finite differences of sum(upstream * f), float64.
    rng = np.random.default_rng(7 + i)
    upstream = None if expected_shape == () else rng.standard_normal(expected_shape)
    result = execute(plan, values, Query(upstream=upstream))
    assert result.output.shape == expected_shape
    assert set(result.gradients) == set(floats)
    weights = np.ones(()) if upstream is None else upstream

    for n in floats:
        def objective(x: np.ndarray, n: str = n) -> float:
            out = forward(plan, {**values, n: x})
            return float(np.sum(weights * out))

        numeric = numeric_grad(objective, values[n])
        analytic = result.gradients[n]
        assert analytic.shape == np.shape(values[n])
        assert analytic.dtype == np.float64
        assert_grad_close(analytic, numeric, f"d{name}/d{n}")


@pytest.mark.parametrize(("name", "i", "case"), CASES)
def test_op_float32(name: str, i: int, case: Case) -> None:
    """float32 in, float32 out: every raw forward value and gradient, not just the cast."""
    plan, values, floats = _instance(name, i, case)
    v32 = {n: (v.astype(np.float32) if n in floats else v) for n, v in values.items()}
    exe = plan.specialize({n: np.shape(v) for n, v in v32.items()}, tuple(floats),
                          keep_values=True)
    vals = exe.forward(dev_values(v32), F32)  # the run's precision (the constants' too)
    out = vals[exe.output_slot]
    assert host(out).dtype == np.float32, "forward"
    seed = np.random.default_rng(3).standard_normal(exe.output_shape).astype(np.float32)
    vals = exe.backward(vals, dev(seed))
    constant = all(v is None for v in REGISTRY.get(name).vjps)  # sign, floor, ceil
    for n in floats:
        g = exe.gradient(vals, n)
        if constant:  # no backward graph: the answer's zeros (checked below) are made in dtype
            assert g is None, f"gradient of {n}"
            continue
        assert g is not None and host(g).dtype == np.float32, f"gradient of {n}"

    result = execute(plan, v32, Query(upstream=None if exe.output_shape == () else seed,
                                      dtype="float32"))
    assert result.output.dtype == np.float32
    reference = execute(plan, values, Query(upstream=None if exe.output_shape == () else seed))
    np.testing.assert_allclose(result.output, reference.output, rtol=1e-4, atol=1e-5)
    for n in floats:
        assert result.gradients[n].dtype == np.float32
        np.testing.assert_allclose(result.gradients[n], reference.gradients[n],
                                   rtol=1e-3, atol=1e-4)


# --- gradient conventions at kinks and ties (docs/api.md §3) -----------------------------------


def _grads(text: str, values: dict[str, Any], upstream: Any = None) -> dict[str, np.ndarray]:
    from service.engine import parse_expression

    plan = compile_graph(parse_expression(text, REGISTRY).graph, REGISTRY)
    return execute(plan, values, Query(upstream=upstream)).gradients


def test_relu_gradient_at_zero_is_zero() -> None:
    g = _grads("sum(relu(x))", {"x": np.array([-1.0, 0.0, 2.0])})["x"]
    assert g.tolist() == [0.0, 0.0, 1.0]
    assert _grads("relu(x)", {"x": 0.0})["x"] == 0.0


def test_abs_gradient_at_zero_is_zero() -> None:
    g = _grads("sum(abs(x))", {"x": np.array([-2.0, 0.0, 3.0])})["x"]
    assert g.tolist() == [-1.0, 0.0, 1.0]


@pytest.mark.parametrize("op", ["maximum", "minimum"])
def test_elementwise_ties_split_evenly(op: str) -> None:
    x = np.array([1.0, 2.0, 3.0])
    y = np.array([1.0, 5.0, 0.0])
    g = _grads(f"sum({op}(x, y))", {"x": x, "y": y})
    wins = (x > y) if op == "maximum" else (x < y)
    assert g["x"].tolist() == [0.5, *np.where(wins[1:], 1.0, 0.0)]
    assert g["y"].tolist() == [0.5, *np.where(wins[1:], 0.0, 1.0)]
    # A tie through broadcasting: y is used three times and collects every half.
    g = _grads(f"sum({op}(x, y))", {"x": np.array([2.0, 2.0, 2.0]), "y": 2.0})
    assert g["x"].tolist() == [0.5, 0.5, 0.5]
    assert g["y"] == 1.5
    # max(a, b) in an expression is the elementwise op.
    assert _grads(f"{op[:3]}(x, y)", {"x": 4.0, "y": 4.0}) == {"x": 0.5, "y": 0.5}


@pytest.mark.parametrize("op", ["max", "min"])
def test_reduction_ties_split_evenly(op: str) -> None:
    x = np.array([[3.0, 1.0, 3.0, 3.0], [-1.0, 0.0, -1.0, 2.0]])
    if op == "min":
        x = -x
    g = _grads(f"sum({op}(x, axis=1))", {"x": x})["x"]
    np.testing.assert_array_equal(g, [[1 / 3, 0, 1 / 3, 1 / 3], [0, 0, 0, 1]])
    g = _grads(f"{op}(x)", {"x": x})["x"]
    np.testing.assert_array_equal(g, [[1 / 3, 0, 1 / 3, 1 / 3], [0, 0, 0, 0]])
    g = _grads(f"{op}(x, axis=0, keepdims=True)", {"x": np.ones((2, 2))},
               upstream=np.array([[2.0, 4.0]]))["x"]
    np.testing.assert_array_equal(g, [[1.0, 2.0], [1.0, 2.0]])


def test_pow_gradient_conventions_at_zero() -> None:
    # d/dx x**0 = 0 even at x = 0 (no 0 * inf); d/dy 0**y = 0 for y >= 0 (no log 0).
    g = _grads("pow(x, y)", {"x": 0.0, "y": 0.0})
    assert g == {"x": 0.0, "y": 0.0}
    g = _grads("x ** y", {"x": 0.0, "y": 2.0})
    assert g == {"x": 0.0, "y": 0.0}


# --- empty tensors ------------------------------------------------------------------------


def _zero_size_variants() -> list[Any]:
    out = []
    for name, cases in DOMAINS.items():
        for i, case in enumerate(cases):
            for k, arg in enumerate(case.args):
                if isinstance(arg, L):
                    continue
                for d in range(len(arg.shape)):
                    shape = arg.shape[:d] + (0,) + arg.shape[d + 1:]
                    args = case.args[:k] + (F(shape),) + case.args[k + 1:]
                    out.append(pytest.param(name, Case(args, case.attrs),
                                            id=f"{name}-{i}-a{k}{shape}"))
    return out


@pytest.mark.parametrize(("name", "case"), _zero_size_variants())
def test_zero_size_arguments_work_or_are_graph_errors(name: str, case: Case) -> None:
    """An empty tensor either runs (empty gradients) or is a 422, never a NumPy error."""
    names = [f"a{k}" for k in range(len(case.args))]
    values = {n: (np.zeros(a.batch, dtype=int) if isinstance(a, L) else np.ones(a.shape))
              for n, a in zip(names, case.args)}
    spec = {"inputs": {n: {} for n in names},
            "nodes": [{"id": "out", "op": name, "args": names, "attrs": case.attrs}],
            "output": "out"}
    plan = compile_graph(graph_from_dict(spec), REGISTRY)
    try:
        exe = plan.specialize({n: np.shape(v) for n, v in values.items()}, ())
    except GraphError as exc:
        assert exc.node == "out"
        return
    upstream = np.ones(exe.output_shape)
    for options in ({}, {"trace": True}, {"jacobian": True}, {"check": True}):
        result = execute(plan, values, Query(upstream=upstream, **options))
        for n, g in result.gradients.items():
            assert g.shape == values[n].shape
