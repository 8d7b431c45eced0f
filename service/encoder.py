"""Response tensors: encoded as the request asked, with a warning for each non-finite one."""

from __future__ import annotations

from typing import Any

from service.codec import encode_tensor, is_finite


class Encoder:
    """Encodes response tensors and collects a warning for each non-finite one."""

    def __init__(self, encoding: str, dtype: str) -> None:
        self.encoding = encoding
        self.dtype = dtype
        self.warnings: list[str] = []

    def __call__(self, name: str, arr: Any) -> Any:
        if not is_finite(arr):
            self.warnings.append(f"{name} has non-finite values (NaN or Infinity)"
                                 + (", written as null" if self.encoding == "json" else ""))
        return encode_tensor(arr, self.encoding, self.dtype)
