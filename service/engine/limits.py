"""Size and work limits the engine checks before NumPy allocates anything."""

from __future__ import annotations

import time
from dataclasses import dataclass

from service.engine.errors import DeadlineExceeded


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
    # Peak bytes one request holds at once: inputs, every live forward and backward value of
    # the joint graph (liveness schedule), Jacobian / Hessian results. 512 MiB keeps a
    # worker (~70 MB at rest, plus the body and the encoded response) under ~1 GiB RSS.
    max_memory_bytes: int = 512 << 20
    max_hessian_elements: int = 1 << 20  # all Hessian entries of one request (8 MiB f64)
    # Per worker: the compiled-plan cache's estimated bytes, and shape specializations
    # (executables) kept per plan.
    plan_cache_bytes: int = 256 << 20
    max_specializations: int = 32
    # The bytes of one ONNX model at registration, checked before it is parsed.
    max_model_bytes: int = 64 << 20


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class Deadline:
    """A request's wall-clock budget, checked between phases and inside the long loops
    (Jacobian rows, gradient-check perturbations), so a slow request is answered 503
    instead of holding its worker thread until gunicorn's timeout."""

    at: float  # time.monotonic() value
    seconds: float

    @classmethod
    def after(cls, seconds: float, start: float | None = None) -> Deadline:
        return cls((time.monotonic() if start is None else start) + seconds, seconds)

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise DeadlineExceeded(
                f"the request ran past its deadline GRADSERVE_REQUEST_DEADLINE_S="
                f"{self.seconds:g} s; ask for less (fewer Jacobian rows or checked "
                "elements, smaller tensors) or raise the setting")
