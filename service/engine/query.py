"""Query: everything a gradient request asks of a plan, besides the input values.

One immutable record, the one argument of :func:`service.engine.execute` that says what to
compute. Its tensor-valued fields are marked in their field metadata (``"tensor"``:
``"one"`` for a tensor, ``"map"`` for a name → tensor mapping), so a flow can decode such
wire fields generically::

    for f in dataclasses.fields(Query):
        kind = f.metadata.get("tensor")   # None, "one" or "map"

``is_plain`` is *the* test for a request that asks for nothing beyond gradients (``wrt``
and ``dtype`` may be set): the engine's all-scalar path and the flows' fast paths read it.
It is computed once, when the query is built (a stored field, read per request: ~7x
cheaper than a property). Tensors are held as given (not copied); ``wrt`` and ``fetch``
are stored as tuples. ``dataclasses.replace`` makes a changed copy (``is_plain`` is
computed again).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

__all__ = ["DTYPES", "PLAIN", "Query"]

DTYPES = ("float64", "float32")


@dataclass(frozen=True, slots=True, init=False)
class Query:
    """What to compute: gradients with respect to ``wrt`` (None: every float input; ``()``:
    none) of the objective ``<upstream, output>`` (``upstream`` None: the output itself,
    which must then be a scalar), and any of the options below, in ``dtype``."""

    wrt: tuple[str, ...] | str | None = None
    upstream: Any = field(default=None, metadata={"tensor": "one"})  # dL/d(output)
    # input → direction t: the JVP Σ J_i t_i
    tangents: Mapping[str, Any] | None = field(default=None, metadata={"tensor": "map"})
    # wrt input → direction v: the Hessian-vector product of the objective
    hvp: Mapping[str, Any] | None = field(default=None, metadata={"tensor": "map"})
    jacobian: bool = False  # the Jacobian of the output with respect to each wrt input
    hessian: bool = False  # every block of the objective's Hessian over the wrt inputs
    trace: bool = False  # every forward node's value and gradient
    trace_backward: bool = False  # the backward graph's nodes and values (implies trace)
    check: bool = False  # the derivatives against central differences in float64
    fetch: tuple[str, ...] = ()  # node ids whose forward values are returned
    dtype: str = "float64"  # "float64" or "float32" (not validated here: execute refuses)
    # (loss type, targets): the objective is that loss of the output (engine/loss.py)
    loss: tuple[str, Any] | None = field(default=None, metadata={"tensor": "loss"})
    output: str | None = None  # another of a model's outputs (engine/model.py)
    # inputs whose leading axis indexes independent examples (vmap, in_dims=0): batched.py
    batched: tuple[str, ...] | None = None
    per_example: bool = False  # gradients of the unbatched inputs per example, not summed
    directions: int | None = None  # K: every tangent and hvp direction has a leading K axis
    # True when nothing beyond wrt and dtype is asked; computed, never passed.
    is_plain: bool = field(default=True, init=False, repr=False, compare=False)

    def __init__(self, wrt: Iterable[str] | None = None, upstream: Any = None,
                 tangents: Mapping[str, Any] | None = None,
                 hvp: Mapping[str, Any] | None = None, jacobian: bool = False,
                 hessian: bool = False, trace: bool = False, trace_backward: bool = False,
                 check: bool = False, fetch: Iterable[str] = (), dtype: str = "float64",
                 loss: tuple[str, Any] | None = None, output: str | None = None,
                 batched: Iterable[str] | None = None, per_example: bool = False,
                 directions: int | None = None) -> None:
        # By hand, through the slots' own setters: a flow builds one Query per request, and
        # the generated frozen __init__ (object.__setattr__ per field) costs ~3x as much.
        # tests/engine/test_query.py holds these defaults to the fields'.
        # wrt: names, or one of engine/model.py's words ("inputs", "parameters", "all")
        if wrt is not None and type(wrt) is not tuple and type(wrt) is not str:
            wrt = tuple(wrt)
        if type(fetch) is not tuple:
            fetch = tuple(fetch)
        if batched is not None and type(batched) is not tuple:
            batched = tuple(batched)
        _set_wrt(self, wrt)
        _set_upstream(self, upstream)
        _set_tangents(self, tangents)
        _set_hvp(self, hvp)
        _set_jacobian(self, jacobian)
        _set_hessian(self, hessian)
        _set_trace(self, trace)
        _set_trace_backward(self, trace_backward)
        _set_check(self, check)
        _set_fetch(self, fetch)
        _set_dtype(self, dtype)
        _set_loss(self, loss)
        _set_output(self, output)
        _set_batched(self, batched)
        _set_per_example(self, per_example)
        _set_directions(self, directions)
        _set_is_plain(self, upstream is None and tangents is None and hvp is None
                      and loss is None and not fetch and output is None and batched is None
                      and directions is None and not per_example
                      and not (trace or trace_backward or jacobian or check or hessian))


(_set_wrt, _set_upstream, _set_tangents, _set_hvp, _set_jacobian, _set_hessian, _set_trace,
 _set_trace_backward, _set_check, _set_fetch, _set_dtype, _set_loss, _set_output,
 _set_batched, _set_per_example, _set_directions, _set_is_plain) = (
    vars(Query)[f.name].__set__ for f in fields(Query))

PLAIN = Query()  # gradients of a scalar output with respect to every float input
