"""The layer rules of docs/architecture.md, read from the source (every import statement,
function-level and lazy ones included): which layer may import which, where Flask lives,
and no import cycle in the service package."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: What each layer of service/ may import from service/ (besides itself). ``config`` and
#: ``errors`` are the two shared modules every layer may read.
LAYERS = {
    "engine": set(),
    "runtime": {"config", "errors"},
    "store": {"engine", "runtime", "config", "errors"},
    "flows": {"engine", "store", "runtime", "config", "errors"},
    "http": {"flows", "engine", "store", "runtime", "config", "errors"},
}
SHARED = {"config": {"engine"}, "errors": {"engine"}}
#: Modules outside the layers: the factory and the WSGI entry may import anything.
ENTRY_POINTS = {"service", "service.app", "service.wsgi"}
WEB = ("flask", "werkzeug")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, *, runtime_only: bool = True) -> list[tuple[str, int]]:
    """Every module an import statement in ``path`` names, with its line: ``import a.b``
    gives a.b; ``from a import b`` gives a.b when a/b is a module, else a."""
    tree = ast.parse(path.read_text())
    package = _module_name(path) if path.name == "__init__.py" else \
        _module_name(path).rpartition(".")[0]
    # Imports for type checkers only never run: not a dependency (unless asked for).
    typing_only = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If)
                   and _is_type_checking(block.test) for stmt in block.body
                   for n in ast.walk(stmt)} if runtime_only else set()
    out = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                as_path = ROOT.joinpath(*candidate.split("."))
                if as_path.with_suffix(".py").exists() or (as_path / "__init__.py").exists():
                    out.append((candidate, node.lineno))
                else:
                    out.append((base, node.lineno))
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "service" or len(parts) < 2:
        return None
    return parts[1]


SERVICE = [(p, _module_name(p)) for p in _sources("service")]


def test_every_service_module_is_in_a_layer():
    known = set(LAYERS) | set(SHARED)
    stray = [m for _, m in SERVICE if m not in ENTRY_POINTS and _layer(m) not in known]
    assert not stray, f"modules outside the layers of docs/architecture.md: {stray}"


@pytest.mark.parametrize("path,module", SERVICE, ids=[m for _, m in SERVICE])
def test_layer_imports(path, module):
    if module in ENTRY_POINTS:
        return
    layer = _layer(module)
    allowed = LAYERS.get(layer, SHARED.get(layer, set())) | {layer}
    bad = [(name, line) for name, line in _imports(path)
           if name.startswith("service.") and _layer(name) not in allowed]
    bad += [(name, line) for name, line in _imports(path) if name == "service"]
    assert not bad, f"{module} ({layer}) may import only {sorted(allowed)}: {bad}"


#: Besides service/http, only the factory and the WSGI entry import Flask (the package's
#: own __init__ does not: it only forwards to the factory).
FLASK_ENTRY_POINTS = {"service.app", "service.wsgi"}


@pytest.mark.parametrize("path,module", SERVICE, ids=[m for _, m in SERVICE])
def test_flask_and_werkzeug_only_in_the_http_layer(path, module):
    if module in FLASK_ENTRY_POINTS or _layer(module) == "http":
        return
    # Type-checking imports count here: a type-only import still ties the module to Flask.
    bad = [(name, line) for name, line in _imports(path, runtime_only=False)
           if name.split(".")[0] in WEB]
    assert not bad, f"{module} imports Flask/Werkzeug outside service/http: {bad}"


def test_schemas_never_import_the_service():
    bad = [(p.name, name, line) for p in _sources("schemas") for name, line in _imports(p)
           if name.split(".")[0] == "service"]
    assert not bad, bad


def test_the_client_imports_the_engine_only_in_local_mode():
    """gradserve/ (client and CLI) talks HTTP; only the CLI's ``--local`` mode runs the
    engine in process, and only through service.engine."""
    for path in _sources("gradserve"):
        tree = ast.parse(path.read_text())
        local = {id(n) for f in ast.walk(tree)
                 if isinstance(f, ast.FunctionDef) and f.name == "_local"
                 for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) \
                    else [node.module or ""]
                for name in names:
                    if name.split(".")[0] != "service":
                        continue
                    where = f"{path.name}:{node.lineno} imports {name}"
                    assert path.name == "cli.py" and id(node) in local, where
                    assert name == "service.engine" or name.startswith("service.engine."), \
                        where


def _graph() -> dict[str, set[str]]:
    modules = {m for _, m in SERVICE}
    graph: dict[str, set[str]] = {}
    for path, module in SERVICE:
        deps = set()
        for name, _ in _imports(path):
            # ``import a.b.c`` runs a, a.b and a.b.c: each counts.
            parts = name.split(".")
            deps |= {".".join(parts[:k]) for k in range(1, len(parts) + 1)} & modules
        deps.discard(module)
        graph[module] = deps
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    top = stack.pop()
                    on_stack.discard(top)
                    component.append(top)
                    if top == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycle_in_the_service():
    # A package's __init__ that only re-exports its own modules is part of them.
    graph = _graph()
    for module, deps in graph.items():
        graph[module] = {d for d in deps if not module.startswith(d + ".")}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_architecture_doc_names_every_layer_and_module():
    """docs/architecture.md lists every module of service/ (so the page and the tree
    cannot drift apart)."""
    doc = (ROOT / "docs" / "architecture.md").read_text()
    for layer in LAYERS:
        assert f"service/{layer}/" in doc, layer
    missing = []
    for path, _ in SERVICE:
        rel = path.relative_to(ROOT).as_posix()
        if path.name == "__init__.py" and not path.read_text().strip():
            continue
        if rel not in doc and not re.search(rf"\b{re.escape(path.stem)}\.py\b", doc):
            missing.append(rel)
    assert not missing, f"docs/architecture.md does not mention: {missing}"
