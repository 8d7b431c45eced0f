"""The all-scalar path of ``execute`` and of the v1 gradients flow against the general path.

A request with no options whose values are all scalars skips the per-request bookkeeping
(``executor._execute_scalars``, ``GradientsFlow``'s plain path); it must answer exactly what
the general path answers: the same bits, dtypes and types, the same warnings, the same
errors. The general path is forced here by patching the two entry points to decline.
On a backend other than NumPy the scalar path must never be taken.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import GradientRequest
from service.config import load_settings
from service.engine import (
    REGISTRY,
    Query,
    compile_graph,
    execute,
    executor,
    graph_from_dict,
    parse_expression,
)
from service.engine.limits import DEFAULT_LIMITS, Deadline, Limits
from service.errors import ProblemError
from service.flows import driver
from service.flows import gradients as gradients_flow
from service.flows.driver import Env, run_plan
from service.flows.gradients import GradientsFlow
from service.store.cache import GraphCache, alias_key

NUMPY = REGISTRY.scalars and REGISTRY.xp is np  # the only backend with a scalar path
DTYPES = ("float64", "float32")

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


def _takes_scalars(op: Any) -> bool:
    """A public op whose shape rule maps 0-d float arguments to a 0-d result (default attrs)."""
    if "label" in op.arg_kinds:
        return False
    try:
        return tuple(op.shape(*[()] * op.arity, **op.normalize_attrs({}))) == ()
    except Exception:  # noqa: BLE001 - any refusal means: not a scalar op
        return False


SCALAR_OPS = [op.name for op in REGISTRY if _takes_scalars(op)]


# --- running both paths -------------------------------------------------------------------


def _execute(plan: Any, values: Any, *, limits: Limits = DEFAULT_LIMITS,
             deadline: Deadline | None = None, **options: Any) -> Any:
    """``execute`` for a case written as keywords: the Query's options, limits, deadline."""
    return execute(plan, values, Query(**options), limits=limits, deadline=deadline)


@contextmanager
def general_path() -> Iterator[None]:
    """Both scalar entry points decline: everything runs the general path."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(executor, "_execute_scalars", lambda *a, **k: None)
        mp.setattr(gradients_flow, "_scalar_values", lambda *a, **k: False)
        yield


@contextmanager
def counting() -> Iterator[list[int]]:
    """Counts the runs of the scalar path (its step loop)."""
    calls: list[int] = []
    real = executor._run_scalars

    def spy(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(executor, "_run_scalars", spy)
        yield calls


def _outcome(fn: Any) -> tuple[str, Any, list[tuple[Any, str]]]:
    """("ok", value) or ("error", (type, problem body, loc)), with the warnings raised."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            out: tuple[str, Any] = ("ok", fn())
        except ProblemError as exc:
            out = ("error", (type(exc), exc.status, exc.detail, exc.loc, exc.problem()))
    return (*out, [(w.category, str(w.message)) for w in caught])


def _both(fn: Any) -> tuple[Any, Any, int]:
    """(scalar-path outcome, general-path outcome, scalar-path runs)."""
    with counting() as calls:
        fast = _outcome(fn)
    with general_path():
        slow = _outcome(fn)
    return fast, slow, len(calls)


def _same_tensor(a: Any, b: Any, what: str) -> None:
    assert type(a) is type(b), (what, type(a), type(b))
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape, (what, a.dtype, b.dtype)
    assert a.tobytes() == b.tobytes(), (what, a, b)  # bit for bit, NaN payloads too


def _same_result(fast: Any, slow: Any) -> None:
    assert fast[0] == slow[0], (fast, slow)
    # (Elsewhere both runs take the general path, whose first run of a float32 executable
    # may warn once as it converts and caches the constants; the second does not.)
    assert fast[2] == slow[2] or not NUMPY, "warnings differ"
    if fast[0] == "error":
        assert fast[1] == slow[1]
        return
    rf, rs = fast[1], slow[1]
    _same_tensor(rf.output, rs.output, "output")
    assert list(rf.gradients) == list(rs.gradients)
    for name in rf.gradients:
        _same_tensor(rf.gradients[name], rs.gradients[name], f"gradients.{name}")
    for field in ("jacobians", "trace", "trace_backward", "check", "hvp_check", "fetched",
                  "jvp", "hvp", "hessian"):
        assert getattr(rf, field) is None and getattr(rs, field) is None, field


# --- (1) random scalar graphs ---------------------------------------------------------------

CONSTANTS = [0.0, 0.5, -1.5, 2.0, 3.0, 1e300, -1e-310]
FLOATS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.floats(-3.0, 3.0),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e308, 3.5e38, 1e-45, 5e-324]),
)


@st.composite
def scalar_values(draw: Any) -> Any:
    """One scalar in each form a caller may give: float, int, np.float64, 0-d arrays."""
    x = draw(FLOATS)
    form = draw(st.sampled_from(["float", "int", "np64", "arr64", "arr32"]))
    if form == "int":
        return draw(st.integers(-(2**53), 2**53))
    if form == "np64":
        return np.float64(x)
    if form == "arr64":
        return np.asarray(x, dtype=np.float64)
    if form == "arr32":
        with np.errstate(all="ignore"):
            return np.asarray(x, dtype=np.float32)
    return x


@st.composite
def scalar_dags(draw: Any) -> tuple[dict[str, Any], list[str]]:
    """A graph over scalar ops, constants and 1-4 scalar inputs (declared 0-d or not, maybe
    one unused), and its input names."""
    inputs = [f"x{i}" for i in range(draw(st.integers(1, 4)))]
    names = list(inputs)
    nodes: list[dict[str, Any]] = []
    for i in range(draw(st.integers(1, 10))):
        op = REGISTRY.get(draw(st.sampled_from(SCALAR_OPS)))
        pool = list(dict.fromkeys(names[-4:] + inputs))
        args: list[Any] = []
        for _ in range(op.arity):
            if draw(st.integers(0, 4)) == 0:
                args.append(draw(st.sampled_from(CONSTANTS)))
            else:
                args.append(draw(st.sampled_from(pool)))
        if not any(isinstance(a, str) for a in args):
            args[0] = draw(st.sampled_from(pool))
        nodes.append({"id": f"n{i}", "op": op.name, "args": args})
        names.append(f"n{i}")
    used = {a for n in nodes for a in n["args"] if isinstance(a, str)}
    output = names[-1]
    for nid in names[len(inputs):-1]:  # every node joins the output
        if nid not in used:
            nodes.append({"id": f"j{nid}", "op": "add", "args": [output, nid]})
            output = f"j{nid}"
    decl = {n: ({"shape": []} if draw(st.booleans()) else {}) for n in inputs}
    if draw(st.integers(0, 5)) == 0:
        decl["unused"] = {}
        inputs.append("unused")
    return {"inputs": decl, "nodes": nodes, "output": output}, inputs


@SETTINGS
@given(dag=scalar_dags(), data=st.data(), dtype=st.sampled_from(DTYPES))
def test_random_scalar_graphs_match_general_path(dag: Any, data: Any, dtype: str) -> None:
    spec, inputs = dag
    plan = compile_graph(graph_from_dict(spec), REGISTRY)
    values = {n: data.draw(scalar_values(), label=n) for n in inputs}
    wrt = data.draw(st.sampled_from([None, inputs[:1], inputs[::-1]]), label="wrt")
    fast, slow, runs = _both(lambda: execute(plan, values, Query(wrt=wrt, dtype=dtype)))
    _same_result(fast, slow)
    assert fast[0] == "ok"
    assert runs == (1 if NUMPY else 0)


# --- (2) every op that takes scalars ---------------------------------------------------------

OP_VALUES = [(0.7, -1.3), (-2.5, 0.0), (0.0, 0.0), (3.0, 2.0), (800.0, -800.0),
             (-0.5, 0.5), (1e-320, 1e300), (math.inf, 1.0), (math.nan, 2.0)]


def test_the_op_table_is_not_empty() -> None:
    assert {"add", "div", "exp", "log", "sigmoid", "sum", "mse"} <= set(SCALAR_OPS)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op", SCALAR_OPS)
def test_every_scalar_op_matches_general_path(op: str, dtype: str) -> None:
    arity = REGISTRY.get(op).arity
    args = ["x", "y", "z"][:arity]
    plan = compile_graph(graph_from_dict({
        "inputs": {a: {} for a in args},
        "nodes": [{"id": "out", "op": op, "args": args}], "output": "out"}), REGISTRY)
    # The same op with a constant argument and behind another node (constants in dtype).
    mixed = compile_graph(graph_from_dict({
        "inputs": {"x": {}},
        "nodes": [{"id": "h", "op": "mul", "args": ["x", 1.5]},
                  {"id": "out", "op": op, "args": ["h", *[0.25] * (arity - 1)]}],
        "output": "out"}), REGISTRY)
    for pair in OP_VALUES:
        values = dict(zip(args, pair))
        for p, vals in ((plan, values), (mixed, {"x": pair[0]})):
            fast, slow, runs = _both(lambda p=p, vals=vals: execute(p, vals, Query(dtype=dtype)))
            _same_result(fast, slow)
            assert runs == (1 if NUMPY else 0), (op, pair)


# --- (3) errors --------------------------------------------------------------------------------

SIGMOID = "1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))"
LECTURE_VALUES = {"w0": 2.0, "x0": -1.0, "w1": -3.0, "x1": -2.0, "w2": -3.0}


def _expr_plan(text: str) -> Any:
    cache = GraphCache(REGISTRY, Limits(), store=None, l1_size=4)
    return cache.plan_for(alias_key("expr", text),
                          lambda: parse_expression(text, REGISTRY).graph)[0]


def _graph(inputs: dict[str, Any], nodes: list[dict[str, Any]], output: str) -> Any:
    return compile_graph(graph_from_dict({"inputs": inputs, "nodes": nodes,
                                          "output": output}), REGISTRY)


BAD_VALUES = {
    "unknown input": {**LECTURE_VALUES, "zz": 1.0},
    "missing value": {k: v for k, v in LECTURE_VALUES.items() if k != "w2"},
    "string": {**LECTURE_VALUES, "x0": "1.0"},
    "none": {**LECTURE_VALUES, "x0": None},
    "bool": {**LECTURE_VALUES, "x0": True},
    "huge int": {**LECTURE_VALUES, "x0": 2**70},
    "big int": {**LECTURE_VALUES, "x0": 2**60 + 1},
    "ragged": {**LECTURE_VALUES, "x0": [[1.0], [1.0, 2.0]]},
    "1-element list": {**LECTURE_VALUES, "x0": [1.0]},
    "object array": {**LECTURE_VALUES, "x0": np.asarray(None)},
    "int array": {**LECTURE_VALUES, "x0": np.asarray(3)},
    "1-element array": {**LECTURE_VALUES, "x0": np.ones(1)},
    "2-d array": {**LECTURE_VALUES, "x0": np.ones((2, 3))},
    "big-endian": {**LECTURE_VALUES, "x0": np.asarray(3.0, dtype=">f8")},
    "float16": {**LECTURE_VALUES, "x0": np.asarray(0.1, dtype=np.float16)},
    "np.float32": {**LECTURE_VALUES, "x0": np.float32(0.1)},
    "nan": {**LECTURE_VALUES, "x0": math.nan},
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(BAD_VALUES))
def test_unusual_values_answer_as_the_general_path(case: str, dtype: str) -> None:
    plan = _expr_plan(SIGMOID)
    fast, slow, _ = _both(lambda: execute(plan, BAD_VALUES[case], Query(dtype=dtype)))
    _same_result(fast, slow)


WRT_CASES = [None, [], ["w0"], ["w0", "w0", "x1"], ["nope"], ["w0", "nope"], "w0",
             ("x1", "w2")]


@pytest.mark.parametrize("wrt", WRT_CASES, ids=repr)
def test_wrt_answers_as_the_general_path(wrt: Any) -> None:
    plan = _expr_plan(SIGMOID)
    fast, slow, _ = _both(lambda: execute(plan, LECTURE_VALUES, Query(wrt=wrt)))
    _same_result(fast, slow)


def _graph_cases() -> dict[str, tuple[Any, dict[str, Any], dict[str, Any]]]:
    """name → (plan, values, execute kwargs)."""
    sig = _expr_plan(SIGMOID)
    declared = _graph({"x": {"shape": [2]}, "y": {}},
                      [{"id": "o", "op": "mul", "args": ["x", "y"]},
                       {"id": "s", "op": "sum", "args": ["o"]}], "s")
    labels = _graph({"s": {"shape": [1, 2]}, "y": {}},
                    [{"id": "l", "op": "softmax_cross_entropy", "args": ["s", "y"]}], "l")
    vector_out = _graph({"x": {}}, [{"id": "r", "op": "reshape", "args": ["x"],
                                     "attrs": {"shape": [1, 1]}}], "r")
    no_path = _graph({"x": {}, "y": {}}, [{"id": "r", "op": "relu", "args": [-2.0]},
                                          {"id": "o", "op": "mul", "args": ["x", "r"]}], "o")
    overflow = _expr_plan("exp(x) * y - exp(x)")
    return {
        "max_flops": (sig, LECTURE_VALUES, {"limits": Limits(max_flops=3)}),
        "max_memory_bytes": (sig, LECTURE_VALUES, {"limits": Limits(max_memory_bytes=16)}),
        "max_total_elements": (sig, LECTURE_VALUES, {"limits": Limits(max_total_elements=2)}),
        "deadline": (sig, LECTURE_VALUES, {"deadline": Deadline(at=0.0, seconds=1.0)}),
        "deadline not reached": (sig, LECTURE_VALUES, {"deadline": Deadline.after(60.0)}),
        "declared shape": (declared, {"x": 1.0, "y": 2.0}, {}),
        "label input": (labels, {"s": 1.0, "y": 0.0}, {}),
        "label input, right shapes": (labels, {"s": [[1.0, 2.0]], "y": [1]}, {}),
        "vector output": (vector_out, {"x": 1.0}, {}),
        "vector output, wrt []": (vector_out, {"x": 1.0}, {"wrt": []}),
        "input with no path": (no_path, {"x": 1.0, "y": 3.0}, {}),
        "overflow": (overflow, {"x": 800.0, "y": 0.0}, {}),
        "overflow float32": (overflow, {"x": 100.0, "y": 1e300}, {"dtype": "float32"}),
        "unknown dtype": (sig, LECTURE_VALUES, {"dtype": "float16"}),
    }


GRAPH_CASES = _graph_cases()


@pytest.mark.parametrize("case", list(GRAPH_CASES))
def test_graph_and_limit_cases_answer_as_the_general_path(case: str) -> None:
    plan, values, kwargs = GRAPH_CASES[case]
    if case == "unknown dtype":
        for ctx in (counting, general_path):
            with ctx(), pytest.raises(KeyError):
                _execute(plan, values, **kwargs)
        return
    fast, slow, _ = _both(lambda: _execute(plan, values, **kwargs))
    _same_result(fast, slow)


def test_a_limit_is_checked_again_for_other_limits() -> None:
    """The scalar path remembers the Limits object it passed, not that it passed once."""
    plan = _expr_plan(SIGMOID)
    execute(plan, LECTURE_VALUES)
    fast, slow, _ = _both(lambda: execute(plan, LECTURE_VALUES, limits=Limits(max_flops=3)))
    _same_result(fast, slow)
    assert fast[0] == "error" and "GRADSERVE_MAX_FLOPS=3" in fast[1][2]


# The v1 gradients flow: decode, response size, execute, encode.

def _flow_body(plan: Any, req: GradientRequest, settings_: Any) -> Any:
    """What the flow driver answers for ``req`` once its plan is resolved to ``plan``."""
    return run_plan(GradientsFlow(req), plan, "hit", Env(settings_, None))  # type: ignore

def _request(**fields: Any) -> GradientRequest:
    return GradientRequest.model_validate({"expression": SIGMOID, "values": LECTURE_VALUES,
                                           **fields})


REQUESTS = {
    "plain": ({}, {}),
    "float32": ({"dtype": "float32"}, {}),
    "b64": ({"encoding": "b64"}, {}),
    "b64 float32": ({"encoding": "b64", "dtype": "float32"}, {}),
    "wrt": ({"wrt": ["x1", "w0", "x1"]}, {}),
    "wrt []": ({"wrt": []}, {}),
    "wrt unknown": ({"wrt": ["nope"]}, {}),
    "int values": ({"values": {k: int(v) for k, v in LECTURE_VALUES.items()}}, {}),
    "big values": ({"values": {**LECTURE_VALUES, "x0": 1e308, "w0": 1e308}}, {}),
    "overflow to inf": ({"values": {**LECTURE_VALUES, "w2": 800.0}, "expression":
                         "exp(w0*x0 + w1*x1 + w2)"}, {}),
    "output inf, gradient finite": ({"expression": "exp(x) + y", "wrt": ["y"],
                                     "values": {"x": 800.0, "y": 1.0}}, {}),
    "unknown input": ({"values": {**LECTURE_VALUES, "zz": 1.0}}, {}),
    "missing value": ({"values": {k: v for k, v in LECTURE_VALUES.items() if k != "w0"}}, {}),
    "list value": ({"values": {**LECTURE_VALUES, "x0": [1.0]}}, {}),
    "flat value": ({"values": {**LECTURE_VALUES, "x0": {"shape": [], "data": [1.0]}}}, {}),
    "response too big": ({}, {"max_response_bytes": 700}),
    "response too big, unknown input": ({"values": {**LECTURE_VALUES, "zz": 1.0}},
                                        {"max_response_bytes": 700}),
    "max_flops": ({}, {"limits": Limits(max_flops=3)}),
}


@pytest.mark.parametrize("case", list(REQUESTS))
def test_gradients_flow_answers_as_the_general_path(case: str) -> None:
    fields, overrides = REQUESTS[case]
    req = _request(**fields)
    settings_ = load_settings(env={}, **overrides)
    plan = _expr_plan(req.expression)
    fast, slow, runs = _both(lambda: _flow_body(plan, req, settings_))
    assert fast[0] == slow[0] and (fast[2] == slow[2] or not NUMPY)
    if fast[0] == "error":
        assert fast[1] == slow[1]
    else:  # the same body, to the byte, as the service writes it
        opts = orjson.OPT_SERIALIZE_NUMPY
        assert orjson.dumps(fast[1], option=opts) == orjson.dumps(slow[1], option=opts)
        assert [type(v) for v in fast[1].values()] == [type(v) for v in slow[1].values()]


# --- (4) the scalar path is taken where it should be, and only there ----------------------


def test_scalar_path_taken_for_scalars_only() -> None:
    """On NumPy, for all-scalar plain requests; on any other backend, never."""
    plan = _expr_plan(SIGMOID)
    taken = {
        "floats": ({}, LECTURE_VALUES),
        "0-d arrays": ({}, {k: np.asarray(v) for k, v in LECTURE_VALUES.items()}),
        "float32": ({"dtype": "float32"}, LECTURE_VALUES),
        "wrt": ({"wrt": ["w0"]}, LECTURE_VALUES),
        "deadline": ({"deadline": Deadline.after(60.0)}, LECTURE_VALUES),
    }
    not_taken = {
        "1-element list": ({}, {**LECTURE_VALUES, "x0": [1.0]}),
        "1-element array": ({}, {**LECTURE_VALUES, "x0": np.ones(1)}),
        "trace": ({"trace": True}, LECTURE_VALUES),
        "trace_backward": ({"trace_backward": True}, LECTURE_VALUES),
        "jacobian": ({"jacobian": True}, LECTURE_VALUES),
        "check": ({"check": True}, LECTURE_VALUES),
        "hessian": ({"hessian": True}, LECTURE_VALUES),
        "upstream": ({"upstream": 2.0}, LECTURE_VALUES),
        "tangents": ({"tangents": {"w0": 1.0}}, LECTURE_VALUES),
        "hvp": ({"hvp": {"w0": 1.0}}, LECTURE_VALUES),
        "fetch": ({"fetch": ["%0"]}, LECTURE_VALUES) if "%0" in {
            n.id for n in plan.nodes} else ({"trace": True}, LECTURE_VALUES),
        "wrt []": ({"wrt": []}, LECTURE_VALUES),
    }
    for name, (kwargs, values) in {**taken, **not_taken}.items():
        with counting() as calls:
            # (a 1-element value makes a (1,) output: a 422 asking for an upstream)
            _outcome(lambda kwargs=kwargs, values=values: _execute(plan, values, **kwargs))
        assert len(calls) == (1 if name in taken and NUMPY else 0), name


def test_gradients_flow_skips_decoding_for_scalars_only() -> None:
    """Plain floats are never decoded (any backend binds them); the prepared run is NumPy's."""
    plan = _expr_plan(SIGMOID)
    settings_ = load_settings(env={})
    decoded: list[Any] = []
    real = gradients_flow.decode_tensor

    def spy(*args: Any, **kwargs: Any) -> Any:
        decoded.append(args[0])
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(gradients_flow, "decode_tensor", spy)
        mp.setattr(driver, "decode_tensor", spy)
        for fields, n_decoded, n_runs in [
                ({}, 0, 1),
                ({"dtype": "float32", "encoding": "b64"}, 0, 1),
                ({"values": {**LECTURE_VALUES, "x0": [1.0]}}, 5, 0),
                ({"trace": True}, 5, 0)]:
            decoded.clear()
            with counting() as calls:
                _outcome(lambda fields=fields: _flow_body(plan, _request(**fields), settings_))
            assert (len(decoded), len(calls)) == (n_decoded, n_runs if NUMPY else 0), fields


def test_a_prepared_run_on_numpy_only() -> None:
    plan = _expr_plan(SIGMOID)
    with counting() as calls:
        execute(plan, LECTURE_VALUES)
    assert len(calls) == (1 if NUMPY else 0)
    assert (executor._scalar_run(plan, None, "float64") is not None) is NUMPY


def test_prepared_runs_are_dropped_with_evicted_specializations() -> None:
    """A prepared run holds an executable: evicting specializations drops the runs, so the
    plan cache's byte count stays true."""
    plan = _expr_plan(SIGMOID)
    execute(plan, LECTURE_VALUES)
    assert plan.scalar_runs  # a run on NumPy; elsewhere the note that there is none
    plan.max_specializations = 1
    execute(plan, {**LECTURE_VALUES, "x0": [1.0, 2.0]}, Query(upstream=[1.0, 1.0]))
    assert not plan.scalar_runs
