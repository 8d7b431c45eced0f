"""The expression front-end's lexer: caps on the text, then text → tokens.

A regular-expression tokenizer whose last alternative matches any one character, so its
matches tile the text; stray characters and unclosed strings are refused here, with the line
and column of the offending character (a string is a token: the parser takes it as an attr
value, ``approximate="tanh"``, and refuses it anywhere else). The tables of refused
operators and keywords are in refusals.py. :func:`precheck` bounds length and nesting before
anything is parsed (the parser recurses once per bracket level). :class:`Cursor` is the
parser's position in the tokens; :func:`number_value` and :func:`attr_number` read literals.
"""

from __future__ import annotations

import bisect
import math
import re
from typing import NamedTuple

from service.engine.errors import GraphError, LimitExceeded
from service.engine.refusals import UNCLOSED_STRING, stray

# A float64 literal needs at most ~330 characters (1e-308 written out with its zeros); past
# this the text is not a number anyone meant, and Python's int() would refuse it anyway past
# 4,300 digits with a message about its own internals.
MAX_LITERAL_CHARS = 400

_DIGITS = r"\d(?:_?\d)*"
_EXPONENT = rf"[eE][+-]?{_DIGITS}"
_NUMBER = (rf"0[xX](?:_?[0-9a-fA-F])+|0[oO](?:_?[0-7])+|0[bB](?:_?[01])+"
           rf"|{_DIGITS}(?:\.(?:{_DIGITS})?)?(?:{_EXPONENT})?|\.{_DIGITS}(?:{_EXPONENT})?")
TOKEN_RE = re.compile(
    r"(?P<skip>[ \t\f]+|\#[^\r\n]*|\\(?:\r\n|\r|\n))"
    r"|(?P<newline>\r\n|\r|\n)"
    rf"|(?P<number>(?:{_NUMBER})[jJ]?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"""|(?P<string>"[^"\\\r\n]*"|'[^'\\\r\n]*')"""
    r"|(?P<quote>[\"'])"
    r"|(?P<op>\*\*=|//=|>>=|<<=|\.\.\.|\*\*|//|<<|>>|<=|>=|==|!=|->|:=|[-+*/@%&|^]="
    r"|[-+*/@%&|^~<>()\[\]{},;:.=!])"
    r"|(?P<bad>.)",
    re.DOTALL,
)

class Token(NamedTuple):
    kind: str  # number, name, string, op, newline, end
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
            raise error(stray(m.group()), line_starts, m.start())
        if kind == "quote":
            raise error(f"this {m.group()} {UNCLOSED_STRING}", line_starts, m.start())
        append(Token(kind, m.group(), m.start(), m.end()))  # type: ignore[arg-type]
    tokens.append(Token("end", "", len(text), len(text)))
    return tokens, line_starts


class Cursor:
    """A position in the tokens of a text, for the parser: the current token, the next ones,
    and the positioned 422. Inside brackets a newline is whitespace, as in Python."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens, self._line_starts = tokenize(text)
        self.pos = 0
        self.depth = 0  # bracket nesting of the current token (newlines inside don't count)

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
        while self.depth > 0 and self.tokens[self.pos].kind == "newline":
            self.pos += 1
        return tok

    def peek(self, k: int = 1) -> Token:
        i = min(self.pos + k, len(self.tokens) - 1)
        return self.tokens[i]

    @staticmethod
    def shown(tok: Token) -> str:
        """A token as a message names it."""
        if tok.kind == "end":
            return "end of text"
        if tok.kind == "newline":
            return "end of line"
        return repr(tok.text[:20])


def _check_length(text: str) -> None:
    if len(text) > MAX_LITERAL_CHARS:
        raise ValueError(f"numeric literal of {len(text):,} characters is over the limit of "
                         f"{MAX_LITERAL_CHARS} characters")


def number_value(text: str) -> float:
    """The value of a numeric literal in an expression (a float); ValueError with the
    message for the user."""
    _check_length(text)
    if text[-1] in "jJ":
        raise ValueError("complex literals (1j) are not supported: numbers are real")
    try:
        if text[:2].lower() in ("0x", "0o", "0b"):
            value = float(int(text, 0))
        else:
            value = float(text.replace("_", ""))
    except OverflowError:
        value = math.inf
    if not math.isfinite(value):
        raise ValueError("numeric literal out of range (a float64 is at most ~1.8e308)")
    return value


def attr_number(text: str, sign: int) -> int | float:
    """The value of a real numeric literal as an attr: an int where it is written as one
    (``axis=1``), else a float; ValueError with the message for the user."""
    text = text.replace("_", "")
    _check_length(text)
    if re.fullmatch(r"0[xXoObB][0-9a-fA-F]+|\d+", text):
        return sign * int(text, 0) if text[:2].lower() in ("0x", "0o", "0b") else \
            sign * int(text)
    value = sign * float(text)
    if not math.isfinite(value):
        raise ValueError("numeric literal out of range")
    return value
