"""The shared graph store: graph id -> canonical graph JSON bytes (data, never code).

Redis when ``GRADSERVE_REDIS_URL`` is set (shared by every replica), else one SQLite file
in ``GRADSERVE_DATA_DIR`` (shared by the workers of one host).
"""

from __future__ import annotations

from service.config import Settings
from service.store.base import GraphStore, StoreUnavailable
from service.store.memory import MemoryStore
from service.store.redis import CircuitBreaker, RedisStore
from service.store.sqlite import SQLiteStore

__all__ = [
    "CircuitBreaker",
    "GraphStore",
    "MemoryStore",
    "RedisStore",
    "SQLiteStore",
    "StoreUnavailable",
    "make_store",
]


def make_store(settings: Settings) -> GraphStore:
    """The store ``settings`` ask for; it connects on first use, in the process using it."""
    if settings.redis_url:
        return RedisStore(
            settings.redis_url,
            timeout_ms=settings.store_timeout_ms,
            ttl_s=settings.store_ttl_s,
            retry_after_s=settings.store_retry_after_s,
            breaker_cooldown_s=settings.breaker_cooldown_s,
        )
    return SQLiteStore(
        settings.data_dir,
        ttl_s=settings.store_ttl_s,
        # A local lock wait, not a network round trip: give other workers' writes time.
        busy_timeout_ms=max(settings.store_timeout_ms, 5000),
        retry_after_s=settings.store_retry_after_s,
    )
