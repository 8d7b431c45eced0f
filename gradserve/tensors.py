"""NumPy arrays to and from the wire forms of docs/api.md §1, on the client side."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any

import numpy as np

#: Arrays with at least this many elements go as binary objects (base64 of the raw bytes):
#: about half the bytes of decimal JSON and no number parsing on either side.
B64_THRESHOLD = 1024

_WIRE = {np.dtype("float32"): "float32"}


def to_wire(value: Any, b64_threshold: int = B64_THRESHOLD) -> Any:
    """An array-like → a number, nested lists, or ``{shape, dtype, b64}`` when large.

    float32 arrays keep their dtype in the binary form; everything else goes as float64
    (integer class labels too: the server checks they are whole numbers).
    """
    if isinstance(value, bool):
        raise TypeError("a tensor holds numbers, not booleans")
    if isinstance(value, int | float):
        return value
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"a tensor holds numbers, got an array of dtype {arr.dtype}")
    if arr.ndim == 0:
        return arr.item()
    if arr.size >= b64_threshold:
        dtype = _WIRE.get(arr.dtype, "float64")
        raw = np.ascontiguousarray(arr, dtype="<f4" if dtype == "float32" else "<f8")
        return {"shape": list(arr.shape), "dtype": dtype,
                "b64": base64.b64encode(raw.tobytes()).decode("ascii")}
    return arr.tolist()


def is_b64(wire: Any) -> bool:
    return isinstance(wire, dict) and "b64" in wire


def from_wire(value: Any) -> Any:
    """A response tensor → ``np.float64`` for a scalar, else an ``np.ndarray``.

    ``null`` (a non-finite value in the JSON form) becomes NaN; the response's ``warnings``
    say which tensor had it.
    """
    if value is None:
        return np.float64("nan")
    if isinstance(value, int | float):
        return np.float64(value)
    if isinstance(value, Mapping) and "b64" in value:
        dtype = "<f4" if value.get("dtype") == "float32" else "<f8"
        arr = np.frombuffer(base64.b64decode(value["b64"]), dtype=dtype)
        arr = arr.reshape(value["shape"])
        return arr[()] if arr.ndim == 0 else arr
    return np.asarray(value, dtype=np.float64)


def values_to_wire(values: Mapping[str, Any] | None, b64_threshold: int) -> dict[str, Any]:
    return {name: to_wire(v, b64_threshold) for name, v in (values or {}).items()}
