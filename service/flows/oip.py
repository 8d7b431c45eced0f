"""The Open Inference Protocol's flow without Flask: a model is a registered graph.

Model metadata comes from the graph's declared inputs; an infer request is decoded by
:mod:`service.flows.oip_codec`, run through the one engine entry every endpoint uses
(:func:`run_engine`, the same ``execute`` call as ``POST /v1/gradients``, so results are
bit for bit the same), and its outputs encoded in OIP form.

Outputs: ``output`` (the graph's output) and ``grad:<input>`` for every differentiable
input; the optional input ``grad:output`` is the upstream gradient dL/d(output).
Precision: FP64 if any float input (or ``grad:output``) is FP64, else FP32.

An ONNX model (a plan with a model, engine/model.py) is the same with its own words: its
inputs as declared (a symbolic dim -1) in its element type, its parameters as *optional*
inputs (the model's own values when not sent), outputs ``output``, ``grad:<input>`` and
``grad:<parameter>``; by default the answer holds ``output`` and the inputs' gradients,
and a request that sends no float tensor computes in the model's element type.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.engine import Plan, Query, Result
from service.engine.model import default_dtype, prepare, resolve_wrt_word
from service.errors import NotFound, ProblemError, Unprocessable, UnsupportedMediaType
from service.flows import response_size
from service.flows.driver import Env
from service.flows.oip_codec import (
    FLOAT_TYPES,
    LABEL_TYPES,
    Decoded,
    decode_request,
    encode_response,
)

SERVER_NAME = "gradserve"
SERVER_VERSION = "0.1.0"  # the package's version (pyproject.toml)
EXTENSIONS = ["binary_tensor_data"]
MODEL_VERSION = "1"  # a graph's content is its id: a model has exactly one version
PLATFORM = "gradserve_graph"
OUTPUT = "output"
UPSTREAM = "grad:output"
GRAD = "grad:"


def server_metadata() -> dict[str, Any]:
    """``GET /v2``."""
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}


def _dims(shape: Sequence[int] | None) -> list[int]:
    """A declared shape as is; an undeclared one (any rank, any size) as ``[-1]``: OIP has
    no notation for "any rank", and the IR declares an input's shape fully or not at all."""
    return [-1] if shape is None else [int(d) for d in shape]


def check_version(name: str, version: str | None) -> None:
    """The version of a versioned path (``/v2/models/{name}/versions/{version}/...``): a
    model has exactly one, ``"1"``; another is a 404 (no such version of the model)."""
    if version is not None and version != MODEL_VERSION:
        raise NotFound(f"model '{name[:80]}' has no version '{version[:40]}': a model has "
                       f"exactly one version, '{MODEL_VERSION}'", loc=("model_version",))


def output_shape(plan: Plan) -> list[int]:
    """The output's shape when every input's shape is declared, else ``[-1]`` (unknown)."""
    shapes = {n: tuple(s) for n, s in plan.inputs.items() if s is not None}
    if len(shapes) != len(plan.inputs):
        return [-1]
    try:
        exe = plan.specialize(shapes, ())  # shape rules only: nothing is allocated
    except ProblemError:
        return [-1]
    return list(exe.output_shape)


def model_metadata(name: str, plan: Plan) -> dict[str, Any]:
    """``GET /v2/models/{name}``: inputs as declared (FP64 floats, INT64 labels; FP32 and
    INT32 are accepted too), outputs ``output`` and ``grad:<input>``."""
    if plan.model is not None:
        return _model_metadata(name, plan)
    inputs = [{"name": n, "datatype": "INT64" if n in plan.label_inputs else "FP64",
               "shape": _dims(plan.inputs[n])} for n in plan.input_order]
    outputs = [{"name": OUTPUT, "datatype": "FP64", "shape": output_shape(plan)}]
    outputs += [{"name": GRAD + n, "datatype": "FP64", "shape": _dims(plan.inputs[n])}
                for n in plan.float_inputs]
    return {"name": name, "versions": [MODEL_VERSION], "platform": PLATFORM,
            "inputs": inputs, "outputs": outputs}


def _signature_dims(dims: Sequence[Any] | None) -> list[int]:
    """A model's declared dims for OIP: a symbolic or unknown dim is -1."""
    if dims is None:
        return [-1]
    return [d if isinstance(d, int) else -1 for d in dims]


def _model_metadata(name: str, plan: Plan) -> dict[str, Any]:
    model = plan.model
    ftype = "FP32" if model.dtype == "float32" else "FP64"
    sig = model.signature
    shape_of = {n: _signature_dims(t.get("shape")) for n, t in sig.get("inputs", {}).items()}
    shape_of.update({n: list(a.shape) for n, a in model.parameters.items()})
    inputs = [{"name": n, "datatype": "INT64" if n in plan.label_inputs else ftype,
               "shape": shape_of.get(n, [-1])} for n in model.inputs]
    inputs += [{"name": n, "datatype": ftype, "shape": shape_of[n], "optional": True}
               for n in sorted(model.parameters)]
    out = sig.get("outputs", {}).get(plan.output, {}).get("shape")
    outputs = [{"name": OUTPUT, "datatype": ftype, "shape": _signature_dims(out)}]
    outputs += [{"name": GRAD + n, "datatype": ftype, "shape": shape_of.get(n, [-1])}
                for n in grad_names(plan)]
    return {"name": name, "versions": [MODEL_VERSION], "platform": PLATFORM,
            "inputs": inputs, "outputs": outputs}


def grad_names(plan: Plan) -> tuple[str, ...]:
    """The inputs a ``grad:<name>`` output may name: every differentiable input; for a
    model, its float inputs and its parameters (never a constant of the model)."""
    if plan.model is None:
        return plan.float_inputs
    return resolve_wrt_word(plan, "all")


def _default_grads(plan: Plan) -> tuple[str, ...]:
    return plan.float_inputs if plan.model is None else resolve_wrt_word(plan, "inputs")


#: OIP's datatype -> Triton's model configuration's ``data_type``.
CONFIG_TYPES = {"FP32": "TYPE_FP32", "FP64": "TYPE_FP64", "INT32": "TYPE_INT32",
                "INT64": "TYPE_INT64"}


def model_config(name: str, plan: Plan) -> dict[str, Any]:
    """``GET /v2/models/{name}/config``: a minimal Triton model configuration (what
    tritonclient's ``get_model_config`` returns), from the same tensors as the metadata."""
    meta = model_metadata(name, plan)

    def tensors(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"name": t["name"], "data_type": CONFIG_TYPES[t["datatype"]],
                 "dims": t["shape"], **({"optional": True} if t.get("optional") else {})}
                for t in items]

    return {"name": name, "platform": PLATFORM, "backend": SERVER_NAME,
            "version_policy": {"latest": {"num_versions": 1}}, "max_batch_size": 0,
            "input": tensors(meta["inputs"]), "output": tensors(meta["outputs"])}


#: At most this many models in ``POST /v2/repository/index``.
MAX_INDEX = 10_000


def repository_index(names: Sequence[str], body: Any) -> list[dict[str, str]]:
    """``POST /v2/repository/index``: the named models (a registered graph needs no
    loading: every one is READY). ``body``: the request's JSON, ``{}`` (also for an empty
    body) or ``{"ready": bool}`` (the ready filter changes nothing here)."""
    if not isinstance(body, dict):
        raise _bad("the body must be a JSON object, e.g. {} or {\"ready\": true}", "body")
    unknown = sorted(set(body) - {"ready"})
    if unknown:
        raise _bad(f"{unknown[0][:40]}: unknown field (the index takes only 'ready')",
                   unknown[0][:40])
    if "ready" in body:
        _flag(body["ready"], "ready")
    return [{"name": n, "version": MODEL_VERSION, "state": "READY"} for n in names]


def _bad(msg: str, *loc: str | int) -> Unprocessable:
    return Unprocessable(msg, loc=loc)


#: The engine's words for what OIP calls otherwise (errors are reworded with these).
WORDS = {"upstream": f"input '{UPSTREAM}'", "jacobian": f"output '{OUTPUT}'"}
LOCS = {"upstream": ("inputs", UPSTREAM)}


class InferFlow:
    """One ``POST /v2/models/{name}/infer``: the body (JSON, or JSON and binary tensors) and
    its ``Inference-Header-Content-Length``, as read by the HTTP layer."""

    __slots__ = ("name", "version", "body", "header_length", "content_encoding", "wanted",
                 "request_id", "decoded")

    def __init__(self, name: str, body: bytes | memoryview, header_length: str | None,
                 content_encoding: str = "identity", version: str | None = None) -> None:
        self.name = name
        self.version = version  # of a versioned path
        self.body = body
        self.header_length = header_length
        self.content_encoding = content_encoding
        self.wanted: list[tuple[str, bool]] = []  # (output, binary) in answer order
        self.request_id: str | None = None
        self.decoded: Decoded | None = None

    batchable = True  # a registered graph's, values decoded (dynamic batching)

    def resolve(self, env: Env) -> tuple[Plan, str]:
        found = env.cache.plan_for_id(env.cache.graph_id_of(self.name))
        check_version(self.name, self.version)
        return found

    def decode(self, env: Env) -> Decoded:
        """The body framed and decoded (once): a step request and an infer request read it
        the same way (``service.flows.oip_step`` looks at its parameters first)."""
        if self.decoded is None:
            encoding = self.content_encoding.strip().lower()
            if encoding not in ("", "identity"):
                raise UnsupportedMediaType(f"Content-Encoding {encoding[:20]!r} is not "
                                           "supported; send the body uncompressed")
            self.decoded = decode_request(
                self.body, self.header_length,
                max_elements=env.settings.limits.max_tensor_elements,
                limits=env.settings.limits)
            self.body = b""  # decoded: the arrays are what is kept
            self.request_id = self.decoded.request.id
        return self.decoded

    def bind(self, plan: Plan, env: Env) -> tuple[Mapping[str, Any], Query]:
        decoded = self.decode(env)
        _check_model(self.name, plan, decoded.request, env)
        batched, per_example = _batch_parameters(decoded.request.parameters or {})
        values, upstream, float_types = _inputs(self.name, plan, decoded, batched or ())
        self.wanted = _outputs(self.name, plan, decoded.request)
        wrt = tuple(w[len(GRAD):] for w, _ in self.wanted if w != OUTPUT)
        if plan.model is not None and not float_types:
            dtype = default_dtype(plan)
        else:
            dtype = "float64" if "FP64" in float_types or not float_types else "float32"
        query = Query(wrt=wrt, upstream=upstream, dtype=dtype, batched=batched,
                      per_example=per_example)
        if plan.model is not None:  # its parameters filled in (their shapes: the estimate)
            _, values, query = prepare(plan, values, query)
        return values, query

    def estimate(self, plan: Plan, values: Mapping[str, Any], query: Query, env: Env) -> None:
        shapes = {n: tuple(a.shape) for n, a in values.items()}
        limit = env.settings.max_response_bytes
        if query.batched:  # per example, B times (an upper bound: shared sums counted B times)
            size = next((s[0] for n, s in shapes.items() if n in query.batched and s), 1)
            shapes = {n: (s[1:] if n in query.batched and s else s) for n, s in shapes.items()}
            limit //= max(size, 1)
        response_size.check_oip(
            plan, shapes,
            [(w, None if w == OUTPUT else w[len(GRAD):], binary) for w, binary in self.wanted],
            query.dtype, limit,
            # an id's characters may be escaped
            header_bytes=len(self.name) + 6 * len(self.request_id or ""))

    def encode(self, plan: Plan, cache: str, result: Result, env: Env
               ) -> tuple[bytes, int | None]:
        """The response body and its JSON header's length (None when all of it is JSON)."""
        outputs = [(w, result.output if w == OUTPUT else result.gradients[w[len(GRAD):]],
                    binary) for w, binary in self.wanted]
        header: dict[str, Any] = {"model_name": self.name, "model_version": MODEL_VERSION}
        if self.request_id is not None:
            header["id"] = self.request_id
        return encode_response(header, outputs)

    def reword(self, err: ProblemError, env: Env) -> ProblemError:
        err.reword(WORDS, locs=LOCS)
        return err


def _check_model(name: str, plan: Plan, req: Any, env: Env) -> None:
    """KServe's SDK sends ``model_name`` (and may send ``model_version``) in the body: they
    must name the model of the path (its name, or its graph id) and its one version."""
    if req.model_name is not None and req.model_name != name:
        try:
            same = env.cache.graph_id_of(req.model_name) == plan.graph_id
        except NotFound:
            same = False
        if not same:
            raise _bad(f"model_name: '{req.model_name[:80]}' is not the model of the path, "
                       f"'{name[:80]}' (leave it out, or name the same model)", "model_name")
    if req.model_version not in (None, "", MODEL_VERSION):
        raise _bad(f"model_version: model '{name[:80]}' has no version "
                   f"'{req.model_version[:40]}': a model has exactly one version, "
                   f"'{MODEL_VERSION}'", "model_version")


def _inputs(name: str, plan: Plan, decoded: Decoded, batched: tuple[str, ...] = ()
            ) -> tuple[dict[str, np.ndarray], np.ndarray | None, set[str]]:
    """The model's input values, the upstream gradient (input 'grad:output') and the float
    datatypes sent (a ``batched`` input's shape is checked per example)."""
    values: dict[str, np.ndarray] = {}
    upstream: np.ndarray | None = None
    float_types: set[str] = set()
    for i, t in enumerate(decoded.inputs):
        if t.name in values or (t.name == UPSTREAM and upstream is not None):
            raise _bad(f"input '{t.name}' is given twice", "inputs", i, "name")
        if t.name in plan.inputs:
            declared = plan.inputs[t.name]
            if t.name in plan.label_inputs:
                if t.datatype not in LABEL_TYPES:
                    raise _bad(f"input '{t.name}' holds integer class labels: datatype must "
                               f"be INT64 or INT32, got {t.datatype}", "inputs", i, "datatype")
            elif t.datatype not in FLOAT_TYPES:
                raise _bad(f"input '{t.name}': datatype must be FP32 or FP64, got "
                           f"{t.datatype}", "inputs", i, "datatype")
            else:
                float_types.add(t.datatype)
            shape = t.array.shape[1:] if t.name in batched else t.array.shape
            if declared is not None and tuple(declared) != shape:
                each = " per example" if t.name in batched else ""
                raise _bad(f"input '{t.name}' has shape {list(shape)}{each}, model "
                           f"'{name}' takes {list(declared)}", "inputs", i, "shape")
            values[t.name] = t.array
        elif t.name == UPSTREAM:
            if t.datatype not in FLOAT_TYPES:
                raise _bad(f"input '{UPSTREAM}': datatype must be FP32 or FP64, got "
                           f"{t.datatype}", "inputs", i, "datatype")
            float_types.add(t.datatype)
            upstream = t.array
        else:
            known = ", ".join(_public_inputs(plan)) or "none"
            raise _bad(f"input '{t.name}' is not an input of model '{name}' (inputs: {known}; "
                       f"and '{UPSTREAM}' for the upstream gradient)", "inputs", i, "name")
    required = plan.model.inputs if plan.model is not None else plan.input_order
    missing = [n for n in required if n not in values]
    if missing:
        raise _bad(f"model '{name}' needs input '{missing[0]}' (missing: "
                   f"{', '.join(missing)})", "inputs")
    return values, upstream, float_types


def _public_inputs(plan: Plan) -> tuple[str, ...]:
    """What a request may send: the inputs (and a model's parameters), no constants."""
    model = plan.model
    if model is None:
        return plan.input_order
    return (*model.inputs, *sorted(model.parameters))


def _outputs(name: str, plan: Plan, req: Any) -> list[tuple[str, bool]]:
    """(output name, binary) of every output asked for, in the answer's order."""
    default_binary = _flag((req.parameters or {}).get("binary_data_output"),
                           "parameters.binary_data_output")
    if req.outputs is None:
        return [(OUTPUT, default_binary)] + [(GRAD + n, default_binary)
                                             for n in _default_grads(plan)]
    grads = grad_names(plan)
    grad_set = frozenset(grads)  # a set: O(1) per output, not O(inputs)
    wanted: list[tuple[str, bool]] = []
    asked: set[str] = set()
    for j, out in enumerate(req.outputs):
        if out.name != OUTPUT and not (out.name.startswith(GRAD)
                                       and out.name[len(GRAD):] in grad_set):
            avail = ", ".join([OUTPUT] + [GRAD + n for n in grads])
            raise _bad(f"output '{out.name}' is not an output of model '{name}' "
                       f"(outputs: {avail})", "outputs", j, "name")
        if out.name in asked:  # a set: 20,000 outputs are not 200 million comparisons
            raise _bad(f"output '{out.name}' is requested twice", "outputs", j, "name")
        asked.add(out.name)
        binary = (out.parameters or {}).get("binary_data")
        wanted.append((out.name, default_binary if binary is None else
                       _flag(binary, f"outputs.{j}.parameters.binary_data")))
    return wanted


def _batch_parameters(params: Mapping[str, Any]) -> tuple[tuple[str, ...] | None, bool]:
    """The request parameters ``batched`` (input names whose leading axis indexes the
    examples) and ``per_example``; ``directions`` needs tangents, which OIP has not."""
    if "directions" in params:
        raise _bad("parameters.directions: OIP requests carry no tangents or hvp "
                   "directions; use /v1/graphs/{graph_id}/gradients", "parameters",
                   "directions")
    batched = params.get("batched")
    if batched is not None and (not isinstance(batched, list) or len(batched) > 256
                                or not all(isinstance(n, str) for n in batched)):
        raise _bad("parameters.batched must be a list of input names", "parameters",
                   "batched")
    return (None if batched is None else tuple(batched),
            _flag(params.get("per_example"), "parameters.per_example"))


def _flag(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"{where} must be true or false, got {value!r}"[:200], *where.split("."))
    return value
