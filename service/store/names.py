"""The registry side of the plan cache: model names bound to registered graphs, the
paginated listing, and removal. A mixin of :class:`~service.store.cache.GraphCache`, whose
lock, store, L1 and name memory it uses; here so that cache.py is about plans."""

from __future__ import annotations

import re
from typing import Any

import orjson

from service.engine import Plan
from service.errors import NotFound, ProblemError, Unprocessable
from service.runtime import tracing

KINDS = ("spec", "expression", "mlp", "onnx")

#: A model name (OIP) for a registered graph: URL-path safe, and never spelled like a graph
#: id, so that ``/v2/models/{name}`` means one thing.
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._\-]{0,127}$")
GRAPH_ID_RE = re.compile(r"^g-[0-9a-f]{64}$")


class NameTaken(ProblemError):
    """A model name already bound to another graph (names are first come, first served)."""

    status, title = 409, "Conflict"


def check_name(name: str) -> None:
    """Refuse a name that is not a valid model name (422 naming the field)."""
    if not NAME_RE.match(name) or GRAPH_ID_RE.match(name):
        raise Unprocessable(
            f"name: {name[:80]!r} is not a model name: 1-128 characters of letters, digits, "
            "'.', '_' and '-', starting with a letter or digit, and not a graph id",
            loc=("name",))


class NamedGraphs:
    """Names, listing and removal over GraphCache's state (see there for the fields)."""

    store: Any
    l1_size: int
    revalidate_s: float
    _lock: Any
    _plans: Any
    _registered: dict[str, float]
    _names: dict[str, tuple[str, float]]
    _kinds: dict[str, str]
    _clock: Any

    # --- model names ----------------------------------------------------------------------
    def name_graph(self, name: str, graph_id: str) -> None:
        """Bind model ``name`` to a registered graph; NameTaken if another graph has it."""
        check_name(name)
        if self.store is None:
            with self._lock:
                holder = self._names.setdefault(name, (graph_id, 0.0))[0]
        else:
            holder = self.store.bind_name(name, graph_id)
        if holder != graph_id:
            raise _taken(name, holder)
        self._remember_name(name, graph_id)

    def _remember_name(self, name: str, graph_id: str) -> None:
        # A binding never changes while it lives, so it is cached unless the store expires
        # names (a TTL could free one for another graph behind this worker's back).
        if not getattr(self.store, "ttl_s", 0):
            with self._lock:
                self._names[name] = (graph_id, self._clock())
                while len(self._names) > 4 * self.l1_size:
                    self._names.pop(next(iter(self._names)))

    def model_names(self, limit: int) -> list[str]:
        """At most ``limit`` model names, sorted: the store's (every worker's names), or
        without a store this worker's."""
        if self.store is None:
            with self._lock:
                return sorted(self._names)[:max(0, limit)]
        return self.store.names(limit)  # type: ignore[no-any-return]

    def graph_id_of(self, model: str) -> str:
        """The graph id a model name stands for: a graph id is itself, a name is looked up
        (this worker's memory, else the store). NotFound when neither."""
        if GRAPH_ID_RE.match(model):
            return model
        with self._lock:
            known = self._names.get(model)
        if known is not None and (self.store is None
                                  or self._clock() - known[1] < self.revalidate_s):
            return known[0]  # a name deleted elsewhere is re-read within revalidate_s
        if self.store is not None and NAME_RE.match(model):
            graph_id = self.store.lookup_name(model)
            if graph_id is not None:
                self._remember_name(model, graph_id)
                return graph_id
        raise NotFound(f"model '{model[:80]}' is not known here: a model is a registered "
                       "graph, named by its graph id or by the name given at registration",
                       loc=("model",))

    # --- the registry: listing and removal ------------------------------------------------
    def list_graphs(self, cursor: str | None, limit: int
                    ) -> tuple[list[dict[str, Any]], str | None]:
        """One page of the registered graphs, in id order: ``limit`` entries after the
        graph id ``cursor``, and the cursor of the next page (None on the last). Read from
        the store (what every replica sharing it sees), not from this worker's L1."""
        if self.store is None:
            return self._list_local(cursor, limit)
        with tracing.span("store", operation="list"):
            listed = self.store.list_graphs(cursor, limit + 1)
        more = len(listed) > limit
        listed = listed[:limit]
        entries = [entry for entry in map(self._entry, listed) if entry is not None]
        return entries, (listed[-1].graph_id if more and listed else None)

    def _entry(self, listed: Any) -> dict[str, Any] | None:
        meta = _parse_meta(listed.meta)
        if meta is None:
            # Stored by a version that recorded no metadata: its inputs and output come
            # from the canonical graph itself (data, never code), its kind is "spec".
            blob = self.store.get(listed.graph_id)
            if blob is None:
                return None  # gone since the listing read it
            meta = _parse_meta(blob, kind="spec")
            if meta is None:
                return None  # corrupt: a by-id request drops it
        entry: dict[str, Any] = {"graph_id": listed.graph_id}
        if listed.names:
            entry["name"] = listed.names[0]
        entry.update(meta)
        return entry

    def _list_local(self, cursor: str | None, limit: int
                    ) -> tuple[list[dict[str, Any]], str | None]:
        with self._lock:
            ids = sorted(g for g in self._registered if cursor is None or g > cursor)
            plans = {g: self._plans[g] for g in ids[:limit + 1] if g in self._plans}
            names: dict[str, list[str]] = {}
            for name, (graph_id, _) in sorted(self._names.items()):
                names.setdefault(graph_id, []).append(name)
            kinds = dict(self._kinds)
        page = ids[:limit]
        entries = []
        for graph_id in page:
            plan = plans.get(graph_id)
            if plan is None:
                continue
            entry: dict[str, Any] = {"graph_id": graph_id}
            if names.get(graph_id):
                entry["name"] = names[graph_id][0]
            entry.update(orjson.loads(meta_of(plan, kinds.get(graph_id, "spec"))))
            entries.append(entry)
        return entries, (page[-1] if len(ids) > limit and page else None)

    def remove(self, graph_id: str) -> None:
        """Delete a registered graph, its metadata and its names from the store and from
        this worker (idempotent). Other workers stop serving it within ``revalidate_s``.
        The compiled plan may stay in L1 for inline requests of the same graph, which need
        no registration."""
        if self.store is not None:
            with tracing.span("store", operation="remove"):
                self.store.remove(graph_id)
        with self._lock:
            self._registered.pop(graph_id, None)
            self._kinds.pop(graph_id, None)
            for name in [n for n, (g, _) in self._names.items() if g == graph_id]:
                del self._names[name]


def meta_of(plan: Plan, kind: str) -> bytes:
    """What the listing shows of a graph, recorded beside it at registration."""
    canonical = plan.canonical
    inputs = canonical["inputs"]
    if plan.model is not None:  # a model's own inputs (not its parameters and constants)
        inputs = plan.model.signature.get("inputs") or {n: {} for n in plan.model.inputs}
    return orjson.dumps({"kind": kind, "inputs": inputs, "output": canonical["output"]})


def _parse_meta(raw: bytes | None, kind: str | None = None) -> dict[str, Any] | None:
    """``kind``, ``inputs`` and ``output`` from stored metadata (or, with ``kind``, from
    a canonical graph's bytes); None when they are not there in the expected shape."""
    if raw is None:
        return None
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    kind = data.get("kind", kind)
    inputs, output = data.get("inputs"), data.get("output")
    if kind not in KINDS or not isinstance(inputs, dict) or not isinstance(output, str):
        return None
    return {"kind": kind, "inputs": inputs, "output": output}


def _taken(name: str, holder: str) -> NameTaken:
    return NameTaken(f"name: '{name}' is already the name of graph {holder}; choose another "
                     "name (a name stays with the graph it was first given to)",
                     loc=("name",))
