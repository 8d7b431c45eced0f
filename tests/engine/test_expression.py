"""The expression front-end (docs/api.md §2b): what it lowers to, what it refuses, and how fast."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from service.engine import REGISTRY, compile_graph, execute, parse_expression
from service.errors import GraphError, LimitExceeded


def _nodes(text: str) -> list[tuple[str, str, tuple[Any, ...], dict[str, Any]]]:
    graph = parse_expression(text, REGISTRY).graph
    return [(n.id, n.op, n.args, n.attr_dict) for n in graph.nodes]


def _run(text: str, **values: Any) -> Any:
    plan = compile_graph(parse_expression(text, REGISTRY).graph, REGISTRY)
    return execute(plan, values)


# --- what it lowers to --------------------------------------------------------------------


@pytest.mark.parametrize(("text", "op"), [
    ("a + b", "add"), ("a - b", "sub"), ("a * b", "mul"), ("a / b", "div"),
    ("a ** b", "pow"), ("a @ b", "matmul"),
])
def test_binary_operators(text: str, op: str) -> None:
    assert _nodes(text) == [("%1", op, ("a", "b"), {})]


def test_unary_operators_and_literals() -> None:
    assert _nodes("-x") == [("%1", "neg", ("x",), {})]
    assert _nodes("+x") == []  # unary plus is the value itself
    assert _nodes("x * -2") == [("%1", "mul", ("x", -2.0), {})]  # folded into the literal
    assert _nodes("x * 3 + 1.5e-1") == [("%1", "mul", ("x", 3.0), {}),
                                        ("%2", "add", ("%1", 0.15), {})]
    assert _nodes("-(-x)") == [("%1", "neg", ("x",), {}), ("%2", "neg", ("%1",), {})]


def test_precedence_and_parentheses() -> None:
    assert _nodes("a + b * c") == [("%1", "mul", ("b", "c"), {}), ("%2", "add", ("a", "%1"), {})]
    assert _nodes("(a + b) * c") == [("%1", "add", ("a", "b"), {}),
                                     ("%2", "mul", ("%1", "c"), {})]
    # ** binds tighter than unary minus, and is right-associative.
    assert _nodes("-a ** b ** c") == [("%1", "pow", ("b", "c"), {}),
                                      ("%2", "pow", ("a", "%1"), {}),
                                      ("%3", "neg", ("%2",), {})]
    assert float(_run("-x ** 2", x=3.0).output) == -9.0
    assert float(_run("2 ** 3 ** 2 + x", x=0.0).output) == 512.0


def test_calls_with_keyword_attrs() -> None:
    assert _nodes("sum(x, axis=0)") == [("%1", "sum", ("x",), {"axis": 0})]
    assert _nodes("sum(x, axis=[0, 1], keepdims=True)") == [
        ("%1", "sum", ("x",), {"axis": (0, 1), "keepdims": True})]
    assert _nodes("mean(x, axis=[0, -1])")[0][3] == {"axis": (0, -1)}
    assert _nodes("sum(x, axis=None)")[0][3] == {"axis": None}
    assert _nodes("reshape(x, shape=(-1, 2))")[0][3] == {"shape": (-1, 2)}
    assert _nodes("hinge(s, y, margin=0.5)") == [("%1", "hinge", ("s", "y"), {"margin": 0.5})]


def test_call_attrs_reach_the_op() -> None:
    plan = compile_graph(parse_expression("sum(x, axis=1)", REGISTRY).graph, REGISTRY)
    r = execute(plan, {"x": np.arange(6.0).reshape(2, 3)}, upstream=[1.0, 2.0])
    np.testing.assert_array_equal(r.output, [3.0, 12.0])
    np.testing.assert_array_equal(r.gradients["x"], [[1, 1, 1], [2, 2, 2]])
    r = _run("sum(transpose(x, axes=[1, 0]) @ y)", x=np.ones((2, 3)), y=np.ones(2))
    assert float(r.output) == 6.0


def test_max_min_with_one_and_two_args() -> None:
    assert _nodes("max(a, b)") == [("%1", "maximum", ("a", "b"), {})]
    assert _nodes("min(a, b)") == [("%1", "minimum", ("a", "b"), {})]
    assert _nodes("max(x)") == [("%1", "max", ("x",), {})]
    assert _nodes("min(x, axis=1)") == [("%1", "min", ("x",), {"axis": 1})]
    assert _nodes("maximum(a, 0)") == [("%1", "maximum", ("a", 0.0), {})]
    r = _run("max(x, 0) + min(x)", x=-2.0)
    assert float(r.output) == -2.0 and float(r.gradients["x"]) == 1.0
    for bad in ["max()", "max(a, b, c)", "min(a, b, c, d)"]:
        with pytest.raises(GraphError):
            parse_expression(bad, REGISTRY)


def test_statements_name_nodes() -> None:
    text = "q = W @ x; f = sum(q ** 2)"
    graph = parse_expression(text, REGISTRY).graph
    assert [n.id for n in graph.nodes] == ["q", "%1", "f"]
    assert graph.output == "f"
    assert dict(graph.inputs) == {"W": None, "x": None}
    # Newlines work like ';', blank lines and comments are ignored; the last statement is the
    # output, whether or not it is an assignment.
    graph = parse_expression("a = x * 2\n\n# comment\nb = a + 1\nsum(b * a)", REGISTRY).graph
    assert [n.id for n in graph.nodes] == ["a", "b", "%1", "%2"] and graph.output == "%2"
    assert dict(graph.inputs) == {"x": None}


def test_statement_of_a_bare_name_or_constant_is_named() -> None:
    assert _nodes("a = x; a") == [("a", "identity", ("x",), {})]
    assert _nodes("a = 2") == [("a", "identity", (2.0,), {})]
    assert _nodes("3") == [("%1", "identity", (3.0,), {})]
    graph = parse_expression("x", REGISTRY).graph
    assert graph.nodes == () and graph.output == "x"
    assert float(_run("x", x=4.0).gradients["x"]) == 1.0


def test_sources_name_the_text_of_each_node() -> None:
    parsed = parse_expression("q = W @ x\nf = sum(q ** 2)", REGISTRY)
    assert parsed.sources == {"q": "W @ x", "%1": "q ** 2", "f": "sum(q ** 2)"}
    long = parse_expression("+".join(["x"] * 100), REGISTRY)
    assert all(len(s) <= 80 for s in long.sources.values())
    assert long.sources[long.graph.output].endswith("...")


def test_whitespace_and_indentation_do_not_matter() -> None:
    texts = ["q = W @ x; f = sum(q ** 2)", "  q=W@x\n\tf=sum(q**2)  ",
             "q = (W @\n   x)\nf = sum(q**2)", "q = W @ x\r\nf = sum(q ** 2)\r\n"]
    graphs = {parse_expression(t, REGISTRY).graph for t in texts}
    assert len(graphs) == 1
    # The IR is frozen data, attrs included: graphs can be set members and dict keys.
    assert len({parse_expression(t, REGISTRY).graph
                for t in ["sum(x, axis=[0, 1])", "sum(x, axis=(0, 1))"]}) == 1


# --- what it refuses ----------------------------------------------------------------------


@pytest.mark.parametrize("text", [
    "__import__('os')", "x.__class__", "x[0]", "lambda: 1", "[i for i in x]", "'a'",
    "import os", "from os import path", "x if y else z", "a < b", "a == b", "a and b",
    "not x", "~x", "x // y", "x % y", "x << y", "x & y", "(a := x)", "(x, y)", "[x, y]",
    "{x: y}", "{x}", "x.y(1)", "math.exp(x)", "exp(*x)", "sum(**k)", "True + x", "None",
    "1j * x", "b'x'", "f'{x}'", "...", "x += 1", "a, b = x, y", "a = b = x", "x[0] = 1",
    "del x", "for i in x: pass", "if x: y", "while x: pass", "def f(): pass",
    "class A: pass", "with x: pass", "assert x", "pass", "return x", "global x",
    "exec('1')", "eval('1')", "open('f')", "getattr(x, 'y')", "globals()",
    "__builtins__", "__x__ + 1", "x + __y", "(lambda: x)()", "x(1)", "yield x",
    "await x", "*x, = y", "exp(x)(y)", "x = 1; x = 2", "y = y + 1", "x = x",
])
def test_rejected(text: str) -> None:
    with pytest.raises(GraphError) as info:
        parse_expression(text, REGISTRY)
    assert info.value.status == 422
    assert info.value.loc == ("expression",)
    assert info.value.detail.startswith(("expression", "node"))


@pytest.mark.parametrize(("text", "fragment"), [
    ("x.__class__", "attribute"), ("x[0]", "subscript"), ("lambda: 1", "lambda"),
    ("[i for i in x]", "comprehension"), ("'a'", "numeric literals"), ("import os", "import"),
    ("x if y else z", "conditional"), ("a < b", "comparison"),
    ("__import__('os')", "numeric literals"),
    ("__x__ + 1", "'__x__'"), ("x = 1; x = 2", "assigned twice"), ("y = y + 1", "before"),
    ("exp(x, y)", "takes 1 positional argument, got 2"), ("x * 1e400", "out of range"),
    ("x +", "syntax error"), ("", "empty"), ("  \n ", "empty"), ("# only a comment", "empty"),
])
def test_rejection_messages(text: str, fragment: str) -> None:
    with pytest.raises(GraphError) as info:
        parse_expression(text, REGISTRY)
    assert fragment in info.value.detail


def test_dunder_call_is_rejected_before_anything_runs() -> None:
    # The allow-list walk refuses the string literal / the unknown function; nothing evaluates.
    for text in ["__import__('os').system('true')", "__import__(1)", "exec(1)", "eval(x)"]:
        with pytest.raises(GraphError):
            parse_expression(text, REGISTRY)


def test_unknown_function_suggests() -> None:
    with pytest.raises(GraphError) as info:
        parse_expression("sigmod(x)", REGISTRY)
    assert "unknown function 'sigmod'" in info.value.detail
    assert "did you mean 'sigmoid'" in info.value.detail
    with pytest.raises(GraphError) as info:
        parse_expression("print(x)", REGISTRY)
    assert "unknown function 'print'" in info.value.detail


def test_bad_attrs_are_graph_errors() -> None:
    for text in ["sum(x, axis=y)", "sum(x, axis='a')", "sum(x, axis=exp(1))", "sum(x, 0)"]:
        with pytest.raises(GraphError):
            parse_expression(text, REGISTRY)
    for text in ["sum(x, foo=1)", "exp(x, axis=0)", "sum(x, axis=[0, 0])",
                 "sum(x, axis=100000000000000000000000)"]:
        with pytest.raises(GraphError) as info:
            compile_graph(parse_expression(text, REGISTRY).graph, REGISTRY)
        assert info.value.node == "%1"


def test_free_names_are_inputs_and_ops_can_be_names() -> None:
    graph = parse_expression("exp + sum(x_1, axis=0) * _y", REGISTRY).graph
    assert dict(graph.inputs) == {"_y": None, "exp": None, "x_1": None}


# --- deep and long texts ------------------------------------------------------------------


@pytest.mark.parametrize(("label", "text"), [
    ("parens 1000 deep", "(" * 1000 + "x" + ")" * 1000),
    ("5000 unary minus", "-" * 5000 + "x"),
    ("5000 spaced unary minus", "- " * 5000 + "x"),
    ("x+x+... 10,000 terms", "+".join(["x"] * 10_000)),
    ("x*x*... 10,000 factors", "*".join(["x"] * 10_000)),
    ("x**x**... 5000", "**".join(["x"] * 5000)),
    ("calls 1000 deep", "exp(" * 1000 + "x" + ")" * 1000),
    ("lists 1000 deep", "[" * 1000 + "]" * 1000),
    ("not 5000", "not " * 4000 + "x"),
    ("attribute chain", "x" + ".a" * 6000),
    ("call chain", "x" + "()" * 6000),
    ("subscript chain", "x" + "[0]" * 5000),
    ("lambda chain", "lambda: " * 2000 + "x"),
    ("too long", "x" * 30_000),
    ("too long statements", ";".join(f"a{i} = x * {i}" for i in range(3000))),
])
def test_deep_or_long_input_fails_cleanly_and_fast(label: str, text: str) -> None:
    start = time.thread_time()
    with pytest.raises((GraphError, LimitExceeded)) as info:
        parse_expression(text, REGISTRY)
    assert time.thread_time() - start < 1.0, label
    assert info.value.status in (413, 422)
    assert info.value.loc == ("expression",)


def test_depth_limit_is_the_413() -> None:
    with pytest.raises(LimitExceeded) as info:
        parse_expression("(" * 1000 + "x" + ")" * 1000, REGISTRY)
    assert info.value.limit == "max_expression_depth" and info.value.status == 413
    with pytest.raises(LimitExceeded) as info:
        parse_expression("x" * 30_000, REGISTRY)
    assert info.value.limit == "max_expression_length"
    # Within the limits, nesting works.
    assert len(_nodes("exp(" * 60 + "x" + ")" * 60)) == 60
    assert float(_run("(" * 60 + "x" + ")" * 60, x=2.0).output) == 2.0


def test_largest_allowed_texts_parse_fast() -> None:
    # Near the 20,000-character limit: many short statements, one long sum.
    texts = [";".join(f"a{i}=x*{i % 10}" for i in range(2000)),
             "+".join(["x"] * 1000), "\n".join(f"a{i} = (x +\n {i})" for i in range(1000))]
    for text in texts:
        assert len(text) <= 20_000
        start = time.thread_time()
        graph = parse_expression(text, REGISTRY).graph
        assert time.thread_time() - start < 2.0
        assert graph.nodes
