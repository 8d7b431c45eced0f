"""The Open Inference Protocol's flow without Flask: a model is a registered graph.

Model metadata comes from the graph's declared inputs; an infer request is decoded by
:mod:`service.oip_codec`, run through the one engine entry every endpoint uses
(:func:`run_engine`, the same ``execute`` call as ``POST /v1/gradients``, so results are
bit for bit the same), and its outputs encoded in OIP form.

Outputs: ``output`` (the graph's output) and ``grad:<input>`` for every differentiable
input; the optional input ``grad:output`` is the upstream gradient dL/d(output).
Precision: FP64 if any float input (or ``grad:output``) is FP64, else FP32.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from service import response_size
from service.config import Settings
from service.engine import Plan, Query, Result, execute
from service.engine.limits import Deadline
from service.errors import ProblemError, Unprocessable
from service.oip_codec import FLOAT_TYPES, LABEL_TYPES, Decoded, encode_response

SERVER_NAME = "gradserve"
SERVER_VERSION = "0.1.0"  # the package's version (pyproject.toml)
EXTENSIONS = ["binary_tensor_data"]
MODEL_VERSION = "1"  # a graph's content is its id: a model has exactly one version
PLATFORM = "gradserve_graph"
OUTPUT = "output"
UPSTREAM = "grad:output"
GRAD = "grad:"
# The engine's option names in OIP's words, for its errors (ProblemError.reword).
WORDS = {"upstream": f"input '{UPSTREAM}'", "jacobian": f"output '{OUTPUT}'"}
LOCS = {"upstream": ("inputs", UPSTREAM)}


def server_metadata() -> dict[str, Any]:
    """``GET /v2``."""
    return {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS}


def _dims(shape: Sequence[int] | None) -> list[int]:
    return [-1] if shape is None else [int(d) for d in shape]


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
    inputs = [{"name": n, "datatype": "INT64" if n in plan.label_inputs else "FP64",
               "shape": _dims(plan.inputs[n])} for n in plan.input_order]
    outputs = [{"name": OUTPUT, "datatype": "FP64", "shape": output_shape(plan)}]
    outputs += [{"name": GRAD + n, "datatype": "FP64", "shape": _dims(plan.inputs[n])}
                for n in plan.float_inputs]
    return {"name": name, "versions": [MODEL_VERSION], "platform": PLATFORM,
            "inputs": inputs, "outputs": outputs}


def run_engine(plan: Plan, values: dict[str, Any], *, wrt: Sequence[str],
               upstream: Any, dtype: str, settings: Settings,
               deadline: Deadline | None) -> Result:
    """The engine entry shared with ``/v1/gradients``: one ``execute`` with the same
    arguments, so an OIP request and a v1 request on the same values agree bit for bit."""
    return execute(plan, values, Query(wrt=wrt, upstream=upstream, dtype=dtype),
                   limits=settings.limits, deadline=deadline)


def _bad(msg: str, *loc: str | int) -> Unprocessable:
    return Unprocessable(msg, loc=loc)


def infer(name: str, plan: Plan, decoded: Decoded, settings: Settings,
          deadline: Deadline | None = None) -> tuple[bytes, int | None]:
    """Run an infer request; returns the response body and its JSON header's length (None
    when the whole body is JSON)."""
    req = decoded.request
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
            if declared is not None and tuple(declared) != t.array.shape:
                raise _bad(f"input '{t.name}' has shape {list(t.array.shape)}, model "
                           f"'{name}' takes {list(declared)}", "inputs", i, "shape")
            values[t.name] = t.array
        elif t.name == UPSTREAM:
            if t.datatype not in FLOAT_TYPES:
                raise _bad(f"input '{UPSTREAM}': datatype must be FP32 or FP64, got "
                           f"{t.datatype}", "inputs", i, "datatype")
            float_types.add(t.datatype)
            upstream = t.array
        else:
            known = ", ".join(plan.input_order) or "none"
            raise _bad(f"input '{t.name}' is not an input of model '{name}' (inputs: {known}; "
                       f"and '{UPSTREAM}' for the upstream gradient)", "inputs", i, "name")
    missing = [n for n in plan.input_order if n not in values]
    if missing:
        raise _bad(f"model '{name}' needs input '{missing[0]}' (missing: "
                   f"{', '.join(missing)})", "inputs")

    default_binary = _flag((req.parameters or {}).get("binary_data_output"),
                           "parameters.binary_data_output")
    wanted: list[tuple[str, bool]] = []
    if req.outputs is None:
        wanted = [(OUTPUT, default_binary)] + [(GRAD + n, default_binary)
                                               for n in plan.float_inputs]
    else:
        for j, out in enumerate(req.outputs):
            if out.name != OUTPUT and not (out.name.startswith(GRAD)
                                           and out.name[len(GRAD):] in plan.float_inputs):
                avail = ", ".join([OUTPUT] + [GRAD + n for n in plan.float_inputs])
                raise _bad(f"output '{out.name}' is not an output of model '{name}' "
                           f"(outputs: {avail})", "outputs", j, "name")
            if any(out.name == w for w, _ in wanted):
                raise _bad(f"output '{out.name}' is requested twice", "outputs", j, "name")
            binary = (out.parameters or {}).get("binary_data")
            wanted.append((out.name, default_binary if binary is None else
                           _flag(binary, f"outputs.{j}.parameters.binary_data")))

    wrt = [w[len(GRAD):] for w, _ in wanted if w != OUTPUT]
    dtype = "float64" if "FP64" in float_types or not float_types else "float32"
    # Before anything runs: an answer over GRADSERVE_MAX_RESPONSE_BYTES is a 413.
    response_size.check_oip(
        plan, {n: tuple(a.shape) for n, a in values.items()},
        [(w, None if w == OUTPUT else w[len(GRAD):], binary) for w, binary in wanted],
        dtype, settings.max_response_bytes,
        header_bytes=len(name) + 6 * len(req.id or ""))  # an id's characters may be escaped
    try:
        result = run_engine(plan, values, wrt=wrt, upstream=upstream, dtype=dtype,
                            settings=settings, deadline=deadline)
    except Unprocessable as exc:
        exc.reword(WORDS, locs=LOCS)  # say it in OIP's terms
        raise
    outputs = [(w, result.output if w == OUTPUT else result.gradients[w[len(GRAD):]], binary)
               for w, binary in wanted]
    header: dict[str, Any] = {"model_name": name, "model_version": MODEL_VERSION}
    if req.id is not None:
        header["id"] = req.id
    return encode_response(header, outputs)


def _flag(value: Any, where: str) -> bool:
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _bad(f"{where} must be true or false, got {value!r}"[:200], *where.split("."))
    return value
