"""An in-process graph store, for unit tests (nothing is shared between processes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from service.store.base import GraphStore, check_blob


class MemoryStore(GraphStore):
    """A dict behind a lock; ``ttl_s`` > 0 makes entries expire ``ttl_s`` after their put."""

    name = "memory"

    def __init__(self, *, ttl_s: float = 0, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._items: dict[str, tuple[bytes, float]] = {}

    def _live(self, graph_id: str) -> bytes | None:
        item = self._items.get(graph_id)
        if item is None:
            return None
        blob, created = item
        if self.ttl_s > 0 and self._clock() - created >= self.ttl_s:
            del self._items[graph_id]
            return None
        return blob

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

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass
