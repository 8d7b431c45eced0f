"""Elementwise ops: binary ones broadcast as NumPy does (the engine, not the rule, sums a
broadcast gradient back to its argument's shape); unary ones keep their argument's shape.

The arithmetic forwards are Python's operators rather than the ufuncs: identical on arrays
(``ndarray.__add__`` is ``np.add``), and on the NumPy scalars that 0-d values run as, scalar
arithmetic is several times cheaper than a ufunc call.
"""

from __future__ import annotations

import operator
from typing import Any

from service.engine.ops.common import binary_shape, fixed, unary_shape
from service.engine.registry import Forward, ForwardFactory, OpDef


def binary(name: str, forward: ForwardFactory, dx: Any, dy: Any, doc: str, **kw: Any) -> OpDef:
    return OpDef(name, 2, forward, (dx, dy), binary_shape, doc, **kw)


def unary(name: str, forward: ForwardFactory, dx: Any, doc: str, **kw: Any) -> OpDef:
    return OpDef(name, 1, forward, (dx,), unary_shape, doc, **kw)


def _pow_dx(b: Any, g: Any, o: Any, x: Any, y: Any) -> Any:
    # PyTorch's pow_backward_self: zero where the exponent is zero (avoids 0 * inf).
    d = b.op("mul", b.op("mul", g, y), b.op("pow", x, b.op("sub", y, 1.0)))
    return b.op("select", b.op("is_nonzero", y), d, 0.0)


def _pow_dy(b: Any, g: Any, o: Any, x: Any, y: Any) -> Any:
    # PyTorch's pow_backward_exponent: zero where base == 0 and exponent >= 0.
    d = b.op("mul", b.op("mul", g, o), b.op("log", x))
    return b.op("select", b.op("pow_zero_base", x, y), 0.0, d)


def _sigmoid(xp: Any) -> Forward:
    def sigmoid(x: Any) -> Any:
        # exp(-log(1 + exp(-x))): accurate in relative terms for large |x|, never overflows.
        return xp.exp(-xp.logaddexp(0.0, -x))

    return sigmoid


def _relu(xp: Any) -> Forward:
    def relu(x: Any) -> Any:
        return xp.maximum(x, 0.0)

    return relu


def _reciprocal(xp: Any) -> Forward:
    # NumPy's ufunc where the namespace has one (not in the standard): one call, no scalar.
    return getattr(xp, "reciprocal", None) or (lambda x: xp.divide(1.0, x))


OPS = (
    # --- binary -----------------------------------------------------------------------------
    binary("add", fixed(operator.add), lambda b, g, o, x, y: g, lambda b, g, o, x, y: g,
           "x + y; distributes g unchanged to both inputs", local="1"),
    binary("sub", fixed(operator.sub), lambda b, g, o, x, y: g,
           lambda b, g, o, x, y: b.op("neg", g), "x - y; g to x, -g to y", local="±1"),
    binary("mul", fixed(operator.mul), lambda b, g, o, x, y: b.op("mul", g, y),
           lambda b, g, o, x, y: b.op("mul", g, x),
           "x * y; swaps the inputs: dx = g*y, dy = g*x", local="the other input"),
    binary("div", fixed(operator.truediv), lambda b, g, o, x, y: b.op("div", g, y),
           lambda b, g, o, x, y: b.op("neg", b.op("div", b.op("mul", g, o), y)),
           "x / y; dx = g/y, dy = -g*x/y^2", local="1/b or −a/b²"),
    binary("pow", lambda xp: xp.pow, _pow_dx, _pow_dy,
           "x ** y; dx = g*y*x^(y-1), dy = g*x^y*ln(x) (0 where x == 0, y >= 0)",
           local="b·a^(b−1)"),
    binary("maximum", lambda xp: xp.maximum,
           lambda b, g, o, x, y: b.op("mul", g, b.op("max_share", x, y)),
           lambda b, g, o, x, y: b.op("mul", g, b.op("max_share", y, x)),
           "elementwise max; routes g to the larger input, split evenly on ties", kinked=True,
           local="[is max]"),
    binary("minimum", lambda xp: xp.minimum,
           lambda b, g, o, x, y: b.op("mul", g, b.op("max_share", y, x)),
           lambda b, g, o, x, y: b.op("mul", g, b.op("max_share", x, y)),
           "elementwise min; routes g to the smaller input, split evenly on ties", kinked=True,
           local="[is min]"),
    # --- unary ------------------------------------------------------------------------------
    unary("neg", fixed(operator.neg), lambda b, g, o, x: b.op("neg", g), "-x; dx = -g",
          local="−1"),
    unary("identity", fixed(lambda x: x), lambda b, g, o, x: g, "x; dx = g", view=True,
          local="1"),
    unary("exp", lambda xp: xp.exp, lambda b, g, o, x: b.op("mul", g, o), "e^x; dx = g*e^x",
          local="exp(x)"),
    unary("log", lambda xp: xp.log, lambda b, g, o, x: b.op("div", g, x), "ln x; dx = g/x",
          local="1/x"),
    unary("sqrt", lambda xp: xp.sqrt, lambda b, g, o, x: b.op("div", g, b.op("mul", o, 2.0)),
          "sqrt x; dx = g/(2 sqrt x)", local="1/(2√x)"),
    unary("square", lambda xp: xp.square,
          lambda b, g, o, x: b.op("mul", g, b.op("mul", x, 2.0)), "x^2; dx = 2*x*g",
          local="2x"),
    unary("abs", lambda xp: xp.abs, lambda b, g, o, x: b.op("mul", g, b.op("sign", x)),
          "|x|; dx = sign(x)*g (0 at 0)", kinked=True),
    unary("reciprocal", _reciprocal,
          lambda b, g, o, x: b.op("neg", b.op("mul", g, b.op("mul", o, o))), "1/x; dx = -g/x^2",
          local="−1/x²"),
    unary("sigmoid", _sigmoid,
          lambda b, g, o, x: b.op("mul", g, b.op("mul", o, b.op("sub", 1.0, o))),
          "1/(1+e^-x); dx = g*(1-s)*s", local="(1−σ)σ"),
    unary("tanh", lambda xp: xp.tanh,
          lambda b, g, o, x: b.op("mul", g, b.op("sub", 1.0, b.op("mul", o, o))),
          "tanh x; dx = g*(1-tanh^2 x)", local="1−tanh²"),
    unary("relu", _relu, lambda b, g, o, x: b.op("mul", g, b.op("is_positive", x)),
          "max(0, x); dx = g where x > 0, else 0", kinked=True, local="[x > 0]"),
    unary("sin", lambda xp: xp.sin, lambda b, g, o, x: b.op("mul", g, b.op("cos", x)),
          "sin x; dx = g*cos x"),
    unary("cos", lambda xp: xp.cos, lambda b, g, o, x: b.op("neg", b.op("mul", g, b.op("sin", x))),
          "cos x; dx = -g*sin x"),
)
