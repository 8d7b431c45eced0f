"""The ops of convolutional nets: convolution, pooling, normalization, dropout (NCHW, as
PyTorch), and the internal ops their gradients are made of."""

from __future__ import annotations

from service.engine.registry import OpDef

OPS: tuple[OpDef, ...] = ()
