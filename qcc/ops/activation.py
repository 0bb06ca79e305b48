"""Unary math and activation ops.

Transcendental functions are computed in float32 (float64 for f64 and integer
inputs) and cast back to the operand's dtype, so an f16 graph does not round
through f16 at every intermediate step and an f32 graph stays f32.

Traits matter more here than anywhere: relu and clip narrow a range (the
calibrator may take the output range for the input), monotonic ops commute with
max-pooling and keep order for requantization, and those with an integer form
(relu, clip, leaky_relu, prelu) may stay in the integer domain.
"""
from __future__ import annotations

import builtins
import math

import numpy as np

from qcc.ir.opdef import (INTEGER, MONOTONIC, RANGE_NARROWING, Attr, broadcast_shapes,
                          register_op)

from ._common import as_compute

try:  # scipy is optional; math.erf vectorised is exact but slower
    from scipy.special import erf as _erf
except ImportError:  # pragma: no cover
    _erf = np.vectorize(math.erf, otypes=[np.float64])


def _float_unary(name, fn, traits=(), doc=""):
    """Declare a float-valued unary op computed via `fn` in the compute dtype."""
    def kernel(x):
        with np.errstate(all="ignore"):
            return np.asarray(fn(as_compute(x))).astype(x.dtype, copy=False)
    kernel.__doc__ = doc
    kernel.__name__ = name
    register_op(name, traits=traits)(kernel)
    return kernel


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


_float_unary("sqrt", np.sqrt, (MONOTONIC,), "Square root.")
_float_unary("erf", lambda x: _erf(x.astype(np.float64)), (MONOTONIC,), "The Gauss error function.")
_float_unary("exp", np.exp, (MONOTONIC,), "e ** x.")
_float_unary("log", np.log, (MONOTONIC,), "Natural logarithm.")
_float_unary("reciprocal", np.reciprocal, (), "1 / x.")
_float_unary("floor", np.floor, (MONOTONIC,), "Round down.")
_float_unary("ceil", np.ceil, (MONOTONIC,), "Round up.")
_float_unary("sin", np.sin, (), "Sine.")
_float_unary("cos", np.cos, (), "Cosine.")
_float_unary("tanh", np.tanh, (MONOTONIC,), "Hyperbolic tangent.")
_float_unary("sigmoid", _sigmoid, (MONOTONIC,), "Logistic sigmoid 1 / (1 + e ** -x).")


@register_op("neg")
def neg(x):
    """-x (integers wrap, as in ONNX)."""
    with np.errstate(all="ignore"):
        return np.negative(x)


@register_op("abs")
def abs_(x):
    """|x|."""
    return np.abs(x)


def _not_infer(types, attrs):
    if types[0].dtype != "bool":
        raise ValueError(f"not: operand must be bool, got {types[0]}")
    return [types[0]]


@register_op("not", infer=_not_infer)
def not_(x):
    """Logical negation of a bool tensor."""
    return np.logical_not(x)


@register_op("relu", traits=(MONOTONIC, RANGE_NARROWING, INTEGER))
def relu(x):
    """max(x, 0)."""
    return np.maximum(x, np.zeros((), x.dtype))


@register_op("leaky_relu", attrs={"alpha": Attr("float", 0.01)}, traits=(MONOTONIC, INTEGER))
def leaky_relu(x, *, alpha):
    """x if x >= 0 else alpha * x."""
    xc = as_compute(x)
    return np.where(xc >= 0, xc, xc * xc.dtype.type(alpha)).astype(x.dtype, copy=False)


def _prelu_infer(types, attrs):
    x, s = types
    if broadcast_shapes(x.shape, s.shape) != x.shape:
        raise ValueError(f"prelu: slope {s} does not broadcast to {x}")
    return [x]


@register_op("prelu", inputs=("x", "slope"), infer=_prelu_infer, traits=(INTEGER,))
def prelu(x, slope):
    """x if x >= 0 else slope * x, the slope broadcasting to x (per-channel in practice)."""
    xc = as_compute(x)
    return np.where(xc >= 0, xc, xc * slope.astype(xc.dtype)).astype(x.dtype, copy=False)


@register_op("clip", attrs={"min": Attr("float", -math.inf), "max": Attr("float", math.inf)},
             traits=(MONOTONIC, RANGE_NARROWING, INTEGER))
def clip(x, *, min, max):  # noqa: A002 - the ONNX names
    """Clamp to [min, max]; an absent bound is ±inf. Bounds apply in float, then cast back."""
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        lo = info.min if min == -math.inf else builtins.max(math.ceil(min), info.min)
        hi = info.max if max == math.inf else builtins.min(math.floor(max), info.max)
        return np.minimum(np.maximum(x, x.dtype.type(lo)), x.dtype.type(hi))
    xc = as_compute(x)
    t = xc.dtype.type
    # ONNX: Max(Min(x, max), min) -- when min > max every element becomes min
    return np.maximum(np.minimum(xc, t(max)), t(min)).astype(x.dtype, copy=False)



@register_op("hard_sigmoid", attrs={"alpha": Attr("float", 0.2), "beta": Attr("float", 0.5)},
             traits=(MONOTONIC,))
def hard_sigmoid(x, *, alpha, beta):
    """max(0, min(1, alpha * x + beta))."""
    xc = as_compute(x)
    t = xc.dtype.type
    return np.clip(xc * t(alpha) + t(beta), 0, 1).astype(x.dtype, copy=False)


@register_op("hard_swish")
def hard_swish(x):
    """x * hard_sigmoid(x) with alpha 1/6, beta 0.5 (MobileNetV3's h-swish)."""
    xc = as_compute(x)
    t = xc.dtype.type
    gate = xc * t(1 / 6)  # the same arithmetic as xc * clip(xc / 6 + 0.5, 0, 1), in one buffer
    gate += t(0.5)
    np.clip(gate, 0, 1, out=gate)
    gate *= xc
    return gate.astype(x.dtype, copy=False)


@register_op("gelu", attrs={"approximate": Attr("str", "none", choices=("none", "tanh"))})
def gelu(x, *, approximate):
    """0.5 x (1 + erf(x / sqrt 2)), or the tanh approximation when approximate='tanh'."""
    xd = np.asarray(x, dtype=np.float64)
    if approximate == "tanh":
        y = 0.5 * xd * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (xd + 0.044715 * xd ** 3)))
    else:
        y = 0.5 * xd * (1.0 + _erf(xd / math.sqrt(2.0)))
    return y.astype(x.dtype)
