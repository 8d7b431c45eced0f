"""GraphCache: where compiled plans come from.

Two levels. L1 is an LRU of ready-to-run :class:`Plan` objects in this worker process,
shared by every endpoint (inline graphs, expressions, MLP architectures and registered
ids), bounded by count (``GRADSERVE_L1_SIZE``) and by estimated bytes
(``GRADSERVE_PLAN_CACHE_BYTES``: each plan and each of its shape specializations is
estimated when built; a plan keeps at most ``GRADSERVE_MAX_SPECIALIZATIONS`` of them).
Behind it, the shared store (SQLite on one machine, Redis across replicas) holds each
registered graph's canonical JSON: data, never code. A graph read back from the store is
re-validated and re-hashed; an entry whose hash differs from its key, or that does not
decode, is counted as corrupt, dropped, and treated as unknown.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import orjson

from service.engine import Plan, Registry, compile_graph, graph_from_dict
from service.engine.ir import GraphIR, hash_canonical
from service.engine.limits import Limits
from service.engine.model import is_packed, load_packed
from service.errors import LimitExceeded, NotFound, ProblemError, Unprocessable
from service.runtime import metrics, tracing
from service.store.base import StoreUnavailable

CacheResult = str  # "hit" | "miss"

#: How long an L1 plan of a registered graph is served without asking the store whether the
#: graph is still there (a DELETE on another worker or replica): past it, the next by-id
#: request costs one existence check (SQLite: a primary-key probe; Redis: one EXISTS), so a
#: deleted graph is a 404 everywhere within this many seconds. Names are re-read as often.
REVALIDATE_S = 1.0

#: The kind a registration records, from the prefix of its alias key (see ``alias_key``).
KIND_OF_ALIAS = {"spec": "spec", "expr": "expression", "mlp": "mlp", "onnx": "onnx"}
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


def alias_key(kind: str, payload: Any) -> str | None:
    """A cheap key for a request's graph before it is canonicalized (L1 lookups only).

    None when ``payload`` has no cheap key: orjson writes at most 255 levels of nesting and
    a request body may hold up to 1024. Such a graph is never valid (no op takes attrs
    that deep); it is compiled without an alias, so that validation says what is wrong.
    """
    try:
        blob = payload.encode() if isinstance(payload, str) else orjson.dumps(
            payload, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, UnicodeEncodeError):
        return None
    return kind + ":" + hashlib.sha256(blob).hexdigest()


class GraphCache:
    """L1 LRU of compiled plans in front of an optional shared store."""

    def __init__(self, registry: Registry, limits: Limits, *, store: Any = None,
                 l1_size: int = 256, revalidate_s: float = REVALIDATE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.registry = registry
        self.limits = limits
        self.store = store
        self.l1_size = max(1, l1_size)
        self.max_bytes = limits.plan_cache_bytes
        self._plans: OrderedDict[str, Plan] = OrderedDict()
        self._aliases: OrderedDict[str, str] = OrderedDict()
        # Ids in L1 that are registered (here, or read back from the store). Only these are
        # served by id from L1: an inline graph this worker happened to compile is not, or a
        # by-id request would answer 200 on one worker and 404 on the others.
        # Each maps to when the store last confirmed it (``clock``): past ``revalidate_s``
        # the store is asked again, so a graph deleted elsewhere stops being served.
        self._registered: dict[str, float] = {}
        # model name -> (graph id, when read from the store)
        self._names: dict[str, tuple[str, float]] = {}
        self._kinds: dict[str, str] = {}  # without a store: what register recorded
        self.revalidate_s = revalidate_s
        self._clock = clock
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """The estimated bytes of every plan in L1 (with its specializations)."""
        return self._bytes

    # --- L1 -------------------------------------------------------------------------------
    def _l1_get(self, graph_id: str) -> Plan | None:
        with self._lock:
            plan = self._plans.get(graph_id)
            if plan is not None:
                self._plans.move_to_end(graph_id)
            return plan

    def _l1_put(self, plan: Plan, alias: str | None = None, *, registered: bool = False
                ) -> None:
        with self._lock:
            if registered:
                self._registered[plan.graph_id] = self._clock()
            old = self._plans.get(plan.graph_id)
            if old is not plan:
                if old is not None:
                    self._bytes -= old.nbytes
                    metrics.PLAN_CACHE_BYTES.dec(old.nbytes)
                    old.on_resize = None
                plan.on_resize = self._resized
                self._bytes += plan.nbytes
                metrics.PLAN_CACHE_BYTES.inc(plan.nbytes)
            self._plans[plan.graph_id] = plan
            self._plans.move_to_end(plan.graph_id)
            if alias is not None:
                self._aliases[alias] = plan.graph_id
                self._aliases.move_to_end(alias)
                while len(self._aliases) > 4 * self.l1_size:
                    self._aliases.popitem(last=False)
            self._trim()

    def _resized(self, plan: Plan, delta: int, evicted: int) -> None:
        """A plan in L1 built (and maybe dropped) shape specializations."""
        if evicted:
            metrics.PLAN_EVICTIONS.labels("specializations").inc(evicted)
        with self._lock:
            if self._plans.get(plan.graph_id) is plan:
                self._bytes += delta
                metrics.PLAN_CACHE_BYTES.inc(delta)
                self._trim()

    def _trim(self) -> None:
        """Evict least recently used plans past the count or the byte budget (the newest
        one always stays: the request that built it is running it). Lock held."""
        while len(self._plans) > 1 and (len(self._plans) > self.l1_size
                                        or self._bytes > self.max_bytes):
            reason = "count" if len(self._plans) > self.l1_size else "bytes"
            evicted, plan = self._plans.popitem(last=False)
            plan.on_resize = None
            self._bytes -= plan.nbytes
            metrics.PLAN_CACHE_BYTES.dec(plan.nbytes)
            self._registered.pop(evicted, None)
            metrics.CACHE.labels("l1", "eviction").inc()
            metrics.PLAN_EVICTIONS.labels(reason).inc()

    def compile(self, graph: GraphIR) -> Plan:
        start = time.perf_counter()
        with tracing.span("compile", nodes=len(graph.nodes)):
            plan = compile_graph(graph, self.registry, self.limits)
        plan.max_specializations = self.limits.max_specializations
        metrics.COMPILE.observe(time.perf_counter() - start)
        return plan

    # --- lookups --------------------------------------------------------------------------
    def peek(self, alias: str | None) -> Plan | None:
        """The L1 plan of an inline graph seen before (a hit is counted), else None."""
        if alias is None:
            return None
        with self._lock:
            graph_id = self._aliases.get(alias)
        plan = self._l1_get(graph_id) if graph_id is not None else None
        if plan is not None:
            metrics.TALLY.add(metrics.CACHE, ("l1", "hit"))
        return plan

    def plan_for(self, alias: str | None, build: Callable[[], GraphIR | Plan]
                 ) -> tuple[Plan, CacheResult]:
        """The plan of an inline graph: L1 by its alias key, else build and compile it
        (``build`` may return a compiled plan: an imported model compiles itself)."""
        with self._lock:
            graph_id = self._aliases.get(alias) if alias is not None else None
        if graph_id is not None:
            plan = self._l1_get(graph_id)
            if plan is not None:
                metrics.TALLY.add(metrics.CACHE, ("l1", "hit"))
                return plan, "hit"
        metrics.TALLY.add(metrics.CACHE, ("l1", "miss"))
        built = build()
        if isinstance(built, Plan):
            plan = built
            plan.max_specializations = self.limits.max_specializations
        else:
            plan = self.compile(built)
        cached = self._l1_get(plan.graph_id)  # same graph, written another way
        self._l1_put(cached or plan, alias)
        return (cached, "hit") if cached is not None else (plan, "miss")

    def plan_for_id(self, graph_id: str) -> tuple[Plan, CacheResult]:
        """A registered graph: L1, else the shared store (404 when unknown).

        An L1 plan confirmed by the store within ``revalidate_s`` is served as it is; an
        older one costs an existence check first (the graph may have been deleted on
        another worker). A store that cannot answer then does not fail the request: the
        plan is served, and checked again on the next one."""
        with self._lock:
            checked = self._registered.get(graph_id)
        plan = self._l1_get(graph_id) if checked is not None else None
        if plan is not None:
            if self.store is None or self._clock() - checked < self.revalidate_s \
                    or self._still_stored(graph_id):
                metrics.TALLY.add(metrics.CACHE, ("l1", "hit"))
                return plan, "hit"
            raise _unknown(graph_id)
        metrics.TALLY.add(metrics.CACHE, ("l1", "miss"))
        if self.store is None:
            raise _unknown(graph_id)
        with tracing.span("store", operation="get"):
            blob = self.store.get(graph_id)
        if blob is None:
            metrics.CACHE.labels("store", "miss").inc()
            raise _unknown(graph_id)
        plan = self._load(graph_id, blob)
        metrics.CACHE.labels("store", "hit").inc()
        self._l1_put(plan, registered=True)
        return plan, "hit"

    def _still_stored(self, graph_id: str) -> bool:
        """Whether the store still holds ``graph_id`` (True when it cannot say); a graph
        it no longer holds stops being a registered one here."""
        try:
            with tracing.span("store", operation="exists"):
                there = self.store.exists(graph_id)
        except StoreUnavailable:
            return True
        with self._lock:
            if there:
                self._registered[graph_id] = self._clock()
            else:
                self._registered.pop(graph_id, None)
        if not there:
            metrics.CACHE.labels("store", "miss").inc()
        return bool(there)

    def _load(self, graph_id: str, blob: bytes) -> Plan:
        """Rebuild a stored graph, trusting nothing; a corrupt entry is dropped (404)."""
        plan = self._rebuild(graph_id, blob)
        if plan is None:
            self._drop_corrupt(graph_id)
            raise _unknown(graph_id)
        return plan

    def _rebuild(self, graph_id: str, blob: bytes) -> Plan | None:
        """The plan of stored bytes if they are the graph ``graph_id`` names (decode,
        validate, compile, re-hash), else None."""
        # What is stored is the canonical JSON itself, so its hash must be the id: a cheap
        # check that refuses a tampered entry before a byte of it is parsed.
        if hash_canonical(bytes(blob)) != graph_id:
            return None
        try:
            if is_packed(blob):  # a model: its graph and its tensors (engine/model.py)
                plan = load_packed(bytes(blob), self.registry, self.limits)
                plan.max_specializations = self.limits.max_specializations
                return plan if plan.graph_id == graph_id else None
            plan = self.compile(graph_from_dict(orjson.loads(blob)))
        except LimitExceeded:
            # Over *this* replica's limits (a rolling deploy may lower them): refuse the
            # request, but the entry may be fine for the others, so it is not dropped.
            raise
        except (orjson.JSONDecodeError, ProblemError, TypeError, ValueError, RecursionError):
            return None
        return plan if plan.graph_id == graph_id else None

    def _drop_corrupt(self, graph_id: str) -> None:
        metrics.CACHE.labels("store", "corrupt").inc()
        self.store.delete(graph_id)

    def register(self, alias: str | None, build: Callable[[], GraphIR | Plan], *,
                 name: str | None = None, kind: str | None = None) -> tuple[Plan, bool]:
        """Compile and store a graph; returns (plan, created).

        ``name`` also binds that model name to the graph (NameTaken when another graph has
        it; the graph itself is stored either way, and registering it again with the same
        name is idempotent). ``kind`` (default: from the alias key's prefix) is recorded
        beside the graph for the listing; the first registration's kind stays.
        """
        if kind is None:
            prefix = alias.partition(":")[0] if alias else "spec"
            kind = KIND_OF_ALIAS.get(prefix, "spec")
        plan, _ = self.plan_for(alias, build)
        if self.store is None:
            self._l1_put(plan, registered=True)
            with self._lock:
                self._kinds.setdefault(plan.graph_id, kind)
            if name is not None:
                self.name_graph(name, plan.graph_id)
            return plan, True
        graph_id, blob = plan.graph_id, stored_bytes(plan)
        with tracing.span("store", operation="put"):
            created = self.store.put(graph_id, blob)
        if not created:
            # Something is stored under this id. If it is not this graph (tampered,
            # truncated), answering "already known" would send every worker that lacks the
            # plan in L1 to a 404: replace it now. Stored bytes are the canonical JSON, so
            # one read and a comparison confirm them.
            stored = self.store.get(graph_id)
            if stored != blob:
                if stored is not None:
                    self._drop_corrupt(graph_id)
                created = self.store.put(graph_id, blob)
        with tracing.span("store", operation="put_meta"):
            self.store.put_meta(graph_id, _meta(plan, kind))
        self._l1_put(plan, registered=True)  # only once the store holds it
        if name is not None:
            self.name_graph(name, graph_id)
        return plan, created

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
            entry.update(orjson.loads(_meta(plan, kinds.get(graph_id, "spec"))))
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


def stored_bytes(plan: Plan) -> bytes:
    """What the store holds for a plan: a model's packed bytes, else the canonical JSON."""
    return plan.model.blob if plan.model is not None else plan.canonical_json


def _meta(plan: Plan, kind: str) -> bytes:
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


def _unknown(graph_id: str) -> NotFound:
    return NotFound(f"graph '{graph_id}' is not registered here (register it again with "
                    "POST /v1/graphs: the same graph gets the same id)", loc=("graph_id",))
