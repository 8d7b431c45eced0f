"""Shared data of the API tests: the lecture's three examples (docs/api.md §4) and helpers.

The expected numbers are computed here by hand (plain Python floats, no engine code), so
the tests compare the service against arithmetic, not against itself.
"""

from __future__ import annotations

import math
import re
from typing import Any

import pytest

GRAPH_ID_RE = re.compile(r"^g-[0-9a-f]{64}$")
PROBLEM = "application/problem+json"

# --- example 1: (x + y) * z -----------------------------------------------------------------

EX1 = {
    "expression": "(x + y) * z",
    "graph": {
        "inputs": {"x": {}, "y": {}, "z": {}},
        "nodes": [
            {"id": "q", "op": "add", "args": ["x", "y"]},
            {"id": "f", "op": "mul", "args": ["q", "z"]},
        ],
        "output": "f",
    },
    "values": {"x": -2, "y": 5, "z": -4},
    "output": -12.0,
    "gradients": {"x": -4.0, "y": -4.0, "z": 3.0},
}

# --- example 2: a 2-d neuron with a sigmoid --------------------------------------------------

_s = 2 * -1 + -3 * -2 + -3  # w0*x0 + w1*x1 + w2 = 1
_f = 1 / (1 + math.exp(-_s))
_d = _f * (1 - _f)  # sigmoid'(s)
EX2 = {
    "expression": "1 / (1 + exp(-(w0*x0 + w1*x1 + w2)))",
    "graph": {
        "inputs": {"w0": {}, "x0": {}, "w1": {}, "x1": {}, "w2": {}},
        "nodes": [
            {"id": "a", "op": "mul", "args": ["w0", "x0"]},
            {"id": "b", "op": "mul", "args": ["w1", "x1"]},
            {"id": "c", "op": "add", "args": ["a", "b"]},
            {"id": "s", "op": "add", "args": ["c", "w2"]},
            {"id": "n", "op": "neg", "args": ["s"]},
            {"id": "e", "op": "exp", "args": ["n"]},
            {"id": "den", "op": "add", "args": [1, "e"]},
            {"id": "f", "op": "div", "args": [1, "den"]},
        ],
        "output": "f",
    },
    "values": {"w0": 2, "x0": -1, "w1": -3, "x1": -2, "w2": -3},
    "output": _f,
    "gradients": {"w0": -1 * _d, "x0": 2 * _d, "w1": -2 * _d, "x1": -3 * _d, "w2": _d},
}

# --- example 3: sum((W @ x) ** 2) ------------------------------------------------------------

W = [[0.1, 0.5], [-0.3, 0.8]]
X = [0.2, 0.4]
Q = [W[0][0] * X[0] + W[0][1] * X[1], W[1][0] * X[0] + W[1][1] * X[1]]  # [0.22, 0.26]
DQ = [2 * Q[0], 2 * Q[1]]  # [0.44, 0.52]
EX3 = {
    "expression": "sum((W @ x) ** 2)",
    "graph": {
        "inputs": {"W": {"shape": [2, 2]}, "x": {"shape": [2]}},
        "nodes": [
            {"id": "q", "op": "matmul", "args": ["W", "x"]},
            {"id": "q2", "op": "square", "args": ["q"]},
            {"id": "f", "op": "sum", "args": ["q2"]},
        ],
        "output": "f",
    },
    "values": {"W": W, "x": X},
    "output": Q[0] ** 2 + Q[1] ** 2,  # 0.116
    "gradients": {
        "W": [[DQ[0] * X[0], DQ[0] * X[1]], [DQ[1] * X[0], DQ[1] * X[1]]],
        "x": [W[0][0] * DQ[0] + W[1][0] * DQ[1], W[0][1] * DQ[0] + W[1][1] * DQ[1]],
    },
}

LECTURE = {"neuron_sum": EX1, "sigmoid_neuron": EX2, "matmul_square": EX3}


def lecture_request(name: str, form: str, **extra: Any) -> dict[str, Any]:
    """The body of POST /v1/gradients for a lecture example in ``form`` (expression|graph)."""
    ex = LECTURE[name]
    return {form: ex[form], "values": ex["values"], **extra}


class Approx:
    """``actual == approx(expected)`` for numbers and nested lists: same nesting (shape),
    every number within ``tol`` (absolute or relative)."""

    def __init__(self, expected: Any, tol: float) -> None:
        self.expected = expected
        self.tol = tol

    def _eq(self, actual: Any, expected: Any) -> bool:
        if isinstance(expected, list | tuple):
            return (isinstance(actual, list | tuple) and len(actual) == len(expected)
                    and all(self._eq(a, e) for a, e in zip(actual, expected)))
        if isinstance(actual, bool) or not isinstance(actual, int | float):
            return False
        return actual == pytest.approx(expected, abs=self.tol, rel=self.tol)

    def __eq__(self, actual: object) -> bool:
        return self._eq(actual, self.expected)

    def __repr__(self) -> str:
        return f"approx({self.expected!r}, tol={self.tol})"


def approx(expected: Any, tol: float = 1e-12) -> Any:
    return Approx(expected, tol)


def assert_lecture(body: dict[str, Any], name: str, tol: float = 1e-12) -> None:
    """The response of a lecture example has the hand-computed output and gradients."""
    ex = LECTURE[name]
    assert GRAPH_ID_RE.match(body["graph_id"]), body["graph_id"]
    assert body["output"] == approx(ex["output"], tol)
    assert set(body["gradients"]) == set(ex["gradients"])
    for k, v in ex["gradients"].items():
        assert body["gradients"][k] == approx(v, tol), k


def problem(resp: Any, status: int) -> dict[str, Any]:
    """Assert an RFC 9457 problem response with ``status``; return its body."""
    text = resp.get_data(as_text=True)
    assert resp.status_code == status, text[:1000]
    assert resp.mimetype == PROBLEM, (resp.mimetype, text[:300])
    body = resp.get_json()
    assert isinstance(body, dict), text[:300]
    assert body["status"] == status
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body["detail"], str) and body["detail"]
    for item in body.get("errors") or []:
        assert isinstance(item["loc"], list) and isinstance(item["msg"], str)
    return body


def locs(body: dict[str, Any]) -> list[list[Any]]:
    """Every ``errors[].loc`` of a problem body."""
    return [item["loc"] for item in body.get("errors") or []]
