"""Engine errors: the engine's words by default (what /v1 answers), a flow's when reworded."""

from __future__ import annotations

import numpy as np
import pytest

from service import errors as service_errors
from service.engine import REGISTRY, Query, compile_graph, errors, execute, parse_expression
from service.engine.errors import Detail, LimitExceeded, Ref, Unprocessable

OIP = {"upstream": "input 'grad:output'", "jacobian": "output 'output'"}


def test_the_service_reexports_the_engine_classes() -> None:
    for name in errors.__all__:
        assert getattr(service_errors, name) is getattr(errors, name), name
    for name in ("Unauthorized", "RequestTimeout", "UnsupportedMediaType"):
        assert issubclass(getattr(service_errors, name), errors.ProblemError)
        assert not hasattr(errors, name)


def test_a_detail_renders_references_bare_or_quoted() -> None:
    d = Detail("{upstream}: send {upstream!q}, or {jacobian!q}; {field} {name!q} {n:,}",
               field=Ref("hvp"), name="x", n=12345)
    assert d.render() == "upstream: send 'upstream', or 'jacobian'; hvp 'x' 12,345"
    assert d.render(OIP) == ("input 'grad:output': send input 'grad:output', or "
                             "output 'output'; hvp 'x' 12,345")
    assert d.mentions == {"upstream", "jacobian", "hvp"}
    # A value is never parsed as a template.
    assert Detail("{values}: {name!q}", name="{upstream}").render(OIP) == "values: '{upstream}'"


def test_reword_changes_detail_args_and_loc() -> None:
    err = Unprocessable(Detail("{upstream}: must be numeric"), loc=("upstream",))
    assert (err.detail, str(err), err.loc) == ("upstream: must be numeric",) * 2 + (
        ("upstream",),)
    assert err.reword(OIP, locs={"upstream": ("inputs", "grad:output")}) is err
    assert err.detail == str(err) == "input 'grad:output': must be numeric"
    assert err.loc == ("inputs", "grad:output")
    assert err.problem()["errors"] == [{"loc": ["inputs", "grad:output"], "msg": err.detail}]


def test_reword_leaves_plain_and_edited_details() -> None:
    plain = LimitExceeded("max_flops", 1, 2, "work", loc=("jacobian",))
    before = plain.detail
    plain.reword(OIP, locs={"jacobian": ("outputs",)})
    assert plain.detail == before and plain.loc == ("outputs",) and plain.mentions == set()
    edited = Unprocessable(Detail("{upstream}: must be numeric"), loc=("upstream",))
    edited.detail += " (in `x`)"
    edited.reword(OIP)
    assert edited.detail == "upstream: must be numeric (in `x`)"


def test_an_engine_message_in_oip_words() -> None:
    plan = compile_graph(parse_expression("W @ x", REGISTRY).graph, REGISTRY)
    values = {"W": np.ones((2, 3)), "x": np.ones(3)}
    with pytest.raises(Unprocessable) as info:
        execute(plan, values)
    err = info.value
    assert err.detail == (
        "upstream: the output has shape (2,), not a scalar; send 'upstream' (dL/d(output), "
        "the same shape) for gradients or a trace, or ask for 'jacobian' alone")
    assert err.mentions == {"upstream", "jacobian"}
    err.reword(OIP)
    assert err.detail == (
        "input 'grad:output': the output has shape (2,), not a scalar; send input "
        "'grad:output' (dL/d(output), the same shape) for gradients or a trace, or ask for "
        "output 'output' alone")
    with pytest.raises(Unprocessable) as info:
        execute(plan, values, Query(upstream=np.ones(3)))
    assert info.value.reword(OIP).detail == (
        "input 'grad:output': shape (3,) differs from the output's (2,)")
