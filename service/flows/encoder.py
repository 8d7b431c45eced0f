"""Response tensors: encoded as the request asked, with a warning for each non-finite one."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from service.flows.codec import encode_tensor, is_finite


class Encoder:
    """Encodes response tensors and collects a warning for each non-finite one."""

    def __init__(self, encoding: str, dtype: str) -> None:
        self.encoding = encoding
        self.dtype = dtype
        self.warnings: list[str] = []
        # A 0-d result in a float64 JSON answer is one float() (encode_tensor's general path
        # costs an asarray, a finiteness check on an array and a branch per form).
        self._plain64 = encoding == "json" and dtype == "float64"

    def __call__(self, name: str, arr: Any) -> Any:
        if self._plain64 and (type(arr) is np.float64
                              or (type(arr) is np.ndarray and arr.ndim == 0)):
            value = float(arr)
            if math.isfinite(value):
                return value
        if not is_finite(arr):
            self.warnings.append(f"{name} has non-finite values (NaN or Infinity)"
                                 + (", written as null" if self.encoding == "json" else ""))
        return encode_tensor(arr, self.encoding, self.dtype)
