"""Bounded fuzzing of the two parsers that read user bytes: the expression front-end and the
tensor decoder. Whatever the input, the only exceptions allowed out are ProblemErrors."""

from __future__ import annotations

import base64

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.tensors import B64Tensor, FlatTensor
from service.engine import REGISTRY, compile_graph, parse_expression
from service.errors import ProblemError
from service.flows.codec import decode_tensor

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])

TOKENS = ["x", "y", "W", "(", ")", "+", "-", "*", "/", "**", "@", ",", "=", ";", "\n", "1",
          "2.5", "1e308", "sum", "max", "exp", "log", "axis=0", "keepdims=True", "__class__",
          ".", "[", "]", "lambda", ":", "'s'", "import", "os", "-1", "softmax", "q", "  "]


@FUZZ
@given(st.lists(st.sampled_from(TOKENS), max_size=40))
def test_expression_tokens_never_crash(tokens):
    text = "".join(tokens)
    try:
        parsed = parse_expression(text, REGISTRY)
        compile_graph(parsed.graph, REGISTRY)
    except ProblemError:
        pass


@FUZZ
@given(st.text(max_size=200))
def test_expression_text_never_crashes(text):
    try:
        parse_expression(text, REGISTRY)
    except ProblemError:
        pass


NUMBERS = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=False, width=64),
                    st.booleans(), st.none(), st.text(max_size=3))
NESTED = st.recursive(NUMBERS, lambda inner: st.lists(inner, max_size=4), max_leaves=30)


@FUZZ
@given(NESTED)
def test_nested_tensors_never_crash(value):
    try:
        arr = decode_tensor(value, max_elements=10_000, loc=("values", "x"))
    except ProblemError:
        return
    assert arr.dtype == np.float64 and np.isfinite(arr).all()


@FUZZ
@given(st.lists(st.integers(0, 6), max_size=4), st.binary(max_size=64),
       st.sampled_from(["float32", "float64"]), st.booleans())
def test_b64_tensors_never_crash(shape, raw, dtype, mangle):
    text = base64.b64encode(raw).decode()
    if mangle:
        text = text[:-1] + "*"
    try:
        arr = decode_tensor(B64Tensor(shape=shape, dtype=dtype, b64=text), max_elements=1000,
                            loc=("values", "x"))
    except ProblemError:
        return
    assert arr.shape == tuple(shape)


@FUZZ
@given(st.lists(st.integers(0, 5), max_size=3), st.lists(NUMBERS, max_size=12))
def test_flat_tensors_never_crash(shape, data):
    try:
        arr = decode_tensor(FlatTensor(shape=shape, data=data), max_elements=1000,
                            loc=("values", "x"))
    except ProblemError:
        return
    assert arr.shape == tuple(shape)
