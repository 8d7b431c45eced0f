"""The graph store interface: ``graph_id`` -> canonical graph JSON bytes, shared by workers,
and ``name`` -> ``graph_id`` for the human-readable model names of registered graphs.

What is stored is data, never code: the store moves opaque bytes and never decodes them;
checking that they still parse is the caller's job (it calls :meth:`GraphStore.delete` on a
corrupt entry). Every backend failure surfaces as :class:`StoreUnavailable` (503 with
``Retry-After``), never as a driver exception, so callers catch exactly one thing.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

from service.errors import ServiceUnavailable
from service.runtime import metrics


class StoreUnavailable(ServiceUnavailable):
    """The graph store cannot be reached or failed; the request may be retried later.

    ``detail`` goes to the client and names no host, port or path; ``reason`` (the driver's
    message) is for logs and tests, and the driver exception, if any, is ``__cause__``.
    """

    def __init__(self, detail: str, *, reason: str = "", **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.reason = reason


class GraphStore(abc.ABC):
    """A shared map from graph id to the canonical graph JSON bytes.

    Implementations are thread-safe and safe to construct before a fork: nothing touches
    the backend until the first call in the process that uses it.
    """

    name: str

    @abc.abstractmethod
    def get(self, graph_id: str) -> bytes | None:
        """The stored bytes, or None if absent (or expired). Raises StoreUnavailable."""

    @abc.abstractmethod
    def put(self, graph_id: str, blob: bytes) -> bool:
        """Store ``blob`` unless ``graph_id`` is already there (idempotent).

        True if this call stored it, False if it was already present (the stored bytes are
        left as they are). Raises StoreUnavailable.
        """

    @abc.abstractmethod
    def delete(self, graph_id: str) -> None:
        """Drop ``graph_id`` if present (used for a corrupt entry). Raises StoreUnavailable."""

    @abc.abstractmethod
    def bind_name(self, name: str, graph_id: str) -> str:
        """Bind ``name`` to ``graph_id`` unless it is bound already, atomically across every
        process sharing the store (first writer wins).

        Returns the graph id the name is bound to after the call: ``graph_id`` when this
        call bound it or it was already bound to it, another id when the name is taken.
        Names expire with the store's ``ttl_s`` as graphs do. Raises StoreUnavailable.
        """

    @abc.abstractmethod
    def lookup_name(self, name: str) -> str | None:
        """The graph id ``name`` is bound to, or None. Raises StoreUnavailable."""

    def names(self, limit: int) -> list[str]:
        """At most ``limit`` of the model names bound now (expired ones left out), sorted;
        which ones when there are more is the backend's choice. Raises StoreUnavailable. A
        store that cannot list its names lists none."""
        return []

    def recent(self, n: int) -> list[str]:
        """The ids of at most ``n`` graphs stored most recently, newest first (bounded: a
        worker warms its cache from these at start). An expired graph may still be listed;
        ``get`` then says None. Raises StoreUnavailable. A store that cannot list its
        graphs lists none."""
        return []

    # --- the registry (GET /v1/graphs, DELETE /v1/graphs/{id}) ----------------------------
    # Metadata is a second record beside the canonical graph (never inside it: the graph's
    # bytes are its id), so a graph stored by an older version simply has none.

    def exists(self, graph_id: str) -> bool:
        """Whether ``graph_id`` is stored (cheaper than ``get`` where the backend can say
        without moving the bytes). Raises StoreUnavailable."""
        return self.get(graph_id) is not None

    # Not abstract: a store written before the registry keeps working (it records no
    # metadata, lists nothing and removes only the graph).

    def put_meta(self, graph_id: str, meta: bytes) -> None:
        """Record ``meta`` (opaque bytes: the caller's JSON) beside ``graph_id`` unless some
        is recorded already (the first registration's kind stays). Expires with the graph.
        Raises StoreUnavailable."""
        return None

    def list_graphs(self, after: str | None, limit: int) -> list[Listed]:
        """At most ``limit`` stored graphs with ids greater than ``after`` (all when None),
        in id order: a stable order for paging while graphs come and go. Raises
        StoreUnavailable."""
        return []

    def remove(self, graph_id: str) -> None:
        """Drop a graph with its metadata and every name bound to it (idempotent: an
        unknown id is no error). Raises StoreUnavailable."""
        self.delete(graph_id)

    @abc.abstractmethod
    def ping(self) -> bool:
        """Whether the store answers now; never raises."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release this process's connections; the store reconnects if used again."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


@dataclass
class Listed:
    """One graph of :meth:`GraphStore.list_graphs`: its metadata (None for a graph stored
    by a version that recorded none) and the names bound to it, sorted."""

    graph_id: str
    meta: bytes | None
    names: list[str] = field(default_factory=list)


def check_blob(blob: object) -> bytes:
    """``blob`` as bytes; a str or any other type is a programming error, not data."""
    if isinstance(blob, bytes):
        return blob
    if isinstance(blob, bytearray | memoryview):
        return bytes(blob)
    raise TypeError(f"graph store values are bytes, not {type(blob).__name__}")


def unavailable(store: str, reason: str, retry_after: int) -> StoreUnavailable:
    """A StoreUnavailable for ``store``, counted once in the store error metric."""
    metrics.CACHE.labels("store", "error").inc()
    return StoreUnavailable("the graph store is unavailable; retry later",
                            reason=f"{store}: {reason}", retry_after=retry_after)
