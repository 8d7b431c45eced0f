"""gunicorn settings for gradserve, all from ``GRADSERVE_*`` environment variables.

Flat, as gunicorn's ``examples/example_config.py`` and Warehouse's ``gunicorn-prod.conf.py``:
every module-level name that gunicorn knows is a setting. ``make run`` and the container run
``gunicorn -c gunicorn.conf.py service.wsgi:app``.

Order matters. The BLAS thread counts must be in the environment before anything imports
NumPy (``service.config`` does, through ``service.engine``), and ``PROMETHEUS_MULTIPROC_DIR``
before anything imports ``prometheus_client``; both are set here, in the master, so every
forked worker inherits them.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile

# --- 1. Process and thread counts, before NumPy is imported --------------------------------


def _early_int(name: str, default: int) -> int:
    """A count read before the settings are validated; a bad value is reported below."""
    try:
        return max(0, int(os.environ.get(name, str(default)).replace("_", "")))
    except ValueError:
        return default


def _cpu_cores() -> int:
    # The CPUs this process may run on (a container's cpuset), not the host's count.
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _gpu_ids() -> list[str]:
    """GPUs to pin workers to (cupy backend): GRADSERVE_GPUS, else CUDA_VISIBLE_DEVICES, else
    every GPU the NVIDIA driver lists. Read from /proc, never through CUDA: the master must
    not hold a CUDA context when it forks."""
    for var in ("GRADSERVE_GPUS", "CUDA_VISIBLE_DEVICES"):
        ids = [g.strip() for g in os.environ.get(var, "").split(",") if g.strip()]
        if ids:
            return ids
    try:
        return [str(i) for i in range(len(os.listdir("/proc/driver/nvidia/gpus")))]
    except OSError:
        return []


_cores = _cpu_cores()
_gpus = _gpu_ids() if os.environ.get("GRADSERVE_BACKEND", "").strip().lower() == "cupy" else []
# One worker per GPU by default on the cupy backend; one per core on the CPU.
_workers = _early_int("GRADSERVE_WORKERS", 0) or len(_gpus) or _cores
# Each worker's matmuls get an equal share of the cores, so that workers x BLAS threads do
# not oversubscribe them (N workers each starting N OpenBLAS threads thrash under load).
_blas_threads = _early_int("GRADSERVE_BLAS_THREADS", 0) or max(1, _cores // _workers)
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    # setdefault: an operator's explicit value wins.
    os.environ.setdefault(_var, str(_blas_threads))
# OpenBLAS's threads spin for ~2**28 cycles (~0.1 s) after every call before they sleep:
# after each request a worker's BLAS threads burn ~130 ms of CPU doing nothing, on the cores
# its own response write, the next request's body read and a co-located client need (an
# 8 MB OIP round trip through tritonclient took 2-3x the engine mostly from that). 4, the
# least OpenBLAS accepts, has them sleep at once; a matmul chain runs as fast (bench.oip).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# --- 2. Prometheus multiprocess directory, before prometheus_client is imported -------------

# Only a directory this file created is removed at exit; an operator's is only emptied. The
# marker survives a SIGHUP reload, which runs this file again with the variable already set.
_OWNED_MARKER = "_GRADSERVE_OWN_METRICS_DIR"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gradserve-metrics-")
    os.environ[_OWNED_MARKER] = os.environ["PROMETHEUS_MULTIPROC_DIR"]
_metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
_own_metrics_dir = _metrics_dir if os.environ.get(_OWNED_MARKER) == _metrics_dir else None

# --- 3. Validated settings -------------------------------------------------------------------

from prometheus_client import multiprocess  # noqa: E402 - needs PROMETHEUS_MULTIPROC_DIR

from service.config import ConfigError, load_settings  # noqa: E402 - imports NumPy
from service.runtime.metric_files import archive_dead_worker  # noqa: E402 - defines no metric

try:
    _settings = load_settings()
except ConfigError as _exc:
    # A clean one-line message (not gunicorn's traceback) and a non-zero exit: a bad deploy
    # should crash-loop loudly rather than serve with a limit nobody asked for.
    print(f"gradserve: configuration error: {_exc}", file=sys.stderr, flush=True)
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
    sys.exit(2)

# --- 4. gunicorn settings --------------------------------------------------------------------

wsgi_app = "service.wsgi:app"
proc_name = "gradserve"
bind = f"{_settings.host}:{_settings.port}"
workers = _workers
# Threads let a worker overlap a slow store round trip with other requests; NumPy releases
# the GIL in its kernels, so compute-bound requests still use the BLAS threads.
# gthread, plus a pool of its own for health/readiness/metrics probes and queue-time stamps
# for the request deadline (service/runtime/worker.py).
worker_class = "service.runtime.worker.ThreadWorker"
threads = max(1, _settings.threads)
timeout = _settings.timeout
graceful_timeout = _settings.graceful_timeout
keepalive = 5
# Recycle workers now and then (bounds any slow leak); the jitter keeps them from all
# restarting at the same moment.
max_requests = _settings.max_requests
max_requests_jitter = _settings.max_requests_jitter
# No preloading: the app (its store connections, SQLite handles, metric files) is created in
# each worker after the fork, never shared across it.
preload_app = False
# The worker heartbeat file on tmpfs: on a container's overlay filesystem, writes to it can
# stall and get healthy workers killed for a missed heartbeat.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None  # noqa: S108 - tmpfs
# gunicorn >= 25 opens an admin socket at a fixed per-user path by default; two instances
# (tests, benchmarks, replicas on one host) would fight over it, and nothing here uses it.
control_socket_disable = True

errorlog = "-"
loglevel = _settings.log_level.lower()
# The app writes its own JSON access log lines; gunicorn's would duplicate them.
accesslog = None

# --- 5. Hooks --------------------------------------------------------------------------------


def on_starting(server):
    """Master start: an operator's metrics directory may hold a previous run's files."""
    os.makedirs(_metrics_dir, exist_ok=True)
    if not _own_metrics_dir:
        for path in glob.glob(os.path.join(_metrics_dir, "*.db")):
            os.remove(path)
    server.log.info(
        "gradserve: %d workers x %d threads, %s BLAS threads per worker (%d cores), "
        "metrics in %s", workers, threads, os.environ["OPENBLAS_NUM_THREADS"], _cores,
        _metrics_dir,
    )


def when_ready(server):
    server.log.info("gradserve: listening on %s", ", ".join(str(s) for s in server.LISTENERS))


def post_fork(server, worker):
    """Per-process state after the fork.

    The app is created in the worker (no ``preload_app``), so its store clients and caches
    are already per process, and the engine draws no random numbers. On the cupy backend the
    worker sees only its own GPU (before anything opens CUDA: the app is created later).
    glibc gets two arenas, not one per thread, before the worker starts any
    (``service/runtime/memory.py``: RSS that the plan budget bounds).
    """
    from service.runtime import memory

    memory.tune()
    _pin_gpu(worker)


# --- 6. GPU pinning (cupy backend) -----------------------------------------------------------


def pre_fork(server, worker):
    """In the master: give the new worker the GPU with the fewest live workers (a worker
    replaced after max_requests takes its predecessor's GPU back)."""
    if not _gpus:
        return
    held = [getattr(w, "gradserve_gpu", None) for w in server.WORKERS.values()]
    worker.gradserve_gpu = min(_gpus, key=lambda g: (held.count(g), _gpus.index(g)))


def _pin_gpu(worker):
    gpu = getattr(worker, "gradserve_gpu", None)
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def post_worker_init(worker):
    """The app is loaded in this worker: its L1 is warmed from the store (the most recently
    registered graphs, so a recycled worker starts warm; ``service.http.warmup.warm_cache``), the
    engine's matmul forms are probed (``warm_engine``), and
    SIGTERM starts a graceful drain: from then on this worker's /readyz answers 503
    "draining" while gunicorn lets its in-flight requests finish (graceful_timeout)."""
    import signal

    from service.http.warmup import mark_draining, warm_cache, warm_engine

    warm_cache(worker.wsgi)
    warm_engine()

    gunicorn_handler = worker.handle_exit

    def handle_exit(sig, frame):
        mark_draining(worker.wsgi)
        gunicorn_handler(sig, frame)

    signal.signal(signal.SIGTERM, handle_exit)


def worker_exit(server, worker):
    """In the exiting worker: its last request counts go to the metric files before the
    master folds them into the archive (``child_exit``)."""
    from service.runtime import metrics

    metrics.TALLY.flush()


def child_exit(server, worker):
    """A worker is gone: its live gauges (in-flight requests, breaker state) stop counting,
    and its counters and histograms are folded into one archive file, so that /metrics does
    not read one more file for every worker ever recycled."""
    multiprocess.mark_process_dead(worker.pid)
    try:
        archive_dead_worker(worker.pid, _metrics_dir)
    except OSError as exc:  # a full disk must not take the master down
        server.log.warning("gradserve: could not archive the metrics of worker %s: %s",
                           worker.pid, exc)


def on_exit(server):
    if _own_metrics_dir:
        shutil.rmtree(_own_metrics_dir, ignore_errors=True)
