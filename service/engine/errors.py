"""The errors the engine raises, in the engine's words; each flow says them in its own.

Every error is a :class:`ProblemError`; its class attributes are its defaults (a status and
a title: a number and a name attached to the kind of error, not HTTP itself), subclasses
only set them. ``service.errors`` re-exports these very classes and adds the kinds only the
HTTP layer raises (401, 408, 415); the HTTP layer turns any of them into an RFC 9457
problem body (:meth:`ProblemError.problem`).

**Words.** A message that names a request option or field (``upstream``, ``wrt``,
``jacobian``, ``values``...) keeps those names as references instead of baked-in text: it
is a :class:`Detail`, a ``str.format`` template whose fields are either values given to it
or, for a field given no value, a reference to the option of that name::

    raise Unprocessable(Detail("{upstream}: shape {got} differs from the output's {want}",
                               got="(2,)", want="(3,)"), loc=("upstream",))

A reference renders as the bare name (``{upstream}`` → ``upstream``) or, with the ``!q``
conversion, quoted (``{upstream!q}`` → ``'upstream'``); ``!q`` quotes a value too
(``{name!q}`` → ``'x'``). ``Ref(name)`` as a value references an option named at run time
(``Detail("{field}: ...", field=Ref("tangents"))``). The default rendering is the words of
``/v1`` (the request fields are named as the options are), so ``err.detail`` and
``err.loc`` are what a ``/v1`` client reads, byte for byte.

A flow with other words calls :meth:`ProblemError.reword` with its own mapping before it
re-raises::

    except Unprocessable as exc:
        exc.reword({"upstream": "input 'grad:output'", "jacobian": "output 'output'"},
                   locs={"upstream": ("inputs", "grad:output")})
        raise

Every reference to a mapped name, bare or quoted, becomes the flow's phrase (``detail``
and ``args`` are re-rendered); a ``loc`` that starts with a mapped name starts with the
flow's path instead. ``err.mentions`` lists the names an error references. A plain string
detail has no references: reword then maps only ``loc``; so does a detail that a flow
edited in place (its edit is kept, not rendered over).
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Any

Loc = tuple[str | int, ...]

__all__ = [
    "BadRequest", "ContentTooLarge", "DeadlineExceeded", "Detail", "GraphError",
    "LimitExceeded", "Loc", "NotFound", "ProblemError", "Ref", "ServiceUnavailable",
    "Unprocessable",
]


class Ref:
    """A reference to a request option (or field) by its engine name."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"Ref({self.name!r})"


class _Formatter(string.Formatter):
    """Renders a Detail: a field with no value is a Ref; ``!q`` quotes."""

    def __init__(self, words: Mapping[str, str], seen: set[str] | None = None) -> None:
        super().__init__()
        self.words = words
        self.seen = seen

    def get_value(self, key: int | str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        if isinstance(key, str) and key not in kwargs:
            return Ref(key)
        return super().get_value(key, args, kwargs)

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if isinstance(value, Ref):
            if self.seen is not None:
                self.seen.add(value.name)
            word = self.words.get(value.name)
            if word is not None:
                return word
            return f"'{value.name}'" if conversion == "q" else value.name
        if conversion == "q":
            return f"'{value}'"
        return super().convert_field(value, conversion)


_NO_WORDS: Mapping[str, str] = {}


class Detail:
    """A message template with its values; see the module docstring."""

    __slots__ = ("template", "values")

    def __init__(self, template: str, /, **values: Any) -> None:
        self.template = template
        self.values = values

    def render(self, words: Mapping[str, str] = _NO_WORDS) -> str:
        """The message with every reference in ``words`` (default: the engine's names)."""
        return _Formatter(words).vformat(self.template, (), self.values)

    @property
    def mentions(self) -> frozenset[str]:
        """The option names the message references."""
        seen: set[str] = set()
        _Formatter(_NO_WORDS, seen).vformat(self.template, (), self.values)
        return frozenset(seen)

    def __repr__(self) -> str:
        return f"Detail({self.template!r}, **{self.values!r})"


class ProblemError(Exception):
    """Base class: ``status`` and ``title`` are the defaults of each kind.

    ``detail`` is a string, or a :class:`Detail` whose references a flow may reword."""

    status: int = 500
    title: str = "Internal Server Error"

    def __init__(
        self,
        detail: str | Detail,
        *,
        loc: Sequence[str | int] | None = None,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        template = detail if isinstance(detail, Detail) else None
        text = detail.render() if template is not None else detail
        super().__init__(text)
        self.detail: str = text
        self.template = template
        self._rendered = text
        self.loc: Loc | None = tuple(loc) if loc is not None else None
        self.errors = errors
        self.headers = headers or {}

    @property
    def mentions(self) -> frozenset[str]:
        """The option names the message references (none for a plain string)."""
        return frozenset() if self.template is None else self.template.mentions

    def reword(self, words: Mapping[str, str], *,
               locs: Mapping[str, Loc] | None = None) -> ProblemError:
        """Say this error in a flow's words (in place; returns self): each option in
        ``words`` becomes its phrase in ``detail``; a ``loc`` starting with an option in
        ``locs`` starts with that path instead."""
        if self.template is not None and self.detail == self._rendered:
            self.detail = self._rendered = self.template.render(words)
            self.args = (self.detail,)
        if locs and self.loc and isinstance(self.loc[0], str) and self.loc[0] in locs:
            self.loc = (*locs[self.loc[0]], *self.loc[1:])
        return self

    def problem(self) -> dict[str, Any]:
        """The problem+json body of this error."""
        body: dict[str, Any] = {
            "type": "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors is not None:
            body["errors"] = self.errors
        elif self.loc is not None:
            # An empty loc points at nothing; the whole body is what it means.
            body["errors"] = [{"loc": list(self.loc) or ["body"], "msg": self.detail}]
        return body


class BadRequest(ProblemError):
    status, title = 400, "Bad Request"


class NotFound(ProblemError):
    status, title = 404, "Not Found"


class ContentTooLarge(ProblemError):
    status, title = 413, "Content Too Large"


class Unprocessable(ProblemError):
    status, title = 422, "Unprocessable Content"


class ServiceUnavailable(ProblemError):
    status, title = 503, "Service Unavailable"

    def __init__(self, detail: str | Detail, *, retry_after: int = 1, **kwargs: Any) -> None:
        super().__init__(detail, **kwargs)
        self.headers.setdefault("Retry-After", str(retry_after))


class DeadlineExceeded(ServiceUnavailable):
    """A request past GRADSERVE_REQUEST_DEADLINE_S. A 503, not a 504: docs/api.md §7 reserves
    every 5xx but 503 for bugs, and "retry later, or ask for less" is what a 503 says."""


# --- engine-level kinds -------------------------------------------------------------------


class GraphError(Unprocessable):
    """A graph that cannot be compiled or run; ``node`` names the offending node or input."""

    def __init__(self, detail: str, *, node: str | None = None, **kwargs: Any) -> None:
        if node is not None and not detail.startswith(("node ", "input ")):
            detail = f"node '{node}': {detail}"
        super().__init__(detail, **kwargs)
        self.node = node


class LimitExceeded(ContentTooLarge):
    """A size or work limit; ``limit`` is the setting's name, ``value`` its configured value."""

    def __init__(self, limit: str, value: int, actual: int, what: str, **kwargs: Any) -> None:
        setting = "GRADSERVE_" + limit.upper()
        super().__init__(f"{what} is {actual:,}, over the limit {setting}={value:,}", **kwargs)
        self.limit = limit
        self.value = value
        self.actual = actual
