"""Lowerings of elementwise, activation, normalisation-free math and reduction ops."""
from __future__ import annotations

import math

import numpy as np

from tvm import te, topi
from tvm.relax import op as R

from .exact_fp import INEXACT_KERNEL
from .lower import LoweringError, lowering

# --- binary --------------------------------------------------------------------------

_BINARY = {
    "add": R.add, "sub": R.subtract, "mul": R.multiply, "min": R.minimum, "max": R.maximum,
    "equal": R.equal, "less": R.less, "greater": R.greater,
}


def _is_int(dtype: str) -> bool:
    return dtype.startswith(("int", "uint"))


@lowering(*_BINARY)
def lower_binary(cx, node, ins, attrs):
    a, b = ins
    if node.op in ("equal", "less", "greater") and cx.dtype_of(a) == "bool":
        if node.op == "equal":  # bool == bool: not xor
            return R.logical_not(R.logical_xor(a, b))
        a, b = R.astype(a, "int8"), R.astype(b, "int8")
    return _BINARY[node.op](a, b)


@lowering("div")
def lower_div(cx, node, ins, attrs):
    a, b = ins
    # relax divide on integers legalizes to TIR Div, which truncates like C and ONNX.
    if not _is_int(cx.dtype_of(a)):
        return R.divide(a, b)
    bv = cx.const_value(b)
    if bv is not None and not (bv == 0).any() and not (bv == -1).any():
        return R.divide(a, b)
    # A zero divisor (or INT_MIN / -1) would trap the process (SIGFPE). Both sides of a
    # select are evaluated, so the divisor itself is made safe: 0 and -1 become 1; -1
    # is handled as a (wrapping) negation and 0 yields 0 (ONNX leaves it undefined).
    signed = cx.dtype_of(b).startswith("int")
    bad = R.equal(b, cx.scalar(0, b))
    minus1 = R.equal(b, cx.scalar(-1, b)) if signed else None
    unsafe = R.logical_or(bad, minus1) if signed else bad
    q = R.divide(a, R.where(unsafe, cx.scalar(1, b), b))
    if signed:
        q = R.where(minus1, R.negative(a), q)
    return R.where(bad, cx.scalar(0, a), q)


@lowering("pow")
def lower_pow(cx, node, ins, attrs):
    a, b = ins
    dt = cx.dtype_of(a)
    e = cx.const_value(b)
    if not _is_int(dt) and e is not None and e.size and (e == e.flat[0]).all() \
            and float(e.flat[0]) in (2, 3, 4):
        # x**2, x**3, x**4 (RMS/layer norms, GELU's tanh form) as products, like onnxruntime's
        # Pow: libm's powf is a scalar call per element, which TVM warns about for y >= 3
        x = cx.cast(a, _work_dtype(dt))
        out_shape = tuple(node.outputs[0].shape)
        if cx.shape_of(a) != out_shape:  # an exponent of higher rank adds axes
            x = R.broadcast_to(x, out_shape)
        x2 = R.multiply(x, x)
        y = {2.0: x2, 3.0: R.multiply(x2, x), 4.0: R.multiply(x2, x2)}[float(e.flat[0])]
        return R.astype(y, dt) if _work_dtype(dt) != dt else y
    if _is_int(dt):  # like ONNX Runtime: std::pow in double, truncated back
        return R.astype(R.power(R.astype(a, "float64"), cx.cast(b, "float64")), dt)
    work = _work_dtype(dt)
    return R.astype(R.power(cx.cast(a, work), cx.cast(b, work)), dt) if work != dt \
        else R.power(a, cx.cast(b, dt))


# --- unary ---------------------------------------------------------------------------

_UNARY = {
    "sqrt": R.sqrt, "log": R.log, "neg": R.negative, "abs": R.abs,
    "floor": R.floor, "ceil": R.ceil, "sin": R.sin, "cos": R.cos,
    "relu": R.nn.relu, "not": R.logical_not,
}


_TRANSCENDENTAL = {"sqrt", "log", "sin", "cos"}  # of _UNARY (the others: _FAST)


def _work_dtype(dt: str) -> str:
    """f16/bf16 math runs in f32 (as the reference kernels do); others natively."""
    return "float32" if dt in ("float16", "bfloat16") else dt


def _in_work_dtype(cx, x, fn):
    dt = cx.dtype_of(x)
    work = _work_dtype(dt)
    if work == dt:
        return fn(x)
    return R.astype(fn(R.astype(x, work)), dt)


# float32 exp, sigmoid, tanh and erf as polynomials (TVM's topi.fast_*: Cephes' exp, Eigen's
# rational tanh and erf), not R.exp/R.sigmoid/R.tanh/R.erf: those lower to a call of libm's
# expf/tanhf/erff per element, which LLVM cannot vectorize. Measured here: convnext's GELU
# epilogues (3-7 ms of a 1.2M-element matmul kernel), EfficientNet's SiLU and the softmax of
# attention ran at ~4 ns per element. Error against float64 over [-6, 6] (erf, tanh) and
# [-80, 80] (exp): tests/test_targets.py::test_transcendentals_are_vectorized_polynomials.
# Other dtypes keep the R ops.

def _fast_sigmoid(t):
    """1 / (1 + exp(-x)), exp saturating (fast_exp clamps its input to +-88.4)."""
    e = topi.fast_exp(topi.negative(t))
    return te.compute(t.shape, lambda *i: 1.0 / (1.0 + e(*i)), name="sigmoid")


_FAST = {"exp": (topi.fast_exp, R.exp), "sigmoid": (_fast_sigmoid, R.sigmoid),
         "tanh": (topi.fast_tanh, R.tanh), "erf": (topi.fast_erf, R.erf)}


def _fast(cx, name: str, x):
    """`name` of x: the polynomial kernel on float32 (named inexact for exact_fp), else R's op."""
    te_fn, r_op = _FAST[name]
    if cx.dtype_of(x) != "float32":
        return r_op(x)
    return cx.emit_te(te_fn, cx.emit(x), primfunc_name_hint=INEXACT_KERNEL + name)


@lowering(*_FAST)
def lower_fast_unary(cx, node, ins, attrs):
    return _in_work_dtype(cx, ins[0], lambda x: _fast(cx, node.op, x))


@lowering(*_UNARY)
def lower_unary(cx, node, ins, attrs):
    if node.op in _TRANSCENDENTAL:
        return _in_work_dtype(cx, ins[0], _UNARY[node.op])
    return _UNARY[node.op](ins[0])


@lowering("reciprocal")
def lower_reciprocal(cx, node, ins, attrs):
    return _in_work_dtype(cx, ins[0], lambda x: R.divide(cx.scalar(1, x), x))


@lowering("leaky_relu")
def lower_leaky_relu(cx, node, ins, attrs):
    x = ins[0]
    alpha = float(attrs["alpha"])
    # ONNX: x if x >= 0 else alpha * x (exact for every alpha, unlike max(x, alpha*x))
    return R.where(R.less(x, cx.scalar(0, x)), R.multiply(x, cx.scalar(alpha, x)), x)


@lowering("prelu")
def lower_prelu(cx, node, ins, attrs):
    x, slope = ins
    slope = cx.cast(slope, cx.dtype_of(x))
    return R.where(R.less(x, cx.scalar(0, x)), R.multiply(x, slope), x)


def _clamp(cx, x, lo: float, hi: float):
    """The reference's clip: integers max(lo) then min(hi) with the bounds rounded inward;
    floats min(hi) then max(lo) (ONNX: when lo > hi everything becomes lo)."""
    dt = cx.dtype_of(x)
    if _is_int(dt):
        info = np.iinfo(dt)
        lo = info.min if lo == -math.inf else max(info.min, math.ceil(lo))
        hi = info.max if hi == math.inf else min(info.max, math.floor(hi))
        if lo > info.min:
            x = R.maximum(x, cx.scalar(lo, x))
        if hi < info.max:
            x = R.minimum(x, cx.scalar(hi, x))
        return x
    if hi != math.inf:
        x = R.minimum(x, cx.scalar(hi, x))
    if lo != -math.inf:
        x = R.maximum(x, cx.scalar(lo, x))
    return x


@lowering("clip")
def lower_clip(cx, node, ins, attrs):
    lo = float(attrs.get("min", -math.inf))
    hi = float(attrs.get("max", math.inf))
    return _clamp(cx, ins[0], lo, hi)


@lowering("hard_sigmoid")
def lower_hard_sigmoid(cx, node, ins, attrs):
    x = ins[0]
    y = R.add(R.multiply(x, cx.scalar(float(attrs["alpha"]), x)), cx.scalar(float(attrs["beta"]), x))
    return _clamp(cx, y, 0.0, 1.0)


@lowering("hard_swish")
def lower_hard_swish(cx, node, ins, attrs):
    # ONNX: x * max(0, min(1, alpha * x + beta)), alpha = 1/6, beta = 0.5
    x = ins[0]
    y = R.add(R.multiply(x, cx.scalar(1.0 / 6.0, x)), cx.scalar(0.5, x))
    return R.multiply(x, _clamp(cx, y, 0.0, 1.0))


@lowering("gelu")
def lower_gelu(cx, node, ins, attrs):
    return _in_work_dtype(cx, ins[0], lambda x: _gelu(cx, x, attrs))


def _gelu(cx, x, attrs):
    approx = attrs.get("approximate", "none")
    if approx == "none":
        # 0.5 * x * (1 + erf(x / sqrt(2)))
        e = _fast(cx, "erf", R.multiply(x, cx.scalar(1.0 / math.sqrt(2.0), x)))
        return R.multiply(R.multiply(x, cx.scalar(0.5, x)), R.add(e, cx.scalar(1.0, x)))
    if approx == "tanh":
        # 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
        x3 = R.multiply(R.multiply(x, x), x)
        inner = R.multiply(R.add(x, R.multiply(x3, cx.scalar(0.044715, x))),
                           cx.scalar(math.sqrt(2.0 / math.pi), x))
        return R.multiply(R.multiply(x, cx.scalar(0.5, x)), R.add(_fast(cx, "tanh", inner), cx.scalar(1.0, x)))
    raise LoweringError(f"gelu: unknown approximate={approx!r}")


@lowering("softmax")
def lower_softmax(cx, node, ins, attrs):
    return _in_work_dtype(cx, ins[0], lambda x: _softmax(cx, x, int(attrs["axis"]), log=False))


def _softmax(cx, x, axis: int, log: bool):
    """exp(x - max) / sum (or x - max - log(sum)), the exp a polynomial kernel (_fast): TVM's
    R.nn.softmax calls expf per element (attention's 4x196x196 softmax: 0.6 ms)."""
    if cx.dtype_of(x) != "float32":
        return R.nn.log_softmax(x, axis=axis) if log else R.nn.softmax(x, axis=axis)
    shifted = cx.emit(R.subtract(x, _row_reduce(cx, x, axis, "max")))
    e = _fast(cx, "exp", shifted)
    total = _row_reduce(cx, e, axis, "sum")
    if log:
        return R.subtract(shifted, R.log(total))
    return R.divide(e, total)


def _row_reduce(cx, x, axis: int, kind: str):
    """max or sum of float32 `x` along `axis`, keepdims. Along a long last axis (a
    classifier's 6625 classes, attention rows): interleaved partial results (_interleaved);
    a plain reduction ran one element at a time (rec's 40x6625 max and sum: 63 us each).
    A max is the same in any order; a sum is not, so the interleaved sum is named an
    inexact kernel (softmax's sum adds exp's approximations anyway)."""
    shape = [int(d) for d in cx.shape_of(x)]
    lanes = int(getattr(cx.strategy, "partial_sums", 0))
    if axis % len(shape) != len(shape) - 1 or not lanes or shape[-1] < 4 * lanes:
        return (R.max if kind == "max" else R.sum)(x, axis=[axis], keepdims=True)
    rows = int(np.prod(shape[:-1]))
    name = "row_max" if kind == "max" else INEXACT_KERNEL + "row_sum"
    y = _interleaved(cx, cx.reshape(x, [rows, shape[-1]]), kind, lanes, "float32", name)
    return cx.reshape(y, shape[:-1] + [1])


@lowering("log_softmax")
def lower_log_softmax(cx, node, ins, attrs):
    return _in_work_dtype(cx, ins[0], lambda x: _softmax(cx, x, int(attrs["axis"]), log=True))


@lowering("where")
def lower_where(cx, node, ins, attrs):
    c, a, b = ins
    return R.where(c, a, b)


@lowering("cast")
def lower_cast(cx, node, ins, attrs):
    from .lower import tvm_dtype

    x = ins[0]
    to = tvm_dtype(attrs["to"])
    src = cx.dtype_of(x)
    if to == "bool" and src != "bool":
        return R.not_equal(x, cx.scalar(0, x))
    if attrs["to"] in ("i4", "u4"):
        # keep the low four bits, sign-extended for i4 (any narrowing integer cast)
        v = R.bitwise_and(R.astype(x, "int64"), cx.const(15, "int64"))
        if attrs["to"] == "i4":
            v = R.where(R.greater_equal(v, cx.const(8, "int64")), R.subtract(v, cx.const(16, "int64")), v)
        return R.astype(v, to)
    return R.astype(x, to)


# --- reductions ----------------------------------------------------------------------

_REDUCE = {"reduce_mean": R.mean, "reduce_sum": R.sum, "reduce_max": R.max, "reduce_min": R.min,
           "reduce_prod": R.prod}


@lowering(*_REDUCE)
def lower_reduce(cx, node, ins, attrs):
    x = ins[0]
    axes = [int(a) for a in attrs.get("axes", [])]
    keep = bool(attrs.get("keepdims", 1))
    rank = len(cx.shape_of(x))
    if not axes:
        axes = list(range(rank))
    if rank == 0:
        return x
    dt = cx.dtype_of(x)
    if node.op in ("reduce_mean", "reduce_max") and sorted(a % rank for a in axes) == list(range(2, rank)) \
            and not (node.op == "reduce_mean" and _is_int(dt)):
        # a mean or max over every axis after N and C is a global pool, and gets its kernel
        # (exporters write SE blocks' x.mean((2, 3), keepdim=True) so: PP-OCRv6 det's took
        # 0.22 ms at 96x144, 0.5 ns an element, through the generic reduction)
        y = _global_pool(cx, x, "max" if node.op == "reduce_max" else "mean")
        return y if keep else cx.reshape(y, [int(d) for d in cx.shape_of(x)[:2]])
    if node.op == "reduce_mean" and _is_int(dt):
        # int64 sum, then truncating division (ONNX Runtime's integer mean)
        n = int(np.prod([cx.shape_of(x)[a] for a in axes]))
        s = R.sum(R.astype(x, "int64"), axis=axes, keepdims=keep)
        return R.astype(R.divide(s, cx.const(n, "int64")), dt)
    return _REDUCE[node.op](x, axis=axes, keepdims=keep)


def rint(cx, y):
    """Round half to even (numpy's rint), on every target: `tir.nearbyint` (LLVM and
    CUDA nearbyint), not relax round, which CUDA may lower to roundf (half away from 0)."""
    from tvm import te
    from tvm import relax, tirx

    if not isinstance(y, relax.Var):
        y = cx.emit(y)
    return cx.emit_te(lambda t: te.compute(t.shape, lambda *i: tirx.nearbyint(t(*i)), name="rint"), y,
                      primfunc_name_hint="rint")


def round_cast(cx, y, dt: str):
    """Cast a float result to `dt`; integers round half to even and saturate."""
    if _is_int(dt):
        info = np.iinfo(dt)
        y = R.clip(rint(cx, y), float(info.min), float(info.max))
    return R.astype(y, dt) if dt != cx.dtype_of(y) else y


@lowering("global_avg_pool", "global_max_pool")
def lower_global_pool(cx, node, ins, attrs):
    return _global_pool(cx, ins[0], "max" if node.op == "global_max_pool" else "mean")


def _global_pool(cx, x, kind: str):
    """The mean or max of x [N, C, ...] over its spatial axes -> [N, C, 1, ...]."""
    shape = cx.shape_of(x)
    axes = list(range(2, len(shape)))
    n = int(np.prod([shape[a] for a in axes]))
    lanes = int(getattr(cx.strategy, "partial_sums", 0))
    interleave = bool(lanes) and n >= 4 * lanes
    if kind == "max":
        # a max is the same in any order: interleaved partial maxima in vector lanes. The
        # plain reduction was one scalar running max per plane, and the elementwise stages
        # fused into it ran scalar too (magika's GELU + max over 508: 0.55 ms; now the GELU
        # is a vector kernel of its own, 0.10 ms, and the maxima 0.009 ms)
        if interleave:
            return _per_plane(cx, x, "max", lanes, cx.dtype_of(x), "global_max")
        return R.max(x, axis=axes, keepdims=True)
    # the reference's mean: in float64 (exact for the sums of dequantized values a
    # quantized graph averages), divided by the count, rounded once to the dtype. With
    # interleaved partial sums: vector adds with independent chains, where one running sum
    # waits on each add's latency (measured: 1.2 Gelem/s, a core's float64 add chain). The
    # order of the additions changes, the result does not: the sums are exact in float64
    # (values of at most 24 significant bits), so every order gives the correctly rounded
    # total the reference computes.
    dt = cx.dtype_of(x)
    total = _per_plane(cx, x, "sum", lanes, "float64", "interleaved_sum") if interleave else \
        R.sum(cx.cast(x, "float64"), axis=axes, keepdims=True)
    m = R.divide(total, cx.const(float(n), "float64"))
    return round_cast(cx, cx.emit(m), dt)


def _per_plane(cx, x, kind: str, lanes: int, dtype: str, name: str):
    """The max or sum (in `dtype`) over the spatial axes of x [N, C, ...] -> [N, C, 1, ...],
    each plane a row of _interleaved."""
    shape = [int(d) for d in cx.shape_of(x)]
    nb, c, n = shape[0], shape[1], int(np.prod(shape[2:]))
    y = _interleaved(cx, cx.reshape(x, [nb * c, n]), kind, lanes, dtype, name)
    return cx.reshape(y, [nb, c] + [1] * (len(shape) - 2))


def _interleaved(cx, flat, kind: str, lanes: int, dtype: str, name: str):
    """[rows, n] -> [rows]: the max or sum of each row (in `dtype`) as `lanes` interleaved
    partial results, their total and the tail (interleaved_te), one kernel."""
    from tvm import relax

    if not isinstance(flat, relax.Var):
        flat = cx.emit(flat)
    return cx.emit_te(lambda t: interleaved_te(t, kind, lanes, dtype), flat, primfunc_name_hint=name)


def interleaved_te(t, kind: str, lanes: int, dtype: str):
    """The TE of _interleaved over t [rows, n]: `lanes` partial results (element i goes to
    partial i % lanes), their total, and the tail that does not fill a last group of
    `lanes`. Block names partial_<kind>, <kind>_of_partials, tail, total: the CPU rule
    that schedules them (cpu_rules.PartialReductions) finds them by these."""
    from tvm import tirx

    rows, n = (int(d) for d in t.shape)
    q = n // lanes

    def reduce(expr, ax):
        return te.max(expr, axis=ax) if kind == "max" else te.sum(expr, axis=ax)

    k = te.reduce_axis((0, q), "k")
    part = te.compute((rows, lanes), lambda r, j: reduce(t[r, k * lanes + j].astype(dtype), k),
                      name=f"partial_{kind}")
    j = te.reduce_axis((0, lanes), "j")
    tot = te.compute((rows,), lambda r: reduce(part[r, j], j), name=f"{kind}_of_partials")
    if n % lanes == 0:
        return tot
    # a reduce axis from 0 (TVM 0.27's compute_at gives one from q * lanes the extent
    # q * lanes - n: cpu_rules.PartialReductions computes the tail per row)
    rest = te.reduce_axis((0, n - q * lanes), "rest")
    tail = te.compute((rows,), lambda r: reduce(t[r, q * lanes + rest].astype(dtype), rest), name="tail")
    both = (lambda a, b: tirx.max(a, b)) if kind == "max" else (lambda a, b: a + b)
    return te.compute((rows,), lambda r: both(tot[r], tail[r]), name="total")


@lowering("arg_max", "arg_min")
def lower_argreduce(cx, node, ins, attrs):
    x = ins[0]
    axis = int(attrs["axis"])
    keep = bool(attrs.get("keepdims", 1))
    f = R.argmax if node.op == "arg_max" else R.argmin
    if int(attrs.get("select_last_index", 0)):
        n = cx.shape_of(x)[axis]
        idx = cx.emit(f(R.flip(x, axis=axis), axis, keep))
        idx = R.subtract(cx.const(n - 1, cx.dtype_of(idx)), idx)
    else:
        idx = f(x, axis, keep)
    idx = cx.emit(idx)
    return cx.cast(idx, "int64")
