"""ruff and bandit over the code base, as CI runs them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_clean():
    proc = _run(str(BIN / "ruff"), "check", "service", "schemas", "gradserve", "tests", "bench")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_bandit_no_high_or_medium_findings():
    proc = _run(str(BIN / "bandit"), "-q", "-r", "service", "schemas", "gradserve", "-ll",
                "-f", "txt")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_schemas_never_import_service():
    import ast

    for path in (ROOT / "schemas").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "service", path
            elif isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "service" for a in node.names), path
