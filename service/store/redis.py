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
from service.store.base import GraphStore, StoreUnavailable, check_blob, unavailable

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
                # The recency index for recent(): a list capped at RECENT_KEEP ids.
                pipe = client.pipeline(transaction=False)
                pipe.lpush(RECENT_KEY, graph_id.encode())
                pipe.ltrim(RECENT_KEY, 0, RECENT_KEEP - 1)
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
        key, ex = NAME_PREFIX + name, (self.ttl_s if self.ttl_s > 0 else None)

        def bind(client: redis.Redis) -> Any:
            # SET NX GET (Redis >= 7) would be one round trip; SET NX then GET works on
            # every version, and a bound name never changes, so the GET cannot race.
            if client.set(key, graph_id.encode(), nx=True, ex=ex):
                return graph_id.encode()
            return client.get(key)

        # None: the name expired between SET and GET (a TTL); it is free again, so retry.
        for _ in range(3):
            bound = self._call("bind_name", bind)
            if bound is not None:
                return _text(bound)
        raise unavailable(self.name, f"bind_name: {name!r} kept expiring", self.retry_after_s)

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
