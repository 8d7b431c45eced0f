"""Size and work limits the engine checks before NumPy allocates anything."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Every limit has the name of its setting (``GRADSERVE_`` + upper-case field name)."""

    max_nodes: int = 20_000
    max_tensor_elements: int = 1 << 24  # one input or intermediate (128 MiB in float64)
    max_total_elements: int = 1 << 26  # all values and gradients of one request
    max_flops: int = 50_000_000_000  # estimated work of one request (forward + backward)
    max_jacobian_elements: int = 1 << 20  # all Jacobian entries of one request
    max_jacobian_rows: int = 4096  # backward passes (output elements) for a Jacobian
    max_check_elements: int = 4096  # input elements perturbed by a gradient check

    def setting(self, field: str) -> str:
        return "GRADSERVE_" + field.upper()


DEFAULT_LIMITS = Limits()
