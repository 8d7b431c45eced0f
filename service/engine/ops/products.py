"""Matrix products of a few rows against one large matrix, in the form OpenBLAS runs fast.

A batched run multiplies B rows by a layer's weights where a lone request multiplies one (a
matrix-vector product, which streams the matrix once), and a linear layer's forward is
``x @ W.T``. Two shapes of product run far below what the memory allows in OpenBLAS, the BLAS
NumPy's wheels ship:

- **2-8 rows against a large matrix** (2**20 elements or more) go through the general
  kernel, which first copies (packs) the whole matrix: 8 rows by a 4096 x 4096 float32
  matrix took 10-14 ms on the machine the project is measured on, where one row takes 3 ms.
  Cut into blocks of at most 2**19 multiply-adds (m·n·k), each block takes OpenBLAS's
  small-matrix path, which packs nothing: 5-6 ms for the same 8 rows (the path ended near
  10**6 there; half leaves room). A transposed matrix (``x @ W.T``, a VJP's ``g @ W``) is
  cut into blocks of W's rows (output columns), a plain one into slices of the summed axis,
  added up.
- **float32 ``x @ W.T`` of up to 64 rows** (W of 2**16 elements or more): 16 rows by a
  256 x 784 W took 159 us where ``(W @ x.T).T`` took 89 (64 rows: 358 against 291 us), while
  for 1,024 rows or a small W the plain product wins; float64 gained nothing.

Which of these pays depends on the CPU (OpenBLAS picks its kernels per CPU at load time: on
another machine the plain ``x @ W.T`` was the faster one), so neither is assumed: the first
product that could use one times it against the plain product on a fixed probe shape, once
per process (a gunicorn worker probes them all as it starts: :func:`probe_all`), and takes it
only where it is at least 1.25x faster. Every worker on a machine then decides alike (the
measured gains are 1.5-3x, or none), and a process's answers never change with timing after
that. Only for NumPy over OpenBLAS: another BLAS, or a GPU, gets the plain product.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["probe_all", "rows_matmul"]

_SMALL_MNK = 1 << 19
_MAX_ROWS = 8
_MIN_MATRIX = 1 << 20  # elements: below this the packing is cheap (cache-sized)
_SPLIT = 16  # rows of a plain matrix per block of the summed axis (best of 16-256 here)
_MIN_TRANSPOSED = 1 << 16
_MAX_TRANSPOSED_ROWS = 64
_MARGIN = 1.25  # how much faster a form must probe to be taken


def _numpy_openblas() -> Any:
    try:
        import numpy as np

        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
    except Exception:  # noqa: BLE001 - an unknown build: the plain products
        return None
    return np if "openblas" in str(blas.get("name", "")).lower() else None


_NP = _numpy_openblas()

# form -> taken on this machine (absent: not probed yet)
_CHOICE: dict[str, bool] = {}
_LOCK = threading.Lock()


def _probe(plain: Callable[[], Any], other: Callable[[], Any], rounds: int = 5) -> bool:
    """Whether ``other`` beats ``plain`` by the margin: best of ``rounds`` each, alternating."""
    best_plain = best_other = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        plain()
        t1 = time.perf_counter()
        other()
        t2 = time.perf_counter()
        best_plain, best_other = min(best_plain, t1 - t0), min(best_other, t2 - t1)
    return best_plain > _MARGIN * best_other


def _probes(np: Any) -> dict[str, Callable[[], bool]]:
    """Per form, its probe on fixed float32 operands (no request's data: values do not
    change a product's speed, and nothing of a request runs twice)."""
    def blocked_t() -> bool:
        a, w = np.full((8, 2048), 0.5, np.float32), np.full((2048, 2048), 0.25, np.float32)
        return _probe(lambda: np.matmul(a, w.T), lambda: _blocked_t(np, a, w.T))

    def split() -> bool:
        a, w = np.full((8, 2048), 0.5, np.float32), np.full((2048, 2048), 0.25, np.float32)
        return _probe(lambda: np.matmul(a, w), lambda: _split(np, a, w))

    def turned() -> bool:
        a, w = np.full((16, 784), 0.5, np.float32), np.full((256, 784), 0.25, np.float32)
        return _probe(lambda: np.matmul(a, w.T), lambda: _turned(np, a, w.T), rounds=9)

    return {"blocked_t": blocked_t, "split": split, "turned": turned}


def _taken(np: Any, form: str) -> bool:
    got = _CHOICE.get(form)
    if got is None:
        with _LOCK:
            got = _CHOICE.get(form)
            if got is None:
                got = _CHOICE[form] = bool(_probes(np)[form]())
    return got


def probe_all(xp: Any) -> None:
    """Decide every form now (a worker's start: gunicorn's ``post_worker_init``), so that
    no request pays a probe. Nothing to decide for another namespace or BLAS."""
    np = _NP
    if xp is np and np is not None:
        for form in _probes(np):
            _taken(np, form)


def _blocked_t(np: Any, a: Any, b: Any) -> Any:
    """``a @ b`` for ``b = W.T``, in blocks of W's rows (``b``'s columns)."""
    m, k, n = a.shape[0], b.shape[0], b.shape[1]
    step = max(_SMALL_MNK // (m * k) // 8 * 8, 8)
    out = np.empty((m, n), dtype=a.dtype)
    for j in range(0, n, step):
        out[:, j:j + step] = np.matmul(a, b[:, j:j + step])
    return out


def _split(np: Any, a: Any, b: Any) -> Any:
    """``a @ b`` for a plain ``b``, summed over slices of its rows."""
    k = b.shape[0]
    out = np.matmul(a[:, :_SPLIT], b[:_SPLIT])
    part = np.empty_like(out)
    for j in range(_SPLIT, k, _SPLIT):
        np.matmul(a[:, j:j + _SPLIT], b[j:j + _SPLIT], out=part)
        out += part
    return out


def _turned(np: Any, a: Any, b: Any) -> Any:
    """``a @ b`` for ``b = W.T`` as ``(W @ a.T).T``, copied back into rows."""
    return np.ascontiguousarray(np.matmul(b.T, a.T).T)


def rows_matmul(xp: Any, a: Any, b: Any) -> Any:
    """``a @ b`` (both 2-d), in the form above that this machine runs fastest; any other
    operands go to ``xp.matmul`` unchanged."""
    np = _NP
    if (xp is not np or getattr(b, "size", 0) < _MIN_TRANSPOSED or type(a) is not np.ndarray
            or type(b) is not np.ndarray or a.ndim != 2 or b.ndim != 2 or a.dtype != b.dtype
            or a.dtype not in (np.float32, np.float64)):
        return xp.matmul(a, b)
    m, (k, n) = a.shape[0], b.shape
    transposed = b.T.flags.c_contiguous  # b = W.T
    if 2 <= m <= _MAX_ROWS and b.size >= _MIN_MATRIX:
        if transposed and _SMALL_MNK // (m * k) >= 8 and _taken(np, "blocked_t"):
            return _blocked_t(np, a, b)
        if (not transposed and b.flags.c_contiguous and m * _SPLIT * n <= _SMALL_MNK
                and _taken(np, "split")):
            return _split(np, a, b)
    if (transposed and a.dtype == np.float32 and m <= _MAX_TRANSPOSED_ROWS
            and _taken(np, "turned")):
        return _turned(np, a, b)
    return np.matmul(a, b)
