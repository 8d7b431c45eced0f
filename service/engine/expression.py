"""The expression front-end of docs/api.md §2b: text → GraphIR, never ``eval``.

The text is parsed with :func:`ast.parse` (which only builds a syntax tree) and the tree is
walked over an allow-list of node types; anything else (attributes, subscripts, lambdas,
comprehensions, strings, imports, dunder names, unknown functions) is a 422. Length and
nesting are capped *before* parsing, since a deep enough text crashes the parser, and the
walk is iterative so a long ``a + b + c + ...`` chain needs no recursion.
"""

from __future__ import annotations

import ast
import difflib
import math
import re
from dataclasses import dataclass
from typing import Any

from service.engine.ir import NAME_RE, Arg, GraphIR, NodeIR
from service.engine.registry import Registry
from service.errors import GraphError, LimitExceeded

BINOPS: dict[type, str] = {
    ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div", ast.Pow: "pow",
    ast.MatMult: "matmul",
}
DEFAULT_MAX_LENGTH = 20_000
DEFAULT_MAX_DEPTH = 64
# Indentation means nothing in this language (there are no blocks), but Python's parser
# rejects it: "  x + y" would be an "unexpected indent".
LEADING_BLANKS = re.compile(r"^[ \t\f]+", re.MULTILINE)


@dataclass(frozen=True)
class ParsedExpression:
    graph: GraphIR
    sources: dict[str, str]  # node id → the text it came from, for error messages


def _error(detail: str, node: ast.AST | None = None) -> GraphError:
    where = ""
    if node is not None and hasattr(node, "lineno"):
        where = f" (line {node.lineno}, column {node.col_offset + 1})"
    return GraphError(f"expression: {detail}{where}", loc=("expression",))


def _describe(node: ast.AST) -> str:
    """What ``node`` is, in the plural ("... are not allowed")."""
    names = {
        ast.Attribute: "attribute accesses", ast.Subscript: "subscripts", ast.Lambda: "lambdas",
        ast.ListComp: "comprehensions", ast.SetComp: "comprehensions",
        ast.DictComp: "comprehensions", ast.GeneratorExp: "comprehensions",
        ast.Import: "import statements", ast.ImportFrom: "import statements",
        ast.Compare: "comparisons", ast.BoolOp: "boolean operators",
        ast.IfExp: "conditional expressions", ast.NamedExpr: "assignment expressions",
        ast.Starred: "starred arguments", ast.JoinedStr: "strings", ast.List: "lists",
        ast.Tuple: "tuples", ast.Dict: "dicts", ast.Set: "sets",
        ast.AugAssign: "augmented assignments", ast.AnnAssign: "annotated assignments",
    }
    if type(node) in names:
        return names[type(node)]
    kind = "statements" if isinstance(node, ast.stmt) else "expressions"
    return f"{type(node).__name__} {kind}"


def precheck(text: str, max_length: int, max_depth: int) -> None:
    """Length and nesting caps, applied before ast.parse ever sees the text."""
    if len(text) > max_length:
        raise LimitExceeded("max_expression_length", max_length, len(text),
                            "expression length (characters)", loc=("expression",))
    depth = deepest = unary = 0
    prev = ""
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
        if ch in "+-~" and (not prev or prev in "([{,=;*/+-~@"):
            unary += 1
            deepest = max(deepest, depth + unary)
        elif not ch.isspace():
            unary = 0
        if not ch.isspace():
            prev = ch
    if deepest > max_depth:
        raise LimitExceeded("max_expression_depth", max_depth, deepest,
                            "expression nesting depth", loc=("expression",))


def parse_expression(
    text: str,
    registry: Registry,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> ParsedExpression:
    """Lower ``text`` to a GraphIR whose free names are its inputs."""
    if not isinstance(text, str) or not text.strip():
        raise _error("is empty")
    precheck(text, max_length, max_depth)
    text = LEADING_BLANKS.sub("", text)
    try:
        tree = ast.parse(text, mode="exec")
    except SyntaxError as exc:
        raise GraphError(f"expression: syntax error: {exc.msg} (line {exc.lineno}, column "
                         f"{exc.offset})", loc=("expression",)) from None
    except (RecursionError, MemoryError, ValueError, OverflowError):
        raise _error("too complex or too deeply nested to parse") from None
    return _Lowering(text, registry).run(tree)


class _Lowering:
    def __init__(self, text: str, registry: Registry) -> None:
        self.text = text
        # Source lines as UTF-8 bytes (ast's column offsets count bytes), split once: calling
        # ast.get_source_segment per node re-splits the whole text each time, which made a
        # 20,000-character text of short statements take seconds.
        self.lines = [line.encode() for line in re.split(r"(?<=\r\n)|(?<=\r)(?!\n)|(?<=\n)",
                                                         text)]
        self.registry = registry
        self.nodes: list[NodeIR] = []
        self.defined: set[str] = set()
        self.inputs: dict[str, None] = {}
        self.sources: dict[str, str] = {}
        self.counter = 0

    def run(self, tree: ast.Module) -> ParsedExpression:
        if not tree.body:
            raise _error("is empty")
        output: Arg | None = None
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign):
                if len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Name):
                    raise _error("only 'name = expression' assignments are allowed", stmt)
                name = self._check_name(stmt.targets[0].id, stmt.targets[0])
                if name in self.defined or name in self.inputs:
                    where = "assigned twice" if name in self.defined else "already an input"
                    raise GraphError(f"expression: '{name}' is {where}", node=name,
                                     loc=("expression",))
                value = self.lower(stmt.value, target=name)
                if name in self.inputs:  # "y = y + 1": y was read as a free name above
                    raise GraphError(f"expression: '{name}' is used before it is assigned",
                                     node=name, loc=("expression",))
                if value != name:  # a bare name or constant: name it with an identity node
                    self._emit("identity", (value,), {}, stmt.value, name)
                self.defined.add(name)
                output = name
            elif isinstance(stmt, ast.Expr):
                output = self.lower(stmt.value)
            else:
                raise _error(f"{_describe(stmt)} are not allowed", stmt)
        if not isinstance(output, str):
            output = self._emit("identity", (output,), {}, tree.body[-1], None)
        graph = GraphIR(tuple((n, None) for n in sorted(self.inputs)), tuple(self.nodes),
                        output)
        return ParsedExpression(graph, self.sources)

    def _check_name(self, name: str, node: ast.AST) -> str:
        if name.startswith("__") or not NAME_RE.match(name):
            raise _error(f"the name '{name}' is not allowed", node)
        return name

    def _emit(self, op: str, args: tuple[Arg, ...], attrs: dict[str, Any], node: ast.AST,
              target: str | None) -> str:
        if target is None:
            self.counter += 1
            target = f"%{self.counter}"
        self.nodes.append(NodeIR(target, op, args, tuple(sorted(attrs.items()))))
        segment = self._segment(node)
        if segment is not None:
            self.sources[target] = segment if len(segment) <= 80 else segment[:77] + "..."
        return target

    def _segment(self, node: ast.AST, limit: int = 400) -> str | None:
        """The source text of ``node`` (as ast.get_source_segment), at most ~limit bytes."""
        try:
            first, last = node.lineno - 1, node.end_lineno - 1  # type: ignore[attr-defined]
            start, end = node.col_offset, node.end_col_offset  # type: ignore[attr-defined]
        except AttributeError:
            return None
        if last is None or end is None:
            return None
        if first == last:
            raw = self.lines[first][start:min(end, start + limit)]
        else:
            parts = [self.lines[first][start:]]
            size = len(parts[0])
            for k in range(first + 1, last):
                if size > limit:
                    break
                parts.append(self.lines[k])
                size += len(self.lines[k])
            if size <= limit:
                parts.append(self.lines[last][:end])
            raw = b"".join(parts)[:limit]
        return raw.decode("utf-8", errors="ignore")

    def lower(self, root: ast.expr, target: str | None = None) -> Arg:
        """Post-order over an explicit stack; returns the name or constant of ``root``."""
        stack: list[tuple[ast.AST, bool]] = [(root, False)]
        results: list[Arg] = []
        while stack:
            node, done = stack.pop()
            if not done:
                children = self._children(node)
                stack.append((node, True))
                stack.extend((c, False) for c in reversed(children))
                continue
            results.append(self._build(node, results, target if node is root else None))
        return results[-1]

    def _children(self, node: ast.AST) -> list[ast.AST]:
        if isinstance(node, ast.BinOp):
            if type(node.op) not in BINOPS:
                raise _error(f"the operator {type(node.op).__name__} is not allowed", node)
            return [node.left, node.right]
        if isinstance(node, ast.UnaryOp):
            if not isinstance(node.op, ast.USub | ast.UAdd):
                raise _error(f"the operator {type(node.op).__name__} is not allowed", node)
            return [node.operand]
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name):
                raise _error("only calls of op names are allowed", node)
            for arg in node.args:
                if isinstance(arg, ast.Starred):
                    raise _error("starred arguments are not allowed", arg)
            return list(node.args)
        if isinstance(node, ast.Name):
            return []
        if isinstance(node, ast.Constant):
            if isinstance(node.value, bool) or not isinstance(node.value, int | float):
                raise _error("only numeric literals are allowed", node)
            return []
        raise _error(f"{_describe(node)} are not allowed", node)

    def _build(self, node: ast.AST, results: list[Arg], target: str | None) -> Arg:
        if isinstance(node, ast.Constant):
            try:
                value = float(node.value)
            except OverflowError:
                value = math.inf
            if not math.isfinite(value):  # 1e400 parses as inf; constants must be finite
                raise _error("numeric literal out of range", node)
            return value
        if isinstance(node, ast.Name):
            name = self._check_name(node.id, node)
            if name not in self.defined:
                self.inputs[name] = None
            return name
        if isinstance(node, ast.UnaryOp):
            operand = results.pop()
            if isinstance(node.op, ast.UAdd):
                return operand
            if isinstance(operand, float):
                return -operand
            return self._emit("neg", (operand,), {}, node, target)
        if isinstance(node, ast.BinOp):
            right = results.pop()
            left = results.pop()
            return self._emit(BINOPS[type(node.op)], (left, right), {}, node, target)
        assert isinstance(node, ast.Call)
        args = tuple(results[len(results) - len(node.args):]) if node.args else ()
        del results[len(results) - len(node.args):]
        name = node.func.id  # type: ignore[attr-defined]
        attrs = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise _error("'**' arguments are not allowed", node)
            attrs[kw.arg] = _literal(kw.value)
        op = name
        if name in ("max", "min") and len(args) == 2:
            op = "maximum" if name == "max" else "minimum"
        if op not in self.registry:
            close = difflib.get_close_matches(name, self.registry.names(), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise _error(f"unknown function '{name}'{hint}", node)
        arity = self.registry.get(op).arity
        if len(args) != arity:
            raise _error(f"{name}() takes {arity} positional argument"
                         f"{'s' if arity != 1 else ''}, got {len(args)}", node)
        return self._emit(op, args, attrs, node, target)


def _literal(node: ast.AST) -> Any:
    """An attr value: a number, True/False/None, or a list/tuple of integers."""
    if isinstance(node, ast.Constant) and (node.value is None or
                                           isinstance(node.value, bool | int | float)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and \
            isinstance(node.operand, ast.Constant) and \
            isinstance(node.operand.value, int | float) and \
            not isinstance(node.operand.value, bool):
        return -node.operand.value
    if isinstance(node, ast.List | ast.Tuple):
        return tuple(_literal(e) for e in node.elts)  # frozen, as graph_from_dict does
    raise _error("attr values must be numbers, booleans, null or lists of integers", node)
