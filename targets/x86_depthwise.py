"""x86 int8 depthwise convs (and any conv with a few input channels per group), exact.

The integer kernels of x86_int8.py reduce over input channels, four (VNNI) or two
(AVX2) per instruction; a depthwise conv has one input channel per group, so they
would multiply padding. TVM's generic lowering of it ran at 2-7 GMAC/s here.

VNNI. `vpdpbusd` reduces four bytes per lane, and a depthwise conv's reduction is its
taps: the pack stage writes, per output pixel, a uint32 word of four taps of one kernel
row (x[r, col*sw + j*dw] for j = 0..3; a 5- to 8-wide kernel takes two words), the
pixels in lanes, so one vpdpbusd does four taps of sixteen pixels (a 3x3 conv: three
per vector, against nine float multiply-adds; a 5x5: ten against twenty-five). The
products are integer and exact whatever the weights; the zero point folds into the bias
as in x86_int8.py. Rows are packed at the output's width, so the epilogue reads the sums
elementwise. Measured on 23 depthwise shapes of PP-OCR det and cls and the mobile nets
(3x3 and 5x5, strides 1, 2 and (2, 1); Zen 5, two threads, hard-swish epilogue): 1038 ->
767 us in all, 0.55-1.02x the float32 kernel's time each.

AVX2 (and float convs) keep the float32 kernel below. It does the integer arithmetic in
float32, where a vector
multiply-add takes eight (AVX2) or sixteen (AVX-512) products per instruction and
the whole sum is *exact*: every operand is an integer, |x - zx| <= 255, |w| <= 128,
and the lowering only takes a conv when, for every output channel, 255 * sum|w|
over its taps stays below 2^24. Every product and every partial sum is then an
integer a float32 holds exactly, so the order of the additions does not matter and
the result equals the reference's int32 accumulator bit for bit (a 5x5 depthwise
conv of full-range weights needs 255 * 128 * 25 = 816000).

Layout ("pixels in lanes", as the int8 conv of x86_int8.py; the graph stays NCHW):

1. pack: x[n, c, h, w] -> xf[n, c, phase, f] float32 = x - zx, the padding written as
   0, the padded image split into stride phases and flattened with row pitch
   Wq = ceil(Wp / sw), so tap (kh, kw) of output pixel f = oh*Wq + ow reads
   xf[.., f + off(kh, kw)]: a vector of consecutive output pixels reads one
   contiguous run whatever the stride or dilation.
2. conv: acc[n, o, f] = sum over (ci, kh, kw) of xf[n, g*cg + ci, ph, f + off] * w[o, ci, kh, kw]:
   a register tile of nr vectors of one output channel, each tap one broadcast weight
   and nr multiply-adds; tiles parallel.
3. epilogue: y[n, o, oh, ow] = int32(acc[n, o, oh*Wq + ow]) + bias[o]; the requantize and
   activation FuseOps put after it are inlined into this stage.

The three stages run one block of channels after another in one parallel loop
(schedule_dw_fused), so a block's packed plane and sums are still in cache when the next
stage reads them; kernels that do not fit that (a channel multiplier, an epilogue reading
other channels) run each stage over the whole tensor (schedule_dw_pack, schedule_dw_conv).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np

from .conv_geometry import ConvGeometry, conv_geometry
from .lower_nn import weights_as_float

ANN = "qcc_x86"  # the same block annotation as x86_int8.py: its rule schedules these kernels
# above this many input channels per group the channel-interleaved int8 kernels do better
MAX_GROUP_CHANNELS = 4
# accumulator vectors of one tile: AVX2 has 16 registers, one holds the broadcast weight
MAX_TILE_VECTORS = 12
_EXACT = 1 << 24  # float32 holds every integer below this exactly
_PAR_MACS = 1 << 18  # below this a kernel runs on one thread (as x86_int8; float multiply-adds
# run a quarter of VNNI's rate, so a quarter of its threshold)


def lanes_for(preset) -> Optional[int]:
    """float32 lanes of the preset's widest vector (16 AVX-512, 8 AVX2), or None."""
    caps = getattr(preset, "capabilities", frozenset())
    if "avx512" in caps:
        return 16
    if "avx2" in caps:
        return 8
    return None


# a multiply-add's latency over its issue interval (Zen 3, Skylake: 4 cycles, 2 a cycle): a
# tile with fewer independent accumulators waits on them
MIN_BUSY_VECTORS = 8


def _pick_vectors(total: int) -> int:
    """Vectors per tile, for `total` vectors of output: the count up to MAX_TILE_VECTORS with
    the least cycles, each tile costing max(nr, MIN_BUSY_VECTORS) per tap (the larger on a
    tie): few accumulators stall on the multiply-add's latency, many pad the last tile."""
    if total <= 1:
        return 1
    return min(range(1, min(total, MAX_TILE_VECTORS) + 1),
               key=lambda nr: (-(-total // nr) * max(nr, MIN_BUSY_VECTORS), -nr))


@dataclass(frozen=True)
class DwPlan(ConvGeometry):
    zx: int = 0       # activation zero point, in x's own dtype
    x_signed: bool = False
    lanes: int = 8
    is_float: bool = False  # a float32 conv (no zero point, no exactness bound)
    vnni: bool = False  # integer taps four to a uint32 and vpdpbusd (see "VNNI" above)

    @property
    def wq(self) -> int:
        """Row pitch of the flattened planes: the phase width, or (VNNI) the output width."""
        return self.out_hw[1] if self.vnni else -(-self.wp // self.strides[1])

    @property
    def tap_groups(self) -> int:
        """uint32 words of a row's taps (VNNI): ceil(kw / 4)."""
        return -(-self.kw // 4)

    @property
    def zx_u8(self) -> int:
        """The zero point where VNNI reads the activations (uint8; int8 ones shifted by 128)."""
        return self.zx + 128 if self.x_signed else self.zx

    @property
    def nr(self) -> int:
        oh, _ = self.out_hw
        return _pick_vectors(-(-oh * self.wq // self.lanes))

    @property
    def vecs(self) -> int:
        """Vectors of the flattened output, padded to whole tiles."""
        oh, _ = self.out_hw
        return -(-(-(-oh * self.wq // self.lanes)) // self.nr) * self.nr

    @property
    def x_range(self) -> int:
        """The largest |x - zx|."""
        lo, hi = (-128, 127) if self.x_signed else (0, 255)
        return max(self.zx - lo, hi - self.zx)

    def offset(self, kh: int, kw: int) -> Tuple[int, int]:
        """(phase, flat offset) of tap (kh, kw) (VNNI: of row kh's words, whatever kw)."""
        (sh, sw), (dh, dw) = self.strides, self.dilations
        if self.vnni:
            return (kh * dh) % sh, ((kh * dh) // sh) * self.wq
        ph, pw = (kh * dh) % sh, (kw * dw) % sw
        return ph * sw + pw, ((kh * dh) // sh) * self.wq + (kw * dw) // sw

    @property
    def flat(self) -> int:
        """Length of each flattened phase plane: every read in bounds, whole rows."""
        max_off = max(self.offset(i, j)[1] for i in range(self.kh) for j in range(self.kw))
        need = self.vecs * self.lanes + max_off
        return -(-need // self.wq) * self.wq


MAX_VNNI_WIDTH = 8


def dw_plan(x_shape, x_dtype: str, w_shape, attrs, lanes: int, vnni: bool = False) -> Optional[DwPlan]:
    """The plan for a qconv with at most MAX_GROUP_CHANNELS input channels per group, else None;
    `vnni`: integer convs take the VNNI layout."""
    geom = conv_geometry(x_shape, w_shape, attrs)
    if geom is None or x_dtype not in ("uint8", "int8", "float32") or geom.cg > MAX_GROUP_CHANNELS:
        return None
    if x_dtype == "float32":
        return DwPlan(**geom.fields(), lanes=lanes, is_float=True)
    zx = int(attrs.get("x_zero_point", 0))
    lo, hi = (-128, 127) if x_dtype == "int8" else (0, 255)
    if not lo <= zx <= hi:
        return None
    # wider kernels take a word per four taps of a row; past MAX_VNNI_WIDTH they stay with
    # the float32 kernel unless their sums are too large for it (pack_dw)
    return DwPlan(**geom.fields(), zx=zx, x_signed=x_dtype == "int8", lanes=lanes,
                  vnni=vnni and geom.kw <= MAX_VNNI_WIDTH)


def pack_dw_weights(p: DwPlan, w: np.ndarray, bias: Optional[np.ndarray]):
    """(weights, bias [o] int32), or None when some output channel's sum could leave the
    integers float32 holds exactly. Weights: [o, cg, kh, kw] float32, or (VNNI) int8
    [o, cg, kh, 4 * tap_groups] with the zero point folded into the bias:
    sum((x - zx) * w) + b == sum(x * w) + (b - zx * sum(w)), wrapping as int32 sums do."""
    b = np.zeros(p.o, np.int64) if bias is None else bias.astype(np.int64).reshape(p.o)
    if p.vnni:
        wv = np.zeros((p.o, p.cg, p.kh, 4 * p.tap_groups), np.int8)
        wv[..., :p.kw] = w
        folded = b - p.zx_u8 * w.astype(np.int64).reshape(p.o, -1).sum(axis=1)
        return wv, folded.astype(np.uint32).astype(np.int32)  # two's complement wrap
    wi = w.astype(np.int64)
    if int(np.abs(wi).reshape(p.o, -1).sum(axis=1).max(initial=0)) * p.x_range >= _EXACT:
        return None
    return wi.astype(np.float32), b.astype(np.int32)


def pack_dw(p: DwPlan, w: np.ndarray, bias: Optional[np.ndarray], vnni: bool):
    """(plan, weights, bias) for the kernel: the plan's, or on VNNI the taps layout when the
    float32 kernel cannot hold the sums exactly; None when neither takes the conv."""
    packed = pack_dw_weights(p, w, bias)
    if packed is None and vnni and not p.vnni and not p.is_float:
        p = dataclasses.replace(p, vnni=True)
        packed = pack_dw_weights(p, w, bias)
    return None if packed is None else (p, *packed)


def dw_te(p: DwPlan, x, wf, bias):
    """The three TE stages (see the module docstring); returns y [n, o, oh, ow] int32 (float32
    for a float plan: then it is an ordinary float conv, whose sums round as float sums do)."""
    from tvm import te, tirx

    if p.vnni:
        return _dw_te_vnni(p, x, wf, bias)
    (sh, sw), (dh, dw) = p.strides, p.dilations
    pt, pl = p.pads[0], p.pads[1]
    wq, cg, og, L = p.wq, p.cg, p.og, p.lanes
    if p.is_float:
        wf = weights_as_float(wf)

    def pack(n, c, ph, f):
        r, col = f // wq, f % wq
        hh = r * sh + ph // sw - pt
        ww = col * sw + ph % sw - pl
        inside = tirx.all(hh >= 0, hh < p.h, ww >= 0, ww < p.w)
        v = x[n, c, hh, ww] if p.is_float else x[n, c, hh, ww].astype("int32") - p.zx
        return tirx.if_then_else(inside, v.astype("float32"), tirx.const(0.0, "float32"))

    # the columns every phase reads inside the image: the schedule gives them a loop of
    # their own, free of the padding test, which LLVM vectorizes
    lo, hi = inside_columns(p.w, pl, sw, wq, reach=sw - 1)
    xf = te.compute((p.n, p.c, sh * sw, p.flat), pack, name="qcc_dw_pack",
                    attrs={ANN: "dwpack", "qcc_x86_wq": wq, "qcc_x86_cols": [lo, hi]})
    ri = te.reduce_axis((0, cg), "ri")
    rh = te.reduce_axis((0, p.kh), "rh")
    rw = te.reduce_axis((0, p.kw), "rw")

    def conv(n, o, f):
        ph = ((rh * dh) % sh) * sw + (rw * dw) % sw
        off = ((rh * dh) // sh) * wq + (rw * dw) // sw
        return te.sum(xf[n, (o // og) * cg + ri, ph, f + off] * wf[o, ri, rh, rw], axis=[ri, rh, rw])

    acc = te.compute((p.n, p.o, p.vecs * L), conv, name="qcc_dw_conv",
                     attrs={ANN: "dwconv", "qcc_x86_nr": p.nr, "qcc_x86_lanes": L})
    oh_n, ow_n = p.out_hw

    def out(n, o, oh, ow):
        a = acc[n, o, oh * wq + ow]
        return a + bias[o] if p.is_float else a.astype("int32") + bias[o]

    return te.compute((p.n, p.o, oh_n, ow_n), out, name="qcc_dw_out")


def inside_columns(w: int, pl: int, sw: int, wq: int, reach: int) -> Tuple[int, int]:
    """[lo, hi): the packed columns col whose reads, input columns col * sw - pl up to `reach`
    past it, all fall inside the image (0 <= . < w): the pack's loop without the padding test
    (_partition_pack_columns). reach: sw - 1 for a pack of column phases, the kernel's width
    less one (dilated) for the VNNI taps words."""
    lo = min(-(-pl // sw), wq)
    return lo, max(min((w - 1 + pl - reach) // sw + 1, wq), lo)


def tap_byte(word, k):
    """Byte k of a packed uint32 word of taps, as int32: the expression the VNNI tap
    intrinsic's description holds (tensorize matches it term by term)."""
    from tvm import tirx

    return tirx.Cast("int32", tirx.bitwise_and(tirx.shift_right(word, tirx.Cast("uint32", k * 8)),
                                               tirx.const(255, "uint32")))


def _dw_te_vnni(p: DwPlan, x, w, bias):
    """The VNNI stages: pack x into uint32 words of a row's taps, xq[n, c, g, ph, f] = bytes
    x[r*sh + ph - pt, col*sw + (4g + j)*dw - pl] for j = 0..3 (f = r*OW + col; padding and
    taps past kw read as the zero point), raw uint8 (int8 shifted by 128); sum
    xq[.., f + off(kh)] byte j times w[o, ci, kh, 4g + j], four taps a vpdpbusd; add the
    folded bias."""
    from tvm import te, tirx

    sh, (dh, dw) = p.strides[0], p.dilations
    pt, pl = p.pads[0], p.pads[1]
    wq, cg, og, G = p.wq, p.cg, p.og, p.tap_groups
    sw = p.strides[1]
    fill = tirx.const(p.zx_u8, "uint32")

    # the columns whose taps all read inside the image: a loop free of the padding test
    lo, hi = inside_columns(p.w, pl, sw, wq, reach=(p.kw - 1) * dw)
    # LLVM vectorizes that loop on long unit-stride rows with the row test in every tap
    # (det's 16x192x288: 97 us, 131 with one row test around the word), on strided rows with
    # one row test around the word (96x112x112 stride 2: 48 us, 136 with a test per tap), and
    # leaves short rows scalar: short unit-stride rows are vectorized by the schedule, which
    # wants the one row test (_partition_pack_columns)
    vector_cols = sw == 1 and hi - lo <= SHORT_ROW * p.lanes
    whole_rows = sw > 1 or vector_cols

    def words(n, c, hh, col, rows):
        """The G words of a row's taps, each as an expression (the taps known)."""
        out = []
        for g in range(G):
            word = None
            for j in range(4):
                t = g * 4 + j
                if t >= p.kw:
                    v = fill
                else:
                    ww = col * sw + t * dw - pl
                    raw = x[n, c, hh, ww]
                    raw = (raw.astype("int32") + 128).astype("uint32") if p.x_signed else raw.astype("uint32")
                    v = tirx.if_then_else(tirx.all(*rows, ww >= 0, ww < p.w), raw, fill)
                word = v if word is None else word | (v << tirx.const(8 * j, "uint32"))
            out.append(word)
        return out

    def pack(n, c, g, ph, f):
        r, col = f // wq, f % wq
        hh = r * sh + ph - pt
        ws = words(n, c, hh, col, [] if whole_rows else [hh >= 0, hh < p.h])
        word = ws[-1]
        for gi in range(G - 2, -1, -1):  # g is a loop the schedule unrolls: the test folds away
            word = tirx.if_then_else(g == gi, ws[gi], word)
        if not whole_rows:
            return word
        return tirx.if_then_else(tirx.all(hh >= 0, hh < p.h), word, tirx.const(p.zx_u8 * 0x01010101, "uint32"))

    xq = te.compute((p.n, p.c, G, sh, p.flat), pack, name="qcc_dw_pack",
                    attrs={ANN: "dwpack", "qcc_x86_wq": wq, "qcc_x86_cols": [lo, hi],
                           "qcc_x86_vector_cols": p.lanes if vector_cols else 0})
    ri = te.reduce_axis((0, cg), "ri")
    rh = te.reduce_axis((0, p.kh), "rh")
    rg = te.reduce_axis((0, G), "rg")
    rk = te.reduce_axis((0, 4), "rk")

    def conv(n, o, f):
        word = xq[n, (o // og) * cg + ri, rg, (rh * dh) % sh, f + ((rh * dh) // sh) * wq]
        return te.sum(tap_byte(word, rk) * w[o, ri, rh, rg * 4 + rk].astype("int32"), axis=[ri, rh, rg, rk])

    acc = te.compute((p.n, p.o, p.vecs * p.lanes), conv, name="qcc_dw_conv",
                     attrs={ANN: "dwconv", "qcc_x86_nr": p.nr, "qcc_x86_lanes": p.lanes,
                            "qcc_x86_intrin": TAPS_INTRIN})
    oh_n, ow_n = p.out_hw
    return te.compute((p.n, p.o, oh_n, ow_n), lambda n, o, oh, ow: acc[n, o, oh * wq + ow] + bias[o],
                      name="qcc_dw_out")


TAPS_INTRIN = "qcc_vnni_16x4_taps"
_registered = set()


def register_taps_intrinsic() -> None:
    """C[16] += bytes of A[16] (uint32 words of four uint8 taps) . B[4] (int8, broadcast):
    one vpdpbusd."""
    if TAPS_INTRIN in _registered:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    from .x86_int8 import VNNI, _mac  # (x86_int8 imports this module)

    L = 16

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((L,), "uint32", offset_factor=1), B: T.Buffer((4,), "int8", offset_factor=1),
             C: T.Buffer((L,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:L], A[0:L], B[0:4])
            T.writes(C[0:L])
            for i in T.serial(0, L):
                for k in T.serial(0, 4):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.Cast("int32", T.bitwise_and(
                            T.shift_right(A[vi], T.Cast("uint32", vk * 8)), T.uint32(255))) \
                            * T.Cast("int32", B[vk])

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((L,), "uint32", offset_factor=1), B: T.Buffer((4,), "int8", offset_factor=1),
             C: T.Buffer((L,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:L], A[0:L], B[0:4])
            T.writes(C[0:L])
            C[T.ramp(T.int32(0), 1, L)] = _mac(
                VNNI, C.vload([0], dtype=f"int32x{L}"),
                T.reinterpret(A.vload([0], dtype=f"uint32x{L}"), dtype=f"uint8x{4 * L}"),
                T.reinterpret(T.broadcast(T.reinterpret(B.vload([0], dtype="int8x4"), dtype="int32"), L),
                              dtype=f"int8x{4 * L}"))

    TensorIntrin.register(TAPS_INTRIN, desc, impl, override=True)
    _registered.add(TAPS_INTRIN)


# --- schedule (called by x86_int8's rule for the blocks annotated above) ---------------------

def _extent(sch, loops) -> int:
    return int(np.prod([int(sch.get(lp).extent) for lp in loops], dtype=np.int64))


def schedule_dw_pack(sch, block) -> None:
    """Rows in parallel when there are enough of them."""
    _schedule_pack_rows(sch, block, parallel=True)


def schedule_dw_conv(sch, block) -> None:
    """Tiles of nr vectors of one output channel, parallel; the taps outside the tile, the
    accumulators in a small stack buffer (see x86_int8._register_tile for why "global")."""
    n, o, f, *red = sch.get_loops(block)
    vo, vi, lane, red_outer = _tile_loops(sch, block, f, red)
    sch.reorder(n, o, vo, *red_outer, vi, lane, *red[len(red_outer):])
    tile = sch.fuse(n, o, vo)
    if _extent(sch, sch.get_loops(block)) >= _PAR_MACS:
        sch.parallel(tile)
    _register_tile(sch, block, tile, red_outer, vi, lane)


def _tile_loops(sch, block, f, red):
    """f split into (tiles, nr vectors, lanes); the reduction loops outside the tile (all
    but the VNNI taps of a word, which the intrinsic takes)."""
    ann = sch.get(block).annotations
    nr, L = int(ann["qcc_x86_nr"]), int(ann["qcc_x86_lanes"])
    v, lane = sch.split(f, [None, L])
    vo, vi = sch.split(v, [None, nr])
    return vo, vi, lane, red[:-1] if "qcc_x86_intrin" in ann else red


def _register_tile(sch, block, tile, red_outer, vi, lane) -> None:
    """The tile's accumulators in a small stack buffer written back once; the lanes vectorized
    (before decompose_reduction: vectorize wants a block with its init) or, VNNI, tensorized
    with the taps of a word; taps and vectors unrolled."""
    intrin = sch.get(block).annotations.get("qcc_x86_intrin")
    wb = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(wb, tile)
    sch.vectorize(sch.get_loops(wb)[-1])
    if intrin is None:
        sch.vectorize(lane)
    init = sch.decompose_reduction(block, red_outer[0])
    il = sch.get_loops(init)
    sch.vectorize(il[-1])
    sch.unroll(il[-2])
    if intrin is not None:
        register_taps_intrinsic()
        sch.tensorize(lane, str(intrin))
    sch.unroll(vi)
    for r in reversed(red_outer[1:]):
        sch.unroll(r)


# the pack planes and accumulators of one block of channels: what stays cache-resident between
# the three stages when they run channel block by channel block (Zen 3-5, Skylake: 32-48 KB L1d,
# 512 KB-2 MB L2)
BLOCK_BYTES = 1 << 15


def _divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, max(1, min(n, cap)) + 1) if n % d == 0)


def schedule_dw_fused(sch, pack, conv, tail, target) -> bool:
    """Pack, conv and epilogue (`tail`: the function's last stage, reading the conv's sums
    elementwise) run one block of channels after another, instead of each stage over the
    whole tensor: a det 48-channel 96x144 layer packed 2.6 MB of float32, then summed them
    into 2.6 MB of accumulators, then read those back, each pass through L3. Per channel
    block (BLOCK_BYTES) the pack plane and the accumulators stay in L1/L2; the blocks run in
    parallel. The three stages' channel-block loops are merged (TVM's compute_at cannot
    place the epilogue: it reads the flat accumulator at oh * wq + ow). Pure depthwise
    convs only (one input and one output channel per group, batch 1), with an epilogue
    that reads channel o of the sums for output channel o; returns False otherwise."""
    from .cpu_rules import epilogue_run, vectorize_fenced_row

    n, o, f, *red = sch.get_loops(conv)
    xf = sch.get(pack).writes[0].source
    acc = sch.get(conv).writes[0].source
    n_ch = int(xf.shape[1])
    if tail is None or _extent(sch, red[:1]) != 1 or n_ch != int(acc.shape[1]) or int(xf.shape[0]) != 1:
        return False
    if not _reads_channel_by_channel(sch.get(tail), acc, n_ch):
        return False
    per_channel = 4 * (int(np.prod([int(v) for v in xf.shape[2:]])) + int(acc.shape[2]))
    bc = _divisor_at_most(n_ch, BLOCK_BYTES // per_channel)
    if bc == n_ch:  # one block: nothing to interleave
        return False
    macs = _extent(sch, sch.get_loops(conv))
    # the conv: channel blocks, then tiles of nr vectors of one channel
    ob, oi = sch.split(o, [None, bc])
    vo, vi, lane, red_outer = _tile_loops(sch, conv, f, red)
    sch.reorder(n, ob, oi, vo, *red_outer, vi, lane, *red[len(red_outer):])
    conv_blocks = sch.fuse(n, ob)
    tile = sch.fuse(oi, vo)
    # the pack: the same channel blocks
    pn, pc, *_ = sch.get_loops(pack)
    pcb, _ = sch.split(pc, [None, bc])
    pack_blocks = sch.fuse(pn, pcb)
    _schedule_pack_rows(sch, pack, parallel=False, partition=False)
    # the epilogue: the same channel blocks; rows, then a row's columns (affine in both the
    # accumulator and the output: LLVM vectorizes it), or both as one run (epilogue_run)
    tn, to, th, tw = sch.get_loops(tail)
    tob, _ = sch.split(to, [None, bc])
    tail_blocks = sch.fuse(tn, tob)
    # merged and made parallel before the reduction is decomposed and the columns
    # partitioned (sch.parallel wants whole reduction blocks and no opaque ones below)
    merged = sch.merge(pack_blocks, conv_blocks, tail_blocks)
    if macs >= _PAR_MACS:
        sch.parallel(merged)
    wq, ow = int(sch.get(pack).annotations["qcc_x86_wq"]), int(sch.get(tail).writes[0].source.shape[3])
    run = epilogue_run(sch, th, tw, wq, ow, int(sch.get(conv).annotations["qcc_x86_lanes"]))
    vectorize_fenced_row(sch, tail, run, target)
    _register_tile(sch, conv, tile, red_outer, vi, lane)
    _partition_pack_columns(sch, pack)  # after parallel: the partition's blocks are opaque
    return True


def _schedule_pack_rows(sch, block, parallel: bool, partition: bool = True) -> None:
    """Rows (of each phase) in order, columns innermost; the rows parallel when asked and
    there are enough of them; the columns partitioned (see _partition_pack_columns)."""
    ann = sch.get(block).annotations
    wq = int(ann["qcc_x86_wq"])
    *outer, ph, f = sch.get_loops(block)
    r, col = sch.split(f, [None, wq])
    inner = [ph]
    if "qcc_x86_vector_cols" in ann:  # VNNI: a row's words inside the row loop, unrolled
        outer, inner = outer[:-1], [outer[-1], ph]
    sch.reorder(r, *inner, col)
    if parallel:
        rows = sch.fuse(*outer, r)
        if _extent(sch, [rows, *inner]) * wq * 4 >= 1 << 18:
            sch.parallel(rows)
    for lp in inner:  # each phase's column offset a constant: strided loads LLVM vectorizes
        if _extent(sch, [lp]) > 1:
            sch.unroll(lp)
    if partition:
        _partition_pack_columns(sch, block)


SHORT_ROW = 8  # vectors


def _partition_pack_columns(sch, block, col=None) -> None:
    """The columns every phase reads inside the image get a loop of their own, free of the
    padding test, which LLVM vectorizes. `col`: the columns' loop (default: the innermost)."""
    ann = sch.get(block).annotations
    wq = int(ann["qcc_x86_wq"])
    lo, hi = (int(v) for v in ann["qcc_x86_cols"])
    col = sch.get_loops(block)[-1] if col is None else col
    # VNNI's words of a short row (see _dw_te_vnni): the inside columns vectorized here, in
    # whole vectors of L then the rest
    L, span = int(ann.get("qcc_x86_vector_cols", 0)), hi - lo
    inside = [L] * (span // L) + [span % L] if L else [span]
    inside = [v for v in inside if v > 0]
    sizes = ([lo] if lo else []) + inside + ([wq - hi] if wq > hi else [])
    loops = sch.loop_partition(col, sizes[:-1] + [None]) if len(sizes) > 1 else [col]
    for lp in loops[1 if lo else 0:][:len(inside)] if L else []:
        sch.vectorize(lp)


def _reads_channel_by_channel(block, acc, n_ch: Optional[int], axis: int = 1) -> bool:
    """The block writes [1, n_ch, H, W] (n_ch: any when None) through four spatial loops and
    reads `acc` only at index = its own channel var on `axis` (and 0 on the axes before it
    but the first): merging its channel loop with the conv's is then safe."""
    ivs = block.iter_vars
    if len(ivs) != 4 or any(int(iv.iter_type) != 0 for iv in ivs) or len(block.writes) != 1:
        return False
    out = block.writes[0].source
    if len(out.shape) != 4 or int(out.shape[0]) != 1 or (n_ch is not None and int(out.shape[1]) != n_ch):
        return False
    reads = [r for r in block.reads if r.source.same_as(acc)]
    if not reads:
        return False

    def zero(rng):
        return hasattr(rng.min, "value") and int(rng.min.value) == 0 and int(rng.extent) == 1

    return all(r.region[axis].min.same_as(ivs[1].var) and int(r.region[axis].extent) == 1
               and all(zero(r.region[a]) for a in range(1, axis)) for r in reads)
