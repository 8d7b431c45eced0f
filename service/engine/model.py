"""A model: a plan whose graph came with its own tensors (an imported ONNX model).

Some inputs of such a graph are **parameters** (float tensors the model carries: weights,
biases; used when a request does not give them, overridable by name, differentiable) and
some are **constants** (tensors the lowering needed as data: integer indices, a non-uniform
constant; never given by a request, never differentiated). Both are held, decoded once,
by a :class:`Model` attached to the plan (``plan.model``) and counted in the plan's bytes.

What a store holds for a model is one self-describing blob (:func:`pack`): a magic line, a
JSON header (the canonical graph, the model's words: inputs, outputs, dtype, opset, and
each tensor's name, shape, dtype and byte range), then the raw little-endian tensor bytes.
Its SHA-256 is the graph id, so the id hashes the lowered graph *and* the parameter bytes.
:func:`unpack` trusts nothing: lengths, dtypes, shapes and byte ranges are checked before
any array is made (``np.frombuffer`` on a view: no copy, no pickle).

:func:`prepare` is the one place where a request meets a model: ``wrt`` words
(``"inputs"``, ``"parameters"``, ``"all"``), the default dtype, parameter values filled in,
and ``output`` choosing another of the model's outputs (a plan compiled once per output).
It is idempotent, so a flow may call it before ``execute`` does.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

from service.engine import ir
from service.engine.errors import Detail, Unprocessable
from service.engine.loss import forward_resize

if TYPE_CHECKING:
    from service.engine.compiler import Plan
    from service.engine.query import Query

__all__ = ["MAGIC", "WRT_WORDS", "Model", "default_dtype", "is_packed", "load_packed",
           "output_plan", "pack", "prepare", "unpack"]

MAGIC = b"gradserve-model/1\n"
WRT_WORDS = ("inputs", "parameters", "all")
TENSOR_DTYPES = {"float32": np.dtype("<f4"), "float64": np.dtype("<f8"),
                 "int64": np.dtype("<i8"), "int32": np.dtype("<i4"), "bool": np.dtype("?")}
_HEADER = struct.Struct("<Q")
MAX_HEADER_BYTES = 64 << 20


@dataclass(eq=False)
class Model:
    """What a model adds to its plan: its tensors and its own words."""

    inputs: tuple[str, ...]  # the model's own inputs (a request gives these)
    outputs: tuple[str, ...]  # the model's outputs, the first one the graph's output
    dtype: str  # the model's element type: the default compute dtype
    opset: int
    parameters: dict[str, np.ndarray]  # float tensors: defaults, overridable, differentiable
    constants: dict[str, np.ndarray] = field(default_factory=dict)  # never given, never wrt
    # {"inputs"|"outputs": {name: {"shape": [int | symbol name | None], "dtype"}}}: the
    # model's declared signature (symbolic dims as their names), for listings and OIP
    signature: dict[str, Any] = field(default_factory=dict)
    blob: bytes = b""  # the packed form (what the store holds; its hash is the graph id)
    # The plans of this model for its other outputs, by output name.
    output_plans: dict[str, Plan] = field(default_factory=dict, repr=False)
    _cast: dict[str, dict[str, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def nbytes(self) -> int:
        """Bytes held in the worker: the packed blob (the tensors are views of it, or
        aligned copies where a view would be misaligned) and any copies cast to another
        dtype."""
        held = (*self.parameters.values(), *self.constants.values())
        own = {id(a) for a in held}
        copies = sum(a.nbytes for a in held if a.flags.owndata)
        cast = sum(a.nbytes for c in list(self._cast.values()) for a in c.values()
                   if id(a) not in own)
        return len(self.blob) + copies + cast

    def describe(self) -> dict[str, Any]:
        """``{name: {shape, dtype}}`` of every parameter (never the values)."""
        return {n: {"shape": list(a.shape), "dtype": str(a.dtype)}
                for n, a in sorted(self.parameters.items())}

    def tensors_in(self, dtype: str) -> tuple[dict[str, np.ndarray], int]:
        """Every parameter in ``dtype`` and every constant, cast once per dtype and kept;
        and the bytes this call added (a first cast to another dtype), else 0."""
        held = self._cast.get(dtype)
        if held is not None:
            return held, 0
        want = np.dtype(dtype)
        made = {n: (a if a.dtype == want else a.astype(want))
                for n, a in self.parameters.items()}
        made.update(self.constants)
        held = self._cast.setdefault(dtype, made)
        if held is not made:  # another thread cast it first
            return held, 0
        return held, sum(a.nbytes for n, a in made.items() if a is not self.parameters.get(
            n, a) and n not in self.constants)


# --- requests -------------------------------------------------------------------------------


def prepare(plan: Plan, values: Mapping[str, Any], query: Query
            ) -> tuple[Plan, Mapping[str, Any], Query]:
    """The plan, values and query a request runs, with a model's words resolved (see the
    module doc). For a plan without a model only ``wrt`` words and ``output`` change. The
    default dtype is the caller's (a flow passes a model's own when the request gives none:
    see :func:`default_dtype`)."""
    model = plan.model
    changes: dict[str, Any] = {}
    if query.output is not None:
        plan = output_plan(plan, query.output)
        changes["output"] = None
    if type(query.wrt) is str or (query.wrt is None and model is not None):
        changes["wrt"] = resolve_wrt_word(plan, query.wrt)
    if changes:
        query = replace(query, **changes)
    if model is not None:
        for i, name in enumerate(query.wrt or ()):
            if name in model.constants:
                raise Unprocessable(Detail("{wrt}: {name!q} is a constant of the model, not "
                                           "an input or a parameter", name=name),
                                    loc=("wrt", i))
        for name in values:
            if name in model.constants:
                raise Unprocessable(Detail("{values}: {name!q} is a constant of the model, "
                                           "not an input or a parameter", name=name),
                                    loc=("values", name))
        held, added = model.tensors_in(query.dtype)
        hook = plan.on_resize
        if added and hook is not None:  # a cast copy: counted in the plan cache's bytes
            hook(plan, added, 0)
        values = {**held, **values}
    return plan, values, query


def default_dtype(plan: Plan) -> str:
    """A plan's dtype when a request names none: a model's element type, else float64."""
    return plan.model.dtype if plan.model is not None else "float64"


def resolve_wrt_word(plan: Plan, word: str | None) -> tuple[str, ...]:
    """``wrt`` as a word: the model's inputs, its parameters or both (None: a model's
    default, its inputs). On a graph without a model, ``inputs`` and ``all`` mean every
    float input and ``parameters`` none."""
    model = plan.model
    floats = plan.float_inputs
    if word is None:
        word = "inputs"
    if word not in WRT_WORDS:
        raise Unprocessable(Detail("{wrt}: {word!q} is not a list of names or one of "
                                   "inputs, parameters, all", word=str(word)[:40]),
                            loc=("wrt",))
    if model is None:
        return () if word == "parameters" else floats
    params = tuple(n for n in floats if n in model.parameters)
    inputs = tuple(n for n in floats if n in model.inputs)
    return {"inputs": inputs, "parameters": params, "all": inputs + params}[word]


def output_plan(plan: Plan, name: str) -> Plan:
    """The plan of this model with ``name`` (another of its outputs) as the output,
    compiled once per output and kept on the model (its bytes count in the plan's)."""
    model = plan.model
    if name == plan.output:
        return plan
    if model is None or name not in model.outputs:
        outputs = ", ".join(model.outputs) if model is not None else plan.output
        raise Unprocessable(Detail("{output}: {name!q} is not an output of the graph "
                                   "(outputs: {outputs})", name=str(name)[:80],
                                   outputs=outputs), loc=("output",))
    derived = model.output_plans.get(name)
    if derived is not None:
        return derived
    from service.engine.compiler import compile_graph  # the same graph, another output

    graph = ir.graph_from_dict({**plan.canonical, "output": name})
    derived = compile_graph(graph, plan.registry)
    derived.graph_id = plan.graph_id
    derived.model = model
    derived.max_specializations = plan.max_specializations
    derived.on_resize = forward_resize(plan)
    with plan._lock:
        derived = model.output_plans.setdefault(name, derived)
    return derived


def load_packed(blob: bytes, registry: Any, limits: Any) -> Plan:
    """The plan of a packed model read back from a store (ValueError when the bytes are
    not a packed model; the graph is validated and compiled as any stored graph)."""
    from service.engine.compiler import compile_graph

    canonical, model = unpack(blob)
    plan = compile_graph(ir.graph_from_dict(canonical), registry, limits)
    return attach(plan, model)


def attach(plan: Plan, model: Model) -> Plan:
    """Make ``plan`` the plan of ``model``: its graph id the hash of the packed bytes."""
    plan.graph_id = ir.hash_canonical(model.blob)
    plan.model = model
    unknown = set(model.parameters) | set(model.constants) | set(model.inputs)
    if not unknown <= set(plan.inputs) or not set(model.outputs) <= {
            n["id"] for n in plan.canonical["nodes"]} | set(plan.inputs):
        raise ValueError("the model's names are not the graph's")
    return plan


# --- the packed form ------------------------------------------------------------------------


def pack(canonical: dict[str, Any], model: Model) -> bytes:
    """The store's bytes of a model (deterministic: sorted keys, tensors by name)."""
    tensors, chunks, offset = [], [], 0
    for kind, held in (("parameter", model.parameters), ("constant", model.constants)):
        for name in sorted(held):
            arr = np.asarray(held[name], order="C")  # (ascontiguousarray makes 0-d 1-d)
            dtype = _dtype_name(arr.dtype)
            raw = arr.astype(TENSOR_DTYPES[dtype], copy=False).tobytes()
            tensors.append({"name": name, "kind": kind, "dtype": dtype,
                            "shape": list(arr.shape), "offset": offset, "nbytes": len(raw)})
            chunks.append(raw)
            offset += len(raw)
    header = orjson.dumps({"graph": canonical, "inputs": list(model.inputs),
                           "outputs": list(model.outputs), "dtype": model.dtype,
                           "opset": model.opset, "signature": model.signature,
                           "tensors": tensors},
                          option=orjson.OPT_SORT_KEYS)
    return b"".join((MAGIC, _HEADER.pack(len(header)), header, *chunks))


def is_packed(blob: bytes) -> bool:
    return bytes(blob[:len(MAGIC)]) == MAGIC


def unpack(blob: bytes) -> tuple[dict[str, Any], Model]:
    """The canonical graph and the model of packed bytes; ValueError when they are not
    exactly what :func:`pack` writes."""
    view = memoryview(blob)
    start = len(MAGIC) + _HEADER.size
    if not is_packed(blob) or len(view) < start:
        raise ValueError("not a packed model")
    (n,) = _HEADER.unpack(view[len(MAGIC):start])
    if n > min(MAX_HEADER_BYTES, len(view) - start):
        raise ValueError("header length out of range")
    head = orjson.loads(view[start:start + n])
    body = view[start + n:]
    if not isinstance(head, dict) or not isinstance(head.get("tensors"), list):
        raise ValueError("bad header")
    held: dict[str, dict[str, np.ndarray]] = {"parameter": {}, "constant": {}}
    end = 0
    for t in head["tensors"]:
        arr, stop = _tensor(t, body, end)
        held[t["kind"]][t["name"]] = arr
        end = stop
    if end != len(body):
        raise ValueError("trailing bytes")
    model = Model(inputs=tuple(_names(head.get("inputs"))),
                  outputs=tuple(_names(head.get("outputs"))), dtype=str(head.get("dtype")),
                  opset=int(head.get("opset", 0)), parameters=held["parameter"],
                  constants=held["constant"], signature=head.get("signature") or {},
                  blob=bytes(blob))
    if model.dtype not in ("float32", "float64") or not model.outputs \
            or not isinstance(model.signature, dict):
        raise ValueError("bad model header")
    return head["graph"], model


def _tensor(t: Any, body: memoryview, expected_offset: int) -> tuple[np.ndarray, int]:
    if not isinstance(t, dict) or t.get("kind") not in ("parameter", "constant") \
            or t.get("dtype") not in TENSOR_DTYPES or not isinstance(t.get("name"), str):
        raise ValueError("bad tensor record")
    shape = t.get("shape")
    if not isinstance(shape, list) or len(shape) > ir.MAX_NDIM or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= ir.MAX_DIM
            for d in shape):
        raise ValueError("bad tensor shape")
    dtype = TENSOR_DTYPES[t["dtype"]]
    nbytes = math.prod(shape) * dtype.itemsize
    if t.get("offset") != expected_offset or t.get("nbytes") != nbytes \
            or expected_offset + nbytes > len(body):
        raise ValueError("bad tensor byte range")
    arr = np.frombuffer(body[expected_offset:expected_offset + nbytes], dtype=dtype)
    arr = arr.reshape(shape).astype(dtype.newbyteorder("="), copy=False)
    if not arr.flags.aligned:  # NumPy gives BLAS only aligned arrays: else its slow loops
        arr = arr.copy()  # (a misaligned float32 weight: a wide model's matmuls ~20x slower)
    arr.flags.writeable = False
    return arr, expected_offset + nbytes


def _names(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("bad name list")
    return value


def _dtype_name(dtype: np.dtype) -> str:
    for name, dt in TENSOR_DTYPES.items():
        if dt.kind == dtype.kind and dt.itemsize == dtype.itemsize:
            return name
    raise ValueError(f"a model tensor's dtype is one of {', '.join(TENSOR_DTYPES)}")
