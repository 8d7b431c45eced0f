"""A real gunicorn for end-to-end tests and benchmarks (a helper, not a test).

    with GunicornServer({"GRADSERVE_REDIS_URL": url}, workers=2) as server:
        status, headers, body = server.post("/v1/gradients", {"expression": "x * y", ...})
        pids = server.worker_pids()

The server runs ``python -m gunicorn -c gunicorn.conf.py <app>`` from the repository root,
so it is configured exactly as ``make run`` and the container are: only through
``GRADSERVE_*`` variables. It binds a free port on 127.0.0.1 and gets a private
``PROMETHEUS_MULTIPROC_DIR`` and ``GRADSERVE_DATA_DIR`` under its own temporary directory,
so servers never share state unless a test passes the same values in ``env``.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from email.message import Message
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "gunicorn.conf.py"

#: Parent variables that would leak a developer's settings into a test server.
_SCRUBBED_PREFIXES = ("GRADSERVE_", "_GRADSERVE_", "PROMETHEUS_MULTIPROC_DIR")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it; another process may race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ServerError(RuntimeError):
    """The server did not come up (the message carries its captured output)."""


class GunicornServer:
    """A gunicorn master with ``workers`` gthread workers of ``threads`` threads each.

    ``env`` holds extra environment variables (``GRADSERVE_*`` settings); they override the
    defaults here except the bind (host/port), ``workers`` and ``threads``, which the
    arguments set. Use as a context manager, or call :meth:`start` / :meth:`stop`.
    """

    def __init__(
        self,
        env: dict[str, str] | None = None,
        workers: int = 2,
        threads: int = 2,
        app: str = "service.wsgi:app",
        *,
        startup_timeout: float = 20.0,
        stop_timeout: float = 15.0,
        request_timeout: float = 30.0,
    ) -> None:
        self.extra_env = dict(env or {})
        self.workers = workers
        self.threads = threads
        self.app = app
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.request_timeout = request_timeout
        self.host = "127.0.0.1"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.tmpdir: Path | None = None
        self._out_path: Path | None = None
        self._err_path: Path | None = None
        self._final_logs = ""

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        """The master's pid."""
        if self.proc is None:
            raise ServerError("server not started")
        return self.proc.pid

    def _environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUBBED_PREFIXES)}
        assert self.tmpdir is not None
        metrics_dir = self.tmpdir / "metrics"
        data_dir = self.tmpdir / "data"
        metrics_dir.mkdir(exist_ok=True)
        data_dir.mkdir(exist_ok=True)
        env.update({
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            "GRADSERVE_DATA_DIR": str(data_dir),
            # Short enough that a test's teardown never waits half a minute.
            "GRADSERVE_GRACEFUL_TIMEOUT": "10",
            "PYTHONUNBUFFERED": "1",
        })
        env.update(self.extra_env)
        env.update({
            "GRADSERVE_HOST": self.host,
            "GRADSERVE_PORT": str(self.port),
            "GRADSERVE_WORKERS": str(self.workers),
            "GRADSERVE_THREADS": str(self.threads),
        })
        return env

    def start(self) -> GunicornServer:
        """Start gunicorn and wait until ``/healthz`` answers and every worker is forked."""
        if self.proc is not None and self.proc.poll() is None:
            raise ServerError("server already running")
        self.tmpdir = Path(tempfile.mkdtemp(prefix="gradserve-e2e-"))
        # Another process can take the port between free_port() and gunicorn's bind: retry.
        for attempt in range(3):
            self.port = free_port(self.host)
            self._spawn(attempt)
            try:
                self._wait_ready()
                return self
            except ServerError as exc:
                address_in_use = "Address already in use" in self.logs()
                self._terminate()
                if not address_in_use or attempt == 2:
                    self._cleanup()
                    raise exc from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(self, attempt: int) -> None:
        assert self.tmpdir is not None
        self._out_path = self.tmpdir / f"stdout.{attempt}.log"
        self._err_path = self.tmpdir / f"stderr.{attempt}.log"
        # Files, not pipes: a chatty server must never block on a full pipe buffer.
        with open(self._out_path, "wb") as out, open(self._err_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", str(CONFIG), self.app],
                cwd=ROOT,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                # Its own process group, so a stuck server and its workers can be killed
                # together without touching the test runner.
                start_new_session=True,
            )

    def _wait_ready(self) -> None:
        assert self.proc is not None
        deadline = time.monotonic() + self.startup_timeout
        healthy = False
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"gunicorn exited with status {self.proc.returncode} during start-up\n"
                    f"{self.logs()}"
                )
            if not healthy:
                try:
                    healthy = self.get("/healthz", timeout=2.0)[0] == 200
                except OSError:
                    pass
            if healthy and len(self.worker_pids()) >= self.workers:
                return
            time.sleep(0.05)
        raise ServerError(
            f"gunicorn not ready within {self.startup_timeout:.0f} s\n{self.logs()}"
        )

    def stop(self) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL the process group after ``stop_timeout``.

        Returns the master's exit status (None if it was never started).
        """
        if self.proc is None:
            return None
        code = self._terminate()
        self._cleanup()
        return code

    def _terminate(self) -> int:
        assert self.proc is not None
        proc = self.proc
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(self.stop_timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
        self._reap_group(proc.pid)
        return proc.returncode

    @staticmethod
    def _reap_group(pgid: int) -> None:
        # Workers the master failed to take down (it was killed) must not outlive the test.
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _cleanup(self) -> None:
        # Keep the logs readable after stop(): read them into memory first.
        self._final_logs = self.logs()
        if self.tmpdir is not None:
            shutil.rmtree(self.tmpdir, ignore_errors=True)
            self.tmpdir = None

    def send_signal(self, sig: int) -> None:
        """Signal the master (e.g. SIGHUP to reload, SIGTTIN/SIGTTOU to resize)."""
        if self.proc is None:
            raise ServerError("server not started")
        self.proc.send_signal(sig)

    def __enter__(self) -> GunicornServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # --- inspection ----------------------------------------------------------------------------

    def worker_pids(self) -> list[int]:
        """The pids of the master's current child processes (its workers), sorted."""
        pid = self.pid
        children: set[int] = set()
        task_dir = Path(f"/proc/{pid}/task")
        if task_dir.is_dir():
            for children_file in task_dir.glob("*/children"):
                try:
                    children.update(int(p) for p in children_file.read_text().split())
                except OSError:  # the thread ended while we read
                    pass
            return sorted(children)
        try:
            import psutil
        except ImportError as exc:  # pragma: no cover - not Linux and no psutil
            raise ServerError("worker_pids() needs /proc or psutil") from exc
        try:  # pragma: no cover - not Linux
            return sorted(c.pid for c in psutil.Process(pid).children())
        except psutil.NoSuchProcess:  # pragma: no cover
            return []

    def logs(self, stream: str = "all") -> str:
        """Captured output: ``"stdout"``, ``"stderr"`` or ``"all"`` (stdout, then stderr).

        The app's JSON access log and gunicorn's error log both land here.
        """
        if self.tmpdir is None:
            return self._final_logs if stream == "all" else ""
        parts = []
        if stream in ("stdout", "all") and self._out_path is not None:
            parts.append(_read(self._out_path))
        if stream in ("stderr", "all") and self._err_path is not None:
            parts.append(_read(self._err_path))
        return "".join(parts)

    def assert_clean_logs(self, logs: str | None = None) -> None:
        """No traceback, unhandled error or worker timeout in the captured output (or
        ``logs``, read before the server stopped)."""
        logs = self.logs() if logs is None else logs
        for needle in ("Traceback", "unhandled error", "WORKER TIMEOUT"):
            assert needle not in logs, f"{needle!r} in the server's logs:\n{logs[-3000:]}"

    # --- HTTP --------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Message, bytes]:
        """One request on a fresh connection: ``(status, headers, body)``.

        ``headers`` of the response is case-insensitive (``headers["content-type"]``).
        """
        conn = http.client.HTTPConnection(
            self.host, self.port, timeout=timeout or self.request_timeout
        )
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.headers, resp.read()
        finally:
            conn.close()

    def get(
        self, path: str, headers: dict[str, str] | None = None, timeout: float | None = None
    ) -> tuple[int, Message, bytes]:
        return self.request("GET", path, headers=headers, timeout=timeout)

    def post(
        self,
        path: str,
        json_body: Any,
        headers: dict[str, str] | None = None,
        timeout: float | None = None,
    ) -> tuple[int, Message, bytes]:
        """POST ``json_body`` as JSON; ``bytes``/``str`` are sent as they are (bad JSON)."""
        if isinstance(json_body, bytes):
            data = json_body
        elif isinstance(json_body, str):
            data = json_body.encode()
        else:
            data = json.dumps(json_body).encode()
        sent = {"Content-Type": "application/json", **(headers or {})}
        return self.request("POST", path, body=data, headers=sent, timeout=timeout)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
