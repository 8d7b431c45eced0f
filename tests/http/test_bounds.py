"""The validation boundary: declared bounds on every list and map, the structural bound on
the raw bytes, bounded error lists, shapes checked before conversion, strict numbers."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
from typing import Annotated, Any

import pytest
from pydantic import BaseModel, Field

import schemas
import schemas.oip
from schemas.bounds import MaxItems, over_bound, unbounded
from service.engine.limits import Limits
from service.flows import bounds, codec
from service.http.body import MAX_ERRORS

SMALL = Limits(max_nodes=10, max_tensor_elements=1000)


def request_models() -> list[type[BaseModel]]:
    """Every model a request body is validated against: the ``*Request`` models of every
    module of ``schemas/`` (a new endpoint's model is found by its name, in whichever
    module it is written, with nothing to add here)."""
    found = {}
    for info in pkgutil.iter_modules(schemas.__path__):
        module = importlib.import_module(f"schemas.{info.name}")
        for name, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseModel) and name.endswith("Request"):
                found[name] = obj
    return list(found.values())


def test_every_list_and_map_of_every_request_model_declares_a_bound():
    models = request_models()
    assert {"GradientRequest", "MLPRequest", "InferRequest", "RegisterRequest",
            "MLPGraphRequest"} <= {m.__name__ for m in models}
    assert {m.__name__: unbounded(m) for m in models} == {m.__name__: [] for m in models}


def test_the_audit_finds_a_field_without_a_bound():
    class Options(BaseModel):
        names: list[str]
        nested: dict[str, Annotated[list[int], Field(max_length=3)]] | None = None
        fine: Annotated[list[str], MaxItems("max_nodes")] = []
        pair: tuple[float, float] | None = None  # a fixed length: bounded by its type
        many: tuple[float, ...] | None = None

    assert unbounded(Options) == ["Options.names", "Options.nested", "Options.many"]


def test_a_setting_bound_is_checked_before_pydantic_walks_an_item():
    limits = {"max_nodes": 10}
    assert over_bound(schemas.GradientRequest, {"wrt": [{}] * 11}, limits).loc == ("wrt",)
    assert over_bound(schemas.GradientRequest, {"wrt": [{}] * 10}, limits) is None
    found = over_bound(schemas.oip.InferRequest, {"inputs": [{}] * 12}, limits)
    assert found.loc == ("inputs",) and found.items == 12  # max_nodes + 1 ('grad:output')
    assert over_bound(schemas.oip.InferRequest, {"inputs": [{}] * 11}, limits) is None
    # A fixed-length list is Pydantic's (it checks the length before the items): not
    # walked, so 20,000 tensors in 'values' cost no step each here.
    assert over_bound(schemas.GradientRequest, {"values": {"x": {"shape": [1] * 33}}},
                      limits) is None
    # Inside a list of models: a map's bound (Pydantic would validate every entry first).
    found = over_bound(schemas.oip.InferRequest,
                       {"inputs": [{"name": "x", "parameters": dict.fromkeys("a" * 1 + "b")},
                                   {"parameters": {str(i): 1 for i in range(65)}}]}, limits)
    assert found.loc == ("inputs", 1, "parameters")
    # Not the declared kind: Pydantic's type error, not a bound's.
    assert over_bound(schemas.GradientRequest, {"wrt": "x" * 100, "values": [1] * 99},
                      limits) is None


@pytest.mark.parametrize("body,loc", [
    ({"expression": "x*y", "values": {"x": 1, "y": 2}, "wrt": [{}] * 50}, ["wrt"]),
    ({"expression": "x*y", "values": {"x": 1, "y": 2},
      "tangents": {f"n{i}": {} for i in range(50)}}, ["tangents"]),
    ({"expression": "x*y", "values": {f"n{i}": {} for i in range(50)}}, ["values"]),
    ({"graph": {"inputs": {f"n{i}": {} for i in range(50)}, "nodes": [], "output": "f"},
      "values": {}}, ["graph", "inputs"]),
])
def test_over_a_setting_bound_is_a_413_naming_it(make_app, body, loc):
    client = make_app(limits=SMALL).test_client()
    resp = client.post("/v1/gradients", json=body)
    assert resp.status_code == 413, resp.get_json()
    problem = resp.get_json()
    assert "GRADSERVE_MAX_NODES=10" in problem["detail"] and "50" in problem["detail"]
    assert problem["errors"][0]["loc"] == loc


def test_oip_inputs_and_outputs_over_the_bound_are_a_413(make_app):
    app = make_app(limits=SMALL)
    client = app.test_client()
    assert client.post("/v1/graphs", json={"expression": "sum(x*x)", "name": "sq"}
                       ).status_code in (200, 201)
    for field in ("inputs", "outputs"):
        body = {"inputs": [{"name": "x", "shape": [1], "datatype": "FP64", "data": [1]}]}
        body[field] = [{"name": f"n{i}"} for i in range(12)]
        resp = client.post("/v2/models/sq/infer", json=body)
        assert resp.status_code == 413, resp.get_json()
        assert "GRADSERVE_MAX_NODES" in resp.get_json()["error"]


def test_a_fixed_bound_is_a_422_as_pydantic_says_it(client):
    resp = client.post("/v1/gradients", json={"expression": "sum(x)", "values": {
        "x": {"shape": [1] * 40, "data": [1]}}})
    assert resp.status_code == 422
    assert resp.get_json()["errors"][0]["loc"] == ["values", "x", "flat", "shape"]
    assert "at most 32 items" in resp.get_json()["detail"]
    assert len(resp.get_json()["errors"]) == 1  # checked before the items: one error


def test_errors_are_listed_up_to_a_few_dozen_and_the_rest_counted(client):
    resp = client.post("/v1/gradients", json={"expression": "x*y", "values": {"x": 1, "y": 2},
                                             "wrt": [{}] * 5000})
    assert resp.status_code == 422
    problem = resp.get_json()
    assert len(problem["errors"]) == MAX_ERRORS
    assert f"(and 4,999 more; the first {MAX_ERRORS} are listed)" in problem["detail"]
    assert len(resp.data) < 8192
    few = client.post("/v1/gradients", json={"expression": "x*y", "values": {"x": 1, "y": 2},
                                            "wrt": [{}] * 3}).get_json()
    assert len(few["errors"]) == 3 and few["detail"].endswith("(and 2 more)")


# --- the structure of the raw bytes ---------------------------------------------------------


def test_the_container_bound_follows_the_settings():
    assert bounds.max_containers(SMALL) == 16 * 10 + 1000 // 16 + bounds.CONTAINERS_BASE
    assert bounds.count_containers(b'{"a": [[1], {"b": []}], "s": "[{"}') == 7
    view = memoryview(bytearray(b"[" * (3 << 20) + b"{"))
    assert bounds.count_containers(view) == (3 << 20) + 1


def _never_parsed(monkeypatch: pytest.MonkeyPatch, module: Any) -> list[int]:
    calls: list[int] = []
    real = module.orjson.loads
    monkeypatch.setattr(module.orjson, "loads", lambda b: calls.append(len(b)) or real(b))
    return calls


def test_a_body_of_tiny_containers_is_refused_before_it_is_parsed(make_app, monkeypatch):
    from service.http import body as body_module

    client = make_app(limits=SMALL).test_client()
    limit = bounds.max_containers(SMALL)
    calls = _never_parsed(monkeypatch, body_module)
    raw = b'{"expression":"sum(x)","values":{"x":[' + b",".join([b"[]"] * limit) + b"]}}"
    resp = client.post("/v1/gradients", data=raw, content_type="application/json")
    assert resp.status_code == 413 and calls == []
    detail = resp.get_json()["detail"]
    assert "GRADSERVE_MAX_NODES=10" in detail and "GRADSERVE_MAX_TENSOR_ELEMENTS" in detail
    assert "flat {shape, data}" in detail
    # Within the bound, the same form is parsed and answered.
    raw = b'{"expression":"sum(x)","values":{"x":[' + b",".join([b"[1]"] * 50) + b"]}}"
    resp = client.post("/v1/gradients", data=raw, content_type="application/json")
    assert resp.status_code == 200 and calls


@pytest.mark.parametrize("what,raw", [
    ("object keys", lambda n: b'{"expression":"x*y","values":{'
     + b",".join(b'"n%d":1' % i for i in range(n)) + b"}}"),
    ("string quotes", lambda n: b'{"expression":"x*y","values":{"x":1,"y":2},"wrt":['
     + b",".join([b'"x"'] * n) + b"]}"),
])
def test_a_body_of_many_keys_or_strings_is_refused_before_it_is_parsed(make_app, monkeypatch,
                                                                       what, raw):
    from service.http import body as body_module

    client = make_app(limits=SMALL).test_client()
    calls = _never_parsed(monkeypatch, body_module)
    limit = {w: n for _, n, w, _ in bounds.structure_limits(SMALL)}[what]
    resp = client.post("/v1/gradients", data=raw(limit + 1), content_type="application/json")
    assert resp.status_code == 413 and calls == [], resp.get_json()
    assert what in resp.get_json()["detail"] and "GRADSERVE_MAX_NODES=10" in \
        resp.get_json()["detail"]


def test_an_oip_header_of_tiny_containers_is_refused_before_it_is_parsed(make_app,
                                                                        monkeypatch):
    from service.flows import oip_codec

    client = make_app(limits=SMALL).test_client()
    client.post("/v1/graphs", json={"expression": "sum(x*x)", "name": "sq"})
    calls = _never_parsed(monkeypatch, oip_codec)
    raw = b'{"inputs":[' + b",".join([b"{}"] * bounds.max_containers(SMALL)) + b"]}"
    resp = client.post("/v2/models/sq/infer", data=raw, content_type="application/json")
    assert resp.status_code == 413 and calls == []
    assert "arrays and objects" in resp.get_json()["error"]


def test_a_legal_nested_tensor_fits_the_default_bound(client):
    # A (4096, 16) tensor in nested form: 4,097 containers, far within the default bound.
    resp = client.post("/v1/gradients", json={"expression": "sum(x)",
                                             "values": {"x": [[0.5] * 16] * 4096}})
    assert resp.status_code == 200


# --- shapes before conversion, types before sizes --------------------------------------------


def _conversions(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    real = codec._to_array
    monkeypatch.setattr(codec, "_to_array",
                        lambda data, *a, **k: sizes.append(len(data)) or real(data, *a, **k))
    return sizes


def test_a_tangent_of_the_wrong_shape_is_refused_before_it_is_converted(client, monkeypatch):
    sizes = _conversions(monkeypatch)
    resp = client.post("/v1/gradients", json={"expression": "sum(x*x)", "values": {"x": [1, 2]},
                                             "tangents": {"x": [0] * 100_000}})
    assert resp.status_code == 422
    assert resp.get_json()["errors"][0]["loc"] == ["tangents", "x"]
    assert "has shape (100000,), the input has (2,)" in resp.get_json()["detail"]
    assert 100_000 not in sizes and sizes == [2]  # the value only
    for wire in ({"shape": [100_000], "data": [0] * 100_000},
                 {"shape": [3], "dtype": "float64", "b64": "A" * 32}):
        resp = client.post("/v1/gradients", json={
            "expression": "sum(x*x)", "values": {"x": [1, 2]}, "hvp": {"x": wire}})
        assert resp.status_code == 422 and "the input has (2,)" in resp.get_json()["detail"]
    # The right shape still answers.
    resp = client.post("/v1/gradients", json={"expression": "sum(x*x)", "values": {"x": [1, 2]},
                                             "tangents": {"x": [1, 0]}})
    assert resp.status_code == 200 and resp.get_json()["jvp"] == 2.0


def test_a_value_of_another_shape_than_declared_is_refused_before_it_is_converted(
        client, monkeypatch):
    sizes = _conversions(monkeypatch)
    graph = {"inputs": {"x": {"shape": [2]}}, "nodes": [{"id": "f", "op": "sum", "args": ["x"]}],
             "output": "f"}
    resp = client.post("/v1/gradients", json={"graph": graph, "values": {"x": [0] * 50_000}})
    assert resp.status_code == 422 and sizes == []
    assert "the graph declares (2,)" in resp.get_json()["detail"]


def test_a_null_filled_tensor_is_a_type_error_whatever_its_size(make_app):
    client = make_app(limits=SMALL).test_client()
    for upstream in ([None] * 5000, [[None] * 100] * 100, {"shape": [5000], "data": [None] * 5000},
                     [["a"] * 10] * 10):
        resp = client.post("/v1/gradients", json={"expression": "x*2", "values": {"x": [1, 2]},
                                                 "upstream": upstream})
        assert resp.status_code == 422, resp.get_json()
        assert "must hold only numbers" in resp.get_json()["detail"]
    # Numbers past the size limit stay a 413.
    resp = client.post("/v1/gradients", json={"expression": "x*2", "values": {"x": [1, 2]},
                                             "upstream": [0.0] * 5000})
    assert resp.status_code == 413


# --- strict numbers --------------------------------------------------------------------------


LAYER = {"weight": [[1.0, 2.0]], "bias": [0.0]}
MSE = {"type": "mse", "targets": [0.0]}


@pytest.mark.parametrize("path,body,loc", [
    ("/v1/mlp/gradients", {"layers": [LAYER], "inputs": [1.0, 2.0], "loss": MSE, "l2": False},
     ["l2"]),
    ("/v1/mlp/gradients", {"layers": [LAYER], "inputs": [1.0, 2.0], "loss": MSE, "l2": "0.1"},
     ["l2"]),
    ("/v1/gradients", {"expression": "sum(x)", "values": {
        "x": {"shape": [True, 2], "data": [1, 2]}}}, ["values", "x", "flat", "shape", 0]),
    ("/v1/gradients", {"expression": "sum(x)", "values": {
        "x": {"shape": [2.5], "data": [1, 2]}}}, ["values", "x", "flat", "shape", 0]),
    ("/v1/gradients", {"expression": "sum(x)", "values": {
        "x": {"shape": ["2"], "data": [1, 2]}}}, ["values", "x", "flat", "shape", 0]),
    ("/v1/mlp/graphs", {"layers": [{"in_features": True, "out_features": 1}]},
     ["layers", 0, "in_features"]),
])
def test_a_bool_or_a_string_is_not_a_number(client, path, body, loc):
    resp = client.post(path, json=body)
    assert resp.status_code == 422, resp.get_json()
    assert resp.get_json()["errors"][0]["loc"] == loc


def test_numbers_are_still_numbers(client):
    resp = client.post("/v1/mlp/gradients", json={"layers": [LAYER], "inputs": [1.0, 2.0],
                                                 "loss": MSE, "l2": 1})
    assert resp.status_code == 200
    resp = client.post("/v1/gradients", json={"expression": "sum(x)", "values": {
        "x": {"shape": [2], "data": [1, 2]}}})
    assert resp.status_code == 200 and json.loads(resp.data)["output"] == 3.0


def test_an_oip_error_never_echoes_a_huge_key(client):
    client.post("/v1/graphs", json={"expression": "sum(x*x)", "name": "sq"})
    key = "k" * 1_000_000
    resp = client.post("/v2/models/sq/infer", json={"inputs": [], key: 1})
    assert resp.status_code == 422 and len(resp.data) < 1024, resp.data[:200]


def _lax_numbers(tp: Any, where: str, out: list[str], seen: set[Any]) -> None:
    """Every int or float in ``tp`` without ``Strict()`` (Pydantic's lax mode takes true as
    1 and "2" as 2), except a tensor's scalar form (its discriminator refuses a bool)."""
    from typing import Union, get_args, get_origin

    from pydantic import Strict, Tag

    metadata: list[Any] = []
    while get_origin(tp) is Annotated:
        metadata += list(tp.__metadata__)
        tp = get_args(tp)[0]
    if any(isinstance(m, Tag) and m.tag == "scalar" for m in metadata):
        return
    if tp in (int, float):
        if not any(isinstance(m, Strict) or getattr(m, "strict", None) for m in metadata):
            out.append(where)
        return
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        if tp in seen:
            return
        seen.add(tp)
        for name, info in tp.model_fields.items():
            ann = Annotated[(info.annotation, *info.metadata)] if info.metadata else \
                info.annotation
            _lax_numbers(ann, f"{tp.__name__}.{name}", out, seen)
        return
    if get_origin(tp) in (Union, list, dict, tuple) or type(tp).__name__ == "UnionType":
        for arg in get_args(tp):
            _lax_numbers(arg, where, out, seen)


def test_every_number_of_every_request_model_is_strict():
    class Lax(BaseModel):
        rate: float = 0.0
        dims: list[Annotated[int, Field(ge=0)]] = []

    found: list[str] = []
    _lax_numbers(Lax, "Lax", found, set())
    assert found == ["Lax.rate", "Lax.dims"]  # the audit sees what it must
    for model in request_models():
        lax: list[str] = []
        _lax_numbers(model, model.__name__, lax, set())
        assert lax == [], f"{model.__name__}: lax numbers at {lax}"


def test_an_object_with_many_unknown_keys_is_one_422_not_one_error_each(client):
    few = client.post("/v1/gradients", json={"expression": "x", "values": {"x": 1},
                                            "wrtt": ["x"]}).get_json()
    assert "did you mean 'wrt'" in few["detail"]  # a misspelling still gets its hint
    body = {"expression": "x", "values": {"x": 1}, **{f"k{i}": 1 for i in range(10_000)}}
    resp = client.post("/v1/gradients", json=body)
    assert resp.status_code == 422 and len(resp.get_json()["errors"]) == 1
    assert "10,002 fields" in resp.get_json()["detail"]
    # Inside a map of tensors too: a flat tensor of 5,000 keys.
    resp = client.post("/v1/gradients", json={"expression": "sum(x)", "values": {
        "x": {"shape": [1], "data": [1], **{f"k{i}": 1 for i in range(5000)}}}})
    assert resp.status_code == 422 and resp.get_json()["errors"][0]["loc"] == ["values", "x"]


def test_a_nested_object_is_bounded_by_its_own_fields():
    limits = {"max_nodes": 10}
    loss = {"type": "mse", "targets": {"shape": [1], "data": [0], **dict.fromkeys("abcdefghij")}}
    found = over_bound(schemas.MLPRequest, {"loss": loss}, limits)
    assert found.loc == ("loss", "targets") and found.what == "fields"
    found = over_bound(schemas.MLPRequest, {"loss": dict.fromkeys("abcdefghijk")}, limits)
    assert found.loc == ("loss",) and found.what == "fields"


def test_an_integral_float_is_a_json_integer(client):
    """JSON Schema's "integer" (what the OpenAPI document says a dimension is) takes 2.0:
    a client whose encoder writes floats gets its answer."""
    resp = client.post("/v1/gradients", json={"expression": "sum(x)", "values": {
        "x": {"shape": [2.0], "data": [1, 2]}}})
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["gradients"]["x"] == [1.0, 1.0]
