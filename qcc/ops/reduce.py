"""Reductions and arg-reductions.

`axes` is sorted and non-negative after import, and [] means every axis (ONNX's
noop_with_empty_axes=1 is resolved by the frontend into an identity). Sums and
means accumulate in float64 (int64 for integers) and cast back, so an integer
reduce_sum wraps to its dtype exactly as ONNX's does, and integer reduce_mean
truncates like ONNX Runtime's integer division.
"""
from __future__ import annotations

import numpy as np

from qcc.ir.opdef import INTEGER, Attr, register_op
from qcc.ir.types import TensorType

from ._common import check_axes

_ATTRS = {"axes": Attr("ints", []), "keepdims": Attr("int", 1)}


def _axes(attrs, rank):
    return tuple(attrs["axes"]) if attrs["axes"] else tuple(range(rank))


def _reduce_infer(op):
    def infer(types, attrs):
        x = types[0]
        axes = _axes(attrs, x.rank)
        check_axes(op, axes, x.rank)
        if attrs["keepdims"]:
            shape = tuple(1 if i in axes else n for i, n in enumerate(x.shape))
        else:
            shape = tuple(n for i, n in enumerate(x.shape) if i not in axes)
        return [TensorType(shape, x.dtype)]
    return infer


def _wide(x):
    return x.astype(np.int64 if x.dtype.kind in "iub" else np.float64)


def _declare(name, fn, doc, traits=()):
    def kernel(x, *, axes, keepdims):
        ax = tuple(axes) if axes else tuple(range(x.ndim))
        y = fn(x, ax, bool(keepdims))
        return np.asarray(y).astype(x.dtype)
    kernel.__doc__ = doc
    kernel.__name__ = name
    register_op(name, attrs=dict(_ATTRS), infer=_reduce_infer(name), traits=traits)(kernel)


def _mean(x, ax, keep):
    if x.dtype.kind in "iu":
        n = int(np.prod([x.shape[a] for a in ax]))
        s = _wide(x).sum(axis=ax, keepdims=keep)
        return np.where(s < 0, -((-s) // n), s // n)  # truncating integer division
    return _wide(x).mean(axis=ax, keepdims=keep)


_declare("reduce_mean", _mean, "Mean over `axes` ([] = all).", (INTEGER,))
_declare("reduce_sum", lambda x, a, k: _wide(x).sum(axis=a, keepdims=k),
         "Sum over `axes` ([] = all).")
_declare("reduce_prod", lambda x, a, k: _wide(x).prod(axis=a, keepdims=k),
         "Product over `axes` ([] = all).")
_declare("reduce_max", lambda x, a, k: x.max(axis=a, keepdims=k),
         "Maximum over `axes` ([] = all).")
_declare("reduce_min", lambda x, a, k: x.min(axis=a, keepdims=k),
         "Minimum over `axes` ([] = all).")


_ARG_ATTRS = {"axis": Attr("int", 0), "keepdims": Attr("int", 1),
              "select_last_index": Attr("int", 0)}


def _arg_infer(op):
    def infer(types, attrs):
        x = types[0]
        a = attrs["axis"]
        check_axes(op, [a], x.rank)
        if attrs["keepdims"]:
            shape = x.shape[:a] + (1,) + x.shape[a + 1:]
        else:
            shape = x.shape[:a] + x.shape[a + 1:]
        return [TensorType(shape, "i64")]
    return infer


def _arg(x, axis, keepdims, last, fn):
    if last:  # the last occurrence is the first one in the reversed array
        idx = x.shape[axis] - 1 - fn(np.flip(x, axis=axis), axis=axis)
    else:
        idx = fn(x, axis=axis)
    if keepdims:
        idx = np.expand_dims(idx, axis)
    return np.asarray(idx, dtype=np.int64)


@register_op("arg_max", attrs=dict(_ARG_ATTRS), infer=_arg_infer("arg_max"))
def arg_max(x, *, axis, keepdims, select_last_index):
    """Index of the maximum along `axis` (i64); ties go to the first, or last if asked."""
    return _arg(x, axis, keepdims, select_last_index, np.argmax)


@register_op("arg_min", attrs=dict(_ARG_ATTRS), infer=_arg_infer("arg_min"))
def arg_min(x, *, axis, keepdims, select_last_index):
    """Index of the minimum along `axis` (i64); ties go to the first, or last if asked."""
    return _arg(x, axis, keepdims, select_last_index, np.argmin)
