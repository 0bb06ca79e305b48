"""The integer ops: quantize, dequantize, requantize and the int8 compute ops.

Each op carries its arithmetic in its attributes (scales, zero points, the fixed-
point multiplier and shift), so a kernel is a pure function of its operands, the
text form shows every number the compiler chose, and the back end lowers exactly
what the interpreter runs. The output value's `!q<...>` says what the integers
mean; the attributes say how they were computed; the verifier checks they agree.

Rounding: quantize rounds half to even in float32 (as ONNX QuantizeLinear and
TVM's quantize do). requantize is TFLite's single-rounding fixed-point multiply:
    y = (x * M + 2^(t-1)) >> t,  t = 31 - shift,  real multiplier = M * 2^(shift-31)
which int64 arithmetic computes exactly on every back end.

Accumulators: qconv/qmatmul accumulate in the type their `acc` attribute names: i32
(the default), or i64 where `quantize` found that the layer's sums could pass 2^31 - 1,
from its own constant weights (passes/quantize.py `_accumulator`; never wider than the
dtypes' worst case, `accumulator_dtype`). The choice is static, printed in the text form,
the result type, and the same in the interpreter and every back end.
"""
from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from qcc.ir.opdef import INTEGER, QUANT, Attr, register_op
from qcc.ir.types import TensorType, int_range, to_numpy_dtype

from .nn import conv as _conv_kernel, _conv_infer

_QDTYPES = ("i8", "u8", "i16", "u4", "i4", "i32")
_ACC_DTYPES = ("i32", "i64")


def quantize_multiplier(real: float) -> Tuple[int, int]:
    """real ≈ M * 2^(shift-31) with M in [2^30, 2^31): the gemmlowp/TFLite encoding."""
    if real <= 0 or not math.isfinite(real):
        if real == 0:
            return 0, 0
        raise ValueError(f"requantize multiplier must be positive and finite, got {real}")
    m, e = math.frexp(real)
    M = int(round(m * (1 << 31)))
    if M == 1 << 31:
        M //= 2
        e += 1
    return M, e


def _per_axis(vals, rank: int, axis: int, dtype) -> np.ndarray:
    a = np.asarray(vals, dtype=dtype)
    if axis < 0 or a.size == 1:
        return a.reshape(()) if a.size == 1 else a
    shape = [1] * rank
    shape[axis] = a.size
    return a.reshape(shape)


def _clamp_bounds(dtype: str, clamp) -> Tuple[int, int]:
    lo, hi = int_range(dtype)
    if clamp:
        lo, hi = max(lo, int(clamp[0])), min(hi, int(clamp[1]))
    return lo, hi


def _out_of(dtype_attr):
    def infer(types, attrs):
        return [TensorType(types[0].shape, attrs[dtype_attr])]
    return infer


@register_op("quantize", attrs={"scale": Attr("floats"), "zero_point": Attr("ints"), "axis": Attr("int", -1),
                                "dtype": Attr("str", choices=_QDTYPES)},
             infer=_out_of("dtype"), traits=(QUANT,))
def quantize(x, *, scale, zero_point, axis, dtype):
    """Float to integer: clamp(round_half_even(x / scale) + zero_point); +-inf saturate
    like any out-of-range value (ONNX QuantizeLinear), NaN becomes the zero point."""
    s = _per_axis(scale, x.ndim, axis, np.float32)
    z = _per_axis(zero_point, x.ndim, axis, np.int32)
    lo, hi = int_range(dtype)
    with np.errstate(over="ignore"):  # a huge x / s is +-inf, which saturates below
        q = np.divide(x.astype(np.float32, copy=False), s, dtype=np.float32)
    np.rint(q, out=q)
    np.copyto(q, np.float32(0), where=np.isnan(q))
    if hi - lo < 1 << 17:  # float32 holds q + z exactly below 2^24, and anything above clamps alike
        q += z.astype(np.float32)
        return np.clip(q, lo, hi, out=q).astype(to_numpy_dtype(dtype))
    q = np.clip(q, -2.0 ** 31, 2.0 ** 31 - 1).astype(np.int64) + z
    return np.clip(q, lo, hi).astype(to_numpy_dtype(dtype))


@register_op("dequantize", attrs={"scale": Attr("floats"), "zero_point": Attr("ints"), "axis": Attr("int", -1)},
             infer=lambda types, attrs: [TensorType(types[0].shape, "f32")], traits=(QUANT,))
def dequantize(q, *, scale, zero_point, axis):
    """Integer to float: (q - zero_point) * scale, in float32 (the difference in int32,
    in int64 for an i64 accumulator)."""
    s = _per_axis(scale, q.ndim, axis, np.float32)
    z = _per_axis(zero_point, q.ndim, axis, np.int32)
    wide = np.int64 if q.dtype == np.int64 else np.int32  # an i64 accumulator stays exact
    d = q.astype(wide)
    if z.any():
        d -= z
    f = d.astype(np.float32)
    f *= s
    return f


@register_op("requantize",
             attrs={"multiplier": Attr("ints"), "shift": Attr("ints"), "axis": Attr("int", -1),
                    "input_zero_point": Attr("int", 0), "zero_point": Attr("int", 0),
                    "dtype": Attr("str", choices=_QDTYPES), "clamp": Attr("ints", [])},
             infer=_out_of("dtype"), traits=(QUANT, INTEGER))
def requantize(x, *, multiplier, shift, axis, input_zero_point, zero_point, dtype, clamp):
    """Integer to integer with a new scale: fixed-point multiply, round, add zero point, clamp.

    `clamp` ([lo, hi] in output integers) is how a fused relu/relu6 survives quantization.
    """
    M = _per_axis(multiplier, x.ndim, axis, np.int64)
    t = 31 - _per_axis(shift, x.ndim, axis, np.int64)
    t = np.clip(t, 1, 62)
    y = x.astype(np.int64)  # one int64 array, worked on in place
    if input_zero_point:
        y -= np.int64(input_zero_point)
    y *= M
    y += np.int64(1) << (t - 1)
    y >>= t
    if zero_point:
        y += np.int64(zero_point)
    lo, hi = _clamp_bounds(dtype, clamp)
    return np.clip(y, lo, hi, out=y).astype(to_numpy_dtype(dtype))


ACC32_MAX = 2 ** 31 - 1


def accumulator_dtype(x_dtype: str, x_zero_point: int, w_dtype: str, w_zero_point: int, k: int) -> str:
    """'i32', or 'i64' when k products of (x - zx) * (w - zw) could exceed int32.

    The dtypes' worst case, what an integer layer of these operands may need whatever its
    weights; `quantize` decides from the weights themselves (passes/quantize.py,
    _accumulator: never wider) and writes its choice into `acc`, which the interpreter, the
    verifier and every back end read."""
    xlo, xhi = int_range(x_dtype)
    wlo, whi = int_range(w_dtype)
    xmax = max(xhi - int(x_zero_point), int(x_zero_point) - xlo)
    wmax = max(whi - int(w_zero_point), int(w_zero_point) - wlo)
    return "i32" if int(k) * xmax * wmax <= ACC32_MAX else "i64"


def _qconv_infer(types, attrs):
    x, w = types[0], types[1]
    if x.dtype not in ("u8", "i8", "i16", "u4", "i4") or w.dtype not in ("i8", "i4", "u8", "i16"):
        raise ValueError(f"qconv takes integer operands, got {x.dtype} and {w.dtype}")
    if len(types) > 2 and types[2] is not None and types[2].dtype != "i32":
        raise ValueError(f"qconv bias must be i32, got {types[2].dtype}")
    fx = [TensorType(x.shape, "f32"), TensorType(w.shape, "f32")]
    return [TensorType(_conv_infer(fx, attrs)[0].shape, attrs.get("acc") or "i32")]


@register_op("qconv", inputs=("x", "w", "b?"),
             attrs={"strides": Attr("ints"), "pads": Attr("ints"), "dilations": Attr("ints"),
                    "group": Attr("int", 1), "x_zero_point": Attr("int", 0),
                    "acc": Attr("str", "i32", choices=_ACC_DTYPES)},
             infer=_qconv_infer, traits=(INTEGER,))
def qconv(x, w, b=None, *, strides, pads, dilations, group, x_zero_point, acc="i32"):
    """Integer convolution into an int32 (or, see accumulator_dtype, int64) accumulator:
    sum((x - zx) * w) + b.

    Padding contributes zero *real* value, i.e. pads with zx; subtracting zx first
    and padding with 0 is the same thing. Weights are symmetric (no zero point).
    """
    ft = exact_float_dtype(_span(x, x_zero_point), _abs_row_sums(w.reshape(w.shape[0], -1), axis=1))
    xs = x.astype(ft) - ft(x_zero_point)
    total = _conv_kernel(xs, w.astype(ft), None, strides=strides, pads=pads, dilations=dilations, group=group)
    return _plus_bias(total, ft, None if b is None else b.reshape((1, -1) + (1,) * (x.ndim - 2)), acc)


def _mm_shape(a, b):
    a2 = a if len(a) > 1 else (1,) + tuple(a)
    b2 = b if len(b) > 1 else tuple(b) + (1,)
    if a2[-1] != b2[-2]:
        raise ValueError(f"qmatmul: inner dimensions differ ({a} x {b})")
    batch = np.broadcast_shapes(a2[:-2], b2[:-2])
    out = tuple(batch) + (a2[-2], b2[-1])
    if len(a) == 1:
        out = out[:-2] + out[-1:]
    if len(b) == 1:
        out = out[:-1]
    return out


def _qmatmul_infer(types, attrs):
    return [TensorType(_mm_shape(types[0].shape, types[1].shape), attrs.get("acc") or "i32")]


@register_op("qmatmul", inputs=("a", "b", "bias?"),
             attrs={"a_zero_point": Attr("int", 0), "b_zero_point": Attr("int", 0),
                    "acc": Attr("str", "i32", choices=_ACC_DTYPES)},
             infer=_qmatmul_infer, traits=(INTEGER,))
def qmatmul(a, b, bias=None, *, a_zero_point, b_zero_point, acc="i32"):
    """Integer matmul into int32 (int64 with acc="i64"): (a - za) @ (b - zb) + bias
    (bias along the last axis)."""
    bs = b.astype(np.int64) - b_zero_point
    ft = exact_float_dtype(_span(a, a_zero_point), _abs_row_sums(bs.reshape(-1, *bs.shape[-2:]), axis=-2)
                           if bs.ndim > 1 else np.abs(bs).sum())
    total = np.matmul(a.astype(ft) - ft(a_zero_point), bs.astype(ft))
    return _plus_bias(total, ft, bias, acc)


def exact_float_dtype(x_span: int, w_abs_sums) -> type:
    """The narrowest dtype whose arithmetic is exact for sum(x * w) over one output.

    Every partial sum of one output, in whatever order BLAS adds, is bounded by
    max|x| * sum|w| over that output's weights, and every integer up to 2^24 (float32)
    or 2^53 (float64) is exactly representable: under that bound a float conv or
    matmul computes the integer result exactly, with BLAS and a quarter of int64's
    memory traffic. Quantized layers land in float32 (255 * sum|w| stays far under
    2^24 for real weights); int64 is left for bounds float64 cannot hold.
    """
    bound = float(x_span) * float(np.max(w_abs_sums, initial=0))
    if bound < 2.0 ** 24:
        return np.float32
    if bound < 2.0 ** 53:
        return np.float64
    return np.int64


def _span(x: np.ndarray, zero_point: int) -> int:
    """max |x - zero_point| over x."""
    if not x.size:
        return 0
    return max(abs(int(x.max()) - int(zero_point)), abs(int(x.min()) - int(zero_point)))


def _abs_row_sums(w: np.ndarray, axis: int) -> np.ndarray:
    return np.abs(w.astype(np.int64)).sum(axis=axis)


def _plus_bias(total: np.ndarray, ft: type, bias: Optional[np.ndarray], acc: str) -> np.ndarray:
    """The exact sums (`total`, computed exactly in `ft`: exact_float_dtype) plus the
    integer bias, in the accumulator type. Sums exact in float32 are below 2^24, so with
    a bias under 2^31 - 2^24 the int32 sum cannot wrap: it is made in int32 directly,
    without the int64 copies (a quantized det run spent a fifth of its time in them)."""
    if ft is np.float32 and acc == "i32" and (bias is None or not bias.size or
                                               int(np.abs(bias.astype(np.int64)).max()) < ACC32_MAX - (1 << 24)):
        out = total.astype(np.int32)
        if bias is not None:
            out += bias.astype(np.int32)
        return out
    total = total.astype(np.int64)
    if bias is not None:
        total = total + bias.astype(np.int64)
    return _accumulate(total, acc)


def _accumulate(total: np.ndarray, acc: str) -> np.ndarray:
    """The exact sum in the accumulator type. An int32 accumulator that would wrap is an
    error, said loudly: `acc="i64"` is for layers whose bound does not fit int32."""
    if acc == "i64":
        return total.astype(np.int64)
    if total.size and (total.max() > ACC32_MAX or total.min() < -ACC32_MAX - 1):
        raise OverflowError("int32 accumulator overflow (too many terms for the bit widths)")
    return total.astype(np.int32)


@register_op("observe", attrs={"method": Attr("str", "minmax"), "range": Attr("floats", []),
                               "range16": Attr("floats", []), "source": Attr("str", ""), "scale": Attr("floats", []),
                               "zero_point": Attr("ints", []), "dtype": Attr("str", "")},
             traits=())
def observe(x, *, method, range, range16, source, scale, zero_point, dtype):
    """Identity that marks an activation to quantize; after calibration `range` holds
    the real-valued range chosen for it and `source` how (observer, relu, shared, bn).
    `range16`, when calibration set it, is the range chosen for 16-bit activations: a
    range that suits 256 levels clips what 65536 levels would resolve (mse, entropy).

    A model that arrives quantized (QDQ) fixes the params instead: `scale`,
    `zero_point` and `dtype` are then used exactly, calibration leaves it alone, and
    the op means what the model's QuantizeLinear/DequantizeLinear pair meant: fake-quant."""
    if scale:
        q = quantize(x, scale=scale, zero_point=zero_point or [0], axis=-1, dtype=dtype)
        return dequantize(q, scale=scale, zero_point=zero_point or [0], axis=-1).astype(x.dtype)
    return x
