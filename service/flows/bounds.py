"""A request body's size bounded by more than its byte count, before anything is built.

Two checks, both before the expensive step they guard:

- :func:`check_structure`, on the raw bytes before the JSON parser runs: the arrays and
  objects a body may hold are counted (``[`` and ``{``, in C, strings included: an upper
  bound) against a limit derived from the settings, and so are its object keys (``:``) and
  strings (``"``). A parsed empty list or object costs ~60 bytes, so 64 MiB of ``[],``
  parsed to 1.5 GiB of them; with these bounds the parsed containers, keys and strings of
  any body are each at most ~100-300 MiB on the default settings (numbers stay bounded by
  the byte count: a legal 64 MiB JSON tensor is that many numbers).
- :func:`check_bounds`, on the parsed JSON before Pydantic: every list and map a request
  model declares has its most items (``schemas.bounds``), some tied to the settings
  (``MaxItems("max_nodes")``); the first one over is a 413 naming the setting (a fixed
  bound: a 422, as Pydantic's own ``max_length`` says).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel

from schemas.bounds import SPARE_KEYS, limit_of, over_bound
from schemas.graphs import MAX_ARGS
from service.engine.limits import Limits
from service.errors import ContentTooLarge, LimitExceeded, Unprocessable

#: Containers per graph node: the node, its args, its attrs and their lists, with room.
CONTAINERS_PER_NODE = 16
#: Tensor elements per container a nested array may spend: a (n, 16) tensor in nested form
#: is within the bound at any n up to the element limit; (n, 1) up to a sixteenth of it
#: (the flat {shape, data} and b64 forms hold any shape in two or three containers).
ELEMENTS_PER_CONTAINER = 16
#: Object keys (``:`` bytes) per graph node: a node's keys and its attrs', a name in each
#: name map (values, tangents, hvp, a graph's inputs, OIP's inputs and outputs), and the
#: colons names may hold ('grad:x'), with room.
KEYS_PER_NODE = 32
#: Strings (``"`` pairs) per graph node: its id, op, every argument, attr strings; a name
#: in each name map or list.
STRINGS_PER_NODE = MAX_ARGS + 16
#: What any body may have besides: the envelope, small option objects.
CONTAINERS_BASE = 1024
_CHUNK = 1 << 20


def max_containers(limits: Limits) -> int:
    """The most arrays and objects a request body may hold, from the settings."""
    return (CONTAINERS_PER_NODE * limits.max_nodes
            + limits.max_tensor_elements // ELEMENTS_PER_CONTAINER + CONTAINERS_BASE)


def structure_limits(limits: Limits) -> tuple[tuple[bytes, int, str, str], ...]:
    """(the byte counted, its most, what it counts, how the most is made) per structure
    bound: containers, keys, strings."""
    nodes = f"GRADSERVE_MAX_NODES={limits.max_nodes:,}"
    return (
        (b"[{", max_containers(limits), "arrays and objects",
         f"{CONTAINERS_PER_NODE} per graph node ({nodes}) and one per "
         f"{ELEMENTS_PER_CONTAINER} tensor elements (GRADSERVE_MAX_TENSOR_ELEMENTS="
         f"{limits.max_tensor_elements:,}); send a large tensor in the flat {{shape, data}} "
         "or the b64 form"),
        (b":", KEYS_PER_NODE * limits.max_nodes + CONTAINERS_BASE, "object keys",
         f"{KEYS_PER_NODE} per graph node ({nodes})"),
        (b'"', 2 * (STRINGS_PER_NODE * limits.max_nodes + CONTAINERS_BASE),
         "string quotes", f"two per string, {STRINGS_PER_NODE} strings per graph node "
         f"({nodes})"),
    )


def count_bytes(body: bytes | bytearray | memoryview, chars: bytes) -> int:
    """How many bytes of ``body`` are one of ``chars`` (in C, a megabyte at a time)."""
    if isinstance(body, bytes | bytearray):
        return sum(body.count(bytes((c,))) for c in chars)
    total = 0
    for start in range(0, len(body), _CHUNK):  # a view: counted a megabyte at a time
        part = bytes(body[start:start + _CHUNK])
        total += sum(part.count(bytes((c,))) for c in chars)
    return total


def count_containers(body: bytes | bytearray | memoryview) -> int:
    """``[`` and ``{`` bytes of ``body`` (each array and object opens with one)."""
    return count_bytes(body, b"[{")


def check_structure(body: bytes | bytearray | memoryview, limits: Limits) -> None:
    """413 before parsing when ``body`` holds more containers, object keys or strings than
    the settings allow (each counted on the bytes, strings' contents included: an upper
    bound), so that what the parser builds is bounded by more than the byte count."""
    if len(body) <= CONTAINERS_BASE:  # the common small body: no arithmetic either
        return
    for chars, limit, what, made in structure_limits(limits):
        if len(body) <= limit:  # fewer bytes than the bound: nothing to count
            continue
        found = count_bytes(body, chars)
        if found > limit:
            raise ContentTooLarge(
                f"the body holds {found:,} {what} (counted on its bytes), more than the "
                f"{limit:,} a request may have: {made}", loc=("body",))


_BOUNDS: dict[int, tuple[Limits, dict[str, int]]] = {}


def bounds_of(limits: Limits) -> dict[str, int]:
    """Setting name -> value, for the bounds the request models declare by setting name."""
    cached = _BOUNDS.get(id(limits))
    if cached is not None and cached[0] is limits:
        return cached[1]
    values = asdict(limits)  # a flat dataclass of ints: every limit by its field name
    if len(_BOUNDS) > 64:
        _BOUNDS.clear()
    _BOUNDS[id(limits)] = (limits, values)
    return values


def _path(loc: tuple[str | int, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out[:300] or "body"


def check_bounds(model: type[BaseModel], data: Any, limits: Limits) -> None:
    """Before ``model`` validates ``data``: the first list or map over its declared bound is
    a 413 naming the setting it follows (422 for a fixed bound)."""
    bounds = bounds_of(limits)
    excess = over_bound(model, data, bounds)
    if excess is None:
        return
    loc = tuple(p[:128] if isinstance(p, str) else p for p in excess.loc)
    limit = limit_of(excess.bound, bounds)
    what = f"{_path(loc)} item count"
    if isinstance(excess.bound.limit, str):
        err = LimitExceeded(excess.bound.limit, bounds[excess.bound.limit], excess.items,
                            what, loc=loc)
        if excess.bound.plus:
            err.detail += f" (plus {excess.bound.plus})"
            err.args = (err.detail,)
        raise err
    if excess.what == "fields":
        raise Unprocessable(f"{_path(loc)}: {excess.items:,} fields, where at most "
                            f"{limit - SPARE_KEYS} are known (unknown fields are refused)",
                            loc=loc or ("body",))
    raise Unprocessable(f"{_path(loc)}: at most {limit:,} items, got {excess.items:,}",
                        loc=loc)
