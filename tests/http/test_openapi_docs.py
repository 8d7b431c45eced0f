"""The reference docs (docs/api.md, docs/oip.md, docs/training.md) and /openapi.json list the
same fields.

The docs introduce each object's field table with ``<!-- schema: Name -->`` (the OpenAPI
component); the first column of each row holds the field name(s) in backticks. A field
documented but missing from the schema, or in the schema but undocumented, fails here; so
does a request or response component without a table.
"""

from __future__ import annotations

import re
from pathlib import Path

from tests.conftest import build_app

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = [ROOT / "docs" / "api.md", ROOT / "docs" / "oip.md", ROOT / "docs" / "training.md"]
DOC = build_app().test_client().get("/openapi.json").get_json()
COMPONENTS = DOC["components"]["schemas"]

#: Components that are not objects with fields of their own: tensor forms written out for
#: code generators, and the per-form models of a request (documented under the request).
NOT_TABLES = {"NestedArray", "NestedArrayOut"}

MARKER = re.compile(r"^<!-- schema: (\w+) -->$")


def documented_tables() -> dict[str, set[str]]:
    tables: dict[str, set[str]] = {}
    current: str | None = None
    lines = [line for doc in REFERENCE for line in doc.read_text(encoding="utf-8").splitlines()]
    for line in lines:
        marker = MARKER.match(line.strip())
        if marker:
            current = marker.group(1)
            assert current not in tables, f"two tables for {current}"
            tables[current] = set()
            continue
        if current is None:
            continue
        if not line.startswith("|"):
            if tables[current]:
                current = None  # the table ended
            continue
        first = line.split("|")[1]
        tables[current] |= set(re.findall(r"`([A-Za-z_][A-Za-z0-9_]*)`", first))
    return tables


def schema_fields(name: str) -> set[str]:
    """The properties of a component; for a ``oneOf`` of forms, of all its forms."""
    schema = COMPONENTS[name]
    if "oneOf" in schema:
        fields: set[str] = set()
        for ref in schema["oneOf"]:
            fields |= schema_fields(ref["$ref"].rsplit("/", 1)[1])
        return fields
    return set(schema.get("properties", {}))


def _forms() -> set[str]:
    return {ref["$ref"].rsplit("/", 1)[1] for s in COMPONENTS.values()
            for ref in s.get("oneOf", []) if "$ref" in ref and "properties" not in s
            and all("$ref" in r for r in s["oneOf"]) and s.get("title", "").endswith("Request")}


def test_every_component_has_a_field_table():
    tables = documented_tables()
    expected = set(COMPONENTS) - NOT_TABLES - _forms()
    assert expected - set(tables) == set(), "components without a table in the reference docs"
    assert set(tables) - set(COMPONENTS) == set(), "tables naming no component"


def test_documented_fields_and_schema_fields_are_the_same():
    for name, documented in documented_tables().items():
        actual = schema_fields(name)
        missing_in_schema = {f"{name}.{f}" for f in documented - actual}
        undocumented = {f"{name}.{f}" for f in actual - documented}
        assert not missing_in_schema, f"documented but not in /openapi.json: {missing_in_schema}"
        assert not undocumented, f"in /openapi.json but not documented: {undocumented}"


def test_the_parser_sees_every_table():
    tables = documented_tables()
    assert tables["GradientRequest"] >= {"graph", "expression", "graph_id", "values", "wrt"}
    assert tables["MLPRequest"] >= {"layers", "inputs", "loss", "upstream", "l2"}


def test_docs_cite_nothing_outside_the_repository():
    """The reference is docs/api.md: no pointer to a contract file outside the repository."""
    outside = "API" + ".md"  # spelled so that this file does not match itself
    for path in [ROOT / "README.md", ROOT / "Makefile", *(ROOT / "docs").glob("*.md"),
                 *(p for d in ("service", "schemas", "gradserve", "tests", "bench")
                   for p in (ROOT / d).rglob("*.py"))]:
        text = path.read_text(encoding="utf-8")
        assert outside not in text, path
        assert ".." + "/shared" not in text, path
