"""Every op of docs/api.md §3, one :class:`~service.engine.registry.OpDef` record each, by
category module:

- ``elementwise``: the binary (broadcasting) and unary math ops, the activations (``erf``,
  ``gelu``, ``leaky_relu``, ``elu``, ``softplus``), ``clip``, ``where``, ``sign``,
  ``floor``, ``ceil`` (erf's forward: ``erf.py``);
- ``linalg``: ``matmul``, ``dot``, ``transpose``, ``linear``;
- ``reductions``: ``sum``, ``mean``, ``max``, ``min``, ``logsumexp``, ``prod``, ``var``,
  ``std``, ``norm``;
- ``shape``: ``reshape``, ``flatten``, ``squeeze``, ``unsqueeze``, ``expand``, ``concat``
  and ``stack`` (variadic); with ``indexing``: ``slice``, ``pad``, ``gather`` and their
  internal adjoints ``unslice`` and ``scatter_add``;
- ``nn``: ``softmax``, ``log_softmax`` and the losses;
- ``cnn``: convolution, pooling, normalization, dropout (and their internal gradient ops);
- ``internal``: the ops backward graphs are built from (masks, ``select``, ``sum_to`` /
  ``broadcast_to``, ``contract``, the losses' fused pieces), hidden from users.

Each module's ``OPS`` holds its records, written against no array namespace: a record's
``forward`` is a factory that :func:`build_registry` calls once with the namespace ``xp``
(the Python array API standard: NumPy itself, CuPy through array-api-compat, or
array-api-strict; see ``service.engine.backend``), so each compiled step holds the forward
itself. Forwards never mutate their inputs: the executor may hand the same array to several
nodes.

VJP rules build graph nodes (see ``registry``): ``b`` adds a node, ``g``/``o``/``x``/``y``
are nodes.

**Adding an op**: add its record to the ``OPS`` of its category module (a new module goes
into :data:`MODULES`) and its test-domain row to ``tests/engine/test_ops.py`` (or, for an
internal op, its case to ``tests/engine/test_internal_ops.py``), then run ``python -m
service.engine.ops.gen`` to regenerate docs/api.md's op table and the playground's op file.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from service.engine.backend import backend_for
from service.engine.ops import cnn, elementwise, internal, linalg, nn, reductions, shape
from service.engine.registry import OpDef, Registry

#: The category modules, in the order their ops are listed (``GET /v1/ops``).
MODULES = (elementwise, linalg, reductions, shape, nn, cnn, internal)


def records() -> Iterator[OpDef]:
    """Every op's record, public and internal, in registration order."""
    for module in MODULES:
        yield from module.OPS


def build_registry(xp: Any, backend: Any = None) -> Registry:
    """Register every op over namespace ``xp`` and return the registry.

    ``backend`` (a ``service.engine.backend.Backend``) says how values cross to and from the
    device; without one, ``xp`` is NumPy (or a host namespace that takes NumPy arrays).
    """
    if backend is None:
        backend = backend_for(xp)
    reg = Registry(backend=backend.name, xp=xp, host=backend)
    for record in records():
        reg.register(record.bind(xp))
    return reg


__all__ = ["MODULES", "build_registry", "records"]
