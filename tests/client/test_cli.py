"""The ``gradserve`` command: grad / check / ops, ``--local`` and ``--json``, and ``make run``
(``gradserve serve``) serving on GRADSERVE_PORT and stopping on a SIGTERM to make."""

from __future__ import annotations

import ast
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from gradserve.cli import main, parse_values
from tests.e2e.server import free_port

ROOT = Path(__file__).resolve().parents[2]
PREFIX = Path(sys.prefix)


def test_grad_local_prints_output_and_gradients_as_a_table(capsys):
    assert main(["grad", "(x + y) * z", "x=-2", "y=5", "z=-4", "--local"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["output", "-12"]
    assert [line.split() for line in lines[1:]] == [
        ["input", "value", "gradient"], ["x", "-2", "-4"], ["y", "5", "-4"], ["z", "-4", "3"]]


def test_grad_local_json_with_arrays(capsys):
    assert main(["grad", "sum((W @ x) ** 2)", "W=[[0.1,0.5],[-0.3,0.8]]", "x=[0.2,0.4]",
                 "--local", "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["output"] == pytest.approx(0.116)
    assert body["gradients"]["W"][0] == pytest.approx([0.088, 0.176])
    assert body["gradients"]["W"][1] == pytest.approx([0.104, 0.208])
    assert body["gradients"]["x"] == pytest.approx([-0.112, 0.636])


def test_check_local_passes_and_reports_errors(capsys):
    assert main(["check", "tanh(x) * y", "x=0.3", "y=2", "--local"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["input", "max_abs_error", "max_rel_error"]
    assert out.splitlines()[-1].startswith("ok: largest relative error")


def test_errors_are_one_clear_line_and_exit_1(capsys):
    assert main(["grad", "sigmod(x)", "x=1", "--local"]) == 1
    err = capsys.readouterr().err
    assert "422" in err and "did you mean 'sigmoid'" in err


def test_values_are_json_never_evaluated():
    assert parse_values(["x=1", "W=[[1, 2], [3, 4]]"]) == {"x": 1, "W": [[1, 2], [3, 4]]}
    with pytest.raises(SystemExit):
        parse_values(["x=__import__('os')"])
    with pytest.raises(SystemExit):
        parse_values(["x"])


def test_serve_without_a_config_says_where_to_run_it(tmp_path, capsys):
    assert main(["serve", "--config", str(tmp_path / "missing.py")]) == 2
    assert "gunicorn config" in capsys.readouterr().err


def test_the_client_package_never_imports_the_server_side():
    """Only ``cli._local`` (``--local``) may import ``service``, inside the function."""
    for path in (ROOT / "gradserve").glob("*.py"):
        tree = ast.parse(path.read_text())
        allowed: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name == "_local":
                allowed |= {id(n) for n in ast.walk(node)}
        for node in ast.walk(tree):
            names = ([node.module or ""] if isinstance(node, ast.ImportFrom) else
                     [a.name for a in node.names] if isinstance(node, ast.Import) else [])
            for name in names:
                if name.split(".")[0] in ("service", "schemas"):
                    assert id(node) in allowed, (path.name, name)


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_run_serves_on_gradserve_port_and_sigterm_to_make_stops_gunicorn(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GRADSERVE_", "_GRADSERVE_", "PROMETHEUS_MULTIPROC_DIR"))}
    env.update({"GRADSERVE_PORT": str(port), "GRADSERVE_WORKERS": "1",
                "GRADSERVE_DATA_DIR": str(tmp_path / "data"), "PORT": "1"})
    log = tmp_path / "make.log"
    # -o: this environment is already installed (never reinstall it from a test).
    stamp = PREFIX / ".installed-run"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["make", "--no-print-directory", "-o", str(stamp), "run", f"VENV={PREFIX}"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                with urllib.request.urlopen(url + "/healthz", timeout=1) as resp:  # noqa: S310
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        # exec all the way down: make's only child is gunicorn's master.
        children = _children(proc.pid)
        assert len(children) == 1 and b"gunicorn" in _cmdline(children[0]), children
        master = children[0]
        assert f"listening on http://127.0.0.1:{port}" in log.read_text()

        cli = [str(PREFIX / "bin" / "gradserve")]
        out = subprocess.run([*cli, "grad", "(x + y) * z", "x=-2", "y=5", "z=-4", "--url", url],
                             capture_output=True, text=True, timeout=30, env=env)
        assert out.returncode == 0 and out.stdout.splitlines()[0].split() == ["output", "-12"]
        # The default URL follows GRADSERVE_HOST / GRADSERVE_PORT, as `serve` binds.
        out = subprocess.run([*cli, "ops"], capture_output=True, text=True, timeout=30,
                             env=env)
        assert out.returncode == 0 and out.stdout.split()[:4] == ["op", "arity", "attrs",
                                                                  "gradient"]

        proc.send_signal(signal.SIGTERM)  # to make only, not its process group
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(master):
            assert time.monotonic() < deadline, "gunicorn outlived make"
            time.sleep(0.1)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for f in Path(f"/proc/{pid}/task").glob("*/children"):
        found += [int(p) for p in f.read_text().split()]
    return found


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def test_grad_takes_npy_batches_per_example(tmp_path, capsys):
    import numpy as np

    rng = np.random.default_rng(4)
    xs, w = rng.standard_normal((3, 2)), rng.standard_normal((2, 2))
    np.save(tmp_path / "xs.npy", xs)
    np.save(tmp_path / "w.npy", w)
    assert main(["grad", "sum(tanh(W @ x))", f"W=@{tmp_path / 'w.npy'}",
                 f"x=@{tmp_path / 'xs.npy'}", "--batched", "x", "--per-example", "--local",
                 "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert np.shape(body["gradients"]["W"]) == (3, 2, 2)
    for i in range(3):
        assert main(["grad", "sum(tanh(W @ x))", f"W={json.dumps(w.tolist())}",
                     f"x={json.dumps(xs[i].tolist())}", "--local", "--json"]) == 0
        one = json.loads(capsys.readouterr().out)
        assert body["output"][i] == pytest.approx(one["output"], rel=1e-12)
        assert np.allclose(body["gradients"]["W"][i], one["gradients"]["W"], rtol=1e-12)
    with pytest.raises(SystemExit):  # no pickles, no missing files
        parse_values([f"x=@{tmp_path / 'nope.npy'}"])
