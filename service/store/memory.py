"""An in-process graph store, for unit tests (nothing is shared between processes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

from service.store.base import GraphStore, Listed, check_blob

T = TypeVar("T")


class MemoryStore(GraphStore):
    """A dict behind a lock; ``ttl_s`` > 0 makes entries expire ``ttl_s`` after their put."""

    name = "memory"

    def __init__(self, *, ttl_s: float = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._items: dict[str, tuple[bytes, float]] = {}
        self._names: dict[str, tuple[str, float]] = {}
        self._meta: dict[str, bytes] = {}

    def _live(self, graph_id: str) -> bytes | None:
        return self._fresh(self._items, graph_id)

    def _fresh(self, table: dict[str, tuple[T, float]], key: str) -> T | None:
        item = table.get(key)
        if item is None:
            return None
        value, created = item
        if self.ttl_s > 0 and self._clock() - created >= self.ttl_s:
            del table[key]
            return None
        return value

    def get(self, graph_id: str) -> bytes | None:
        with self._lock:
            return self._live(graph_id)

    def put(self, graph_id: str, blob: bytes) -> bool:
        blob = check_blob(blob)
        with self._lock:
            if self._live(graph_id) is not None:
                return False
            self._items[graph_id] = (blob, self._clock())
            return True

    def delete(self, graph_id: str) -> None:
        with self._lock:
            self._items.pop(graph_id, None)

    def bind_name(self, name: str, graph_id: str) -> str:
        with self._lock:
            bound = self._fresh(self._names, name)
            if bound is not None:
                return bound
            self._names[name] = (graph_id, self._clock())
            return graph_id

    def lookup_name(self, name: str) -> str | None:
        with self._lock:
            return self._fresh(self._names, name)

    def names(self, limit: int) -> list[str]:
        with self._lock:
            live = [n for n in list(self._names) if self._fresh(self._names, n) is not None]
        return sorted(live)[:max(0, limit)]

    def recent(self, n: int) -> list[str]:
        with self._lock:  # a dict keeps insertion order: the newest are last
            ids = list(self._items)
        return ids[::-1][:max(0, n)]

    def exists(self, graph_id: str) -> bool:
        return self.get(graph_id) is not None

    def put_meta(self, graph_id: str, meta: bytes) -> None:
        meta = check_blob(meta)
        with self._lock:
            self._meta.setdefault(graph_id, meta)

    def list_graphs(self, after: str | None, limit: int) -> list[Listed]:
        with self._lock:
            ids = sorted(g for g in list(self._items)
                         if (after is None or g > after) and self._live(g) is not None)
            ids = ids[:max(0, limit)]
            names: dict[str, list[str]] = {}
            for name in sorted(self._names):
                bound = self._fresh(self._names, name)
                if bound is not None:
                    names.setdefault(bound, []).append(name)
            return [Listed(g, self._meta.get(g), names.get(g, [])) for g in ids]

    def remove(self, graph_id: str) -> None:
        with self._lock:
            self._items.pop(graph_id, None)
            self._meta.pop(graph_id, None)
            for name in [n for n, (g, _) in self._names.items() if g == graph_id]:
                del self._names[name]

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass
