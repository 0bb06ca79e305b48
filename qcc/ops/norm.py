"""Normalisations: batch_norm (inference form), layer_norm, softmax and log_softmax.

They are computed in float64 and cast back: the statistics (means, variances,
exponential sums) are where float32 accumulation error shows, and these ops are
cheap next to the convolutions around them.
"""
from __future__ import annotations

import numpy as np

from qcc.ir.opdef import Attr, register_op

from ._common import check_axes, check_rank


def _batch_norm_infer(types, attrs):
    x = types[0]
    check_rank("batch_norm", x, 2, 8)
    for nm, t in zip(("scale", "bias", "mean", "var"), types[1:]):
        if t.shape != (x.shape[1],):
            raise ValueError(f"batch_norm: {nm} {t} does not match {x.shape[1]} channels")
    return [x]


@register_op("batch_norm", inputs=("x", "scale", "bias", "mean", "var"),
             attrs={"epsilon": Attr("float", 1e-5)}, infer=_batch_norm_infer)
def batch_norm(x, scale, bias, mean, var, *, epsilon):
    """(x - mean) / sqrt(var + epsilon) * scale + bias per channel (axis 1)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    f = np.float64
    mul = scale.astype(f) / np.sqrt(var.astype(f) + epsilon)
    add = bias.astype(f) - mean.astype(f) * mul
    return (x.astype(f) * mul.reshape(shape) + add.reshape(shape)).astype(x.dtype)


def _axis_infer(op):
    def infer(types, attrs):
        check_axes(op, [attrs["axis"]], types[0].rank)
        return [types[0]]
    return infer


@register_op("softmax", attrs={"axis": Attr("int")}, infer=_axis_infer("softmax"))
def softmax(x, *, axis):
    """exp(x) / sum(exp(x)) along `axis` (opset-13 semantics: one axis, not a flattened tail)."""
    xd = x.astype(np.float64)
    e = np.exp(xd - xd.max(axis=axis, keepdims=True))
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)


@register_op("log_softmax", attrs={"axis": Attr("int")}, infer=_axis_infer("log_softmax"))
def log_softmax(x, *, axis):
    """x - log(sum(exp(x))) along `axis`, computed stably."""
    xd = x.astype(np.float64)
    s = xd - xd.max(axis=axis, keepdims=True)
    return (s - np.log(np.exp(s).sum(axis=axis, keepdims=True))).astype(x.dtype)


def _layer_norm_infer(types, attrs):
    x = types[0]
    axis = attrs["axis"]
    check_axes("layer_norm", [axis], x.rank)
    tail = x.shape[axis:]
    for nm, t in zip(("scale", "bias"), types[1:]):
        if t is not None and np.broadcast_shapes(t.shape, tail) != tail:
            raise ValueError(f"layer_norm: {nm} {t} does not broadcast to the normalised "
                             f"shape {list(tail)}")
    return [x]


@register_op("layer_norm", inputs=("x", "scale", "bias?"),
             attrs={"axis": Attr("int"), "epsilon": Attr("float", 1e-5)},
             infer=_layer_norm_infer)
def layer_norm(x, scale, bias=None, *, axis, epsilon):
    """Normalise over axes [axis, rank) to zero mean and unit variance, then scale and shift."""
    xd = x.astype(np.float64)
    axes = tuple(range(axis, x.ndim))
    mean = xd.mean(axis=axes, keepdims=True)
    var = np.square(xd - mean).mean(axis=axes, keepdims=True)
    y = (xd - mean) / np.sqrt(var + epsilon) * scale.astype(np.float64)
    if bias is not None:
        y = y + bias.astype(np.float64)
    return y.astype(x.dtype)
