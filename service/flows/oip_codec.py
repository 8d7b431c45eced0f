"""The Open Inference Protocol's body framing and tensor codec (no Flask, no engine).

An infer body is a JSON header, optionally followed by raw tensor bytes: the
``Inference-Header-Content-Length`` header gives the JSON's length, and each binary input
says how many of the following bytes are its own in ``parameters.binary_data_size``, in
input order. Decoding is one pass of checks over sizes and then zero-copy views:
``np.frombuffer`` into the received body (copied only when the offset leaves an element
misaligned). Every size is checked against the limits before NumPy allocates anything, and
any framing that does not add up is a 400 or 422, never a guess.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from pydantic import ValidationError

from schemas.oip import InferRequest
from service.engine.limits import DEFAULT_LIMITS, Limits
from service.errors import BadRequest, LimitExceeded, Unprocessable
from service.flows.bounds import check_bounds, check_structure
from service.flows.codec import nested_shape

#: OIP datatype -> little-endian NumPy dtype, for the types gradserve takes and returns.
DATATYPES = {"FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
             "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8")}
FLOAT_TYPES = ("FP32", "FP64")
LABEL_TYPES = ("INT64", "INT32")
HEADER_LENGTH = "Inference-Header-Content-Length"
_ORJSON_OPTS = orjson.OPT_SERIALIZE_NUMPY


@dataclass
class Tensor:
    """A decoded input: its OIP name and datatype, and the array (a view where possible)."""

    name: str
    datatype: str
    array: np.ndarray


@dataclass
class Decoded:
    """An infer request after framing and decoding."""

    request: InferRequest
    inputs: list[Tensor]


def _span(shape: Sequence[int]) -> int:
    # Zero-size shapes whose other dims overflow must not reach NumPy either (codec._span).
    return math.prod(max(d, 1) for d in shape)


ALIGN = 64  # bytes: every datatype's itemsize divides it, and it is a cache line


def is_count(text: str) -> bool:
    """Whether ``text`` is a byte count as HTTP writes one: 1 to 18 ASCII digits.
    (``str.isdigit`` also says yes to '²' and '١', which ``int`` then refuses or reads.)"""
    return 0 < len(text) <= 18 and text.isascii() and text.isdigit()


def oip_buffer(header_length: str | None) -> Callable[[int], memoryview]:
    """For a body of ``length`` bytes, one buffer placed so that its binary section (after
    ``header_length`` bytes of JSON) starts on an ``ALIGN``-byte boundary.

    The binary tensors are then views into this buffer whatever the JSON's length; a body
    read as ``bytes`` would leave them misaligned unless that length happened to be a
    multiple of the itemsize, and a misaligned tensor must be copied (NumPy runs matmul on
    misaligned data without BLAS). Reading in chunks into the buffer costs the same copy
    that joining the chunks into ``bytes`` would.
    """
    def allocate(length: int) -> memoryview:
        hl = header_length.strip() if header_length is not None else ""
        offset = int(hl) if is_count(hl) and int(hl) <= length else 0
        buf = np.empty(length + 2 * ALIGN, dtype=np.uint8)
        start = -buf.__array_interface__["data"][0] % ALIGN + (-offset % ALIGN)
        return memoryview(buf)[start:start + length]  # type: ignore[arg-type]

    return allocate


def split_body(body: bytes | memoryview, header_length: str | None
               ) -> tuple[memoryview, memoryview]:
    """(JSON header, binary section) of a body; the whole body is JSON without the header."""
    view = memoryview(body)
    if header_length is None:
        return view, view[len(view):]
    text = header_length.strip()
    if not is_count(text):
        raise BadRequest(f"{HEADER_LENGTH}: {header_length[:40]!r} is not a byte count")
    n = int(text)
    if n > len(body):
        raise BadRequest(f"{HEADER_LENGTH} is {n:,} but the body has only {len(body):,} "
                         "bytes")
    if n == 0:
        raise BadRequest(f"{HEADER_LENGTH} is 0: the JSON header cannot be empty")
    return view[:n], view[n:]


def parse_header(header: memoryview, limits: Limits = DEFAULT_LIMITS) -> InferRequest:
    """The JSON header as an :class:`InferRequest` (413 past the structural bounds of
    ``limits``, 400 if not JSON, 422 if not valid)."""
    check_structure(header, limits)
    try:
        raw = orjson.loads(header)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the inference header is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise Unprocessable("the inference header must be a JSON object", loc=())
    check_bounds(InferRequest, raw, limits)
    try:
        return InferRequest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_context=False, include_input=False)[0]
        # A loc holds the client's keys (an unknown field's name can be megabytes): cut.
        loc = tuple(p[:128] if isinstance(p, str) else p for p in first["loc"][:32])
        where = ".".join(str(p) for p in loc)
        more = exc.error_count() - 1
        raise Unprocessable(f"{where}: {first['msg'][:500]}"
                            + (f" (and {more:,} more)" if more else ""), loc=loc) from None
    except RecursionError:
        raise Unprocessable("the inference header is nested too deeply") from None


def decode_request(body: bytes | memoryview, header_length: str | None, *,
                   max_elements: int, limits: Limits = DEFAULT_LIMITS) -> Decoded:
    """Frame and decode an infer body; every input's array is checked and ready to run."""
    header, binary = split_body(body, header_length)
    req = parse_header(header, limits)
    # First pass over sizes only: the binary section must be exactly the sum of the
    # declared sizes before any tensor is looked at.
    sizes: list[int | None] = []
    for i, inp in enumerate(req.inputs):
        size = (inp.parameters or {}).get("binary_data_size")
        if size is not None and (isinstance(size, bool) or not isinstance(size, int)
                                 or size < 0):
            raise Unprocessable(f"input '{inp.name}': parameters.binary_data_size must be a "
                                f"byte count, got {size!r}",
                                loc=("inputs", i, "parameters", "binary_data_size"))
        sizes.append(size)
    declared = sum(s for s in sizes if s is not None)
    if declared != len(binary):
        what = "no binary input declares them" if declared == 0 else \
            f"the inputs' binary_data_size add up to {declared:,}"
        raise BadRequest(f"the body has {len(binary):,} bytes after the {len(header):,}-byte "
                         f"JSON header, but {what}")
    tensors: list[Tensor] = []
    offset = 0
    for i, (inp, size) in enumerate(zip(req.inputs, sizes)):
        loc = ("inputs", i)
        dtype = DATATYPES.get(inp.datatype)
        if dtype is None:
            raise Unprocessable(f"input '{inp.name}': datatype {inp.datatype[:20]!r} is not "
                                f"supported (use {', '.join(DATATYPES)})",
                                loc=(*loc, "datatype"))
        shape = tuple(inp.shape)
        if _span(shape) > max_elements:
            raise LimitExceeded("max_tensor_elements", max_elements, _span(shape),
                                f"input '{inp.name}' element count", loc=(*loc, "shape"))
        n = math.prod(shape)
        if n == 0:
            raise Unprocessable(f"input '{inp.name}': shape {list(shape)} has no elements; "
                                "gradserve takes no zero-size tensors", loc=(*loc, "shape"))
        if size is not None:
            if inp.data is not None:
                raise Unprocessable(f"input '{inp.name}': give either data or "
                                    "parameters.binary_data_size, not both", loc=loc)
            expected = n * dtype.itemsize
            if size != expected:
                raise Unprocessable(
                    f"input '{inp.name}': binary_data_size is {size:,} bytes but shape "
                    f"{list(shape)} of {inp.datatype} takes {expected:,}",
                    loc=(*loc, "parameters", "binary_data_size"))
            arr = np.frombuffer(binary, dtype=dtype, count=n, offset=offset).reshape(shape)
            if not arr.flags.aligned:
                arr = arr.copy()  # NumPy's kernels run unaligned data on slow paths
            offset += size
        else:
            arr = _from_json(inp.name, inp.data, shape, dtype, loc)
        if dtype.kind == "f" and not _all_finite(arr):
            raise Unprocessable(f"input '{inp.name}': non-finite numbers (NaN, Infinity) are "
                                "not allowed", loc=loc)
        tensors.append(Tensor(inp.name, inp.datatype, arr))
    return Decoded(req, tensors)


def _all_finite(arr: np.ndarray) -> bool:
    """Whether every element is finite. A NaN or infinity makes the dot product with itself
    non-finite, and BLAS computes it 3-4x faster than ``isfinite(arr).all()`` (which also
    allocates a boolean array); only when it overflows with finite values does the exact
    check run."""
    flat = arr.reshape(-1)
    with np.errstate(all="ignore"):
        if np.isfinite(np.dot(flat, flat)):
            return True
    return bool(np.isfinite(arr).all())


def _from_json(name: str, data: Any, shape: tuple[int, ...], dtype: np.dtype,
               loc: tuple[str | int, ...]) -> np.ndarray:
    n = math.prod(shape)
    if data is None:
        raise Unprocessable(f"input '{name}': no data (give data, or binary data with "
                            "parameters.binary_data_size)", loc=loc)
    if not isinstance(data, list):
        data = [data]
    got = nested_shape(data, (*loc, "data"))
    if math.prod(got) != n:
        raise Unprocessable(f"input '{name}': data holds {math.prod(got):,} elements but shape "
                            f"{list(shape)} takes {n:,}", loc=(*loc, "data"))
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError, OverflowError):
        raise Unprocessable(f"input '{name}': data must be numbers in rectangular nesting",
                            loc=(*loc, "data")) from None
    if arr.size != n:
        raise Unprocessable(f"input '{name}': data must be numbers in rectangular nesting",
                            loc=(*loc, "data"))
    if dtype.kind == "i":
        if arr.dtype.kind not in "iu":
            raise Unprocessable(f"input '{name}': {dtype_name(dtype)} data must be integers",
                                loc=(*loc, "data"))
        info = np.iinfo(dtype)
        if arr.min() < info.min or arr.max() > info.max:
            raise Unprocessable(f"input '{name}': data is out of the {dtype_name(dtype)} range",
                                loc=(*loc, "data"))
    elif arr.dtype.kind not in "iuf":
        raise Unprocessable(f"input '{name}': data must hold only numbers",
                            loc=(*loc, "data"))
    return arr.astype(dtype, copy=False).reshape(shape)


def dtype_name(dtype: np.dtype) -> str:
    """The OIP datatype name of a NumPy dtype."""
    for name, dt in DATATYPES.items():
        if dt == dtype:
            return name
    raise KeyError(str(dtype))


# --- responses ----------------------------------------------------------------------------


def encode_response(header: dict[str, Any], outputs: list[tuple[str, np.ndarray, bool]]
                    ) -> tuple[bytes, int | None]:
    """The response body and the JSON header's length (None when no output is binary).

    ``outputs`` are (name, array, binary) in response order; ``header`` holds the other
    fields (model_name, model_version, id). Binary outputs are appended raw, in order, with
    ``parameters.binary_data_size``; the others carry a flat ``data`` list.
    """
    entries: list[dict[str, Any]] = []
    buffers: list[memoryview] = []
    for name, arr, binary in outputs:
        arr = np.asarray(arr)  # not ascontiguousarray: it turns a 0-d array into 1-d
        if not arr.flags.c_contiguous:
            arr = arr.copy()
        entry: dict[str, Any] = {"name": name, "datatype": dtype_name(arr.dtype),
                                 "shape": list(arr.shape)}
        if binary:
            data = memoryview(arr.reshape(-1)).cast("B")  # a view: no copy
            entry["parameters"] = {"binary_data_size": data.nbytes}
            buffers.append(data)
        else:
            # orjson writes a NumPy array natively (a non-finite value as null).
            entry["data"] = arr.reshape(-1)
        entries.append(entry)
    head = orjson.dumps({**header, "outputs": entries}, option=_ORJSON_OPTS)
    if not buffers:
        return head, None
    return b"".join((head, *buffers)), len(head)
