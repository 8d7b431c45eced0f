"""One driver for every endpoint that runs the engine: resolve → bind → estimate → execute →
encode.

An endpoint is a :class:`Flow`: a small object made per request from its validated wire
model, that knows the endpoint's words (where its graph comes from, how its tensors are
written, what its fields are called) and nothing of HTTP. :func:`run` calls its steps in the
one order every endpoint shares; the engine in between is always the same
``execute(plan, values, query)``.

The engine's errors name engine things (an input, an option such as ``upstream``); a flow
rewords them for its wire (OIP says ``input 'grad:output'``) in :meth:`Flow.reword`, the
one place where engine words become the endpoint's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import fields
from typing import Any, Protocol

from service.config import Settings
from service.engine import Plan, Query, Result, execute
from service.engine.limits import Deadline
from service.engine.query import PLAIN
from service.errors import ProblemError
from service.flows.batcher import Batcher, mergeable
from service.flows.codec import decode_tensor
from service.runtime import tracing
from service.store.cache import GraphCache

#: Told the graph id and cache result as soon as they are known, so that an error further on
#: is still logged with its graph id.
Note = Callable[[str, str | None], None]


def _no_note(graph_id: str, cache: str | None) -> None:
    return None


def _no_release() -> None:
    return None


class Env:
    """What a flow may use: the worker's settings and graph cache, the request's deadline;
    the worker's dynamic batcher and how to give the request's compute slot back (a request
    that joins a merged batch waits without one) and take one again (None: never given
    back but to join)."""

    __slots__ = ("settings", "cache", "deadline", "note", "batcher", "release", "acquire")

    def __init__(self, settings: Settings, cache: GraphCache, deadline: Deadline | None = None,
                 note: Note = _no_note, batcher: Batcher | None = None,
                 release: Callable[[], None] = _no_release,
                 acquire: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self.cache = cache
        self.deadline = deadline
        self.note = note
        self.batcher = batcher
        self.release = release
        self.acquire = acquire


class Flow(Protocol):
    """One endpoint's steps around the engine; made per request from its wire model."""

    def resolve(self, env: Env) -> tuple[Plan, str]:
        """The compiled plan and the cache result (``hit``/``miss``/...)."""

    def bind(self, plan: Plan, env: Env) -> tuple[Mapping[str, Any], Query]:
        """The engine's input values and the request spec, decoded from the wire."""

    def estimate(self, plan: Plan, values: Mapping[str, Any], query: Query, env: Env) -> None:
        """Refuse (413) an answer over the limits before anything runs."""

    def encode(self, plan: Plan, cache: str, result: Result, env: Env) -> Any:
        """The answer in the endpoint's form."""

    def reword(self, err: ProblemError, env: Env) -> ProblemError:
        """An engine error in the endpoint's words (the same object, or a new one)."""

    @property
    def batchable(self) -> bool:
        """Whether the request may be merged with others (dynamic batching, batcher.py):
        a registered graph's, whose values the flow decoded into arrays."""


def run(flow: Flow, env: Env) -> Any:
    """The one request flow: every endpoint that computes runs these steps in this order."""
    try:
        plan, cache = flow.resolve(env)
        env.note(plan.graph_id, cache)
        return run_plan(flow, plan, cache, env)
    except ProblemError as err:
        raise flow.reword(err, env) from None


def run_plan(flow: Flow, plan: Plan, cache: str, env: Env) -> Any:
    """:func:`run`'s steps once the plan is known (errors in engine words)."""
    values, query = flow.bind(plan, env)
    flow.estimate(plan, values, query, env)
    batcher = env.batcher
    with tracing.span("execute", graph_id=plan.graph_id):
        if batcher is not None and batcher.enabled and mergeable(query) \
                and getattr(flow, "batchable", False):
            result = batcher.run(plan, values, query, env.deadline, env.release, execute,
                                 env.acquire)
        else:
            result = execute(plan, values, query, limits=env.settings.limits,
                             deadline=env.deadline)
    return flow.encode(plan, cache, result, env)


# --- from a wire model to a Query -----------------------------------------------------------

#: (field name, tensor kind) of every Query field: "one" a tensor, "map" name → tensor,
#: "loss" a loss object (type and targets), None anything else (taken as it is).
QUERY_FIELDS: tuple[tuple[str, str | None], ...] = tuple(
    (f.name, f.metadata.get("tensor")) for f in fields(Query) if f.name != "is_plain")
QUERY_NAMES = frozenset(name for name, _ in QUERY_FIELDS)


def query_from(req: Any, max_elements: int, shapes: Mapping[str, tuple[int, ...]] | None = None,
               **given: Any) -> Query:
    """The Query of a wire model whose fields are named as Query's (``/v1/gradients`` and
    every request built on its options): a tensor field decoded (sizes checked before any
    allocation, errors located at the field), a list as a tuple, any other field as sent.
    ``given`` sets fields the endpoint computes itself. Adding a request option is a field
    here and in the wire model with the same name, and the code that uses it.

    Only the fields the request set are read (a wire default is the Query's default), in
    Query's order, so the first bad tensor is the same whatever the body's order.
    ``shapes``: the input values' shapes, when known: a name → tensor field's tensor for an
    input must have its shape, checked from the wire form before it is converted (an option
    that gives such tensors another shape says so here: ``directions`` puts K in front)."""
    sent = getattr(req, "model_fields_set", None)
    if not given and sent is not None and sent.isdisjoint(QUERY_NAMES):
        return PLAIN  # the common small request: nothing but values and a graph
    directions = getattr(req, "directions", None)
    whose = "the input has"
    if directions is not None and shapes is not None:  # every direction has a leading K axis
        shapes = {n: (directions, *s) for n, s in shapes.items()}
        whose = f"with directions: {directions} it must be"
    kwargs: dict[str, Any] = {}
    for name, tensor in QUERY_FIELDS:
        if name in given:
            kwargs[name] = given[name]
            continue
        if sent is not None and name not in sent:
            continue
        value = getattr(req, name, None)
        if value is None:
            continue
        if tensor == "one":
            value = decode_tensor(value, max_elements=max_elements, loc=(name,))
        elif tensor == "map":
            value = {n: decode_tensor(v, max_elements=max_elements, loc=(name, n),
                                      expect=None if shapes is None else shapes.get(n),
                                      whose=whose)
                     for n, v in value.items()}
        elif tensor == "loss":
            value = (value.type, decode_tensor(value.targets, max_elements=max_elements,
                                               loc=(name, "targets")))
        kwargs[name] = value
    return Query(**kwargs)
