"""The CS231n spiral (3 classes, 2-D): the training view's and the trainer tests' dataset."""

from __future__ import annotations

import numpy as np


def spiral(points: int = 100, classes: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``points`` per class along ``classes`` arms: x (points*classes, 2), integer labels y."""
    rng = np.random.default_rng(seed)
    x = np.zeros((points * classes, 2))
    y = np.zeros(points * classes, dtype=np.int64)
    for j in range(classes):
        ix = slice(points * j, points * (j + 1))
        r = np.linspace(0.0, 1, points)
        t = np.linspace(j * 4, (j + 1) * 4, points) + rng.standard_normal(points) * 0.2
        x[ix] = np.c_[r * np.sin(t), r * np.cos(t)]
        y[ix] = j
    return x, y
