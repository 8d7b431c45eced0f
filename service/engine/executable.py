"""Executable: a plan bound to input shapes and a Want — its steps, slots and costs — and
the step loop that runs it (``run_steps``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from service.engine.errors import LimitExceeded
from service.engine.limits import Limits
from service.engine.registry import Shape

if TYPE_CHECKING:
    from service.engine.compiler import Plan, PlanNode, Want

# Per-worker bytes of one cached executable, for the byte-bounded plan cache (see
# compiler.PLAN_BYTES_PER_NODE).
EXE_BYTES_PER_SLOT = 400


class Step(NamedTuple):
    """One node of the joint graph: ``vals[out] = fn(*vals[args])``, then free ``free``."""

    fn: Any
    args: tuple[int, ...]
    out: int
    free: tuple[int, ...]


def run_steps(steps: tuple[Step, ...], vals: list[Any]) -> None:
    """The executor: one flat loop over prebuilt tuples (arity picked by a length test,
    cheaper than building an argument list per call)."""
    for fn, a, o, free in steps:
        if len(a) == 2:
            vals[o] = fn(vals[a[0]], vals[a[1]])
        elif len(a) == 1:
            vals[o] = fn(vals[a[0]])
        else:
            vals[o] = fn(*[vals[i] for i in a])
        if free:
            for i in free:
                vals[i] = None


@dataclass(frozen=True)
class Executable:
    """A plan bound to input shapes and a :class:`Want`: the joint graph's steps, its slots
    and cost estimates.

    ``prefix`` is the forward pass (what depends on no direction leaf: seed, v, t, u);
    ``suffix`` everything after. With ``want.repeat`` the suffix may be re-run with new
    direction values (Jacobian rows, Hessian columns): it then frees only its own slots.
    """

    plan: Plan
    want: Want
    n_slots: int
    input_slots: dict[str, int]
    constants: tuple[tuple[int, Any], ...]  # (slot, float64 scalar of the namespace)
    f64: Any  # the namespace's float64 scalar type
    prefix: tuple[Step, ...]
    suffix: tuple[Step, ...]
    output_slot: int
    output_shape: Shape
    seed_slot: int  # -1: no first-order backward pass
    u_slot: int  # the JVP's dummy upstream; -1 when none
    grad_slots: dict[str, int]  # wrt input → slot of its gradient (absent: zero)
    hvp_leaves: dict[str, int]  # wrt input → slot of its direction v
    hvp_slots: dict[str, int]  # wrt input → slot of its Hessian-vector product
    tangent_leaves: dict[str, int]
    jvp_slot: int  # -1: zero (or not asked)
    node_slots: tuple[tuple[PlanNode, int], ...]
    node_grad_slots: dict[str, int]  # node id → its gradient's slot (trace)
    backward_records: tuple[tuple[int, str, tuple[int, ...], str], ...]  # trace_backward
    slot_of: dict[str, int]
    slot_names: tuple[str, ...]
    slot_shapes: tuple[Shape, ...]
    wrt: tuple[str, ...]
    label_bounds: tuple[tuple[str, int, int, str], ...]  # label input → [lo, hi), its noun
    max_elements: int
    largest: tuple[str, tuple[str | int, ...]]  # the biggest tensor: what it is and loc
    peak_elements: int  # most elements live at once (liveness schedule; views not counted)
    flops: int
    forward_flops: int
    suffix_flops: int
    # Constants in another precision, made once per dtype on a device backend (a 0-d device
    # array per constant per run would be a host-to-device copy each). Never written to.
    device_constants: dict[Any, tuple[tuple[int, Any], ...]] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return EXE_BYTES_PER_SLOT * self.n_slots

    def check_limits(self, limits: Limits, itemsize: int = 8, extra_bytes: int = 0,
                     repeats: int = 1, what: str = "") -> None:
        """Refuse (413 naming the setting) before anything is allocated.

        ``repeats`` suffix runs (Jacobian rows, Hessian columns) multiply the suffix's work;
        ``extra_bytes`` are what the caller allocates besides the slots (results).
        """
        if self.max_elements > limits.max_tensor_elements:
            name, loc = self.largest
            raise LimitExceeded("max_tensor_elements", limits.max_tensor_elements,
                                self.max_elements, f"the element count of {name}",
                                loc=loc or None)
        if self.peak_elements > limits.max_total_elements:
            raise LimitExceeded("max_total_elements", limits.max_total_elements,
                                self.peak_elements,
                                "estimated elements held at once by the request")
        peak = self.peak_elements * itemsize + extra_bytes
        if peak > limits.max_memory_bytes:
            raise LimitExceeded("max_memory_bytes", limits.max_memory_bytes, peak,
                                f"estimated peak bytes of the request{what}")
        device = self.plan.registry.memory_bytes  # a GPU's memory: 413, not out-of-memory
        if device is not None and peak > device:
            raise LimitExceeded("device_memory_bytes", device, peak,
                                f"estimated peak device bytes of the request{what}")
        flops = self.flops + max(repeats - 1, 0) * self.suffix_flops
        if flops > limits.max_flops:
            raise LimitExceeded("max_flops", limits.max_flops, flops,
                                f"estimated work (flops){what}")

    def start(self, values: Mapping[str, Any], dtype: Any = None) -> list[Any]:
        """A slot list with the inputs and constants in place (the other leaves empty)."""
        vals: list[Any] = [None] * self.n_slots
        for name, slot in self.input_slots.items():
            vals[slot] = values[name]
        # Constants are stored as floats (0-d float64 when run: 1.0 / 0.0 must give inf, not
        # raise); another precision converts them per run, so a node of constants alone
        # (exp(2.0)) does not turn float32 values downstream into float64.
        if dtype is None or dtype is self.f64:
            for slot, c in self.constants:
                vals[slot] = c
        elif self.plan.registry.scalars:
            for slot, c in self.constants:
                vals[slot] = dtype(c)
        else:
            cached = self.device_constants.get(dtype)
            if cached is None:
                scalar = self.plan.registry.scalar
                cached = tuple((slot, scalar(float(c), dtype)) for slot, c in self.constants)
                self.device_constants[dtype] = cached
            for slot, c in cached:
                vals[slot] = c
        return vals

    def forward(self, values: Mapping[str, Any], dtype: Any = None) -> list[Any]:
        """Run the forward pass; returns the slot list (freed slots are None)."""
        vals = self.start(values, dtype)
        run_steps(self.prefix, vals)
        return vals

    def backward(self, vals: list[Any], seed: Any) -> list[Any]:
        """Run the rest of the joint graph with ``seed`` = d(objective)/d(output)."""
        if self.seed_slot >= 0:
            vals[self.seed_slot] = seed
        run_steps(self.suffix, vals)
        return vals

    def gradient(self, vals: list[Any], name: str) -> Any:
        """The gradient of wrt input ``name`` after a run (None: identically zero)."""
        slot = self.grad_slots.get(name)
        return None if slot is None else vals[slot]
