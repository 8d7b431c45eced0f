"""An ONNX model in every shared store (memory, SQLite, Redis): one packed blob (the lowered
graph and the parameter bytes, its SHA-256 the graph id), rebuilt by a second cache that
never saw it (the tensors views of the stored bytes, counted in the L1 budget), and a
tampered or truncated blob dropped as corrupt, never served."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from service.engine import REGISTRY, Query, execute
from service.engine.ir import hash_canonical
from service.engine.limits import Limits
from service.engine.model import is_packed, unpack
from service.errors import NotFound
from service.store import GraphStore, MemoryStore, RedisStore, SQLiteStore
from service.store.cache import GraphCache
from tests.engine.onnx.models import model_bytes, ort_run, plan_of
from tests.redis_server import RedisServer

KINDS = ["memory", "sqlite", pytest.param("redis", marks=pytest.mark.redis)]
R = np.random.default_rng(5)
DATA = model_bytes([helper.make_node("Gemm", ["x", "W", "b"], ["h"], transB=1),
                    helper.make_node("Tanh", ["h"], ["y"])],
                   {"x": np.zeros((2, 3), np.float32)}, ["y"],
                   {"W": R.standard_normal((4, 3)).astype(np.float32),
                    "b": R.standard_normal(4).astype(np.float32)}, dims={"x": ["n", 3]})


@pytest.fixture(params=KINDS)
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], GraphStore]]:
    made: list[GraphStore] = []
    shared: dict[str, GraphStore] = {}

    def build() -> GraphStore:
        if request.param == "memory":  # one process: the same object is the shared store
            store = shared.setdefault("m", MemoryStore())
        elif request.param == "sqlite":
            store = SQLiteStore(tmp_path / "data")
        else:
            server: RedisServer = request.getfixturevalue("redis_server")
            store = RedisStore(server.url, timeout_ms=1000)
        made.append(store)
        return store

    yield build
    for store in made:
        store.close()


def _cache(store: GraphStore) -> GraphCache:
    return GraphCache(REGISTRY, Limits(), store=store)


def _register(cache: GraphCache) -> str:
    plan, created = cache.register("onnx:test", lambda: plan_of(DATA), kind="onnx")
    assert created
    return plan.graph_id


def test_a_second_cache_rebuilds_the_model(make: Callable[[], GraphStore]) -> None:
    gid = _register(_cache(make()))
    other = _cache(make())
    plan, cache = other.plan_for_id(gid)
    assert cache == "hit" and plan.model is not None and plan.graph_id == gid
    assert sorted(plan.model.parameters) == ["W", "b"]
    assert all(not a.flags.writeable for a in plan.model.parameters.values())
    x = R.standard_normal((5, 3)).astype(np.float32)
    out = execute(plan, {"x": x}, Query(wrt=(), dtype="float32")).output
    np.testing.assert_allclose(out, ort_run(DATA, {"x": x})[0], rtol=1e-5, atol=1e-6)
    # the tensors are held once (views of the stored bytes) and counted in the L1 budget
    assert plan.nbytes >= len(plan.model.blob) > plan.model.parameters["W"].nbytes
    assert other.nbytes >= plan.nbytes
    listed = other.list_graphs(None, 10)[0]
    assert [(g["graph_id"], g["kind"]) for g in listed] == [(gid, "onnx")]


def test_the_stored_blob_is_the_packed_model(make: Callable[[], GraphStore]) -> None:
    store = make()
    gid = _register(_cache(store))
    blob = store.get(gid)
    assert blob is not None and is_packed(blob) and hash_canonical(blob) == gid
    canonical, model = unpack(blob)
    assert canonical["output"] == "y" and model.outputs == ("y",) and model.dtype == "float32"


@pytest.mark.parametrize("damage", ["flip", "truncate", "rehash"])
def test_a_tampered_blob_is_dropped(make: Callable[[], GraphStore], damage: str) -> None:
    store = make()
    gid = _register(_cache(store))
    blob = bytearray(store.get(gid) or b"")
    if damage == "flip":
        blob[-3] ^= 0xFF  # a parameter byte: the hash no longer matches the id
    elif damage == "truncate":
        del blob[-8:]
    store.delete(gid)
    if damage == "rehash":  # well hashed under its own id, but not a model's form
        blob = bytearray(blob[:40] + b"x" + blob[41:])
        gid = hash_canonical(bytes(blob))
    store.put(gid, bytes(blob))
    with pytest.raises(NotFound):
        _cache(make()).plan_for_id(gid)
    assert store.get(gid) is None  # dropped as corrupt


@pytest.mark.parametrize("cut", [0, 10, 30, 100])
def test_unpack_refuses_anything_but_its_own_form(cut: int) -> None:
    blob = plan_of(DATA).model.blob
    with pytest.raises(ValueError):
        unpack(blob[:cut] if cut < 100 else blob + b"\x00")


def test_a_cast_copy_of_the_parameters_counts_in_the_l1_bytes() -> None:
    cache = GraphCache(REGISTRY, Limits(), store=MemoryStore())
    gid = _register(cache)
    plan, _ = cache.plan_for_id(gid)
    x = np.zeros((2, 3))
    execute(plan, {"x": x}, Query(wrt=(), dtype="float32"))
    before = cache.nbytes
    execute(plan, {"x": x}, Query(wrt=(), dtype="float64"))  # a float64 copy of W and b
    grown = cache.nbytes - before
    params = sum(a.nbytes for a in plan.model.parameters.values())
    assert grown >= 2 * params  # the float64 copies (and the new specialization)
    assert plan.nbytes >= len(plan.model.blob) + 2 * params


def _first_form(blob: bytes, misalign: bool = False) -> bytes:
    """``blob`` rewritten in the packing's first form: the tensors back to back, unpadded
    (what a store written before the tensors were aligned holds). ``misalign``: spaces
    after the JSON header put the first tensor at an odd address, as most such blobs had."""
    import orjson

    from service.engine.model import MAGIC, MAGIC_V1

    assert blob.startswith(MAGIC)
    n = int.from_bytes(blob[len(MAGIC):len(MAGIC) + 8], "little")
    start = len(MAGIC) + 8
    head = orjson.loads(blob[start:start + n])
    body_at = start + n + (-(start + n) % 64)
    raws, offset = [], 0
    for t in head["tensors"]:
        raws.append(blob[body_at + t["offset"]:body_at + t["offset"] + t["nbytes"]])
        t["offset"] = offset
        offset += t["nbytes"]
    header = orjson.dumps(head, option=orjson.OPT_SORT_KEYS)
    if misalign:
        header += b" " * ((1 - len(MAGIC_V1) - 8 - len(header)) % 8)
    return b"".join((MAGIC_V1, len(header).to_bytes(8, "little"), header, *raws))


def test_the_packed_tensors_are_aligned_views_of_the_blob() -> None:
    model = plan_of(DATA).model
    _, again = unpack(model.blob)
    base = np.frombuffer(again.blob, np.uint8).ctypes.data
    for name, arr in again.parameters.items():
        assert arr.flags.aligned and not arr.flags.writeable, name
        assert (arr.ctypes.data - base) % 64 == 0, name  # a multiple of 64 into the blob
        assert np.shares_memory(arr, np.frombuffer(again.blob, np.uint8)), name
    assert again.copied == 0 and again.nbytes == len(again.blob)


def test_a_blob_of_the_first_form_still_unpacks_its_tensors_aligned() -> None:
    model = plan_of(DATA).model
    old = _first_form(model.blob)
    assert is_packed(old) and len(old) < len(model.blob)
    canonical, again = unpack(old)
    assert canonical == unpack(model.blob)[0]
    for name, arr in again.parameters.items():
        np.testing.assert_array_equal(arr, model.parameters[name])
        assert arr.flags.aligned and not arr.flags.writeable, name
    # W (4x3 float32) sits at offset 48 of the old body: whatever was copied is counted
    assert again.nbytes == len(old) + again.copied


def test_the_unaligned_tensors_of_a_first_form_blob_are_copied_and_counted() -> None:
    model = plan_of(DATA).model
    old = _first_form(model.blob, misalign=True)
    _, again = unpack(old)
    held = np.frombuffer(again.blob, np.uint8)
    assert again.copied == sum(a.nbytes for a in again.parameters.values()) > 0
    for name, arr in again.parameters.items():
        assert arr.flags.aligned and not arr.flags.writeable, name
        assert not np.shares_memory(arr, held), name  # a copy of its own
        np.testing.assert_array_equal(arr, model.parameters[name])
    assert again.nbytes == len(old) + again.copied


@pytest.mark.parametrize("where", ["header", "tensor"])
def test_padding_that_is_not_zero_is_refused(where: str) -> None:
    blob = bytearray(plan_of(DATA).model.blob)
    _, model = unpack(bytes(blob))
    base = np.frombuffer(model.blob, np.uint8).ctypes.data
    first = min(a.ctypes.data - base for a in model.parameters.values())
    # the byte before the first tensor pads the header; the one before the last tensor
    # pads the first tensor out (b, 4 floats, then W at the next multiple of 64)
    at = first - 1 if where == "header" else max(
        a.ctypes.data - base for a in model.parameters.values()) - 1
    blob[at] = 1
    with pytest.raises(ValueError, match="padding|byte range"):
        unpack(bytes(blob))


def test_a_store_written_in_the_first_form_still_serves_its_model() -> None:
    store = MemoryStore()
    new = plan_of(DATA).model.blob
    old = _first_form(new)
    gid = hash_canonical(old)  # its own id: the bytes it was stored under
    store.put(gid, old)
    plan, cache = _cache(store).plan_for_id(gid)
    assert cache == "hit" and plan.graph_id == gid and plan.model is not None
    assert all(a.flags.aligned for a in plan.model.parameters.values())
    x = R.standard_normal((4, 3)).astype(np.float32)
    out = execute(plan, {"x": x}, Query(wrt=(), dtype="float32")).output
    np.testing.assert_allclose(out, ort_run(DATA, {"x": x})[0], rtol=1e-5, atol=1e-6)
    assert gid != hash_canonical(new)  # registering the model again packs the new form


def test_a_registered_model_runs_on_aligned_views_of_its_blob() -> None:
    model = plan_of(DATA).model  # what registration holds (and what bench.onnx runs)
    held = np.frombuffer(model.blob, np.uint8)
    for name, arr in model.parameters.items():
        assert arr.flags.aligned and np.shares_memory(arr, held), name
