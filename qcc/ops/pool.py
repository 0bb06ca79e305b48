"""Pooling: max_pool, avg_pool and the global pools.

Windows follow ONNX exactly, ceil_mode included: with ceil_mode the output may
gain a last window hanging over the end, except one that would start in the
end padding. That overhang is padded here too, but it never counts: max pools
pad with -inf (the dtype minimum for integers), and average pools divide by a
per-window count computed by pooling a mask the same way. The mask covers the
input (count_include_pad=0) or the input and its explicit pads (=1).

The reduction runs as one strided slice per kernel tap (9 for 3x3), never a
Python loop over pixels.
"""
from __future__ import annotations

import itertools

import numpy as np

from qcc.ir.opdef import INTEGER, RANGE_PRESERVING, Attr, register_op
from qcc.ir.types import TensorType

from ._common import cast_like, check_rank, pad_spatial, spatial


def _geometry(in_sp, k, s, d, pads, ceil):
    """(output sizes, extra end padding the last ceil_mode window needs)."""
    r = len(k)
    outs, extra = [], []
    for i in range(r):
        ext = (k[i] - 1) * d[i] + 1
        padded = in_sp[i] + pads[i] + pads[r + i]
        span = padded - ext
        if ceil:
            o = -(-span // s[i]) + 1
            if (o - 1) * s[i] >= in_sp[i] + pads[i]:  # a window must start before the end pad
                o -= 1
        else:
            o = span // s[i] + 1
        outs.append(o)
        extra.append(max(0, (o - 1) * s[i] + ext - padded))
    return outs, extra


def _dilations(attrs, r):
    d = attrs.get("dilations") or [1] * r
    return list(d)


def _pool_infer(op):
    def infer(types, attrs):
        x = types[0]
        check_rank(op, x, 3, 5)
        r = x.rank - 2
        d = _dilations(attrs, r)
        for name, f in (("kernel_shape", 1), ("strides", 1), ("pads", 2)):
            spatial(op, name, attrs[name], r, f)
        spatial(op, "dilations", d, r)
        outs, _ = _geometry(x.shape[2:], attrs["kernel_shape"], attrs["strides"], d,
                            attrs["pads"], attrs["ceil_mode"])
        if any(o < 1 for o in outs):
            raise ValueError(f"{op}: output would be empty ({outs}) for input {x}")
        return [TensorType(x.shape[:2] + tuple(outs), x.dtype)]
    return infer


def _taps(xp, k, s, d, outs):
    """Yield the strided (N, C, *out) slice of xp under each kernel tap."""
    for tap in itertools.product(*(range(kk) for kk in k)):
        yield xp[(slice(None), slice(None)) + tuple(
            slice(t * dd, t * dd + (o - 1) * ss + 1, ss) for t, dd, o, ss in zip(tap, d, outs, s))]


def _prepare(x, kernel_shape, strides, pads, dilations, ceil_mode, fill):
    r = x.ndim - 2
    d = dilations or [1] * r
    outs, extra = _geometry(x.shape[2:], kernel_shape, strides, d, pads, ceil_mode)
    end = [p + e for p, e in zip(pads[r:], extra)]
    return pad_spatial(x, pads[:r], end, fill), d, outs, extra


_POOL_ATTRS = {"kernel_shape": Attr("ints"), "strides": Attr("ints"), "pads": Attr("ints"),
               "ceil_mode": Attr("int", 0)}


@register_op("max_pool", attrs=dict(_POOL_ATTRS, dilations=Attr("ints")),
             infer=_pool_infer("max_pool"), traits=(RANGE_PRESERVING, INTEGER))
def max_pool(x, *, kernel_shape, strides, pads, dilations, ceil_mode):
    """Window maximum (ONNX MaxPool, first output only); padding never wins."""
    fill = np.iinfo(x.dtype).min if x.dtype.kind in "iu" else -np.inf
    xp, d, outs, _ = _prepare(x, kernel_shape, strides, pads, dilations, ceil_mode, fill)
    y = None
    for sl in _taps(xp, kernel_shape, strides, d, outs):
        y = sl.copy() if y is None else np.maximum(y, sl, out=y)
    return y


@register_op("avg_pool",
             attrs=dict(_POOL_ATTRS, count_include_pad=Attr("int", 0), dilations=Attr("ints", [])),
             infer=_pool_infer("avg_pool"), traits=(INTEGER,))
def avg_pool(x, *, kernel_shape, strides, pads, ceil_mode, count_include_pad, dilations):
    """Window mean (ONNX AveragePool); `dilations` [] means all ones.

    The divisor counts the input elements under the window, plus the explicit pad
    elements when count_include_pad; the ceil_mode overhang never counts.
    """
    r = x.ndim - 2
    xc = x.astype(np.float64 if x.dtype == np.float64 else np.float32)
    xp, d, outs, extra = _prepare(xc, kernel_shape, strides, pads, dilations, ceil_mode, 0)
    total = np.zeros(x.shape[:2] + tuple(outs), xc.dtype)
    for sl in _taps(xp, kernel_shape, strides, d, outs):
        total += sl
    if count_include_pad:
        covered = [n + pads[i] + pads[r + i] for i, n in enumerate(x.shape[2:])]
        mask = pad_spatial(np.ones((1, 1, *covered), xc.dtype), [0] * r, extra, 0)
    else:
        mask = pad_spatial(np.ones((1, 1, *x.shape[2:]), xc.dtype), pads[:r],
                           [p + e for p, e in zip(pads[r:], extra)], 0)
    count = np.zeros((1, 1, *outs), xc.dtype)
    for sl in _taps(mask, kernel_shape, strides, d, outs):
        count += sl
    with np.errstate(all="ignore"):
        return cast_like(total / count, x.dtype)


def _global_infer(op):
    def infer(types, attrs):
        x = types[0]
        check_rank(op, x, 3, 5)
        return [TensorType(x.shape[:2] + (1,) * (x.rank - 2), x.dtype)]
    return infer


@register_op("global_avg_pool", infer=_global_infer("global_avg_pool"), traits=(INTEGER,))
def global_avg_pool(x):
    """Mean over all spatial axes, kept as size-1 axes."""
    axes = tuple(range(2, x.ndim))
    return cast_like(x.astype(np.float64).mean(axis=axes, keepdims=True), x.dtype)


@register_op("global_max_pool", infer=_global_infer("global_max_pool"),
             traits=(RANGE_PRESERVING, INTEGER))
def global_max_pool(x):
    """Maximum over all spatial axes, kept as size-1 axes."""
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)
