"""Op attributes: the :class:`Attr` record and the kinds of value an attr takes, each
validated and put in canonical (hashable, JSON-friendly) form by :func:`coerce_attr` before
an op sees it. A kind is a name in :data:`ATTR_KINDS` and a branch of the coercion; the
listing at ``GET /v1/ops`` shows each attr's kind and default."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

ATTR_KINDS = ("axis", "axes", "shape", "bool", "float", "int", "str")


@dataclass(frozen=True)
class Attr:
    """One op option. ``kind`` decides the accepted JSON form (see :func:`coerce_attr`)."""

    name: str
    kind: str
    default: Any
    doc: str
    # The values a "choice" attr takes (its doc lists them); empty for every other kind.
    choices: tuple[Any, ...] = ()

    def __post_init__(self) -> None:
        assert self.kind in ATTR_KINDS, self.kind
        assert (self.kind == "choice") == bool(self.choices), self.name

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "default": self.default, "doc": self.doc}


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# --- the "int_or_ints" kind: an integer or a list of integers (conv2d's stride, padding) --
# Null stands for "not given" (a pool's stride defaults to its kernel). The op's shape rule
# checks how many entries it takes and their range, naming the attr.
ATTR_KINDS += ("int_or_ints",)


def _coerce_int_or_ints(attr: Attr, value: Any) -> Any:
    if value is None or _is_int(value):
        return value
    if isinstance(value, list | tuple) and value and all(_is_int(v) for v in value):
        return tuple(value)
    raise ValueError(f"attr '{attr.name}' must be an integer or a list of integers")


# Integers in attrs stay within what every JSON reader (and the canonical form's encoder,
# which stops at 64 bits) takes exactly.
MAX_ATTR_INT = 2**53
# As service.engine.ir.MAX_NDIM and schemas.tensors.MAX_NDIM (registry imports neither).
MAX_NDIM = 32


def coerce_attr(attr: Attr, value: Any) -> Any:
    """Validate one attr value from JSON or an expression; return its canonical form.

    Canonical forms are JSON-friendly and hashable: ints, floats, bools, None, tuples of ints.
    Raises ``ValueError`` with a message for the user.
    """
    if attr.kind == "ints":
        return coerce_ints(attr, value)
    ints = value if isinstance(value, list | tuple) else [value]
    # A list attr (axes, a shape) never needs more entries than a tensor has axes: refuse a
    # longer one before looking at its items, so a 250,000-entry list costs one len().
    if len(ints) > MAX_NDIM:
        raise ValueError(f"attr '{attr.name}' has {len(ints):,} entries, more than the "
                         f"{MAX_NDIM} axes a tensor may have")
    if any(_is_int(v) and abs(v) > MAX_ATTR_INT for v in ints):
        raise ValueError(f"attr '{attr.name}': integers must lie within +-2^53")
    kind = attr.kind
    if kind in MORE_ATTR_KINDS:
        return _coerce_more(attr, value)
    if kind == "int_or_ints":
        return _coerce_int_or_ints(attr, value)
    if kind == "bool":
        if not isinstance(value, bool):
            raise ValueError(f"attr '{attr.name}' must be true or false")
        return value
    if kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"attr '{attr.name}' must be a number")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"attr '{attr.name}' must be finite")
        return value
    if kind == "str":
        if not isinstance(value, str):
            raise ValueError(f"attr '{attr.name}' must be a string")
        return value
    if kind == "int":
        if not _is_int(value):
            raise ValueError(f"attr '{attr.name}' must be an integer")
        return value
    if kind == "axis":
        if value is None or _is_int(value):
            return value
        if isinstance(value, list | tuple) and value and all(_is_int(v) for v in value):
            if len(set(value)) != len(value):
                raise ValueError(f"attr '{attr.name}' repeats an axis")
            return tuple(value)
        raise ValueError(f"attr '{attr.name}' must be null, an integer or a list of integers")
    if kind == "axes":
        if value is None:
            return None
        if isinstance(value, list | tuple) and all(_is_int(v) for v in value):
            return tuple(value)
        raise ValueError(f"attr '{attr.name}' must be null or a list of integers")
    # kind == "shape"
    if isinstance(value, list | tuple) and all(_is_int(v) for v in value):
        if any(v < -1 for v in value) or sum(v == -1 for v in value) > 1:
            raise ValueError(f"attr '{attr.name}': dims must be >= 0, with at most one -1")
        return tuple(value)
    raise ValueError(f"attr '{attr.name}' must be a list of integers")


# --- the "ints" kind: a list of integers of any sign, up to two per axis --------------------
# (slice's starts/ends/steps, pad's pads in ONNX's [begin_0, ..., end_0, ...] layout.)

ATTR_KINDS += ("ints",)
MAX_ATTR_INTS = 2 * MAX_NDIM


def coerce_ints(attr: Attr, value: Any) -> tuple[int, ...] | None:
    """An "ints" attr: null, or a list of at most 64 integers within +-2^53 (length first)."""
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        raise ValueError(f"attr '{attr.name}' must be null or a list of integers")
    if len(value) > MAX_ATTR_INTS:
        raise ValueError(f"attr '{attr.name}' has {len(value):,} entries, more than the "
                         f"{MAX_ATTR_INTS} (two per axis of a {MAX_NDIM}-d tensor) it may have")
    if not all(_is_int(v) for v in value):
        raise ValueError(f"attr '{attr.name}' must be null or a list of integers")
    if any(abs(v) > MAX_ATTR_INT for v in value):
        raise ValueError(f"attr '{attr.name}': integers must lie within +-2^53")
    return tuple(value)


# --- attr kinds of the more elementwise ops and reductions -------------------------------
# "choice": one value of a fixed set, ints and strings (gelu's approximate, norm's ord); a
# number given as a float that equals an int choice is that int (ord 2.0 is 2).
# "float_or_null": a finite number or null (clip's bounds, null: no bound).

MORE_ATTR_KINDS = ("choice", "float_or_null")
ATTR_KINDS += MORE_ATTR_KINDS


def _coerce_more(attr: Attr, value: Any) -> Any:
    if attr.kind == "choice":
        if not isinstance(value, bool):
            for choice in attr.choices:
                if isinstance(value, str) == isinstance(choice, str) and value == choice:
                    return choice
        shown = ", ".join(f'"{c}"' if isinstance(c, str) else str(c) for c in attr.choices)
        raise ValueError(f"attr '{attr.name}' must be one of {shown}")
    # float_or_null
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"attr '{attr.name}' must be a number or null")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"attr '{attr.name}' must be finite (null for no bound)")
    return value
