"""The embedded graph store: one SQLite file in WAL mode, shared by every worker on the host.

WAL lets readers run alongside the one writer, and ``busy_timeout`` makes concurrent
writers from other processes wait for the lock instead of failing. SQLite connections must
not cross a fork (https://www.sqlite.org/howtocorrupt.html#_carrying_an_open_database_connection_across_a_fork_),
so each connection belongs to one process and one thread, and one inherited from the
parent is never used, nor even closed, in the child.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from service.store.base import GraphStore, Listed, StoreUnavailable, check_blob, unavailable

log = logging.getLogger(__name__)

FILENAME = "graphs.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS graphs (
    graph_id   TEXT PRIMARY KEY,
    blob       BLOB NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS graphs_created_at ON graphs (created_at);
CREATE TABLE IF NOT EXISTS names (
    name       TEXT PRIMARY KEY,
    graph_id   TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS names_graph_id ON names (graph_id);
CREATE TABLE IF NOT EXISTS graph_meta (
    graph_id   TEXT PRIMARY KEY,
    meta       BLOB NOT NULL
);
"""
# The registry's tables and index are new ones (IF NOT EXISTS), never a change to an old
# table: a file written by an older version opens as it is, its graphs without metadata.

# An expired row is replaced in place, so a put after expiry stores again (returns True).
_PUT_TTL = """
INSERT INTO graphs (graph_id, blob, created_at) VALUES (?, ?, ?)
ON CONFLICT (graph_id) DO UPDATE SET blob = excluded.blob, created_at = excluded.created_at
WHERE graphs.created_at <= ?
"""
_PUT = "INSERT OR IGNORE INTO graphs (graph_id, blob, created_at) VALUES (?, ?, ?)"

# The primary key makes the first binding of a name win across processes; an expired one
# is taken over in place. The binding is then read back in the same transaction.
_BIND_TTL = """
INSERT INTO names (name, graph_id, created_at) VALUES (?, ?, ?)
ON CONFLICT (name) DO UPDATE SET graph_id = excluded.graph_id, created_at = excluded.created_at
WHERE names.created_at <= ?
"""
_BIND = "INSERT OR IGNORE INTO names (name, graph_id, created_at) VALUES (?, ?, ?)"


class SQLiteStore(GraphStore):
    """Graphs in ``data_dir/graphs.sqlite3`` (the directory is created on first use).

    ``ttl_s`` > 0: an entry older than that reads as missing, and expired rows are purged
    at most every ``purge_interval_s`` by a put. ``busy_timeout_ms`` bounds the wait for
    another process's write lock; past it the call raises StoreUnavailable.
    """

    name = "sqlite"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        ttl_s: float = 0,
        busy_timeout_ms: int = 5000,
        retry_after_s: int = 5,
        purge_interval_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = Path(data_dir) / FILENAME
        self.ttl_s = ttl_s
        self.busy_timeout_ms = busy_timeout_ms
        self.retry_after_s = retry_after_s
        self.purge_interval_s = purge_interval_s
        self._clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()
        # (pid, connection) of every connection opened through this object; those of
        # another pid were inherited across a fork and are kept referenced, never closed.
        self._conns: list[tuple[int, sqlite3.Connection]] = []
        self._generation = 0  # bumped by close(): every thread then opens a new connection
        self._last_purge = 0.0

    # --- connections ----------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        key = (os.getpid(), self._generation)
        if getattr(self._local, "key", None) == key:
            return self._local.conn
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_ms / 1000,
            isolation_level=None,  # autocommit: every statement is its own transaction
            check_same_thread=False,  # only so close() may close other threads' connections
        )
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable against a crash of the process, and in WAL mode it can lose
            # only the last commits on power loss: a client then re-registers its graph.
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        with self._lock:
            self._conns.append((key[0], conn))
        self._local.key, self._local.conn = key, conn
        return conn

    def _discard(self) -> None:
        """Drop this thread's connection after an error; the next call opens a fresh one."""
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.key[0] != os.getpid():
            return
        self._local.key = self._local.conn = None
        with self._lock:
            self._conns = [(p, c) for p, c in self._conns if c is not conn]
        try:
            conn.close()
        except sqlite3.Error:
            pass

    def _failed(self, exc: Exception) -> StoreUnavailable:
        self._discard()
        log.warning("sqlite graph store %s: %s", self.path, exc)
        return unavailable(self.name, f"{type(exc).__name__}: {exc}", self.retry_after_s)

    def _cutoff(self) -> float:
        """Rows created at or before this instant are expired."""
        return self._clock() - self.ttl_s

    # --- GraphStore -----------------------------------------------------------------------

    def _select_live(self, sql: str, key: str) -> Any:
        """The first column of the row ``sql`` selects by ``key`` (None if absent or
        expired)."""
        args: tuple[object, ...] = (key,)
        if self.ttl_s > 0:
            sql += " AND created_at > ?"
            args += (self._cutoff(),)
        try:
            row = self._connection().execute(sql, args).fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(exc) from exc
        return None if row is None else row[0]

    def get(self, graph_id: str) -> bytes | None:
        # CAST: a row written by hand as TEXT still comes back as bytes.
        blob = self._select_live("SELECT CAST(blob AS BLOB) FROM graphs WHERE graph_id = ?",
                                 graph_id)
        return None if blob is None else bytes(blob)

    def put(self, graph_id: str, blob: bytes) -> bool:
        blob = check_blob(blob)
        now = self._clock()
        try:
            conn = self._connection()
            if self.ttl_s > 0:
                cur = conn.execute(_PUT_TTL, (graph_id, blob, now, now - self.ttl_s))
            else:
                cur = conn.execute(_PUT, (graph_id, blob, now))
            stored = cur.rowcount == 1
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(exc) from exc
        if self.ttl_s > 0 and now - self._last_purge >= self.purge_interval_s:
            self._purge(conn, now)
        return stored

    def bind_name(self, name: str, graph_id: str) -> str:
        now = self._clock()
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                if self.ttl_s > 0:
                    conn.execute(_BIND_TTL, (name, graph_id, now, now - self.ttl_s))
                else:
                    conn.execute(_BIND, (name, graph_id, now))
                row = conn.execute("SELECT graph_id FROM names WHERE name = ?",
                                   (name,)).fetchone()
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(exc) from exc
        return str(row[0])

    def lookup_name(self, name: str) -> str | None:
        graph_id = self._select_live("SELECT graph_id FROM names WHERE name = ?", name)
        return None if graph_id is None else str(graph_id)

    def names(self, limit: int) -> list[str]:
        sql = "SELECT name FROM names"
        args: tuple[object, ...] = ()
        if self.ttl_s > 0:
            sql, args = sql + " WHERE created_at > ?", (self._cutoff(),)
        try:
            rows = self._connection().execute(sql + " ORDER BY name LIMIT ?",
                                              args + (max(0, limit),)).fetchall()
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(exc) from exc
        return [str(row[0]) for row in rows]

    def recent(self, n: int) -> list[str]:
        sql = "SELECT graph_id FROM graphs ORDER BY created_at DESC, rowid DESC LIMIT ?"
        try:
            rows = self._connection().execute(sql, (max(0, n),)).fetchall()
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(exc) from exc
        return [str(row[0]) for row in rows]

    def exists(self, graph_id: str) -> bool:
        return self._select_live("SELECT 1 FROM graphs WHERE graph_id = ?",
                                 graph_id) is not None

    def put_meta(self, graph_id: str, meta: bytes) -> None:
        meta = check_blob(meta)
        try:
            self._connection().execute(
                "INSERT OR IGNORE INTO graph_meta (graph_id, meta) VALUES (?, ?)",
                (graph_id, meta))
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(exc) from exc

    def list_graphs(self, after: str | None, limit: int) -> list[Listed]:
        sql = ("SELECT g.graph_id, CAST(m.meta AS BLOB) FROM graphs g "
               "LEFT JOIN graph_meta m ON m.graph_id = g.graph_id WHERE g.graph_id > ?")
        args: list[object] = [after or ""]
        if self.ttl_s > 0:
            sql += " AND g.created_at > ?"
            args.append(self._cutoff())
        sql += " ORDER BY g.graph_id LIMIT ?"
        args.append(max(0, limit))
        try:
            conn = self._connection()
            rows = conn.execute(sql, args).fetchall()
            names: dict[str, list[str]] = {}
            if rows:
                marks = ",".join("?" * len(rows))
                name_sql = f"SELECT name, graph_id FROM names WHERE graph_id IN ({marks})"  # noqa: S608 - placeholders only  # nosec B608
                name_args: list[object] = [str(r[0]) for r in rows]
                if self.ttl_s > 0:
                    name_sql += " AND created_at > ?"
                    name_args.append(self._cutoff())
                for name, graph_id in conn.execute(name_sql + " ORDER BY name", name_args):
                    names.setdefault(str(graph_id), []).append(str(name))
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(exc) from exc
        return [Listed(str(g), None if m is None else bytes(m), names.get(str(g), []))
                for g, m in rows]

    def remove(self, graph_id: str) -> None:
        try:
            conn = self._connection()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for table in ("graphs", "graph_meta", "names"):
                    conn.execute(f"DELETE FROM {table} WHERE graph_id = ?", (graph_id,))  # noqa: S608 - fixed table names  # nosec B608
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(exc) from exc

    def _purge(self, conn: sqlite3.Connection, now: float) -> None:
        self._last_purge = now
        try:
            conn.execute("DELETE FROM graphs WHERE created_at <= ?", (now - self.ttl_s,))
            conn.execute("DELETE FROM names WHERE created_at <= ?", (now - self.ttl_s,))
            conn.execute("DELETE FROM graph_meta WHERE graph_id NOT IN "
                         "(SELECT graph_id FROM graphs)")
        except sqlite3.Error as exc:  # the put itself succeeded; the next purge catches up
            log.warning("sqlite graph store %s: purging expired graphs: %s", self.path, exc)

    def delete(self, graph_id: str) -> None:
        try:
            self._connection().execute("DELETE FROM graphs WHERE graph_id = ?", (graph_id,))
        except (sqlite3.Error, OSError) as exc:
            raise self._failed(exc) from exc

    def ping(self) -> bool:
        try:
            self._connection().execute("SELECT 1 FROM graphs LIMIT 1").fetchall()
        except (sqlite3.Error, OSError):
            self._discard()
            return False
        return True

    def close(self) -> None:
        pid = os.getpid()
        with self._lock:
            self._generation += 1
            mine = [c for p, c in self._conns if p == pid]
            self._conns = [(p, c) for p, c in self._conns if p != pid]
        for conn in mine:
            try:
                conn.close()
            except sqlite3.Error:
                pass
