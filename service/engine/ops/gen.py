"""What is generated from the op registry, never copied by hand:

- docs/api.md's op table (§3), between the marker comments :data:`BEGIN` and :data:`END`;
- service/static/playground/ops.js, the ops' local-derivative texts the playground writes
  beside a scalar gate (``Op.local``).

    python -m service.engine.ops.gen            # rewrite both
    python -m service.engine.ops.gen --check    # exit 1, naming each stale file

tests/engine/test_generated.py fails when a generated file is stale. Run from a checkout:
the docs are not in the installed package.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.engine.ops import build_registry
from service.engine.registry import Op, Registry

COMMAND = "python -m service.engine.ops.gen"
ROOT = Path(__file__).resolve().parents[3]
API_MD = ROOT / "docs" / "api.md"
OPS_JS = ROOT / "service" / "static" / "playground" / "ops.js"
BEGIN = f"<!-- op table: generated from the registry by `{COMMAND}`; do not edit -->"
END = "<!-- end of the generated op table -->"


def _md(text: str) -> str:
    """``text`` as the content of a Markdown table cell (``|`` and ``*`` taken literally)."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("*", "\\*")


def _signature(op: Op) -> str:
    """``name(x, y)``; a variadic op's repeated last arg as ``...``; optional trailing args
    in brackets: ``conv2d(x, weight[, bias])``."""
    if op.variadic:
        return f"`{op.name}({', '.join(op.arg_names)}, ...)`"
    fewest = op.min_arity
    optional = "".join(f"[, {n}]" for n in op.arg_names[fewest:])
    return f"`{op.name}({', '.join(op.arg_names[:fewest])}{optional})`"


def _attrs(op: Op) -> str:
    return ", ".join(f"`{a.name}` = `{json.dumps(a.default)}`" for a in op.attrs)


def _attr_docs(reg: Registry) -> list[str]:
    """One line per distinct attr (name and doc): what it does and which ops take it."""
    takers: dict[tuple[str, str], list[str]] = {}
    for op in reg:
        for a in op.attrs:
            takers.setdefault((a.name, a.doc), []).append(f"`{op.name}`")
    return [f"- `{name}` ({', '.join(ops)}): {_md(doc)}" for (name, doc), ops in takers.items()]


def op_table(reg: Registry) -> str:
    """The Markdown table of every public op, in registration order, markers included."""
    lines = [
        BEGIN,
        "| op | category | attrs (default) | computes; local gradient | kinked | example |",
        "|---|---|---|---|---|---|",
    ]
    for op in reg:
        example = f"`{op.example}`" if op.example else ""
        lines.append(f"| {_signature(op)} | {op.category} | {_attrs(op)} | {_md(op.doc)} | "
                     f"{'yes' if op.kinked else ''} | {example} |")
    lines += ["", "*kinked*: second derivatives through the op's kinks are taken as zero "
                  "(PyTorch's convention). The attrs:", "", *_attr_docs(reg), END]
    return "\n".join(lines)


def api_md(text: str, reg: Registry) -> str:
    """docs/api.md's ``text`` with the op table between the markers replaced."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{API_MD.name} has no op table markers ({BEGIN!r} ... {END!r})")
    return text[:start] + op_table(reg) + text[end + len(END):]


def ops_js(reg: Registry) -> str:
    """service/static/playground/ops.js: ``window.GradOps.localText``, op name → text."""
    local = {op.name: op.local for op in reg if op.local}
    body = json.dumps(local, ensure_ascii=False, indent=2).replace("\n", "\n    ")
    return (
        f"/* Generated from gradserve's op registry by `{COMMAND}`: do not edit.\n"
        " *\n"
        " * localText: each op's local derivative in words, written beside a scalar gate's\n"
        " * backward step (the ops' `local` field; ops without one are not listed).\n"
        " */\n"
        "(function (root) {\n"
        '  "use strict";\n'
        "\n"
        "  root.GradOps = {\n"
        f"    localText: {body},\n"
        "  };\n"
        '})(typeof window !== "undefined" ? window : this);\n'
    )


def outputs(reg: Registry | None = None) -> dict[Path, str]:
    """Each generated file and the text it should hold now."""
    reg = build_registry(np) if reg is None else reg
    return {API_MD: api_md(API_MD.read_text(encoding="utf-8"), reg), OPS_JS: ops_js(reg)}


def stale(reg: Registry | None = None) -> list[Path]:
    """The generated files whose text differs from what the registry gives."""
    return [path for path, text in outputs(reg).items()
            if not path.exists() or path.read_text(encoding="utf-8") != text]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 if a generated file is stale")
    args = parser.parse_args(argv)
    if args.check:
        old = stale()
        for path in old:
            print(f"{path.relative_to(ROOT)} is stale: run {COMMAND}", file=sys.stderr)
        return 1 if old else 0
    for path, text in outputs().items():
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
