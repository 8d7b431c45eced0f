"""The shape ops that pick or place elements by position: ``slice``, ``pad`` and ``gather``,
and the internal ops their gradients are made of (listed by ``shape``, in its ``OPS``).

Each pair is adjoint, so every backward graph stays made of ops with VJPs and second order
is exact: ``slice`` ↔ ``unslice`` (g written into zeros at the sliced positions; also the
gradient of ``pad``, with a ``slice`` of g), ``gather`` ↔ ``scatter_add`` (g added into
zeros at the gathered indices, repeated indices summing: the embedding lookup's gradient).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from service.engine import shapes as S
from service.engine.registry import Attr, Forward, OpDef, Shape, ShapeError, size_of

Bounds = tuple[tuple[int, int], ...]  # per axis, [start, stop) of a region


def axis_of(axis: int, ndim: int, attr: str = "axis", what: str = "tensor") -> int:
    """``axis`` in [-ndim, ndim) as a non-negative axis; ShapeError naming the attr."""
    if not -ndim <= axis < ndim:
        raise ShapeError(f"attr '{attr}': axis {axis} is out of range for a {ndim}-d {what}")
    return axis % ndim


def axes_of(axes: Any, ndim: int, attr: str = "axes", what: str = "tensor"
            ) -> tuple[int, ...]:
    """Each axis of ``axes`` made non-negative, in the given order; repeats refused."""
    out = tuple(axis_of(a, ndim, attr, what) for a in axes)
    if len(set(out)) != len(out):
        raise ShapeError(f"attr '{attr}': {list(axes)} names an axis twice")
    return out


# --- slice and its adjoint, unslice ---------------------------------------------------------

def slice_key(shape: Shape, starts: Any = (), ends: Any = (), axes: Any = None,
              steps: Any = None) -> tuple[slice, ...]:
    """One normalized slice per axis (NumPy's rules: negative indices count from the end,
    out-of-range ones are clamped); ShapeError naming the attr at fault."""
    starts, ends = starts or (), ends or ()
    n = len(starts)
    for name, given in (("ends", ends), ("axes", axes), ("steps", steps)):
        if given is not None and len(given) != n:
            raise ShapeError(f"attr '{name}' has {len(given)} entries and attr 'starts' {n}: "
                             "they must have as many")
    if axes is None and n > len(shape):
        raise ShapeError(f"attr 'starts' has {n} entries, more than the {len(shape)} axes "
                         "of the tensor (without 'axes' they are axes 0, 1, ...)")
    picked = axes_of(range(n) if axes is None else axes, len(shape))
    key = [slice(0, d, 1) for d in shape]
    for a, start, end, step in zip(picked, starts, ends, steps or (1,) * n):
        if step == 0:
            raise ShapeError("attr 'steps': a step of 0 is refused")
        lo, hi, step = slice(start, end, step).indices(shape[a])
        if not range(lo, hi, step):
            key[a] = slice(0, 0, 1)  # (indices() may say lo = -1 for an empty one)
        else:  # hi is -1 only for a step < 0 that goes down to index 0
            key[a] = slice(lo, None if hi < 0 else hi, step)
    return tuple(key)


def _whole(key: tuple[slice, ...], shape: Shape) -> bool:
    return all(k == slice(0, d, 1) for k, d in zip(key, shape))


def _sliced(shape: Shape, key: tuple[slice, ...]) -> Shape:
    return tuple(len(range(*k.indices(d))) for k, d in zip(key, shape))


def _slice_shape(x: Shape, starts: Any = (), ends: Any = (), axes: Any = None,
                 steps: Any = None) -> Shape:
    return _sliced(x, slice_key(x, starts, ends, axes, steps))


def _slice(xp: Any) -> Forward:
    def slice_(x: Any, starts: Any = (), ends: Any = (), axes: Any = None,
               steps: Any = None) -> Any:
        key = slice_key(tuple(x.shape), starts, ends, axes, steps)
        return x if _whole(key, tuple(x.shape)) else x[key]

    return slice_


def _slice_dx(b: Any, g: Any, o: Any, x: Any, starts: Any = (), ends: Any = (),
              axes: Any = None, steps: Any = None) -> Any:
    shape = b.shape(x)
    if _whole(slice_key(shape, starts, ends, axes, steps), shape):
        return g
    return b.op("unslice", g, shape=shape, starts=starts, ends=ends, axes=axes, steps=steps)


def _unslice_shape(g: Shape, shape: Any = (), starts: Any = (), ends: Any = (),
                   axes: Any = None, steps: Any = None) -> Shape:
    shape = tuple(shape)
    if _slice_shape(shape, starts, ends, axes, steps) != g:
        raise ShapeError(f"{S.fmt(g)} is not the shape of that slice of {S.fmt(shape)}")
    return shape


def _unslice(xp: Any) -> Forward:
    def unslice(g: Any, shape: Any = (), starts: Any = (), ends: Any = (), axes: Any = None,
                steps: Any = None) -> Any:
        out = xp.zeros(tuple(shape), dtype=g.dtype)
        out[slice_key(tuple(shape), starts, ends, axes, steps)] = g
        return out

    return unslice


def _unslice_dg(b: Any, g: Any, o: Any, x: Any, shape: Any = (), starts: Any = (),
                ends: Any = (), axes: Any = None, steps: Any = None) -> Any:
    return b.op("slice", g, starts=starts, ends=ends, axes=axes, steps=steps)


def region(b: Any, ref: Any, bounds: Bounds) -> Any:
    """The node of ``ref``'s values inside ``bounds`` (``ref`` itself for all of them)."""
    if all(lo == 0 and hi == d for (lo, hi), d in zip(bounds, b.shape(ref))):
        return ref
    return b.op("slice", ref, starts=tuple(lo for lo, _ in bounds),
                ends=tuple(hi for _, hi in bounds))


def unregion(b: Any, ref: Any, bounds: Bounds, shape: Shape) -> Any:
    """The node of zeros of ``shape`` with ``ref`` inside ``bounds`` (region's adjoint)."""
    if all(lo == 0 and hi == d for (lo, hi), d in zip(bounds, shape)):
        return ref
    return b.op("unslice", ref, shape=tuple(shape), starts=tuple(lo for lo, _ in bounds),
                ends=tuple(hi for _, hi in bounds))


# --- pad: constant padding in ONNX's layout; negative pads crop, as ONNX's ------------------

def pad_plan(x: Shape, pads: Any) -> tuple[Shape, Bounds, Bounds]:
    """The padded shape, the region of x kept (negative pads crop it) and where it goes."""
    n = len(x)
    pads = pads or (0,) * (2 * n)
    if len(pads) != 2 * n:
        raise ShapeError(f"attr 'pads' has {len(pads)} entries; a {n}-d tensor takes {2 * n} "
                         "([begin_0, ..., begin_n-1, end_0, ..., end_n-1])")
    out, src, dst = [], [], []
    for a, d in enumerate(x):
        begin, end = pads[a], pads[n + a]
        cut_lo, cut_hi = max(0, -begin), max(0, -end)
        if cut_lo + cut_hi > d:
            raise ShapeError(f"attr 'pads': axis {a} has {d} entries, fewer than the "
                             f"{cut_lo + cut_hi} its negative pads crop")
        kept = d - cut_lo - cut_hi
        out.append(d + begin + end)
        src.append((cut_lo, cut_lo + kept))
        dst.append((max(0, begin), max(0, begin) + kept))
    return S.check_span(tuple(out)), tuple(src), tuple(dst)


def _key(bounds: Bounds) -> tuple[slice, ...]:
    return tuple(slice(lo, hi) for lo, hi in bounds)


def _pad(xp: Any) -> Forward:
    def pad(x: Any, pads: Any = (), value: float = 0.0) -> Any:
        if not any(pads or ()):
            return x
        out, src, dst = pad_plan(tuple(x.shape), pads)
        z = xp.full(out, value, dtype=x.dtype)
        z[_key(dst)] = x[_key(src)]
        return z

    return pad


def _pad_dx(b: Any, g: Any, o: Any, x: Any, pads: Any = (), value: float = 0.0) -> Any:
    _, src, dst = pad_plan(b.shape(x), pads)
    return unregion(b, region(b, g, dst), src, b.shape(x))


# --- gather and its adjoint, scatter_add ---------------------------------------------------

def _gather_shape(x: Shape, i: Shape, axis: int = 0) -> Shape:
    if not x:
        raise ShapeError("gather needs a tensor of at least 1 dim to gather from")
    a = axis_of(axis, len(x))
    if x[a] == 0 and size_of(i):
        raise ShapeError(f"cannot gather from axis {axis} of {S.fmt(x)}: it has no entries")
    return S.check_span(x[:a] + i + x[a + 1:])


def _gather_range(x: Shape, i: Shape, axis: int = 0) -> tuple[int, int]:
    n = x[axis % len(x)] if x else 0
    return -n, n


def _flat_indices(xp: Any, i: Any, n: int) -> Any:
    """The indices as one axis, negative ones counted from the end (bind checked them)."""
    flat = xp.reshape(i, (-1,))
    return xp.where(flat < 0, flat + n, flat)


def _gather(xp: Any) -> Forward:
    def gather(x: Any, i: Any, axis: int = 0) -> Any:
        a = axis % x.ndim
        taken = xp.take(x, _flat_indices(xp, i, x.shape[a]), axis=a)  # the standard's take
        return xp.reshape(taken, (*x.shape[:a], *i.shape, *x.shape[a + 1:]))  # is 1-d only

    return gather


def _gather_dx(b: Any, g: Any, o: Any, x: Any, i: Any, axis: int = 0) -> Any:
    shape = b.shape(x)
    return b.op("scatter_add", g, i, shape=shape, axis=axis % len(shape))


def _gather_cost(shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> int:
    return size_of(out) + 2 * size_of(shapes[1])  # the copy; the indices made non-negative


def _scatter_shape(g: Shape, i: Shape, shape: Any = (), axis: int = 0) -> Shape:
    shape = tuple(shape)
    if not shape:
        raise ShapeError("scatter_add needs a target of at least 1 dim")
    a = axis_of(axis, len(shape))
    if g != shape[:a] + i + shape[a + 1:]:
        raise ShapeError(f"{S.fmt(g)} is not what gather makes of {S.fmt(shape)} with "
                         f"indices {S.fmt(i)}")
    return shape


def _scatter_range(g: Shape, i: Shape, shape: Any = (), axis: int = 0) -> tuple[int, int]:
    n = shape[axis % len(shape)] if shape else 0
    return -n, n


def _add_at(xp: Any) -> Any:
    """An unbuffered ``out[key] += values`` (repeats summing) where the backend has one:
    NumPy's ``add.at``, CuPy's ``scatter_add``; None elsewhere."""
    if xp is np:
        return np.add.at
    if "cupy" in getattr(xp, "__name__", ""):
        try:
            import cupyx  # type: ignore[import-not-found]
        except ImportError:  # pragma: no cover - CuPy without cupyx
            return None
        return cupyx.scatter_add  # pragma: no cover - needs a GPU
    return None


def _scatter_add(xp: Any) -> Forward:
    add_at = _add_at(xp)

    def scatter_add(g: Any, i: Any, shape: Any = (), axis: int = 0) -> Any:
        shape = tuple(shape)
        a = axis % len(shape)
        n = shape[a]
        flat = _flat_indices(xp, i, n)
        k = flat.shape[0]
        rows = xp.reshape(g, (*shape[:a], k, *shape[a + 1:]))
        if add_at is not None:
            out = xp.zeros(shape, dtype=rows.dtype)
            add_at(out, (slice(None),) * a + (flat,), rows)
            return out
        # The standard has no scatter: a one-hot (n, k) matrix times g's rows sums every
        # index's rows exactly (each sum a dot product, repeats included).
        pre, post = size_of(shape[:a]), size_of(shape[a + 1:])
        onehot = xp.astype(xp.expand_dims(xp.arange(n, dtype=flat.dtype), axis=1)
                           == xp.expand_dims(flat, axis=0), rows.dtype)
        return xp.reshape(xp.matmul(onehot, xp.reshape(rows, (pre, k, post))), shape)

    return scatter_add


def _scatter_dg(b: Any, g: Any, o: Any, x: Any, i: Any, shape: Any = (), axis: int = 0
                ) -> Any:
    return b.op("gather", g, i, axis=axis)


def _scatter_cost(shapes: Sequence[Shape], out: Shape, attrs: dict[str, Any]) -> int:
    return size_of(out) + size_of(shapes[0]) + 2 * size_of(shapes[1])


# --- the records ------------------------------------------------------------------------------

SLICE_ATTRS = (
    Attr("starts", "ints", (), "the first index per sliced axis (negative: from the "
         "end, as NumPy)"),
    Attr("ends", "ints", (), "the index past the last per sliced axis (negative: "
         "from the end; out of range: clamped)"),
    Attr("axes", "axes", None, "the axes starts/ends/steps apply to; null: 0, 1, ..."),
    Attr("steps", "ints", None, "the step per sliced axis (negative: backwards; 0 is "
         "refused); null: all 1"),
)
TARGET = Attr("shape", "shape", (), "the target shape")


def _internal(name: str, forward: Any, vjps: tuple[Any, ...], shape: Any, doc: str,
              **kw: Any) -> OpDef:
    return OpDef(name, len(vjps), forward, vjps, shape, doc, internal=True,
                 category="internal", **kw)


OPS = (
    OpDef("slice", 1, _slice, (_slice_dx,), _slice_shape,
          "x[starts:ends:steps] along axes (NumPy's rules); dx = g written into zeros at the "
          "sliced positions", attrs=SLICE_ATTRS, category="shape", view=True,
          example="slice(x, starts=[1, -1], ends=[3, 0], axes=[0, 1], steps=[1, -1])",
          batching="slice"),
    OpDef("pad", 1, _pad, (_pad_dx,), lambda x, pads=(), value=0.0: pad_plan(x, pads)[0],
          "constant padding (negative pads crop, as ONNX); dx = the slice of g where x went",
          attrs=(Attr("pads", "ints", (), "ONNX's [begin_0, ..., begin_n-1, end_0, ..., "
                      "end_n-1]; negative entries crop; [] pads nothing"),
                 Attr("value", "float", 0.0, "the value of the new entries")),
          category="shape", example="pad(x, pads=[0, 1, 0, 2], value=0)",
          batching="pad"),
    OpDef("gather", 2, _gather, (_gather_dx, None), _gather_shape,
          "the entries of x at integer indices along axis (numpy.take); dx = g added into "
          "zeros at the indices, repeated indices summing (the embedding lookup)",
          attrs=(Attr("axis", "int", 0, "the axis the indices pick along"),),
          arg_kinds=("float", "label"), arg_names=("x", "indices"), category="shape",
          cost=_gather_cost, label_range=_gather_range, example="gather(E, tokens, axis=0)",
          batching="gather"),
    _internal("unslice", _unslice, (_unslice_dg,), _unslice_shape,
              "zeros of shape with g at the slice's positions (slice's adjoint); dg = the "
              "slice", attrs=(TARGET, *SLICE_ATTRS)),
    _internal("scatter_add", _scatter_add, (_scatter_dg, None), _scatter_shape,
              "zeros of shape with g's rows added at the indices along axis, repeats summing "
              "(gather's adjoint); dg = gather", attrs=(TARGET, Attr("axis", "int", 0, "")),
              arg_kinds=("float", "label"), arg_names=("g", "indices"), cost=_scatter_cost,
              label_range=_scatter_range),
)
