"""The client's and the CLI's registry calls (register with a name, list_graphs over pages,
delete; ``gradserve graphs`` and ``gradserve rm``) against the app served on a local port,
and the CLI's error lines (connection refused names --url and GRADSERVE_URL; a server error
is printed once)."""

from __future__ import annotations

import json

import pytest

from gradserve.cli import main
from gradserve.client import Client
from gradserve.errors import Conflict, ConnectionFailed, NotFound
from tests.e2e.server import free_port


def test_register_list_delete(url: str) -> None:
    with Client(url) as gs:
        gid = gs.register("f = sin(x) * y", name="wave")
        with pytest.raises(Conflict):
            gs.register("x * y", name="wave")
        others = {gs.register(f"x * {i + 2}") for i in range(4)}
        graphs = gs.list_graphs(page_size=2)  # three pages
        ids = [g["graph_id"] for g in graphs]
        assert ids == sorted({gid} | others | {gs.register("x * y")})
        (wave,) = [g for g in graphs if g["graph_id"] == gid]
        assert wave == {"graph_id": gid, "name": "wave", "kind": "expression",
                        "inputs": {"x": {}, "y": {}}, "output": "f"}
        gs.delete(gid)
        gs.delete(gid)  # idempotent
        assert gid not in [g["graph_id"] for g in gs.iter_graphs()]
        # Deleted on purpose: the client does not bring it back on the 404.
        with pytest.raises(NotFound):
            gs.gradients(gid, {"x": 1.0, "y": 2.0})
        assert gs.register("x * 7", name="wave")  # the name is free again


def test_cli_graphs_and_rm(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["graphs", "--url", url]) == 0
    assert capsys.readouterr().out.strip() == "no registered graphs"
    with Client(url) as gs:
        gid = gs.register("f = sum(W @ x)", name="proj")
        spec = gs.register({"inputs": {"a": {"shape": [3]}},
                            "nodes": [{"id": "b", "op": "exp", "args": ["a"]}],
                            "output": "b"})
    assert main(["graphs", "--url", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["graph_id", "name", "kind", "inputs", "output"]
    rows = {line.split()[0]: line.split(None, 3)[1:] for line in lines[1:]}
    assert rows[gid][:2] == ["proj", "expression"] and rows[gid][2].endswith("f")
    assert rows[spec][:2] == ["-", "spec"] and "a[3]" in rows[spec][2]
    assert main(["graphs", "--url", url, "--json"]) == 0
    assert {g["graph_id"] for g in json.loads(capsys.readouterr().out)} == {gid, spec}
    assert main(["rm", gid, spec, "--url", url]) == 0
    assert capsys.readouterr().out.split() == ["removed", gid, "removed", spec]
    assert main(["graphs", "--url", url, "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_cli_rm_of_a_malformed_id_says_so_once(url: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rm", "wave", "--url", url]) == 1
    err = capsys.readouterr().err
    assert err.count("not a graph id") == 1
    assert err.startswith("gradserve: 404 Not Found: ") and "gradserve: gradserve" not in err


def test_cli_server_error_lines_are_not_repeated(url: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["grad", "x * y", "x=1", "--url", url, "--wrt", "q"]) == 1
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[0].startswith("gradserve: 422 ")
    assert len(lines) == len(set(line.strip() for line in lines))  # nothing printed twice
    first_detail = lines[0].split(": ", 2)[2]
    assert all(first_detail not in line for line in lines[1:])


def test_cli_connection_refused_names_url_and_env(capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    monkeypatch.setenv("GRADSERVE_URL", f"http://127.0.0.1:{port}")
    assert main(["graphs", "--timeout", "2"]) == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "Connection refused" in err
    assert "--url" in err and "GRADSERVE_URL" in err
    assert err.count("gradserve:") == 1 and len(err.strip().splitlines()) == 1


def test_connection_failed_has_url_and_reason() -> None:
    port = free_port()
    with Client(f"http://127.0.0.1:{port}", retries=0) as gs, \
            pytest.raises(ConnectionFailed) as info:
        gs.ops()
    assert info.value.url == f"http://127.0.0.1:{port}"
    assert info.value.reason == "Connection refused"
