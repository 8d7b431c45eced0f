"""``GET /v1/graphs/{graph_id}/onnx``: a registered graph written as an ONNX model.

The export runs no values, so it is not a :class:`~service.flows.driver.Flow` of the
driver's five steps: it resolves the graph as they do (``GraphCache.plan_for_id``), reads
the query's words into the engine's :class:`~service.engine.onnx.export.Export`, and
returns the serialized ``ModelProto``. An imported model's parameters and constants go
into the file as initializers (its parameters stay graph inputs too, so onnxruntime may be
given other values); its element type is the default dtype.
"""

from __future__ import annotations

from schemas import ExportQuery
from service.engine import Plan
from service.engine.ir import MAX_DIM, MAX_NDIM
from service.engine.onnx.export import Export, export_model
from service.errors import Unprocessable
from service.flows.driver import Env

#: ``wrt`` words that name a group of inputs rather than one (docs/api.md, "ONNX models").
WRT_WORDS = ("inputs", "parameters", "all")


def export_graph(graph_id: str, req: ExportQuery, env: Env) -> bytes:
    """The ONNX model of a registered graph, as ``req`` asks, serialized."""
    plan, cache = env.cache.plan_for_id(graph_id)
    env.note(plan.graph_id, cache)
    model = getattr(plan, "model", None)  # an imported ONNX model's tensors and words
    parameters = dict(getattr(model, "parameters", None) or {})
    constants = dict(getattr(model, "constants", None) or {})
    wrt = _wrt(req.wrt, tuple(n for n in plan.float_inputs if n not in constants),
               tuple(parameters))
    for name in wrt or ():
        if name in constants:
            raise Unprocessable(f"wrt: '{name[:64]}' is a constant of the model, not an input "
                                "or a parameter", loc=("wrt", name[:64]))
    spec = Export(
        shapes=model_shapes(plan, parse_shapes(req.shape)),
        gradients=req.gradients,
        wrt=wrt,
        loss=req.loss,
        dtype=req.dtype or getattr(model, "dtype", None) or "float64",
        tensors={**parameters, **constants},
        feedable=frozenset(parameters),
    )
    return export_model(plan, spec, env.settings.limits, env.deadline).SerializeToString()


def _wrt(text: str | None, floats: tuple[str, ...], parameters: tuple[str, ...]
         ) -> tuple[str, ...] | None:
    """``wrt`` names (comma-separated) or a word: ``inputs`` (the float inputs that are
    not parameters; every float input of a graph without parameters), ``parameters``,
    ``all``; None (not given): ``inputs``."""
    if text is None or text.strip() == "inputs":
        return tuple(n for n in floats if n not in parameters)
    word = text.strip()
    if word == "parameters":
        return parameters
    if word == "all":
        return floats
    names = tuple(n.strip() for n in text.split(","))
    if any(not n for n in names):
        raise Unprocessable(f"wrt: {text[:80]!r} has an empty name; give input names "
                            f"separated by commas, or one of {', '.join(WRT_WORDS)}",
                            loc=("wrt",))
    return names


def model_shapes(plan: Plan, given: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """An imported model's inputs as the model declares them: a fully static declared shape
    is the default; one with a symbolic dim (a batch) must be given, since an export is
    written for static shapes (a 422 saying how, with the static dims filled in)."""
    model = getattr(plan, "model", None)
    declared = (getattr(model, "signature", None) or {}).get("inputs") or {}
    out = dict(given)
    for name, decl in declared.items():
        dims = (decl or {}).get("shape") if isinstance(decl, dict) else None
        if name in out or plan.inputs.get(name) is not None or not isinstance(dims, list):
            continue
        if all(isinstance(d, int) and not isinstance(d, bool) for d in dims):
            out[name] = tuple(dims)
            continue
        example = ",".join(str(d) if isinstance(d, int) else "N" for d in dims)
        raise Unprocessable(f"shape: input '{name}' is declared {dims}, with a symbolic dim; an "
                            f"exported model has static shapes: give shape={name}:{example} "
                            "(N the size you will run it with)", loc=("shape", name))
    return out


def parse_shapes(items: list[str]) -> dict[str, tuple[int, ...]]:
    """``["x:2,3", "s:"]`` → ``{"x": (2, 3), "s": ()}``; a 422 naming the bad item."""
    out: dict[str, tuple[int, ...]] = {}
    for i, item in enumerate(items):
        name, sep, dims = item.partition(":")
        if not sep or not name:
            raise _bad_shape(i, item, "is not 'name:d0,d1,...'")
        try:
            shape = tuple(int(d) for d in dims.split(",")) if dims.strip() else ()
        except ValueError:
            raise _bad_shape(i, item, "has a dim that is not an integer") from None
        if len(shape) > MAX_NDIM or any(not 0 <= d <= MAX_DIM for d in shape):
            raise _bad_shape(i, item, f"needs at most {MAX_NDIM} dims, each in [0, 2^53]")
        if name in out:
            raise _bad_shape(i, item, f"gives input '{name[:64]}' a second shape")
        out[name] = shape
    return out


def _bad_shape(i: int, item: str, why: str) -> Unprocessable:
    return Unprocessable(f"shape: {item[:80]!r} {why}", loc=("shape", i))


__all__ = ["export_graph", "parse_shapes"]
