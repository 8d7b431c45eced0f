"""The classes of resource attacks of issue 9, each a handful of variants (a helper, not a test).

Shared by ``tests/e2e/test_resources.py`` (which asserts on them against a real gunicorn) and
``bench/resources.py`` (which measures each class's peak worker RSS, also against older
code). A variant is raw bytes on a fresh connection, so that headers such as a 20-digit
``Content-Length`` or an invented method can be sent as a hostile client would.
"""

from __future__ import annotations

import base64
import json
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Variant:
    """One hostile request: raw bytes, and which statuses are a right answer."""

    cls: str
    name: str
    raw: bytes
    ok: frozenset[int]  # statuses accepted (200 only where the answer is checked)
    check: Any = None  # callable(body: dict) -> None for a 200


def http(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
         content_length: str | None = None) -> bytes:
    """An HTTP/1.1 request as bytes (``Connection: close``)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: test", "Connection: close"]
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    if method not in ("GET", "HEAD") or body:
        hdrs["Content-Length"] = content_length or str(len(body))
    lines += [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def post(path: str, obj: Any) -> bytes:
    return http("POST", path, json.dumps(obj).encode())


def _graph(inputs: dict[str, Any], nodes: list[dict[str, Any]], output: str = "f",
           **extra: Any) -> dict[str, Any]:
    return {"graph": {"inputs": inputs, "nodes": nodes, "output": output}, **extra}


def _b64(shape: list[int]) -> dict[str, Any]:
    n = 1
    for d in shape:
        n *= d
    return {"shape": shape, "dtype": "float64", "b64": base64.b64encode(b"\0" * 8 * n).decode()}


R4XX = frozenset(range(400, 500))


def variants() -> list[Variant]:
    """Every class of issue 9 this suite covers (backward-pass temporaries, item 1, and the
    plan cache, item 3, have their own tests), several variants each."""
    out: list[Variant] = []

    def add(cls: str, name: str, raw: bytes, ok: frozenset[int] = R4XX, check: Any = None
            ) -> None:
        out.append(Variant(cls, name, raw, ok, check))

    # --- shape attrs: long, huge or growing lists ----------------------------------------
    x2 = {"x": {"shape": [2]}}
    for name, attrs, op in [
        ("reshape-250k-dims", {"shape": [1] * 250_000 + [2]}, "reshape"),
        ("reshape-250k-big-dims", {"shape": [1_000_000_007] * 250_000}, "reshape"),
        ("reshape-33-dims", {"shape": [1] * 32 + [2]}, "reshape"),
        ("reshape-huge-then-0", {"shape": [2**53] * 20 + [0]}, "reshape"),
        ("transpose-100k-axes", {"axes": list(range(100_000))}, "transpose"),
        ("sum-100k-axes", {"axis": list(range(100_000))}, "sum"),
    ]:
        body = _graph(x2, [{"id": "f", "op": op, "args": ["x"], "attrs": attrs}],
                      values={"x": [1, 2]})
        add("shape-attrs", name, post("/v1/gradients", {**body, "upstream": [1, 2]}))
        add("shape-attrs", name + "-register", post("/v1/graphs", {"graph": body["graph"]}))
    add("shape-attrs", "expression-reshape-huge",
        post("/v1/gradients", {"expression": "sum(reshape(x, shape=[" +
                               ",".join(["4294967296"] * 30) + "]))", "values": {"x": [1]}}))

    # --- responses far bigger than their requests ----------------------------------------
    n = 4096
    vec = {"shape": [n], "dtype": "float64", "data": [0.5] * n}
    col = {"shape": [n, 1], "dtype": "float64", "data": [0.25] * n}
    for enc in ("json", "b64"):
        add("responses", f"trace-broadcast-{enc}",
            post("/v1/gradients", {"expression": "z = x + y; sum(z)",
                                   "values": {"x": vec, "y": col}, "trace": True,
                                   "encoding": enc}))
    add("responses", "gradient-of-outer-product",
        post("/v1/gradients", {"expression": "x * y", "values": {"x": vec, "y": col},
                               "upstream": _b64([n, n]), "wrt": ["x"]}))
    add("responses", "jacobian-1M-entries",
        post("/v1/gradients", {"expression": "x * 2", "values": {"x": {
            "shape": [1024], "data": [1.0] * 1024}}, "jacobian": True, "wrt": ["x"]}),
        ok=R4XX | {200})
    add("responses", "trace-long-chain",
        post("/v1/gradients", {"expression": "; ".join(
            ["a0 = x * 1"] + [f"a{i} = a{i-1} + x" for i in range(1, 100)] + ["sum(a99)"]),
            "values": {"x": {"shape": [65536], "data": [1.0] * 65536}}, "trace": True}))

    # --- degenerate shapes and headers that used to be a 500 -----------------------------
    def sum_is(expect: float) -> Any:
        def check(body: dict[str, Any]) -> None:
            assert body["output"] == expect, body
        return check

    add("degenerate", "reshape-empty-to-huge-dims",
        post("/v1/gradients", _graph({"x": {"shape": [0]}}, [
            {"id": "r", "op": "reshape", "args": ["x"],
             "attrs": {"shape": [2**40, 2**40, 0]}},
            {"id": "f", "op": "sum", "args": ["r"]}], values={"x": []})))
    add("degenerate", "register-reshape-huge-dims",
        post("/v1/graphs", _graph({"x": {"shape": [0]}}, [
            {"id": "f", "op": "reshape", "args": ["x"],
             "attrs": {"shape": [2**31, 2**31, 2**31, 0]}}])))
    add("degenerate", "linear-zero-in-features",
        post("/v1/gradients", {"expression": "sum(linear(x, w, b))", "values": {
            "x": {"shape": [2, 0], "data": []}, "w": {"shape": [3, 0], "data": []},
            "b": [1, 2, 3]}}), ok=frozenset({200}), check=sum_is(12.0))
    add("degenerate", "matmul-zero-inner",
        post("/v1/gradients", {"expression": "sum(a @ b)", "values": {
            "a": {"shape": [2, 0], "data": []}, "b": {"shape": [0, 3], "data": []}}}),
        ok=frozenset({200}), check=sum_is(0.0))
    add("degenerate", "b64-empty-2d",
        post("/v1/gradients", {"expression": "sum(x)", "encoding": "b64",
                               "values": {"x": {"shape": [0, 3], "data": []}}}),
        ok=frozenset({200}), check=_b64_empty_gradient([0, 3]))
    add("degenerate", "json-empty-keeps-shape",
        post("/v1/gradients", {"expression": "sum(x * 2)",
                               "values": {"x": {"shape": [0, 3], "data": []}}}),
        ok=frozenset({200}), check=_empty_gradient_shape([0, 3]))
    huge = "18446744073709551616"
    for path, method in [("/healthz", "GET"), ("/v1/gradients", "POST"), ("/metrics", "GET"),
                         ("/v1/ops", "GET"), ("/nowhere", "POST")]:
        add("degenerate", f"content-length-2^64-{method}-{path}",
            http(method, path, b"{}", content_length=huge), ok=R4XX | {200})

    # --- metric labels -----------------------------------------------------------------------
    for i in range(40):
        add("metrics", f"method-{i}", http(f"X{i:04d}FOO", "/v1/gradients", b"{}"))
    return out


def _b64_empty_gradient(shape: list[int]) -> Any:
    def check(body: dict[str, Any]) -> None:
        assert base64.b64decode(body["output"]["b64"]) == b"\0" * 8, body
        assert body["gradients"]["x"] == {"shape": shape, "dtype": "float64", "b64": ""}, body
    return check


def _empty_gradient_shape(shape: list[int]) -> Any:
    def check(body: dict[str, Any]) -> None:
        grad = body["gradients"]["x"]
        assert isinstance(grad, dict) and grad["shape"] == shape, body
    return check


def send(host: str, port: int, raw: bytes, timeout: float = 30.0) -> tuple[int, bytes, float]:
    """Send raw bytes, read to EOF: ``(status, body, seconds)``; status 0 if none came."""
    start = time.perf_counter()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        try:
            sock.sendall(raw)
        except OSError:
            pass  # the server may answer (413) and close before the body is all sent
        chunks = []
        while True:
            try:
                chunk = sock.recv(1 << 20)
            except OSError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    data = b"".join(chunks)
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        status = 0
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return status, body, time.perf_counter() - start


def _unchunk(data: bytes) -> bytes:
    out, pos = [], 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            break
        size = int(data[pos:end].split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out.append(data[end + 2:end + 2 + size])
        pos = end + 2 + size + 2
    return b"".join(out)


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmRSS, VmHWM) of ``pid`` in MiB (0, 0 if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0, 0.0
    vals = {}
    for line in text.splitlines():
        if line.startswith(("VmRSS:", "VmHWM:")):
            key, value = line.split(":", 1)
            vals[key] = int(value.split()[0]) / 1024
    return vals.get("VmRSS", 0.0), vals.get("VmHWM", 0.0)
