"""The shared graph store on Redis, for several hosts (replicas) behind one service.

Each process makes its own connection pool on first use (gunicorn forks workers after the
app is built; sockets must not be shared across a fork). Timeouts are short and there is
at most one retry, and a per-process circuit breaker turns an outage into one timeout per
cooldown instead of one per request: while it is open, calls fail at once without
touching the network.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import redis
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from service.runtime import metrics
from service.store.base import GraphStore, Listed, StoreUnavailable, check_blob, unavailable

log = logging.getLogger(__name__)

KEY_PREFIX = "gradserve:v1:graph:"
NAME_PREFIX = "gradserve:v1:name:"

T = TypeVar("T")

# The server cannot be reached (or stopped answering): these open the breaker. Any other
# RedisError (a ResponseError such as READONLY or OOM) comes from a server that answered.
_OUTAGE = (redis.ConnectionError, redis.TimeoutError, OSError)


# The ids of the most recently stored graphs, newest first (see GraphStore.recent).
RECENT_KEY = "gradserve:v1:recent"
RECENT_KEEP = 1000

# The registry (docs/api.md §5): metadata beside each graph, the names bound to it, and every
# id in a sorted set (score 0: ordered by id) for paging. A graph stored by an older version
# has none of these: the first listing after INDEX_RESCAN_S scans the graph keys into the
# index (a marker key says when that was done), and a legacy graph lists without metadata.
META_PREFIX = "gradserve:v1:meta:"
NAMES_OF_PREFIX = "gradserve:v1:names-of:"
INDEX_KEY = "gradserve:v1:index"
INDEX_SCANNED_KEY = "gradserve:v1:index-scanned"
INDEX_RESCAN_S = 3600

# Binding a name also records it under its graph (for remove), in one atomic step.
# KEYS: name key, names-of key; ARGV: graph id, ttl (0: none), name.
_BIND_LUA = """
local cur = redis.call('GET', KEYS[1])
if not cur then
  if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  else
    redis.call('SET', KEYS[1], ARGV[1])
  end
  cur = ARGV[1]
end
if cur == ARGV[1] then
  redis.call('SADD', KEYS[2], ARGV[3])
  if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[2], ARGV[2]) end
end
return cur
"""

# Remove a graph, its metadata, its index entries and every name still bound to it.
# KEYS: graph, meta, names-of, index, recent; ARGV: graph id, name prefix, more names.
_REMOVE_LUA = """
local names = {}
local listed = redis.pcall('SMEMBERS', KEYS[3])
if type(listed) == 'table' and not listed.err then names = listed end
for i = 3, #ARGV do names[#names + 1] = ARGV[i] end
for _, n in ipairs(names) do
  local k = ARGV[2] .. n
  if redis.pcall('GET', k) == ARGV[1] then redis.call('DEL', k) end
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
redis.pcall('ZREM', KEYS[4], ARGV[1])
redis.pcall('LREM', KEYS[5], 0, ARGV[1])
return #names
"""


class CircuitBreaker:
    """closed --failure--> open --cooldown--> half-open --trial ok--> closed (else open).

    While open, :meth:`allow` says no without any I/O. After ``cooldown_s`` exactly one
    caller is let through as the trial; the others keep failing fast until it reports.
    """

    CLOSED, OPEN, HALF_OPEN = "closed", "open", "half-open"

    def __init__(self, cooldown_s: float, *, clock: Callable[[], float] = time.monotonic):
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self.state = self.CLOSED
        self._opened_at = 0.0
        self._trial = False
        self.last_error = ""

    def allow(self) -> bool:
        """Whether a call may go to the server now (the half-open trial counts as one)."""
        if self.state == self.CLOSED:
            return True
        with self._lock:
            if self.state == self.CLOSED:
                return True
            if self._trial or self._clock() - self._opened_at < self.cooldown_s:
                return False
            self.state, self._trial = self.HALF_OPEN, True
            return True

    def success(self) -> None:
        """The server answered."""
        if self.state == self.CLOSED:
            return
        with self._lock:
            if self.state != self.CLOSED:
                log.info("redis graph store reachable again; circuit closed")
            self.state, self._trial = self.CLOSED, False
        metrics.BREAKER.set(0)

    def failure(self, error: str) -> None:
        """The server could not be reached: (re-)open for a full cooldown."""
        with self._lock:
            if self.state == self.CLOSED:
                log.warning("redis graph store unreachable (%s); circuit open for %ss",
                            error, self.cooldown_s)
            self.state, self._trial = self.OPEN, False
            self._opened_at = self._clock()
            self.last_error = error
        metrics.BREAKER.set(1)

    def release(self) -> None:
        """The trial ended without telling either way (a bug, not the server): let another."""
        with self._lock:
            self._trial = False


@dataclass
class _Process:
    """What belongs to one process: its pool and its breaker."""

    pid: int
    client: redis.Redis
    breaker: CircuitBreaker


class _Down(Exception):
    """Internal: the call did not get an answer it can use; the message says why."""


class RedisStore(GraphStore):
    """Graphs under ``gradserve:v1:graph:<graph_id>`` in the Redis at ``url``.

    ``timeout_ms`` bounds connecting and each reply; a dropped connection is retried once
    (after a server restart every pooled connection is dead), a timeout is not (a stalled
    server would only make the caller wait twice). ``ttl_s`` > 0 expires a graph that long
    after it was first stored; storing it again does not extend that.
    """

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        timeout_ms: int = 200,
        ttl_s: int = 0,
        retry_after_s: int = 5,
        breaker_cooldown_s: float = 5.0,
        health_check_interval_s: int = 30,
    ) -> None:
        redis.ConnectionPool.from_url(url)  # a malformed URL fails here, not on first use
        self.url = url
        self.timeout_ms = timeout_ms
        self.ttl_s = ttl_s
        self.retry_after_s = retry_after_s
        self.breaker_cooldown_s = breaker_cooldown_s
        self.health_check_interval_s = health_check_interval_s
        self._proc: _Process | None = None

    @staticmethod
    def key(graph_id: str) -> str:
        return KEY_PREFIX + graph_id

    # --- per-process state ----------------------------------------------------------------

    def _process(self) -> _Process:
        # No lock: two threads racing here each build a pool and one is dropped, which is
        # harmless; a lock held by another thread at fork time would hang the child.
        proc = self._proc
        if proc is not None and proc.pid == os.getpid():
            return proc
        timeout = self.timeout_ms / 1000
        client = redis.Redis.from_url(
            self.url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(ExponentialWithJitterBackoff(base=0.01, cap=0.05), 1,
                        supported_errors=(redis.ConnectionError,)),
            health_check_interval=self.health_check_interval_s,
        )
        proc = _Process(os.getpid(), client, CircuitBreaker(self.breaker_cooldown_s))
        self._proc = proc
        return proc

    @property
    def breaker(self) -> CircuitBreaker:
        """This process's circuit breaker."""
        return self._process().breaker

    def _attempt(self, fn: Callable[[redis.Redis], T]) -> T:
        proc = self._process()
        breaker = proc.breaker
        if not breaker.allow():
            raise _Down(f"circuit open after: {breaker.last_error}")
        try:
            result = fn(proc.client)
        except _OUTAGE as exc:
            breaker.failure(f"{type(exc).__name__}: {exc}")
            raise _Down(f"{type(exc).__name__}: {exc}") from exc
        except redis.RedisError as exc:
            breaker.success()
            raise _Down(f"{type(exc).__name__}: {exc}") from exc
        except BaseException:
            breaker.release()
            raise
        breaker.success()
        return result

    def _call(self, what: str, fn: Callable[[redis.Redis], T]) -> T:
        try:
            return self._attempt(fn)
        except _Down as down:
            err: StoreUnavailable = unavailable(self.name, f"{what}: {down}", self.retry_after_s)
            raise err from down.__cause__

    # --- GraphStore -----------------------------------------------------------------------

    def get(self, graph_id: str) -> bytes | None:
        key = self.key(graph_id)

        def get(client: redis.Redis) -> Any:
            try:
                return client.get(key)
            except redis.ResponseError as exc:
                if not str(exc).startswith("WRONGTYPE"):
                    raise
                # Not a string: nothing the caller could even validate. Drop it as corrupt
                # so that registering the graph again can heal it.
                log.warning("redis graph store: %s is not a string; deleting it", key)
                metrics.CACHE.labels("store", "corrupt").inc()
                client.delete(key)
                return None

        return self._call("get", get)

    def put(self, graph_id: str, blob: bytes) -> bool:
        blob = check_blob(blob)
        key, ex = self.key(graph_id), (self.ttl_s if self.ttl_s > 0 else None)

        def put(client: redis.Redis) -> Any:
            stored = client.set(key, blob, nx=True, ex=ex)
            if stored:
                # The recency index for recent(): a list capped at RECENT_KEEP ids; and
                # the registry's index of every id.
                pipe = client.pipeline(transaction=False)
                pipe.lpush(RECENT_KEY, graph_id.encode())
                pipe.ltrim(RECENT_KEY, 0, RECENT_KEEP - 1)
                pipe.zadd(INDEX_KEY, {graph_id.encode(): 0})
                pipe.execute()
            return stored

        return bool(self._call("put", put))

    def recent(self, n: int) -> list[str]:
        if n <= 0:
            return []
        want = min(n, RECENT_KEEP)

        def recent(client: redis.Redis) -> Any:
            try:
                return client.lrange(RECENT_KEY, 0, want - 1)
            except redis.ResponseError as exc:  # not a list (written by hand): none known
                if not str(exc).startswith("WRONGTYPE"):
                    raise
                return []

        return [_text(item) for item in self._call("recent", recent)]

    def names(self, limit: int) -> list[str]:
        if limit <= 0:
            return []

        def scan(client: redis.Redis) -> Any:
            found: list[bytes] = []
            for key in client.scan_iter(match=NAME_PREFIX + "*", count=1000):
                found.append(key)
                if len(found) >= limit:
                    break
            return found

        return sorted(_text(key)[len(NAME_PREFIX):] for key in self._call("names", scan))

    def bind_name(self, name: str, graph_id: str) -> str:
        keys = [NAME_PREFIX + name, NAMES_OF_PREFIX + graph_id]
        args = [graph_id, max(0, int(self.ttl_s)), name]

        def bind(client: redis.Redis) -> Any:
            return client.eval(_BIND_LUA, len(keys), *keys, *args)

        return _text(self._call("bind_name", bind))

    def lookup_name(self, name: str) -> str | None:
        key = NAME_PREFIX + name

        def lookup(client: redis.Redis) -> Any:
            try:
                return client.get(key)
            except redis.ResponseError as exc:
                if not str(exc).startswith("WRONGTYPE"):
                    raise
                return None

        bound = self._call("lookup_name", lookup)
        return None if bound is None else _text(bound)

    def delete(self, graph_id: str) -> None:
        key = self.key(graph_id)
        self._call("delete", lambda client: client.delete(key))

    def exists(self, graph_id: str) -> bool:
        key = self.key(graph_id)
        return bool(self._call("exists", lambda client: client.exists(key)))

    def put_meta(self, graph_id: str, meta: bytes) -> None:
        meta = check_blob(meta)
        key, ex = META_PREFIX + graph_id, (self.ttl_s if self.ttl_s > 0 else None)
        self._call("put_meta", lambda client: client.set(key, meta, nx=True, ex=ex))

    def _index_legacy(self, client: redis.Redis) -> None:
        """Put the graphs stored without the index (an older version) into it, at most
        once per INDEX_RESCAN_S across every process sharing the server."""
        if not client.set(INDEX_SCANNED_KEY, b"1", nx=True, ex=INDEX_RESCAN_S):
            return
        batch: list[bytes] = []
        for key in client.scan_iter(match=KEY_PREFIX + "*", count=1000):
            batch.append(key[len(KEY_PREFIX):])
            if len(batch) >= 1000:
                client.zadd(INDEX_KEY, dict.fromkeys(batch, 0))
                batch = []
        if batch:
            client.zadd(INDEX_KEY, dict.fromkeys(batch, 0))

    def list_graphs(self, after: str | None, limit: int) -> list[Listed]:
        if limit <= 0:
            return []

        def page(client: redis.Redis) -> list[Listed]:
            self._index_legacy(client)
            found: list[Listed] = []
            start = b"(" + after.encode() if after else b"-"
            while len(found) < limit:
                want = limit - len(found)
                ids = client.zrangebylex(INDEX_KEY, start, b"+", start=0, num=want)
                if not ids:
                    break
                start = b"(" + ids[-1]
                pipe = client.pipeline(transaction=False)
                for raw in ids:
                    graph_id = _text(raw)
                    pipe.exists(self.key(graph_id))
                    pipe.get(META_PREFIX + graph_id)
                    pipe.smembers(NAMES_OF_PREFIX + graph_id)
                replies = pipe.execute(raise_on_error=False)
                gone = []
                for i, raw in enumerate(ids):
                    there, meta, names = replies[3 * i: 3 * i + 3]
                    if isinstance(there, Exception) or not there:
                        gone.append(raw)  # expired, or removed by an older version
                        continue
                    found.append(Listed(
                        _text(raw), meta if isinstance(meta, bytes) else None,
                        sorted(_text(n) for n in names) if isinstance(names, set) else []))
                if gone:
                    client.zrem(INDEX_KEY, *gone)
            return found

        return self._call("list_graphs", page)

    def remove(self, graph_id: str) -> None:
        keys = [self.key(graph_id), META_PREFIX + graph_id, NAMES_OF_PREFIX + graph_id,
                INDEX_KEY, RECENT_KEY]

        def remove(client: redis.Redis) -> Any:
            extra: list[bytes] = []
            if client.exists(keys[0]) and not client.exists(keys[1], keys[2]):
                # Stored by an older version: names bound then are not recorded under the
                # graph, so look for them (rare: the delete of a legacy graph).
                target = graph_id.encode()
                for key in client.scan_iter(match=NAME_PREFIX + "*", count=1000):
                    try:
                        if client.get(key) == target:
                            extra.append(key[len(NAME_PREFIX):])
                    except redis.ResponseError:
                        continue
            return client.eval(_REMOVE_LUA, len(keys), *keys, graph_id, NAME_PREFIX, *extra)

        self._call("remove", remove)

    def ping(self) -> bool:
        try:
            return bool(self._attempt(lambda client: client.ping()))
        except _Down:
            return False

    def close(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.pid == os.getpid():
            proc.client.close()
            proc.client.connection_pool.disconnect()


def _text(raw: Any) -> str:
    """A stored name binding as text; bytes that are not UTF-8 read as an unknown id."""
    if isinstance(raw, bytes):
        return raw.decode("utf-8", errors="replace")
    return str(raw)
