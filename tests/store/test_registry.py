"""The registry's store side (GET /v1/graphs, DELETE /v1/graphs/{id}) on every backend:
metadata beside a graph, listing in id order by pages, removal that frees the names; and a
graph stored by an older version (no metadata, no index) still listed and removable."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from service.engine import REGISTRY
from service.engine.limits import Limits
from service.store import GraphStore, MemoryStore, RedisStore, SQLiteStore, StoreUnavailable
from service.store.cache import GraphCache, alias_key
from service.store.redis import INDEX_KEY, INDEX_SCANNED_KEY, KEY_PREFIX, NAME_PREFIX
from service.store.sqlite import FILENAME
from tests.redis_server import RedisServer

KINDS = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]


def gid(n: int) -> str:
    return f"g-{n:064x}"


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable]:
    made: list[GraphStore] = []

    def build(*, ttl_s: int = 0) -> GraphStore:
        if kind == "memory":
            store: GraphStore = MemoryStore(ttl_s=ttl_s)
        elif kind == "sqlite":
            store = SQLiteStore(tmp_path / "data", ttl_s=ttl_s)
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


def ids(listed: list) -> list[str]:
    return [entry.graph_id for entry in listed]


def test_list_is_in_id_order_by_pages(store: GraphStore) -> None:
    order = [7, 3, 11, 1, 5]
    for n in order:
        store.put(gid(n), b"blob %d" % n)
    assert ids(store.list_graphs(None, 100)) == [gid(n) for n in sorted(order)]
    assert ids(store.list_graphs(None, 2)) == [gid(1), gid(3)]
    assert ids(store.list_graphs(gid(3), 2)) == [gid(5), gid(7)]
    assert ids(store.list_graphs(gid(7), 2)) == [gid(11)]
    assert store.list_graphs(gid(11), 2) == []
    assert store.list_graphs(None, 0) == []


def test_meta_and_names_are_listed(store: GraphStore) -> None:
    store.put(gid(1), b"one")
    store.put(gid(2), b"two")
    store.put_meta(gid(1), b'{"kind":"expression"}')
    store.put_meta(gid(1), b'{"kind":"spec"}')  # the first registration's kind stays
    assert store.bind_name("zeta", gid(1)) == gid(1)
    assert store.bind_name("alpha", gid(1)) == gid(1)
    first, second = store.list_graphs(None, 10)
    assert (first.graph_id, first.meta, first.names) == (gid(1), b'{"kind":"expression"}',
                                                         ["alpha", "zeta"])
    assert (second.graph_id, second.meta, second.names) == (gid(2), None, [])


def test_remove_frees_names_and_is_idempotent(store: GraphStore) -> None:
    store.put(gid(1), b"one")
    store.put(gid(2), b"two")
    store.put_meta(gid(1), b"{}")
    store.bind_name("mine", gid(1))
    store.bind_name("theirs", gid(2))
    store.remove(gid(1))
    assert store.get(gid(1)) is None and not store.exists(gid(1))
    assert store.lookup_name("mine") is None
    assert store.lookup_name("theirs") == gid(2)
    assert ids(store.list_graphs(None, 10)) == [gid(2)]
    assert [g for g in store.recent(10) if g == gid(1)] == []
    store.remove(gid(1))  # again: nothing to do, no error
    store.remove(gid(99))  # never stored
    # Registered again: stored anew, its old metadata gone, the name free for anyone.
    assert store.put(gid(1), b"one") is True
    assert store.list_graphs(None, 1)[0].meta is None
    assert store.bind_name("mine", gid(2)) == gid(2)


def test_exists(store: GraphStore) -> None:
    assert store.exists(gid(1)) is False
    store.put(gid(1), b"x")
    assert store.exists(gid(1)) is True


def test_expired_graphs_are_not_listed(kind: str, make: Callable[..., GraphStore]) -> None:
    store = make(ttl_s=1)
    store.put(gid(1), b"x")
    assert ids(store.list_graphs(None, 10)) == [gid(1)]
    if kind == "memory":
        store._items[gid(1)] = (b"x", time.monotonic() - 5)  # type: ignore[attr-defined]
    elif kind == "sqlite":
        conn = sqlite3.connect(store.path)  # type: ignore[attr-defined]
        conn.execute("UPDATE graphs SET created_at = created_at - 5")
        conn.commit()
        conn.close()
    else:
        time.sleep(1.1)
    assert store.list_graphs(None, 10) == []


# --- a store written by an older version ---------------------------------------------------


def test_sqlite_file_of_an_older_version_lists_and_removes(tmp_path: Path) -> None:
    """The tables of the version before the registry, with a graph and a name in them."""
    data = tmp_path / "data"
    data.mkdir()
    conn = sqlite3.connect(data / FILENAME)
    conn.executescript("""
        CREATE TABLE graphs (graph_id TEXT PRIMARY KEY, blob BLOB NOT NULL,
                             created_at REAL NOT NULL);
        CREATE TABLE names (name TEXT PRIMARY KEY, graph_id TEXT NOT NULL,
                            created_at REAL NOT NULL);
    """)
    conn.execute("INSERT INTO graphs VALUES (?, ?, ?)", (gid(1), b"old", time.time()))
    conn.execute("INSERT INTO names VALUES (?, ?, ?)", ("legacy", gid(1), time.time()))
    conn.commit()
    conn.close()
    store = SQLiteStore(data)
    (entry,) = store.list_graphs(None, 10)
    assert (entry.graph_id, entry.meta, entry.names) == (gid(1), None, ["legacy"])
    store.remove(gid(1))
    assert store.lookup_name("legacy") is None
    assert store.list_graphs(None, 10) == []
    store.close()


@pytest.mark.redis
def test_redis_graphs_of_an_older_version_are_indexed_and_removed(
        redis_server: RedisServer) -> None:
    """Keys as the version before the registry wrote them: a graph, a name, no index."""
    raw = redis.Redis.from_url(redis_server.url)
    for n in (2, 1):
        raw.set(KEY_PREFIX + gid(n), b"old")
    raw.set(NAME_PREFIX + "legacy", gid(1).encode())
    store = RedisStore(redis_server.url, timeout_ms=1000)
    store.put(gid(3), b"new")  # a new version's put indexes only its own graph
    assert ids(store.list_graphs(None, 10)) == [gid(1), gid(2), gid(3)]
    assert raw.exists(INDEX_SCANNED_KEY)
    store.remove(gid(1))  # a legacy graph: its names are looked for
    assert store.lookup_name("legacy") is None
    assert ids(store.list_graphs(None, 10)) == [gid(2), gid(3)]
    # Removed by an older version (only the graph key): dropped from the index on listing.
    raw.delete(KEY_PREFIX + gid(2))
    assert ids(store.list_graphs(None, 10)) == [gid(3)]
    assert raw.zrange(INDEX_KEY, 0, -1) == [gid(3).encode()]
    raw.close()
    store.close()


@pytest.mark.redis
def test_redis_listing_fills_a_page_past_dead_entries(redis_server: RedisServer) -> None:
    raw = redis.Redis.from_url(redis_server.url)
    store = RedisStore(redis_server.url, timeout_ms=1000)
    for n in range(1, 11):
        store.put(gid(n), b"x")
    for n in range(1, 8):
        raw.delete(KEY_PREFIX + gid(n))
    assert ids(store.list_graphs(None, 2)) == [gid(8), gid(9)]
    raw.close()
    store.close()


@pytest.mark.redis
def test_redis_registry_calls_fail_as_unavailable(redis_server: RedisServer) -> None:
    store = RedisStore(redis_server.url, timeout_ms=200, breaker_cooldown_s=60)
    store.put(gid(1), b"x")
    redis_server.stop()
    for call in (lambda: store.list_graphs(None, 10), lambda: store.remove(gid(1)),
                 lambda: store.exists(gid(1)), lambda: store.put_meta(gid(1), b"{}")):
        with pytest.raises(StoreUnavailable):
            call()
    store.close()


# --- the cache: kind recorded at registration, a legacy graph's listing --------------------


def _cache(store: GraphStore) -> GraphCache:
    return GraphCache(REGISTRY, Limits(), store=store)


def test_cache_lists_kind_inputs_output_and_name(store: GraphStore) -> None:
    from service.engine import parse_expression

    cache = _cache(store)
    text = "f = sin(x) * y"
    plan, _ = cache.register(alias_key("expr", text),
                             lambda: parse_expression(text, REGISTRY).graph, name="wave")
    entries, cursor = cache.list_graphs(None, 10)
    assert cursor is None
    assert entries == [{"graph_id": plan.graph_id, "name": "wave", "kind": "expression",
                        "inputs": {"x": {}, "y": {}}, "output": "f"}]
    # A graph stored without metadata (an older version): from its canonical JSON, "spec".
    store.put(gid(0), plan.canonical_json)  # its id does not match; the listing reads it
    entries, _ = cache.list_graphs(None, 10)
    assert entries[0] == {"graph_id": gid(0), "kind": "spec", "inputs": {"x": {}, "y": {}},
                          "output": "f"}
    store.put(gid(1), b"not json")  # corrupt: left out of the listing
    assert [e["graph_id"] for e in cache.list_graphs(None, 10)[0]] == [gid(0), plan.graph_id]


def test_cache_pages_with_a_next_cursor(store: GraphStore) -> None:
    from service.engine import parse_expression

    cache = _cache(store)
    made = []
    for i in range(5):
        text = f"x * {i + 2}"
        made.append(cache.register(alias_key("expr", text),
                                   lambda t=text: parse_expression(t, REGISTRY).graph)[0].graph_id)
    seen, cursor, pages = [], None, 0
    while True:
        entries, cursor = cache.list_graphs(cursor, 2)
        pages += 1
        seen += [e["graph_id"] for e in entries]
        if cursor is None:
            break
    assert seen == sorted(made) and pages == 3
    entries, cursor = cache.list_graphs(None, 5)
    assert len(entries) == 5 and cursor is None  # exactly one page: no empty one after it
