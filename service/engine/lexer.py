"""The expression front-end's lexer: caps on the text, then text → tokens.

A regular-expression tokenizer whose last alternative matches any one character, so its
matches tile the text; strings and stray characters are refused here, with the line and
column of the offending character. The tables of refused operators and keywords are the
vocabulary the parser names them by. :func:`precheck` bounds length and nesting before
anything is parsed (the parser recurses once per bracket level).
"""

from __future__ import annotations

import bisect
import re
from typing import NamedTuple

from service.engine.errors import GraphError, LimitExceeded

_DIGITS = r"\d(?:_?\d)*"
_EXPONENT = rf"[eE][+-]?{_DIGITS}"
_NUMBER = (rf"0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+"
           rf"|{_DIGITS}(?:\.(?:{_DIGITS})?)?(?:{_EXPONENT})?|\.{_DIGITS}(?:{_EXPONENT})?")
TOKEN_RE = re.compile(
    r"(?P<skip>[ \t\f]+|\#[^\r\n]*|\\(?:\r\n|\r|\n))"
    r"|(?P<newline>\r\n|\r|\n)"
    rf"|(?P<number>(?:{_NUMBER})[jJ]?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<string>[\"'])"
    r"|(?P<op>\*\*=|//=|>>=|<<=|\.\.\.|\*\*|//|<<|>>|<=|>=|==|!=|->|:=|[-+*/@%&|^]="
    r"|[-+*/@%&|^~<>()\[\]{},;:.=!])"
    r"|(?P<bad>.)",
    re.DOTALL,
)

# What a refused token or keyword is, in the plural ("... are not allowed").
REFUSED_OPS = {
    ".": "attribute accesses", "[": "lists and list comprehensions", "{": "dicts and sets",
    "<": "comparisons", ">": "comparisons", "<=": "comparisons", ">=": "comparisons",
    "==": "comparisons", "!=": "comparisons", ":=": "assignment expressions",
    "...": "Ellipsis literals", ",": "tuples", ":": "slices and annotations",
    "->": "annotations",
}
REFUSED_KEYWORDS = {
    "lambda": "lambdas", "import": "import statements", "from": "import statements",
    "if": "conditional expressions and if statements", "else": "conditional expressions",
    "and": "boolean operators", "or": "boolean operators", "not": "boolean operators",
    "in": "membership tests", "is": "identity tests", "for": "loops and comprehensions",
    "while": "loops", "True": "boolean literals", "False": "boolean literals",
    "None": "None values",
}


class Token(NamedTuple):
    kind: str  # number, name, op, newline, end
    text: str
    start: int
    end: int


def precheck(text: str, max_length: int, max_depth: int) -> None:
    """Length and nesting caps, applied before parsing: the parser recurses once per bracket
    level, so the depth cap is what bounds its stack."""
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


def where(line_starts: list[int], offset: int) -> str:
    """`` (line L, column C)`` of a character offset."""
    line = bisect.bisect_right(line_starts, offset)
    return f" (line {line}, column {offset - line_starts[line - 1] + 1})"


def error(detail: str, line_starts: list[int], at: Token | int | None = None) -> GraphError:
    """The 422 of an expression, pointing at a token or an offset when given one."""
    place = ""
    if at is not None:
        place = where(line_starts, at.start if isinstance(at, Token) else at)
    return GraphError(f"expression: {detail}{place}", loc=("expression",))


def tokenize(text: str) -> tuple[list[Token], list[int]]:
    """The tokens of ``text``, ending with an ``end`` token, and the offsets its lines start at."""
    line_starts = [0] + [m.end() for m in re.finditer(r"\r\n|\r(?!\n)|\n", text)]
    tokens: list[Token] = []
    append = tokens.append
    # The last alternative matches any one character, so the matches tile the text.
    for m in TOKEN_RE.finditer(text):
        kind = m.lastgroup
        if kind == "skip":
            continue
        if kind == "bad":
            raise error(f"unexpected character {m.group()!r}", line_starts, m.start())
        if kind == "string":
            raise error("strings are not allowed (only numeric literals)", line_starts,
                        m.start())
        append(Token(kind, m.group(), m.start(), m.end()))  # type: ignore[arg-type]
    tokens.append(Token("end", "", len(text), len(text)))
    return tokens, line_starts
