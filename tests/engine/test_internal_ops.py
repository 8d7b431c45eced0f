"""The internal ops (the ones VJP rules build backward graphs from) on their own: each VJP
against central differences in float64, and each mask's derivative zero where it exists.

They are hidden from user graphs, so each is made visible for one test by adding it to the
registry's public table. ``INTERNAL`` must name every internal op in the registry: a new
one without a case here fails :func:`test_every_internal_op_has_a_case`. (They are also
differentiated, indirectly, by every higher-order test: an HVP runs the VJP rules' graphs
backwards.)
"""

from __future__ import annotations

import numpy as np
import pytest

from service.engine import REGISTRY, Query, execute
from tests.engine.numeric import assert_grad_close, forward, numeric_grad
from tests.engine.test_ops import Case, F, L, _instance

INTERNAL: dict[str, list[Case]] = {
    # differentiable
    "select": [Case((F((4,), "away0"), F((4,)), F((4,)))),
               Case((F((2, 1), "away0"), F((2, 3)), F(())))],
    "broadcast_to": [Case((F((3,)),), {"shape": [2, 3]}), Case((F(()),), {"shape": [2, 2]}),
                     Case((F((2, 1)),), {"shape": [2, 4]})],
    "sum_to": [Case((F((2, 3)),), {"shape": [3]}), Case((F((2, 3)),), {"shape": [2, 1]}),
               Case((F((4,)),), {"shape": []})],
    "contract": [Case((F((2, 3)), F((3, 4))), {"spec": "xy,yz->xz"}),
                 Case((F((3,)), F((3,))), {"spec": "x,x->"}),
                 Case((F((2, 3)), F((4,))), {"spec": "xy,z->xyz"})],
    # the shape ops' adjoints (ops/indexing.py): g into zeros at a slice (negative steps
    # too), g's rows added at gather's indices (L(6, 2): repeated indices summing)
    "unslice": [Case((F((2, 3)),), {"shape": [4, 3], "starts": [1], "ends": [3]}),
                Case((F((2,)),), {"shape": [5], "starts": [4], "ends": [0], "steps": [-3]}),
                Case((F((2, 2)),), {"shape": [3, 4], "starts": [-1, 1], "ends": [-4, 4],
                                    "axes": [0, -1], "steps": [-2, 2]})],
    "scatter_add": [Case((F((4, 3)), L(4, 5)), {"shape": [5, 3]}),
                    Case((F((3, 6)), L(6, 2)), {"shape": [3, 2], "axis": 1}),
                    Case((F((2, 5, 2)), L(5, 3)), {"shape": [2, 3, 2], "axis": -2})],
    # masks: piecewise constant, values kept away from their steps
    "is_positive": [Case((F((5,), "away0"),))],
    "is_nonzero": [Case((F((5,), "away0"),))],
    "in_bounds": [Case((F((6,), "frac"),), {"min": -1.0, "max": 1.0}),
                  Case((F((2, 3), "frac"),), {"min": 0.0}), Case((F((4,), "frac"),), {"max": 1.0})],
    "pow_zero_base": [Case((F((4,), "pos"), F((4,))))],
    "max_share": [Case((F((5,), "grid0"), F((5,), "grid1")))],
    # o is x's extreme (as the VJP rules build it): the mask sits on its own step there, so
    # only its zero gradient is checked, and its shares (each row's add up to 1).
    "extreme_share": [Case((F((2, 3), "grid0"), F((2, 1))), {"axis": 1})],
    "onehot": [Case((L(4, 3), F((4, 3))))],
    "hinge_active": [Case((F((4, 3), "grid0"), L(4, 3)), {"margin": 1.0})],
    # the neural-net ops' gradients (ops/cnn.py, ops/norms.py); "shape" is the result's
    "conv2d_input_grad": [
        Case((F((2, 4, 3, 3)), F((4, 3, 3, 3))), {"shape": [2, 3, 5, 5]}),
        Case((F((1, 4, 3, 4)), F((4, 1, 2, 3))),
             {"shape": [1, 2, 6, 5], "stride": [2, 1], "padding": [1, 0, 0, 1], "groups": 2}),
        Case((F((1, 2, 2, 3)), F((2, 2, 3, 2))),
             {"shape": [1, 2, 7, 6], "stride": 3, "dilation": [2, 1], "padding": 1})],
    "conv2d_weight_grad": [
        Case((F((2, 3, 5, 5)), F((2, 4, 3, 3))), {"shape": [4, 3, 3, 3]}),
        Case((F((1, 2, 6, 5)), F((1, 4, 3, 4))),
             {"shape": [4, 1, 2, 3], "stride": [2, 1], "padding": [1, 0, 0, 1], "groups": 2}),
        Case((F((1, 2, 7, 6)), F((1, 2, 2, 3))),
             {"shape": [2, 2, 3, 2], "stride": 3, "dilation": [2, 1], "padding": 1})],
    "max_pool2d_grad": [
        Case((F((2, 2, 4, 4), "grid0"), F((2, 2, 2, 2))), {"kernel_size": 2}),
        Case((F((1, 2, 5, 4), "grid0"), F((1, 2, 3, 2))),
             {"kernel_size": 3, "stride": 2, "padding": 1})],
    "max_pool2d_gather": [
        Case((F((2, 2, 4, 4), "grid0"), F((2, 2, 4, 4))), {"kernel_size": 2}),
        Case((F((1, 2, 5, 4), "grid0"), F((1, 2, 5, 4))),
             {"kernel_size": 3, "stride": [1, 2], "padding": [1, 0, 1, 1]})],
    "avg_pool2d_grad": [
        Case((F((2, 2, 2, 2)),), {"kernel_size": 2, "shape": [2, 2, 4, 5]}),
        Case((F((1, 2, 3, 2)),), {"kernel_size": 3, "stride": 2, "padding": 1,
                                  "count_include_pad": False, "shape": [1, 2, 5, 4]})],
    "standardize": [Case((F((3, 4)),), {"axis": [1]}), Case((F((2, 3, 2)),), {"axis": [0, 2]}),
                    Case((F((2, 3)),), {"epsilon": 0.1})],
    "inv_std": [Case((F((3, 4)),), {"axis": [1]}), Case((F((2, 3, 2)),), {"axis": [0, 2]})],
}

CASES = [pytest.param(name, i, case, id=f"{name}-{i}-{case!r}")
         for name, cases in INTERNAL.items() for i, case in enumerate(cases)]


def test_every_internal_op_has_a_case() -> None:
    names = {op.name for op in REGISTRY.internal_ops()}
    assert names - set(INTERNAL) == set(), "internal ops without cases"
    assert set(INTERNAL) - names == set(), "cases of ops that are not internal"


@pytest.mark.parametrize(("name", "i", "case"), CASES)
def test_internal_op(name: str, i: int, case: Case, monkeypatch: pytest.MonkeyPatch) -> None:
    op = REGISTRY.op(name)
    monkeypatch.setitem(REGISTRY._ops, name, op)  # visible to graph_from_dict's registry
    at_step = name == "extreme_share"
    plan, values, floats = _instance(name, i, case)  # test_ops' values for the case
    names = list(values)
    if at_step:  # o is x's extreme, as the VJP rules build it
        values["a1"] = np.max(values["a0"], axis=1, keepdims=True)
    rng = np.random.default_rng(7 + i)
    out_shape = tuple(op.shape(*[np.shape(values[n]) for n in names],
                               **op.normalize_attrs(case.attrs)))
    upstream = None if out_shape == () else rng.standard_normal(out_shape)
    result = execute(plan, values, Query(upstream=upstream))
    assert result.output.shape == out_shape
    if at_step:
        np.testing.assert_allclose(np.sum(result.output, axis=1), 1.0)
    weights = np.ones(()) if upstream is None else upstream
    for k, n in enumerate(names):
        if n not in floats:
            continue

        def objective(x: np.ndarray, n: str = n) -> float:
            return float(np.sum(weights * forward(plan, {**values, n: x})))

        analytic = result.gradients[n]
        assert analytic.shape == np.shape(values[n])
        if op.vjps[k] is None:  # a mask, or a mask argument: no gradient, and none due
            assert not np.any(analytic), f"d{name}/d{n}"
        if not at_step:
            assert_grad_close(analytic, numeric_grad(objective, values[n]), f"d{name}/d{n}")
