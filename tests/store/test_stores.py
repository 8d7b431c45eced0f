"""The graph store: one suite over every backend, then what only SQLite or Redis can do."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from service.config import load_settings
from service.store import (
    CircuitBreaker,
    GraphStore,
    MemoryStore,
    RedisStore,
    SQLiteStore,
    StoreUnavailable,
    make_store,
)
from service.store.redis import KEY_PREFIX
from service.store.sqlite import FILENAME
from tests.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[2]
GID = "g-" + "ab" * 32
BLOB = b'{"inputs":["x"],"nodes":[{"id":"y","op":"sin","args":["x"]}],"output":"y"}'


def gid(n: int | str) -> str:
    return f"g-{str(n).rjust(64, '0')}"


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def store_errors() -> float:
    return sample("gradserve_cache_total", level="store", result="error")


# --- one suite, every backend -------------------------------------------------------------

KINDS = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable]:
    """Build a store of ``kind``; ``clock`` is honoured where the backend takes one."""
    made: list[GraphStore] = []

    def build(*, ttl_s: int = 0, clock: FakeClock | None = None) -> GraphStore:
        extra = {"clock": clock} if clock is not None else {}
        if kind == "memory":
            store: GraphStore = MemoryStore(ttl_s=ttl_s, **extra)
        elif kind == "sqlite":
            store = SQLiteStore(tmp_path / "data", ttl_s=ttl_s, **extra)
        else:
            server: RedisServer = request.getfixturevalue("redis_server")
            store = RedisStore(server.url, timeout_ms=1000, ttl_s=ttl_s)
        made.append(store)
        return store

    yield build
    for store in made:
        store.close()


@pytest.fixture
def store(make: Callable[..., GraphStore]) -> GraphStore:
    return make()


def test_missing_is_none(store: GraphStore) -> None:
    assert store.get(GID) is None


def test_put_is_idempotent_and_keeps_the_first_bytes(store: GraphStore) -> None:
    assert store.put(GID, BLOB) is True
    assert store.get(GID) == BLOB
    assert store.put(GID, BLOB) is False
    assert store.put(GID, b"something else") is False
    assert store.get(GID) == BLOB


def test_delete(store: GraphStore) -> None:
    store.put(GID, BLOB)
    store.put(gid(2), b"2")
    store.delete(GID)
    assert store.get(GID) is None
    assert store.get(gid(2)) == b"2"
    store.delete(GID)  # absent: no error
    assert store.put(GID, BLOB) is True


def test_any_bytes_round_trip(store: GraphStore) -> None:
    blobs = {gid(1): b"", gid(2): bytes(range(256)) * 4, gid(3): b"\x00" * (1 << 20),
             gid(4): bytearray(b"from a bytearray")}
    for key, blob in blobs.items():
        assert store.put(key, blob) is True
    for key, blob in blobs.items():
        got = store.get(key)
        assert type(got) is bytes and got == bytes(blob)


def test_values_must_be_bytes(store: GraphStore) -> None:
    with pytest.raises(TypeError, match="bytes, not str"):
        store.put(GID, BLOB.decode())  # type: ignore[arg-type]
    assert store.get(GID) is None


def test_ping_and_close_then_reuse(store: GraphStore) -> None:
    assert store.ping() is True
    store.put(GID, BLOB)
    store.close()
    assert store.get(GID) == BLOB  # reconnects after close
    assert store.ping() is True


def together(n: int, fn: Callable[[int], list[object]]) -> list[object]:
    """``fn(0)`` … ``fn(n - 1)`` on ``n`` threads released at once by a barrier; their
    results, in no order. An exception in any thread fails the test."""
    barrier = threading.Barrier(n)
    results: list[object] = []
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        try:
            barrier.wait()
            results.extend(fn(i))
        except BaseException as exc:  # surfaced below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    return results


def test_concurrent_puts_store_once(store: GraphStore) -> None:
    n = 16
    results = together(n, lambda i: [store.put(GID, BLOB), store.put(gid(i), str(i).encode())])
    assert sorted(results) == [False] * (n - 1) + [True] * (n + 1)  # type: ignore[type-var]
    assert store.get(GID) == BLOB
    assert all(store.get(gid(i)) == str(i).encode() for i in range(n))


def test_ttl(kind: str, make: Callable[..., GraphStore], redis_raw: Callable) -> None:
    if kind == "redis":
        store = make(ttl_s=1)
        assert store.put(GID, BLOB) is True
        assert 0 < redis_raw().pttl(KEY_PREFIX + GID) <= 1000
        assert store.put(GID, BLOB) is False  # does not extend it
        time.sleep(1.1)
        assert store.get(GID) is None
        assert store.put(GID, BLOB) is True
        return
    clock = FakeClock()
    store = make(ttl_s=10, clock=clock)
    assert store.put(GID, BLOB) is True
    clock.advance(9.9)
    assert store.get(GID) == BLOB
    assert store.put(GID, BLOB) is False
    clock.advance(0.1)
    assert store.get(GID) is None
    assert store.put(GID, b"again") is True  # an expired entry is replaced
    assert store.get(GID) == b"again"
    clock.advance(9.9)
    assert store.get(GID) == b"again"


def test_no_ttl_means_forever(kind: str, make: Callable[..., GraphStore],
                              redis_raw: Callable) -> None:
    clock = FakeClock()
    store = make(clock=clock)
    store.put(GID, BLOB)
    clock.advance(10 * 365 * 86400)
    assert store.get(GID) == BLOB
    if kind == "redis":
        assert redis_raw().ttl(KEY_PREFIX + GID) == -1


def test_name_binding_first_wins_and_is_idempotent(store: GraphStore) -> None:
    assert store.lookup_name("mlp-mnist") is None
    assert store.bind_name("mlp-mnist", gid(1)) == gid(1)
    assert store.bind_name("mlp-mnist", gid(1)) == gid(1)  # the same graph again: no change
    assert store.bind_name("mlp-mnist", gid(2)) == gid(1)  # taken: the holder is returned
    assert store.lookup_name("mlp-mnist") == gid(1)
    assert store.bind_name("other", gid(2)) == gid(2)
    assert store.lookup_name("other") == gid(2)
    store.close()
    assert store.lookup_name("mlp-mnist") == gid(1)  # kept across reconnects


def test_names_lists_the_bound_names_sorted_and_bounded(store: GraphStore) -> None:
    assert store.names(10) == []
    for i, name in enumerate(["b-model", "a.model", "C_model", "z9"]):
        store.bind_name(name, gid(i))
    store.bind_name("a.model", gid(7))  # taken: still listed once
    store.put(gid(9), BLOB)  # a graph without a name is not a name
    assert store.names(10) == sorted(["b-model", "a.model", "C_model", "z9"])
    assert len(store.names(2)) == 2 and set(store.names(2)) <= set(store.names(10))
    assert store.names(0) == []


def test_names_leaves_out_expired_names(kind: str, make: Callable[..., GraphStore]) -> None:
    if kind == "redis":
        store = make(ttl_s=1)
        store.bind_name("old", gid(1))
        time.sleep(1.1)
        store.bind_name("new", gid(2))
        assert store.names(10) == ["new"]
        return
    clock = FakeClock()
    store = make(ttl_s=10, clock=clock)
    store.bind_name("old", gid(1))
    clock.advance(5)
    store.bind_name("new", gid(2))
    assert store.names(10) == ["new", "old"]
    clock.advance(5)
    assert store.names(10) == ["new"]


def test_names_and_graphs_are_separate(store: GraphStore) -> None:
    store.bind_name(GID, gid(2))  # a name spelled like a graph id is not that graph
    assert store.get(GID) is None
    store.put(gid(3), BLOB)
    assert store.lookup_name(gid(3)) is None


def test_concurrent_binds_agree_on_one_graph(store: GraphStore) -> None:
    n = 16
    results = together(n, lambda i: [store.bind_name("contested", gid(i))])
    assert len(results) == n and len(set(results)) == 1
    assert store.lookup_name("contested") == results[0]


def test_names_expire_with_the_ttl(kind: str, make: Callable[..., GraphStore]) -> None:
    if kind == "redis":
        store = make(ttl_s=1)
        assert store.bind_name("n", gid(1)) == gid(1)
        time.sleep(1.1)
        assert store.lookup_name("n") is None
        assert store.bind_name("n", gid(2)) == gid(2)
        return
    clock = FakeClock()
    store = make(ttl_s=10, clock=clock)
    assert store.bind_name("n", gid(1)) == gid(1)
    clock.advance(9.9)
    assert store.bind_name("n", gid(2)) == gid(1)
    clock.advance(0.1)
    assert store.lookup_name("n") is None
    assert store.bind_name("n", gid(2)) == gid(2)  # an expired name is free again
    assert store.lookup_name("n") == gid(2)


def test_sqlite_names_are_shared_by_processes(tmp_path: Path) -> None:
    """Two processes racing for a name: the primary key lets exactly one graph have it."""
    code = ("import sys; from service.store import SQLiteStore; "
            "s = SQLiteStore(sys.argv[1]); print(s.bind_name('shared', sys.argv[2]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), gid(i)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True) for i in range(4)]
    outs = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(outs) == 1
    assert SQLiteStore(tmp_path).lookup_name("shared") == outs.pop()


@pytest.fixture
def redis_raw(kind: str, request: pytest.FixtureRequest) -> Iterator[Callable[[], redis.Redis]]:
    """A plain client on the test's private server (only for kind == "redis")."""
    clients: list[redis.Redis] = []

    def raw() -> redis.Redis:
        server: RedisServer = request.getfixturevalue("redis_server")
        clients.append(redis.Redis.from_url(server.url))
        return clients[-1]

    yield raw
    for client in clients:
        client.close()


# --- make_store ---------------------------------------------------------------------------


def test_make_store(tmp_path: Path) -> None:
    store = make_store(load_settings({}, data_dir=str(tmp_path), store_ttl_s=7))
    assert isinstance(store, SQLiteStore)
    assert store.path == tmp_path / FILENAME and store.ttl_s == 7
    assert not store.path.exists()  # nothing touched before first use

    store = make_store(load_settings({}, redis_url="redis://127.0.0.1:1/0", store_timeout_ms=50,
                                     breaker_cooldown_s=0.5, store_retry_after_s=3))
    assert isinstance(store, RedisStore)
    assert (store.timeout_ms, store.breaker_cooldown_s, store.retry_after_s) == (50, 0.5, 3)
    with pytest.raises(StoreUnavailable) as info:  # port 1: refused, fast
        store.get(GID)
    assert info.value.status == 503 and info.value.headers["Retry-After"] == "3"
    assert "127.0.0.1" not in info.value.detail  # no internals in the client's detail
    assert "Connection" in info.value.reason
    assert store.ping() is False


# --- SQLite -------------------------------------------------------------------------------

WRITER = """
import json, sys
from service.store import SQLiteStore
store = SQLiteStore(sys.argv[1])
ids = sys.argv[2:]
print(json.dumps([store.put(i, i.encode()) for i in ids]))
"""
READER = """
import json, sys
from service.store import SQLiteStore
store = SQLiteStore(sys.argv[1])
print(json.dumps([(store.get(i) or b"").decode() for i in sys.argv[2:]]))
"""


def _python(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _results(proc: subprocess.Popen[str]) -> list:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return json.loads(out)


def test_sqlite_is_shared_by_processes(tmp_path: Path) -> None:
    shared = [gid(f"s{k}") for k in range(30)]
    writers = [_python(WRITER, str(tmp_path), *shared, gid(f"own{w}")) for w in range(4)]
    results = [_results(p) for p in writers]
    # Every shared id was stored by exactly one process; every own id by its process.
    assert [sum(r[k] for r in results) for k in range(len(shared))] == [1] * len(shared)
    assert all(r[-1] is True for r in results)
    reader = _python(READER, str(tmp_path), *shared, gid("own3"), gid("never"))
    assert _results(reader) == [*shared, gid("own3"), ""]
    with sqlite3.connect(tmp_path / FILENAME) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _child_after_fork(store: SQLiteStore, parent_conn: sqlite3.Connection) -> None:
    conn = store._connection()
    assert conn is not parent_conn  # a fresh connection, never the inherited one
    assert store.get(GID) == BLOB
    assert store.put(gid("child"), b"from the child") is True


def test_sqlite_connection_is_not_reused_after_fork(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    store.put(GID, BLOB)
    parent_conn = store._connection()
    child = multiprocessing.get_context("fork").Process(
        target=_child_after_fork, args=(store, parent_conn))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert store._connection() is parent_conn  # the parent's connection still works
    assert store.get(gid("child")) == b"from the child"
    store.close()


def test_sqlite_reads_proceed_while_another_process_writes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path, busy_timeout_ms=100)
    store.put(GID, BLOB)
    other = sqlite3.connect(tmp_path / FILENAME, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")  # holds the write lock
    try:
        assert store.get(GID) == BLOB  # WAL: readers are not blocked by the writer
        errors = store_errors()
        started = time.perf_counter()
        with pytest.raises(StoreUnavailable, match="unavailable") as info:
            store.put(gid(2), b"2")
        elapsed = time.perf_counter() - started
        assert 0.09 < elapsed < 1.0, elapsed  # waited busy_timeout, then gave up
        assert "locked" in info.value.reason
        assert store_errors() == errors + 1
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.put(gid(2), b"2") is True  # and works again once the lock is gone
    store.close()


def test_sqlite_unusable_directory_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    store = SQLiteStore(tmp_path / "file" / "data")
    with pytest.raises(StoreUnavailable):
        store.get(GID)
    with pytest.raises(StoreUnavailable):
        store.put(GID, BLOB)
    assert store.ping() is False


def test_sqlite_corrupt_file_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_bytes(b"this is not an sqlite database" * 100)
    store = SQLiteStore(tmp_path)
    with pytest.raises(StoreUnavailable) as info:
        store.get(GID)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    assert store.ping() is False


def test_sqlite_row_written_as_text_comes_back_as_bytes(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path)
    store.ping()  # creates the schema
    with sqlite3.connect(tmp_path / FILENAME) as conn:
        conn.execute("INSERT INTO graphs VALUES (?, ?, ?)", (GID, "{not json", 0))
    assert store.get(GID) == b"{not json"
    store.close()


def test_sqlite_purges_expired_rows(tmp_path: Path) -> None:
    clock = FakeClock()
    store = SQLiteStore(tmp_path, ttl_s=10, purge_interval_s=0, clock=clock)
    store.put(gid(1), b"1")
    clock.advance(11)
    store.put(gid(2), b"2")
    with sqlite3.connect(tmp_path / FILENAME) as conn:
        assert [r[0] for r in conn.execute("SELECT graph_id FROM graphs")] == [gid(2)]
    store.close()


# --- Redis --------------------------------------------------------------------------------


def _breaker_open() -> float:
    return sample("gradserve_store_breaker_open")


def _no_network(store: RedisStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any command that reaches the client fail the test."""
    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network used while the breaker is open: {args}")

    monkeypatch.setattr(store._process().client, "execute_command", boom)


def _timed(fn: Callable[[], object]) -> tuple[float, BaseException | None]:
    started = time.perf_counter()
    try:
        fn()
    except StoreUnavailable as exc:
        return time.perf_counter() - started, exc
    return time.perf_counter() - started, None


@pytest.mark.redis
def test_redis_keys_are_namespaced(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    store.put(GID, BLOB)
    raw = redis.Redis.from_url(redis_server.url)
    # The graph, the recency list of recent() (capped) and the registry's index of ids, all
    # under the same namespace.
    assert sorted(raw.keys("*")) == [f"gradserve:v1:graph:{GID}".encode(),
                                     b"gradserve:v1:index", b"gradserve:v1:recent"]
    assert raw.llen("gradserve:v1:recent") == 1
    assert raw.get(f"gradserve:v1:graph:{GID}") == BLOB
    raw.close()
    store.close()


@pytest.mark.redis
def test_redis_stopped_opens_the_breaker(redis_server: RedisServer,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    store = RedisStore(redis_server.url, timeout_ms=100, breaker_cooldown_s=30,
                       retry_after_s=7)
    store.put(GID, BLOB)
    redis_server.stop()
    errors = store_errors()
    _, exc = _timed(lambda: store.get(GID))
    assert isinstance(exc, StoreUnavailable) and exc.headers["Retry-After"] == "7"
    assert store.breaker.state == CircuitBreaker.OPEN and _breaker_open() == 1
    _no_network(store, monkeypatch)
    elapsed, exc = _timed(lambda: store.get(GID))
    assert isinstance(exc, StoreUnavailable) and elapsed < 0.005, elapsed
    assert "circuit open" in exc.reason
    for call in (lambda: store.put(GID, BLOB), lambda: store.delete(GID)):
        elapsed, exc = _timed(call)
        assert isinstance(exc, StoreUnavailable) and elapsed < 0.005, elapsed
    assert store.ping() is False
    assert store_errors() == errors + 4  # every failed call counted once; ping not at all
    store.close()


@pytest.mark.redis
def test_redis_hung_server_costs_one_timeout(redis_server: RedisServer,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    store = RedisStore(redis_server.url, timeout_ms=100, breaker_cooldown_s=30)
    store.put(GID, BLOB)
    with redis_server.paused_server():
        elapsed, exc = _timed(lambda: store.get(GID))
        assert isinstance(exc, StoreUnavailable), exc
        assert 0.09 < elapsed < 0.25, elapsed  # ~1 timeout; never more than 2
        assert isinstance(exc.__cause__, redis.TimeoutError)
        _no_network(store, monkeypatch)
        elapsed, exc = _timed(lambda: store.get(GID))
        assert isinstance(exc, StoreUnavailable) and elapsed < 0.005, elapsed
    store.close()


@pytest.mark.redis
def test_redis_fresh_connection_to_hung_server(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout_ms=100)
    with redis_server.paused_server():  # the kernel still accepts the TCP connection
        elapsed, exc = _timed(lambda: store.put(GID, BLOB))
        assert isinstance(exc, StoreUnavailable) and elapsed < 0.25, elapsed
    store.close()


@pytest.mark.redis
def test_redis_recovers_after_restart(redis_server: RedisServer,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = RedisStore(redis_server.url, timeout_ms=100, breaker_cooldown_s=0.3)
    store.put(GID, BLOB)
    redis_server.stop()
    with pytest.raises(StoreUnavailable):
        store.get(GID)
    redis_server.start()  # same port, empty
    with pytest.raises(StoreUnavailable, match="unavailable") as info:  # still cooling down
        store.get(GID)
    assert "circuit open" in info.value.reason
    time.sleep(0.35)
    assert store.get(GID) is None  # the trial call goes through; the data is gone
    assert store.breaker.state == CircuitBreaker.CLOSED and _breaker_open() == 0
    assert store.put(GID, BLOB) is True and store.get(GID) == BLOB
    store.close()


@pytest.mark.redis
def test_redis_failed_trial_reopens(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout_ms=100, breaker_cooldown_s=0.2)
    assert store.ping() is True
    redis_server.stop()
    assert store.ping() is False
    time.sleep(0.25)
    elapsed, exc = _timed(lambda: store.get(GID))  # the trial: reaches the (dead) port
    assert isinstance(exc, StoreUnavailable) and "circuit open" not in exc.reason
    assert store.breaker.state == CircuitBreaker.OPEN
    elapsed, exc = _timed(lambda: store.get(GID))
    assert isinstance(exc, StoreUnavailable) and "circuit open" in exc.reason
    store.close()


def test_breaker_lets_one_trial_through_after_the_cooldown() -> None:
    clock = FakeClock()
    breaker = CircuitBreaker(5.0, clock=clock)
    assert breaker.allow() and breaker.allow()
    breaker.failure("boom")
    assert not breaker.allow()
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()  # the trial
    assert breaker.state == CircuitBreaker.HALF_OPEN
    assert not breaker.allow()  # only one at a time
    breaker.failure("still down")  # re-opens for a full cooldown
    clock.advance(4.9)
    assert not breaker.allow()
    clock.advance(0.1)
    assert breaker.allow()
    breaker.release()  # the trial ended in a bug, not an answer: another may try
    assert breaker.allow()
    breaker.success()
    assert breaker.state == CircuitBreaker.CLOSED and breaker.allow() and breaker.allow()


@pytest.mark.redis
def test_redis_error_replies_do_not_open_the_breaker(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    raw = redis.Redis.from_url(redis_server.url)
    raw.config_set("maxmemory-policy", "noeviction")
    raw.config_set("maxmemory", 1)  # every write now answers OOM
    with pytest.raises(StoreUnavailable) as info:
        store.put(GID, BLOB)
    assert isinstance(info.value.__cause__, redis.ResponseError)
    assert store.breaker.state == CircuitBreaker.CLOSED
    assert store.get(GID) is None  # reads still work
    raw.close()
    store.close()


@pytest.mark.redis
def test_redis_garbage_is_returned_or_dropped(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    raw = redis.Redis.from_url(redis_server.url)
    raw.set(KEY_PREFIX + gid(1), b"\xff\x00{ not json")
    assert store.get(gid(1)) == b"\xff\x00{ not json"  # validating is the caller's job
    raw.rpush(KEY_PREFIX + gid(2), b"a", b"b")  # not even a string
    corrupt = sample("gradserve_cache_total", level="store", result="corrupt")
    assert store.get(gid(2)) is None
    assert sample("gradserve_cache_total", level="store", result="corrupt") == corrupt + 1
    assert raw.exists(KEY_PREFIX + gid(2)) == 0  # dropped, so it can be stored again
    assert store.put(gid(2), BLOB) is True and store.get(gid(2)) == BLOB
    raw.close()
    store.close()


def _redis_child_after_fork(store: RedisStore, parent_client: redis.Redis) -> None:
    assert store._process().client is not parent_client  # a pool of its own
    assert store.get(GID) == BLOB
    assert store.put(gid("child"), b"from the child") is True


@pytest.mark.redis
def test_redis_pool_is_not_reused_after_fork(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url)
    store.put(GID, BLOB)
    parent_client = store._process().client
    child = multiprocessing.get_context("fork").Process(
        target=_redis_child_after_fork, args=(store, parent_client))
    child.start()
    child.join(30)
    assert child.exitcode == 0
    assert store._process().client is parent_client
    assert store.get(gid("child")) == b"from the child"  # the parent's pool still works
    store.close()


def test_redis_malformed_url_fails_at_construction() -> None:
    with pytest.raises(ValueError):
        RedisStore("http://127.0.0.1:6379")


@pytest.mark.redis
def test_redis_server_helper_can_restart_on_the_same_port(
        redis_server_factory: Callable[..., RedisServer]) -> None:
    server = redis_server_factory()
    port = server.port
    server.restart()
    assert server.port == port
    raw = redis.Redis.from_url(server.url)
    assert raw.ping() is True
    raw.close()
    server.kill()
    assert server.proc is None


def test_recent_lists_the_newest_first_and_is_bounded(store: GraphStore) -> None:
    assert store.recent(5) == []
    for i in range(6):
        assert store.put(gid(i), b"{}")
    store.put(gid(2), b"{}")  # already there: not newer
    assert store.recent(3) == [gid(5), gid(4), gid(3)]
    assert store.recent(100) == [gid(i) for i in range(5, -1, -1)]
    assert store.recent(0) == []
