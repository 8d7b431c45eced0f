"""Elementwise ops: binary ones broadcast as NumPy does (the engine, not the rule, sums a
broadcast gradient back to its argument's shape); unary ones keep their argument's shape.
Then the activations and the piecewise ones: ``erf``, ``gelu``, ``leaky_relu``, ``elu``,
``softplus``, ``clip`` (its mask ``in_bounds`` is internal), ``where``, ``sign``, ``floor``,
``ceil``; erf's forward is in ``ops/erf.py`` (the standard has no erf).

The arithmetic forwards are Python's operators rather than the ufuncs: identical on arrays
(``ndarray.__add__`` is ``np.add``), and on the NumPy scalars that 0-d values run as, scalar
arithmetic is several times cheaper than a ufunc call.
"""

from __future__ import annotations

import math
import operator
from typing import Any

from service.engine import shapes as S
from service.engine.ops.common import binary_shape, fixed, unary_shape
from service.engine.ops.erf import erf_forward, normal_cdf
from service.engine.registry import Attr, Forward, ForwardFactory, OpDef, Shape, ShapeError, size_of


def binary(name: str, forward: ForwardFactory, dx: Any, dy: Any, doc: str, **kw: Any) -> OpDef:
    return OpDef(name, 2, forward, (dx, dy), binary_shape, doc,
                 **{"batching": "elementwise", **kw})


def unary(name: str, forward: ForwardFactory, dx: Any, doc: str, shape: Any = unary_shape,
          **kw: Any) -> OpDef:
    return OpDef(name, 1, forward, (dx,), shape, doc, **{"batching": "elementwise", **kw})


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


# --- the activations and the piecewise ops ---------------------------------------------------

TWO_INV_SQRT_PI = 2.0 / math.sqrt(math.pi)
SQRT1_2 = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
GELU_K = math.sqrt(2.0 / math.pi)  # the tanh form: 0.5 x (1 + tanh(K (x + C x^3)))
GELU_C = 0.044715

APPROXIMATE = Attr("approximate", "choice", "none",
                   'the exact x*Phi(x) ("none") or PyTorch\'s tanh approximation ("tanh")',
                   choices=("none", "tanh"))
NEGATIVE_SLOPE = Attr("negative_slope", "float", 0.01, "the slope where x <= 0")
ALPHA = Attr("alpha", "float", 1.0, "elu is alpha*(e^x - 1) where x <= 0")
BETA = Attr("beta", "float", 1.0, "softplus is log(1 + e^(beta*x))/beta; not 0")
THRESHOLD = Attr("threshold", "float", 20.0, "where beta*x > threshold, softplus is x")
LOWER = Attr("min", "float_or_null", None, "the lower bound; null: none")
UPPER = Attr("max", "float_or_null", None,
             "the upper bound; null: none (with min > max every value is max, as PyTorch)")


def _attrs_shape(x: Shape, **attrs: Any) -> Shape:
    """The shape rule of a unary op with attrs that all values take (its result: x's shape)."""
    return x


def passes(k: int) -> Any:
    """A cost rule: ``k`` passes over the output and every argument (a forward made of
    several array operations, each with its temporary)."""
    def cost(shapes: Any, out: Shape, attrs: dict[str, Any]) -> int:
        return k * (size_of(out) + sum(size_of(s) for s in shapes))

    return cost


def _gelu(xp: Any) -> Forward:
    cdf = normal_cdf(xp)

    def gelu(x: Any, approximate: str = "none") -> Any:
        if approximate == "tanh":
            return 0.5 * x * (1.0 + xp.tanh(GELU_K * (x + GELU_C * (x * x * x))))
        return x * cdf(x)

    return gelu


def _gelu_dx(b: Any, g: Any, o: Any, x: Any, approximate: str = "none") -> Any:
    if approximate == "tanh":
        # d/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) K (1 + 3 C x^2), t = tanh(K (x + C x^3))
        x2 = b.op("square", x)
        t = b.op("tanh", b.op("mul", b.op("mul", x, b.op("add", b.op("mul", x2, GELU_C), 1.0)),
                                GELU_K))
        slope = b.op("mul", b.op("add", b.op("mul", x2, 3.0 * GELU_C), 1.0), GELU_K)
        rest = b.op("mul", b.op("mul", x, b.op("sub", 1.0, b.op("square", t))), slope)
        return b.op("mul", g, b.op("mul", b.op("add", b.op("add", t, 1.0), rest), 0.5))
    # d/dx = Phi(x) + x phi(x); Phi through erf, so the rule differentiates again.
    cdf = b.op("mul", b.op("add", b.op("erf", b.op("mul", x, SQRT1_2)), 1.0), 0.5)
    pdf = b.op("mul", b.op("exp", b.op("mul", b.op("square", x), -0.5)), INV_SQRT_2PI)
    return b.op("mul", g, b.op("add", cdf, b.op("mul", x, pdf)))


def _erf_dx(b: Any, g: Any, o: Any, x: Any) -> Any:
    return b.op("mul", g, b.op("mul", b.op("exp", b.op("neg", b.op("square", x))),
                               TWO_INV_SQRT_PI))


def _leaky_relu(xp: Any) -> Forward:
    def leaky_relu(x: Any, negative_slope: float = 0.01) -> Any:
        return xp.where(x > 0, x, x * negative_slope)

    return leaky_relu


def _leaky_relu_dx(b: Any, g: Any, o: Any, x: Any, negative_slope: float = 0.01) -> Any:
    # PyTorch's leaky_relu_backward: g where x > 0, else g * slope (at 0: the slope).
    return b.op("select", x, g, b.op("mul", g, negative_slope))


def _elu(xp: Any) -> Forward:
    def elu(x: Any, alpha: float = 1.0) -> Any:
        return xp.where(x > 0, x, alpha * xp.expm1(xp.minimum(x, 0.0)))

    return elu


def _elu_dx(b: Any, g: Any, o: Any, x: Any, alpha: float = 1.0) -> Any:
    # alpha e^x = out + alpha where x <= 0 (PyTorch's form from the result): finite for
    # every x, so the unused branch never puts 0 * inf into a second derivative.
    return b.op("select", x, g, b.op("mul", g, b.op("add", o, alpha)))


def _softplus_shape(x: Shape, beta: float = 1.0, threshold: float = 20.0) -> Shape:
    if beta == 0:
        raise ShapeError("attr 'beta' must not be 0 (softplus divides by it)")
    return x


def _softplus(xp: Any) -> Forward:
    def softplus(x: Any, beta: float = 1.0, threshold: float = 20.0) -> Any:
        bx = x * beta
        smooth = xp.log1p(xp.exp(xp.minimum(bx, threshold))) / beta
        return xp.where(bx > threshold, x, smooth)

    return softplus


def _softplus_dx(b: Any, g: Any, o: Any, x: Any, beta: float = 1.0, threshold: float = 20.0
                 ) -> Any:
    # PyTorch's softplus_backward: g where beta*x > threshold (the linear part), else
    # g * sigmoid(beta*x).
    bx = b.op("mul", x, beta)
    return b.op("select", b.op("sub", bx, threshold), g, b.op("mul", g, b.op("sigmoid", bx)))


def _clip_shape(x: Shape, min: float | None = None, max: float | None = None) -> Shape:
    if min is None and max is None:
        raise ShapeError("clip needs attr 'min' or 'max' (both are null)")
    return x


def _clip(xp: Any) -> Forward:
    def clip(x: Any, min: float | None = None, max: float | None = None) -> Any:
        # PyTorch's clamp: min(max(x, min), max), NaN kept.
        if min is not None:
            x = xp.maximum(x, min)
        return x if max is None else xp.minimum(x, max)

    return clip


def _in_bounds(xp: Any) -> Forward:
    def in_bounds(x: Any, min: float | None = None, max: float | None = None) -> Any:
        inside = x == x  # False at NaN, as PyTorch's (x >= min) & (x <= max)
        if min is not None:
            inside = inside & (x >= min)
        if max is not None:
            inside = inside & (x <= max)
        return xp.astype(inside, xp.result_type(x))

    return in_bounds


def _clip_dx(b: Any, g: Any, o: Any, x: Any, min: float | None = None,
             max: float | None = None) -> Any:
    # PyTorch's clamp_backward: g where min <= x <= max, bounds included; 0 outside.
    return b.op("mul", g, b.op("in_bounds", x, min=min, max=max))


def _where_shape(c: Shape, x: Shape, y: Shape) -> Shape:
    return S.broadcast_shapes(c, x, y)


def _where(xp: Any) -> Forward:
    def where(c: Any, x: Any, y: Any) -> Any:
        return xp.where(c != 0, x, y)

    return where


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
    # --- the activations and the piecewise ops ------------------------------------------
    unary("erf", erf_forward, _erf_dx,
          "erf x = 2/sqrt(pi) * integral of e^(-t^2) from 0 to x; dx = g*2/sqrt(pi)*e^(-x^2)",
          cost=passes(20), local="2e^(−x²)/√π", example="erf(x)"),
    unary("gelu", _gelu, _gelu_dx,
          "x*Phi(x) (Phi the normal CDF; or the tanh form); dx = g*(Phi(x) + x*phi(x))",
          attrs=(APPROXIMATE,), shape=_attrs_shape, cost=passes(24), local="Φ(x) + x·φ(x)",
          example='gelu(x, approximate="tanh")'),
    unary("leaky_relu", _leaky_relu, _leaky_relu_dx,
          "x where x > 0, else negative_slope*x; dx = g where x > 0, else negative_slope*g",
          attrs=(NEGATIVE_SLOPE,), shape=_attrs_shape, kinked=True,
          local="1 if x > 0, else the slope",
          example="leaky_relu(x, negative_slope=0.1)"),
    unary("elu", _elu, _elu_dx,
          "x where x > 0, else alpha*(e^x - 1); dx = g where x > 0, else g*alpha*e^x",
          attrs=(ALPHA,), shape=_attrs_shape, cost=passes(3), local="1 if x > 0, else α·eˣ",
          example="elu(x, alpha=1.0)"),
    unary("softplus", _softplus, _softplus_dx,
          "log(1 + e^(beta*x))/beta, x where beta*x > threshold; dx = g*sigmoid(beta*x)",
          attrs=(BETA, THRESHOLD), shape=_softplus_shape, cost=passes(4), local="σ(βx)",
          example="softplus(x, beta=2)"),
    unary("clip", _clip, _clip_dx,
          "x clamped to [min, max]; dx = g where min <= x <= max (bounds included), else 0",
          attrs=(LOWER, UPPER), shape=_clip_shape, kinked=True, local="[min ≤ x ≤ max]",
          example="clip(x, min=0, max=6)"),
    OpDef("where", 3, _where,
          (None, lambda b, g, o, c, x, y: b.op("select", c, g, 0.0),
           lambda b, g, o, c, x, y: b.op("select", c, 0.0, g)), _where_shape,
          "a where cond is 1 (true), else b (cond: 0/1 or booleans, an input); da = g where "
          "cond, db = g elsewhere",
          arg_kinds=("label", "float", "float"), arg_names=("cond", "a", "b"),
          label_classes=2, local="1 to the chosen input", example="where(mask, x, 0)",
          batching="elementwise"),
    unary("sign", lambda xp: xp.sign, None, "sign x (-1, 0 or 1); zero gradient",
          kinked=True, local="0", example="sign(x)"),
    unary("floor", lambda xp: xp.floor, None, "the largest integer <= x; zero gradient",
          kinked=True, local="0", example="floor(x)"),
    unary("ceil", lambda xp: xp.ceil, None, "the smallest integer >= x; zero gradient",
          kinked=True, local="0", example="ceil(x)"),
    # clip's mask (internal): piecewise constant, so no gradient of its own.
    OpDef("in_bounds", 1, _in_bounds, (None,), lambda x, min=None, max=None: x,
          "1 where min <= x <= max (null: no bound), else 0 (clip's derivative)",
          attrs=(LOWER, UPPER), internal=True, category="internal"),
)
