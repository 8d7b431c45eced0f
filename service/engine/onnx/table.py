"""The one lowering table: (ONNX op type, opset range) → the function that lowers it.

Each entry also says which registry ops it lowers onto (``uses``) and what it does not
take (``note``): docs/onnx.md's supported-op table is generated from these records
(``python -m service.engine.onnx.gen``), so the table and the docs cannot drift apart.
The lowering functions live in ``ops_math.py``, ``ops_shape.py`` and ``ops_nn.py``; each
registers itself here with :func:`lowers`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.engine.onnx.load import OPSETS


@dataclass(frozen=True)
class Entry:
    op_type: str
    since: int  # the first opset this entry lowers (inclusive)
    until: int  # the last (inclusive)
    fn: Callable[..., Any]
    uses: tuple[str, ...]  # the registry ops it lowers onto ("(folded)": computed at import)
    note: str  # what it accepts beyond the op's plain form, or refuses


TABLE: dict[str, list[Entry]] = {}


def lowers(*op_types: str, since: int = OPSETS.start, until: int = OPSETS.stop - 1,
           uses: tuple[str, ...] | dict[str, tuple[str, ...]] = (),
           note: str = "") -> Callable[[Any], Any]:
    """Register the decorated function as the lowering of ``op_types`` in [since, until];
    ``uses`` names the registry ops (per op type, as a dict, when they differ)."""
    def register(fn: Any) -> Any:
        for op_type in op_types:
            entries = TABLE.setdefault(op_type, [])
            assert all(e.until < since or e.since > until for e in entries), op_type
            ops = uses[op_type] if isinstance(uses, dict) else uses
            entries.append(Entry(op_type, since, until, fn, ops, note))
        return fn
    return register


def lookup(op_type: str, opset: int) -> Entry | None:
    for entry in TABLE.get(op_type, ()):
        if entry.since <= opset <= entry.until:
            return entry
    return None


def supported(opset: int | None = None) -> list[str]:
    """The op types lowered (at ``opset``, or at any supported opset), sorted."""
    return sorted(t for t, entries in TABLE.items()
                  if opset is None or any(e.since <= opset <= e.until for e in entries))
