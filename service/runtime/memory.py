"""glibc's allocator in a long-running, many-threaded worker: what the plan cache's byte
budget alone cannot bound.

A request's NumPy temporaries are freed when it ends, but glibc keeps freed memory in the
arena of the thread that used it (up to 8 per core, one per busy thread here) and, once it
has raised its mmap threshold past a temporary's size, serves the next ones from those
arenas too: a worker's RSS grows by its threads' peak temporaries, arena by arena, and does
not come back. Measured with ``python -m bench.resources --plans 600 --plan-elements
100000`` (one worker x 8 threads, a 64 MiB plan budget that the cache held to): RSS +295 MiB
and still growing by default; with two arenas and the free memory handed back after
evictions, flat (README, "Benchmarks").

- :func:`tune` (gunicorn's ``post_fork``, before the worker starts a thread): at most
  :data:`ARENA_MAX` arenas, unless the operator set ``MALLOC_ARENA_MAX``.
- :func:`release_free_memory` (the plan cache, after it evicted plans): ``malloc_trim(0)``,
  which returns the free pages of every arena to the OS, at most once per
  :data:`TRIM_INTERVAL_S`.

Both are no-ops where the C library is not glibc.
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
import time
from typing import Any

ARENA_MAX = 2
TRIM_INTERVAL_S = 1.0
_M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)

_lock = threading.Lock()
_last_trim = 0.0
_libc: Any = None


def glibc() -> Any:
    """The C library if it is glibc (it has mallopt and malloc_trim), else None."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                lib = ctypes.CDLL("libc.so.6")
                lib.gnu_get_libc_version  # noqa: B018 - glibc, not musl
                lib.malloc_trim.argtypes = [ctypes.c_size_t]
                lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
                _libc = lib
            except (OSError, AttributeError):
                pass
    return _libc or None


def tune(arena_max: int = ARENA_MAX) -> bool:
    """Cap the arenas (an operator's ``MALLOC_ARENA_MAX`` wins); whether it was set."""
    lib = glibc()
    if lib is None or os.environ.get("MALLOC_ARENA_MAX"):
        return False
    return bool(lib.mallopt(_M_ARENA_MAX, arena_max))


def release_free_memory(now: float | None = None) -> bool:
    """Hand the allocator's free pages back to the OS, unless that was done less than
    :data:`TRIM_INTERVAL_S` ago; whether it ran."""
    global _last_trim
    lib = glibc()
    if lib is None:
        return False
    now = time.monotonic() if now is None else now
    with _lock:
        if now - _last_trim < TRIM_INTERVAL_S:
            return False
        _last_trim = now
    lib.malloc_trim(0)
    return True
