"""The array backend setting (service/engine/backend.py, GRADSERVE_BACKEND) and GPU pinning.

No GPU here: the CuPy path itself is not run by these tests (bench/gpu.py runs it where a GPU
is). What is tested: the setting's validation and its start-up failure, that a NumPy worker
never imports CuPy, the backend and device in /readyz and /v1/ops, the device-memory limit
of the cost model (on a NumPy registry given a device budget), the host/device crossing of
array-api-strict, and gunicorn's per-worker GPU assignment (with a stand-in ``cupy`` module:
the only way to reach those hooks without CUDA).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.config import ConfigError, load_settings
from service.engine import REGISTRY, Query, build_registry, compile_graph, execute, parse_expression
from service.engine.backend import Backend, backend_for, load_backend
from service.errors import LimitExceeded

ROOT = Path(__file__).resolve().parents[2]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GRADSERVE_") and k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(extra)
    return env


def _fake_cupy(tmp_path: Path, body: str = "") -> str:
    """A directory holding a stand-in ``cupy`` package (imports fine, or raises)."""
    pkg = tmp_path / "fake" / "cupy"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(body)
    return str(tmp_path / "fake")


def test_numpy_backend_never_imports_cupy(tmp_path: Path) -> None:
    code = ("import sys; from service import create_app; from service.config import "
            "load_settings; app = create_app(load_settings()); "
            "from service.engine import REGISTRY; print(REGISTRY.backend); "
            "print('cupy' in sys.modules, 'array_api_strict' in sys.modules)")
    # An importable stand-in, so an unconditional ``import cupy`` would show, not fail.
    env = _env(GRADSERVE_DATA_DIR=str(tmp_path), PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
               PYTHONPATH=_fake_cupy(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["numpy", "False", "False"]


@pytest.mark.parametrize("value", ["tpu", "jax"])
def test_unknown_backend_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="GRADSERVE_BACKEND"):
        load_settings(env={"GRADSERVE_BACKEND": value})


def test_known_backends_load() -> None:
    assert load_settings(env={"GRADSERVE_BACKEND": "array-api-strict"}).backend == \
        "array-api-strict"
    assert load_settings(env={}).backend == "numpy"


@pytest.mark.parametrize("value", ["0,x", "first"])
def test_bad_gpu_list_names_the_variable(value: str) -> None:
    with pytest.raises(ConfigError, match="GRADSERVE_GPUS"):
        load_settings(env={"GRADSERVE_GPUS": value})


def test_unavailable_cupy_fails_start_up_with_one_line_and_exit_2(tmp_path: Path) -> None:
    """gunicorn.conf.py run as gunicorn runs it: cupy that cannot be imported (a stand-in
    raising ImportError, so the test means the same where CuPy is installed)."""
    fake = _fake_cupy(tmp_path, "raise ImportError('libcudart.so.12: cannot open')\n")
    env = _env(GRADSERVE_BACKEND="cupy", PYTHONPATH=fake,
               PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "m"))
    code = "import runpy; runpy.run_path('gunicorn.conf.py')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "GRADSERVE_BACKEND=cupy" in lines[0] and "libcudart" in lines[0]


def test_ops_and_readyz_report_backend_and_device(client) -> None:
    ops = client.get("/v1/ops").get_json()
    ready = client.get("/readyz").get_json()
    for body in (ops, ready):
        assert body["backend"] == REGISTRY.backend
        assert body["device"] == REGISTRY.device
    assert REGISTRY.backend in ("numpy", "array-api-strict")
    assert REGISTRY.device == "cpu"


def test_device_memory_bounds_the_request_with_413() -> None:
    """The cost model takes min(GRADSERVE_MAX_MEMORY_BYTES, device memory): a request whose
    peak exceeds the device's budget is refused before anything is allocated."""
    small = Backend("numpy", np, "cpu", lambda a: a, lambda a: a, scalars=True,
                    memory_bytes=4096)
    reg = build_registry(np, small)
    plan = compile_graph(parse_expression("sum(tanh(W @ x))", reg).graph, reg)
    ok = execute(plan, {"W": np.ones((4, 4)), "x": np.ones(4)})
    assert ok.gradients["W"].shape == (4, 4)
    with pytest.raises(LimitExceeded) as info:
        execute(plan, {"W": np.ones((64, 64)), "x": np.ones(64)})
    assert info.value.limit == "device_memory_bytes"
    assert "GRADSERVE_DEVICE_MEMORY_BYTES=4,096" in str(info.value)


def test_array_api_strict_crosses_once_each_way() -> None:
    """Values go to the device at binding and results come back as NumPy arrays."""
    strict = load_backend("array-api-strict")
    reg = build_registry(strict.xp, strict)
    plan = compile_graph(parse_expression("sum((W @ x) ** 2)", reg).graph, reg)
    r = execute(plan, {"W": [[0.1, 0.5], [-0.3, 0.8]], "x": [0.2, 0.4]}, Query(trace=True))
    assert type(r.gradients["W"]) is np.ndarray and type(r.output) is np.ndarray
    np.testing.assert_allclose(r.gradients["W"], [[0.088, 0.176], [0.104, 0.208]])
    np.testing.assert_allclose(r.gradients["x"], [-0.112, 0.636])
    assert all(type(rec["value"]) is np.ndarray for rec in r.trace)
    assert backend_for(np).scalars and not strict.scalars


PIN = r"""
import json, os, runpy
from types import SimpleNamespace
cfg = runpy.run_path("gunicorn.conf.py")
server = SimpleNamespace(WORKERS={})
got = []
for pid in range(5):
    w = SimpleNamespace()
    cfg["pre_fork"](server, w)
    server.WORKERS[pid] = w
    got.append(w.gradserve_gpu)
# Worker 1 is replaced (max_requests): its successor takes GPU of the gap.
gone = server.WORKERS.pop(1).gradserve_gpu
w = SimpleNamespace()
cfg["pre_fork"](server, w)
cfg["post_fork"](server, w)
print(json.dumps({"workers": cfg["workers"], "got": got, "gone": gone,
                  "again": w.gradserve_gpu, "cvd": os.environ["CUDA_VISIBLE_DEVICES"]}))
"""


def test_workers_default_to_one_per_gpu_and_are_pinned(tmp_path: Path) -> None:
    fake = _fake_cupy(tmp_path)
    env = _env(GRADSERVE_BACKEND="cupy", GRADSERVE_GPUS="2,3", PYTHONPATH=fake,
               PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "m"))
    out = subprocess.run([sys.executable, "-c", PIN], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["workers"] == 2
    assert r["got"] == ["2", "3", "2", "3", "2"]
    assert r["again"] == r["gone"] == "3" and r["cvd"] == "3"


def test_cpu_backend_pins_nothing_and_keeps_one_worker_per_core(tmp_path: Path) -> None:
    env = _env(GRADSERVE_GPUS="0,1", PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "m"))
    code = ("import json, runpy; from types import SimpleNamespace; "
            "cfg = runpy.run_path('gunicorn.conf.py'); w = SimpleNamespace(); "
            "cfg['pre_fork'](SimpleNamespace(WORKERS={}), w); "
            "print(json.dumps([cfg['workers'], hasattr(w, 'gradserve_gpu')]))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    workers, pinned = json.loads(out.stdout)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert workers == cores and not pinned


def test_device_memory_setting() -> None:
    s = load_settings(env={"GRADSERVE_DEVICE_MEMORY_BYTES": "8_000_000_000"})
    assert s.device_memory_bytes == 8_000_000_000
    with pytest.raises(ConfigError, match="GRADSERVE_DEVICE_MEMORY_BYTES"):
        load_settings(env={"GRADSERVE_DEVICE_MEMORY_BYTES": "lots"})
