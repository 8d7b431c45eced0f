"""Pieces several category modules share: shape rules, attrs, forward and VJP helpers."""

from __future__ import annotations

from typing import Any

from service.engine import shapes as S
from service.engine.registry import Attr, Forward, ForwardFactory, Shape

AXIS = Attr("axis", "axis", None, "axis or list of axes to reduce; null reduces all")
KEEPDIMS = Attr("keepdims", "bool", False, "keep reduced axes with size 1")


def unary_shape(x: Shape) -> Shape:
    return x


def binary_shape(x: Shape, y: Shape) -> Shape:
    return S.broadcast_shapes(x, y)


def fixed(forward: Forward) -> ForwardFactory:
    """The factory of a forward that needs no namespace (Python's operators, identity)."""
    return lambda xp: forward


def reshaped(b: Any, ref: Any, shape: Shape) -> Any:
    """The node ``ref`` reshaped to ``shape`` (``ref`` itself when it has that shape)."""
    return ref if b.shape(ref) == tuple(shape) else b.op("reshape", ref, shape=tuple(shape))


# --- a few rows against one large matrix ------------------------------------------------------
#
# A batched run multiplies B rows by a layer's weights where a lone request multiplies one
# (a matrix-vector product, which streams the matrix once). OpenBLAS runs 2 to 8 rows against
# a large matrix through its general kernel, which first copies (packs) the whole matrix:
# 8 rows × a 4096 × 4096 float32 matrix took 10-14 ms here where one row takes 3 ms. Cut into
# blocks of at most ~2**19 multiply-adds (m·n·k), each product takes OpenBLAS's small-matrix
# path, which packs nothing: 5-6 ms for the same 8 rows (measured here up to ~10**6, where
# the path ends; half of that leaves room). Blocks of the matrix's contiguous rows: a
# transposed matrix (``x @ W.T``, a VJP's ``g @ W``) is cut into output columns, a plain one
# into slices of the summed axis, added up. Only for NumPy over OpenBLAS (what NumPy's
# wheels ship; another BLAS, or a GPU, gets the plain product) and 2-8 rows: 16 rows are a
# product the general kernel does well.

_SMALL_MNK = 1 << 19
_MAX_ROWS = 8
_MIN_MATRIX = 1 << 20  # elements: below this the packing is cheap (cache-sized)
_SPLIT = 16  # rows of a plain matrix per block of the summed axis (best of 16-256 here)


def _numpy_openblas() -> Any:
    try:
        import numpy as np

        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:  # noqa: BLE001 - an unknown build: no blocking
        return None
    return np if "openblas" in str(blas.get("name", "")).lower() else None


_NP = _numpy_openblas()


def rows_matmul(xp: Any, a: Any, b: Any) -> Any:
    """``a @ b`` for a 2-d ``a`` of few rows and a large 2-d ``b``, blocked as above; any
    other operands go to ``xp.matmul`` unchanged."""
    np = _NP
    if (xp is not np or getattr(b, "size", 0) < _MIN_MATRIX or type(a) is not np.ndarray
            or type(b) is not np.ndarray or a.ndim != 2 or b.ndim != 2
            or not 2 <= a.shape[0] <= _MAX_ROWS or a.dtype != b.dtype
            or a.dtype not in (np.float32, np.float64)):
        return xp.matmul(a, b)
    m, (k, n) = a.shape[0], b.shape
    if b.T.flags.c_contiguous:  # b = W.T: W's row blocks are b's column blocks
        step = _SMALL_MNK // (m * k) // 8 * 8
        if step < 8:
            return np.matmul(a, b)
        out = np.empty((m, n), dtype=a.dtype)
        for j in range(0, n, step):
            out[:, j:j + step] = np.matmul(a, b[:, j:j + step])
        return out
    if b.flags.c_contiguous and m * _SPLIT * n <= _SMALL_MNK:
        out = np.matmul(a[:, :_SPLIT], b[:_SPLIT])
        part = np.empty_like(out)
        for j in range(_SPLIT, k, _SPLIT):
            np.matmul(a[:, j:j + _SPLIT], b[j:j + _SPLIT], out=part)
            out += part
        return out
    return np.matmul(a, b)
