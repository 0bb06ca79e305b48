"""Lowerings of the integer ops (qcc/ops/quant.py): quantize, dequantize, requantize,
qconv, qmatmul, observe.

Every lowering computes exactly what the reference kernel computes, so a compiled
integer graph matches qcc.interp bit for bit:

- quantize: float32 x / scale (IEEE division, no reciprocal), round half to even
  (`tir.nearbyint`), NaN -> 0, saturating; per tensor or per axis.
- dequantize: (int32(q) - zero_point) -> float32, times the float32 scale.
- requantize: TFLite's single-rounding fixed point in int64,
  y = (x * M + 2^(t-1)) >> t (arithmetic shift), t = clip(31 - shift, 1, 62);
  multiplier and shift broadcast along `axis`; then + zero point, clamp, narrow.
- qconv / qmatmul: the operands are centred first (x - zero point, in the narrowest
  integer type that holds it; constants are centred here in numpy), so the zero
  padding of the convolution is the reference's padding with the zero point, and
  the product is accumulated in int32 by relax conv/matmul with out_dtype int32
  (TVM casts each operand to the accumulator type before multiplying). The
  convolution goes through the strategy's `conv_layout`, like the float conv.
"""
from __future__ import annotations

import numpy as np

from tvm.relax import op as R

from qcc.ir.types import int_range
from qcc.ops.quant import _per_axis

from .lower import LoweringError, lowering, tvm_dtype
from .lower_nn import conv_nd

_I16 = (-(1 << 15), (1 << 15) - 1)
_I32 = (-(1 << 31), (1 << 31) - 1)


def _axis_const(cx, vals, rank: int, axis: int, np_dtype, tvm_dt: str):
    """A per-tensor (0-d) or per-axis (broadcastable) constant, shaped as the reference
    kernel shapes it (`qcc.ops.quant._per_axis`)."""
    return cx.const(_per_axis(vals, rank, axis, np_dtype), tvm_dt)


def _all_zero(vals) -> bool:
    return all(int(v) == 0 for v in vals)


# --- observe ---------------------------------------------------------------------------

@lowering("observe")
def lower_observe(cx, node, ins, attrs):
    return ins[0]


# --- quantize / dequantize ---------------------------------------------------------------

def _rint_saturate(cx, v, lo: float, hi: float, bound: float):
    """One elementwise stage: q = rint(v) (half to even), then the reference's
    nan_to_num -- NaN -> 0, +inf -> hi, -inf -> lo, all *before* the zero point is
    added (so -inf becomes lo + zp, clamped; mirrored as is) -- then clipped to
    [-bound, bound] so the integer cast is defined. `q` is bound once (a Let), so
    inlining this stage never duplicates the rounding."""
    from tvm import relax, te, tirx

    if not isinstance(v, relax.Var):
        v = cx.emit(v)

    def fn(t):
        def body(*i):
            q = tirx.Var("q", "float32")
            f = lambda c: tirx.const(c, "float32")  # noqa: E731
            sat = tirx.Select(tirx.isnan(q), f(0.0),
                              tirx.Select(q == f(float("inf")), f(hi),
                                          tirx.Select(q == f(float("-inf")), f(lo),
                                                      tirx.max(tirx.min(q, f(bound)), f(-bound)))))
            return tirx.Let(q, tirx.nearbyint(t(*i)), sat)

        return te.compute(t.shape, body, name="rint_saturate")

    return cx.emit_te(fn, v, primfunc_name_hint="rint_saturate")


@lowering("quantize")
def lower_quantize(cx, node, ins, attrs):
    """clamp(rint(float32(x) / scale) + zero_point), as qcc.ops.quant.quantize."""
    x = cx.cast(ins[0], "float32")
    rank = len(cx.shape_of(x))
    axis = int(attrs["axis"])
    dtype = attrs["dtype"]
    lo, hi = int_range(dtype)
    s = _axis_const(cx, attrs["scale"], rank, axis, np.float32, "float32")
    zp = [int(z) for z in attrs["zero_point"]]
    # Saturate in float first (every bound is a float32 integer), then add the zero point
    # in an integer type wide enough that nothing wraps, then clamp to the dtype.
    if (lo, hi) == _I32 or max(abs(z) for z in zp) >= (1 << 24):
        work, bound = "int64", float(1 << 31)
    else:
        work, bound = "int32", float(1 << 30)
    q = _rint_saturate(cx, R.divide(x, s), float(lo), float(hi), bound)
    qi = R.astype(q, work)
    if not _all_zero(zp):
        qi = R.add(qi, _axis_const(cx, zp, rank, axis, np.int64, work))
    qi = R.clip(qi, lo, hi)
    return R.astype(qi, tvm_dtype(dtype))


@lowering("dequantize")
def lower_dequantize(cx, node, ins, attrs):
    """float32(int32(q) - zero_point) * scale, as qcc.ops.quant.dequantize."""
    q = ins[0]
    rank = len(cx.shape_of(q))
    axis = int(attrs["axis"])
    v = cx.cast(q, "int32")
    zp = [int(z) for z in attrs["zero_point"]]
    if not _all_zero(zp):
        v = R.subtract(v, _axis_const(cx, zp, rank, axis, np.int32, "int32"))
    f = R.astype(v, "float32")
    return R.multiply(f, _axis_const(cx, attrs["scale"], rank, axis, np.float32, "float32"))


# --- requantize ----------------------------------------------------------------------------

@lowering("requantize")
def lower_requantize(cx, node, ins, attrs):
    """y = (acc * M + 2^(t-1)) >> t in int64, t = clip(31 - shift, 1, 62); + zp; clamp."""
    x = ins[0]
    rank = len(cx.shape_of(x))
    axis = int(attrs["axis"])
    m = _per_axis(attrs["multiplier"], rank, axis, np.int64)
    t = np.clip(np.int64(31) - _per_axis(attrs["shift"], rank, axis, np.int64), 1, 62)
    if (m < 0).any() or (m >= (1 << 32)).any():
        raise LoweringError(f"requantize %{node.name}: multiplier outside [0, 2^32): {attrs['multiplier']}")
    rounding = np.left_shift(np.int64(1), t - 1)
    acc = cx.cast(x, "int64")
    izp = int(attrs["input_zero_point"])
    if izp:
        acc = R.subtract(acc, cx.const(izp, "int64"))
    y = R.right_shift(R.add(R.multiply(acc, cx.const(m, "int64")), cx.const(rounding, "int64")),
                      cx.const(t, "int64"))
    zp = int(attrs["zero_point"])
    if zp:
        y = R.add(y, cx.const(zp, "int64"))
    dtype = attrs["dtype"]
    lo, hi = int_range(dtype)
    clamp = attrs.get("clamp") or []
    if clamp:
        lo, hi = max(lo, int(clamp[0])), min(hi, int(clamp[1]))
    y = R.clip(y, lo, hi)
    return R.astype(y, tvm_dtype(dtype))


# --- qconv / qmatmul -----------------------------------------------------------------------

def _fits(lo: int, hi: int, bounds) -> bool:
    return bounds[0] <= lo and hi <= bounds[1]


def _centred(cx, v, zp: int):
    """`v - zp` exactly, in the narrowest integer type that holds every value: the operand
    itself when zp is 0 and it is 8- or 16-bit, else int16, int32 or int64. Constants are
    centred in numpy. Returns (expr, tvm dtype)."""
    dt = cx.dtype_of(v)
    if not dt.startswith(("int", "uint")):
        raise LoweringError(f"integer op on a {dt} operand")
    if zp == 0 and dt in ("int8", "uint8", "int16"):
        return v, dt
    info = np.iinfo(dt)
    lo, hi = int(info.min) - zp, int(info.max) - zp
    work = "int16" if _fits(lo, hi, _I16) else "int32" if _fits(lo, hi, _I32) else "int64"
    c = cx.const_value(v)
    if c is not None:
        return cx.const(c.astype(np.int64) - zp, work), work
    y = cx.cast(v, work)
    if zp:
        y = R.subtract(y, cx.const(zp, work))
    return y, work


def _acc_dtype(*dts) -> str:
    """int32 accumulation (the op's contract), int64 when an operand needed int64."""
    return "int64" if "int64" in dts else "int32"


def _add_bias(cx, y, b, shape):
    if b is None:
        return y
    return R.add(y, cx.reshape(cx.cast(b, cx.dtype_of(y)), shape))


@lowering("qconv")
def lower_qconv(cx, node, ins, attrs):
    """sum((x - zx) * w) + b into int32, through the same conv (and layout hook) as conv."""
    x, w, b = (list(ins) + [None])[:3]
    rank = len(cx.shape_of(x))
    xc, xdt = _centred(cx, x, int(attrs["x_zero_point"]))
    wc, wdt = _centred(cx, w, 0)
    acc = _acc_dtype(xdt, wdt)
    y = conv_nd(cx, node, xc, wc, attrs, out_dtype=acc)
    oc = cx.shape_of(w)[0]
    y = _add_bias(cx, y, b, [1, oc] + [1] * (rank - 2))
    return cx.cast(y, "int32")


@lowering("qmatmul")
def lower_qmatmul(cx, node, ins, attrs):
    """(a - za) @ (b - zb) + bias into int32 (bias along the last axis)."""
    a, b, bias = (list(ins) + [None])[:3]
    ac, adt = _centred(cx, a, int(attrs["a_zero_point"]))
    bc, bdt = _centred(cx, b, int(attrs["b_zero_point"]))
    acc = _acc_dtype(adt, bdt)
    y = cx.emit(R.matmul(ac, bc, out_dtype=acc))
    if bias is not None:  # numpy broadcasting, as the reference adds it
        y = R.add(y, cx.cast(bias, cx.dtype_of(y)))
    return cx.cast(y, "int32")
