"""Tensor codec: wire form (docs/api.md §1) ⇄ NumPy, one conversion per tensor.

Sizes are checked from the wire form (declared shape, list lengths, base64 length) before
NumPy allocates anything; finiteness and rectangularity are checked on the array in one
vectorized pass.
"""

from __future__ import annotations

import binascii
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
import pybase64

from schemas.tensors import MAX_NDIM, B64Tensor, FlatTensor
from service.engine.shapes import fmt
from service.errors import LimitExceeded, Unprocessable

WIRE_DTYPES = {"float64": np.dtype("<f8"), "float32": np.dtype("<f4")}


def _bad(loc: Sequence[str | int], msg: str) -> Unprocessable:
    path = ".".join(str(p) for p in loc)
    return Unprocessable(f"{path}: {msg}", loc=loc)


def _span(shape: Sequence[int]) -> int:
    """Elements the shape would hold if no dimension were 0: NumPy refuses a zero-size array
    whose other dimensions overflow, so those count against the limit too."""
    return math.prod(max(d, 1) for d in shape)


def _too_big(loc: Sequence[str | int], n: int, max_elements: int) -> LimitExceeded:
    return LimitExceeded("max_tensor_elements", max_elements, n,
                         f"{'.'.join(str(p) for p in loc)} element count", loc=loc)


def nested_shape(value: list[Any], loc: Sequence[str | int]) -> tuple[int, ...]:
    """The shape implied by the first element at each depth (NumPy checks the rest)."""
    shape = []
    cur: Any = value
    while isinstance(cur, list):
        shape.append(len(cur))
        if len(shape) > MAX_NDIM:
            raise _bad(loc, f"more than {MAX_NDIM} dimensions")
        if not cur:
            break
        cur = cur[0]
    return tuple(shape)


def _leaf(value: Any) -> Any:
    """The first number of a nested list (following first elements), or what is there
    instead; ``None`` stands for "no leaf" only when a list on the way is empty."""
    for _ in range(MAX_NDIM + 1):
        if type(value) is not list:
            return value
        if not value:
            return 0
        value = value[0]
    return value


def _check_leaf(data: list[Any], loc: Sequence[str | int], booleans: bool) -> None:
    """A list whose first element is not a number is refused for its type, in O(depth),
    before its size is looked at (a million nulls are a type error, not a size one)."""
    leaf = _leaf(data)
    if type(leaf) in (int, float) or (booleans and type(leaf) is bool):
        return
    if type(leaf) is list:
        return  # deeper than MAX_NDIM: nested_shape says so
    raise _bad(loc, "must hold only numbers (integers within 64 bits or floats)")


def _check_expected(loc: Sequence[str | int], shape: tuple[int, ...],
                    expect: tuple[int, ...] | None, whose: str) -> None:
    """The shape the wire form declares (or nests) against the one it must have, before the
    elements are converted: a tangent of 2**24 zeros for an x[2] input allocates nothing."""
    if expect is not None and tuple(expect) != shape:
        raise _bad(loc, f"has shape {fmt(shape)}, {whose} {fmt(tuple(expect))}")


def decode_tensor(wire: Any, *, max_elements: int, loc: Sequence[str | int],
                  booleans: bool = False, expect: tuple[int, ...] | None = None,
                  whose: str = "the input has") -> np.ndarray:
    """One wire tensor → a float64 (or the binary form's dtype) NumPy array. ``booleans``:
    JSON's true/false are taken too, as 1/0 (a condition input, such as where's).
    ``expect``: the shape it must have (checked from the wire form, before any element is
    converted; None: any), which the message names as ``whose`` shape."""
    if isinstance(wire, B64Tensor):
        _check_expected(loc, tuple(wire.shape), expect, whose)
        return _decode_b64(wire, max_elements, loc)
    if isinstance(wire, FlatTensor):
        shape = tuple(wire.shape)
        n = math.prod(shape)
        if isinstance(wire.data, list) and wire.data:
            _check_leaf(wire.data[:1], loc, booleans)
        if _span(shape) > max_elements:
            raise _too_big(loc, _span(shape), max_elements)
        if not isinstance(wire.data, list) or len(wire.data) != n:
            got = len(wire.data) if isinstance(wire.data, list) else "not a list"
            raise _bad(loc, f"data must be a flat list of {n} numbers for shape {fmt(shape)}, "
                       f"got {got}")
        _check_expected(loc, shape, expect, whose)
        arr = _to_array(wire.data, wire.dtype or "float64", loc, booleans)
        if arr.ndim != 1:
            raise _bad(loc, "data must be a flat list of numbers")
        arr = arr.reshape(shape)
    elif isinstance(wire, list):
        _check_leaf(wire, loc, booleans)
        shape = nested_shape(wire, loc)
        n = math.prod(shape)
        if n > max_elements:
            raise _too_big(loc, n, max_elements)
        _check_expected(loc, shape, expect, whose)
        arr = _to_array(wire, "float64", loc, booleans)
        if arr.shape != shape:
            raise _bad(loc, "nested arrays must be rectangular")
    elif booleans and isinstance(wire, bool):
        return np.asarray(float(wire))
    else:
        if isinstance(wire, bool) or not isinstance(wire, int | float):
            raise _bad(loc, "not a tensor")
        try:
            value = float(wire)
        except OverflowError:
            raise _bad(loc, "number out of range") from None
        if not math.isfinite(value):
            raise _bad(loc, "non-finite numbers (NaN, Infinity) are not allowed")
        _check_expected(loc, (), expect, whose)
        return np.asarray(value, dtype=np.float64)
    _require_finite(arr, loc)
    return arr


def _to_array(data: list[Any], dtype: str, loc: Sequence[str | int], booleans: bool = False
              ) -> np.ndarray:
    """One NumPy conversion; strings, nulls and ragged nesting are refused, not coerced."""
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise _bad(loc, "nested arrays must be rectangular and hold only numbers") from None
    if booleans and arr.dtype.kind == "b":
        return arr.astype(WIRE_DTYPES[dtype])
    if arr.dtype.kind not in "iuf":
        # Strings, nulls, booleans (an all-boolean array; NumPy folds a boolean mixed with
        # numbers into them) and integers beyond 64 bits.
        raise _bad(loc, "must hold only numbers (integers within 64 bits or floats)")
    return arr.astype(WIRE_DTYPES[dtype], copy=False)


def _decode_b64(wire: B64Tensor, max_elements: int, loc: Sequence[str | int]) -> np.ndarray:
    shape = tuple(wire.shape)
    n = math.prod(shape)
    if _span(shape) > max_elements:
        raise _too_big(loc, _span(shape), max_elements)
    dtype = WIRE_DTYPES[wire.dtype]
    expected = n * dtype.itemsize
    # Compare the encoded length first: no decoding of a payload that cannot fit.
    if len(wire.b64) != 4 * math.ceil(expected / 3):
        raise _bad(loc, f"b64 must encode {expected} bytes ({n} x {wire.dtype}) for shape "
                   f"{fmt(shape)}")
    try:
        raw = pybase64.b64decode(wire.b64, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(loc, "b64 is not valid base64") from None
    if len(raw) != expected:
        raise _bad(loc, f"b64 must encode {expected} bytes, got {len(raw)}")
    arr = np.frombuffer(raw, dtype=dtype).reshape(shape)
    _require_finite(arr, loc)
    return arr


def _require_finite(arr: np.ndarray, loc: Sequence[str | int]) -> None:
    if not np.isfinite(arr).all():
        raise _bad(loc, "non-finite numbers (NaN, Infinity) are not allowed")


# --- responses ----------------------------------------------------------------------------


def encode_tensor(arr: Any, encoding: str, dtype: str) -> Any:
    """A NumPy value → its response form (plain numbers / nested lists, or binary)."""
    arr = np.asarray(arr, dtype=WIRE_DTYPES[dtype])
    if encoding == "b64":
        # memoryview refuses to cast a view with a zero in its shape: an empty tensor is b"".
        data = memoryview(np.ascontiguousarray(arr)).cast("B") if arr.size else b""  # no copy
        # A Fragment is written as is: no bytes→str decode and no escape scan of megabytes
        # of base64 (whose alphabet needs no escaping).
        b64 = orjson.Fragment(b"".join((b'"', pybase64.b64encode(data), b'"')))
        return {"shape": list(arr.shape), "dtype": dtype, "b64": b64}
    if arr.ndim == 0:
        value = float(arr)
        return value if math.isfinite(value) else None
    if 0 in arr.shape[:-1]:
        # Nested lists cannot say what comes after a zero dim ((0, 3) would be []): the flat
        # object form of docs/api.md §1 keeps the shape.
        return {"shape": list(arr.shape), "dtype": dtype, "data": []}
    # orjson writes NumPy arrays natively (and NaN/Infinity as null).
    return np.ascontiguousarray(arr)


def is_finite(arr: Any) -> bool:
    if isinstance(arr, float | int):
        return math.isfinite(arr)
    if arr.ndim == 0:
        return math.isfinite(arr.item())
    return bool(np.isfinite(arr).all())
