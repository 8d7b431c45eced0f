"""Lowerings of the shape op types, and the constants.

``Shape``, ``Constant``, ``ConstantOfShape`` give values known at import (:class:`K`);
``Gather``, ``Concat``, ``Slice``, ``Squeeze``, ``Unsqueeze``, ``Reshape``, ``Cast`` fold
on them, so the shape-computing subgraphs that exporters write (``Shape`` → ``Gather`` →
``Unsqueeze`` → ``Concat`` → ``Reshape`` for a flatten or a view) disappear, symbolic dims
included. On tensors they lower to the registry's shape ops.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from service.engine.onnx.lower import K, Lowerer
from service.engine.onnx.table import lowers

BIG = 2**53  # ONNX writes "to the end" as INT64_MAX; the registry's ints stop at 2^53


@lowers("Shape", uses=("(folded)",), note="start, end; symbolic dims kept as symbols")
def shape(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    dims = lw.dims(ins[0])
    if dims is None:
        raise lw.fail("the rank of its input is unknown after shape inference")
    n = len(dims)
    start, end = int(attrs.get("start", 0)), attrs.get("end")
    end = n if end is None else int(end)
    start, end = (max(0, min(n, s + n if s < 0 else s)) for s in (start, end))
    picked = [d if d is not None else f"?{node.input[0]}.{i}"
              for i, d in enumerate(dims)][start:end]
    if all(isinstance(d, int) for d in picked):
        return [K(np.asarray(picked, dtype=np.int64))]
    return [K(np.asarray(picked, dtype=object))]


@lowers("Constant", uses=("(folded)",), note="value, value_float(s), value_int(s)")
def constant(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    for key, dtype in (("value", None), ("value_float", np.float32),
                       ("value_floats", np.float32), ("value_int", np.int64),
                       ("value_ints", np.int64)):
        if key in attrs:
            arr = np.asarray(attrs[key], dtype=dtype)
            if arr.dtype.kind not in "fiub" or (arr.dtype.kind == "f" and arr.itemsize < 4):
                raise lw.fail(f"a constant of type {arr.dtype} is not supported")
            return [K(arr)]
    raise lw.fail("its value kind is not supported (value, value_float(s), value_int(s))")


@lowers("ConstantOfShape", uses=("expand",), note="a constant shape")
def constant_of_shape(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]
                      ) -> list[Any]:
    dims = lw.ints(ins[0], "shape")
    value = attrs.get("value")
    fill = np.asarray(value).reshape(-1)[0] if value is not None else np.float32(0)
    if math.prod(dims) > 1 << 16:  # a big one stays a broadcast, never an import array
        return [lw.emit("expand", [float(fill)], tuple(dims), shape=dims)]
    return [K(np.full(dims, fill, dtype=np.asarray(fill).dtype))]


def _target(lw: Lowerer, x: Any, target: K, allowzero: int) -> list[int]:
    """Reshape's target as the registry's: -1 for the one dim not known at import.

    A symbolic entry at the position of the same symbol in the input is a *copy* (the
    batch dim of a flatten, ``[batch, -1]``); when the input's other dims are static, a
    ``-1`` beside copies is computed here, so one copy is left to be the ``-1``."""
    xdims = list(lw.dims(x) or ())
    out: list[Any] = []
    for i, d in enumerate(target.arr.reshape(-1).tolist()):
        if d == 0 and not allowzero:
            d = xdims[i] if i < len(xdims) and xdims[i] is not None else f"?copy{i}"
        out.append(d)
    copies = {i for i, d in enumerate(out) if isinstance(d, str) and i < len(xdims)
              and xdims[i] == d}
    rest_in = [d for i, d in enumerate(xdims) if i not in copies]
    if -1 in out and copies and all(isinstance(d, int) for d in rest_in):
        rest_out = [d for i, d in enumerate(out) if i not in copies and d != -1]
        if all(isinstance(d, int) for d in rest_out) and math.prod(rest_out):
            out[out.index(-1)] = math.prod(rest_in) // math.prod(rest_out)
    unknown = [i for i, d in enumerate(out) if not isinstance(d, int) or d == -1]
    if len(unknown) > 1:
        raise lw.fail(f"its target shape {out} has {len(unknown)} dims unknown until run "
                      "time (symbolic dims); one is supported (written -1)")
    return [-1 if i in unknown else int(d) for i, d in enumerate(out)]


def _same(xdims: Any, target: K, allowzero: int) -> bool:
    entries = target.arr.reshape(-1).tolist()
    if xdims is None or len(entries) != len(xdims):
        return False
    return all(d == x or (d == 0 and not allowzero) for d, x in zip(entries, xdims))


@lowers("Reshape", uses=("reshape",), note="target known at import (folded from Shape); "
        "at most one dim unknown until run time; allowzero")
def reshape(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x, target = ins
    if not isinstance(target, K):
        raise lw.fail("its target shape must be known at import (a constant or computed "
                      "from shapes)")
    if isinstance(x, K) and not x.symbolic and not target.symbolic:
        return [K(x.arr.reshape(_target(lw, x, target, attrs.get("allowzero", 0))))]
    dims = lw.out_dims()
    if _same(lw.dims(x), target, attrs.get("allowzero", 0)):
        return [x]  # the target is the input's own shape (symbols included)
    if dims is not None and all(isinstance(d, int) for d in dims) and not isinstance(x, K):
        shape_ = list(dims)
    else:
        shape_ = _target(lw, x, target, attrs.get("allowzero", 0))
    return [lw.emit("reshape", [lw.arg(x)], dims, shape=shape_)]


@lowers("Flatten", uses=("flatten", "reshape"), note="axis")
def flatten(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x = ins[0]
    n = lw.rank(x)
    axis = int(attrs["axis"])
    axis = axis + n if axis < 0 else axis
    if axis == 0:
        return [lw.emit("reshape", [lw.arg(x)], lw.out_dims(), shape=[1, -1])]
    ref = lw.arg(x)
    if axis < n:
        ref = lw.emit("flatten", [ref], start_axis=axis).ref
    else:
        ref = lw.emit("unsqueeze", [ref], axes=[n]).ref
    return [lw.emit("flatten", [ref], lw.out_dims(), start_axis=0, end_axis=axis - 1)]


@lowers("Transpose", uses=("transpose",), note="perm (default reversed)")
def transpose(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x = ins[0]
    perm = attrs.get("perm")
    if isinstance(x, K):
        return [K(np.transpose(x.arr, perm))]
    axes = list(perm) if perm is not None else list(range(lw.rank(x)))[::-1]
    return [lw.emit("transpose", [lw.arg(x)], lw.out_dims(), axes=axes)]


@lowers("Concat", uses=("concat",), note="axis; folded on shapes")
def concat(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    axis = int(attrs["axis"])
    if all(isinstance(v, K) for v in ins):
        obj = any(v.symbolic for v in ins)
        arrs = [v.arr.astype(object) if obj else v.arr for v in ins]
        return [K(np.concatenate(arrs, axis=axis))]
    return [lw.emit("concat", [lw.arg(v) for v in ins], lw.out_dims(), axis=axis)]


def _slice_k(arr: np.ndarray, starts: list[int], ends: list[int], axes: list[int],
             steps: list[int]) -> np.ndarray:
    index = [slice(None)] * arr.ndim
    for s, e, a, st in zip(starts, ends, axes, steps):
        index[a] = slice(s, e, st)
    return arr[tuple(index)]


@lowers("Slice", uses=("slice",), note="starts, ends, axes, steps known at import")
def slice_(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x = ins[0]
    starts, ends = lw.ints(ins[1], "starts"), lw.ints(ins[2], "ends")
    n = lw.rank(x)
    axes = lw.ints(ins[3], "axes") if len(ins) > 3 and ins[3] is not None \
        else list(range(len(starts)))
    steps = lw.ints(ins[4], "steps") if len(ins) > 4 and ins[4] is not None \
        else [1] * len(starts)
    if any(s == 0 for s in steps):
        raise lw.fail("a step of 0 is not allowed")
    axes = [a + n if a < 0 else a for a in axes]
    starts = [max(-BIG, min(BIG, s)) for s in starts]
    ends = [max(-BIG, min(BIG, e)) for e in ends]
    if isinstance(x, K):
        return [K(_slice_k(x.arr, starts, ends, axes, steps))]
    return [lw.emit("slice", [lw.arg(x)], lw.out_dims(), starts=starts, ends=ends, axes=axes,
                    steps=steps)]


@lowers("Split", uses=("slice",), note="split sizes (constant) or num_outputs (opset 18)")
def split(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x = ins[0]
    n = lw.rank(x)
    axis = int(attrs.get("axis", 0))
    axis = axis + n if axis < 0 else axis
    outs = len(node.output)
    if len(ins) > 1 and ins[1] is not None:
        sizes = lw.ints(ins[1], "split")
    elif attrs.get("split"):
        sizes = [int(s) for s in attrs["split"]]
    else:
        dim = (lw.dims(x) or ())[axis]
        if not isinstance(dim, int):
            raise lw.fail("an even split of a symbolic dim is not supported")
        chunk = -(-dim // outs)
        sizes = [min(chunk, dim - i * chunk) for i in range(outs)]
    if len(sizes) != outs:
        raise lw.fail(f"it has {outs} outputs and {len(sizes)} split sizes")
    results: list[Any] = []
    start = 0
    for i, size in enumerate(sizes):
        results.append(lw.emit("slice", [lw.arg(x)], lw.out_dims(i), starts=[start],
                               ends=[start + size], axes=[axis], steps=[1]))
        start += size
    return results


def _axes(lw: Lowerer, ins: list[Any], attrs: dict[str, Any]) -> list[int] | None:
    if len(ins) > 1 and ins[1] is not None:
        return lw.ints(ins[1], "axes")
    axes = attrs.get("axes")
    return [int(a) for a in axes] if axes is not None else None


@lowers("Squeeze", uses=("squeeze",), note="axes (constant) or every size-1 axis")
def squeeze(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x, axes = ins[0], _axes(lw, ins, attrs)
    if isinstance(x, K):
        return [K(np.squeeze(x.arr, axis=tuple(axes) if axes is not None else None))]
    kw = {"axes": axes} if axes is not None else {}
    return [lw.emit("squeeze", [lw.arg(x)], lw.out_dims(), **kw)]


@lowers("Unsqueeze", uses=("unsqueeze",), note="axes (constant)")
def unsqueeze(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x, axes = ins[0], _axes(lw, ins, attrs)
    if axes is None:
        raise lw.fail("its axes are missing")
    if isinstance(x, K):
        return [K(np.expand_dims(x.arr, tuple(axes)))]
    return [lw.emit("unsqueeze", [lw.arg(x)], lw.out_dims(), axes=axes)]


@lowers("Expand", uses=("expand",), note="a shape known at import")
def expand(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x, target = ins
    dims = lw.out_dims()
    if dims is not None and all(isinstance(d, int) for d in dims):
        shape_ = list(dims)
    else:
        shape_ = [d if isinstance(d, int) else 1 for d in lw.known(
            target, "shape", ints=False).reshape(-1).tolist()]
        if not isinstance(target, K) or target.symbolic:
            raise lw.fail("its shape depends on a symbolic dim")
    if isinstance(x, K) and not x.symbolic and math.prod(shape_) <= 1 << 16:
        return [K(np.broadcast_to(x.arr, np.broadcast_shapes(x.arr.shape, tuple(shape_))))]
    return [lw.emit("expand", [lw.arg(x)], dims, shape=shape_)]


@lowers("Gather", uses=("gather", "slice", "squeeze"),
        note="indices an input or a constant; folded on shapes")
def gather(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x, idx = ins
    axis = int(attrs["axis"])
    if isinstance(x, K) and isinstance(idx, K):
        return [K(np.take(x.arr, lw.known(idx, "indices"), axis=axis))]
    if isinstance(idx, K) and not idx.symbolic and idx.arr.ndim == 0:
        n = lw.rank(x)
        axis = axis + n if axis < 0 else axis
        i = int(idx.arr)
        end = i + 1 if i != -1 else BIG
        sliced = lw.emit("slice", [lw.arg(x)], starts=[i], ends=[end], axes=[axis], steps=[1])
        return [lw.emit("squeeze", [sliced.ref], lw.out_dims(), axes=[axis])]
    return [lw.emit("gather", [lw.arg(x), lw.label(idx)], lw.out_dims(), axis=axis)]


@lowers("Pad", uses=("pad",), note='mode "constant"; pads, constant_value and axes known '
        "at import")
def pad(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    if attrs.get("mode", "constant") != "constant":
        raise lw.fail(f"mode '{attrs.get('mode')}' is not supported (only 'constant')")
    x = ins[0]
    n = lw.rank(x)
    pads = lw.ints(ins[1], "pads")
    value = 0.0
    if len(ins) > 2 and ins[2] is not None:
        value = float(lw.known(ins[2], "constant_value", ints=False).reshape(-1)[0])
    if len(ins) > 3 and ins[3] is not None:
        axes = [a + n if a < 0 else a for a in lw.ints(ins[3], "axes")]
        full = [0] * (2 * n)
        for j, a in enumerate(axes):
            full[a], full[n + a] = pads[j], pads[len(axes) + j]
        pads = full
    if len(pads) != 2 * n:
        raise lw.fail(f"pads has {len(pads)} entries for a rank-{n} input")
    return [lw.emit("pad", [lw.arg(x)], lw.out_dims(), pads=pads, value=value)]
