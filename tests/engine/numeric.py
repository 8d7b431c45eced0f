"""Finite differences for the engine tests (float64, no engine code involved), and the
crossing to and from the backend the tests run under (``GRADSERVE_BACKEND``: numpy, or
array-api-strict in ``make test``'s second pass) for tests that call engine internals."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from service.engine import REGISTRY

#: The backend's float types, as ``Executable.forward`` / ``start`` take them.
F64 = REGISTRY.dtypes["float64"][0]
F32 = REGISTRY.dtypes["float32"][0]


def dev(value: Any) -> Any:
    """A test value on the backend (NumPy: unchanged)."""
    return value if REGISTRY.scalars else REGISTRY.to_device(np.asarray(value))


def dev_values(values: dict[str, Any]) -> dict[str, Any]:
    return {n: dev(v) for n, v in values.items()}


def host(value: Any) -> np.ndarray:
    """A backend value as a NumPy array."""
    return np.asarray(REGISTRY.to_host(value))


def forward(plan: Any, values: dict[str, Any]) -> Any:
    """The engine's forward value alone (no upstream or gradients needed), on the host."""
    exe = plan.specialize({n: np.shape(v) for n, v in values.items()}, ())
    out = exe.forward(dev_values(values))[exe.output_slot]
    return out if REGISTRY.scalars else host(out)


def numeric_grad(f: Callable[[np.ndarray], float], x: Any, step: float = 1e-3) -> np.ndarray:
    """d f / d x by the 4th-order central difference (truncation O(h^4), float64)."""
    x = np.array(x, dtype=np.float64)
    flat = x.reshape(-1)
    grad = np.zeros(flat.size)
    for j in range(flat.size):
        orig = flat[j]
        h = step * max(1.0, abs(orig))
        fs = []
        for d in (2, 1, -1, -2):
            flat[j] = orig + d * h
            fs.append(f(x))
        flat[j] = orig
        grad[j] = (-fs[0] + 8 * fs[1] - 8 * fs[2] + fs[3]) / (12 * h)
    return grad.reshape(x.shape)


def assert_grad_close(analytic: Any, numeric: Any, what: str, rtol: float = 1e-6) -> None:
    """rtol on each entry, with an absolute floor scaled to the gradient's size."""
    scale = max(1.0, float(np.max(np.abs(numeric), initial=0.0)))
    np.testing.assert_allclose(analytic, numeric, rtol=rtol, atol=1e-9 * scale, err_msg=what)
