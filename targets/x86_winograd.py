"""AVX2's 3x3 stride-1 int8 convs as exact integer Winograd F(2x2, 3x3).

On AVX2 an int8 multiply-accumulate costs what a float one does (x86_int8.py: `vpmaddwd`
plus `vpaddd` per 16 products), and the direct 3x3 conv already runs near that peak
(PP-OCR det's 3x3 96->24 convs at 96x144: 104 GMAC/s on two Zen 3 cores, 38% of the
model's kernel time). Only fewer multiplies make it faster. Winograd's F(2x2, 3x3)
computes each 2x2 block of outputs from a 4x4 block of inputs with 16 products per
input channel where the direct conv takes 36:

    Y = At [ (G g Gt) . (Bt d B) ] A          (Lavin and Gray 2016)

It is usually inexact (G holds halves), but with G' = 2G every transform is an integer
matrix: Bt and At hold only 0 and +-1, and G' = [[2,0,0],[1,1,1],[1,-1,1],[0,0,2]], so

    At [ (G' g G't) . (Bt d B) ] A  ==  4 * conv(d, g)

exactly, in integers, and the result shifted right by 2 is the reference's int32 sum bit
for bit. Both factors fit int16, the operand type of AVX2's kernel: the transformed input
of raw uint8 pixels is a sum of four +-d, |.| <= 1020, and the transformed weights of int8
ones are sums of at most nine +-w, |.| <= 1152 (U_MAX, V_MAX per position). The per-channel products sum in int32
and the output transform adds nine of those sums, so the channels are bounded
(MAX_CHANNELS) to keep every partial sum inside int32.

Stages of the kernel (one fused function; FuseOps adds the requantize epilogue after it):

1. pack: x[n, c, h, w] -> p[n, c/2, row, parity, k, 2] int16: the padded image (padding
   written as the zero point, as x86_int8's pack does) with its columns split by parity,
   so that the four columns 2k-1 .. 2k+2 of tile k are p[.., 0, k], p[.., 1, k],
   p[.., 0, k+1], p[.., 1, k+1]: contiguous vectors over k.
2. transform: v[n, t, c/2, tile, 2] = (Bt d B)[t] per 4x4 block, 16 positions t.
3. gemm: m[n, t, o, tile] = sum_c u[t, o, c] v[n, t, c, tile]: sixteen 1x1 convs, the
   same register-tiled `vpmaddwd` loop as x86_int8's conv (weights [t, O/mr, C/2, 1, 1,
   mr, 2], packed at compile time).
4. output: y[n, o, oh, ow] = (At m A)[oh % 2, ow % 2] >> 2 + bias'[o], the zero point
   folded into the bias as x86_int8 does; the epilogue (requantize, activation) reads y.

The schedule runs 2 and 3 per row of tiles (the transformed row, 16 x C x tiles int16, 221
kB for det's, is read back from L2, not memory), rows in parallel; 1 and 4 are passes over
the image. (4 inside the rows too would spare writing m to memory, but TVM's
reverse_compute_at cannot place it: its reads of m index tiles by oh // 2.)
Measured on PP-OCR det's 3x3 96->24 conv at 96x144 (Zen 3, two threads): 2.82 ms direct,
1.39-1.43 ms this way.
"""
from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass
from typing import Iterator, Optional, Tuple

import numpy as np

from .cpu_schedule import KEEP
from .x86_int8 import ANN, AVX2, Isa, _pick_tile, _register_tile, register_intrinsics

MIN_PIXELS = 64  # smaller maps: the transforms' overhead outweighs the saved products
# ... and fewer input channels: the input transform is per channel, the saved products per
# channel pair and output channel. Winograd / direct on Zen 3, two threads, u8 3x3 convs
# with a requantize: 3->16 at 112x112 1.36x, 8->16 1.28x, 8->32 at 56x56 1.86x, 12->24 at
# 64x64 1.15x, 16->16 at 160x160 0.96x, 16->32 at 112x112 0.97x, 32->64 at 52x52 0.86x,
# 64->64 at 56x56 0.66x, 96->24 at 96x144 0.45x, 256->256 at 14x14 0.52x, 400->64 0.72x
MIN_CHANNELS = 24

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.int64)
_G2 = np.array([[2, 0, 0], [1, 1, 1], [1, -1, 1], [0, 0, 2]], np.int64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.int64)


def _largest_transformed():
    """(|G' g G't| bound per position for int8 g, |Bt d B| bound per position for d in
    [0, 255] (raw pixels, zero-point padding included))."""
    r = np.abs(_G2).sum(1)
    u = np.outer(r, r) * 128
    c = np.einsum("ai,bj->abij", _BT, _BT)
    v = 255 * np.maximum(np.clip(c, 0, None).sum((2, 3)), np.clip(-c, 0, None).sum((2, 3)))
    return u, v


U_MAX, V_MAX = _largest_transformed()  # U_MAX <= 1152, V_MAX <= 1020: both int16
# every partial sum, in the gemm (over channels) and in the output transform (nine of
# those), stays inside int32 (TVM's int32 adds are `nsw`: no wrapping to rely on)
MAX_CHANNELS = (2 ** 31 - 1) // int(max((np.abs(np.outer(_AT[a], _AT[b])) * U_MAX * V_MAX).sum()
                                        for a in range(2) for b in range(2)))


@dataclass(frozen=True)
class WinoPlan:
    n: int
    c: int
    h: int
    w: int
    o: int
    pads: Tuple[int, int, int, int]  # top, left, bottom, right
    x_signed: bool
    zx: int  # zero point in the uint8 domain
    mr: int  # output channels per register tile (one vector of tiles wide)
    isa: Isa = AVX2

    @property
    def out_hw(self) -> Tuple[int, int]:
        pt, pl, pb, pr = self.pads
        return self.h + pt + pb - 2, self.w + pl + pr - 2

    @property
    def tiles_hw(self) -> Tuple[int, int]:
        """Rows of tiles, and tiles per row padded to whole vectors."""
        oh, ow = self.out_hw
        tiles, L = -(-ow // 2), self.isa.lanes
        return -(-oh // 2), -(-tiles // L) * L

    @property
    def cb(self) -> int:
        return -(-self.c // self.isa.group)

    @property
    def op(self) -> int:
        return -(-self.o // self.mr) * self.mr


def _pick_mr(isa: Isa, o: int) -> int:
    """Output channels per tile, the tile one vector of tiles wide: a row of tiles is only a
    few vectors, and a second one padded it (det's 72 tiles are 9 vectors). x86_int8's cost
    model, held to that width, picks the height. Det's 24 channels, two threads: 12x1 1.39
    ms, 8x1 1.56, 6x2 1.64, 4x2 1.72, 3x4 2.40."""
    mr, _ = _pick_tile(isa, o, 1)
    return mr


_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("qcc_x86_winograd", default=True)


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Within the block, every conv takes x86_int8's direct kernel (its tests, comparisons)."""
    token = _ENABLED.set(False)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def wino_plan(x_shape, x_dtype: str, w_shape, attrs, isa: Isa) -> Optional[WinoPlan]:
    """The plan when this kernel takes the qconv: AVX2, a 3x3 kernel, stride and dilation
    1, one group, 8-bit activations, few enough channels, a large enough output; else None."""
    if not _ENABLED.get() or isa is not AVX2 or x_dtype not in ("uint8", "int8") or len(x_shape) != 4 or len(w_shape) != 4:
        return None
    n, c, h, w = (int(d) for d in x_shape)
    o, cg, kh, kw = (int(d) for d in w_shape)
    if (kh, kw) != (3, 3) or cg != c or int(attrs.get("group", 1)) != 1 or not MIN_CHANNELS <= c <= MAX_CHANNELS:
        return None
    if any(int(s) != 1 for s in attrs.get("strides", (1, 1))) or any(int(d) != 1 for d in attrs.get("dilations", (1, 1))):
        return None
    pads = tuple(int(p) for p in attrs.get("pads", (0, 0, 0, 0)))
    if len(pads) != 4 or any(p < 0 or p > 2 for p in pads):
        return None
    zx = int(attrs.get("x_zero_point", 0)) + (128 if x_dtype == "int8" else 0)
    if not 0 <= zx <= 255:
        return None
    p = WinoPlan(n, c, h, w, o, pads, x_dtype == "int8", zx, _pick_mr(isa, o), isa)
    oh, ow = p.out_hw
    return p if oh >= 2 and ow >= 2 and oh * ow >= MIN_PIXELS else None


def pack_wino_weights(p: WinoPlan, w: np.ndarray, bias: Optional[np.ndarray]):
    """(transformed weights [16, O/mr, C/2, 1, 1, mr, 2] int16, bias' [o] int32) or None
    when the folded bias does not fit int32."""
    G, mr = p.isa.group, p.mr
    wi = w.astype(np.int64)
    u = np.einsum("ai,ocij,bj->aboc", _G2, wi, _G2).reshape(16, p.o, p.c)
    full = np.zeros((16, p.op, p.cb * G), np.int64)
    full[:, :p.o, :p.c] = u
    packed = full.reshape(16, p.op // mr, mr, p.cb, G).transpose(0, 1, 3, 2, 4).reshape(16, p.op // mr, p.cb, 1, 1, mr, G)
    b = np.zeros(p.o, np.int64) if bias is None else bias.astype(np.int64).reshape(p.o)
    folded = b - p.zx * wi.sum(axis=(1, 2, 3))
    if folded.min() < -(1 << 31) or folded.max() >= 1 << 31:
        return None
    return np.ascontiguousarray(packed).astype(np.int16), folded.astype(np.int32)


def _input_row(a: int, fn):
    """Row a of Bt applied to fn(0..3)."""
    return (fn(0) - fn(2), fn(1) + fn(2), fn(2) - fn(1), fn(1) - fn(3))[a]


def wino_te(p: WinoPlan, x, u, bias):
    """The kernel's stages (module docstring); returns y [n, o, oh, ow] int32."""
    from tvm import te, tirx

    isa, G, mr = p.isa, p.isa.group, p.mr
    th, twp = p.tiles_hw
    pt, pl, _, _ = p.pads
    oh_n, ow_n = p.out_hw

    def pack(n, cb, r, par, k, ci):
        hh, ww, ch = r - pt, 2 * k + par - pl, cb * G + ci
        inside = tirx.all(hh >= 0, hh < p.h, ww >= 0, ww < p.w, ch < p.c)
        v = x[n, ch, hh, ww].astype("int16")
        if p.x_signed:
            v = v + tirx.const(128, "int16")
        return tirx.if_then_else(inside, v, tirx.const(p.zx, "int16"))

    xp = te.compute((p.n, p.cb, 2 * th + 2, 2, twp + 1, G), pack, name="qcc_avx2_wpack",
                    attrs={ANN: "wpack"})

    def transform(n, t, cb, f, ci):
        tr, tw = f // twp, f % twp

        def at(i, j):
            return xp[n, cb, 2 * tr + i, j % 2, tw + j // 2, ci]

        # t = 4a + b, unrolled by the schedule: each (a, b) one sum of four +-pixels
        terms = [_input_row(a, lambda i, a=a: _input_row(b, lambda j, i=i: at(i, j)))
                 for a in range(4) for b in range(4)]
        out = terms[15]
        for k in range(14, -1, -1):
            out = tirx.Select(t == k, terms[k], out)
        return out

    v = te.compute((p.n, 16, p.cb, th * twp, G), transform, name="qcc_avx2_wtrans", attrs={ANN: "wtrans"})
    rc = te.reduce_axis((0, p.cb), "rc")
    ri = te.reduce_axis((0, G), "ri")
    m = te.compute((p.n, 16, p.op, th * twp),
                   lambda n, t, oc, f: te.sum(v[n, t, rc, f, ri].astype("int32")
                                              * u[t, oc // mr, rc, 0, 0, oc % mr, ri].astype("int32"), axis=[rc, ri]),
                   name="qcc_avx2_wgemm", attrs={ANN: "wgemm", "qcc_x86_mr": mr, "qcc_x86_isa": isa.name, "qcc_x86_wq": twp})

    def output(n, o, oh, ow):
        f = (oh // 2) * twp + ow // 2

        def row(a, fn):
            return tirx.Select(a == 0, fn(0) + fn(1) + fn(2), fn(1) - fn(2) - fn(3))

        y = row(oh % 2, lambda i: row(ow % 2, lambda j: m[n, i * 4 + j, o, f]))
        return tirx.shift_right(y, 2) + bias[o]

    return te.compute((p.n, p.o, oh_n, ow_n), output, name="qcc_avx2_wout", attrs={ANN: "wout", KEEP: True})


def schedule(sch, kept) -> None:
    """Schedule the kernel's stages in a fused function (`kept`: its (block, kind) in order);
    the epilogue after the output stage is x86_int8's to schedule, as any other."""
    blocks = {kind: b for b, kind in kept if kind}
    register_intrinsics(AVX2)
    L = AVX2.lanes
    # 1. pack: rows in parallel, the parity and channel pair unrolled
    n, cb, r, par, k, ci = sch.get_loops(blocks["wpack"])
    sch.parallel(sch.fuse(n, cb, r))
    sch.unroll(par)
    sch.unroll(ci)
    # 3. gemm per row of tiles, rows parallel; 2. that row's transform first
    gemm = blocks["wgemm"]
    mr, row_len = (int(sch.get(gemm).annotations[k]) for k in ("qcc_x86_mr", "qcc_x86_wq"))
    n, t, oc, f, rc, ri = sch.get_loops(gemm)
    band, fi = sch.split(f, [None, row_len])
    vec, lane = sch.split(fi, [None, L])
    oco, oci = sch.split(oc, [None, mr])
    vo, vi = sch.split(vec, [None, 1])
    sch.reorder(n, band, t, oco, vo, rc, oci, vi, lane, ri)
    rows = sch.fuse(n, band)
    sch.parallel(rows)
    sch.compute_at(blocks["wtrans"], rows)
    _register_tile(sch, gemm, vo, rc, oci, vi, lane, AVX2.conv_intrin)
    t_, cb_, f_, ci_ = sch.get_loops(blocks["wtrans"])[-4:]
    sch.unroll(t_)
    _, inner = sch.split(sch.fuse(f_, ci_), [None, L * AVX2.group])
    sch.vectorize(inner)
    # 4. output: (image, channel, row pair) parallel; the row and column parities unrolled,
    # so each (oh % 2, ow % 2) is one fixed sum of m (an odd height or width leaves a
    # predicate on the last pair). The epilogue FuseOps put after it is a stage of its own,
    # which x86_int8 schedules as any other, in vectors along rows: inlined here, it ran
    # one value at a time (the parities interleave the columns)
    out = blocks["wout"]
    n, o, oh, ow = sch.get_loops(out)
    pairs, a = sch.split(oh, [None, 2])
    sch.parallel(sch.fuse(n, o, pairs))
    sch.unroll(a)
    _, b = sch.split(ow, [None, 2])
    sch.unroll(b)
