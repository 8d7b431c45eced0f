"""The encoded size of a response, estimated from shapes before anything is computed.

A 174 KB request can ask for a 384 MB answer (``trace: true`` on a broadcast, a Jacobian, the
gradient of an outer product in JSON). Each flow's ``estimate`` step calls
:func:`check_gradients` (or :func:`check_mlp`, :func:`check_oip`) once the input shapes are
known and before the engine runs: past ``GRADSERVE_MAX_RESPONSE_BYTES`` the answer is a 413
naming the setting, and nothing was allocated for it.

The estimate is an upper bound: every JSON number is counted at its longest form (25 bytes
for float64 as orjson writes it, 16 for float32), every nested array at its brackets, the
binary form at its exact base64 length.
"""

from __future__ import annotations

import math
import threading
import weakref
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from service.errors import LimitExceeded, Unprocessable

Shape = tuple[int, ...]
# The longest number orjson writes, plus its separator: -1.2345678901234567e-308, and
# -1.1754944e-38 for float32.
JSON_NUMBER_BYTES = {"float64": 25, "float32": 16}
ITEM_BYTES = {"float64": 8, "float32": 4}
RECORD_OVERHEAD = 96  # keys and punctuation of one tensor or trace record
WARNING_BYTES = 200  # one "... has non-finite values" warning per tensor at most


def tensor_bytes(shape: Sequence[int], encoding: str, dtype: str) -> int:
    """Upper bound of one tensor's encoded size in the response."""
    n = math.prod(shape)
    if encoding == "b64":
        return 4 * -(-n * ITEM_BYTES[dtype] // 3) + RECORD_OVERHEAD + 21 * len(shape)
    if not shape:
        return JSON_NUMBER_BYTES[dtype]
    if 0 in shape[:-1]:
        return RECORD_OVERHEAD + 21 * len(shape)  # the flat form {"shape", "data": []}
    # Every sub-array adds its brackets and a separator.
    arrays = sum(math.prod(shape[:k]) for k in range(len(shape)))
    return n * JSON_NUMBER_BYTES[dtype] + 3 * arrays


_HINT = "ask for fewer fields (trace, jacobian), fewer inputs in 'wrt', or 'encoding': 'b64'"


def _refuse(estimate: int, limit: int, hint: str = _HINT,
            loc: tuple[str, ...] = ("encoding",)) -> LimitExceeded:
    err = LimitExceeded("max_response_bytes", limit, estimate,
                        "the estimated response size in bytes", loc=loc)
    err.detail += f"; {hint}"
    err.args = (err.detail,)
    return err


# --- /v1/gradients ------------------------------------------------------------------------

# Per plan (weakly: a plan evicted from the cache takes its entries with it), per input
# shapes: (output shape, trace bytes per (encoding, dtype)). Small tuples only, a few per plan.
_MEMO: weakref.WeakKeyDictionary[Any, dict[Any, Any]] = weakref.WeakKeyDictionary()
_MEMO_PER_PLAN = 8
_LOCK = threading.Lock()
_COMBOS = (("json", "float64"), ("json", "float32"), ("b64", "float64"), ("b64", "float32"))


def _walk(plan: Any, shapes: Mapping[str, Shape]) -> tuple[Shape, dict[tuple[str, str], int]]:
    """Every node's shape from the op registry's shape rules; the output's shape and the
    encoded size of a trace. Raises on a shape error (the engine reports those)."""
    known: dict[str, Shape] = dict(shapes)
    trace = dict.fromkeys(_COMBOS, 0)
    for node in plan.nodes:
        arg_shapes = [known[a] if isinstance(a, str) else () for a in node.args]
        out = tuple(node.op.shape(*arg_shapes, **node.attrs))
        known[node.id] = out
        meta = RECORD_OVERHEAD + 2 * len(node.id) + len(node.op.name) + sum(
            len(a) + 3 if isinstance(a, str) else 26 for a in node.args)
        for combo in _COMBOS:
            trace[combo] += meta + 2 * tensor_bytes(out, *combo)
    return known[plan.output], trace


def _shapes_info(plan: Any, shapes: Mapping[str, Shape]
                 ) -> tuple[Shape, dict[tuple[str, str], int]] | None:
    key = tuple(sorted(shapes.items()))
    with _LOCK:
        per_plan = _MEMO.get(plan)
        if per_plan is not None and key in per_plan:
            return per_plan[key]
    try:
        info = _walk(plan, shapes)
    except Exception:  # noqa: BLE001 - a bad graph is the engine's to report, with its node
        return None
    with _LOCK:
        per_plan = _MEMO.setdefault(plan, {})
        per_plan[key] = info
        while len(per_plan) > _MEMO_PER_PLAN:
            per_plan.pop(next(iter(per_plan)))
    return info


def estimate_gradients(plan: Any, shapes: Mapping[str, Shape], *, wrt: Iterable[str] | None,
                       trace: bool, jacobian: bool, check: bool, encoding: str, dtype: str,
                       jvp: bool = False, hvp: bool = False, hessian: bool = False
                       ) -> int | None:
    """Upper bound of the encoded ``/v1/gradients`` response (docs/api.md §4), or None when the
    shapes do not fit the graph (the engine then answers the 422)."""
    info = _shapes_info(plan, shapes)
    if info is None:
        return None
    out_shape, trace_bytes = info
    # What the engine answers: each wrt input once (it deduplicates), so ["x"] * 3000 is x.
    names = [n for n in dict.fromkeys(plan.float_inputs if wrt is None else wrt)
             if n in shapes]
    total = 512 + tensor_bytes(out_shape, encoding, dtype)  # graph_id, cache, punctuation
    tensors = 1
    for name in names:
        total += len(name) + 8 + tensor_bytes(shapes[name], encoding, dtype)
        tensors += 1
        if jacobian:
            total += len(name) + 8 + tensor_bytes(out_shape + shapes[name], encoding, dtype)
            tensors += 1
        if check:
            total += len(name) + 80
        if hvp:
            total += len(name) + 8 + tensor_bytes(shapes[name], encoding, dtype)
            tensors += 1
            if check:
                total += len(name) + 80
    if hessian:
        total += hessian_bytes([shapes[n] for n in names], [len(n) for n in names],
                               encoding, dtype)
        tensors += len(names) ** 2
    if jvp:
        total += 16 + tensor_bytes(out_shape, encoding, dtype)
        tensors += 1
    if trace:
        total += trace_bytes[(encoding, dtype)]
        tensors += 2 * len(plan.nodes)
    return total + WARNING_BYTES * tensors


def _arrays(shape: Sequence[int]) -> int:
    """The nested arrays of a tensor written in JSON (one per index prefix)."""
    return sum(math.prod(shape[:k]) for k in range(len(shape)))


def hessian_bytes(shapes: Sequence[Shape], name_lengths: Sequence[int], encoding: str,
                  dtype: str) -> int:
    """Upper bound of every Hessian block ``hessian[a][b]`` (shape ``a + b``) over ``shapes``,
    in O(len(shapes)), not one :func:`tensor_bytes` per pair: block (a, b) holds
    ``n_a * n_b`` numbers, and in JSON ``arrays(a) + n_a * arrays(b)`` nested arrays."""
    m = len(shapes)
    sizes = [math.prod(s) for s in shapes]
    n_total, ndims = sum(sizes), sum(len(s) for s in shapes)
    keys = 2 * m * sum(name_lengths) + 16 * m * m  # both names and punctuation per block
    # A block's record, its shape's digits, its b64 padding: per pair, bounded by both ndims.
    fixed = m * m * (RECORD_OVERHEAD + 4) + 2 * m * 21 * ndims
    if encoding == "b64":
        return keys + fixed + -(-4 * n_total * n_total * ITEM_BYTES[dtype] // 3)
    arrays = sum(_arrays(s) for s in shapes)
    nested = 3 * (m + n_total) * arrays  # sum over (a, b) of arrays(a) + n_a * arrays(b)
    return keys + fixed + n_total * n_total * JSON_NUMBER_BYTES[dtype] + nested


def check_gradients(plan: Any, values: Mapping[str, Any], query: Any, encoding: str,
                    limit: int, limits: Any = None) -> int:
    """413 naming GRADSERVE_MAX_RESPONSE_BYTES when the answer to ``query`` (the engine's
    request spec) written in ``encoding`` would be bigger; else the estimate (0 when the
    shapes do not fit: the engine answers those).

    A Jacobian over the engine's own Jacobian limits (``limits``) is left to the engine,
    whose 413 names the more specific setting."""
    shapes = {name: tuple(getattr(v, "shape", ())) for name, v in values.items()}
    if getattr(query, "batched", None) is not None or getattr(query, "directions", None):
        return _check_batched(plan, shapes, query, encoding, limit)
    if query.jacobian:
        check_jacobian_dims(plan, shapes, query.wrt)
    if query.jacobian and limits is not None:
        info = _shapes_info(plan, shapes)
        if info is not None:
            rows = math.prod(info[0])
            names = plan.float_inputs if query.wrt is None else dict.fromkeys(query.wrt)
            entries = rows * sum(math.prod(shapes.get(n, ())) for n in names)
            if rows > limits.max_jacobian_rows or entries > limits.max_jacobian_elements:
                return 0
    estimate = estimate_gradients(plan, shapes, wrt=query.wrt,
                                  trace=query.trace or query.trace_backward,
                                  jacobian=query.jacobian, check=query.check,
                                  encoding=encoding, dtype=query.dtype,
                                  jvp=query.tangents is not None, hvp=query.hvp is not None,
                                  hessian=query.hessian)
    if estimate is not None and query.loss is not None:
        estimate += 32  # "loss": one number
    if estimate is not None and estimate > limit:
        raise _refuse(estimate, limit)
    return estimate or 0


def _check_batched(plan: Any, shapes: Mapping[str, Shape], query: Any, encoding: str,
                   limit: int) -> int:
    """``batched`` / ``directions``: the per-example answer's estimate times B (times K),
    the shared inputs' summed gradients once; with ``per_example`` (and for a Jacobian or
    Hessian, which come per example) every gradient B times, and a 413 names B ×
    parameters."""
    batched = tuple(query.batched or ())
    size = next((shapes[n][0] for n in batched if shapes.get(n)), 1)
    k = query.directions or 1
    ex = {n: (s[1:] if n in batched and s else s) for n, s in shapes.items()}
    if k > 1:
        ex = {n: (s[1:] if (n in (query.tangents or {}) or n in (query.hvp or {})) and s
                  and n not in batched else s) for n, s in ex.items()}
    wrt = [n for n in (plan.float_inputs if query.wrt is None else query.wrt) if n in ex]
    shared = [n for n in wrt if n not in batched]
    every = query.per_example or query.jacobian or query.hessian or not batched
    flags = dict(trace=False, jacobian=query.jacobian, check=False, encoding=encoding,
                 dtype=query.dtype, jvp=query.tangents is not None,
                 hvp=query.hvp is not None, hessian=query.hessian)
    per = estimate_gradients(plan, ex, wrt=wrt if every else
                             [n for n in wrt if n in batched], **flags)
    if per is None:
        return 0
    total = size * k * per
    if not every:
        total += sum(len(n) + 8 + WARNING_BYTES + tensor_bytes(ex[n], encoding, query.dtype)
                     for n in shared)
    if total > limit:
        params = sum(math.prod(ex[n]) for n in shared)
        hint = (f"per_example: B × parameters = {size} × {params}; ask for fewer inputs in "
                "'wrt', a smaller batch, or 'encoding': 'b64'") if query.per_example \
            else f"a batch of {size}{f' × {k} directions' if k > 1 else ''}: send fewer " \
                 "examples per request, or 'encoding': 'b64'"
        raise _refuse(total, limit, hint=hint,
                      loc=("per_example",) if query.per_example
                      else ("batched",) if batched else ("directions",))
    return total


# Per plan, per (wrt, encoding, dtype): the estimate of a plain answer to scalar values.
_SCALAR_MEMO: weakref.WeakKeyDictionary[Any, dict[Any, int]] = weakref.WeakKeyDictionary()


def check_scalar_gradients(plan: Any, query: Any, encoding: str, limit: int) -> int:
    """:func:`check_gradients` for a request that gives every input of ``plan`` (and no
    other name) a scalar and whose ``query.is_plain``: the same estimate, memoized per
    plan."""
    key = (query.wrt, encoding, query.dtype)
    memo = _SCALAR_MEMO.get(plan)
    estimate = None if memo is None else memo.get(key)
    if estimate is None:
        estimate = estimate_gradients(plan, dict.fromkeys(plan.inputs, ()), wrt=query.wrt,
                                      trace=False, jacobian=False, check=False,
                                      encoding=encoding, dtype=query.dtype) or 0
        with _LOCK:
            memo = _SCALAR_MEMO.setdefault(plan, {})
            if len(memo) >= _MEMO_PER_PLAN:
                memo.clear()
            memo[key] = estimate
    if estimate > limit:
        raise _refuse(estimate, limit)
    return estimate


def check_backward_trace(records: Sequence[Mapping[str, Any]], encoding: str, dtype: str,
                         limit: int, so_far: int = 0) -> None:
    """The backward graph's records (``trace_backward``) are known only once the engine has
    built them: their exact encoded size is checked before they are encoded (413 naming
    GRADSERVE_MAX_RESPONSE_BYTES), added to the estimate of the rest of the answer."""
    total = so_far
    for rec in records:
        total += RECORD_OVERHEAD + WARNING_BYTES + 2 * len(rec["id"]) + len(rec["op"]) + sum(
            len(a) + 3 for a in rec["args"]) + tensor_bytes(rec["shape"], encoding, dtype)
        if total > limit:
            raise _refuse(total, limit)


# NumPy's limit on dimensions (64 in NumPy 2, 32 in NumPy 1).
MAX_ARRAY_DIMS = getattr(np, "MAXDIMS", 64 if np.lib.NumpyVersion(np.__version__) >= "2.0.0"
                         else 32)


def check_jacobian_dims(plan: Any, shapes: Mapping[str, Shape], wrt: Iterable[str] | None
                        ) -> None:
    """A Jacobian has the output's dims plus the input's: a 422 where NumPy has too few."""
    info = _shapes_info(plan, shapes)
    if info is None:
        return
    for name in (plan.float_inputs if wrt is None else dict.fromkeys(wrt)):
        ndim = len(info[0]) + len(shapes.get(name, ()))
        if ndim > MAX_ARRAY_DIMS:
            raise Unprocessable(f"jacobian: d(output)/d({name[:128]}) would have {ndim} dims, "
                                f"more than the {MAX_ARRAY_DIMS} an array may have",
                                loc=("jacobian",))


# --- /v2/models/{name}/infer (the Open Inference Protocol) ----------------------------------


def check_oip(plan: Any, shapes: Mapping[str, Shape],
              outputs: Sequence[tuple[str, str | None, bool]], dtype: str, limit: int,
              header_bytes: int = 0) -> int:
    """413 naming GRADSERVE_MAX_RESPONSE_BYTES when an infer answer would be bigger; else the
    estimate (0 when the shapes do not fit the graph: the engine answers those).

    ``outputs``: (output name, the input whose gradient it is or None for the graph's output,
    binary) in response order. A binary output is counted at its exact size, a JSON one at
    the longest flat list of its numbers; ``header_bytes``: the header's other fields (the
    request's ``id``)."""
    info = _shapes_info(plan, shapes)
    if info is None:
        return 0
    total = 256 + header_bytes  # model name and version, punctuation
    for name, source, binary in outputs:
        shape = info[0] if source is None else shapes[source]
        n = math.prod(shape)
        total += RECORD_OVERHEAD + len(name) + 21 * len(shape)
        total += n * ITEM_BYTES[dtype] + 48 if binary else tensor_bytes((n,), "json", dtype)
    if total > limit:
        raise _refuse(total, limit, loc=("outputs",),
                      hint="ask for fewer outputs, or for binary ones "
                           "(parameters.binary_data_output)")
    return total


# --- /v1/mlp/gradients ----------------------------------------------------------------------


def estimate_mlp(sizes: Sequence[tuple[int, int]], input_shape: Shape, wrt: Iterable[str],
                 encoding: str, dtype: str, per_example: bool = False) -> int:
    """Upper bound of the encoded MLP response (docs/api.md §6): output, weight and bias
    gradients (one per example with ``per_example``), input gradient."""
    wrt = set(wrt)
    batch = input_shape[:-1]
    out = (*batch, sizes[-1][0]) if sizes else input_shape
    total = 512 + tensor_bytes(out, encoding, dtype)
    per = (math.prod(batch) or 1,) if per_example else ()
    if "weights" in wrt:
        for rows, cols in sizes:
            total += 2 * RECORD_OVERHEAD + tensor_bytes((*per, rows, cols), encoding, dtype) + \
                tensor_bytes((*per, rows), encoding, dtype)
    if "inputs" in wrt:
        total += tensor_bytes(input_shape, encoding, dtype)
    return total + WARNING_BYTES * (2 + 2 * len(sizes))


def check_mlp(sizes: Sequence[tuple[int, int]], input_shape: Shape, wrt: Iterable[str],
              encoding: str, dtype: str, limit: int, per_example: bool = False) -> None:
    estimate = estimate_mlp(sizes, input_shape, wrt, encoding, dtype, per_example)
    if estimate > limit:
        if per_example:
            b = math.prod(input_shape[:-1]) or 1
            params = sum(o * i + o for o, i in sizes)
            raise _refuse(estimate, limit, loc=("per_example",),
                          hint=f"per_example: B × parameters = {b} × {params}; send fewer "
                               "examples per request, or 'encoding': 'b64'")
        raise _refuse(estimate, limit)
