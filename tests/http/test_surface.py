"""Attack surface: the set of routes is an explicit allow-list, and no code path can turn
request data into code, a file path, an import or a subprocess."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

ALLOWED_ROUTES = {
    ("/healthz", "GET"),
    ("/readyz", "GET"),
    ("/metrics", "GET"),
    ("/openapi.json", "GET"),
    ("/v1/ops", "GET"),
    ("/v1/gradients", "POST"),
    ("/v1/graphs", "POST"),
    ("/v1/graphs/<graph_id>", "GET"),
    ("/v1/graphs", "GET"),
    ("/v1/graphs/<graph_id>", "DELETE"),
    ("/v1/graphs/<graph_id>/gradients", "POST"),
    ("/v1/graphs/<graph_id>/onnx", "GET"),  # the ONNX export (routes/onnx_export.py)
    ("/v1/mlp/gradients", "POST"),
    # Training steps (docs/training.md): stateless, the state travels with the request.
    ("/v1/graphs/<graph_id>/step", "POST"),
    ("/v1/mlp/step", "POST"),
    # The playground: one static page and its files (service/http/routes/playground.py).
    ("/", "GET"),
    ("/playground", "GET"),
    ("/static/playground/<path:filename>", "GET"),
    ("/v1/mlp/graphs", "POST"),
    # The Open Inference Protocol (KServe v2): registered graphs as models.
    ("/v2", "GET"),
    ("/v2/health/live", "GET"),
    ("/v2/health/ready", "GET"),
    ("/v2/models/<name>", "GET"),
    ("/v2/models/<name>/ready", "GET"),
    ("/v2/models/<name>/infer", "POST"),
    ("/v2/models/<name>/config", "GET"),
    ("/v2/models/<name>/versions/<version>", "GET"),
    ("/v2/models/<name>/versions/<version>/ready", "GET"),
    ("/v2/models/<name>/versions/<version>/config", "GET"),
    ("/v2/models/<name>/versions/<version>/infer", "POST"),
    ("/v2/repository/index", "POST"),
}

# Builtins that execute or import code; modules that deserialize or run anything but JSON.
FORBIDDEN_BUILTINS = {"eval", "exec", "compile", "__import__", "breakpoint"}
FORBIDDEN_MODULES = {"pickle", "cPickle", "marshal", "shelve", "subprocess", "importlib",
                     "dill", "yaml", "ctypes", "runpy"}
# The one module that may load a C library: glibc's mallopt and malloc_trim, fixed symbols
# called with constants, never with request data (worker RSS, service/runtime/memory.py).
ALLOWED_IMPORTS = {("service/runtime/memory.py", "ctypes")}
DYNAMIC_ATTR = {"getattr", "setattr", "delattr"}
# Dynamic attribute access with a constant name is fine; these are the only others.
ALLOWED_DYNAMIC = {
    "service/config.py",  # dataclass field names of Settings/Limits, not request data
    "service/flows/driver.py",  # the engine Query's field names, not request data
}


def test_routes_are_the_allow_list(app):
    routes = {
        (rule.rule, method)
        for rule in app.url_map.iter_rules()
        for method in rule.methods - {"HEAD", "OPTIONS"}
        if rule.endpoint != "static"
    }
    assert routes == ALLOWED_ROUTES


def _sources():
    for package in ("service", "schemas"):
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path.relative_to(ROOT).as_posix(), ast.parse(path.read_text())


def test_no_code_execution_or_unsafe_deserialization():
    found = []
    for rel, tree in _sources():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""]
                found += [f"{rel}:{node.lineno} imports {n}" for n in names
                          if n.split(".")[0] in FORBIDDEN_MODULES
                          and (rel, n) not in ALLOWED_IMPORTS]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                name = node.func.id
                if name in FORBIDDEN_BUILTINS:
                    found.append(f"{rel}:{node.lineno} calls {name}")
                elif name in DYNAMIC_ATTR and rel not in ALLOWED_DYNAMIC and not (
                    len(node.args) > 1 and isinstance(node.args[1], ast.Constant)
                ):
                    found.append(f"{rel}:{node.lineno} calls {name} with a computed name")
            elif isinstance(node, ast.Attribute) and node.attr in ("system", "popen") and \
                    isinstance(node.value, ast.Name) and node.value.id == "os":
                found.append(f"{rel}:{node.lineno} uses os.{node.attr}")
    assert found == []


def test_expression_parser_never_evaluates():
    """The expression front-end only builds a syntax tree: ast.parse, never compile/eval."""
    text = (ROOT / "service/engine/expression.py").read_text()
    tree = ast.parse(text)
    calls = {
        n.func.attr for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
        and isinstance(n.func.value, ast.Name) and n.func.value.id == "ast"
    }
    assert calls <= {"parse", "get_source_segment"}
