"""Ops that rearrange elements without computing on them: ``reshape``.

``transpose`` sits with the products in ``linalg`` (so ``GET /v1/ops`` keeps its order:
matmul, dot, transpose, linear), the internal ``broadcast_to`` and ``sum_to`` in
``internal``.
"""

from __future__ import annotations

from typing import Any

from service.engine import shapes as S
from service.engine.registry import Attr, Forward, OpDef


def _reshape(xp: Any) -> Forward:
    def reshape(x: Any, shape: Any = ()) -> Any:
        return xp.reshape(x, shape)

    return reshape


OPS = (
    OpDef("reshape", 1, _reshape,
          (lambda b, g, o, x, shape=(): b.op("reshape", g, shape=b.shape(x)),),
          lambda x, shape=(): S.reshape_shape(x, shape),
          "same elements, new shape; dx = g reshaped back",
          attrs=(Attr("shape", "shape", (), "new shape; one dim may be -1"),),
          category="shape", view=True),
)
