"""What the expression front-end refuses, in plain words: each sentence says what is refused
and what to write instead (``W.T``: ``transpose(W)``; ``x ^ 2``: ``x ** 2``; ``a if c else
b``: ``where(c, a, b)``; ``x[0]``: ``slice(...)`` or ``gather(...)``). The lexer and the parser
(lexer.py, expression.py) refuse with these; the caller adds "expression: " and the place.
"""

from __future__ import annotations

# What each refused token or keyword is, and what to write instead: the whole sentence.
_COMPARISON = ("comparisons are not supported; to choose between two tensors write "
               "where(cond, a, b), with cond an input of booleans or 0/1 values")
_SLICE = ("for a part of a tensor write slice(x, starts=[...], ends=[...], axes=[...]), "
          "for entries by index gather(x, indices)")
REFUSED_OPS = {
    ".": "attribute access is not supported; call ops by name: transpose(W) for W.T, "
         "sum(x) for x.sum(), exp(x) for np.exp(x)",
    "[": "lists and list comprehensions are not supported in expressions; a list is only an "
         "attr value, as in stride=[2, 2]",
    "{": "dicts and sets are not supported in expressions",
    "<": _COMPARISON, ">": _COMPARISON, "<=": _COMPARISON, ">=": _COMPARISON,
    "==": _COMPARISON, "!=": _COMPARISON,
    ":=": "assignment expressions (:=) are not supported; assign on a statement of its own: "
          "name = expression",
    "...": f"'...' (Ellipsis) is not supported; {_SLICE}",
    ",": "tuples are not supported: a comma only separates the arguments of a call; assign "
         "one name per statement (a = x; b = y)",
    ":": f"':' is not supported (no slices, annotations or blocks); {_SLICE}",
    "->": "annotations ('->') are not supported",
    ")": "this ')' closes no '('",
    "]": "this ']' closes no '['",
    "}": "this '}' closes no '{'",
}
_BITWISE = "bitwise operators are not supported (tensors hold real numbers)"
REFUSED_OPERATORS = {
    "//": "'//' (floor division) is not supported; write floor(a / b)",
    "%": "'%' (remainder) is not supported; write a - floor(a / b) * b",
    "^": "'^' is not a power (in Python it is bitwise xor); write a ** b or pow(a, b)",
    "~": "'~' (bitwise not) is not supported; for a negation write -x",
    "&": f"'&': {_BITWISE}", "|": f"'|': {_BITWISE}", "<<": f"'<<': {_BITWISE}",
    ">>": f"'>>': {_BITWISE}",
    "!": "'!' is not an operator; for a negation write -x",
    "//=": "'//=' is not supported; write x = floor(x / y)",
    "%=": "'%=' (remainder) is not supported",
    "^=": "'^=' is not a power (in Python it is bitwise xor); write x **= y",
    "&=": f"'&=': {_BITWISE}", "|=": f"'|=': {_BITWISE}", "<<=": f"'<<=': {_BITWISE}",
    ">>=": f"'>>=': {_BITWISE}",
}
_CONDITIONAL = ("conditional expressions (a if c else b) and if statements are not "
                "supported; write where(c, a, b), with c an input of booleans or 0/1 values")
_LOOPS = "loops and comprehensions are not supported; write each step as a statement of its own"
REFUSED_KEYWORDS = {
    "lambda": "lambdas are not supported; write the expression itself (name parts of it with "
              "'name = expression')",
    "import": "import statements are not supported: ops need no import (exp(x), not np.exp(x))",
    "from": "import statements are not supported: ops need no import (exp(x), not np.exp(x))",
    "if": _CONDITIONAL, "else": _CONDITIONAL, "elif": _CONDITIONAL,
    "and": "boolean operators (and, or, not) are not supported; to choose between two "
           "tensors write where(cond, a, b)",
    "or": "boolean operators (and, or, not) are not supported; to choose between two "
          "tensors write where(cond, a, b)",
    "not": "boolean operators (and, or, not) are not supported; to choose between two "
           "tensors write where(cond, a, b)",
    "in": "membership tests (in) are not supported",
    "is": "identity tests (is) are not supported",
    "for": _LOOPS, "while": _LOOPS,
    "True": "True and False are not values in expressions, only attr values (keepdims=True)",
    "False": "True and False are not values in expressions, only attr values (keepdims=True)",
    "None": "None is not a value in expressions, only an attr value (axis=None)",
}
# Characters people paste from papers and keyboards, and the ASCII to write.
LOOKALIKES = {"\u2212": "-", "\u00d7": "*", "\u00b7": "*", "\u22c5": "*", "\u00f7": "/",
              "\u00b2": "** 2", "\u00b3": "** 3", "\u2013": "-", "\u2014": "-"}
STRINGS = ('strings are only attr values, as in gelu(x, approximate="tanh"); the values of '
           "an expression are names, numeric literals and op calls")
UNCLOSED_STRING = ("opens a string that is not closed on its line (a string takes no "
                   'backslashes or line breaks, as in approximate="tanh")')
ASSIGN_ONCE = "only one '=' per statement: write name = expression"
ASSIGN_NAME = "only a name can be assigned to (name = expression, name += expression)"
STATEMENT = ("statements are not supported: a program is 'name = expression' statements, one "
             "per line or ';', and its last statement is the result")
SUBSCRIPT = f"subscripts (x[0]) are not supported; {_SLICE}"
NOT_AN_OP = "only an op name can be called, as in exp(x): the value before this '(' is not an op"
EMPTY_PARENS = "'()' is empty: parentheses hold one expression"
AFTER_ATTR = ("an argument after an attr: write the tensor arguments first, then the attrs "
              "(sum(x, axis=0))")
ATTR_VALUE = ("is not an attr value: an attr is a literal, a number, a string, True/False, "
              'None or a list of numbers, as in stride=[2, 2] or approximate="tanh"')
# Module names people write before an op (np.exp(x)): the hint is the op alone.
MODULES = frozenset({"np", "numpy", "jnp", "jax", "torch", "F", "nn", "math", "cp", "cupy",
                     "tf", "scipy", "special", "xp", "lax"})


def stray(ch: str) -> str:
    """The refusal of a character no token starts with."""
    if ch in LOOKALIKES:
        return f"the character {ch!r} is not an operator here; write {LOOKALIKES[ch]!r}"
    if ch in "$?`":
        return f"the character {ch!r} is not part of the expression language"
    return (f"unexpected character {ch!r}: expressions are names, numbers, the operators "
            "+ - * / ** @, parentheses and op calls")


def attribute(left: str, name: str, called: bool, is_op: bool) -> str:
    """The refusal of ``left.name`` (``called``: ``left.name(...)``; ``is_op``: name is an op)."""
    if name == "T" and not called:
        return f"attribute access ({left}.T) is not supported; write transpose({left})"
    if is_op and left in MODULES:
        return (f"attribute access ({left}.{name}) is not supported: ops are called by name "
                f"alone; write {name}(...)")
    if is_op and called:
        return (f"methods ({left}.{name}(...)) are not supported; write {name}({left}, ...), "
                "with any attrs as name=value")
    return (f"attribute access ({left}.{name or '...'}) is not supported; call ops by name: "
            "transpose(W) for W.T, sum(x) for x.sum(), exp(x) for np.exp(x)")


def unpacking(star: str) -> str:
    """The refusal of ``*x`` (``star`` "*") or ``**k``."""
    if star == "*":
        return ("'*': unpacking is not supported in expressions; write each argument itself, "
                "as in maximum(a, b)")
    return ("'**': unpacking is not supported in expressions; write each attr as name=value, "
            "as in sum(x, axis=0)")


def run_in(number: str, name: str) -> str:
    """The refusal of a number written into a name or another number (``2x``, ``1..2``)."""
    if name[:1].isalpha() or name[:1] == "_":
        return (f"{number + name!r}: a number cannot run into a name; for a product write "
                f"{number}*{name}")
    return f"{number + name!r} is not a number"


def xor_power(left: str, right: str) -> str:
    """The refusal of ``x ^ 2``, naming its operands."""
    return (f"'{left} ^ {right}': '^' is not a power (in Python it is bitwise xor); write "
            f"{left} ** {right} or pow({left}, {right})")
