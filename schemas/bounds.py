"""The most items of every list and map in a request model, declared with its type.

A request model's list or map carries its bound in its annotation: Pydantic's own
``Field(max_length=N)`` for a fixed number, or :class:`MaxItems` naming the service setting
the bound follows (``MaxItems("max_nodes")``: as many items as a graph may have nodes)::

    wrt: Annotated[list[Name], MaxItems("max_nodes")] | None = None

:func:`over_bound` walks a parsed body along the model's declared containers only and
reports the first one with too many items *before* Pydantic validates anything (Pydantic
walks every item, and makes one error per bad one: 699,000 ``{}`` in a 2 MB ``wrt`` were
12 s and 900 MiB of errors). It costs one ``len`` per container the model declares, plus a
step per item of a container whose items hold a bounded map or a setting-bound list (a
list with a fixed ``max_length`` is left to Pydantic, which checks its length before its
items; a map's it checks only after validating every item). No setting is read
here: the service passes the bounds (setting name -> value). :func:`unbounded` lists the
containers of a model that declare no bound; a test holds it empty for every request model,
so a new list or map field cannot be added without one.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Union, get_args, get_origin

from annotated_types import MaxLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo


@dataclass(frozen=True, slots=True)
class MaxItems:
    """At most ``limit`` items: a number, or a setting's name (its value, plus ``plus``)."""

    limit: str | int
    plus: int = 0


@dataclass(frozen=True, slots=True)
class Excess:
    """A container over its bound: where, how many items it has, and the bound."""

    loc: tuple[str | int, ...]
    items: int
    bound: MaxItems
    what: str = "items"  # "fields": the keys of an object whose model forbids others


#: A container's check: (kind "list"/"map"/"model", bound, the items' check, a model's fields).
_Check = tuple[str, MaxItems | None, Any, dict[str, Any] | None]
#: Keys an object may have past its model's fields (when the model forbids unknown ones):
#: a few misspellings still get their "did you mean" each; a million do not.
SPARE_KEYS = 8


def _bound_of(metadata: Any) -> MaxItems | None:
    for m in metadata:
        if isinstance(m, MaxItems):
            return m
        if isinstance(m, MaxLen):
            return MaxItems(m.max_length)
        if isinstance(m, FieldInfo):
            found = _bound_of(m.metadata)
            if found is not None:
                return found
    return None


def _members(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    """``tp`` without ``Annotated`` and ``None`` (one type, or a union's members), and the
    metadata met on the way."""
    metadata: tuple[Any, ...] = ()
    while True:
        if get_origin(tp) is Annotated:
            metadata += tp.__metadata__
            tp = get_args(tp)[0]
            continue
        if get_origin(tp) in (Union, types.UnionType):
            members = tuple(a for a in get_args(tp) if a is not type(None))
            if len(members) == 1:
                tp = members[0]
                continue
            return members, metadata
        return tp, metadata


@functools.cache
def _model_check(model: type[BaseModel]) -> Any:
    """A model's check, made once per model class."""
    return _check_of(model)


def _check_of(tp: Any, extra: tuple[Any, ...] = ()) -> Any:
    """The check of a type: a :data:`_Check`, a tuple of them (a union), or None."""
    tp, metadata = _members(tp)
    metadata = extra + metadata
    if isinstance(tp, tuple):
        checks = tuple(c for c in (_check_of(m) for m in tp) if c is not None)
        return checks or None
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        fields = {}
        for name, info in tp.model_fields.items():
            check = _check_of(info.annotation, tuple(info.metadata))
            if check is not None:
                fields[info.validation_alias if isinstance(info.validation_alias, str)
                       else name] = check
        if tp.model_config.get("extra") == "forbid":
            return ("model", MaxItems(len(tp.model_fields) + SPARE_KEYS), None, fields)
        return ("model", None, None, fields) if fields else None
    origin = get_origin(tp)
    if origin is tuple and _fixed_tuple(tp):
        return None  # tuple[X, Y]: its length is its type's (Pydantic checks it first)
    if origin in (list, tuple, set, frozenset):
        args = get_args(tp)
        bound, items = _bound_of(metadata), _check_of(args[0]) if args else None
        if origin is list and items is None and bound is not None and bound.plus == 0 \
                and isinstance(bound.limit, int):
            return None  # Pydantic checks a list's max_length before its items: no walk
        return ("list", bound, items, None)
    if origin is dict or tp is dict:
        args = get_args(tp)
        return ("map", _bound_of(metadata), _check_of(args[1]) if args else None, None)
    return None


#: Per request model, its fields' checks flattened for the per-request walk: (key, the JSON
#: type, bound, the items' check or None) for a container whose items need no walk or only
#: their objects do, (key, None, None, check) for any other; first ("", "fields", the most
#: keys, 0) when the model forbids unknown keys. A plain dict keyed by class: every request
#: reads it.
_TOP: dict[type, tuple[tuple[str, Any, Any, Any], ...]] = {}


def _top(model: type[BaseModel]) -> tuple[tuple[str, Any, Any, Any], ...]:
    check = _model_check(model)
    out: list[tuple[str, Any, Any, Any]] = []
    if check is not None and check[1] is not None:
        out.append(("", "fields", check[1].limit, 0))  # the object's own keys
    for key, sub in (check[3].items() if check is not None else ()):
        if type(sub[0]) is str and sub[0] != "model" and sub[1] is not None and (
                sub[2] is None or _objects_only(sub[2])):
            # A container with a bound, whose items need no walk or only their objects do.
            out.append((key, list if sub[0] == "list" else dict, sub[1], sub[2]))
        else:
            out.append((key, None, None, sub))
    _TOP[model] = entries = tuple(out)
    return entries


def over_bound(model: type[BaseModel], data: Any, bounds: Mapping[str, int]
               ) -> Excess | None:
    """The first container of ``data`` (parsed JSON for ``model``) with more items than its
    declared bound, in field order; None when every one is within its bound. A small
    request costs a ``dict.get`` and a ``len`` per declared field (~1 µs)."""
    if type(data) is not dict:
        return None
    entries = _TOP.get(model)
    if entries is None:
        entries = _top(model)
    get = data.get
    for key, kind, limit, extra in entries:
        if kind == "fields":
            if len(data) > limit:
                return Excess((), len(data), MaxItems(limit), "fields")
            continue
        value = get(key)
        if value is None:
            continue
        if kind is None:
            found = _walk(extra, value, (key,), bounds)
            if found is not None:
                return found
            continue
        if type(value) is not kind:
            continue
        most = limit.limit
        if len(value) > (most if type(most) is int else bounds[most]) + limit.plus:
            return Excess((key,), len(value), limit)
        if extra is not None:  # items whose objects have a check: only those are walked
            for k, v in (value.items() if kind is dict else enumerate(value)):
                if type(v) is dict:
                    found = _walk(extra, v, (key, k), bounds)
                    if found is not None:
                        return found
    return None


def limit_of(bound: MaxItems, bounds: Mapping[str, int]) -> int:
    """A bound's number (a setting's value from ``bounds``, plus ``bound.plus``)."""
    limit = bound.limit
    return (limit if type(limit) is int else bounds[limit]) + bound.plus


def _walk(check: Any, data: Any, loc: tuple[str | int, ...], bounds: Mapping[str, int]
          ) -> Excess | None:
    if type(check) is tuple and check and type(check[0]) is tuple:  # a union's members
        for member in check:
            found = _walk(member, data, loc, bounds)
            if found is not None:
                return found
        return None
    kind, bound, items, fields = check
    if kind == "model":
        if type(data) is not dict:
            return None  # not an object: Pydantic's error, not a bound's
        if bound is not None and len(data) > bound.limit:
            return Excess(loc, len(data), bound, "fields")
        for key, sub in fields.items():
            value = data.get(key)
            if value is None:
                continue
            # Inline, the common case (a list or map whose items need no walk): one len.
            if type(sub[0]) is str and sub[0] != "model" and sub[2] is None \
                    and sub[1] is not None:
                if type(value) is (list if sub[0] == "list" else dict) and \
                        len(value) > limit_of(sub[1], bounds):
                    return Excess((*loc, key), len(value), sub[1])
                continue
            found = _walk(sub, value, (*loc, key), bounds)
            if found is not None:
                return found
        return None
    if (kind == "list" and type(data) is not list) or (kind == "map" and type(data) is not dict):
        return None
    if bound is not None and len(data) > limit_of(bound, bounds):
        return Excess(loc, len(data), bound)
    if items is not None:
        pairs = enumerate(data) if kind == "list" else data.items()
        objects_only = _objects_only(items)
        for key, value in pairs:
            if objects_only and type(value) is not dict:
                continue  # a number or nested list where only objects have a check
            found = _walk(items, value, (*loc, key), bounds)
            if found is not None:
                return found
    return None


_OBJECTS_ONLY: dict[int, tuple[Any, bool]] = {}


def _objects_only(check: Any) -> bool:
    """Whether ``check`` (a check or a union's) looks at objects only (models, maps);
    remembered per check (checks live as long as their model's)."""
    known = _OBJECTS_ONLY.get(id(check))
    if known is not None and known[0] is check:
        return known[1]
    if type(check[0]) is tuple:
        answer = all(_objects_only(c) for c in check)
    else:
        answer = check[0] in ("model", "map")
    _OBJECTS_ONLY[id(check)] = (check, answer)
    return answer


def _fixed_tuple(tp: Any) -> bool:
    """``tuple[X, Y]`` (a fixed length), not ``tuple[X, ...]``."""
    args = get_args(tp)
    return bool(args) and Ellipsis not in args


def unbounded(model: type[BaseModel]) -> list[str]:
    """Every list or map type reachable from ``model``'s fields that declares no bound, as
    ``Model.field`` paths (a test holds this empty for every request model)."""
    out: list[str] = []
    _audit(model, model.__name__, out, set())
    return out


def _audit(tp: Any, where: str, out: list[str], seen: set[Any],
           extra: tuple[Any, ...] = ()) -> None:
    tp, metadata = _members(tp)
    metadata = extra + metadata
    if isinstance(tp, tuple):
        for member in tp:
            _audit(member, where, out, seen)
        return
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if tp in seen:
            return
        seen.add(tp)
        for name, info in tp.model_fields.items():
            _audit(info.annotation, f"{tp.__name__}.{name}", out, seen, tuple(info.metadata))
        return
    origin = get_origin(tp)
    if origin is tuple and _fixed_tuple(tp):
        for arg in get_args(tp):
            _audit(arg, f"{where}[]", out, seen)
        return
    if origin in (list, tuple, set, frozenset, dict) or tp in (list, dict):
        if _bound_of(metadata) is None:
            out.append(where)
        for arg in get_args(tp)[-1:]:
            _audit(arg, f"{where}[]", out, seen)
