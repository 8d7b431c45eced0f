"""The array backend a worker computes on: NumPy (default), CuPy on a GPU, or array-api-strict.

One process, one backend, chosen by ``GRADSERVE_BACKEND`` and loaded on first use (the
engine's registry asks for it). The engine reaches arrays only through the namespace
``Backend.xp`` (the Python array API standard) and crosses the host/device boundary only
through ``to_device`` (request tensors, decoded on the host by NumPy, moved once) and
``to_host`` (results, moved back once).

- ``numpy``: NumPy itself. NumPy >= 2 implements the standard in its main namespace, so the
  hot path keeps NumPy's own functions and operators (no wrapper layer per step), and
  0-d values run as NumPy scalars (``scalars``), several times cheaper than 0-d arrays.
- ``cupy``: CuPy through ``array_api_compat.cupy`` (the standard's names over CuPy's).
  Imported only when selected: a NumPy worker never imports CuPy.
- ``array-api-strict``: a testing backend that refuses anything outside the standard;
  the engine's test table passing under it is what shows the engine portable.

CUDA must not be initialised in gunicorn's master (a CUDA context does not survive a fork):
:func:`check_available` only imports the module; :func:`load_backend`, which touches the
device, runs in the worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

BACKENDS = ("numpy", "cupy", "array-api-strict")
ENV = "GRADSERVE_BACKEND"
DEVICE_MEMORY_ENV = "GRADSERVE_DEVICE_MEMORY_BYTES"
# Host tensors at least this big go to the GPU through a pinned (page-locked) staging buffer
# from CuPy's pinned pool: a DMA copy at full bus speed instead of the driver's own staging.
PINNED_MIN_BYTES = 1 << 20
# Free device memory the cost model leaves to CuPy's allocator and the CUDA libraries
# (cuBLAS workspaces, fragmentation) when it sizes requests from memGetInfo.
DEVICE_MEMORY_HEADROOM = 0.9


class BackendUnavailable(RuntimeError):
    """The selected backend cannot be used here; the message names the variable."""


@dataclass(frozen=True)
class Backend:
    """An array namespace plus how values cross the host/device boundary."""

    name: str
    xp: Any
    device: str
    to_device: Callable[[Any], Any]
    to_host: Callable[[Any], np.ndarray]
    # 0-d values may run as NumPy scalars (NumPy only).
    scalars: bool = False
    # Device memory a request may use (None: host memory, bounded by the settings alone).
    memory_bytes: int | None = None

    def describe(self) -> dict[str, Any]:
        """What ``/readyz`` and ``/v1/ops`` report."""
        return {"backend": self.name, "device": self.device}


def _identity(a: Any) -> Any:
    return a


def selected_name(env: Any = None) -> str:
    """The backend named by ``GRADSERVE_BACKEND`` (default numpy); ValueError if unknown."""
    env = os.environ if env is None else env
    name = env.get(ENV, "numpy").strip().lower() or "numpy"
    if name not in BACKENDS:
        raise ValueError(f"{ENV}={name!r}: not one of {', '.join(BACKENDS)}")
    return name


def check_available(name: str) -> None:
    """Import the backend's module (never initialising a device); BackendUnavailable if not.

    Safe in gunicorn's master: importing CuPy loads no CUDA context.
    """
    if name == "numpy":
        return
    module = {"cupy": "cupy", "array-api-strict": "array_api_strict"}[name]
    try:
        if name == "cupy":
            import array_api_compat  # noqa: F401
            import cupy  # noqa: F401
        else:
            import array_api_strict  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or CUDA libraries missing
        extra = " (pip install 'gradserve[gpu]')" if name == "cupy" else ""
        raise BackendUnavailable(f"{ENV}={name}: cannot import {module}: "
                                 f"{str(exc).splitlines()[0] if str(exc) else exc!r}{extra}"
                                 ) from None


def load_backend(name: str, device_memory_bytes: int = 0) -> Backend:
    """The backend called ``name``, its device opened; BackendUnavailable if not possible.

    ``device_memory_bytes`` (cupy): what the cost model lets a request hold on the device;
    0 means the free memory now, less a headroom.
    """
    check_available(name)
    if name == "numpy":
        return backend_for(np)
    if name == "array-api-strict":
        import array_api_strict

        return backend_for(array_api_strict)
    return _load_cupy(device_memory_bytes)


def backend_for(xp: Any) -> Backend:
    """A Backend for a namespace given directly (``build_registry(xp)`` in tests, benches)."""
    if xp is np:
        return Backend("numpy", np, "cpu", _identity, _identity, scalars=True)
    name = getattr(xp, "__name__", str(xp))
    if name == "array_api_strict":
        return Backend("array-api-strict", xp, "cpu", xp.asarray, _strict_to_host)
    return Backend(name, xp, "cpu", xp.asarray, _strict_to_host)


def _strict_to_host(a: Any) -> np.ndarray:
    if isinstance(a, np.ndarray | np.generic):
        return np.asarray(a)
    return np.from_dlpack(a)


def _load_cupy(device_memory_bytes: int) -> Backend:  # pragma: no cover - needs a GPU
    import cupy
    from array_api_compat import cupy as xp

    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # noqa: BLE001 - cupy raises CUDARuntimeError without a driver
        raise BackendUnavailable(f"{ENV}=cupy: no CUDA device: {exc}") from None
    if count < 1:
        raise BackendUnavailable(f"{ENV}=cupy: no CUDA device visible")
    device = cupy.cuda.Device()  # the current device: CUDA_VISIBLE_DEVICES picks it
    props = cupy.cuda.runtime.getDeviceProperties(device.id)
    label = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    free, _total = cupy.cuda.runtime.memGetInfo()
    memory = device_memory_bytes or int(free * DEVICE_MEMORY_HEADROOM)

    def to_device(a: Any) -> Any:
        if isinstance(a, cupy.ndarray):
            return a
        a = np.asarray(a)
        if a.nbytes < PINNED_MIN_BYTES or a.ndim == 0:
            return cupy.asarray(a)
        pinned = cupy.cuda.alloc_pinned_memory(a.nbytes)
        staging = np.frombuffer(pinned, a.dtype, a.size).reshape(a.shape)
        staging[...] = a
        out = cupy.empty(a.shape, a.dtype)
        out.set(staging)
        # The pinned block goes back to CuPy's pool when ``pinned`` dies: wait for the copy
        # (one sync per large input, at binding; never in the step loop).
        cupy.cuda.get_current_stream().synchronize()
        return out

    def to_host(a: Any) -> np.ndarray:
        if isinstance(a, cupy.ndarray):
            return a.get()
        return np.asarray(a)

    return Backend("cupy", xp, f"cuda:{device.id} ({label})", to_device, to_host,
                   memory_bytes=memory)


def _device_memory_from_env() -> int:
    raw = os.environ.get(DEVICE_MEMORY_ENV, "0").replace("_", "").strip() or "0"
    try:
        return max(0, int(raw))
    except ValueError:
        raise BackendUnavailable(f"{DEVICE_MEMORY_ENV}={raw!r}: not an integer") from None


_current: Backend | None = None


def current() -> Backend:
    """This process's backend (loaded once, from the environment)."""
    global _current
    if _current is None:
        try:
            name = selected_name()
        except ValueError as exc:
            raise BackendUnavailable(str(exc)) from None
        _current = load_backend(name, _device_memory_from_env())
    return _current
