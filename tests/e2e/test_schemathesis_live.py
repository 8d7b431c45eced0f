"""schemathesis with every check it has (positive-data acceptance and negative-data rejection
included) against a real gunicorn serving the app's own /openapi.json: over 1,000 cases
across every operation, derandomized, with a fixed budget per operation.

Negative cases are schemathesis' own: bodies that break the schema must be refused (4xx).
413 counts as refusing: a body whose declared sizes are over a limit is refused before its
form is looked at.

Positive cases: the schema says every rule JSON Schema can (the forms of a tensor, exactly
one of graph/expression/graph_id, exactly one of loss/upstream, l2 only with a loss), but
not the rules between values: a node argument names an input or node, shapes fit, nested
arrays are rectangular, a b64 string holds shape x dtype bytes, labels lie in range. So each
generated positive body keeps every choice schemathesis made (the graph form, the tensor
form of each value, dtype, encoding, trace/jacobian/check, wrt present or not, the number of
layers, activations, loss type, l2) and only the values are made to fit one another (the
``fit_*`` functions). Every such request must then be answered 2xx (or 404 for an unknown
graph id): the MLP and gradient compute paths are reached, and the test counts how often.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import Counter
from typing import Any

import numpy as np
import pytest
import requests
import schemathesis
import schemathesis.specs.openapi.checks  # noqa: F401 - registers the OpenAPI checks
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import CHECKS
from schemathesis.config import SchemathesisConfig
from schemathesis.generation.modes import GenerationMode

from tests.e2e.server import GunicornServer

pytestmark = pytest.mark.e2e

CONFIG = SchemathesisConfig.from_dict({"checks": {
    "negative_data_rejection": {"expected-statuses": ["400", "401", "404", "405", "413",
                                                      "414", "415", "422"]},
}})
ALL_CHECKS = CHECKS.get_all()
#: Cases per operation and mode. GET routes without parameters have one possible positive
#: case and no negative one; the others (six POSTs and three GETs with a path parameter)
#: get the budget.
BUDGET = {GenerationMode.POSITIVE: 65, GenerationMode.NEGATIVE: 65}
MIN_CASES = 1000


def _examples(n: int) -> settings:
    return settings(max_examples=n, derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


# --- making positive bodies fit ---------------------------------------------------------------


def _seed(value: Any) -> int:
    return int(hashlib.sha256(repr(value).encode()).hexdigest()[:8], 16)


def _as_form(arr: np.ndarray, like: Any) -> Any:
    """``arr`` in the tensor form of ``like`` (a generated tensor)."""
    if isinstance(like, dict) and "b64" in like:
        dtype = like.get("dtype") or "float64"
        raw = np.ascontiguousarray(arr, dtype="<f4" if dtype == "float32" else "<f8")
        return {**like, "shape": list(arr.shape), "b64": base64.b64encode(raw.tobytes()).decode()}
    if isinstance(like, dict):
        return {**like, "shape": list(arr.shape), "data": arr.ravel().tolist()}
    if isinstance(like, int | float) and not isinstance(like, bool) and arr.ndim == 0:
        return float(arr)
    return arr.tolist()


def _forms(generated: Any) -> list[Any]:
    """The tensor forms schemathesis chose in a mapping of tensors (nested lists if none)."""
    if isinstance(generated, dict) and generated:
        return list(generated.values())
    return [[0.0]]


#: Graphs whose values schemathesis cannot know: name -> (expression, graph spec, input shapes,
#: output shape).
GRAPHS = {
    "affine": ("sum(x * w) + b",
               {"inputs": {"x": {"shape": [3]}, "w": {}, "b": {"shape": []}},
                "nodes": [{"id": "p", "op": "mul", "args": ["x", "w"]},
                          {"id": "s", "op": "sum", "args": ["p"]},
                          {"id": "f", "op": "add", "args": ["s", "b"]}],
                "output": "f"},
               {"x": (3,), "w": (3,), "b": ()}, ()),
    "matmul": ("q = W @ x; f = sum(q ** 2)",
               {"inputs": {"W": {"shape": [2, 2]}, "x": {"shape": [2]}},
                "nodes": [{"id": "q", "op": "matmul", "args": ["W", "x"]},
                          {"id": "q2", "op": "square", "args": ["q"]},
                          {"id": "f", "op": "sum", "args": ["q2"]}],
                "output": "f"},
               {"W": (2, 2), "x": (2,)}, ()),
    "vector": ("tanh(x) * 2 + sigmoid(y)",
               {"inputs": {"x": {}, "y": {}},
                "nodes": [{"id": "t", "op": "tanh", "args": ["x"]},
                          {"id": "t2", "op": "mul", "args": ["t", 2]},
                          {"id": "s", "op": "sigmoid", "args": ["y"]},
                          {"id": "f", "op": "add", "args": ["t2", "s"]}],
                "output": "f"},
               {"x": (2, 3), "y": (3,)}, (2, 3)),
}
BY_ID_GRAPH = "(x + y) * z"
#: The by-id graph's model name on /v2 (model names generated for /v1/graphs are random).
MODEL_NAME = "schemathesis-neuron"


def _fit_options(body: dict[str, Any], shapes: dict[str, tuple[int, ...]],
                 out_shape: tuple[int, ...], rng: np.random.Generator) -> None:
    _no_batches(body)
    forms = _forms(body.get("values"))
    body["values"] = {name: _as_form(rng.uniform(-1, 1, shape), forms[i % len(forms)])
                      for i, (name, shape) in enumerate(shapes.items())}
    names = list(shapes)
    if body.get("wrt") is not None:
        body["wrt"] = names[: len(body["wrt"]) % (len(names) + 1)]
    wrt = names if body.get("wrt") is None else body["wrt"]
    # Directions over the graph's inputs (tangents) and over the wrt inputs (hvp), as many as
    # schemathesis generated (at least one), in its tensor forms.
    for key, over in (("tangents", names), ("hvp", wrt)):
        if body.get(key) is not None:
            forms = _forms(body[key])
            count = max(1, len(body[key])) if over else 0
            body[key] = {n: _as_form(rng.uniform(-1, 1, shapes[n]), forms[i % len(forms)])
                         for i, n in enumerate(over[:count])}
    second_order = body.get("hvp") is not None or bool(body.get("hessian"))
    if body.get("loss") is not None:
        # A loss of the output: mse against targets shaped like it (every graph takes one);
        # the objective is then the loss: no upstream, and the Jacobian (the output's) is
        # refused with it.
        like = body["loss"].get("targets", [0.0])
        body["loss"] = {"type": "mse", "targets": _as_form(rng.uniform(-1, 1, out_shape), like)}
        body["upstream"], body["jacobian"] = None, False
        return
    needs_upstream = out_shape != () and (
        (not body.get("jacobian") and body.get("wrt") != []) or second_order
        or bool(body.get("trace")) or bool(body.get("trace_backward")))
    if body.get("upstream") is not None or needs_upstream:
        like = body.get("upstream") if body.get("upstream") is not None else [0.0]
        body["upstream"] = _as_form(rng.uniform(-1, 1, out_shape), like)


def _no_batches(body: dict[str, Any]) -> None:
    """Batches change every value's shape (a leading B or K axis), and per_example needs
    batched: tests/flows/test_batched.py covers them against separate requests; here each
    example is one request. And 'output' picks another output of a model
    (tests/http/test_onnx_models.py)."""
    for key, off in (("batched", None), ("per_example", False), ("directions", None),
                     ("output", None)):
        if key in body:
            body[key] = off


def fit_gradients(body: dict[str, Any]) -> dict[str, Any]:
    """A generated /v1/gradients body with a known graph in the generated form."""
    _no_batches(body)
    if body.get("graph_id") is not None:
        return body  # an unknown id: 404 is the right answer
    seed = _seed(body)  # of the body as generated
    shapes, out_shape = _fit_graph(body, seed)
    _fit_options(body, shapes, out_shape, np.random.default_rng(seed))
    return body


def fit_register(body: Any) -> Any:
    if not isinstance(body, dict):
        # An application/onnx body: schemathesis checks a binary body's bytes against no
        # schema it can honour (a real model was reported as "schema-violating data
        # accepted"); ONNX registration has its own tests (tests/http/test_onnx_models.py,
        # the in-process schemathesis run with an ONNX strategy). Here: a JSON graph.
        body = {"expression": "x * 2"}
    body.pop("onnx", None)  # one graph form: a generated ONNX string is no model anyway
    _fit_graph(body, _seed(body))
    return body


def _fit_graph(body: dict[str, Any], seed: int) -> tuple[Any, Any]:
    """One of the known graphs (chosen by ``seed``) in the form the body was generated in;
    returns its input shapes and output shape."""
    expression, spec, shapes, out_shape = GRAPHS[sorted(GRAPHS)[seed % len(GRAPHS)]]
    if body.get("graph") is not None:
        body["graph"] = spec
    else:
        body["expression"] = expression
    return shapes, out_shape


def fit_by_id(body: dict[str, Any]) -> dict[str, Any]:
    _fit_options(body, {"x": (), "y": (), "z": ()}, (), np.random.default_rng(_seed(body)))
    return body


def fit_mlp_graph(body: dict[str, Any]) -> dict[str, Any]:
    """An MLP architecture whose widths chain (2..4 features, so the graph stays small)."""
    seed = _seed(body)
    layers = body["layers"][:4]
    sizes = [2 + (seed >> (2 * i)) % 3 for i in range(len(layers) + 1)]
    for i, layer in enumerate(layers):
        layer["in_features"], layer["out_features"] = sizes[i], sizes[i + 1]
    body["layers"] = layers
    return body


def fit_infer(body: dict[str, Any]) -> dict[str, Any]:
    """An OIP infer body for the model registered as MODEL_NAME ((x + y) * z): its three
    inputs as FP64 JSON data, the generated id and a subset of the outputs kept."""
    seed = _seed(body)
    names = ["output", "grad:x", "grad:y", "grad:z"]
    fitted: dict[str, Any] = {"inputs": [
        {"name": n, "shape": [], "datatype": "FP64", "data": [float(v)]}
        for n, v in zip("xyz", (-2.0, 5.0, -4.0), strict=True)]}
    if body.get("id") is not None:
        fitted["id"] = body["id"]
    if body.get("outputs"):
        fitted["outputs"] = [{"name": names[(seed + i) % 4]}
                             for i in range(min(len(body["outputs"]), 4))]
    return fitted


def fit_mlp(body: dict[str, Any]) -> dict[str, Any]:
    """Sizes that chain, targets and upstream that fit, in the generated forms."""
    seed = _seed(body)
    rng = np.random.default_rng(seed)
    layers = body["layers"][:4]
    sizes = [2 + (seed >> (2 * i)) % 3 for i in range(len(layers) + 1)]  # widths 2..4
    for i, layer in enumerate(layers):
        layer["weight"] = _as_form(rng.uniform(-1, 1, (sizes[i + 1], sizes[i])),
                                   layer["weight"])
        layer["bias"] = _as_form(rng.uniform(-1, 1, (sizes[i + 1],)), layer["bias"])
    body["layers"] = layers
    single = isinstance(body["inputs"], int | float) or (
        isinstance(body["inputs"], list) and not any(isinstance(v, list)
                                                     for v in body["inputs"]))
    x_shape = (sizes[0],) if single else (3, sizes[0])
    body["inputs"] = _as_form(rng.uniform(-1, 1, x_shape), body["inputs"])
    out_shape = (*x_shape[:-1], sizes[-1])
    loss = body.get("loss")
    if loss is not None:
        if loss["type"] == "mse":
            targets = rng.uniform(-1, 1, out_shape)
        else:
            targets = rng.integers(0, sizes[-1], () if single else (3,)).astype(float)
        loss["targets"] = _as_form(targets, loss["targets"])
        # Weight decay, kept small enough that the loss stays finite.
        if "l2" in body:
            body["l2"] = min(body["l2"], 10.0)
    else:
        body["upstream"] = _as_form(rng.uniform(-1, 1, out_shape), body["upstream"])
    return body


def _fit_step(body: dict[str, Any]) -> None:
    """A step's own fields: no state (the first step), a few steps, and hyperparameters
    that keep the updates finite (an lr of 1e308 is schema-valid and rightly a 422)."""
    body["state"] = None
    body["params"] = None
    body["steps"] = 1 + int(body.get("steps") or 1) % 3
    opt = body.get("optimizer") or {}
    for key, value in list(opt.items()):
        if isinstance(value, float) and key not in ("betas",):
            opt[key] = min(value, 0.5)
    if opt.get("eps") is not None:  # eps 0 with a zero second moment is 0/0 (a right 422)
        opt["eps"] = max(opt["eps"], 1e-8)
    if opt.get("nesterov"):  # torch's rule: momentum > 0 and no dampening
        opt["momentum"], opt["dampening"] = 0.9, 0.0
    if opt.get("type") == "sgd" and opt.get("lr") is None:
        opt["lr"] = 0.1  # SGD's lr is required (torch's default changed between versions)


def fit_mlp_step(body: dict[str, Any]) -> dict[str, Any]:
    fit_mlp(body)
    _fit_step(body)
    if "l2" in body:
        body["l2"] = min(body["l2"], 1.0)
    return body


def fit_graph_step(body: dict[str, Any]) -> dict[str, Any]:
    """The registered graph's scalar inputs, x updated, its scalar output the objective."""
    rng = np.random.default_rng(_seed(body))
    _fit_step(body)
    forms = _forms(body.get("values"))
    body["values"] = {n: _as_form(rng.uniform(-1, 1, ()), forms[i % len(forms)])
                      for i, n in enumerate(("x", "y", "z"))}
    body["params"] = ["x"]
    if body.get("loss") is not None:
        body["loss"] = {"type": "mse", "targets": float(rng.uniform(-1, 1))}
    return body


# --- the test --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server():
    with GunicornServer({"GRADSERVE_MAX_BODY_BYTES": str(1 << 20)}, workers=1,
                        threads=2) as srv:
        yield srv
        logs = srv.logs()
    assert "Traceback" not in logs and "unhandled error" not in logs


@pytest.fixture(scope="module")
def registered_id(server):
    status, _, raw = server.post("/v1/graphs", {"expression": BY_ID_GRAPH, "name": MODEL_NAME})
    assert status in (200, 201)
    return json.loads(raw)["graph_id"]


def _fitter(label: str, graph_id: str):
    bodies = {
        "POST /v1/gradients": fit_gradients,
        "POST /v1/graphs": fit_register,
        "POST /v1/graphs/{graph_id}/gradients": fit_by_id,
        "POST /v1/mlp/gradients": fit_mlp,
        "POST /v1/mlp/graphs": fit_mlp_graph,
        "POST /v1/mlp/step": fit_mlp_step,
        "POST /v1/graphs/{graph_id}/step": fit_graph_step,
    }

    def fit(case):
        if label in bodies:
            case.body = bodies[label](case.body)
            if isinstance(case.body, dict):
                case.media_type = "application/json"
        if label == "POST /v1/graphs" and isinstance(case.body, dict) \
                and case.body.get("name") is not None and case.query:
            case.query = {k: v for k, v in case.query.items() if k != "name"}  # one name
        if label in ("POST /v1/graphs/{graph_id}/gradients",
                     "POST /v1/graphs/{graph_id}/step") and _seed(case.body) % 4:
            # Mostly the registered graph (a 200); sometimes the generated id (a 404).
            case.path_parameters = {"graph_id": graph_id}
        if label == "GET /v1/graphs/{graph_id}" and _seed(case.path_parameters) % 2:
            case.path_parameters = {"graph_id": graph_id}
        if label == "POST /v2/models/{name}/infer":
            # Mostly the registered model with a body that fits it (a 200); otherwise a name
            # no test registers (a 404: a generated one may name a graph registered above).
            if _seed(case.path_parameters) % 4:
                case.path_parameters = {"name": MODEL_NAME}
                case.body = fit_infer(case.body if isinstance(case.body, dict) else {})
                case.media_type = "application/json"
            else:
                case.path_parameters = {"name": f"unknown-{_seed(case.path_parameters)}"}
        return case

    return fit


COUNTS: Counter[tuple[str, str, int]] = Counter()


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_live_server_conforms_to_its_openapi_document(server, registered_id, mode):
    schema = schemathesis.openapi.from_url(server.url + "/openapi.json", config=CONFIG)
    session = requests.Session()
    operations = [result.ok() for result in schema.get_all_operations()]
    # Every route but /openapi.json itself (schemathesis leaves the document it reads out).
    assert len(operations) >= 9, [op.label for op in operations]
    for operation in operations:
        label = operation.label
        strategy = operation.as_strategy(generation_mode=mode)
        if mode is GenerationMode.POSITIVE:
            strategy = strategy.map(_fitter(label, registered_id))

        @_examples(BUDGET[mode])
        @given(case=strategy)
        def run(case):
            response = case.call_and_validate(base_url=server.url, session=session,
                                              checks=ALL_CHECKS)
            COUNTS[(label, mode.value, response.status_code)] += 1

        try:
            run()
        except Unsatisfiable:
            # GET routes without parameters have nothing to make invalid.
            assert mode is GenerationMode.NEGATIVE and operation.method.upper() == "GET"
    per_op = Counter()
    for (label, m, _), n in COUNTS.items():
        if m == mode.value:
            per_op[label] += n
    print(f"\nschemathesis {mode.value} cases per operation:", dict(sorted(per_op.items())))
    print("by status:", {k: v for k, v in sorted(COUNTS.items()) if k[1] == mode.value})
    if mode is GenerationMode.POSITIVE:
        ok = {label: sum(n for (lb, m, s), n in COUNTS.items()
                         if lb == label and m == mode.value and s < 300) for label in per_op}
        # The compute paths are reached, not only refused: many fitted bodies are answered
        # (the graph_id form of /v1/gradients is a 404 by design: an unknown id).
        for label in ("POST /v1/gradients", "POST /v1/mlp/gradients",
                      "POST /v1/graphs/{graph_id}/gradients", "POST /v1/graphs"):
            assert ok[label] >= BUDGET[mode] // 3, (label, ok)
    if {m for _, m, _ in COUNTS} == {"positive", "negative"}:  # both modes ran
        total = sum(COUNTS.values())
        assert total >= MIN_CASES, (total, dict(COUNTS))
