"""Lowerings of the integer ops (qcc/ops/quant.py): quantize, dequantize, requantize,
qconv, qmatmul, observe.

Every lowering computes exactly what the reference kernel computes, so a compiled
integer graph matches qcc.interp bit for bit:

- quantize: float32 x / scale (the correctly rounded IEEE quotient), round half to even
  (`tir.nearbyint`), NaN -> 0, saturating; per tensor or per axis. On CPUs the quotient
  is not a division but Markstein's correction of x * (1/scale) by two fused
  multiply-adds (`_quotient`): the same correctly rounded float, for a fraction of the
  cost (a 512-bit vdivps costs ~10 cycles a vector, more than the int8 products of a
  small 1x1 conv).
- dequantize: (int32(q) - zero_point) -> float32, times the float32 scale.
- requantize: TFLite's single-rounding fixed point in int64,
  y = (x * M + 2^(t-1)) >> t (arithmetic shift), t = clip(31 - shift, 1, 62);
  multiplier and shift broadcast along `axis`; then + zero point, clamp, narrow.
  For a 32-bit accumulator with M < 2^31 and t >= 33 (every conv requantize we have
  seen: scales below 1/4) the same integers come from one unsigned 32x32->64 product
  (`_requantize_u32`): CPUs without 64-bit vector multiplies or arithmetic shifts
  (AVX2) run it in a third of the instructions.
- qconv / qmatmul: the operands are centred first (x - zero point, in the narrowest
  integer type that holds it; constants are centred here in numpy), so the zero
  padding of the convolution is the reference's padding with the zero point, and
  the product is accumulated in int32 by relax conv/matmul with out_dtype int32
  (TVM casts each operand to the accumulator type before multiplying) -- in int64
  when the node says `acc="i64"` (int16 activations over a large K). The
  convolution goes through the strategy's `conv_layout`, like the float conv.
- int4 weights: an i4/u4 constant is stored packed, two per byte (qcc.quantization.
  pack_int4), as a uint8 constant half the size; qconv/qmatmul read it through a
  small unpack stage (shift, mask, sign extend) computed in the same kernel as the
  product, so nothing folds it back into an int8 constant and the compiled
  library's weights really are half size. Any other reader of an i4 constant gets
  the unpacked values (`unpacked_int4`).
"""
from __future__ import annotations

import numpy as np

from tvm.relax import op as R

from qcc.analysis import magnitude_bound
from qcc.ir.types import int_range
from qcc.ops.quant import _clamp_bounds, _per_axis
from qcc.quantization import pack_int4

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

def _rint_saturate(cx, v, lo: float, hi: float, nan_free: bool = False):
    """One elementwise stage: q = rint(v) (half to even), NaN -> 0 (the reference's
    zero point), then clipped to [lo, hi] (+-inf saturate there like any value out of
    range). `q` is bound once (a Let), so inlining this stage never duplicates the
    rounding. One select and a min/max: the epilogue of every kernel ending in a
    quantize runs this per value (a chain testing +inf and -inf as well cost four more
    vector instructions each). `nan_free`: v cannot be NaN (qcc.analysis.magnitude_bound),
    so the select goes too (hard-swish conv epilogues 2-4% faster)."""
    from tvm import relax, te, tirx

    if not isinstance(v, relax.Var):
        v = cx.emit(v)

    def fn(t):
        def body(*i):
            q = tirx.Var("q", "float32")
            f = lambda c: tirx.const(c, "float32")  # noqa: E731
            sat = tirx.max(tirx.min(q, f(hi)), f(lo))
            if not nan_free:
                sat = tirx.Select(tirx.isnan(q), f(0.0), sat)
            return tirx.Let(q, tirx.nearbyint(t(*i)), sat)

        return te.compute(t.shape, body, name="rint_saturate")

    return cx.emit_te(fn, v, primfunc_name_hint="rint_saturate")


def _quotient(cx, x, scale, rank: int, axis: int, bound):
    """x / scale, correctly rounded, in float32, wherever it can change quantize's result.

    Where the target has fused multiply-adds (`strategy.fma_quotient`), Markstein's theorem
    gives the same float as the division: with r = RN(1/s) (numpy's float32 division) and
    q0 = RN(x * r), which is within one ulp of x / s, the residual e = fma(-q0, s, x) is
    exact and fma(e, r, q0) is RN(x / s) (Muller et al., Handbook of Floating-Point
    Arithmetic, 2nd ed., Theorem 4.10). Its conditions fail only for quotients that
    overflow (q0 = inf would make the residual NaN) or fall below the normal range
    (|x / s| < 2^-126: every candidate rounds to 0 all the same). So q0 is clamped to
    +-2^33 first: below that the theorem holds as it is, and past it the result, still
    past 2^33 or infinite with the quotient's sign, saturates every integer quantize
    can make (up to 32 bits, whatever the zero point); x = +-inf stays +-inf and NaN
    stays NaN. A clamp, not a select on |q0|: LLVM's loop vectorizer turned the select's
    read of a per-channel s into a gather, lane by lane. `bound`:
    qcc.analysis.magnitude_bound of x (None: unknown); when |x| / s stays below 2^33 the
    clamp goes. A per-tensor scale is an immediate."""
    from tvm import te, tirx
    from tvm.tirx.op import fma

    if not getattr(cx.strategy, "fma_quotient", False):
        return R.divide(x, _axis_const(cx, scale, rank, axis, np.float32, "float32"))
    x = _bound(cx, x)
    s_np = _per_axis(scale, rank, axis, np.float32)
    with np.errstate(divide="ignore", over="ignore"):
        r_np = (np.float32(1) / s_np).astype(np.float32)
    limit = 2.0 ** 33
    clamp = bound is None or not np.all(np.isfinite(r_np)) or float(bound) * float(np.max(np.abs(r_np))) >= limit
    x_shape = [int(d) for d in cx.shape_of(x)]

    def quotient(xv, sv, rv):
        q0 = xv * rv
        if clamp:
            q0 = tirx.min(tirx.max(q0, tirx.const(-limit, "float32")), tirx.const(limit, "float32"))
        q = tirx.Var("q0", "float32")
        return tirx.Let(q, q0, fma(fma(-q, sv, xv), rv, q))

    if s_np.size == 1:
        s, r = (tirx.const(float(v.flat[0]), "float32") for v in (s_np, r_np))
        return cx.emit_te(lambda X: te.compute(x_shape, lambda *i: quotient(X(*i), s, r), name="quotient"),
                          x, primfunc_name_hint="quotient")
    # one scale per index of the channel axis (a 1-D scale list with no axis: numpy
    # broadcasts it against the last one)
    ax = axis if axis >= 0 else rank - 1
    return cx.emit_te(lambda X, S, Rc: te.compute(x_shape, lambda *i: quotient(X(*i), S[i[ax]], Rc[i[ax]]),
                                                  name="quotient"),
                      x, cx.const(s_np.reshape(-1), "float32"), cx.const(r_np.reshape(-1), "float32"),
                      primfunc_name_hint="quotient")


@lowering("quantize")
def lower_quantize(cx, node, ins, attrs):
    """clamp(rint(float32(x) / scale) + zero_point), as qcc.ops.quant.quantize."""
    x = cx.cast(ins[0], "float32")
    rank = len(cx.shape_of(x))
    axis = int(attrs["axis"])
    dtype = attrs["dtype"]
    lo, hi = int_range(dtype)
    # x / s is NaN only for a NaN x, or 0 / 0: a bounded x and positive scales rule both out
    bound = magnitude_bound(node.inputs[0])
    nan_free = bound is not None and all(float(v) > 0 for v in attrs["scale"])
    quotient = _quotient(cx, x, attrs["scale"], rank, axis, bound)
    zp = [int(z) for z in attrs["zero_point"]]
    if len(set(zp)) == 1 and hi - lo < (1 << 17) and abs(zp[0]) < (1 << 24):
        # one zero point, 8/16-bit: clamp(q + z, lo, hi) == clamp(q, lo - z, hi - z) + z
        # exactly (integers below 2^24 in float32), so the float clamp is the only one
        z = zp[0]
        q = R.astype(_rint_saturate(cx, quotient, float(lo - z), float(hi - z), nan_free), "int32")
        return R.astype(R.add(q, cx.const(np.array(z, np.int32), "int32")) if z else q, tvm_dtype(dtype))
    # Saturate in float first (every bound is a float32 integer), then add the zero point
    # in an integer type wide enough that nothing wraps, then clamp to the dtype.
    if (lo, hi) == _I32 or max(abs(z) for z in zp) >= (1 << 24):
        work, sat = "int64", float(1 << 31)
    else:
        work, sat = "int32", float(1 << 30)
    q = _rint_saturate(cx, quotient, -sat, sat, nan_free)
    qi = R.astype(q, work)
    if not _all_zero(zp):
        qi = R.add(qi, _axis_const(cx, zp, rank, axis, np.int64, work))
    qi = R.clip(qi, lo, hi)
    return R.astype(qi, tvm_dtype(dtype))


@lowering("dequantize")
def lower_dequantize(cx, node, ins, attrs):
    """float32(int32(q) - zero_point) * scale (int64 for an i64 accumulator), as
    qcc.ops.quant.dequantize."""
    q = ins[0]
    rank = len(cx.shape_of(q))
    axis = int(attrs["axis"])
    wide = "int64" if cx.dtype_of(q) == "int64" else "int32"  # an i64 accumulator stays exact
    v = cx.cast(q, wide)
    zp = [int(z) for z in attrs["zero_point"]]
    if not _all_zero(zp):
        v = R.subtract(v, _axis_const(cx, zp, rank, axis, np.int64 if wide == "int64" else np.int32, wide))
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
    izp = int(attrs["input_zero_point"])
    lo, hi = _clamp_bounds(attrs["dtype"], attrs.get("clamp"))
    zp = int(attrs["zero_point"])
    m, t = np.broadcast_arrays(m, t)  # the narrow forms read them per channel
    if _fits_u32_form(cx.dtype_of(x), m, t, izp, zp):
        return _requantize_u32(cx, x, m, t, izp, zp, lo, hi, tvm_dtype(attrs["dtype"]))
    window = _window_form(cx.dtype_of(x), m, t, izp, zp, lo, hi)
    if window is not None:
        return _requantize_window(cx, x, window, lo, hi, tvm_dtype(attrs["dtype"]))
    rounding = np.left_shift(np.int64(1), t - 1)
    acc = cx.cast(x, "int64")
    if izp:
        acc = R.subtract(acc, cx.const(izp, "int64"))
    y = R.right_shift(R.add(R.multiply(acc, cx.const(m, "int64")), cx.const(rounding, "int64")),
                      cx.const(t, "int64"))
    if zp:
        y = R.add(y, cx.const(zp, "int64"))
    y = R.clip(y, lo, hi)
    return R.astype(y, tvm_dtype(attrs["dtype"]))


_NARROW_INTS = ("int8", "uint8", "int16", "uint16", "int32")


def _fits_u32_form(x_dtype: str, m: np.ndarray, t: np.ndarray, izp: int, zp: int) -> bool:
    """Whether `_requantize_u32` gives the int64 formula's integers: a 32-bit input,
    multipliers below 2^31, every shift t at least 33, an int32 input zero point and an
    output zero point below 2^29 in size (it joins K in one int32 constant)."""
    return (x_dtype in _NARROW_INTS and bool((m < (1 << 31)).all()) and bool((t >= 33).all())
            and -(1 << 31) <= izp < (1 << 31) and abs(zp) < (1 << 29))


def _at(c, idx):
    """Element idx of a per-channel constant c broadcast against the output (size-1 axes read at 0)."""
    return c[tuple(i if int(d) > 1 else 0 for i, d in zip(idx, c.shape))]


def _requantize_u32(cx, x, m, t, izp: int, zp: int, lo: int, hi: int, out_dtype: str):
    """floor(((x - izp) * M + 2^(t-1)) / 2^t) with one unsigned 32x32 -> 64 product.

    With u = x + 2^31 (as uint32, so 0 <= u < 2^32) and P = u * M (< 2^63):
      (x - izp) * M + 2^(t-1) = P - C,   C = M * (2^31 + izp) - 2^(t-1).
    Adding K * 2^t, K = ceil(C / 2^t), makes it non-negative without changing the floor:
      y = ((P + E) >> t) - K,   E = K * 2^t - C in [0, 2^t),
    a logical shift of P + E < 2^63 + 2^62 (no uint64 wrap). For t >= 33 the shifted
    value is below 2^31 and |K| < 2^30, so the rest is int32 arithmetic. M, E, t and
    K - zero point are per-channel constants computed here in Python integers."""
    from tvm import te, tirx

    C = [int(mi) * ((1 << 31) + izp) - (1 << (int(ti) - 1)) for mi, ti in zip(m.ravel(), t.ravel())]
    K = [-((-c) >> int(ti)) for c, ti in zip(C, t.ravel())]
    E = [k * (1 << int(ti)) - c for k, c, ti in zip(K, C, t.ravel())]
    shape = m.shape
    mc = cx.const(m.astype(np.uint32), "uint32")
    ec = cx.const(np.array(E, dtype=np.uint64).reshape(shape), "uint64")
    tc = cx.const(t.astype(np.uint64), "uint64")
    kc = cx.const(np.array(K, dtype=np.int32).reshape(shape) - np.int32(zp), "int32")

    def fn(xt, mt, et, tt, kt):
        def body(*idx):
            # x + 2^31 as uint32: the sign bit flipped (an add would meet TVM's simplifier,
            # which assumes integer arithmetic never wraps)
            u = tirx.bitwise_xor(tirx.reinterpret("uint32", xt[idx].astype("int32")),
                                 tirx.const(1 << 31, "uint32")).astype("uint64")
            q = ((u * _at(mt, idx).astype("uint64") + _at(et, idx)) >> _at(tt, idx)).astype("int32")
            y = q - _at(kt, idx)
            return tirx.max(tirx.min(y, tirx.const(hi, "int32")), tirx.const(lo, "int32")).astype(out_dtype)

        return te.compute(xt.shape, body, name="requantize")

    return cx.emit_te(fn, cx.emit(x), mc, ec, tc, kc, primfunc_name_hint="requantize")


def _window_form(x_dtype: str, m: np.ndarray, t: np.ndarray, izp: int, zp: int, lo: int, hi: int):
    """Per-channel constants (xmin, xmax, base, m, rem, t) of `_requantize_window`, or None
    where some channel does not fit it (then the int64 formula runs).

    y(x) = floor(((x - izp) * M + 2^(t-1)) / 2^t) never decreases with x, and the output
    clamps y + zp to [lo, hi]. So x can be clamped first, to [xmin, xmax]: xmin the largest x
    with y(x) + zp <= lo, xmax the smallest with y(x) + zp >= hi -- each side gives the clamp
    bound it would have given. In that window x' = x - xmin is small (the output's range
    times 2^t / M: under 2^18 for 16-bit outputs with the normalised multipliers M >= 2^30
    fold-requantize writes), and
        y(x) + zp = base + floor((x' * M + rem) / 2^t),
        base * 2^t + rem = (xmin - izp) * M + 2^(t-1) + zp * 2^t,  0 <= rem < 2^t,
    one unsigned 32x32 -> 64 product and a logical shift whose result fits int32. This is
    the form the t < 33 requantizes (16-bit outputs, scale ratios of 1/4 and up) take
    where the unsigned form of `_requantize_u32` does not apply: CPUs without 64-bit vector
    multiplies or arithmetic shifts (AVX2, NEON) ran them through the emulated int64 formula."""
    if x_dtype not in _NARROW_INTS or not -(1 << 31) <= izp < (1 << 31):
        return None
    rows = []
    for mi, ti in zip((int(v) for v in m.ravel()), (int(v) for v in t.ravel())):
        # the reference computes (x - izp) * M + 2^(t-1) in int64: where that could wrap, its
        # integers are the wrapped ones, which only the int64 formula repeats
        if mi <= 0 or max(izp - _I32[0], _I32[1] - izp) * mi + (1 << (ti - 1)) >= (1 << 63):
            return None
        half = 1 << (ti - 1)
        # y + zp <= lo  <=>  (x - izp) * M <= (lo - zp + 1) * 2^t - 2^(t-1) - 1
        xmin = max(izp + ((lo - zp + 1) * (1 << ti) - half - 1) // mi, _I32[0])
        # y + zp >= hi  <=>  (x - izp) * M >= (hi - zp) * 2^t - 2^(t-1)
        xmax = min(izp - (-((hi - zp) * (1 << ti) - half) // mi), _I32[1])
        if xmax < xmin:
            return None
        c0 = (xmin - izp) * mi + half + zp * (1 << ti)
        base, rem = c0 >> ti, c0 & ((1 << ti) - 1)
        # the largest shifted value (the product stays under 2^64: the window is under 2^31
        # and M under 2^32); it and base + it must be int32
        top = ((xmax - xmin) * mi + rem) >> ti
        if xmax - xmin >= (1 << 31) or top >= (1 << 31) or not -(1 << 31) <= base <= base + top < (1 << 31):
            return None
        rows.append((xmin, xmax, base, mi, rem, ti))
    return [np.array(c).reshape(m.shape) for c in zip(*rows)]


def _requantize_window(cx, x, consts, lo: int, hi: int, out_dtype: str):
    """clamp(base + ((clamp(x, xmin, xmax) - xmin) * M + rem) >> t, lo, hi): `_window_form`."""
    from tvm import te, tirx

    xmin, xmax, base, m, rem, t = consts
    args = [cx.const(xmin.astype(np.int32), "int32"), cx.const(xmax.astype(np.int32), "int32"),
            cx.const(base.astype(np.int32), "int32"), cx.const(m.astype(np.uint64), "uint64"),
            cx.const(rem.astype(np.uint64), "uint64"), cx.const(t.astype(np.uint64), "uint64")]

    def fn(xt, xmin_t, xmax_t, bt, mt, rt, tt):
        def body(*idx):
            xc = tirx.max(tirx.min(xt[idx].astype("int32"), _at(xmax_t, idx)), _at(xmin_t, idx))
            u = (xc - _at(xmin_t, idx)).astype("uint64")
            q = ((u * _at(mt, idx) + _at(rt, idx)) >> _at(tt, idx)).astype("int32") + _at(bt, idx)
            return tirx.max(tirx.min(q, tirx.const(hi, "int32")), tirx.const(lo, "int32")).astype(out_dtype)

        return te.compute(xt.shape, body, name="requantize")

    return cx.emit_te(fn, cx.emit(x), *args, primfunc_name_hint="requantize_window")


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


def _acc_of(node, *dts) -> str:
    """The accumulator the node asks for (`acc="i64"`), else _acc_dtype of the operands."""
    if node is not None and node.attrs.get("acc") == "i64":
        return "int64"
    return _acc_dtype(*dts)


def _out_dtype(node) -> str:
    return "int64" if node is not None and node.attrs.get("acc") == "i64" else "int32"


# --- int4 weights: packed two per byte ---------------------------------------------------

def _int4_const(cx, node, k: int):
    """The graph value of input k when it is an i4/u4 constant (stored packed), else None."""
    v = node.inputs[k] if node is not None and len(node.inputs) > k else None
    return v if v is not None and v.is_const and v.dtype in ("i4", "u4") else None


def packed_int4(cx, value):
    """The uint8 constant of an i4/u4 constant's values, two per byte (pack_int4)."""
    return cx.const(pack_int4(value.data), "uint8")


def _unpack_te(packed, shape, signed: bool, dtype: str = "int8"):
    """A te stage giving the 4-bit values of `shape` from a pack_int4 buffer: byte f >> 1,
    shifted by 4 * (f & 1), masked to a nibble, sign extended when signed."""
    from tvm import te, tirx

    strides = [1] * len(shape)
    for i in range(len(shape) - 2, -1, -1):
        strides[i] = strides[i + 1] * int(shape[i + 1])

    def body(*idx):
        f = sum((i * s for i, s in zip(idx, strides)), tirx.const(0, "int32")) if idx else tirx.const(0, "int32")
        b = packed[f >> 1].astype("int32")
        nib = (b >> ((f & 1) * 4)) & 15
        if signed:
            nib = nib - ((nib & 8) << 1)
        return nib.astype(dtype)

    return te.compute([int(d) for d in shape], body, name="unpack_int4")


def unpacked_int4(cx, value):
    """An i4/u4 constant as int8/uint8 values, unpacked from its packed constant by a
    stage TVM may constant-fold (for readers other than qconv/qmatmul)."""
    shape = tuple(int(d) for d in value.shape)
    signed = value.dtype == "i4"
    return cx.emit_te(lambda p: _unpack_te(p, shape, signed, "int8" if signed else "uint8"),
                      packed_int4(cx, value), primfunc_name_hint="unpack_int4")


def _bound(cx, e):
    """A Relax value emit_te can take: variables and constants as they are, else bound."""
    import tvm
    from tvm import relax

    return e if isinstance(e, (relax.Var, tvm.ir.GenericConst)) else cx.emit(e)


def _qconv_packed(cx, node, x, wv, b, attrs):
    """qconv by packed int4 weights: unpack and convolve in one kernel (NC... / OI...)."""
    from tvm import topi

    xc, xdt = _centred(cx, x, int(attrs["x_zero_point"]))
    xc = _bound(cx, xc)
    acc = _acc_of(node, xdt, "int8")
    rank = len(cx.shape_of(x))
    n = rank - 2
    shape = tuple(int(d) for d in wv.shape)
    signed = wv.dtype == "i4"
    layout = "NC" + "DHW"[3 - n:]
    kernel_layout = "OI" + "DHW"[3 - n:]

    def fn(xt, pt):
        wt = _unpack_te(pt, shape, signed)
        return topi.nn.conv(xt, wt, [int(s) for s in attrs.get("strides") or [1] * n],
                            [int(p) for p in attrs.get("pads") or [0] * 2 * n],
                            [int(d) for d in attrs.get("dilations") or [1] * n], int(attrs.get("group", 1)),
                            layout, kernel_layout, out_dtype=acc)

    y = cx.emit_te(fn, xc, packed_int4(cx, wv), primfunc_name_hint="qconv_int4")
    return _add_bias(cx, y, b, [1, shape[0]] + [1] * n)


def _qmatmul_packed(cx, node, a, bv, bias, attrs):
    """qmatmul by a packed int4 2-D matrix: unpack and reduce in one kernel, or None."""
    from tvm import te

    if len(bv.shape) != 2 or int(attrs.get("b_zero_point", 0)) != 0 or len(cx.shape_of(a)) < 1:
        return None
    ac, adt = _centred(cx, a, int(attrs["a_zero_point"]))
    ac = _bound(cx, ac)
    acc = _acc_of(node, adt, "int8")
    K, N = (int(d) for d in bv.shape)
    a_shape = cx.shape_of(a)
    signed = bv.dtype == "i4"

    def fn(at, pt):
        wt = _unpack_te(pt, (K, N), signed)
        k = te.reduce_axis((0, K), name="k")
        out = list(a_shape[:-1]) + [N]
        return te.compute(out, lambda *i: te.sum(at[i[:-1] + (k,)].astype(acc) * wt[k, i[-1]].astype(acc), axis=k),
                          name="qmatmul_int4")

    y = cx.emit_te(fn, ac, packed_int4(cx, bv), primfunc_name_hint="qmatmul_int4")
    if bias is not None:
        y = R.add(y, cx.cast(bias, acc))
    return y


@lowering("qconv")
def lower_qconv(cx, node, ins, attrs):
    """sum((x - zx) * w) + b into int32 (int64 with acc="i64"), through the same conv (and
    layout hook) as conv; packed int4 weights through one unpack-and-convolve kernel."""
    x, w, b = (list(ins) + [None])[:3]
    rank = len(cx.shape_of(x))
    w4 = _int4_const(cx, node, 1)
    if w4 is not None:
        return cx.cast(_qconv_packed(cx, node, x, w4, b, attrs), _out_dtype(node))
    xc, xdt = _centred(cx, x, int(attrs["x_zero_point"]))
    wc, wdt = _centred(cx, w, 0)
    acc = _acc_of(node, xdt, wdt)
    y = conv_nd(cx, node, xc, wc, attrs, out_dtype=acc)
    oc = cx.shape_of(w)[0]
    y = _add_bias(cx, y, b, [1, oc] + [1] * (rank - 2))
    return cx.cast(y, _out_dtype(node))


@lowering("qmatmul")
def lower_qmatmul(cx, node, ins, attrs):
    """(a - za) @ (b - zb) + bias into int32 or int64 (bias along the last axis)."""
    a, b, bias = (list(ins) + [None])[:3]
    b4 = _int4_const(cx, node, 1)
    if b4 is not None:
        y = _qmatmul_packed(cx, node, a, b4, bias, attrs)
        if y is not None:
            return cx.cast(y, _out_dtype(node))
    ac, adt = _centred(cx, a, int(attrs["a_zero_point"]))
    bc, bdt = _centred(cx, b, int(attrs["b_zero_point"]))
    acc = _acc_of(node, adt, bdt)
    y = cx.emit(R.matmul(ac, bc, out_dtype=acc))
    if bias is not None:  # numpy broadcasting, as the reference adds it
        y = R.add(y, cx.cast(bias, cx.dtype_of(y)))
    return cx.cast(y, _out_dtype(node))
