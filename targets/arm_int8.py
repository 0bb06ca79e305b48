"""ARM int8 kernels: qconv and qmatmul as int8 x int8 -> int32 dot products, bit-exact.

`ArmStrategy` (registered for the "arm" family) replaces the lowering of `qconv` and
`qmatmul` by TE kernels whose innermost loop is a *contiguous* int8 x int8 -> int32
reduction. That is the pattern LLVM's vectorizers turn into `sdot` when the core has
the dot-product extension (`+dotprod`: Cortex-A76, Neoverse N1) and into widening NEON
code (`smull`/`smull2` i8 x i8 -> i16, `saddl`, `addv`) when it has not (Cortex-A72, A53). No intrinsic
is named anywhere: the same TIR is built for every ARM core, the instruction choice is
LLVM's, per `mattr`.

Exactness. The generic lowering centres u8 activations into int16 (x - zx), which is
exact but leaves int16 x int8 products that no dot instruction takes. Here u8
activations are shifted into int8 instead, x' = x - 128 (exact: [0, 255] -> [-128, 127]),
and their zero point with them, zx' = zx - 128. Then

    sum((x - zx) * w) + b  ==  sum(x' * w) + (b - zx' * sum(w))

so the zero point becomes a per-output-channel constant folded into the bias in numpy
at compile time. Spatial padding is written explicitly with zx' (it contributes
(zx' - zx') * w = 0, as the reference's padding with zx does). Every product is exact
in int32 and the sum wraps like any int32 sum, so the accumulator equals the reference's
bit for bit (the folded bias must fit int32, else the generic lowering is used).

16-bit activations (the w8a16 layers the bit-width search picks) take the same kernels
with an int16 pack: LLVM makes the products `smlal`/`smlal2` (int16 x int16 -> int32,
the weights sign-extended), on every core; before, they took the generic lowering. Their
zero point must be 0 (qcc's 16-bit activations are symmetric), so no sum can leave the
reference's own int32 bound (_zero_point_in_domain says why that matters).

Conv layout. The graph stays NCHW; each qconv is one fused function of three stages:

1. pack (prologue): x[n, c, h, w] -> xp[n, g, hp, wp * C + (kp - k)] int8: shifted,
   padded, channels last (NHWC with each padded row flattened, plus the few bytes the
   last pixel's zero-padded reduction reads).
2. conv: acc[n, o, oh, ow] = sum over (kh, j) of xp[n, oh*sh + kh*dh, ow*sw*C + j]
   * wk[o, kh, j]: with dilation 1 along W the taps kw and the channels c of one kernel
   row are adjacent in both operands, so the innermost reduction j = kw*C + c runs over
   KW*C contiguous bytes (9 per kernel row for a 3x3 RGB stem, C for a 1x1 conv),
   padded with zero weights to 8 or a multiple of 16 so that it is whole dot products
   (LLVM leaves odd lengths such as 13 or 21 scalar). The weights are rearranged to
   OHWI in numpy. (Dilated along W: j runs over C only, unpadded.)
3. epilogue: y = acc + bias' in NCHW; the requantize FuseOps puts after it is inlined.

Grouped convs with several channels per group are a batch of such convs (the group is
an outer loop). Depthwise convs (one input channel per group) have nothing contiguous
to reduce (kh*kw taps of one channel), so no dot instruction applies: they keep NCHW
and shift to int8 the same way (int8 x int8 products, int32 accumulation, the padding
and the folded bias as above); their kernel is scheduled by the generic
`cpu_rules.TiledReduction` (pixels in vector lanes, the epilogue per tile).

qmatmul by a constant 2-D matrix: a[..., K] stays row-major (shifted to int8), b is
transposed in numpy to [N, K], so again the reduction is contiguous in both.

The dot kernels are scheduled by `sdot_rule()`, tried before the generic CPU rules of
`FusedCPUStrategy` (which schedule everything else, depthwise included): outer loops
parallel, the reduction left innermost for LLVM (which keeps an output channel's
weights in registers and emits two- or three-pixel sdot blocks), pack and epilogue
stages by cpu_rules' loop-nest schedules. On the PP-OCR cls model at -O2 the A76 build
has sdot in every conv kernel but the depthwise ones (and three single-pixel
squeeze-excite convs of <600 MACs): about 70% of its int8 MACs; the A72 build has
none; both are bit-identical to x86.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .conv_geometry import ConvGeometry, conv_geometry, conv_kernel_2d
from .strategy import FusedCPUStrategy, register_strategy

PREFIX = "qcc_sdot"
ANN = "qcc_sdot"  # block annotation naming the stage kind
_I32 = (-(1 << 31), (1 << 31) - 1)


# the signed domain each activation dtype is shifted into (its offset: half its range)
_DOMAIN = {"uint8": ("int8", 128), "int8": ("int8", 0), "int16": ("int16", 0)}


def _to_domain(v, dtype: str):
    """The signed value x' of an activation: x itself (int8, int16), or x - 128 (uint8)."""
    dom, off = _DOMAIN[dtype]
    if not off:
        return v
    return (v.astype("int32") - off).astype(dom)


def _fold_bias(bias: Optional[np.ndarray], n: int, zx: int, wsum: np.ndarray) -> Optional[np.ndarray]:
    """b - zx' * sum(w) per output channel as int32, or None when it does not fit."""
    b = np.zeros(n, np.int64) if bias is None else np.broadcast_to(bias.astype(np.int64).reshape(-1), (n,))
    folded = b - np.int64(zx) * wsum.astype(np.int64)
    if folded.min(initial=0) < _I32[0] or folded.max(initial=0) > _I32[1]:
        return None
    return folded.astype(np.int32)


def _zero_point_in_domain(dtype: str, zp: int) -> Optional[int]:
    """The zero point in the signed domain of the shifted activation, or None where these
    kernels do not take it: outside the domain, or, for 16-bit activations, anything but
    the domain's 0. (x' * w then stays within the reference's own bound: an int32
    accumulator means max|x - zx| * sum|w| < 2^31. With a 16-bit zero point folded into
    the bias, the raw sums of x' * w could pass 2^31 and rely on int32 wrapping, which
    LLVM's no-signed-wrap arithmetic does not promise. qcc's 16-bit activations are
    symmetric: zero point 0.)"""
    if dtype not in _DOMAIN:
        return None
    dom, off = _DOMAIN[dtype]
    z = int(zp) - off
    if dom == "int16":
        return z if z == 0 else None
    return z if -128 <= z <= 127 else None


# --- qconv ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConvPlan(ConvGeometry):
    x_dtype: str = "uint8"
    zx: int = 0  # zero point in the signed domain (_DOMAIN)

    @property
    def act(self) -> str:
        """The packed activation dtype: int8, or int16 for 16-bit activations."""
        return _DOMAIN[self.x_dtype][0]

    @property
    def depthwise(self):
        return self.cg == 1 and self.og == 1

    @property
    def row_taps(self) -> bool:
        """Whether the kw taps of a kernel row join the channels in one contiguous reduction."""
        return self.dilations[1] == 1

    @property
    def k(self) -> int:
        """Length of the contiguous reduction: one kernel row's taps x channels (or channels)."""
        return self.kw * self.cg if self.row_taps else self.cg

    @property
    def kp(self) -> int:
        """`k` padded with zero weights to whole dot products: 8 bytes up to 8, else 16s
        (LLVM turns whole 16-byte groups into sdot reliably, odd lengths not)."""
        if not self.row_taps:
            return self.k
        return 8 if self.k <= 8 else -(-self.k // 16) * 16


def conv_plan(x_shape, x_dtype: str, w_shape, attrs) -> Optional[ConvPlan]:
    """The plan for a 2-D qconv these kernels handle, else None."""
    geom = conv_geometry(x_shape, w_shape, attrs)
    if geom is None or x_dtype not in _DOMAIN:
        return None
    if geom.cg == 1 and geom.groups > 1 and geom.o != geom.groups:  # depthwise with a channel multiplier
        return None
    zx = _zero_point_in_domain(x_dtype, int(attrs.get("x_zero_point", 0)))
    if zx is None:
        return None
    return ConvPlan(**geom.fields(), x_dtype=x_dtype, zx=zx)


def conv_weights(p: ConvPlan, w: np.ndarray, bias: Optional[np.ndarray]):
    """(weights, bias' [o] int32) or None. Weights: [g, og, kh, kp] (OHWI per group, each
    kernel row flattened and padded with zeros to kp) for row taps, [g, og, kh, kw, cg] when dilated along W,
    [c, kh, kw] for depthwise."""
    wi = w.astype(np.int64)
    folded = _fold_bias(bias, p.o, p.zx, wi.reshape(p.o, -1).sum(axis=1))
    if folded is None:
        return None
    if p.depthwise:
        packed = wi.reshape(p.o, p.kh, p.kw)
    else:
        ohwi = wi.reshape(p.groups, p.og, p.cg, p.kh, p.kw).transpose(0, 1, 3, 4, 2)
        if p.row_taps:
            packed = np.zeros((p.groups, p.og, p.kh, p.kp), np.int64)
            packed[..., :p.k] = ohwi.reshape(p.groups, p.og, p.kh, p.k)
        else:
            packed = ohwi
    return np.ascontiguousarray(packed).astype(np.int8), folded


def conv_te(p: ConvPlan, x, wk, bias):
    """The TE stages of the conv; returns y [n, o, oh, ow] int32."""
    if p.depthwise:
        return _depthwise_te(p, x, wk, bias)
    from tvm import te, tirx

    (sh, sw), (dh, dw) = p.strides, p.dilations
    pt, pl = p.pads[0], p.pads[1]
    cg, g = p.cg, p.groups
    zx = tirx.const(p.zx, p.act)

    def pack(n, gi, hh, f):
        ww, ch = f // cg, f % cg
        hi, wi = hh - pt, ww - pl
        inside = tirx.all(hi >= 0, hi < p.h, wi >= 0, wi < p.w)
        v = _to_domain(x[n, gi * cg + ch, hi, wi], p.x_dtype)
        return tirx.if_then_else(inside, v, zx)

    # a row is followed by kp - k bytes the last pixel's padded reduction reads (zero weights)
    xp = te.compute((p.n, g, p.hp, p.wp * cg + p.kp - p.k), pack, name=f"{PREFIX}_pack", attrs={ANN: "pack"})
    rh = te.reduce_axis((0, p.kh), "rh")
    og = p.og
    if p.row_taps:
        rj = te.reduce_axis((0, p.kp), "rj")

        def conv(n, o, oh, ow):
            gi, oi = o // og, o % og
            return te.sum(xp[n, gi, oh * sh + rh * dh, ow * sw * cg + rj].astype("int32")
                          * wk[gi, oi, rh, rj].astype("int32"), axis=[rh, rj])
    else:
        rw = te.reduce_axis((0, p.kw), "rw")
        rc = te.reduce_axis((0, cg), "rc")

        def conv(n, o, oh, ow):
            gi, oi = o // og, o % og
            return te.sum(xp[n, gi, oh * sh + rh * dh, (ow * sw + rw * dw) * cg + rc].astype("int32")
                          * wk[gi, oi, rh, rw, rc].astype("int32"), axis=[rh, rw, rc])

    oh_n, ow_n = p.out_hw
    acc = te.compute((p.n, p.o, oh_n, ow_n), conv, name=f"{PREFIX}_conv", attrs={ANN: "conv"})
    return te.compute(acc.shape, lambda n, o, oh, ow: acc[n, o, oh, ow] + bias[o], name=f"{PREFIX}_out")


def _depthwise_te(p: ConvPlan, x, wk, bias):
    from tvm import te, tirx

    (sh, sw), (dh, dw) = p.strides, p.dilations
    pt, pl = p.pads[0], p.pads[1]
    zx = tirx.const(p.zx, p.act)

    def pack(n, c, hh, ww):
        hi, wi = hh - pt, ww - pl
        inside = tirx.all(hi >= 0, hi < p.h, wi >= 0, wi < p.w)
        return tirx.if_then_else(inside, _to_domain(x[n, c, hi, wi], p.x_dtype), zx)

    xp = te.compute((p.n, p.c, p.hp, p.wp), pack, name=f"{PREFIX}_dw_pack", attrs={ANN: "pack"})
    rh = te.reduce_axis((0, p.kh), "rh")
    rw = te.reduce_axis((0, p.kw), "rw")
    oh_n, ow_n = p.out_hw
    acc = te.compute(
        (p.n, p.c, oh_n, ow_n),
        lambda n, c, oh, ow: te.sum(xp[n, c, oh * sh + rh * dh, ow * sw + rw * dw].astype("int32")
                                    * wk[c, rh, rw].astype("int32"), axis=[rh, rw]),
        name=f"{PREFIX}_dwconv", attrs={ANN: "dwconv"})
    return te.compute(acc.shape, lambda n, c, oh, ow: acc[n, c, oh, ow] + bias[c], name=f"{PREFIX}_out")


# --- qmatmul -------------------------------------------------------------------------------

@dataclass(frozen=True)
class MatmulPlan:
    a_shape: Tuple[int, ...]
    k: int
    n: int
    a_dtype: str
    za: int  # in the signed domain (_DOMAIN)


def matmul_plan(a_shape, a_dtype: str, b_shape, za: int) -> Optional[MatmulPlan]:
    if a_dtype not in _DOMAIN or len(b_shape) != 2 or len(a_shape) < 1:
        return None
    k, n = int(b_shape[0]), int(b_shape[1])
    if int(a_shape[-1]) != k:
        return None
    z = _zero_point_in_domain(a_dtype, za)
    if z is None:
        return None
    return MatmulPlan(tuple(int(d) for d in a_shape), k, n, a_dtype, z)


def matmul_weights(p: MatmulPlan, b: np.ndarray, bias: Optional[np.ndarray]):
    """(b transposed [n, k] int8, bias' [n] int32) or None."""
    bi = b.astype(np.int64)
    if bi.min(initial=0) < -128 or bi.max(initial=0) > 127:
        return None
    folded = _fold_bias(bias, p.n, p.za, bi.sum(axis=0))
    if folded is None:
        return None
    return np.ascontiguousarray(bi.T).astype(np.int8), folded


def matmul_te(p: MatmulPlan, a, bt, bias):
    from tvm import te

    ap = te.compute(p.a_shape, lambda *i: _to_domain(a[i], p.a_dtype), name=f"{PREFIX}_mm_pack",
                    attrs={ANN: "pack"})
    rk = te.reduce_axis((0, p.k), "rk")
    out = p.a_shape[:-1] + (p.n,)
    acc = te.compute(out, lambda *i: te.sum(ap[i[:-1] + (rk,)].astype("int32") * bt[i[-1], rk].astype("int32"),
                                            axis=rk), name=f"{PREFIX}_mm", attrs={ANN: "matmul"})
    return te.compute(out, lambda *i: acc[i] + bias[i[-1]], name=f"{PREFIX}_mm_out")


# --- schedule --------------------------------------------------------------------------------

def _block_kind(sch, block) -> Optional[str]:
    ann = sch.get(block).annotations
    return str(ann[ANN]) if ANN in ann else None


def _n_spatial(sch, block) -> int:
    return sum(1 for iv in sch.get(block).iter_vars if int(iv.iter_type) == 0)


def _work(sch, loops) -> int:
    n = 1
    for lp in loops:
        n *= int(sch.get(lp).extent)
    return n


def _schedule_dot(sch, block, min_work: int) -> None:
    """The outer spatial loops parallel (when the kernel has `min_work` iterations); the
    reduction stays the innermost loop nest, its init hoisted out of it, accumulating in
    place. LLVM then unrolls a short contiguous reduction and forms `sdot`s (+dotprod)
    with an output channel's weights in registers across the pixels of a row, or
    vectorizes a long one. (Accumulating in a `local` buffer instead, the register tile
    cpu_rules.TiledReduction would make, LLVM emits scalar multiply-adds: no sdot.)"""
    loops = sch.get_loops(block)
    ns = _n_spatial(sch, block)
    spatial, red = loops[:ns], loops[ns:]
    outer = spatial[:max(1, ns - 1)]
    if len(outer) < ns and _work(sch, loops) >= min_work:  # (a 1-D output stays serial)
        fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
        if int(sch.get(fused).extent) > 1:
            sch.parallel(fused)
    sch.decompose_reduction(block, red[0])


def _schedule_other(sch, block, target, min_work: int) -> None:
    """Pack and epilogue stages: cpu_rules' loop-nest schedules (parallel, vectorized)."""
    from .cpu_rules import schedule_injective, schedule_reduction_plain

    if any(int(iv.iter_type) != 0 for iv in sch.get(block).iter_vars):
        schedule_reduction_plain(sch, block, target, min_work)
    else:
        schedule_injective(sch, block, target, min_work)


def _schedule_sdot(func, target, min_work: int) -> Optional[object]:
    """Schedule a fused function holding a dot kernel (qconv but depthwise, qmatmul), else
    None. Depthwise kernels are left to cpu_rules.TiledReduction (pixels in vector lanes,
    channels unrolled, the epilogue per tile)."""
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001 - not a block function
        return None
    blocks = sch.get_child_blocks(root)
    kinds = [_block_kind(sch, b) for b in blocks]
    if not any(k in ("conv", "matmul") for k in kinds):
        return None
    try:
        for b, kind in zip(blocks, kinds):
            if kind in ("conv", "matmul"):
                _schedule_dot(sch, b, min_work)
    except Exception as e:  # noqa: BLE001 - a kernel this rule cannot schedule: leave it to the others
        warnings.warn(f"qcc arm: int8 dot schedule failed, kernel left to the generic rules: "
                      f"{type(e).__name__}: {str(e).splitlines()[-1] if str(e) else ''}")
        return None
    for b, kind in zip(blocks, kinds):
        if kind not in ("conv", "matmul"):
            try:
                _schedule_other(sch, b, target, min_work)
            except Exception:  # noqa: BLE001 - stays serial, still correct
                pass
    return sch


def sdot_rule(parallel_min_work: Optional[int] = None):
    """The dlight rule: schedules every fused function holding a dot kernel; loops with
    fewer than `parallel_min_work` iterations stay serial (None: cpu_rules' default)."""
    from tvm.s_tir import dlight

    from .cpu_rules import PARALLEL_MIN_WORK

    min_work = PARALLEL_MIN_WORK if parallel_min_work is None else int(parallel_min_work)

    class SdotRule(dlight.ScheduleRule):
        def apply(self, func, target, tunable):
            import tvm

            if not isinstance(func, tvm.tirx.PrimFunc):
                return None
            return _schedule_sdot(func, target, min_work)

    return SdotRule()


# --- the strategy ----------------------------------------------------------------------------

class ArmStrategy(FusedCPUStrategy):
    """FusedCPUStrategy plus int8 x int8 -> int32 qconv/qmatmul kernels with contiguous
    reductions (sdot on cores with the dot-product extension, widening NEON elsewhere)."""

    name = "arm"

    def __init__(self, preset=None):
        super().__init__(preset)
        self.overrides["qconv"] = lower_qconv_s8
        self.overrides["qmatmul"] = lower_qmatmul_s8

    def schedule_rules(self, target) -> list:
        return [sdot_rule(self.parallel_min_work)] + list(super().schedule_rules(target))


def _generic(op: str):
    from . import lower_quant

    return {"qconv": lower_quant.lower_qconv, "qmatmul": lower_quant.lower_qmatmul}[op]


def _acc_i32(node) -> bool:
    return node is None or node.attrs.get("acc") != "i64"


def lower_qconv_s8(cx, node, ins, attrs):
    """qconv through the int8 dot kernel when it applies (a 1-D one as a one-row 2-D conv),
    else the generic lowering."""
    x, w, b = (list(ins) + [None])[:3]
    y = conv_kernel_2d(cx, x, w, attrs, lambda x, w, a: _qconv_kernel(cx, node, x, w, a, b))
    return _generic("qconv")(cx, node, ins, attrs) if y is None else y


def _qconv_kernel(cx, node, x, w, attrs, b):
    """The qconv of 4-D x by constant int8 w through the int8 dot kernel, or None."""
    wv = cx.const_value(w)
    bv = cx.const_value(b) if b is not None else None
    plan = None
    if (_acc_i32(node) and wv is not None and (b is None or bv is not None) and cx.dtype_of(w) == "int8"
            and (node is None or node.inputs[1].dtype == "i8")):
        plan = conv_plan(cx.shape_of(x), cx.dtype_of(x), wv.shape, attrs)
    packed = conv_weights(plan, wv, bv) if plan is not None else None
    if packed is None:
        return None
    wk, folded = packed
    return cx.emit_te(lambda xt, wt, bt: conv_te(plan, xt, wt, bt), x, cx.const(wk, "int8"),
                      cx.const(folded, "int32"), primfunc_name_hint=f"{PREFIX}_conv")


def lower_qmatmul_s8(cx, node, ins, attrs):
    """qmatmul by a constant 2-D int8 matrix through the int8 dot kernel, else generic."""
    a, b, bias = (list(ins) + [None])[:3]
    bv = cx.const_value(b)
    biv = cx.const_value(bias) if bias is not None else None
    plan = None
    if (_acc_i32(node) and bv is not None and (bias is None or (biv is not None and biv.ndim <= 1))
            and (node is None or node.inputs[1].dtype in ("i8", "u8"))):
        plan = matmul_plan(cx.shape_of(a), cx.dtype_of(a), bv.shape, int(attrs.get("a_zero_point", 0)))
    packed = None
    if plan is not None:
        centred = bv.astype(np.int64) - int(attrs.get("b_zero_point", 0))
        packed = matmul_weights(plan, centred, biv)
    if packed is None:
        return _generic("qmatmul")(cx, node, ins, attrs)
    bt, folded = packed
    return cx.emit_te(lambda at, btt, ct: matmul_te(plan, at, btt, ct), a, cx.const(bt, "int8"),
                      cx.const(folded, "int32"), primfunc_name_hint=f"{PREFIX}_matmul")


register_strategy("arm", ArmStrategy)
