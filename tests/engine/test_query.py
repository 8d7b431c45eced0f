"""Query: the one request spec of execute; is_plain is the one fast-path test."""

from __future__ import annotations

import dataclasses
import inspect

import numpy as np
import pytest

from service.engine import REGISTRY, Query, compile_graph, execute, parse_expression
from service.engine.query import PLAIN

OPTIONS = {"upstream": np.ones(2), "tangents": {"x": 1.0}, "hvp": {"x": 1.0},
           "jacobian": True, "hessian": True, "trace": True, "trace_backward": True,
           "check": True, "fetch": ("f",), "batched": ("x",), "per_example": True,
           "directions": 2}


def test_the_constructor_defaults_are_the_fields_defaults() -> None:
    params = inspect.signature(Query.__init__).parameters
    init_fields = [f for f in dataclasses.fields(Query) if f.init]
    assert [f.name for f in init_fields] == [p for p in params if p != "self"]
    for f in init_fields:
        assert params[f.name].default == f.default, f.name
    assert PLAIN == Query() and PLAIN.is_plain


def test_every_field_is_stored_where_it_belongs() -> None:
    values = {"wrt": ("x",), **OPTIONS, "dtype": "float32"}
    q = Query(**values)
    for name, value in values.items():
        assert getattr(q, name) is value, name
    with pytest.raises(dataclasses.FrozenInstanceError):
        q.wrt = ()  # type: ignore[misc]


def test_wrt_and_fetch_are_tuples() -> None:
    q = Query(wrt=["x", "y"], fetch=["f"])
    assert q.wrt == ("x", "y") and q.fetch == ("f",)
    assert Query(wrt=None).wrt is None and Query(wrt=[]).wrt == ()
    assert Query(wrt=["x"]) == Query(wrt=("x",))


def test_is_plain_is_false_for_every_option_but_wrt_and_dtype() -> None:
    assert Query(wrt=["x"], dtype="float32").is_plain
    assert Query(wrt=[]).is_plain
    for name, value in OPTIONS.items():
        q = Query(**{name: value})
        assert not q.is_plain, name
        assert dataclasses.replace(q, **{name: getattr(PLAIN, name)}).is_plain, name
    # An empty direction mapping is still an option (the general path answers it).
    assert not Query(tangents={}).is_plain and not Query(hvp={}).is_plain


def test_tensor_fields_are_marked() -> None:
    kinds = {f.name: f.metadata.get("tensor") for f in dataclasses.fields(Query)}
    assert {n: k for n, k in kinds.items() if k} == {
        "upstream": "one", "tangents": "map", "hvp": "map", "loss": "loss"}


def test_execute_takes_the_query() -> None:
    plan = compile_graph(parse_expression("sum(x * y)", REGISTRY).graph, REGISTRY)
    values = {"x": np.array([1.0, 2.0]), "y": np.array([3.0, 4.0])}
    r = execute(plan, values, Query(wrt=["x"], trace=True))
    assert list(r.gradients) == ["x"] and r.trace is not None
    assert execute(plan, values).gradients.keys() == {"x", "y"}
