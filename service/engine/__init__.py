"""The gradserve engine: graph IR, op registry and reverse-mode autodiff on NumPy.

Knows nothing of HTTP. A request flows: front-end (``graph_from_dict``,
``parse_expression``, the MLP lowering) → ``compile_graph`` (cached ``Plan``) →
``execute`` (forward, backward, Jacobians, checks, trace).
"""

from __future__ import annotations

import numpy

from service.engine.compiler import Executable, Plan, compile_graph
from service.engine.executor import Result, execute
from service.engine.expression import ParsedExpression, parse_expression
from service.engine.ir import GraphIR, NodeIR, graph_from_dict
from service.engine.limits import DEFAULT_LIMITS, Limits
from service.engine.ops import build_registry
from service.engine.registry import Op, Registry

#: The registry of the NumPy backend, the only one wired in today.
REGISTRY: Registry = build_registry(numpy)

__all__ = [
    "DEFAULT_LIMITS", "REGISTRY", "Executable", "GraphIR", "Limits", "NodeIR", "Op",
    "ParsedExpression", "Plan", "Registry", "Result", "build_registry", "compile_graph",
    "execute", "graph_from_dict", "parse_expression",
]
