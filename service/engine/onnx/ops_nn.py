"""Lowerings of the convolution, pooling and normalization op types (2-d, NCHW).

ONNX writes padding per side (``[h_begin, w_begin, h_end, w_end]``); the registry's ops take
one amount per axis, so an uneven convolution padding becomes a ``pad`` first, and
``auto_pad`` SAME_* is computed from static spatial dims. Pooling with uneven padding,
``ceil_mode`` that changes the output size, or dilations, is refused.
"""

from __future__ import annotations

import math
from typing import Any

from service.engine.onnx.lower import Lowerer
from service.engine.onnx.table import lowers


def _spatial(lw: Lowerer, x: Any) -> tuple[Any, Any]:
    dims = lw.dims(x)
    if dims is None or len(dims) != 4:
        raise lw.fail("only 2-d (NCHW, rank-4) inputs are supported")
    return dims[2], dims[3]


def _pads(lw: Lowerer, x: Any, attrs: dict[str, Any], kernel: list[int],
          strides: list[int], dilations: list[int]) -> list[int]:
    """[h_begin, w_begin, h_end, w_end] from pads or auto_pad."""
    auto = attrs.get("auto_pad", "NOTSET")
    if auto in ("NOTSET", ""):
        return [int(p) for p in attrs.get("pads") or [0, 0, 0, 0]]
    if auto == "VALID":
        return [0, 0, 0, 0]
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise lw.fail(f"auto_pad '{auto}' is not supported")
    begin, end = [], []
    for size, k, s, d in zip(_spatial(lw, x), kernel, strides, dilations):
        if not isinstance(size, int):
            raise lw.fail(f"auto_pad {auto} needs static spatial dims")
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return begin + end


def _common(lw: Lowerer, x: Any, attrs: dict[str, Any], kernel: list[int]
            ) -> tuple[list[int], list[int], list[int]]:
    if len(kernel) != 2:
        raise lw.fail("only 2-d kernels are supported")
    strides = [int(s) for s in attrs.get("strides") or [1, 1]]
    dilations = [int(d) for d in attrs.get("dilations") or [1, 1]]
    return strides, dilations, _pads(lw, x, attrs, kernel, strides, dilations)


@lowers("Conv", uses=("conv2d", "pad"), note="2-d; strides, pads (uneven: a pad first), "
        "dilations, group, auto_pad")
def conv(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x, w = ins[0], ins[1]
    _spatial(lw, x)
    wdims = lw.dims(w)
    kernel = [int(k) for k in attrs.get("kernel_shape") or (wdims or ())[2:]]
    strides, dilations, pads = _common(lw, x, attrs, kernel)
    ref = lw.arg(x)
    if pads[:2] != pads[2:]:
        ref = lw.emit("pad", [ref], pads=[0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]).ref
        pads = [0, 0, 0, 0]
    args = [ref, lw.arg(w, "weight")]
    if len(ins) > 2 and ins[2] is not None:
        args.append(lw.arg(ins[2], "bias"))
    return [lw.emit("conv2d", args, lw.out_dims(), stride=strides, padding=pads[:2],
                    dilation=dilations, groups=int(attrs.get("group", 1)))]


def _pool(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> dict[str, Any]:
    x = ins[0]
    if len(node.output) > 1 and node.output[1]:
        raise lw.fail("its Indices output is not supported")
    kernel = [int(k) for k in attrs["kernel_shape"]]
    strides, dilations, pads = _common(lw, x, attrs, kernel)
    if dilations != [1, 1]:
        raise lw.fail("pooling with dilations is not supported")
    if pads[:2] != pads[2:]:
        raise lw.fail(f"uneven pooling pads {pads} are not supported")
    if attrs.get("ceil_mode"):
        for size, k, s, p in zip(_spatial(lw, x), kernel, strides, pads[:2]):
            if not isinstance(size, int) or (size + 2 * p - k) % s:
                raise lw.fail("ceil_mode 1 is supported only where it changes no output size")
    return {"kernel_size": kernel, "stride": strides, "padding": pads[:2]}


@lowers("MaxPool", uses=("max_pool2d",), note="2-d; no dilations, no Indices output; "
        "ceil_mode only where it changes nothing")
def max_pool(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    kw = _pool(lw, node, ins, attrs)
    return [lw.emit("max_pool2d", [lw.arg(ins[0])], lw.out_dims(), **kw)]


@lowers("AveragePool", uses=("avg_pool2d",), note="2-d; count_include_pad (default 0 as "
        "ONNX)")
def avg_pool(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    kw = _pool(lw, node, ins, attrs)
    return [lw.emit("avg_pool2d", [lw.arg(ins[0])], lw.out_dims(),
                    count_include_pad=bool(attrs.get("count_include_pad", 0)), **kw)]


@lowers("GlobalAveragePool", uses=("global_avg_pool2d",), note="2-d")
def global_avg_pool(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]
                    ) -> list[Any]:
    _spatial(lw, ins[0])
    return [lw.emit("global_avg_pool2d", [lw.arg(ins[0])], lw.out_dims())]


@lowers("BatchNormalization", uses=("batch_norm",), note="inference form (training_mode 0), "
        "one output")
def batch_norm(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    if attrs.get("training_mode"):
        raise lw.fail("training_mode 1 is not supported (the inference form is)")
    if any(o for o in node.output[1:]):
        raise lw.fail("its running-statistics outputs are not supported")
    names = ("X", "scale", "B", "input_mean", "input_var")
    args = [lw.arg(v, what) for v, what in zip(ins, names)]
    return [lw.emit("batch_norm", args, lw.out_dims(), epsilon=float(attrs["epsilon"]))]


def _ln_stats(lw: Lowerer, node: Any, x: Any, axis: int, eps: float) -> list[Any]:
    """LayerNormalization's Mean and InvStdDev outputs (when asked for): the mean and
    1/sqrt(biased variance + epsilon) over the normalized axes, kept as size-1 axes."""
    n = lw.rank(x)
    axes = list(range(axis + n if axis < 0 else axis, n))
    outs: list[Any] = [None, None]
    ref = lw.arg(x)
    if len(node.output) > 1 and node.output[1]:
        outs[0] = lw.emit("mean", [ref], lw.out_dims(1), axis=axes, keepdims=True)
    if len(node.output) > 2 and node.output[2]:
        var = lw.emit("var", [ref], axis=axes, keepdims=True, correction=0.0).ref
        std = lw.emit("sqrt", [lw.emit("add", [var, eps]).ref]).ref
        outs[1] = lw.emit("reciprocal", [std], lw.out_dims(2))
    return outs


@lowers("LayerNormalization", since=17, uses=("layer_norm", "expand", "mean", "var"),
        note="axis, epsilon; Scale and B (absent B: zeros); Mean and InvStdDev outputs")
def layer_norm(lw: Lowerer, node: Any, ins: list[Any], attrs: dict[str, Any]) -> list[Any]:
    x, scale = ins[0], ins[1]
    bias = ins[2] if len(ins) > 2 else None
    if bias is None:
        sdims = lw.dims(scale)
        if sdims is None or not all(isinstance(d, int) for d in sdims):
            raise lw.fail("without B, Scale's shape must be static")
        b_ref = lw.emit("expand", [0.0], sdims, shape=list(sdims)).ref
    else:
        b_ref = lw.arg(bias, "B")
    axis, eps = int(attrs["axis"]), float(attrs["epsilon"])
    y = lw.emit("layer_norm", [lw.arg(x), lw.arg(scale, "Scale"), b_ref], lw.out_dims(),
                axis=axis, epsilon=eps)
    return [y, *_ln_stats(lw, node, x, axis, eps)]
