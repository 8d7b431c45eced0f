"""Finite differences for the engine tests (float64, no engine code involved)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np


def forward(plan: Any, values: dict[str, Any]) -> Any:
    """The engine's forward value alone (no upstream or gradients needed)."""
    exe = plan.specialize({n: np.shape(v) for n, v in values.items()}, ())
    return exe.forward(values)[exe.output_slot]


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
