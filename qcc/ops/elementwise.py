"""Broadcasting binary ops, comparisons, `where` and `cast`.

All follow ONNX's multidirectional (numpy) broadcasting. Results keep the
operands' dtype: numpy would promote int8 + int8 sums of Python scalars or
float32 / float64 mixes, but the IR's types are fixed at import, so the kernels
cast back. Integer arithmetic wraps like ONNX's does (two's complement).
"""
from __future__ import annotations

import numpy as np

from qcc.ir.opdef import ELEMENTWISE, INTEGER, Attr, broadcast_shapes, register_op
from qcc.ir.types import DTYPES, INT_INFO, TensorType, to_numpy_dtype

from ._common import as_compute, same_dtype


def _binary_infer(op):
    def infer(types, attrs):
        a, b = types
        return [TensorType(broadcast_shapes(a.shape, b.shape), same_dtype(op, [a, b]))]
    return infer


def _compare_infer(op):
    def infer(types, attrs):
        a, b = types
        same_dtype(op, [a, b])
        return [TensorType(broadcast_shapes(a.shape, b.shape), "bool")]
    return infer


def _arith(a, b, fn):
    """Apply `fn` in the operands' compute dtype (f16 -> f32) or natively for ints."""
    dt = a.dtype
    with np.errstate(all="ignore"):
        if dt.kind in "iub":
            return np.asarray(fn(a, b)).astype(dt, copy=False)
        return np.asarray(fn(as_compute(a), as_compute(b))).astype(dt, copy=False)


_BINARY_TRAITS = (ELEMENTWISE, INTEGER)


@register_op("add", inputs=("a", "b"), infer=_binary_infer("add"), traits=_BINARY_TRAITS)
def add(a, b):
    """a + b, broadcasting."""
    return _arith(a, b, np.add)


@register_op("sub", inputs=("a", "b"), infer=_binary_infer("sub"), traits=_BINARY_TRAITS)
def sub(a, b):
    """a - b, broadcasting."""
    return _arith(a, b, np.subtract)


@register_op("mul", inputs=("a", "b"), infer=_binary_infer("mul"), traits=_BINARY_TRAITS)
def mul(a, b):
    """a * b, broadcasting."""
    return _arith(a, b, np.multiply)


def _trunc_div(a, b):
    # ONNX integer Div truncates toward zero (C semantics); numpy's // floors.
    q = np.floor_divide(a, b)
    r = a - q * b
    fix = (r != 0) & ((a < 0) != (b < 0))
    return q + fix.astype(q.dtype)


@register_op("div", inputs=("a", "b"), infer=_binary_infer("div"), traits=(ELEMENTWISE,))
def div(a, b):
    """a / b, broadcasting; integer division truncates toward zero like ONNX."""
    if a.dtype.kind in "iu":
        with np.errstate(all="ignore"):
            return _trunc_div(a, b).astype(a.dtype, copy=False)
    return _arith(a, b, np.divide)


def _pow_infer(types, attrs):
    # ONNX Pow lets the exponent have its own type; the result has the base's.
    a, b = types
    return [TensorType(broadcast_shapes(a.shape, b.shape), a.dtype)]


@register_op("pow", inputs=("a", "b"), infer=_pow_infer, traits=(ELEMENTWISE,))
def pow_(a, b):
    """a ** b, broadcasting; the exponent may have another dtype, the result has the base's."""
    with np.errstate(all="ignore"):
        if a.dtype.kind in "iu":  # like ORT: std::pow in double, truncated back
            return np.power(a.astype(np.float64), b.astype(np.float64)).astype(a.dtype)
        x = as_compute(a)
        return np.power(x, b.astype(x.dtype)).astype(a.dtype, copy=False)


@register_op("min", inputs=("a", "b"), infer=_binary_infer("min"), traits=_BINARY_TRAITS)
def min_(a, b):
    """Elementwise minimum of two operands (the frontend chains ONNX's variadic Min)."""
    return np.minimum(a, b).astype(a.dtype, copy=False)


@register_op("max", inputs=("a", "b"), infer=_binary_infer("max"), traits=_BINARY_TRAITS)
def max_(a, b):
    """Elementwise maximum of two operands (the frontend chains ONNX's variadic Max)."""
    return np.maximum(a, b).astype(a.dtype, copy=False)


@register_op("equal", inputs=("a", "b"), infer=_compare_infer("equal"), traits=(ELEMENTWISE,))
def equal(a, b):
    """a == b, a bool tensor."""
    return np.equal(a, b)


@register_op("less", inputs=("a", "b"), infer=_compare_infer("less"), traits=(ELEMENTWISE,))
def less(a, b):
    """a < b, a bool tensor."""
    return np.less(a, b)


@register_op("greater", inputs=("a", "b"), infer=_compare_infer("greater"), traits=(ELEMENTWISE,))
def greater(a, b):
    """a > b, a bool tensor."""
    return np.greater(a, b)


def _where_infer(types, attrs):
    c, a, b = types
    if c.dtype != "bool":
        raise ValueError(f"where: condition must be bool, got {c}")
    return [TensorType(broadcast_shapes(c.shape, a.shape, b.shape), same_dtype("where", [a, b]))]


@register_op("where", inputs=("cond", "a", "b"), infer=_where_infer, traits=(ELEMENTWISE,))
def where(cond, a, b):
    """cond ? a : b, all three broadcasting."""
    return np.where(cond, a, b).astype(a.dtype, copy=False)


def _cast_infer(types, attrs):
    return [types[0].with_dtype(attrs["to"])]


@register_op("cast", attrs={"to": Attr("str", choices=DTYPES)}, infer=_cast_infer)
def cast(x, *, to):
    """Convert to the IR dtype `to`: floats to ints truncate toward zero (as ONNX/C does);
    i4/u4 keep the low four bits, sign-extended for i4, like any narrowing integer cast."""
    if to in ("i4", "u4"):
        bits, signed = INT_INFO[to]
        v = np.asarray(x).astype(np.int64) & 0xF
        if signed:
            v = np.where(v >= 8, v - 16, v)
        return v.astype(to_numpy_dtype(to))
    return np.asarray(x).astype(to_numpy_dtype(to))
