"""The validation boundary's attack classes, as raw requests (a helper, not a test).

Shared by ``tests/e2e/test_hostile_boundary.py`` (which asserts each one's bound: status, time,
worker RSS, against a real gunicorn) and ``bench/boundary.py`` (which prints the same figures,
also for older code). Each class is small on the wire and was, before the boundary's second
pass, far more expensive than its size: validation fan-out, estimates that multiply what the
engine deduplicates, parsing before any structural check, decoding before the shape check,
lenient numbers.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.e2e.resource_cases import http

MIB = 1 << 20
#: The OIP model every OIP case infers on (registered first: see :func:`setup_requests`).
MODEL = "hostile-sq"


@dataclass(frozen=True)
class Attack:
    """One class: how to build its body at a size, where to send it, and its bound."""

    name: str
    path: str
    build: Callable[[int], bytes]  # size in bytes (or items: see ``unit``) -> body
    size: int  # the size the test sends
    statuses: frozenset[int]  # right answers
    seconds: float  # the most the answer may take (a loaded machine: generous)
    rss_mib: float  # the most a worker's RSS may grow while it is served
    unit: str = "bytes"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _fill(head: bytes, item: bytes, tail: bytes, nbytes: int) -> bytes:
    """``head`` + ``item`` repeated (comma-separated) to about ``nbytes`` + ``tail``."""
    n = max(1, (nbytes - len(head) - len(tail)) // (len(item) + 1))
    return head + b",".join([item] * n) + tail


def wrt_objects(nbytes: int) -> bytes:
    """``wrt`` of ``{}`` objects: one validation error per item, before."""
    return _fill(b'{"expression":"x*y","values":{"x":1,"y":2},"wrt":[', b"{}", b"]}", nbytes)


def wrt_objects_n(n: int) -> bytes:
    """``n`` objects in ``wrt``: at the bound (max_nodes), Pydantic's errors, 40 listed."""
    return _dumps({"expression": "x*y", "values": {"x": 1, "y": 2}, "wrt": [{}] * n})


def value_objects_n(n: int) -> bytes:
    """``values`` of ``n`` names of ``{}`` (two errors each)."""
    return _dumps({"expression": "x*y", "values": {f"n{i}": {} for i in range(n)}})


def oip_objects_n(n: int) -> bytes:
    """OIP ``inputs`` of ``n`` ``{}`` (three errors each)."""
    return _dumps({"inputs": [{}] * n})


def tangent_names(n: int) -> bytes:
    """``tangents`` with ``n`` names of ``{}``: one error per name (two: shape, data)."""
    names = b",".join(b'"n%d":{}' % i for i in range(n))
    return b'{"expression":"x*y","values":{"x":1,"y":2},"tangents":{' + names + b"}}"


def oip_objects(nbytes: int) -> bytes:
    """OIP's JSON part ``{"inputs": [{}, {}, ...]}``: tiny containers, parsed whole before."""
    return _fill(b'{"inputs":[', b"{}", b"]}", nbytes)


def values_empty_lists(nbytes: int) -> bytes:
    """``values.x = [[], [], ...]``: a (N, 0) tensor, 2.5 GiB parsed, answered 200 before."""
    return _fill(b'{"expression":"sum(x)","values":{"x":[', b"[]", b"]}}", nbytes)


def value_scalar_names(nbytes: int) -> bytes:
    """``values`` of millions of ``"nK": 1``: two containers, millions of keys."""
    head, tail = b'{"expression":"x*y","values":{', b"}}"
    n = max(1, (nbytes - len(head) - len(tail)) // 13)
    return head + b",".join(b'"n%07d":1' % i for i in range(n)) + tail


def wrt_strings(nbytes: int) -> bytes:
    """``wrt`` of millions of ``"x"``: one container, millions of strings."""
    return _fill(b'{"expression":"x*y","values":{"x":1,"y":2},"wrt":[', b'"x"', b"]}", nbytes)


def hessian_dup_wrt(n: int) -> bytes:
    """``"wrt": ["x"] * n`` with ``hessian`` on x[2]: an estimate quadratic in len(wrt)."""
    return _dumps({"expression": "sum(x*x*x)", "values": {"x": [1.0, 2.0]},
                   "wrt": ["x"] * n, "hessian": True})


def b64_hessian_dup_wrt(n: int) -> bytes:
    """``"wrt": ["x"] * n`` on x[1024], Hessian in b64: an 11 MB answer, estimated at 11 TB."""
    return _dumps({"expression": "sum(x*x)", "values": {"x": {
        "shape": [1024], "data": [0.5] * 1024}}, "wrt": ["x"] * n, "hessian": True,
        "encoding": "b64"})


def tangent_zeros(n: int) -> bytes:
    """A tangent of ``n`` zeros for an x[2] input: decoded to float64 before the shape 422."""
    return (b'{"expression":"sum(x*x)","values":{"x":[1,2]},"tangents":{"x":['
            + b",".join([b"0"] * n) + b"]}}")


def null_upstream(n: int) -> bytes:
    """An ``upstream`` of ``n`` nulls: the type's 422, whatever its length."""
    return (b'{"expression":"x*2","values":{"x":[1,2]},"upstream":['
            + b",".join([b"null"] * n) + b"]}")


def mlp_l2_false(_: int) -> bytes:
    """``l2: false`` is not the number 0."""
    return _dumps({"layers": [{"weight": [[1.0, 2.0]], "bias": [0.0]}], "inputs": [1.0, 2.0],
                   "loss": {"type": "mse", "targets": [0.0]}, "l2": False})


def bool_dim(_: int) -> bytes:
    """A shape of ``[true, "2"]`` is not (1, 2)."""
    return _dumps({"expression": "sum(x)", "values": {"x": {"shape": [True, "2"],
                                                             "data": [1.0, 2.0]}}})


def attacks() -> list[Attack]:
    """Every class at the size the test sends (the bench may send others)."""
    r422, r413 = frozenset({422}), frozenset({413})
    return [
        Attack("wrt-objects", "/v1/gradients", wrt_objects, 2 * MIB, r413, 1.5, 150),
        Attack("wrt-objects-64mib", "/v1/gradients", wrt_objects, 63 * MIB, r413, 3.0, 300),
        Attack("tangent-names", "/v1/gradients", tangent_names, 500_000, r413, 2.0, 250,
               unit="names"),
        Attack("oip-objects", f"/v2/models/{MODEL}/infer", oip_objects, 63 * MIB, r413, 3.0,
               300),
        Attack("values-empty-lists", "/v1/gradients", values_empty_lists, 63 * MIB, r413, 3.0,
               300),
        Attack("value-scalar-names", "/v1/gradients", value_scalar_names, 32 * MIB, r413,
               3.0, 200),
        Attack("wrt-strings", "/v1/gradients", wrt_strings, 32 * MIB, r413, 3.0, 200),
        # At the bound (GRADSERVE_MAX_NODES = 20,000 names): the worst a request within the
        # bounds can make Pydantic do, answered with 40 errors and the count of the rest.
        Attack("wrt-objects-at-bound", "/v1/gradients", wrt_objects_n, 20_000, r422, 1.5, 60,
               unit="items"),
        Attack("value-objects-at-bound", "/v1/gradients", value_objects_n, 20_000, r422, 2.0,
               100, unit="names"),
        Attack("oip-objects-at-bound", f"/v2/models/{MODEL}/infer", oip_objects_n, 20_001,
               r422, 2.0, 100, unit="items"),
        Attack("hessian-dup-wrt", "/v1/gradients", hessian_dup_wrt, 3000,
               frozenset({200}), 1.5, 60, unit="wrt items"),
        Attack("b64-hessian-dup-wrt", "/v1/gradients", b64_hessian_dup_wrt, 1000,
               frozenset({200}), 5.0, 200, unit="wrt items"),
        # The parse of 16M JSON numbers is what any legal 32 MiB JSON tensor costs; what is
        # bounded here is the float64 copy, never made.
        Attack("tangent-zeros", "/v1/gradients", tangent_zeros, 1 << 24, r422, 3.0, 700,
               unit="zeros"),
        Attack("null-upstream", "/v1/gradients", null_upstream, 1 << 20, r422, 1.5, 150,
               unit="nulls"),
        Attack("mlp-l2-false", "/v1/mlp/gradients", mlp_l2_false, 0, r422, 1.0, 30,
               unit="-"),
        Attack("bool-dim", "/v1/gradients", bool_dim, 0, r422, 1.0, 30, unit="-"),
    ]


def setup_requests() -> list[bytes]:
    """What a server needs before the cases: the OIP model."""
    return [http("POST", "/v1/graphs", _dumps({"expression": "sum(x*x)", "name": MODEL}))]


def request(attack: Attack, size: int | None = None) -> bytes:
    """The raw HTTP request of ``attack`` at ``size`` (default: the test's)."""
    return http("POST", attack.path, attack.build(attack.size if size is None else size))
