"""The allocator helpers: malloc_trim at most once a second, and it does hand freed memory
back (on glibc, measured on this process's RSS); the arena cap leaves an operator's
MALLOC_ARENA_MAX alone."""

from __future__ import annotations

import ctypes
import os

import pytest

from service.runtime import memory

pytestmark = pytest.mark.skipif(memory.glibc() is None and os.environ.get("CI") != "true",
                                reason="not glibc")


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS"))


def test_release_runs_at_most_once_a_second(monkeypatch):
    monkeypatch.setattr(memory, "_last_trim", 0.0)
    assert memory.release_free_memory(now=100.0)
    assert not memory.release_free_memory(now=100.5)
    assert memory.release_free_memory(now=101.0)


def test_release_hands_freed_heap_memory_back(monkeypatch):
    lib = memory.glibc()
    assert lib is not None  # (skipped above where it is not glibc)
    lib.malloc.restype = ctypes.c_void_p
    lib.free.argtypes = [ctypes.c_void_p]
    # 64 MiB in 64 KiB blocks: under the mmap threshold, so from the heap, and kept by
    # glibc when freed (all but the top of the heap) until something trims it.
    blocks = [lib.malloc(64 << 10) for _ in range(1024)]
    for b in blocks:
        ctypes.memset(b, 1, 64 << 10)
    for b in blocks[:-1]:  # the last one pins the heap's top: free() alone cannot shrink it
        lib.free(b)
    held = rss_kib()
    monkeypatch.setattr(memory, "_last_trim", 0.0)
    assert memory.release_free_memory()
    released = held - rss_kib()
    lib.free(blocks[-1])
    assert released > 32 << 10, f"only {released} KiB handed back"


def test_an_operators_arena_setting_wins(monkeypatch):
    monkeypatch.setenv("MALLOC_ARENA_MAX", "8")
    assert memory.tune() is False
