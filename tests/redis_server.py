"""A private ``redis-server`` for tests: spawn on a free port, pause, stop, restart.

Never the Redis on 6379: each server here runs in its own temp dir with persistence off.
Use the fixtures from any test directory by importing them into its conftest.py::

    from tests.redis_server import redis_server, redis_server_factory  # noqa: F401

Without a ``redis-server`` binary the tests that need one are skipped, except under
``CI=true``, where that is a failure (a CI image without Redis must not pass silently).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

START_TIMEOUT_S = 10.0


def redis_server_binary() -> str:
    """The path of ``redis-server``; skips the test (fails it under CI=true) if missing."""
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.access("/usr/bin/redis-server", os.X_OK) else None
    )
    if path is None:
        message = "redis-server binary not found"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message} (CI=true: Redis is required)")
        pytest.skip(message)
    return path


def free_port() -> int:
    """A TCP port nobody listens on right now (the server binds it with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ping(port: int, timeout: float = 0.5) -> bool:
    """Whether a Redis on ``port`` answers PING (raw RESP, no client library)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on ``127.0.0.1:port``; restartable on the same port."""

    def __init__(self, port: int | None = None, workdir: str | os.PathLike[str] | None = None):
        self.binary = redis_server_binary()
        self.port = port or free_port()
        self._own_dir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="redis-test-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Spawn the server and wait until it answers PING."""
        if self.proc is not None and self.proc.poll() is None:
            return self
        with open(self.workdir / "redis.log", "ab") as log:  # the child keeps its own fd
            self.proc = subprocess.Popen(
                [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                 "--save", "", "--appendonly", "no", "--dir", str(self.workdir),
                 "--daemonize", "no", "--protected-mode", "no"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while not ping(self.port, timeout=0.2):
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer within {START_TIMEOUT_S}s")
            time.sleep(0.01)
        self.paused = False
        return self

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = (self.workdir / "redis.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def pause(self) -> None:
        """SIGSTOP: the port still accepts connections, nothing answers (a hung server)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self.proc is not None and self.paused:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    @contextmanager
    def paused_server(self) -> Iterator[RedisServer]:
        self.pause()
        try:
            yield self
        finally:
            self.resume()

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (SIGKILL if it lingers); the port then refuses connections."""
        if self.proc is None:
            return
        self.resume()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown."""
        if self.proc is None:
            return
        self.proc.kill()
        self.proc.wait()
        self.proc = None
        self.paused = False

    def restart(self) -> RedisServer:
        """Stop (if running) and start again on the same port, empty."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop and remove the temp dir (if this object made it)."""
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def redis_server_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., RedisServer]]:
    """Call it to start a private server (``port=`` optional); all are stopped at teardown."""
    servers: list[RedisServer] = []

    def start(port: int | None = None) -> RedisServer:
        server = RedisServer(port, tmp_path_factory.mktemp("redis"))
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def redis_server(redis_server_factory: Callable[..., RedisServer]) -> RedisServer:
    """A fresh, empty, running private ``redis-server`` for one test."""
    return redis_server_factory()
