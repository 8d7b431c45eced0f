"""Damaged models: random byte flips, cuts and splices of valid models (derandomized). The
import either takes the result or refuses it with a 4xx naming what is wrong: never
another exception (a 500)."""

from __future__ import annotations

import numpy as np
import pytest

from service.engine import REGISTRY
from service.engine.errors import ProblemError
from service.engine.onnx import compile_model, import_model
from tests.engine.onnx.test_models import cnn, transformer

SEEDS = range(150)
MODELS = {"cnn": cnn("float32")[0], "transformer": transformer("float32")[0]}


def damaged(data: bytes, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    buf = bytearray(data)
    kind = seed % 3
    if kind == 0:  # flip a few bytes
        for i in rng.integers(0, len(buf), size=int(rng.integers(1, 6))):
            buf[i] ^= int(rng.integers(1, 256))
    elif kind == 1:  # cut
        del buf[int(rng.integers(1, len(buf))):]
    else:  # splice a piece of the model into another place
        a, b = sorted(int(v) for v in rng.integers(0, len(buf), size=2))
        at = int(rng.integers(0, len(buf)))
        buf[at:at] = buf[a:b]
    return bytes(buf)


@pytest.mark.parametrize("name", MODELS)
def test_a_damaged_model_is_taken_or_refused_cleanly(name: str) -> None:
    outcomes = {"taken": 0, "refused": 0}
    for seed in SEEDS:
        data = damaged(MODELS[name], seed)
        try:
            compile_model(import_model(data), REGISTRY)
            outcomes["taken"] += 1
        except ProblemError as err:
            assert 400 <= err.status < 500, (seed, err.status, err.detail)
            assert err.detail
            outcomes["refused"] += 1
    assert outcomes["refused"] > len(SEEDS) // 2, outcomes  # most damage is noticed
