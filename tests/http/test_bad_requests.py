"""A corpus of bad requests: each is a 4xx problem+json (never a 5xx), and afterwards the
same app still answers the lecture's examples correctly (docs/api.md §7: "A bad request never
takes a worker down and never changes what later requests get")."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest

from tests.conftest import build_app
from tests.lecture import LECTURE, assert_lecture, lecture_request, problem

Json = Any


@dataclass(frozen=True)
class Case:
    id: str
    body: Json | bytes  # bytes are sent as they are
    status: frozenset[int]
    path: str = "/v1/gradients"
    ctype: str | None = "application/json"
    method: str = "POST"


CASES: list[Case] = []


def case(id: str, body: Json | bytes, status: int | set[int] = 422, **kw: Any) -> None:
    statuses = frozenset({status} if isinstance(status, int) else status)
    CASES.append(Case(id, body, statuses, **kw))


BASE = {"expression": "x * y", "values": {"x": [1.0, 2.0], "y": [3.0, 4.0]},
        "upstream": [1.0, 1.0]}


def base(**changes: Any) -> dict[str, Any]:
    out = {**BASE, **changes}
    return {k: v for k, v in out.items() if v is not DROP}


DROP = object()


def raw(template: str, value: str) -> bytes:
    return template.replace("@", value).encode()


def value_x(x: Json) -> dict[str, Any]:
    """The base request with ``x`` replaced (shapes of x and y may then differ: still 4xx)."""
    return base(values={"x": x, "y": 1.0}, upstream=DROP)


def expr(text: str, **values: Any) -> dict[str, Any]:
    return {"expression": text, "values": values or {"x": 2.0}}


def graph(nodes: list[dict[str, Any]], inputs: Json = None, output: Json = "f",
          **extra: Any) -> dict[str, Any]:
    spec = {"inputs": {"x": {}} if inputs is None else inputs, "nodes": nodes,
            "output": output, **extra}
    return {"graph": spec, "values": {"x": 2.0}}


def b64(arr: Any, dtype: str = "float64") -> str:
    return base64.b64encode(np.asarray(arr, dtype="<f8" if dtype == "float64" else "<f4")
                            .tobytes()).decode()


VALUES_X = '{"expression": "x * 2", "values": {"x": @}}'

# --- not JSON (400) ------------------------------------------------------------------------
case("json_truncated", b'{"expression": "x", "values": {"x": 1}', 400)
case("json_garbage", b"{bad", 400)
case("json_empty_body", b"", 400)
case("json_whitespace_body", b"   \n ", 400)
case("json_trailing_comma", b'{"expression": "x",}', 400)
case("json_single_quotes", b"{'expression': 'x'}", 400)
case("json_trailing_data", b'{"expression": "x", "values": {"x": 1}} {}', 400)
case("json_missing_colon", b'{"expression" "x"}', 400)
case("json_invalid_utf8", b'{"expression": "\xff\xfe"}', 400)
case("json_nul_byte", b"\x00", 400)
case("json_bare_word", b"undefined", 400)
case("json_unescaped_control_char", b'{"expression": "x\n"}', 400)
case("json_lone_surrogate", b'{"expression": "\\ud800x", "values": {}}', {400, 422})
case("json_bom", b'\xef\xbb\xbf{"expression": "x", "values": {"x": 1}}', {400, 200})
case("json_comment", b'{"expression": "x" /* c */, "values": {"x": 1}}', 400)

# --- JSON that is not a request object (422) -----------------------------------------------
case("body_empty_object", {})
case("body_array", [])
case("body_array_of_request", [BASE])
case("body_string", "x * y")
case("body_number", 42)
case("body_null", None)
case("body_true", True)

# --- deep nesting ----------------------------------------------------------------------------
case("nesting_200_arrays_in_tensor", raw(VALUES_X, "[" * 200 + "1" + "]" * 200), {413, 422})
case("nesting_200_objects", raw('{"expression": "x", "values": {"x": 1}, "a": @}',
                                '{"a": ' * 200 + "1" + "}" * 200), 422)
case("nesting_5000_arrays", ("[" * 5000 + "]" * 5000).encode(), {400, 413, 422})
case("nesting_5000_in_tensor", raw(VALUES_X, "[" * 5000 + "1" + "]" * 5000), {400, 413, 422})
case("nesting_5000_objects", ('{"a": ' * 5000 + "1" + "}" * 5000).encode(), {400, 413, 422})

# --- non-finite and huge numbers (422: valid JSON, not a valid request) -------------------
case("nan_value", raw(VALUES_X, "NaN"))
case("infinity_value", raw(VALUES_X, "Infinity"))
case("minus_infinity_value", raw(VALUES_X, "-Infinity"))
case("nan_in_array", raw(VALUES_X, "[1, NaN]"))
case("1e999_value", raw(VALUES_X, "1e999"))
case("minus_1e999_in_array", raw(VALUES_X, "[1, -1e999]"))
case("1e999_in_flat_data", raw(VALUES_X, '{"shape": [1], "data": [1e999]}'))
case("nan_upstream", b'{"expression": "x * 2", "values": {"x": [1]}, "upstream": [NaN]}')
case("nan_graph_constant", b'{"graph": {"inputs": {"x": {}}, "nodes": [{"id": "f", "op": '
     b'"mul", "args": ["x", NaN]}], "output": "f"}, "values": {"x": 1}}')
case("1e999_graph_constant", b'{"graph": {"inputs": {"x": {}}, "nodes": [{"id": "f", "op": '
     b'"mul", "args": ["x", 1e999]}], "output": "f"}, "values": {"x": 1}}')
case("nan_attr", b'{"graph": {"inputs": {"x": {}}, "nodes": [{"id": "f", "op": "hinge", '
     b'"args": ["x", "y"], "attrs": {"margin": NaN}}], "output": "f"}, "values": {"x": 1}}')
case("int_400_digits_value", raw(VALUES_X, "9" * 400))
case("int_5000_digits_value", raw(VALUES_X, "9" * 5000))
case("int_5000_digits_in_array", raw(VALUES_X, "[1, " + "9" * 5000 + "]"))
case("int_5000_digits_shape", raw(VALUES_X, '{"shape": [' + "9" * 5000 + '], "data": []}'),
     {413, 422})
case("int_5000_digits_upstream", b'{"expression": "x", "values": {"x": 1}, "upstream": '
     + b"1" * 5000 + b"}")
case("b64_of_nan", value_x({"shape": [2], "b64": b64([1.0, np.nan])}))
case("b64_of_inf_float32", value_x({"shape": [1], "dtype": "float32",
                                    "b64": b64([np.inf], "float32")}))

# --- tensors of the wrong form ---------------------------------------------------------------
case("ragged_short_row", value_x([[1, 2], [3]]))
case("ragged_long_row", value_x([[1], [2, 3]]))
case("ragged_scalar_and_list", value_x([1, [2]]))
case("ragged_list_and_scalar", value_x([[1], 2]))
case("ragged_deep", value_x([[[1, 2]], [[3]]]))
case("string_tensor", value_x("1.5"))
case("strings_in_tensor", value_x([1, "2"]))
case("strings_in_flat_data", value_x({"shape": [2], "data": ["1", "2"]}))
case("boolean_tensor", value_x(True))
case("booleans_in_tensor", value_x([True, False]))
case("booleans_in_flat_data", value_x({"shape": [2], "data": [True, False]}))
case("null_tensor", value_x(None))
case("nulls_in_tensor", value_x([1, None]))
case("object_in_tensor", value_x([{"a": 1}]))
case("tensor_object_without_shape", value_x({"data": [1, 2]}))
case("tensor_object_empty", value_x({}))
case("tensor_object_extra_key", value_x({"shape": [1], "data": [1], "unit": "m"}))
case("tensor_data_and_b64", value_x({"shape": [1], "data": [1], "b64": b64([1.0])}))
case("flat_data_too_long", value_x({"shape": [2], "data": [1, 2, 3]}))
case("flat_data_too_short", value_x({"shape": [2, 2], "data": [1, 2, 3]}))
case("flat_data_nested", value_x({"shape": [2], "data": [[1], [2]]}))
case("flat_data_not_a_list", value_x({"shape": [2], "data": "12"}))
case("flat_data_number", value_x({"shape": [], "data": 1}))
case("shape_negative", value_x({"shape": [-1], "data": [1]}))
case("shape_fraction", value_x({"shape": [1.5], "data": [1]}))
case("shape_string", value_x({"shape": "2", "data": [1, 2]}))
case("shape_strings", value_x({"shape": ["2"], "data": [1, 2]}))
case("shape_bool", value_x({"shape": [True], "data": [1]}))
case("shape_40_dims", value_x({"shape": [1] * 40, "data": [1]}))
case("nested_40_dims", value_x(json.loads("[" * 40 + "1" + "]" * 40)))
case("dtype_float16", value_x({"shape": [1], "dtype": "float16", "data": [1]}))
case("dtype_int32", value_x({"shape": [1], "dtype": "int32", "data": [1]}))
case("dtype_complex", value_x({"shape": [1], "dtype": "complex128", "b64": b64([1, 0])}))
case("dtype_number", value_x({"shape": [1], "dtype": 64, "data": [1]}))
case("dtype_uppercase", value_x({"shape": [1], "dtype": "FLOAT64", "data": [1]}))
case("b64_invalid_chars", value_x({"shape": [1], "b64": "!!!!!!!!!!!!"}))
case("b64_not_a_string", value_x({"shape": [1], "b64": 12345678}))
case("b64_length_mismatch_short", value_x({"shape": [2], "b64": b64([1.0])}))
case("b64_length_mismatch_long", value_x({"shape": [1], "b64": b64([1.0, 2.0])}))
case("b64_float32_bytes_as_float64", value_x({"shape": [2], "dtype": "float64",
                                              "b64": b64([1.0, 2.0], "float32")}))
case("b64_missing_padding", value_x({"shape": [1], "b64": b64([1.0]).rstrip("=")}))
case("b64_with_newline", value_x({"shape": [2], "b64": b64([1.0, 2.0])[:8] + "\n"
                                  + b64([1.0, 2.0])[8:-1]}))
case("b64_urlsafe_alphabet", value_x({"shape": [1], "b64": "____________"}))
case("b64_empty_for_scalar", value_x({"shape": [], "b64": ""}))

# --- shape bombs ---------------------------------------------------------------------------
case("bomb_flat_declared_10_18", value_x({"shape": [10**9, 10**9], "data": []}), 413)
case("bomb_b64_declared_10_18", value_x({"shape": [10**9, 10**9], "b64": ""}), 413)
case("bomb_32_dims", value_x({"shape": [1000] * 32, "b64": "AAAA"}), 413)
case("bomb_shape_dim_over_2_62", value_x({"shape": [2**63], "data": []}), {413, 422})
case("bomb_broadcast_intermediate", {
    "graph": {"inputs": {"a": {}, "b": {}, "c": {}},
              "nodes": [{"id": "t", "op": "add", "args": ["a", "b"]},
                        {"id": "f", "op": "add", "args": ["t", "c"]}], "output": "f"},
    "values": {"a": {"shape": [2000, 1, 1], "b64": b64(np.zeros(2000))},
               "b": {"shape": [1, 2000, 1], "b64": b64(np.zeros(2000))},
               "c": {"shape": [1, 1, 2000], "b64": b64(np.zeros(2000))}},
    "jacobian": True}, 413)
case("bomb_outer_product", {"expression": "sum(reshape(x, shape=[-1, 1]) @ "
                                          "reshape(x, shape=[1, -1]))",
                            "values": {"x": {"shape": [20000], "b64": b64(np.zeros(20000))}}},
     413)
case("bomb_reshape_attr", expr("reshape(x, shape=[1000000000, 1000000000])"), {413, 422})
case("bomb_upstream", base(upstream={"shape": [10**9, 10**9], "b64": ""}), 413)
case("bomb_declared_input_shape", graph([{"id": "f", "op": "sum", "args": ["x"]}],
                                        inputs={"x": {"shape": [10**9, 10**9]}}), {413, 422})
case("bomb_jacobian_rows", {"expression": "x * 2", "values": {"x": {
    "shape": [100000], "b64": b64(np.zeros(100000))}}, "jacobian": True}, 413)
case("bomb_check_elements", {"expression": "sum(x * 2)", "values": {"x": {
    "shape": [100000], "b64": b64(np.zeros(100000))}}, "check": True}, 413)

# --- hostile expressions -------------------------------------------------------------------
for _id, _text in {
    "import_call": "__import__('os').system('true')",
    "import_dunder_name": "__import__",
    "import_statement": "import os",
    "from_import": "from os import path",
    "builtins": "__builtins__",
    "dunder_name": "__x * 2",
    "eval_call": "eval('1')",
    "exec_call": "exec('x = 1')",
    "open_call": "open('/etc/passwd')",
    "print_call": "print(x)",
    "getattr_call": "getattr(x, 'real')",
    "attribute": "x.real",
    "dunder_attribute": "x.__class__.__mro__",
    "attribute_call": "x.conjugate()",
    "attribute_assign": "x.y = 1",
    "subscript": "x[0]",
    "slice": "x[0:1]",
    "lambda": "(lambda: x)()",
    "list_comprehension": "[i for i in x]",
    "set_comprehension": "{i for i in x}",
    "dict_comprehension": "{i: i for i in x}",
    "generator": "sum(i for i in x)",
    "fstring": "f'{x}'",
    "string": "'abc'",
    "bytes": "b'abc'",
    "walrus": "(y := x) * y",
    "conditional": "x if x else 0",
    "boolean_and": "x and x",
    "not": "not x",
    "comparison": "x < 1",
    "invert": "~x",
    "floordiv": "x // 2",
    "modulo": "x % 2",
    "shift": "x << 1",
    "bitor": "x | 1",
    "augassign_floordiv": "x //= 1",
    "augassign_to_call": "exp(x) += 1",
    "annotated_assign": "y: int = x",
    "tuple_unpack": "a, b = x, x",
    "chained_assign": "a = b = x",
    "starred": "sum(*x)",
    "double_star": "sum(x, **{'axis': 0})",
    "def": "def f(): return x",
    "class": "class A: pass",
    "while": "while x: pass",
    "for": "for i in x: pass",
    "with": "with x: pass",
    "try": "try:\n  x\nexcept: pass",
    "global": "global x",
    "del": "del x",
    "assert": "assert x",
    "pass": "pass",
    "await": "await x",
    "yield": "yield x",
    "ellipsis": "x * ...",
    "none": "x * None",
    "true_literal": "x * True",
    "complex_literal": "x * 1j",
    "list_literal": "[x, x]",
    "tuple_literal": "(x, x)",
    "dict_literal": "{'a': x}",
    "set_literal": "{x}",
    "huge_float_literal": "x * 1e999",
    "huge_negative_float_literal": "x * -1e999",
    "huge_float_literal_1e309": "x + 1e309",
    "huge_int_literal_400_digits": "x * " + "9" * 400,
    "huge_int_literal_5000_digits": "x * " + "9" * 5000,
    "unknown_function": "sigmod(x)",
    "string_attr": "sum(x, axis='0')",
    "name_attr": "sum(x, axis=x)",
    "call_attr": "sum(x, axis=exp(1))",
    "unknown_attr": "exp(x, base=2)",
    "too_many_args": "exp(x, x)",
    "too_few_args": "maximum(x)",
    "max_three_args": "max(x, x, x)",
    "call_of_call": "exp(x)(x)",
    "call_of_number": "2(x)",
    "syntax_dangling_op": "x +",
    "syntax_unclosed": "(x",
    "syntax_unopened": "x)",
    "syntax_semicolons": ";;",
    "syntax_nul": "x\x00",
    "non_ascii_name": "π * x",
    "long_name": "x" * 200,
    "assign_to_expression": "x + 1 = y",
    "assign_to_number": "1 = x",
    "empty": "",
    "blank": "   ",
    "blank_lines": "\n\n",
}.items():
    case(f"expr_{_id}", expr(_text))
case("expr_number", {"expression": 5, "values": {}})
case("expr_list", {"expression": ["x"], "values": {"x": 1}})
case("expr_object", {"expression": {"text": "x"}, "values": {"x": 1}})

# --- bad graph specs -----------------------------------------------------------------------
case("graph_cycle_self", graph([{"id": "f", "op": "exp", "args": ["f"]}]))
case("graph_cycle_two", graph([{"id": "a", "op": "exp", "args": ["f"]},
                               {"id": "f", "op": "neg", "args": ["a"]}]))
case("graph_unknown_op", graph([{"id": "f", "op": "sigmod", "args": ["x"]}]))
case("graph_op_dunder", graph([{"id": "f", "op": "__class__", "args": ["x"]}]))
case("graph_op_dotted", graph([{"id": "f", "op": "numpy.exp", "args": ["x"]}]))
case("graph_op_number", graph([{"id": "f", "op": 5, "args": ["x"]}]))
case("graph_op_empty", graph([{"id": "f", "op": "", "args": ["x"]}]))
case("graph_op_missing", graph([{"id": "f", "args": ["x"]}]))
case("graph_wrong_arity", graph([{"id": "f", "op": "add", "args": ["x"]}]))
case("graph_no_args", graph([{"id": "f", "op": "exp"}]))
case("graph_unknown_arg", graph([{"id": "f", "op": "exp", "args": ["y"]}]))
case("graph_args_not_list", graph([{"id": "f", "op": "exp", "args": "x"}]))
case("graph_arg_bool", graph([{"id": "f", "op": "mul", "args": ["x", True]}]))
case("graph_arg_null", graph([{"id": "f", "op": "mul", "args": ["x", None]}]))
case("graph_arg_object", graph([{"id": "f", "op": "mul", "args": ["x", {"v": 1}]}]))
case("graph_arg_list", graph([{"id": "f", "op": "mul", "args": ["x", [1, 2]]}]))
case("graph_17_args", graph([{"id": "f", "op": "exp", "args": ["x"] * 17}]))
case("graph_duplicate_ids", graph([{"id": "f", "op": "exp", "args": ["x"]},
                                   {"id": "f", "op": "neg", "args": ["x"]}]))
case("graph_id_shadows_input", graph([{"id": "x", "op": "exp", "args": ["x"]}], output="x"))
case("graph_id_invalid", graph([{"id": "1f", "op": "exp", "args": ["x"]}], output="1f"))
case("graph_id_empty", graph([{"id": "", "op": "exp", "args": ["x"]}], output=""))
case("graph_id_too_long", graph([{"id": "f" * 200, "op": "exp", "args": ["x"]}],
                                output="f" * 200))
case("graph_id_number", graph([{"id": 1, "op": "exp", "args": ["x"]}], output=1))
case("graph_id_with_space", graph([{"id": "a b", "op": "exp", "args": ["x"]}], output="a b"))
case("graph_attrs_not_object", graph([{"id": "f", "op": "sum", "args": ["x"], "attrs": [0]}]))
case("graph_attrs_unknown", graph([{"id": "f", "op": "sum", "args": ["x"],
                                    "attrs": {"axes": 0}}]))
case("graph_attrs_bad_value", graph([{"id": "f", "op": "sum", "args": ["x"],
                                      "attrs": {"axis": "0"}}]))
case("graph_attrs_axis_out_of_range", graph([{"id": "f", "op": "sum", "args": ["x"],
                                              "attrs": {"axis": 3}}]))
case("graph_attrs_huge_axis", graph([{"id": "f", "op": "sum", "args": ["x"],
                                      "attrs": {"axis": 2**62}}]))
case("graph_node_extra_field", graph([{"id": "f", "op": "exp", "args": ["x"], "code": "1"}]))
case("graph_node_not_object", graph(["f = exp(x)"]))
case("graph_nodes_not_list", graph({"f": {"op": "exp", "args": ["x"]}}))  # type: ignore
case("graph_nodes_missing", {"graph": {"inputs": {"x": {}}, "output": "x"},
                             "values": {"x": 1.0}})
case("graph_output_missing", {"graph": {"inputs": {"x": {}}, "nodes": []},
                              "values": {"x": 1.0}})
case("graph_output_unknown", graph([{"id": "f", "op": "exp", "args": ["x"]}], output="g"))
case("graph_output_number", graph([{"id": "f", "op": "exp", "args": ["x"]}], output=0))
case("graph_inputs_list", graph([{"id": "f", "op": "exp", "args": ["x"]}], inputs=["x"]))
case("graph_input_shape_negative", graph([{"id": "f", "op": "exp", "args": ["x"]}],
                                         inputs={"x": {"shape": [-2]}}))
case("graph_input_shape_string", graph([{"id": "f", "op": "exp", "args": ["x"]}],
                                       inputs={"x": {"shape": "()"}}))
case("graph_input_extra_field", graph([{"id": "f", "op": "exp", "args": ["x"]}],
                                      inputs={"x": {"shape": [], "dtype": "float64"}}))
case("graph_input_bad_name", graph([{"id": "f", "op": "exp", "args": ["x"]}],
                                   inputs={"x": {}, "1y": {}}))
case("graph_extra_field", graph([{"id": "f", "op": "exp", "args": ["x"]}], version=2))
case("graph_string", {"graph": "f = exp(x)", "values": {"x": 1}})
case("graph_list", {"graph": [], "values": {"x": 1}})
case("graph_shape_mismatch", {"graph": {"inputs": {"x": {"shape": [2]}, "y": {"shape": [3]}},
                                        "nodes": [{"id": "f", "op": "add", "args": ["x", "y"]}],
                                        "output": "f"}, "values": {"x": [1, 2], "y": [1, 2, 3]},
                              "upstream": [1, 1]})
case("graph_label_constant", graph([{"id": "f", "op": "softmax_cross_entropy",
                                     "args": ["x", 0]}], inputs={"x": {"shape": [1, 2]}}))
case("graph_label_also_float", {"graph": {
    "inputs": {"s": {"shape": [1, 2]}, "y": {"shape": [1]}},
    "nodes": [{"id": "l", "op": "softmax_cross_entropy", "args": ["s", "y"]},
              {"id": "f", "op": "add", "args": ["l", "y"]}], "output": "f"},
    "values": {"s": [[1, 2]], "y": [0]}, "upstream": [1.0]})

# --- values that do not fit the graph ------------------------------------------------------
CE = {"inputs": {"s": {"shape": [2, 3]}, "y": {"shape": [2]}},
      "nodes": [{"id": "f", "op": "softmax_cross_entropy", "args": ["s", "y"]}], "output": "f"}
case("values_missing_input", base(values={"x": [1.0, 2.0]}))
case("values_extra_input", base(values={"x": [1.0, 2.0], "y": [1.0, 2.0], "z": 1}))
case("values_not_object", base(values=[1, 2]))
case("values_null", base(values=None))
case("values_bad_name", base(values={"x": 1, "y": 1, "": 1}))
case("values_wrong_declared_shape", {"graph": CE, "values": {"s": [[1, 2]], "y": [0, 1]}})
case("labels_fractional", {"graph": CE, "values": {"s": [[1, 2, 3]] * 2, "y": [0.5, 1]}})
case("labels_out_of_range", {"graph": CE, "values": {"s": [[1, 2, 3]] * 2, "y": [0, 3]}})
case("labels_negative", {"graph": CE, "values": {"s": [[1, 2, 3]] * 2, "y": [-1, 0]}})
case("labels_huge", {"graph": CE, "values": {"s": [[1, 2, 3]] * 2, "y": [1e300, 0]}})
case("wrt_label", {"graph": CE, "values": {"s": [[1, 2, 3]] * 2, "y": [0, 1]}, "wrt": ["y"]})
case("upstream_missing_for_vector", base(upstream=DROP))
case("upstream_wrong_shape", base(upstream=[1.0, 1.0, 1.0]))
case("upstream_for_scalar_wrong_shape", expr("x * 2", x=1.0) | {"upstream": [1.0]})

# --- wrong types for every field -----------------------------------------------------------
for _field, _bad in [
    ("wrt", "x"), ("wrt", [1]), ("wrt", [None]), ("wrt", {"x": True}), ("wrt", ["nope"]),
    ("wrt", [""]),
    ("upstream", "1"), ("upstream", True), ("upstream", {}), ("upstream", [[1], [2, 3]]),
    ("trace", "true"), ("trace", 1), ("trace", None),
    ("jacobian", "yes"), ("jacobian", 0), ("jacobian", []),
    ("check", 1.0), ("check", {}),
    ("dtype", "float16"), ("dtype", "int64"), ("dtype", 32), ("dtype", None),
    ("dtype", "Float64"),
    ("encoding", "hex"), ("encoding", "base64"), ("encoding", 1), ("encoding", None),
    ("graph_id", "g-123"), ("graph_id", 5), ("graph_id", "G-" + "0" * 64),
    ("graph_id", "g-" + "0" * 63 + "z"),
]:
    case(f"field_{_field}_{json.dumps(_bad)}", base(**{_field: _bad}))

# --- unknown fields and the graph/expression/graph_id choice ------------------------------
case("unknown_field", base(colour="red"))
case("unknown_field_case", base(Values={"x": 1}))
case("unknown_field_graph_spec", base(graph_spec={}))
case("graph_and_expression", base(graph={"inputs": {"x": {}, "y": {}},
                                         "nodes": [{"id": "f", "op": "mul", "args": ["x", "y"]}],
                                         "output": "f"}))
case("expression_and_graph_id", base(graph_id="g-" + "0" * 64))
case("none_of_the_three", base(expression=DROP))
case("only_values", {"values": {"x": 1}})

# --- registry routes -----------------------------------------------------------------------
case("register_empty", {}, path="/v1/graphs")
case("register_array", [], path="/v1/graphs")
case("register_with_values", {"expression": "x", "values": {"x": 1}}, path="/v1/graphs")
case("register_graph_id", {"graph_id": "g-" + "0" * 64}, path="/v1/graphs")
case("register_both", {"expression": "x", "graph": {"nodes": [], "output": "x",
                                                    "inputs": {"x": {}}}}, path="/v1/graphs")
case("register_hostile_expression", {"expression": "__import__('os')"}, path="/v1/graphs")
case("register_cycle", {"graph": {"inputs": {}, "nodes": [
    {"id": "f", "op": "exp", "args": ["f"]}], "output": "f"}}, path="/v1/graphs")
case("register_not_json", b"{", 400, path="/v1/graphs")

# --- HTTP level: content type, method, path ------------------------------------------------
case("content_type_text", json.dumps(BASE).encode(), 415, ctype="text/plain")
case("content_type_form", b"expression=x", 415, ctype="application/x-www-form-urlencoded")
case("content_type_missing", json.dumps(BASE).encode(), 415, ctype=None)
case("method_get", None, 405, method="GET")
case("method_delete", None, 405, method="DELETE")
case("path_unknown", BASE, 404, path="/v1/gradient")
case("path_traversal", BASE, 404, path="/v1/graphs/../../etc/passwd")

assert len(CASES) >= 60
assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"

GRAPH_ID_ROUTE_CASES = [
    Case("by_id_with_graph", {"values": {"x": 1}, "graph": {}}, frozenset({422})),
    Case("by_id_with_expression", {"values": {"x": 1}, "expression": "x"}, frozenset({422})),
    Case("by_id_with_graph_id", {"values": {"x": 1}, "graph_id": "g-" + "0" * 64},
         frozenset({422})),
    Case("by_id_missing_value", {"values": {}}, frozenset({422})),
    Case("by_id_nan", b'{"values": {"W": NaN, "x": [1, 2]}}', frozenset({422})),
    Case("by_id_not_json", b"[", frozenset({400})),
    Case("by_id_array", [], frozenset({422})),
]


def send(client, c: Case, path: str | None = None):
    kwargs: dict[str, Any] = {"method": c.method}
    if isinstance(c.body, bytes):
        kwargs["data"] = c.body
        if c.ctype:
            kwargs["content_type"] = c.ctype
    elif c.body is not None or c.method == "POST":
        kwargs["data"] = json.dumps(c.body)
        if c.ctype:
            kwargs["content_type"] = c.ctype
    return client.open(path or c.path, **kwargs)


def check(resp, c: Case) -> None:
    assert resp.status_code in c.status, (
        f"{c.id}: expected {sorted(c.status)}, got {resp.status_code}: "
        f"{resp.get_data(as_text=True)[:400]}")
    if resp.status_code == 200:  # only where the contract allows it either way
        return
    body = problem(resp, resp.status_code)
    assert 400 <= body["status"] < 500
    assert len(body["detail"]) < 2000, "the detail must not echo the request"


@pytest.fixture(scope="module")
def shared():
    """One app (and one client) for the whole corpus: later answers must not change."""
    app = build_app()
    client = app.test_client()
    gid = client.post("/v1/graphs", json={"graph": LECTURE["matmul_square"]["graph"]})
    assert gid.status_code == 201
    return client, gid.get_json()["graph_id"]


@pytest.mark.parametrize("c", CASES, ids=[c.id for c in CASES])
def test_bad_request(shared, c):
    client, _ = shared
    check(send(client, c), c)


@pytest.mark.parametrize("c", GRAPH_ID_ROUTE_CASES, ids=[c.id for c in GRAPH_ID_ROUTE_CASES])
def test_bad_request_to_registered_graph(shared, c):
    client, gid = shared
    check(send(client, c, path=f"/v1/graphs/{gid}/gradients"), c)


def test_app_still_correct_after_the_corpus(shared):
    client, gid = shared
    for c in CASES:  # again, in one go, whatever ran before
        assert send(client, c).status_code < 500
    for name in LECTURE:
        for form in ("expression", "graph"):
            resp = client.post("/v1/gradients", json=lecture_request(name, form))
            assert resp.status_code == 200, resp.get_data(as_text=True)
            assert_lecture(resp.get_json(), name)
    resp = client.post(f"/v1/graphs/{gid}/gradients",
                       json={"values": LECTURE["matmul_square"]["values"]})
    assert resp.status_code == 200
    assert_lecture(resp.get_json(), "matmul_square")
    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["status"] == "ready"
