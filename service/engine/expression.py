"""The expression front-end of docs/api.md §2b: text → GraphIR, never ``eval``.

A small hand-written parser, not :func:`ast.parse`: CPython's parser turns a flat chain
``x + x + ... + x`` into a syntax tree as deep as the chain is long and refuses a few
thousand terms as "too complex", and it converts integer literals itself (4,300 digits at
most, with an internal message). Here a regular-expression tokenizer (lexer.py) feeds an
operator-precedence (shunting-yard) parser that keeps operators on an explicit stack, so a
chain of any length costs no recursion; only brackets and calls recurse, and their nesting
is capped by :func:`precheck` before parsing starts. Work is linear in the number of tokens.

The language is the subset of Python's expression syntax that docs/api.md §2b lists, plus what
learners type in micrograd-style programs: rebinding a name (``c = c + 1``; each version is
a distinct node, ``c``, ``c'``, ``c''``, ...) and augmented assignment (``c += 1``,
``-=``, ``*=``, ``/=``, ``**=``, ``@=``). Anything else is a 422 that names the construct.
"""

from __future__ import annotations

import difflib
import keyword
import math
import re
from dataclasses import dataclass
from typing import Any

from service.engine.errors import GraphError
from service.engine.ir import NAME_RE, Arg, GraphIR, NodeIR
from service.engine.lexer import REFUSED_KEYWORDS, REFUSED_OPS, Token, error, precheck, tokenize
from service.engine.registry import Registry

DEFAULT_MAX_LENGTH = 20_000
DEFAULT_MAX_DEPTH = 64
# A float64 literal needs at most ~330 characters (1e-308 written out with its zeros); past
# this the text is not a number anyone meant, and Python's int() would refuse it anyway past
# 4,300 digits with a message about its own internals.
MAX_LITERAL_CHARS = 400

BINARY: dict[str, tuple[str, int]] = {  # operator → (op, binding power); all left-assoc but **
    "+": ("add", 10), "-": ("sub", 10),
    "*": ("mul", 20), "/": ("div", 20), "@": ("matmul", 20),
    "**": ("pow", 40),
}
UNARY_POWER = 30  # -a * b is (-a) * b, -a ** b is -(a ** b), a ** -b is a ** (-b)
AUGMENTED = {"+=": "add", "-=": "sub", "*=": "mul", "/=": "div", "**=": "pow", "@=": "matmul"}
REFUSED_AUGMENTED = ("//=", "%=", "&=", "|=", "^=", ">>=", "<<=")

@dataclass(frozen=True)
class ParsedExpression:
    graph: GraphIR
    sources: dict[str, str]  # node id → the text it came from, for error messages


def version_name(name: str, version: int) -> str:
    """The node id of the ``version``-th assignment to ``name``: c, c', c'', c''', c'4, ..."""
    if version <= 3:
        return name + "'" * version
    return f"{name}'{version}"


def parse_expression(
    text: str,
    registry: Registry,
    *,
    max_length: int = DEFAULT_MAX_LENGTH,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> ParsedExpression:
    """Lower ``text`` to a GraphIR whose free names are its inputs."""
    if not isinstance(text, str) or not text.strip():
        raise GraphError("expression: is empty", loc=("expression",))
    precheck(text, max_length, max_depth)
    return _Parser(text, registry).run()


class _Parser:
    def __init__(self, text: str, registry: Registry) -> None:
        self.text = text
        self.registry = registry
        self.tokens, self._line_starts = tokenize(text)
        self.pos = 0
        self.depth = 0  # bracket nesting of the current token (newlines inside don't count)
        self.nodes: list[NodeIR] = []
        self.sources: dict[str, str] = {}
        self.inputs: dict[str, None] = {}
        self.current: dict[str, str] = {}  # name → node id of its latest assignment
        self.versions: dict[str, int] = {}
        self.counter = 0

    # --- tokens ------------------------------------------------------------------------

    def error(self, detail: str, at: Token | int | None = None) -> GraphError:
        return error(detail, self._line_starts, at)

    @property
    def tok(self) -> Token:
        return self.tokens[self.pos]

    def advance(self) -> Token:
        tok = self.tokens[self.pos]
        self.pos += 1
        if tok.text in ("(", "[", "{"):
            self.depth += 1
        elif tok.text in (")", "]", "}"):
            self.depth -= 1
        # Inside brackets a newline is whitespace, as in Python.
        while self.depth > 0 and self.tokens[self.pos].kind == "newline":
            self.pos += 1
        return tok

    def peek(self, k: int = 1) -> Token:
        i = min(self.pos + k, len(self.tokens) - 1)
        return self.tokens[i]

    @staticmethod
    def _shown(tok: Token) -> str:
        if tok.kind == "end":
            return "end of text"
        if tok.kind == "newline":
            return "end of line"
        return repr(tok.text[:20])

    # --- statements --------------------------------------------------------------------

    def run(self) -> ParsedExpression:
        output: Arg | None = None
        last: tuple[int, int] = (0, 0)
        while True:
            while self.tok.kind == "newline" or self.tok.text == ";":
                self.advance()
            if self.tok.kind == "end":
                break
            start = self.tok.start
            output = self.statement()
            last = (start, self.tokens[self.pos - 1].end)
            if self.tok.kind not in ("newline", "end") and self.tok.text != ";":
                raise self._unexpected(self.tok)
        if output is None:
            raise GraphError("expression: is empty", loc=("expression",))
        if not isinstance(output, str):  # a constant program: name it with an identity node
            output = self._emit("identity", (output,), {}, last, None)
        graph = GraphIR(tuple((n, None) for n in sorted(self.inputs)), tuple(self.nodes),
                        output)
        return ParsedExpression(graph, self.sources)

    def statement(self) -> Arg:
        tok = self.tok
        if tok.kind == "name" and keyword.iskeyword(tok.text) and \
                tok.text not in REFUSED_KEYWORDS:
            raise self.error(f"'{tok.text}' statements are not allowed", tok)
        nxt = self.peek()
        if tok.kind == "name" and (nxt.text == "=" or nxt.text in AUGMENTED):
            name = self._check_name(tok)
            self.advance()
            self.advance()
            value_start = self.tok.start
            value = self.expression()
            span = (value_start, self.tokens[self.pos - 1].end)
            if self.tok.text == "=":
                raise self.error("only 'name = expression' assignments are allowed", self.tok)
            if nxt.text in AUGMENTED:
                current = self._read(name)
                return self._emit(AUGMENTED[nxt.text], (current, value), {},
                                  (tok.start, span[1]), self._assign(name))
            return self._bind(name, value, span)
        if tok.kind == "name" and nxt.text in REFUSED_AUGMENTED:
            raise self.error(f"the operator '{nxt.text}' is not allowed", nxt)
        if nxt.text in AUGMENTED:
            raise self.error("only names can be assigned to", tok)
        value = self.expression()
        if self.tok.text == "=" or self.tok.text in AUGMENTED:
            raise self.error("only 'name = expression' assignments are allowed", self.tok)
        return value

    def _bind(self, name: str, value: Arg, span: tuple[int, int]) -> str:
        target = self._assign(name)
        last = self.nodes[-1].id if self.nodes else None
        # The statement's own top node takes the name; a bare name or constant (or a node
        # named by an earlier statement) gets an identity node of that name.
        if isinstance(value, str) and value == last and value.startswith("%") and \
                value == f"%{self.counter}":
            node = self.nodes.pop()
            self.counter -= 1
            self.nodes.append(NodeIR(target, node.op, node.args, node.attrs))
            self.sources[target] = self.sources.pop(value)
            self.current[name] = target
            return target
        self._emit("identity", (value,), {}, span, target)
        self.current[name] = target
        return target

    def _assign(self, name: str) -> str:
        """The node id the next assignment to ``name`` gets (``name`` itself the first time,
        unless an input already has it, then ``name'``, ``name''``, ...)."""
        version = self.versions.get(name, 1 if name in self.inputs else 0)
        if name in self.current:
            version = max(version, 1)
        self.versions[name] = version + 1
        target = version_name(name, version)
        if not NAME_RE.match(target):  # a name near the 128-character limit, primed
            raise GraphError(f"expression: '{name[:40]}' is too long a name to assign again",
                             loc=("expression",))
        self.current[name] = target
        return target

    def _read(self, name: str) -> str:
        if name in self.current:
            return self.current[name]
        self.inputs[name] = None
        return name

    def _check_name(self, tok: Token) -> str:
        name = tok.text
        if name.startswith("__") or not NAME_RE.match(name):
            raise self.error(f"the name '{name[:40]}' is not allowed", tok)
        if keyword.iskeyword(name) or name in ("True", "False", "None"):
            raise self._unexpected(tok)
        return name

    def _unexpected(self, tok: Token) -> GraphError:
        if tok.kind == "name" and tok.text in REFUSED_KEYWORDS:
            return self.error(f"{REFUSED_KEYWORDS[tok.text]} are not allowed", tok)
        if tok.kind == "name" and keyword.iskeyword(tok.text):
            return self.error(f"'{tok.text}' is not allowed", tok)
        if tok.text in REFUSED_OPS:
            return self.error(f"{REFUSED_OPS[tok.text]} are not allowed", tok)
        if tok.kind == "op" and tok.text not in "()=;":
            return self.error(f"the operator '{tok.text}' is not allowed", tok)
        return self.error(f"syntax error: unexpected {self._shown(tok)}", tok)

    # --- expressions -------------------------------------------------------------------

    def expression(self) -> Arg:
        """One expression, by shunting-yard: operands and pending operators on two explicit
        stacks, so ``a + b + ... + z`` of any length is a loop, not a recursion."""
        values: list[tuple[Arg, int, int]] = []  # (arg, start, end) of each operand
        ops: list[tuple[str, int, int]] = []  # (operator, binding power, start offset)
        while True:
            # An operand, after any number of prefix signs.
            while self.tok.text in ("-", "+", "~"):
                tok = self.advance()
                if tok.text == "~":
                    raise self.error("the operator '~' is not allowed", tok)
                ops.append(("u" + tok.text, UNARY_POWER, tok.start))
            values.append(self.primary())
            tok = self.tok
            if tok.text not in BINARY:
                break
            _, power = BINARY[tok.text]
            right_assoc = tok.text == "**"
            while ops and (ops[-1][1] > power or (ops[-1][1] == power and not right_assoc)):
                self._reduce(ops.pop(), values)
            ops.append((tok.text, power, tok.start))
            self.advance()
        while ops:
            self._reduce(ops.pop(), values)
        return values[-1][0]

    def _reduce(self, op: tuple[str, int, int], values: list[tuple[Arg, int, int]]) -> None:
        symbol, _, start = op
        if symbol in ("u-", "u+"):
            operand, _, end = values.pop()
            if symbol == "u+":
                values.append((operand, start, end))
            elif isinstance(operand, float):  # -2 is a literal, not a neg node
                values.append((-operand, start, end))
            else:
                values.append((self._emit("neg", (operand,), {}, (start, end), None),
                               start, end))
            return
        right, _, end = values.pop()
        left, begin, _ = values.pop()
        node = self._emit(BINARY[symbol][0], (left, right), {}, (begin, end), None)
        values.append((node, begin, end))

    def primary(self) -> tuple[Arg, int, int]:
        tok = self.tok
        if tok.kind == "number":
            self.advance()
            return self._number(tok), tok.start, tok.end
        if tok.kind == "name" and tok.text not in ("True", "False", "None") and \
                not keyword.iskeyword(tok.text):
            name = self._check_name(tok)
            self.advance()
            if self.tok.text == "(":
                return self.call(tok)
            result = (self._read(name), tok.start, tok.end)
        elif tok.text == "(":
            self.advance()
            if self.tok.text == ")":
                raise self.error("tuples are not allowed", tok)
            inner = self.expression()
            if self.tok.kind == "end":
                raise self.error("syntax error: '(' was never closed", tok)
            if self.tok.text != ")":
                raise self._unexpected(self.tok) if self.tok.text != "," else \
                    self.error("tuples are not allowed", self.tok)
            close = self.advance()
            result = (inner, tok.start, close.end)
        else:
            if tok.text == "*":
                raise self.error("starred expressions are not allowed", tok)
            if tok.kind in ("end", "newline") or tok.text in (")", ";", "="):
                raise self.error(f"syntax error: expected an operand, got {self._shown(tok)}",
                                 tok)
            raise self._unexpected(tok)
        self._trailer()
        return result

    def _trailer(self) -> None:
        tok = self.tok
        if tok.text == "(":
            raise self.error("only calls of op names are allowed", tok)
        if tok.text == "[":
            raise self.error("subscripts are not allowed", tok)
        if tok.text == ".":
            raise self.error("attribute accesses are not allowed", tok)

    def _number(self, tok: Token) -> float:
        text = tok.text
        if len(text) > MAX_LITERAL_CHARS:
            raise self.error(f"numeric literal of {len(text):,} characters is over the limit "
                             f"of {MAX_LITERAL_CHARS} characters", tok)
        if text[-1] in "jJ":
            raise self.error("complex literals are not allowed (only real numbers)", tok)
        nxt = self.tokens[self.pos]
        if nxt.kind in ("name", "number") and nxt.start == tok.end:
            raise self.error(f"syntax error: invalid literal {text + nxt.text[:10]!r}", tok)
        try:
            if text[:2].lower() in ("0x", "0o", "0b"):
                value = float(int(text, 0))
            else:
                value = float(text.replace("_", ""))
        except OverflowError:
            value = math.inf
        if not math.isfinite(value):
            raise self.error("numeric literal out of range (a float64 is at most ~1.8e308)",
                             tok)
        return value

    def call(self, name_tok: Token) -> tuple[Arg, int, int]:
        name = name_tok.text
        self.advance()  # (
        args: list[Arg] = []
        attrs: dict[str, Any] = {}
        while self.tok.text != ")":
            tok = self.tok
            if tok.text in ("*", "**"):
                what = "starred arguments" if tok.text == "*" else "'**' arguments"
                raise self.error(f"{what} are not allowed", tok)
            if tok.kind == "name" and self.peek().text == "=":
                key = self._check_name(tok)
                self.advance()
                self.advance()
                if key in attrs:
                    raise self.error(f"keyword argument '{key}' given twice", tok)
                attrs[key] = self._literal()
            else:
                if attrs:
                    raise self.error("syntax error: positional argument after keyword "
                                     "argument", tok)
                args.append(self.expression())
            if self.tok.text == ",":
                self.advance()
            elif self.tok.text != ")":
                raise self._unexpected(self.tok)
        close = self.advance()
        op = name
        if name in ("max", "min") and len(args) == 2:
            op = "maximum" if name == "max" else "minimum"
        if op not in self.registry:
            close_match = difflib.get_close_matches(name, self.registry.names(), n=1)
            hint = f" (did you mean '{close_match[0]}'?)" if close_match else ""
            raise self.error(f"unknown function '{name}'{hint}", name_tok)
        record = self.registry.get(op)
        arity, fewest = record.arity, record.min_arity
        if not fewest <= len(args) <= arity:  # type: ignore[operator]
            takes = f"{arity}" if fewest == arity else f"{fewest} or {arity}"
            raise self.error(f"{name}() takes {takes} positional argument"
                             f"{'s' if arity != 1 else ''}, got {len(args)}", name_tok)
        node = self._emit(op, tuple(args), attrs, (name_tok.start, close.end), None)
        self._trailer()
        return node, name_tok.start, close.end

    def _literal(self) -> Any:
        """An attr value: a number, True/False/None, or a list/tuple of them (as a tuple,
        frozen, as graph_from_dict makes it)."""
        tok = self.tok
        if tok.text in ("[", "("):
            closing = "]" if tok.text == "[" else ")"
            self.advance()
            items = []
            while self.tok.text != closing:
                if self.tok.text in ("[", "("):
                    raise self._attr_error(self.tok)
                items.append(self._literal())
                if self.tok.text == ",":
                    self.advance()
                elif self.tok.text != closing:
                    raise self._attr_error(self.tok)
            self.advance()
            return tuple(items)
        if tok.kind == "name" and tok.text in ("True", "False", "None"):
            self.advance()
            return {"True": True, "False": False, "None": None}[tok.text]
        sign = 1
        if tok.text == "-" and self.peek().kind == "number":
            sign = -1
            self.advance()
            tok = self.tok
        if tok.kind != "number":
            raise self._attr_error(tok)
        self.advance()
        text = tok.text.replace("_", "")
        if len(text) > MAX_LITERAL_CHARS:
            raise self.error(f"numeric literal of {len(text):,} characters is over the limit "
                             f"of {MAX_LITERAL_CHARS} characters", tok)
        if text[-1] in "jJ":
            raise self._attr_error(tok)
        if re.fullmatch(r"0[xXoObB][0-9a-fA-F]+|\d+", text):
            return sign * int(text, 0) if text[:2].lower() in ("0x", "0o", "0b") else \
                sign * int(text)
        value = sign * float(text)
        if not math.isfinite(value):
            raise self.error("numeric literal out of range", tok)
        return value

    def _attr_error(self, tok: Token) -> GraphError:
        return self.error("attr values must be numbers, booleans, null or lists of integers",
                          tok)

    def _emit(self, op: str, args: tuple[Arg, ...], attrs: dict[str, Any],
              span: tuple[int, int], target: str | None) -> str:
        if target is None:
            self.counter += 1
            target = f"%{self.counter}"
        self.nodes.append(NodeIR(target, op, args, tuple(sorted(attrs.items()))))
        segment = self.text[span[0]:min(span[1], span[0] + 400)]
        self.sources[target] = segment if len(segment) <= 80 else segment[:77] + "..."
        return target
