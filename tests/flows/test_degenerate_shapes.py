"""Degenerate shapes at every op of the registry, through the HTTP app: never a 5xx.

Hypothesis draws, for each op (iterated from the registry, so a new op is covered without
editing this file): argument shapes that are 0-d, zero-size, full of broadcastable 1s or up
to the maximum number of dims; attrs of the op's kinds, valid or not; every tensor form on
the way in (nested, flat, b64) and every encoding and precision on the way out; gradients,
traces, Jacobians (with and without an upstream) and checks; inline graphs, registered
graphs by id. Every answer must be a 200 or a 4xx problem+json. Example counts are fixed,
so the whole file runs in seconds.
"""

from __future__ import annotations

import base64
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.engine import REGISTRY

MAX_NDIM = 32
MAX_ELEMENTS = 64  # payloads stay tiny: the point is the shapes, not the sizes

dims = st.sampled_from([0, 1, 1, 1, 2, 3])


@st.composite
def shapes(draw):
    kind = draw(st.sampled_from(["scalar", "small", "zero", "many", "max"]))
    if kind == "scalar":
        return []
    if kind == "max":
        ndim = MAX_NDIM
    elif kind == "many":
        ndim = draw(st.integers(4, MAX_NDIM))
    else:
        ndim = draw(st.integers(1, 3))
    shape = [draw(dims) for _ in range(ndim)]
    if kind == "zero" and 0 not in shape:
        shape[draw(st.integers(0, ndim - 1))] = 0
    if math.prod(shape) > MAX_ELEMENTS:  # keep the payload tiny: ones instead
        shape = [min(d, 1) for d in shape]
    return shape


def attr_value(kind: str):
    ints = st.integers(-MAX_NDIM - 2, MAX_NDIM + 2)
    return {
        "axis": st.one_of(st.none(), ints, st.lists(ints, max_size=4)),
        "axes": st.one_of(st.none(), st.lists(ints, max_size=MAX_NDIM + 1),
                          st.permutations(list(range(3)))),
        "shape": st.lists(st.sampled_from([-1, 0, 1, 2, 3, 2**40]), max_size=MAX_NDIM + 1),
        "ints": st.one_of(st.none(), st.lists(st.sampled_from([-3, -1, 0, 1, 2, 2**53]),
                                              max_size=2 * MAX_NDIM + 1)),
        "bool": st.booleans(),
        "float": st.floats(-10, 10),
        "int": ints,
        "float_or_null": st.one_of(st.none(), st.floats(-10, 10)),
        "choice": st.sampled_from([1, 2, 3, 2.0, "inf", "none", "tanh", "", "fro", None]),
        "int_or_ints": st.one_of(st.none(), ints, st.lists(st.integers(-2, 4), max_size=5)),
    }[kind]


def tensor(draw, shape, labels_for=None):
    n = math.prod(shape)
    if labels_for is not None:
        # Mostly valid class labels, now and then one out of range.
        top = max(labels_for - 1, 0) if draw(st.integers(0, 3)) else labels_for
        data = [draw(st.integers(0 if top < labels_for else -1, top)) for _ in range(n)]
        return np.array(data, dtype=np.int64).reshape(shape).tolist() if shape else data[0]
    data = draw(st.lists(st.floats(-3, 3, allow_nan=False, width=32), min_size=n, max_size=n))
    form = draw(st.sampled_from(["nested", "flat", "b64"]))
    if form == "b64":
        raw = np.array(data, dtype="<f8").tobytes()
        return {"shape": shape, "dtype": "float64", "b64": base64.b64encode(raw).decode()}
    if form == "flat" or not shape:
        return {"shape": shape, "data": data} if shape else (data[0] if data else 0.0)
    return np.array(data, dtype=np.float64).reshape(shape).tolist()


def fitting_shapes(rnd, op):
    """Argument shapes the op's own shape rule accepts, built from a pool of small dims
    (zeros likely), so that degenerate shapes reach the op's forward and VJPs, not only its
    shape check; failing that, :func:`like_a_domain_case`. Returns (shapes, attrs the shapes
    were checked with), or None when no try fits."""
    pool = [rnd.choice([0, 0, 1, 2, 3]) for _ in range(3)]
    for _ in range(100):
        cand = [tuple(rnd.choice(pool) for _ in range(rnd.randint(0, 3)))
                for _ in range(op.arity)]
        try:
            op.shape(*cand, **{a.name: a.default for a in op.attrs})
        except Exception:
            continue
        return [list(c) for c in cand], {}
    return like_a_domain_case(rnd, op)


def like_a_domain_case(rnd, op):
    """The op's first test-domain case (tests/engine/test_ops.py) with its dims renamed at
    random, one new size per old size (so a channel count still matches its weight's), and
    that case's attrs: how 4-d ops (conv2d, the pools) and ops whose arguments' shapes
    depend on each other (layer_norm, batch_norm) get shapes that fit."""
    from tests.engine.test_ops import DOMAINS, F

    case = DOMAINS[op.name][0]
    if not all(isinstance(a, F) for a in case.args):
        return None
    dims = sorted({d for a in case.args for d in a.shape})
    base = {a.name: a.default for a in op.attrs}
    for _ in range(100):
        rename = {d: rnd.choice([0, 1, 1, 2, 2, 3, d]) for d in dims}
        cand = [tuple(rename[d] for d in a.shape) for a in case.args]
        if any(math.prod(c) > MAX_ELEMENTS for c in cand):
            continue
        try:
            op.shape(*cand, **op.normalize_attrs(case.attrs))
        except Exception:
            continue
        return [list(c) for c in cand], {**base, **case.attrs}
    return None


@st.composite
def requests_for(draw, op):
    arg_shapes, fitted = None, None
    if draw(st.integers(0, 3)):  # mostly shapes that fit, some at random
        fitted = fitting_shapes(draw(st.randoms(use_true_random=False)), op)
    if fitted is not None:
        arg_shapes, base = fitted
    else:
        arg_shapes, base = [draw(shapes()) for _ in range(op.arity)], {}
    names = [f"a{i}" for i in range(op.arity)]
    values = {}
    for name, shape, kind in zip(names, arg_shapes, op.arg_kinds):
        classes = op.label_classes or (arg_shapes[0][-1] if arg_shapes[0] else None)
        classes = classes if kind == "label" else None
        values[name] = tensor(draw, shape, labels_for=classes if kind == "label" else None)
    attrs = {a.name: draw(attr_value(a.kind)) for a in op.attrs if draw(st.booleans())}
    if base and draw(st.booleans()):  # the attrs the fitting shapes were checked with
        attrs = {k: v for k, v in base.items() if v is not None}
    elif fitted is not None:  # a required attr (no default: kernel_size) from the fitting case
        attrs.update({a.name: base[a.name] for a in op.attrs
                      if a.default is None and base.get(a.name) is not None
                      and a.name not in attrs and draw(st.integers(0, 3))})
    node = {"id": "f", "op": op.name, "args": names, **({"attrs": attrs} if attrs else {})}
    reduce_to_scalar = draw(st.booleans())
    nodes = [node, {"id": "s", "op": "sum", "args": ["f"]}] if reduce_to_scalar else [node]
    graph = {"inputs": {n: {} for n in names}, "nodes": nodes,
             "output": "s" if reduce_to_scalar else "f"}
    body = {"values": values, "encoding": draw(st.sampled_from(["json", "b64"])),
            "dtype": draw(st.sampled_from(["float64", "float32"]))}
    flag = draw(st.sampled_from(["grad", "trace", "jacobian", "jacobian+upstream", "check"]))
    if flag in ("trace", "check"):
        body[flag] = True
    if flag.startswith("jacobian"):
        body["jacobian"] = True
    if flag in ("trace", "grad", "jacobian+upstream") and not reduce_to_scalar:
        body["upstream"] = tensor(draw, draw(shapes()))
    return graph, body, draw(st.booleans())


OPS = list(REGISTRY)


def test_every_op_is_covered():
    assert {op.name for op in OPS} >= {"add", "matmul", "reshape", "softmax", "hinge", "sum"}


@pytest.mark.parametrize("op", OPS, ids=[op.name for op in OPS])
def test_degenerate_shapes_never_5xx(client, op):
    seen: set[int] = set()

    @settings(max_examples=40, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(requests_for(op))
    def run(case):
        graph, body, by_id = case
        if by_id:
            reg = client.post("/v1/graphs", json={"graph": graph})
            assert reg.status_code < 500, (graph, reg.json)
            if reg.status_code >= 400:
                assert reg.content_type == "application/problem+json"
                return
            resp = client.post(f"/v1/graphs/{reg.json['graph_id']}/gradients", json=body)
        else:
            resp = client.post("/v1/gradients", json={"graph": graph, **body})
        seen.add(resp.status_code)
        assert resp.status_code < 500, (graph, body, resp.json)
        if resp.status_code >= 400:
            assert resp.content_type == "application/problem+json", resp.data[:200]
            assert len(resp.data) < 8192, "an error detail echoes unbounded input"

    run()
    # The draws reached the op's forward and backward, not only its shape check.
    assert 200 in seen, f"no degenerate case of '{op.name}' was computed: {sorted(seen)}"
