"""The docs' examples run: every ```sh and ```python block of README.md and docs/*.md is run
against a real gunicorn and what it prints is compared with what the doc shows.

How a doc is read (the conventions the docs are written to):

- The blocks of one doc run in order in **one bash session** (a Python block is run by the
  session's interpreter), so a later block can use what an earlier one registered or wrote.
  Each doc gets a fresh server, so a doc's ``cache: miss`` is its own. ``localhost:8000`` and
  ``127.0.0.1:8000`` are rewritten to the test server, ``GRADSERVE_URL`` points the CLI at
  it, ``gradserve`` is this checkout's CLI and ``/tmp/`` is a private directory.
- In a sh block, the ``# …`` lines right after a command (no blank line between) are its
  expected output, as is a command's inline comment that starts like output (``{``, ``[``,
  ``HTTP/``, a number). Any other comment is prose. In a Python block the expected output
  is the comment on (or right after) each ``print(...)`` line, in order.
- Comparing: whitespace is free, ``…`` in the doc stands for anything, and a number in the
  doc matches a number printed to within half a unit of its last digit shown (a whole unit
  when ``…`` follows it: a truncated number). Everything else must be the same text, so
  field names, statuses and graph ids are checked as written.
- A command with no expected output must exit 0 and print no error (no problem+json 4xx/5xx,
  no OIP ``{"error": …}``, no traceback, no ``gradserve:`` error line).
- A block that cannot run here (docker, kubectl, make, a GPU, an excerpt of the source) is
  preceded by ``<!-- docs-test: skip (reason) -->``; the skipped blocks are counted and
  reported with their reasons.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.e2e.server import ROOT, GunicornServer

pytestmark = pytest.mark.e2e

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
#: Fence languages run as shell / as Python (any other block is not an example to run).
_LANGS = {"sh": "sh", "bash": "sh", "shell": "sh", "python": "python", "py": "python"}
#: At most this many skipped blocks over all the docs: the docs are meant to run.
MAX_SKIPPED = 8
#: Wall-clock bound of one doc's session (the whole module stays well under two minutes).
SESSION_TIMEOUT_S = 45

_FENCE = re.compile(r"^(\s*)```\s*(\w*)[^`]*$")
_SKIP = re.compile(r"<!--\s*docs-test:\s*skip\s*\((.+)\)\s*-->")
_INLINE = re.compile(r"^(.*?\S)\s+#\s?(.*)$")
_LOOKS_LIKE_OUTPUT = re.compile(r"^(\{|\[|HTTP/|-?\d)")
_NUMBER = r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?"
_DOC_TOKEN = re.compile(rf"(?P<num>(?<![\w.]){_NUMBER}(?![\w]))|(?P<ell>…)|(?P<ws>\s+)")
_ERROR = re.compile(r'"status":\s*[45]\d\d|"error":|Traceback|^gradserve: ', re.M)


@dataclass
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    code: list[str]
    skip: str | None  # the reason, when marked


@dataclass
class Segment:
    """Commands whose output is compared (or, when ``expected`` is None, only checked)."""

    block: Block
    line: int  # 1-based line in the doc of the segment's first code line
    code: list[str] = field(default_factory=list)
    expected: list[str] | None = None


def read_blocks(path: Path) -> list[Block]:
    """The ```sh and ```python blocks of ``path``, with their skip marks."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, indent, lang = i, len(m.group(1)), _LANGS.get(m.group(2).lower())
        i += 1
        body: list[str] = []
        while i < len(lines) and not lines[i].lstrip().startswith("```"):
            body.append(lines[i][indent:] if lines[i][:indent].isspace() else lines[i])
            i += 1
        i += 1
        if lang is None:
            continue
        skip = None
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j >= 0 and (s := _SKIP.search(lines[j])):
            skip = s.group(1).strip()
        blocks.append(Block(_name(path), start + 1, lang, body, skip))
    return blocks


def _name(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name


def _inline_comment(line: str) -> tuple[str, str] | None:
    m = _INLINE.match(line)
    if not m:
        return None
    code = m.group(1)
    if code.count("'") % 2 or code.count('"') % 2:  # the # is inside a quoted string
        return None
    return code, m.group(2)


def sh_segments(block: Block) -> list[Segment]:
    segments: list[Segment] = []
    seg: Segment | None = None
    prev_code = False  # the previous line was code or expected output

    def close() -> None:
        nonlocal seg
        if seg is not None and seg.code:
            segments.append(seg)
        seg = None

    for k, line in enumerate(block.code):
        lineno = block.line + 1 + k
        stripped = line.strip()
        if not stripped:
            close()
            prev_code = False
            continue
        if stripped.startswith("#"):
            if prev_code and seg is not None:
                seg.expected = (seg.expected or []) + [stripped[1:].strip()]
            continue  # otherwise prose
        if seg is not None and seg.expected is not None:
            close()
        if seg is None:
            seg = Segment(block, lineno)
        prev_code = True
        inline = _inline_comment(line)
        if inline is None:
            seg.code.append(line)
            continue
        code, comment = inline
        seg.code.append(code)
        if _LOOKS_LIKE_OUTPUT.match(comment):
            seg.expected = [comment]
        else:
            close()
            prev_code = False
    close()
    return segments


def python_segment(block: Block) -> Segment:
    expected: list[str] = []
    after_print = False
    for line in block.code:
        stripped = line.strip()
        if stripped.startswith("#"):
            if after_print:
                expected.append(stripped[1:].strip())
            continue
        after_print = False
        if "print(" in line:
            after_print = True
            inline = _inline_comment(line)
            if inline is not None:
                expected.append(inline[1])
    return Segment(block, block.line + 1, list(block.code), expected or None)


def output_matches(expected: str, actual: str) -> str | None:
    """None when ``actual`` is what the doc shows in ``expected``, else why not."""
    pattern: list[str] = []
    numbers: list[tuple[str, bool]] = []
    pos = 0
    tokens = list(_DOC_TOKEN.finditer(expected))
    for n, tok in enumerate(tokens):
        pattern.append(re.escape(expected[pos:tok.start()]))
        pos = tok.end()
        if tok.group("num"):
            truncated = n + 1 < len(tokens) and tokens[n + 1].group("ell") is not None \
                and tokens[n + 1].start() == tok.end()
            numbers.append((tok.group("num"), truncated))
            pattern.append(f"({_NUMBER})")
        elif tok.group("ell"):
            pattern.append(".*?")
        else:
            pattern.append(r"\s*")
    pattern.append(re.escape(expected[pos:]))
    m = re.fullmatch("".join(pattern), actual.strip(), re.S)
    if m is None:
        return "the text differs"
    for (want, truncated), got in zip(numbers, m.groups(), strict=True):
        if not _close(want, got, truncated):
            return f"{got} where the doc shows {want}"
    return None


def _close(want: str, got: str, truncated: bool) -> bool:
    mantissa, _, exponent = want.lower().partition("e")
    decimals = len(mantissa.partition(".")[2])
    unit = 10.0 ** (int(exponent or 0) - decimals)
    tol = unit if truncated else unit / 2
    w, g = float(want), float(got)
    return abs(w - g) <= tol * (1 + 1e-9) + 1e-9 * abs(w)


# --- running a doc -----------------------------------------------------------------------------


def _rewrite(code: str, server: GunicornServer, tmp: Path) -> str:
    for addr in ("localhost:8000", "127.0.0.1:8000"):
        code = code.replace(addr, f"{server.host}:{server.port}")
    return code.replace("/tmp/", f"{tmp}/")


def run_doc(path: Path, server: GunicornServer, tmp: Path) -> list[tuple[Segment, int, str]]:
    """Run ``path``'s blocks in one bash session: (segment, exit status, output) each."""
    segments: list[Segment] = []
    for block in read_blocks(path):
        if block.skip is not None:
            continue
        if block.lang == "sh":
            segments.extend(sh_segments(block))
        else:
            segments.append(python_segment(block))
    script = ['exec 2>&1', 'gradserve() { "$DOCS_PY" -m gradserve "$@"; }']
    for n, seg in enumerate(segments):
        if seg.block.lang == "python":
            file = tmp / f"block{n}.py"
            file.write_text(_rewrite("\n".join(seg.code), server, tmp) + "\n")
            script.append(f'"$DOCS_PY" {file}')
        else:
            script.append(_rewrite("\n".join(seg.code), server, tmp))
        script.append(f"printf '\\n@@docs-segment {n} %d@@\\n' $?")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADSERVE_")}
    env.update(GRADSERVE_URL=server.url, DOCS_PY=sys.executable, PYTHONPATH=str(ROOT),
               TMPDIR=str(tmp))
    proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp, env=env,
                          capture_output=True, text=True, timeout=SESSION_TIMEOUT_S)
    results: list[tuple[Segment, int, str]] = []
    rest = proc.stdout
    for n, seg in enumerate(segments):
        m = re.search(rf"\n@@docs-segment {n} (\d+)@@\n", rest)
        assert m is not None, (f"{_name(path)}:{seg.line}: the session ended here "
                               f"(exit {proc.returncode}):\n{rest[-2000:]}")
        results.append((seg, int(m.group(1)), rest[:m.start()]))
        rest = rest[m.end():]
    return results


def _runnable_docs() -> list[Path]:
    return [p for p in DOCS if any(b.skip is None for b in read_blocks(p))]


@pytest.mark.parametrize("doc", _runnable_docs(), ids=lambda p: p.name)
def test_the_examples_print_what_the_doc_shows(doc: Path, tmp_path: Path) -> None:
    with GunicornServer(workers=1, threads=4) as server:
        results = run_doc(doc, server, tmp_path)
        logs = server.logs()
    failures = []
    for seg, rc, out in results:
        where = f"{_name(doc)}:{seg.line}"
        if seg.expected is None:
            if rc != 0 or _ERROR.search(out):
                failures.append(f"{where}: exit {rc}, printed:\n{out.strip()[:1500]}")
            continue
        why = output_matches("\n".join(seg.expected), out)
        if rc != 0 or why is not None:
            failures.append(f"{where}: {why or f'exit {rc}'}\n  doc:     "
                            + "\n           ".join(seg.expected)
                            + f"\n  printed: {out.strip()[:1500]}")
    assert not failures, "\n\n".join(failures)
    for needle in ("Traceback", "unhandled error", "WORKER TIMEOUT"):
        assert needle not in logs, logs[-3000:]


def test_skipped_blocks_are_few_and_say_why(capsys: pytest.CaptureFixture[str]) -> None:
    skipped = [b for doc in DOCS for b in read_blocks(doc) if b.skip is not None]
    total = sum(len(read_blocks(doc)) for doc in DOCS)
    lines = [f"docs: {total - len(skipped)} of {total} sh/python blocks run, "
             f"{len(skipped)} skipped:"]
    lines += [f"  {b.doc}:{b.line} ({b.lang}): {b.skip}" for b in skipped]
    with capsys.disabled():  # the report shows in every run, not only on a failure
        print("\n" + "\n".join(lines))
    assert all(b.skip for b in skipped)
    assert len(skipped) <= MAX_SKIPPED, "\n".join(lines)


# --- the comparison itself ---------------------------------------------------------------------


@pytest.mark.parametrize(("doc", "printed"), [
    ('{"graph_id":"g-f822…","output":-12.0}', '{"graph_id":"g-f8228805ff","output":-12.0}'),
    ("output  -12\nx      -2     -4", "output  -12\nx  -2  -4\n"),
    ("0.7311", "0.7310585786300049"),
    ('"data":[0.2000000…]', '"data":[0.20000000298023224]'),
    ("HTTP/1.1 201 CREATED … Location: /v1/graphs/g-a1a6…",
     "HTTP/1.1 201 CREATED\r\nServer: x\r\nLocation: /v1/graphs/g-a1a6755d\r\n\r\n{}"),
])
def test_matching_accepts(doc: str, printed: str) -> None:
    assert output_matches(doc, printed) is None


@pytest.mark.parametrize(("doc", "printed"), [
    ('{"graph_id":"g-f822…"}', '{"graph_id":"g-f823aa"}'),  # another graph
    ('"cache":"hit"', '"cache":"miss"'),
    ("0.7311", "0.7312"),
    ('{"output":-4.0}', '{"output":np.float64(-4.0)}'),
    ("204", "404"),
])
def test_matching_refuses(doc: str, printed: str) -> None:
    assert output_matches(doc, printed) is not None


def test_fences_in_lists_and_other_spellings_are_read(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("- a step:\n\n  ```bash\n  curl -s a\n  ```\n\n```json\n{}\n```\n"
                   "<!-- docs-test: skip (needs docker) -->\n\n```py\nimport os\n```\n")
    blocks = read_blocks(doc)
    assert [(b.lang, b.code, b.skip) for b in blocks] == [
        ("sh", ["curl -s a"], None), ("python", ["import os"], "needs docker")]


def test_reading_a_block() -> None:
    block = Block("x.md", 1, "sh", [
        "# prose before",
        'curl -s a  # {"live":true}',
        "curl -s b    # prose after",
        "gradserve grad x",
        "# output  1",
        "#  more",
        "",
        "# prose",
        "curl -s c",
    ], None)
    segs = sh_segments(block)
    assert [(s.code, s.expected) for s in segs] == [
        (["curl -s a"], ['{"live":true}']),
        (["curl -s b"], None),
        (["gradserve grad x"], ["output  1", "more"]),
        (["curl -s c"], None),
    ]
