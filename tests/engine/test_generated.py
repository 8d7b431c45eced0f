"""The files generated from the op registry (service/engine/ops/gen.py) are up to date.

docs/api.md's op table and the playground's ops.js are written by ``python -m
service.engine.ops.gen``, never by hand: an op added, renamed or re-documented in its
category module without regenerating them fails here.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from service.engine.ops import build_registry, gen

REGISTRY = build_registry(np)  # what the generator reads, whatever GRADSERVE_BACKEND says


@pytest.mark.parametrize("path", list(gen.outputs(REGISTRY)), ids=lambda p: p.name)
def test_generated_file_is_up_to_date(path) -> None:
    expected = gen.outputs(REGISTRY)[path]
    actual = path.read_text(encoding="utf-8") if path.exists() else None
    assert actual == expected, (f"{path.relative_to(gen.ROOT)} is stale: run "
                                f"`{gen.COMMAND}` and commit the result")


def test_op_table_lists_every_public_op_once() -> None:
    table = gen.op_table(REGISTRY)
    rows = re.findall(r"^\| `(\w+)\(", table, flags=re.M)
    assert rows == REGISTRY.names()
    assert not set(rows) & {op.name for op in REGISTRY.internal_ops()}


def test_playground_file_holds_every_local_text() -> None:
    js = gen.ops_js(REGISTRY)
    for op in REGISTRY:
        assert (f'"{op.name}": ' in js) == bool(op.local), op.name
    assert "innerHTML" not in js and "eval(" not in js and "http" not in js


def test_check_mode_names_a_stale_file(tmp_path, monkeypatch, capsys) -> None:
    api = tmp_path / "api.md"
    api.write_text(f"# x\n\n{gen.BEGIN}\nold table\n{gen.END}\n", encoding="utf-8")
    monkeypatch.setattr(gen, "ROOT", tmp_path)
    monkeypatch.setattr(gen, "API_MD", api)
    monkeypatch.setattr(gen, "OPS_JS", tmp_path / "ops.js")
    assert gen.main(["--check"]) == 1
    err = capsys.readouterr().err
    assert "api.md is stale" in err and "ops.js is stale" in err and gen.COMMAND in err
    assert gen.main([]) == 0
    assert gen.main(["--check"]) == 0
    text = api.read_text(encoding="utf-8")
    assert text.startswith("# x\n\n" + gen.BEGIN) and "old table" not in text
    assert text.endswith(gen.END + "\n") and "| `sigmoid(x)` |" in text
