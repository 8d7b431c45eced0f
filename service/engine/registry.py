"""The op record and the registry every part of gradserve reads ops from.

One op is one :class:`Op`: its forward, one VJP per argument (``None`` where the argument
is not differentiable), a shape rule, a work estimate and a one-line doc of its local
gradient. The listing at ``GET /v1/ops``, the compiler's checks, the gradient tests and the
generated op lists (docs/api.md's table, the playground's; ``service.engine.ops.gen``) all
come from the same registry. The category modules of ``service.engine.ops`` write each op as
an :class:`OpDef`, its forward not yet bound to an array namespace; ``build_registry(xp)``
binds them into :class:`Op` records.

VJP convention (as PyTorch's ``derivatives.yaml``, written in differentiable ops as
tinygrad's gradient table is): every rule is called as ``vjp(b, g, out, *args, **attrs)``
where ``b`` is a :class:`GraphBuilder`, ``g`` the node of the upstream gradient
d(objective)/d(out), ``out`` the node of the forward result and ``args`` the argument nodes.
The rule *builds graph nodes* (``b.op("mul", g, y)``) and returns the node of the gradient,
or None where it is identically zero. Because the backward pass is itself a graph of
registry ops, differentiating it again gives second derivatives (Hessian-vector products)
with no second table of rules. A rule may return a gradient of the *broadcast* shape; the
engine, not the rule, sums it back to the argument's shape. A variadic op (``concat``,
``stack``: ``Op.variadic``) has one rule for its repeated argument, called per argument with
the argument's position first (``vjp(i, b, g, out, *args, **attrs)``).

Ops whose backward is fused or piecewise constant (masks, ``sum_to``, ``onehot``...) are
registered as ``internal`` ops: they appear in backward graphs only, never in ``GET
/v1/ops``, expressions or user graphs, so they are free to change.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

from service.engine.attrs import (  # noqa: F401 - the op record's attrs, re-exported
    ATTR_KINDS,
    MAX_ATTR_INT,
    MAX_NDIM,
    Attr,
    coerce_attr,
)
from service.engine.errors import GraphError

Shape = tuple[int, ...]
Ref = int  # a node of a graph under construction (its value slot)


class GraphBuilder(Protocol):
    """What a VJP rule may do: add nodes and read shapes (see ``service.engine.autodiff``)."""

    def op(self, name: str, *args: Ref | float, **attrs: Any) -> Ref: ...

    def shape(self, ref: Ref) -> Shape: ...


class ShapeError(ValueError):
    """Raised by a shape rule; the compiler turns it into a GraphError naming the node (and,
    with ``attr``, the attr at fault: its ``loc`` ends in ``"attrs", attr``)."""

    def __init__(self, message: str, attr: str | None = None) -> None:
        super().__init__(message)
        self.attr = attr


# --- the op record ------------------------------------------------------------------------

ShapeRule = Callable[..., Shape]
CostRule = Callable[[Sequence[Shape], Shape, dict[str, Any]], int]


def size_of(shape: Sequence[int]) -> int:
    return math.prod(shape)


def elementwise_cost(shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> int:
    """Default work estimate: one pass over the output and over every argument."""
    return size_of(out) + sum(size_of(s) for s in shapes)


@dataclass(frozen=True)
class Op:
    """One operation: forward, one VJP per argument, shape rule, work estimate, doc.

    A VJP of None means "no gradient": for a ``label`` argument (integer class labels) and
    for a float argument of a piecewise-constant op (a mask), whose derivative is zero.
    """

    name: str
    arity: int
    forward: Callable[..., Any]
    vjps: tuple[Callable[..., Any] | None, ...]
    shape: ShapeRule
    doc: str
    attrs: tuple[Attr, ...] = ()
    # "float" arguments are differentiable tensors; "label" arguments are integer class
    # labels that must be an input of the graph and get no gradient.
    arg_kinds: tuple[str, ...] = ()
    arg_names: tuple[str, ...] = ()
    # The values a label argument may take, [0, label_classes): where's 0/1 condition has 2.
    # 0: the class count is the last axis of the op's float argument (the losses' scores).
    label_classes: int = 0
    cost: CostRule = elementwise_cost
    category: str = "elementwise"
    # Internal ops build backward graphs only: hidden from /v1/ops, expressions, user graphs.
    internal: bool = False
    # The result may share memory with an argument (reshape, broadcast_to): the cost model
    # counts no new bytes for it.
    view: bool = False
    # Where the op has kinks (relu, abs, max...), second derivatives through it are taken as
    # zero, as PyTorch does; listed in the docs from this flag.
    kinked: bool = False
    # The local derivative in words, as the playground writes it beside a scalar gate
    # ("(1−σ)σ"); empty where the page shows none.
    local: str = ""
    # A short expression that uses the op ("conv2d(x, w, b, padding=1)"), for the docs.
    example: str = ""
    # The last argument repeats (concat, stack): the op takes ``arity`` or more arguments,
    # and the last VJP rule is called for each of them with its position first:
    # ``vjp(i, b, g, out, *args, **attrs)`` (see :meth:`vjps_for`).
    variadic: bool = False
    # The values a label argument may hold, [lo, hi), from the argument shapes and attrs as
    # the shape rule takes them; None: class labels, [0, the last axis of the first float
    # argument). gather's indices: [-n, n) for the n entries of the gathered axis.
    label_range: Callable[..., tuple[int, int]] | None = None
    # The fewest args a node may give (None: ``arity``); the trailing ones may be left out
    # (conv2d's bias), and the forward, shape rule and VJPs are then called without them.
    min_arity: int | None = None
    # Elements the forward allocates besides its result and frees before it returns (an
    # im2col buffer), as a cost rule: the schedule's peak counts them at the op's step.
    scratch: CostRule | None = None
    # The batching rule (a name in service.engine.batch_rules.RULES): how the op runs on
    # values with a leading example axis (the ``batched`` option). "": none (internal ops,
    # which appear in backward graphs only, need none: those are built from batched values).
    batching: str = ""

    def __post_init__(self) -> None:
        assert len(self.vjps) == self.arity, self.name
        assert self.arity >= 1 or not self.variadic, self.name
        if self.min_arity is None:
            object.__setattr__(self, "min_arity", self.arity)
        assert 0 <= self.min_arity <= self.arity, self.name  # type: ignore[operator]
        assert not (self.variadic and self.min_arity != self.arity), self.name
        if not self.arg_kinds:
            object.__setattr__(self, "arg_kinds", ("float",) * self.arity)
        if not self.arg_names:
            names = ("x", "y", "z")[: self.arity] if self.arity <= 3 else ()
            object.__setattr__(self, "arg_names", names)
        for kind, vjp in zip(self.arg_kinds, self.vjps):
            assert kind != "label" or vjp is None, self.name

    def takes(self, n: int) -> bool:
        """Whether the op takes ``n`` arguments (a variadic op: ``arity`` or more; an op
        with optional trailing ones: ``min_arity`` to ``arity``)."""
        if self.variadic:
            return n >= self.arity
        return self.min_arity <= n <= self.arity  # type: ignore[operator]

    def arity_text(self) -> str:
        """How many arguments the op takes, in words ("2", "at least 1", "2 or 3")."""
        if self.variadic:
            return f"at least {self.arity}"
        if self.min_arity != self.arity:
            return f"{self.min_arity} or {self.arity}" if self.arity - self.min_arity == 1 \
                else f"{self.min_arity} to {self.arity}"  # type: ignore[operator]
        return str(self.arity)

    def kinds_for(self, n: int) -> tuple[str, ...]:
        """The kinds of ``n`` arguments (a variadic op's last kind repeats; optional
        trailing ones left out are not counted)."""
        if not self.variadic:
            return self.arg_kinds[:n]
        return self.arg_kinds + self.arg_kinds[-1:] * (n - self.arity)

    def vjps_for(self, n: int) -> tuple[Callable[..., Any] | None, ...]:
        """The VJP rule of each of ``n`` arguments: ``vjps`` itself for a fixed arity; for
        a variadic op, the last rule bound to each repeated argument's position."""
        if not self.variadic:
            return self.vjps[:n]
        rule = self.vjps[-1]
        return self.vjps[:-1] + tuple(None if rule is None else partial(rule, i)
                                      for i in range(self.arity - 1, n))

    def attr(self, name: str) -> Attr | None:
        for a in self.attrs:
            if a.name == name:
                return a
        return None

    def normalize_attrs(self, given: dict[str, Any]) -> dict[str, Any]:
        """Fill defaults and validate; raises ValueError naming the attr."""
        out: dict[str, Any] = {}
        for key in given:
            if self.attr(key) is None:
                known = ", ".join(a.name for a in self.attrs) or "none"
                raise ValueError(f"op '{self.name}' has no attr {key[:64]!r} (attrs: {known})")
        for a in self.attrs:
            out[a.name] = coerce_attr(a, given[a.name]) if a.name in given else a.default
        return out

    def describe(self) -> dict[str, Any]:
        """The JSON listing of this op for ``GET /v1/ops``."""
        return {
            "name": self.name,
            "arity": self.arity,
            # True: the last argument repeats, so the op takes ``arity`` or more arguments.
            "variadic": self.variadic,
            "args": [
                {"name": n, "kind": k, "differentiable": k == "float",
                 **({"optional": True} if i >= self.min_arity else {})}  # type: ignore[operator]
                for i, (n, k) in enumerate(zip(self.arg_names, self.arg_kinds))
            ],
            "attrs": [a.describe() for a in self.attrs],
            "category": self.category,
            "gradient": self.doc,
        }


Forward = Callable[..., Any]
#: An op's forward as a category module writes it: the array namespace → the forward over it.
ForwardFactory = Callable[[Any], Forward]


@dataclass(frozen=True)
class OpDef(Op):
    """An op as its category module writes it, independent of the array namespace.

    The fields are :class:`Op`'s, except that ``forward`` is a factory that :meth:`bind`
    calls once per registry with the namespace ``xp``, returning the plain callable the
    compiler stores in each step (so the step loop calls NumPy's ``exp`` or a closure over
    ``xp`` itself, with no indirection per call). Only a bound :class:`Op` registers.
    """

    def bind(self, xp: Any) -> Op:
        """The :class:`Op` of this definition, its forward written against ``xp``."""
        return Op(**{**vars(self), "forward": self.forward(xp)})


def _identity(value: Any) -> Any:
    return value


class Registry:
    """Name → :class:`Op`. Iteration order is registration order.

    ``get``, iteration, ``names`` and ``in`` see the public ops only (what users may write);
    :meth:`op` finds internal ones too (what backward graphs are built from). ``xp`` is the
    array namespace every op's forward is written against.
    """

    def __init__(self, backend: str, xp: Any = None, host: Any = None) -> None:
        self.backend = backend
        self.xp = xp
        # How values cross the host/device boundary (a ``service.engine.backend.Backend``): request
        # tensors move to the device once at binding, results back once at the end.
        self.host = host
        self.device: str = getattr(host, "device", "cpu")
        self.to_device: Callable[[Any], Any] = getattr(host, "to_device", _identity)
        self.to_host: Callable[[Any], Any] = getattr(host, "to_host", _identity)
        # 0-d values run as NumPy scalars (NumPy only: far cheaper than 0-d arrays).
        self.scalars: bool = getattr(host, "scalars", True)
        # Device memory a request may hold (None: host memory, the settings' limit alone).
        self.memory_bytes: int | None = getattr(host, "memory_bytes", None)
        # The request dtypes as this namespace's types, with their sizes in bytes.
        self.dtypes: dict[str, tuple[Any, int]] = {} if xp is None else {
            "float64": (xp.float64, 8), "float32": (xp.float32, 4)}
        self._ops: dict[str, Op] = {}
        self._internal: dict[str, Op] = {}

    def scalar(self, value: float, dtype: Any) -> Any:
        """A 0-d value of ``dtype``: a NumPy scalar where allowed, else a 0-d array."""
        return dtype(value) if self.scalars else self.xp.asarray(value, dtype=dtype)

    def register(self, op: Op) -> Op:
        assert type(op) is Op, f"{op.name!r} is not bound to a namespace (OpDef.bind)"
        if op.name in self._ops or op.name in self._internal:
            raise ValueError(f"op {op.name!r} registered twice")
        (self._internal if op.internal else self._ops)[op.name] = op
        return op

    def op(self, name: str) -> Op:
        """Any op, public or internal, by name (KeyError when unknown: an engine bug)."""
        return self._ops.get(name) or self._internal[name]

    def internal_ops(self) -> list[Op]:
        return list(self._internal.values())

    def get(self, name: str, *, node: str | None = None) -> Op:
        """The op called ``name``, or a GraphError with a "did you mean" suggestion."""
        op = self._ops.get(name) if isinstance(name, str) else None
        if op is None:
            hint = ""
            if isinstance(name, str):
                close = difflib.get_close_matches(name, list(self._ops), n=1)
                if close:
                    hint = f" (did you mean '{close[0]}'?)"
            raise GraphError(f"unknown op '{name}'{hint}", node=node)
        return op

    def __contains__(self, name: object) -> bool:
        return name in self._ops

    def __iter__(self) -> Iterator[Op]:
        return iter(self._ops.values())

    def __len__(self) -> int:
        return len(self._ops)

    def names(self) -> list[str]:
        return list(self._ops)
