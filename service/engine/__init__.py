"""The gradserve engine: graph IR, op registry and reverse-mode autodiff on an array API
namespace (NumPy by default; see ``service.engine.backend``).

Knows nothing of HTTP. A request flows: front-end (``graph_from_dict``,
``parse_expression``, the MLP lowering) → ``compile_graph`` (cached ``Plan``) →
``execute(plan, values, Query(...))`` (forward, backward, Jacobians, checks, trace). Its
errors (``service.engine.errors``) speak of inputs, nodes and options; a flow rewords them.
"""

from __future__ import annotations

from typing import Any

from service.engine.compiler import Executable, Plan, compile_graph
from service.engine.executor import execute
from service.engine.expression import ParsedExpression, parse_expression
from service.engine.ir import GraphIR, NodeIR, graph_from_dict
from service.engine.limits import DEFAULT_LIMITS, Limits
from service.engine.ops import build_registry
from service.engine.query import Query
from service.engine.registry import Op, Registry
from service.engine.result import Result

REGISTRY: Registry  # this process's registry, over the backend GRADSERVE_BACKEND names


def __getattr__(name: str) -> Any:
    """``REGISTRY`` is built on first use, not at import: gunicorn's master imports the
    engine (through the settings) and must not open a GPU before it forks."""
    if name == "REGISTRY":
        from service.engine.backend import current

        backend = current()
        registry = build_registry(backend.xp, backend)
        globals()["REGISTRY"] = registry
        return registry
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_LIMITS", "REGISTRY", "Executable", "GraphIR", "Limits", "NodeIR", "Op",
    "ParsedExpression", "Plan", "Query", "Registry", "Result", "build_registry",
    "compile_graph", "execute", "graph_from_dict", "parse_expression",
]
