"""docs/onnx.md's supported-op table, generated from the lowering table (table.py), never
written by hand: between the marker comments :data:`BEGIN` and :data:`END`.

    python -m service.engine.onnx.gen            # rewrite it
    python -m service.engine.onnx.gen --check    # exit 1 when it is stale

tests/engine/onnx/test_generated.py fails when the table is stale. Run from a checkout.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from service.engine.onnx import table
from service.engine.onnx.load import OPSETS

COMMAND = "python -m service.engine.onnx.gen"
ROOT = Path(__file__).resolve().parents[3]
ONNX_MD = ROOT / "docs" / "onnx.md"
BEGIN = f"<!-- ONNX op table: generated from the lowering table by `{COMMAND}`; do not edit -->"
END = "<!-- end of the generated ONNX op table -->"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("*", "\\*")


def op_table() -> str:
    """The Markdown table of every lowered op type, markers included."""
    lines = [BEGIN, "| ONNX op type | opsets | lowered onto | takes / refuses |",
             "|---|---|---|---|"]
    for op_type in sorted(table.TABLE):
        for e in table.TABLE[op_type]:
            uses = ", ".join(f"`{u}`" if not u.startswith("(") else u for u in e.uses) \
                or "(nothing: passes its input through)"
            lines.append(f"| `{op_type}` | {e.since}–{e.until} | {uses} | {_cell(e.note)} |")
    lines += ["", f"{len(table.TABLE)} op types, opsets {OPSETS.start} through "
              f"{OPSETS.stop - 1} of the default domain. *(folded)*: computed when the model "
              "is registered, never at request time.", END]
    return "\n".join(lines)


def onnx_md(text: str) -> str:
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{ONNX_MD.name} has no ONNX op table markers")
    return text[:start] + op_table() + text[end + len(END):]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=COMMAND, description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the table is stale")
    args = parser.parse_args(argv)
    current = ONNX_MD.read_text(encoding="utf-8")
    expected = onnx_md(current)
    if args.check:
        if current != expected:
            print(f"stale: {ONNX_MD.relative_to(ROOT)} (run {COMMAND})", file=sys.stderr)
            return 1
        return 0
    if current != expected:
        ONNX_MD.write_text(expected, encoding="utf-8")
        print(f"wrote {ONNX_MD.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
