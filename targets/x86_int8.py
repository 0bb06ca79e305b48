"""x86 int8 kernels: qconv and qmatmul on AVX-512 VNNI and AVX2, search-free and bit-exact.

`X86Strategy` (registered for the "x86" family) replaces the lowering of `qconv`
(2-D; depthwise-like ones go to x86_depthwise.py's kernels, scheduled by the same
rule) and `qmatmul` (constant 2-D right operand) with TE kernels built around one
multiply-accumulate instruction, and schedules the fused
functions that contain them with its own dlight rule. Two instruction sets share
every line of it but the packed dtypes and the intrinsic (`Isa`):

- AVX-512 VNNI: `vpdpbusd` (u8 x s8 -> int32, 16 lanes x 4 products, accumulating).
- AVX2: `vpmaddwd` (s16 x s16 -> int32, 8 lanes x 2 products) plus `vpaddd`. The
  operands are packed as int16 (activations widened once by the pack stage,
  weights at compile time). `vpmaddubsw` would take bytes directly but saturates
  its int16 pair sums (255*127*2 > 32767), so it is not exact on u8 x s8. Two
  instructions per 16 products is what float32's FMA takes too: on AVX2, int8 gains only
  the integer ports' rate (Zen 3: peak 1.4-1.5x float's, benchmarks/run.py measures it)
  and its smaller data.
- 16-bit activations (the bit-width search's w8a16 layers) take `vpdpwssd` on AVX-512
  VNNI (`VNNI16`: 16 lanes x 2 int16 products) and AVX2's kernel as they are, the zero
  point folded like an 8-bit one's. A 3x3 96->96 conv at 48x72 (Zen 5, two threads): 369
  GMAC/s, against 664 at int8, 219 as float32 and 86 through the generic lowering.

- float32 (`F32X8` AVX2+FMA, `F32X16` AVX-512): float convs a mixed-precision model keeps
  (assign-bitwidths leaves its most sensitive layers float) take the same layout, tile and
  schedule, the step a plain vectorized multiply-add (`conv_kernel`, the strategy's hook
  in lower_nn.conv_nd). 1x1 convs of rec: 13 -> 44-55 GMAC/s single-thread.

The rest of this docstring is written for VNNI; on AVX2 read 8 for 16 (lanes) and
2 for 4 (channels interleaved per lane).

Exactness. VNNI multiplies *unsigned* activations by *signed* weights, so the
activation stays raw uint8 (int8 activations are shifted by +128, zero point too)
and the zero point moves to a per-output-channel constant folded into the bias at
compile time:

    sum((x - zx) * w) + b  ==  sum(x * w) + (b - zx * sum(w))

Spatial padding is written explicitly with zx (it then contributes (zx-zx)*w = 0,
as the reference's padding does); padded channels, rows and columns meet zero
weights or are never read back. Products are exact and the sum wraps like any
int32 sum, so the result equals the reference's int32 accumulator bit for bit.

Conv layout ("pixels in lanes"). The graph stays NCHW. A conv kernel is one fused
function with three stages:

1. pack (prologue): x[n, c, h, w] -> xq[n, g, c/4, phase, f, 4] (uint8): four input
   channels interleaved, the padded image split into stride phases (space to
   depth: phase (ph, pw) holds padded pixels (r*sh + ph, c*sw + pw)), each phase
   flattened row-major with row pitch Wq = ceil(Wp / sw). Every tap (kh, kw) of
   output pixel f = oh*Wq + ow then reads xq at f + off(kh, kw): sixteen
   consecutive output pixels read 64 contiguous bytes, whatever the stride or
   dilation. Columns ow >= OW are computed and dropped (<= (KW-1)/Wq extra work).
2. conv: acc[n, g, oc, f/16, 16] += xq[.., f + off, 0:4] . w[oc, 0:4]: each
   `vpdpbusd` multiplies 16 pixels x 4 channels by 4 weights of one output channel
   (broadcast). Register tile: mr output channels x nr*16 pixels (mr*nr <= 24
   accumulators), the whole reduction inside the tile, tiles parallel.
   Weights are packed in numpy: [g, O/mr, C/4, KH, KW, mr, 4].
3. epilogue: y[n, o, oh, ow] = acc[...] + bias'[o], in NCHW; the requantize (and
   whatever else FuseOps put after the conv) is inlined into it. When a block of mr
   channels' sums fits in cache, stages 2 and 3 run block by block in one parallel
   loop (`_schedule_conv_blocks`), else stage 3 is a pass of its own.

Matmul layout (lanes along N, as TVM's dot_16x4): a[.., M, K] stays row-major
(packed to uint8 with K padded to 4), b is packed to [N/16, K/4, 16, 4]; tile
mr rows x nr*16 columns.
"""
from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import warnings
from dataclasses import dataclass
from typing import Iterator, List, Mapping, Optional, Tuple

import numpy as np

from .conv_geometry import ConvGeometry, conv_geometry, conv_kernel_2d
from .cpu_rules import _is_reduction, schedule_injective
from .cpu_tir_passes import STACK_LIMIT
from .x86_depthwise import (MAX_GROUP_CHANNELS, dw_plan, dw_te, inside_columns, pack_dw, schedule_dw_conv,
                            schedule_dw_fused, schedule_dw_pack)
from .lower_nn import weights_as_float
from .strategy import FusedCPUStrategy, register_strategy

_I32 = (-(1 << 31), (1 << 31) - 1)
# Below these sizes a stage runs on one thread: a parallel launch costs a microsecond or
# two on idle cores (far more when they are shared or asleep), more than a small stage's
# work. Set from whole-model runs on 2 threads (2026-12-04, interleaved medians, all
# bit-identical), lowered from 2M MACs / 256 kB / 32k values, with the per-channel-block
# convs, "warm" (back-to-back calls) / "single" (one call per round, onnxruntime running
# in between): mobilenetv4_conv_small 0.67 / 1.15 -> 0.59 / 1.20 ms, rexnet_100 3.29 /
# 3.81 -> 2.84 / 3.28, efficientformerv2_s0 6.27 / 6.36 -> 5.39 / 5.53, PP-OCR rec 3.85
# / 3.62 -> 3.80 / 3.44, cls 0.31 / 0.33 -> 0.28 / 0.41. Half these sizes gains a little
# more warm (mobilenetv4 0.55) but loses on single calls of tiny models (cls 0.48, mobilenetv4
# 1.29): each extra parallel kernel then pays for waking the pool's threads.
_PAR_MACS = 1 << 20
_PAR_BYTES = 1 << 15
_PAR_ELEMS = 1 << 13


# --- instruction sets -----------------------------------------------------------------------

@dataclass(frozen=True)
class Isa:
    """What a kernel needs to know of its multiply-accumulate instruction."""
    name: str
    lanes: int        # int32 accumulator lanes of one vector register
    group: int        # products summed into each lane (reduction elements interleaved)
    act: str          # packed activation dtype
    wt: str           # packed weight dtype
    registers: int    # vector registers
    scratch: int      # registers an inner step needs besides accumulators and loaded vectors
    max_acc: int      # accumulator registers of one tile
    max_vecs: int = 4  # loaded vectors of one tile (its columns)

    @property
    def prefix(self) -> str:
        return f"qcc_{self.name}"

    @property
    def is_float(self) -> bool:
        """A float32 multiply-add (float convs left in a model): plain vectorized code, no
        tensor intrinsic."""
        return self.act == "float32"

    @property
    def conv_intrin(self) -> str:
        return f"qcc_{self.name}_{self.lanes}x{self.group}_lanes_act"

    @property
    def mm_intrin(self) -> str:
        return f"qcc_{self.name}_{self.lanes}x{self.group}_lanes_wt"


VNNI = Isa("vnni", 16, 4, "uint8", "int8", 32, 1, 24)  # scratch: the broadcast
# the broadcast and vpmaddwd's product. At most two loaded vectors: with 16 registers, a
# 3x4 or 2x4 tile left LLVM no room to load the next tap's vectors early and it spilled
# accumulators inside the reduction loop. PP-OCR det int8, one thread, kernels alone (Zen 3):
# 2x4 (the cost model's choice) 37.8 ms, 3x4 36.1, 4x3 36.0, 6x2 33.8, 3x2 35.1; its 1x1
# convs at 24x36 0.80 -> 0.54 ms, a 3x3 96->24 at 96x144 7.2 -> 6.1 ms. Whole models, 2
# threads, interleaved p50: det 29.0 -> 26.1 ms, rec 14.5 -> 11.9, cls 0.88 -> 0.87. Not
# everywhere: rec's 1x1 240->480 at 6x80 went 1.1 -> 1.4 ms on one thread (6x2 still spills
# there, after LLVM unrolls its reduction loop twice).
AVX2 = Isa("avx2", 8, 2, "int16", "int16", 16, 2, 12, max_vecs=2)
# 16-bit activations (w8a16 layers) on AVX-512 VNNI: vpdpwssd, 16 lanes x 2 int16 products
VNNI16 = Isa("vnni16", 16, 2, "int16", "int16", 32, 1, 24)
# float convs share the layout, tile and schedule: one FMA per lanes x 1 product
F32X8 = Isa("f32x8", 8, 1, "float32", "float32", 16, 1, 12)  # AVX2 + FMA
F32X16 = Isa("f32x16", 16, 1, "float32", "float32", 32, 1, 24)  # AVX-512
ISAS = {i.name: i for i in (VNNI, AVX2, VNNI16, F32X8, F32X16)}
# the activation dtypes each integer set's conv takes (AVX2 widens bytes to its int16)
_ACTIVATIONS = {"vnni": ("uint8", "int8"), "vnni16": ("int16",), "avx2": ("uint8", "int8", "int16")}
ANN = "qcc_x86"  # block annotation: which stage of a kernel a block is
_registered = set()


def _mac(isa: Isa, acc, a, b):
    """acc + a . b for one vector of lanes (a, b: byte/int16 vectors of lanes*group)."""
    from tvm.script import tirx as T

    if isa is VNNI:
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                                       acc, a, b, dtype="int32x16")
    if isa is VNNI16:
        return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpwssd.512"),
                                       acc, a, b, dtype="int32x16")
    return acc + T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"),
                                         a, b, dtype="int32x8")


def register_intrinsics(isa: Isa) -> None:
    """Register the two tensor intrinsics of `isa` (once): C[lanes] += A[lanes, group] . B[group]
    (activations in lanes, one weight group broadcast) and C[lanes] += A[group] . B[lanes, group]
    (matmul: lanes along N). TVM's own `dot_16x4_vnni` passes i32 vectors to
    `vpdpbusd.512`, which LLVM 22 rejects; these pass byte vectors."""
    if isa.name in _registered or isa.is_float:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    L, G, ad, wd = isa.lanes, isa.group, isa.act, isa.wt

    @T.prim_func(s_tir=True)
    def conv_desc(A: T.Buffer((L, G), ad, offset_factor=1), B: T.Buffer((G,), wd, offset_factor=1),
                  C: T.Buffer((L,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:L], A[0:L, 0:G], B[0:G])
            T.writes(C[0:L])
            for i in T.serial(0, L):
                for k in T.serial(0, G):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vi, vk], "int32") * T.cast(B[vk], "int32")

    @T.prim_func(s_tir=True)
    def conv_impl(A: T.Buffer((L, G), ad, offset_factor=1), B: T.Buffer((G,), wd, offset_factor=1),
                  C: T.Buffer((L,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:L], A[0:L, 0:G], B[0:G])
            T.writes(C[0:L])
            C[T.ramp(T.int32(0), 1, L)] = _mac(
                isa, C.vload([0], dtype=f"int32x{L}"), A.vload([0, 0], dtype=f"{ad}x{L * G}"),
                T.reinterpret(T.broadcast(T.reinterpret(B.vload([0], dtype=f"{wd}x{G}"), dtype="int32"), L),
                              dtype=f"{wd}x{L * G}"))

    @T.prim_func(s_tir=True)
    def mm_desc(A: T.Buffer((G,), ad, offset_factor=1), B: T.Buffer((L, G), wd, offset_factor=1),
                C: T.Buffer((L,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:L], A[0:G], B[0:L, 0:G])
            T.writes(C[0:L])
            for i in T.serial(0, L):
                for k in T.serial(0, G):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    @T.prim_func(s_tir=True)
    def mm_impl(A: T.Buffer((G,), ad, offset_factor=1), B: T.Buffer((L, G), wd, offset_factor=1),
                C: T.Buffer((L,), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(C[0:L], A[0:G], B[0:L, 0:G])
            T.writes(C[0:L])
            C[T.ramp(T.int32(0), 1, L)] = _mac(
                isa, C.vload([0], dtype=f"int32x{L}"),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], dtype=f"{ad}x{G}"), dtype="int32"), L),
                              dtype=f"{ad}x{L * G}"),
                B.vload([0, 0], dtype=f"{wd}x{L * G}"))

    TensorIntrin.register(isa.conv_intrin, conv_desc, conv_impl, override=True)
    TensorIntrin.register(isa.mm_intrin, mm_desc, mm_impl, override=True)
    _registered.add(isa.name)


# --- tile choice ---------------------------------------------------------------------------

def _pick_tile(isa: Isa, rows: int, vecs: int, max_rows: int = 24) -> Tuple[int, int]:
    """(mr, nr): mr rows x nr vectors per register tile, mr*nr <= isa.max_acc, and the
    accumulators, nr loaded vectors and one broadcast in the register file.

    Cost model (measured on Zen 4, 40x120x6625 matmul: 4x4 516 GOP/s, 4x3 443, 8x2 403,
    8x1 310): padded work times the load/broadcast overhead per vpdpbusd, each broadcast
    (one per row) costing most. Tiles above 16 zmm accumulators (1 kB) used to be heap
    workspaces, one per tile; cpu_tir_passes.py keeps them on the stack, so only the
    register file bounds them. On a conv at ~89% of the VNNI peak (3x3 96->24 at 96x144,
    Zen 5, one thread) every tile from 3x4 to 12x2 ran within 5% (0.61-0.64 ms): the cost
    model matters for padding and small maps more than for the inner loop."""
    best = None
    for nr in (4, 3, 2, 1):
        if (nr > max(1, vecs) or nr > isa.max_vecs) and nr > 1:
            continue
        cap = min(max_rows, isa.max_acc // nr, (isa.registers - isa.scratch - nr) // nr)
        for mr in range(min(cap, rows), 0, -1):
            key = (_tile_cost(rows, vecs, mr, nr), -nr)
            if best is None or key < best[0]:
                best = (key, mr, nr)
    return best[1], best[2]


def _tile_cost(rows: int, vecs: int, mr: int, nr: int) -> float:
    """_pick_tile's cost of an mr x nr tile: the padded work times the load/broadcast overhead."""
    work = math.ceil(rows / mr) * mr * math.ceil(vecs / nr) * nr
    return work * (1 + 0.8 / nr + 0.3 / mr)


def tile_candidates(isa: Isa, rows: int, vecs: int, max_rows: int = 24) -> List[Tuple[int, int]]:
    """Register tiles worth measuring for a conv (-O3's tile search, targets/tile_search.py):
    the cost model's choice first, then for each tile width up to four vectors the cost
    model's best height, and the next lower one at four. Register limits are the cost
    model's guess, not the hardware's answer, so the widths past isa.max_vecs are tried
    too (measured on PP-OCR rec, Zen 3, one thread: the 1x1 240->480 conv at 6x80 ran in
    2.63 ms with the default 6x2 tile, 1.88 ms with 4x3; its 3x80 sibling preferred 6x2)."""
    out = [_pick_tile(isa, rows, vecs, max_rows)]
    for nr in range(1, 5):
        if nr > max(1, vecs):
            break
        mrs = range(min(max_rows, isa.max_acc // nr, rows), 0, -1)
        for mr in sorted(mrs, key=lambda mr: _tile_cost(rows, vecs, mr, nr))[:2 if nr == 4 else 1]:
            if (mr, nr) not in out:
                out.append((mr, nr))
    return out


# Tiles chosen by measurement (-O3), by tile_key: conv_plan gives these convs that tile.
_TILES: contextvars.ContextVar[Mapping[str, Tuple[int, int]]] = contextvars.ContextVar("qcc_x86_tiles", default={})


@contextlib.contextmanager
def tile_choices(tiles: Mapping[str, Tuple[int, int]]) -> Iterator[None]:
    """Within the block, conv_plan gives each conv whose tile_key is in `tiles` that tile."""
    token = _TILES.set(dict(tiles))
    try:
        yield
    finally:
        _TILES.reset(token)


def tile_key(p) -> str:
    """What a measured tile is recorded under: the conv's geometry (a matmul's shape) and
    instruction set, not its zero point or weights, which do not change its speed."""
    if isinstance(p, MatmulPlan):
        return f"{p.isa.name}:{p.a_signed}:matmul:batch={p.batch},m={p.m},k={p.k},n={p.n},vector={p.vector}"
    g = {f.name: getattr(p, f.name) for f in dataclasses.fields(ConvGeometry)}
    return f"{p.isa.name}:{p.x_signed}:" + ",".join(f"{k}={g[k]}" for k in sorted(g))


# --- qconv ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConvPlan(ConvGeometry):
    x_signed: bool = False
    zx: int = 0  # zero point in the uint8 domain
    isa: Isa = VNNI
    pitch: int = 0  # row pitch of the packed phases and the sums; 0: ceil(wp / stride)
    chosen_tile: Tuple[int, int] = (0, 0)  # measured (tile_choices); (0, 0): the cost model's

    @property
    def cb(self):
        return -(-self.cg // self.isa.group)

    @property
    def wq(self):
        return self.pitch or -(-self.wp // self.strides[1])

    @property
    def hq(self):
        return -(-self.hp // self.strides[0])

    @property
    def tile(self):
        if self.chosen_tile[0]:
            return self.chosen_tile
        oh, _ = self.out_hw
        return _pick_tile(self.isa, self.og, -(-oh * self.wq // self.isa.lanes))

    @property
    def tile_space(self) -> List[Tuple[int, int]]:
        """The tiles -O3 measures for this conv (tile_candidates)."""
        oh, _ = self.out_hw
        return tile_candidates(self.isa, self.og, -(-oh * self.wq // self.isa.lanes))

    @property
    def ogp(self):
        mr, _ = self.tile
        return -(-self.og // mr) * mr

    @property
    def vecs(self):
        """Vectors (of isa.lanes pixels) of the flattened output, padded to the tile."""
        oh, _ = self.out_hw
        _, nr = self.tile
        return -(-(-(-oh * self.wq // self.isa.lanes)) // nr) * nr

    def offset(self, kh: int, kw: int) -> Tuple[int, int]:
        """(phase, flat offset) of tap (kh, kw)."""
        (sh, sw), (dh, dw) = self.strides, self.dilations
        ph, pw = (kh * dh) % sh, (kw * dw) % sw
        return ph * sw + pw, ((kh * dh) // sh) * self.wq + (kw * dw) // sw

    @property
    def flat(self):
        """Length of each flattened phase plane: every read in bounds, a whole number of rows."""
        max_off = max(self.offset(i, j)[1] for i in range(self.kh) for j in range(self.kw))
        need = self.vecs * self.isa.lanes + max_off
        return -(-need // self.wq) * self.wq


def _banded(p: ConvPlan) -> ConvPlan:
    """`p`, or `p` with its row pitch rounded up to whole vectors where only that lets the
    per-block schedule split a large image into bands of rows (_band_rows): a band must end
    on a register tile, and with an odd pitch (a stride-2 stem's: ceil(578 / 2) = 289) no
    band of rows that fits does, so the conv ran as three passes over the whole image, its
    int32 sums written to memory and read back (PP-OCR det's stem, 3->16 at 192x288: 0.39
    -> 0.34 ms on two threads, 0.77 -> 0.67 on one). The padded columns are computed and
    dropped, at most lanes - 1 a row."""
    if p.n != 1 or p.groups != 1:
        return p
    oh, _ = p.out_hw
    L = p.isa.lanes

    def bands(q):
        mr, nr = q.tile
        return _band_rows(mr, nr * L, oh, q.wq, q.vecs * L)

    if bands(p) is not None:
        return p
    q = dataclasses.replace(p, pitch=-(-p.wq // L) * L)
    return q if bands(q) is not None else p


def conv_plan(x_shape, x_dtype: str, w_shape, attrs, isa: Isa = VNNI) -> Optional[ConvPlan]:
    """The plan for a qconv the kernel handles, else None. 16-bit activations take the
    int16 instruction sets (VNNI16, AVX2) as they are, zero point folded like 8-bit ones'."""
    geom = conv_geometry(x_shape, w_shape, attrs)
    if geom is None or x_dtype not in _ACTIVATIONS.get(isa.name, ()):
        return None
    if geom.cg < isa.group and geom.groups > 1:  # depthwise-like: another kernel's job
        return None
    if x_dtype == "int16":
        zx = int(attrs.get("x_zero_point", 0))
        if not -(1 << 15) <= zx < (1 << 15):
            return None
        return _banded(_measured(ConvPlan(**geom.fields(), x_signed=False, zx=zx, isa=isa)))
    zx = int(attrs.get("x_zero_point", 0)) + (128 if x_dtype == "int8" else 0)
    if not 0 <= zx <= 255:
        return None
    if 255 * 128 * geom.cg * geom.kh * geom.kw >= (1 << 31):  # the raw u8 x s8 sum must not wrap
        return None
    return _banded(_measured(ConvPlan(**geom.fields(), x_signed=x_dtype == "int8", zx=zx, isa=isa)))


def _measured(p):
    """`p` with the tile tile_choices holds for it, if any."""
    tile = _TILES.get().get(tile_key(p))
    return dataclasses.replace(p, chosen_tile=tuple(tile)) if tile else p


def float_conv_plan(x_shape, w_shape, attrs, isa: Isa) -> Optional[ConvPlan]:
    """The plan for a float32 conv through the same kernel (float `isa`), else None."""
    geom = conv_geometry(x_shape, w_shape, attrs)
    if geom is None:
        return None
    return _banded(ConvPlan(**geom.fields(), isa=isa))


def pack_float_conv_weights(p: ConvPlan, w: np.ndarray) -> np.ndarray:
    """Weights [o, cg, kh, kw] -> [g, ogp/mr, cg, kh, kw, mr, 1] in their dtype (float32, or
    -O1's int8), padded with zeros."""
    mr, _ = p.tile
    wg = w.reshape(p.groups, p.og, p.cg, p.kh, p.kw)
    full = np.zeros((p.groups, p.ogp, p.cg, p.kh, p.kw), w.dtype)
    full[:, :p.og] = wg
    packed = full.reshape(p.groups, p.ogp // mr, mr, p.cg, 1, p.kh, p.kw).transpose(0, 1, 3, 5, 6, 2, 4)
    return np.ascontiguousarray(packed)


def pack_conv_weights(p: ConvPlan, w: np.ndarray, bias: Optional[np.ndarray]):
    """(packed weights [g, ogp/mr, cb, kh, kw, mr, group] (isa.wt), bias' [o] int32) or None
    when the folded bias does not fit int32."""
    mr, _ = p.tile
    G = p.isa.group
    wg = w.astype(np.int64).reshape(p.groups, p.og, p.cg, p.kh, p.kw)
    full = np.zeros((p.groups, p.ogp, p.cb * G, p.kh, p.kw), np.int64)
    full[:, :p.og, :p.cg] = wg
    packed = full.reshape(p.groups, p.ogp // mr, mr, p.cb, G, p.kh, p.kw).transpose(0, 1, 3, 5, 6, 2, 4)
    b = np.zeros(p.o, np.int64) if bias is None else bias.astype(np.int64).reshape(p.o)
    folded = b - p.zx * wg.sum(axis=(2, 3, 4)).reshape(p.o)
    if folded.min() < _I32[0] or folded.max() > _I32[1]:
        return None
    return np.ascontiguousarray(packed).astype(p.isa.wt), folded.astype(np.int32)


def conv_te(p: ConvPlan, x, wpk, bias):
    """The three TE stages of the conv (see the module docstring); returns y [n, o, oh, ow] int32."""
    from tvm import te, tirx

    mr, nr = p.tile
    isa = p.isa
    L, G = isa.lanes, isa.group
    wpk = weights_as_float(wpk) if isa.is_float else wpk
    (sh, sw), (dh, dw) = p.strides, p.dilations
    pt, pl = p.pads[0], p.pads[1]
    wq, cg, zx = p.wq, p.cg, p.zx
    nph = sh * sw

    def pack(n, g, cb, ph, f, ci):
        r, col = f // wq, f % wq
        hh = r * sh + ph // sw - pt
        ww = col * sw + ph % sw - pl
        ch = cb * G + ci
        inside = tirx.all(hh >= 0, hh < p.h, ww >= 0, ww < p.w, ch < cg)
        v = x[n, g * cg + ch, hh, ww]
        if p.x_signed:
            v = v.astype("int32") + 128
        return tirx.if_then_else(inside, v.astype(isa.act), tirx.const(0.0 if isa.is_float else zx, isa.act))

    # the columns every phase reads inside the image (as x86_depthwise's pack): the schedule
    # gives them a loop of their own, free of the padding test
    lo, hi = inside_columns(p.w, pl, sw, wq, reach=sw - 1)
    xq = te.compute((p.n, p.groups, p.cb, nph, p.flat, G), pack, name=f"{isa.prefix}_pack",
                    attrs={ANN: "pack", "qcc_x86_wq": wq, "qcc_x86_isa": isa.name, "qcc_x86_cols": [lo, hi],
                           "qcc_x86_stride_w": sw})

    rc = te.reduce_axis((0, p.cb), "rc")
    rh = te.reduce_axis((0, p.kh), "rh")
    rw = te.reduce_axis((0, p.kw), "rw")
    ri = te.reduce_axis((0, G), "ri")

    def conv(n, g, oc, f):
        ph = ((rh * dh) % sh) * sw + (rw * dw) % sw
        off = ((rh * dh) // sh) * wq + (rw * dw) // sw
        acc_t = "float32" if isa.is_float else "int32"
        return te.sum(xq[n, g, rc, ph, f + off, ri].astype(acc_t)
                      * wpk[g, oc // mr, rc, rh, rw, oc % mr, ri].astype(acc_t), axis=[rc, rh, rw, ri])

    # pixels flat (the schedule splits them into vectors of lanes): the epilogue reads a row
    # of output pixels as one contiguous run, which LLVM vectorizes
    acc = te.compute((p.n, p.groups, p.ogp, p.vecs * L), conv, name=f"{isa.prefix}_conv",
                     attrs={ANN: "conv", "qcc_x86_mr": mr, "qcc_x86_nr": nr, "qcc_x86_isa": isa.name,
                            "qcc_x86_wq": wq})
    oh_n, ow_n = p.out_hw
    og = p.og

    def out(n, o, oh, ow):
        if p.groups == 1:  # channel o is acc's channel o: a per-channel-block schedule can see it
            return acc[n, 0, o, oh * wq + ow] + bias[o]
        return acc[n, o // og, o % og, oh * wq + ow] + bias[o]

    return te.compute((p.n, p.o, oh_n, ow_n), out, name=f"{isa.prefix}_out")


# --- qmatmul -------------------------------------------------------------------------------

def _unflatten(flat, dims):
    """The index tuple over `dims` (row-major) of a flat index."""
    idx = []
    for d in reversed(dims):
        idx.append(flat % d)
        flat = flat // d
    return tuple(reversed(idx))


def _flatten(idx, dims):
    """The flat (row-major) index of an index tuple over `dims`."""
    flat = 0
    for i, d in zip(idx, dims):
        flat = flat * d + i
    return flat


@dataclass(frozen=True)
class MatmulPlan:
    batch: Tuple[int, ...]  # leading dims of a (rows = prod(batch) * m)
    m: int
    k: int
    n: int
    a_signed: bool
    za: int  # uint8 domain (int16 for 16-bit activations)
    vector: bool  # a is 1-D
    isa: Isa = VNNI
    chosen_tile: Tuple[int, int] = (0, 0)  # measured (tile_choices); (0, 0): the cost model's

    @property
    def rows(self):
        return int(np.prod(self.batch, dtype=np.int64)) * self.m

    @property
    def tile_space(self) -> List[Tuple[int, int]]:
        """The tiles -O3 measures for this matmul (tile_candidates)."""
        return tile_candidates(self.isa, self.rows, -(-self.n // self.isa.lanes), max_rows=8)

    @property
    def kb(self):
        return -(-self.k // self.isa.group)

    @property
    def tile(self):
        if self.chosen_tile[0]:
            return self.chosen_tile
        return _pick_tile(self.isa, self.rows, -(-self.n // self.isa.lanes), max_rows=8)

    @property
    def rows_p(self):
        mr, _ = self.tile
        return -(-self.rows // mr) * mr

    @property
    def cols_p(self):
        _, nr = self.tile
        L = self.isa.lanes
        return -(-self.n // (L * nr)) * L * nr


def matmul_plan(a_shape, a_dtype: str, b_shape, za: int, isa: Isa = VNNI) -> Optional[MatmulPlan]:
    """The plan for a qmatmul by a constant 2-D matrix the kernel handles, else None. 16-bit
    activations (w8a16 layers) take the int16 instruction sets (VNNI16, AVX2) as they are,
    their zero point folded into the bias like 8-bit ones' (as conv_plan does)."""
    if a_dtype not in _ACTIVATIONS.get(isa.name, ()) or len(b_shape) != 2 or len(a_shape) < 1:
        return None
    k, n = int(b_shape[0]), int(b_shape[1])
    if int(a_shape[-1]) != k:
        return None
    if a_dtype == "int16":
        if not -(1 << 15) <= int(za) < (1 << 15):
            return None
    else:
        za = int(za) + (128 if a_dtype == "int8" else 0)
        if not 0 <= za <= 255 or 255 * 128 * k >= (1 << 31):
            return None
    vector = len(a_shape) == 1
    batch = tuple(int(d) for d in a_shape[:-2])
    m = 1 if vector else int(a_shape[-2])
    return _measured(MatmulPlan(batch, m, k, n, a_dtype == "int8", za, vector, isa))


def float_matmul_plan(a_shape, b_shape, isa: Isa) -> Optional[MatmulPlan]:
    """The plan for a float32 a @ b (b constant, 2-D) through the same kernel (float `isa`)."""
    if len(b_shape) != 2 or len(a_shape) < 1 or int(a_shape[-1]) != int(b_shape[0]):
        return None
    batch = tuple(int(d) for d in a_shape[:-2])
    m = 1 if len(a_shape) == 1 else int(a_shape[-2])
    return MatmulPlan(batch, m, int(b_shape[0]), int(b_shape[1]), False, 0, len(a_shape) == 1, isa)


def pack_float_matmul_weights(p: MatmulPlan, b: np.ndarray) -> np.ndarray:
    """b [k, n] -> [cols_p/lanes, k, lanes, 1] in its dtype (float32, or -O1's int8), zero-padded."""
    L = p.isa.lanes
    full = np.zeros((p.k, p.cols_p), b.dtype)
    full[:, :p.n] = b
    return np.ascontiguousarray(full.reshape(p.k, p.cols_p // L, L, 1).transpose(1, 0, 2, 3))


def pack_matmul_weights(p: MatmulPlan, b: np.ndarray, bias: Optional[np.ndarray]):
    """(packed [cols_p/lanes, kb, lanes, group] (isa.wt), bias' [n] int32) or None."""
    L, G = p.isa.lanes, p.isa.group
    bi = b.astype(np.int64)
    if bi.min() < -128 or bi.max() > 127:
        return None
    full = np.zeros((p.kb * G, p.cols_p), np.int64)
    full[:p.k, :p.n] = bi
    packed = full.reshape(p.kb, G, p.cols_p // L, L).transpose(2, 0, 3, 1)
    bb = np.zeros(p.n, np.int64) if bias is None else np.broadcast_to(bias.astype(np.int64), (p.n,))
    folded = bb - p.za * bi.sum(axis=0)
    if folded.min() < _I32[0] or folded.max() > _I32[1]:
        return None
    return np.ascontiguousarray(packed).astype(p.isa.wt), folded.astype(np.int32)


def matmul_te(p: MatmulPlan, a, bpk, bias):
    from tvm import te, tirx

    mr, nr = p.tile
    nb = len(p.batch)
    isa = p.isa
    L, G = isa.lanes, isa.group

    def a_at(r, kk):
        return a[kk] if p.vector else a[_unflatten(r // p.m, p.batch) + (r % p.m, kk)]

    def pack(r, kk):
        inside = tirx.all(r < p.rows, kk < p.k)
        v = a_at(r, kk)
        if p.a_signed:
            v = v.astype("int32") + 128
        return tirx.if_then_else(inside, v.astype(isa.act), tirx.const(0, isa.act))

    ap = te.compute((p.rows_p, p.kb * G), pack, name=f"{isa.prefix}_mm_pack")
    bpk = weights_as_float(bpk) if isa.is_float else bpk
    acc_t = "float32" if isa.is_float else "int32"
    rk = te.reduce_axis((0, p.kb), "rk")
    ri = te.reduce_axis((0, G), "ri")
    acc = te.compute((p.rows_p, p.cols_p),
                     lambda r, j: te.sum(ap[r, rk * G + ri].astype(acc_t)
                                         * bpk[j // L, rk, j % L, ri].astype(acc_t), axis=[rk, ri]),
                     name=f"{isa.prefix}_mm", attrs={ANN: "matmul", "qcc_x86_mr": mr, "qcc_x86_nr": nr,
                                                     "qcc_x86_isa": isa.name})
    if p.vector:
        return te.compute((p.n,), lambda j: acc[0, j] + bias[j], name=f"{isa.prefix}_mm_out")
    shape = p.batch + (p.m, p.n)

    def out(*idx):
        j = idx[nb + 1]
        return acc[_flatten(idx[:nb], p.batch) * p.m + idx[nb], j] + bias[j]

    return te.compute(shape, out, name=f"{isa.prefix}_mm_out")


@dataclass(frozen=True)
class BatchMatmulPlan(MatmulPlan):
    """a [*batch, m, k] @ b [*batch, k, n], both computed at run time (attention's Q.K^T and
    attn.V), float32 through the float `isa`: MatmulPlan's tile and padding over one batch's
    m rows (b differs per batch, so the batches cannot share the rows)."""

    @property
    def rows(self):
        return self.m

    @property
    def nbatch(self):
        return int(np.prod(self.batch, dtype=np.int64))


def batch_matmul_plan(a_shape, b_shape, isa: Isa) -> Optional[BatchMatmulPlan]:
    if len(a_shape) < 2 or len(a_shape) != len(b_shape) or tuple(a_shape[:-2]) != tuple(b_shape[:-2]) \
            or int(a_shape[-1]) != int(b_shape[-2]):
        return None
    return BatchMatmulPlan(tuple(int(d) for d in a_shape[:-2]), int(a_shape[-2]), int(a_shape[-1]),
                           int(b_shape[-1]), False, 0, False, isa)


def batch_matmul_te(p: BatchMatmulPlan, a, b):
    """Two pack stages (a's rows padded to the tile; b to [batch, cols/lanes, k, lanes], so a
    vector of b is contiguous), the product tiled like matmul_te's, and the unpadded output."""
    from tvm import te, tirx

    mr, nr = p.tile
    L = p.isa.lanes
    nb = len(p.batch)

    def split(bb):
        return _unflatten(bb, p.batch)

    ap = te.compute((p.nbatch, p.rows_p, p.k),
                    lambda bb, r, kk: tirx.if_then_else(r < p.m, a[split(bb) + (r, kk)], tirx.const(0.0, "float32")),
                    name=f"{p.isa.prefix}_bmm_pack_a")
    bp = te.compute((p.nbatch, p.cols_p // L, p.k, L),
                    lambda bb, jo, kk, lane: tirx.if_then_else(jo * L + lane < p.n, b[split(bb) + (kk, jo * L + lane)],
                                                               tirx.const(0.0, "float32")),
                    name=f"{p.isa.prefix}_bmm_pack_b")
    rk = te.reduce_axis((0, p.k), "rk")
    ri = te.reduce_axis((0, 1), "ri")
    acc = te.compute((p.nbatch, p.rows_p, p.cols_p),
                     lambda bb, r, j: te.sum(ap[bb, r, rk + ri] * bp[bb, j // L, rk, j % L], axis=[rk, ri]),
                     name=f"{p.isa.prefix}_bmm", attrs={ANN: "matmul", "qcc_x86_mr": mr, "qcc_x86_nr": nr,
                                                        "qcc_x86_isa": p.isa.name})

    def out(*idx):
        return acc[_flatten(idx[:nb], p.batch), idx[nb], idx[nb + 1]]

    return te.compute(p.batch + (p.m, p.n), out, name=f"{p.isa.prefix}_bmm_out")


# --- schedule --------------------------------------------------------------------------------

def _block_kind(sch, block) -> Optional[str]:
    ann = sch.get(block).annotations
    return str(ann[ANN]) if ANN in ann else None


def _extent(sch, loops) -> int:
    return int(np.prod([int(sch.get(lp).extent) for lp in loops], dtype=np.int64))


def _parallel_outer(sch, block) -> None:
    """Fuse the leading spatial loops of a block (all but the innermost, which LLVM
    vectorizes) and make them parallel, when the block is big enough to pay for a
    parallel launch."""
    loops = sch.get_loops(block)
    if not loops or _extent(sch, loops) < _PAR_ELEMS:
        return
    ivs = sch.get(block).iter_vars
    spatial = 0
    for iv in ivs:
        if int(iv.iter_type) != 0:
            break
        spatial += 1
    if len(loops) != len(ivs):  # not a plain loop nest: the first loop only
        spatial = 1
    outer = loops[:max(1, spatial - 1)]
    sch.parallel(sch.fuse(*outer) if len(outer) > 1 else outer[0])


def _schedule_pack(sch, block, parallel: bool = True) -> None:
    """Rows in parallel; along a row, the four interleaved channels unrolled, and the columns
    inside the image a loop of their own, without the padding test (x86_depthwise's
    _partition_pack_columns): with the test in it LLVM copied one byte at a time (YOLOX's
    3x3 96->96 convs at 52x52: 30 us faster each, 2 threads). A stride-s conv's s column
    phases run inside that loop, unrolled, so that it reads each input row in order: one
    phase per loop, LLVM made the stride-s loads byte-by-byte gathers (PP-LCNet's stem
    69 -> 78 us); with them inside it shuffles whole vectors (PP-OCR det's stem 250 -> 178
    us, YOLOX's stride-2 convs 23-97 us faster each)."""
    from .x86_depthwise import _partition_pack_columns

    ann = sch.get(block).annotations
    wq, sw = int(ann["qcc_x86_wq"]), int(ann.get("qcc_x86_stride_w", 1))
    n, g, cb, ph, f, ci = sch.get_loops(block)
    r, col = sch.split(f, [None, wq])
    if sw > 1:  # ph = row phase * sw + column phase
        ph, pw = sch.split(ph, [None, sw])
        sch.reorder(r, col, pw)
        sch.unroll(pw)
    rows = sch.fuse(n, g, cb, ph, r)
    if parallel and _extent(sch, [rows]) * wq * 4 >= _PAR_BYTES:
        sch.parallel(rows)
    sch.unroll(ci)
    _partition_pack_columns(sch, block, col)


def _conv_tile_loops(sch, block):
    """The conv's loops split into register tiles (mr channels x nr vectors of lanes pixels)
    and ordered channel blocks, pixel tiles, reduction, tile: returns (intrinsic or None,
    channel-block loops (n, g, oc/mr), pixel-tile loop, rc, and the tile's rows, vectors
    and lanes)."""
    ann = sch.get(block).annotations
    mr, nr = int(ann["qcc_x86_mr"]), int(ann["qcc_x86_nr"])
    isa = ISAS[str(ann["qcc_x86_isa"])]
    n, g, oc, f, rc, rh, rw, ri = sch.get_loops(block)
    v, lane = sch.split(f, [None, isa.lanes])
    oco, oci = sch.split(oc, [None, mr])
    vo, vi = sch.split(v, [None, nr])
    if isa.is_float:  # ri has extent 1: the lanes innermost, to vectorize
        sch.reorder(n, g, oco, vo, rc, rh, rw, ri, oci, vi, lane)
    else:
        sch.reorder(n, g, oco, vo, rc, rh, rw, oci, vi, lane, ri)
    return None if isa.is_float else isa.conv_intrin, (n, g, oco), vo, rc, oci, vi, lane


def _conv_on_threads(sch, conv) -> bool:
    """Whether a conv (its loops as lowered, before tiling) is big enough to pay for a
    parallel launch; its pack runs on several threads only then (_schedule_kernels)."""
    return _extent(sch, sch.get_loops(conv)) >= _PAR_MACS


def _schedule_conv(sch, block) -> None:
    parallel = _conv_on_threads(sch, block)
    intrin, blocks, vo, rc, oci, vi, lane = _conv_tile_loops(sch, block)
    tile = sch.fuse(*blocks, vo)
    if parallel:
        sch.parallel(tile)
    _register_tile(sch, block, tile, rc, oci, vi, lane, intrin)


def _schedule_matmul(sch, block) -> None:
    ann = sch.get(block).annotations
    mr, nr = int(ann["qcc_x86_mr"]), int(ann["qcc_x86_nr"])
    isa = ISAS[str(ann["qcc_x86_isa"])]
    *batch, r, jf, rk, ri = sch.get_loops(block)  # batch: batch_matmul_te's leading loop
    j, lane = sch.split(jf, [None, isa.lanes])
    ro, rI = sch.split(r, [None, mr])
    jo, ji = sch.split(j, [None, nr])
    if isa.is_float:  # ri has extent 1: the lanes innermost, to vectorize
        sch.reorder(*batch, ro, jo, rk, ri, rI, ji, lane)
    else:
        sch.reorder(*batch, ro, jo, rk, rI, ji, lane, ri)
    tile = sch.fuse(*batch, ro, jo)
    if _extent(sch, sch.get_loops(block)) >= _PAR_MACS:
        sch.parallel(tile)
    _register_tile(sch, block, tile, rk, rI, ji, lane, None if isa.is_float else isa.mm_intrin)


def _register_tile(sch, block, tile, k_outer, rows, vecs, lane, intrin) -> None:
    """Accumulate the tile in a small buffer (registers), tensorize the lanes x group step.

    The buffer's scope is "global", not "local": TVM 0.27's LowerTVMBuiltin turns every
    "local" allocation, and a global one of 1 kB or more, into a TVMBackendAllocWorkspace/
    Free pair, here once per tile (measured: 1x1 32->48 conv at 96x144, a third of its
    time in the workspace pool); cpu_tir_passes.py keeps the global ones on the stack
    whatever their size. On a CPU both scopes are plain memory."""
    wb = sch.cache_write(block, 0, "global")
    sch.reverse_compute_at(wb, tile)
    wl = sch.get_loops(wb)
    sch.vectorize(wl[-1])
    if intrin is None:  # plain multiply-adds: vectorized (before decompose: it wants the init)
        sch.vectorize(lane)
        sch.unroll(vecs)
        sch.unroll(rows)
    init = sch.decompose_reduction(block, k_outer)
    il = sch.get_loops(init)
    sch.vectorize(il[-1])
    sch.unroll(il[-2])
    sch.unroll(il[-3])
    if intrin is not None:
        sch.tensorize(lane, intrin)
        sch.unroll(vecs)
        sch.unroll(rows)


def _schedule_kernels(func, target) -> Optional[object]:
    from tvm import s_tir

    sch = s_tir.Schedule(func)
    try:
        root = sch.get_sblock("root")
    except Exception:  # noqa: BLE001 - not a block function
        return None
    blocks = sch.get_child_blocks(root)
    kinds = [_block_kind(sch, b) for b in blocks]
    if not any(kinds):
        return None
    for isa in ISAS.values():
        register_intrinsics(isa)
    # a pack runs on several threads only when its conv does: packed by two cores and read by
    # one, half of it crosses between the cores' caches on every call
    conv_parallel = any(kind == "conv" and _conv_on_threads(sch, b) for b, kind in zip(blocks, kinds))
    try:
        for b, kind in zip(blocks, kinds):
            if kind == "pack":
                _schedule_pack(sch, b, conv_parallel)
            elif kind == "matmul":
                _schedule_matmul(sch, b)
    except Exception as e:  # noqa: BLE001 - a kernel this rule cannot schedule: leave it to the others
        warnings.warn(f"qcc x86: int8 kernel schedule failed, the generic CPU rules take the kernel: {type(e).__name__}: "
                      f"{str(e).splitlines()[-1] if str(e) else ''}")
        return None
    # an elementwise stage between the kernel and the function's output (a sigmoid's
    # negated input: topi's fast_exp takes a tensor) would be a whole intermediate buffer
    # written and read again; inlined, the epilogue is one pass over the accumulators
    # (efficientnet's 1x1 16->96 conv at 112x112 with SiLU: two 4.8 MB float passes before)
    # (epilogue stages only: a prologue inlined into a kernel that reads each input many
    # times would be recomputed as often)
    last_kernel = max(i for i, k in enumerate(kinds) if k)
    kept = []
    for i, (b, kind) in enumerate(zip(blocks, kinds)):
        if kind is None and last_kernel < i < len(blocks) - 1 and not _is_reduction(sch.get(b)):
            try:
                sch.compute_inline(b)
                continue
            except Exception:  # noqa: BLE001 - not inlinable (several consumers, a reduction): kept
                pass
        kept.append((b, kind))
    if any(kind == "wgemm" for _, kind in kept):  # x86_winograd's kernel
        from . import x86_winograd

        try:
            x86_winograd.schedule(sch, kept)
        except Exception as e:  # noqa: BLE001 - as below
            warnings.warn(f"qcc x86: Winograd kernel schedule failed, the generic CPU rules take the kernel: "
                          f"{type(e).__name__}: {str(e).splitlines()[-1] if str(e) else ''}")
            return None
        fused_tail = None  # its epilogue: scheduled below, as any other
    else:
        try:
            sch, fused_tail = _schedule_depthwise(sch, kept, target)
            for i, (b, kind) in enumerate(kept):
                if kind == "conv":
                    sch, tail = _schedule_dense_conv(sch, b, _tail_of(kept, i), target)
                    if tail is not None:
                        fused_tail = tail
        except Exception as e:  # noqa: BLE001 - as above
            warnings.warn(f"qcc x86: conv kernel schedule failed, the generic CPU rules take the kernel: "
                          f"{type(e).__name__}: {str(e).splitlines()[-1] if str(e) else ''}")
            return None
    for b, kind in kept:
        if kind is None and b is not fused_tail:  # prologue/epilogue stages FuseOps added
            try:
                if _is_reduction(sch.get(b)):
                    _parallel_outer(sch, b)
                else:  # outer loops parallel, and a fenced product (exact_fp.py) vectorized
                    schedule_injective(sch, b, target, min_work=_PAR_ELEMS)
            except Exception:  # noqa: BLE001 - stays serial, still correct
                pass
    return sch


def _tail_of(kept, i):
    """The function's last stage when it directly follows kernel stage i (its epilogue)."""
    return kept[-1][0] if kept[-1][1] is None and i == len(kept) - 2 else None


def _schedule_dense_conv(sch, conv, tail, target):
    """The conv per block of output channels with its epilogue (see _schedule_conv_blocks)
    where that applies (tried on a copy), else tiled over the whole output. Returns
    (schedule, the epilogue block it scheduled or None)."""
    if tail is not None:
        trial = sch.copy()
        try:
            if _schedule_conv_blocks(trial, conv, tail, target):
                return trial, tail
        except Exception:  # noqa: BLE001 - a shape this schedule does not take: the plain one
            pass
    _schedule_conv(sch, conv)
    return sch, None


# a channel block's accumulators (mr channels x the whole flattened image) must stay in
# the core's cache between the conv writing them and the epilogue reading them
_BLOCK_ACC_BYTES = 1 << 16
# ... or, for a larger image, the accumulators of mr channels x a band of output rows (read
# back from L2: a 1x1 16->32 conv at 192x288 spent most of its time writing its 7 MB of
# int32 sums to memory and reading them back in a second pass), on the parallel task's
# stack (cpu_tir_passes: larger, and each band would pay a workspace allocation)
_BAND_ACC_BYTES = STACK_LIMIT


def _band_rows(mr: int, tile_px: int, oh: int, wq: int, flat: int) -> Optional[int]:
    """Output rows per block of the per-block schedule: all of them when mr channels' sums
    fit _BLOCK_ACC_BYTES; else the most rows that fit _BAND_ACC_BYTES, divide oh and make
    a whole number of the conv's tiles (tile_px pixels); None when no band does."""
    if mr * flat * 4 <= _BLOCK_ACC_BYTES:
        return oh
    if flat != oh * wq:  # the flattened rows do not end on a tile
        return None
    step = tile_px // math.gcd(wq, tile_px)
    fits = [r for r in range(step, oh, step) if oh % r == 0 and mr * r * wq * 4 <= _BAND_ACC_BYTES]
    return max(fits) if fits else None


def _schedule_conv_blocks(sch, conv, tail, target) -> bool:
    """One parallel loop over blocks of mr output channels (times bands of output rows, for
    a large image), each running the conv's tiles for those channels and rows and then
    their epilogue, instead of the conv over the whole output and then the epilogue over
    the whole output: the accumulators are read back from L1/L2, and the kernel makes one
    parallel launch, not two (on a mobile net's 10x10 and 5x5 maps the launches, and an
    epilogue too small to be worth its own, were much of the time). For one group, batch
    1, an epilogue reading channel o of the sums for output channel o, and whole tiles of
    mr channels (see _band_rows for the rows); returns False otherwise."""
    from .cpu_rules import epilogue_run, vectorize_fenced_row
    from .x86_depthwise import _reads_channel_by_channel

    ann = sch.get(conv).annotations
    mr, nr, wq = (int(ann[k]) for k in ("qcc_x86_mr", "qcc_x86_nr", "qcc_x86_wq"))
    isa = ISAS[str(ann["qcc_x86_isa"])]
    acc = sch.get(conv).writes[0].source
    batch, groups, _, flat = (int(v) for v in acc.shape)
    if batch != 1 or groups != 1:
        return False
    if not _reads_channel_by_channel(sch.get(tail), acc, None, axis=2):
        return False
    _, n_out, oh, ow = (int(v) for v in sch.get(tail).writes[0].source.shape)
    rows = _band_rows(mr, nr * isa.lanes, oh, wq, flat)
    if rows is None or -(-n_out // mr) * (oh // rows) < 2:  # one block: nothing to interleave
        return False
    parallel = _conv_on_threads(sch, conv)
    intrin, blocks, vo, rc, oci, vi, lane = _conv_tile_loops(sch, conv)
    tn, to, th, tw = sch.get_loops(tail)
    tob, toi = sch.split(to, [None, mr])
    if rows < oh:
        band, vo = sch.split(vo, [oh // rows, None])
        tband, th = sch.split(th, [oh // rows, rows])
        sch.reorder(tband, toi)
        blocks, tail_blocks = sch.fuse(*blocks, band), sch.fuse(tn, tob, tband)
    else:
        blocks, tail_blocks = sch.fuse(*blocks), sch.fuse(tn, tob)
    if _extent(sch, [blocks]) != _extent(sch, [tail_blocks]):  # the padded channels' tiles
        return False
    merged = sch.merge(blocks, tail_blocks)
    if parallel:
        sch.parallel(merged)
    vectorize_fenced_row(sch, tail, epilogue_run(sch, th, tw, wq, ow, isa.lanes), target)
    _register_tile(sch, conv, vo, rc, oci, vi, lane, intrin)
    return True


def _schedule_depthwise(sch, kept, target):
    """The depthwise kernel's stages (x86_depthwise.py), if the function has one: fused per
    channel block with the function's last stage as its epilogue where that applies (tried
    on a copy of the schedule), else each stage on its own. Returns (schedule, the epilogue
    block it scheduled or None)."""
    pack = next((b for b, k in kept if k == "dwpack"), None)
    conv = next((b for b, k in kept if k == "dwconv"), None)
    if conv is None:
        return sch, None
    tail = next((_tail_of(kept, i) for i, (b, _) in enumerate(kept) if b is conv), None)
    if pack is not None:
        trial = sch.copy()
        try:
            if schedule_dw_fused(trial, pack, conv, tail, target):
                return trial, tail
        except Exception:  # noqa: BLE001 - a shape this schedule does not take: the plain one
            pass
    schedule_dw_conv(sch, conv)
    if pack is not None:
        schedule_dw_pack(sch, pack)
    return sch, None


def int8_rule(isa: Isa):
    """The dlight rule: schedules every fused function holding one of these kernels."""
    from tvm.s_tir import dlight

    class X86Int8Rule(dlight.ScheduleRule):
        def apply(self, func, target, tunable):
            import tvm

            if not isinstance(func, tvm.tirx.PrimFunc):
                return None
            return _schedule_kernels(func, target)

    X86Int8Rule.__name__ = X86Int8Rule.__qualname__ = {"vnni": "VNNIRule", "avx2": "AVX2Rule"}[isa.name]
    return X86Int8Rule()


# --- the strategy ----------------------------------------------------------------------------

def isa_for(preset) -> Optional[Isa]:
    """The best int8 instruction set of a preset, or None (generic lowering)."""
    caps = getattr(preset, "capabilities", frozenset())
    if "vnni" in caps and "avx512" in caps:
        return VNNI
    if "avx2" in caps:
        return AVX2
    return None


class X86Strategy(FusedCPUStrategy):
    """FusedCPUStrategy plus int8 qconv/qmatmul kernels on presets with AVX2 or AVX-512 VNNI."""

    name = "x86"

    def __init__(self, preset=None):
        super().__init__(preset)
        self.isa = isa_for(preset)
        if self.isa is not None:
            isa = self.isa
            self.overrides["qconv"] = lambda cx, node, ins, attrs: lower_qconv_x86(isa, cx, node, ins, attrs)
            self.overrides["qmatmul"] = lambda cx, node, ins, attrs: lower_qmatmul_x86(isa, cx, node, ins, attrs)

    def conv_kernel(self, cx, node, x, w, attrs, out_dtype):
        """Float32 2-D convs with constant weights through the int8 kernels' layout and
        schedule (float `Isa`), depthwise-like ones through x86_depthwise's."""
        if self.isa is None:
            return None
        isa = F32X16 if self.isa is VNNI else F32X8
        return conv_kernel_2d(cx, x, w, attrs, lambda x, w, a: lower_float_conv_x86(isa, cx, x, w, a, out_dtype))

    def matmul_kernel(self, cx, a, b, out_dtype):
        """Float32 matmuls by a constant matrix through the int8 kernel's layout and schedule
        (float `Isa`): TVM's own float matmul schedule ran convnext's MLPs at 26 GMAC/s."""
        if self.isa is None:
            return None
        isa = F32X16 if self.isa is VNNI else F32X8
        if cx.const_value(b) is None:
            return lower_float_batch_matmul_x86(isa, cx, a, b, out_dtype)
        return lower_float_matmul_x86(isa, cx, a, b, out_dtype)

    def schedule_rules(self, target) -> list:
        mine = [int8_rule(self.isa)] if self.isa is not None else []
        return mine + list(super().schedule_rules(target))


def _generic(op: str):
    from . import lower_quant

    return {"qconv": lower_quant.lower_qconv, "qmatmul": lower_quant.lower_qmatmul}[op]


def lower_qconv_x86(isa: Isa, cx, node, ins, attrs):
    """qconv through the `isa` kernel when it applies (a 1-D one as a one-row 2-D conv), a
    depthwise-like one through x86_depthwise.py's (VNNI taps, or exact float32 on AVX2),
    else the generic lowering."""
    x, w, b = (list(ins) + [None])[:3]
    y = conv_kernel_2d(cx, x, w, attrs, lambda x, w, a: _qconv_kernel(isa, cx, x, w, a, b))
    return _generic("qconv")(cx, node, ins, attrs) if y is None else y


def _qconv_kernel(isa: Isa, cx, x, w, attrs, b):
    """The qconv of 4-D x by constant int8 w through one of the kernels, or None."""
    wv = cx.const_value(w)
    bv = cx.const_value(b) if b is not None else None
    if wv is None or (b is not None and bv is None) or cx.dtype_of(w) != "int8" \
            or attrs.get("acc") == "i64":  # the kernels accumulate in int32
        return None
    from . import x86_winograd  # it builds on this module

    wino = x86_winograd.wino_plan(cx.shape_of(x), cx.dtype_of(x), wv.shape, attrs, isa)
    packed = x86_winograd.pack_wino_weights(wino, wv, bv) if wino is not None else None
    if packed is not None:
        wpk, folded = packed
        return cx.emit_te(lambda xt, wt, bt: x86_winograd.wino_te(wino, xt, wt, bt), x, cx.const(wpk, "int16"),
                          cx.const(folded, "int32"), primfunc_name_hint="qcc_avx2_wino")
    a16 = cx.dtype_of(x) == "int16"
    plan = conv_plan(cx.shape_of(x), cx.dtype_of(x), wv.shape, attrs, VNNI16 if a16 and isa is VNNI else isa)
    packed = pack_conv_weights(plan, wv, bv) if plan is not None else None
    if packed is not None:
        wpk, folded = packed
        return cx.emit_te(lambda xt, wt, bt: conv_te(plan, xt, wt, bt), x, cx.const(wpk, plan.isa.wt),
                          cx.const(folded, "int32"), primfunc_name_hint=f"{plan.isa.prefix}_conv")
    if a16:
        return _int16_depthwise(isa, cx, x, wv, bv, attrs)
    packed = _dw_packed(isa, cx.shape_of(x), cx.dtype_of(x), wv, bv, attrs)
    return None if packed is None else _emit_dw(isa, cx, x, packed)


def _dw_packed(isa: Isa, x_shape, x_dtype: str, wv, bv, attrs):
    """(plan, weights, bias) of x86_depthwise.py's kernel for the qconv, or None."""
    dw = dw_plan(x_shape, x_dtype, wv.shape, attrs, 16 if isa is VNNI else 8, vnni=isa is VNNI)
    return pack_dw(dw, wv, bv, vnni=isa is VNNI) if dw is not None else None


def _emit_dw(isa: Isa, cx, x, packed):
    dw, wd, bias = packed
    return cx.emit_te(lambda xt, wt, bt: dw_te(dw, xt, wt, bt), x, cx.const(wd, str(wd.dtype)),
                      cx.const(bias, "int32"), primfunc_name_hint=f"{isa.prefix}_dwconv")


def _int16_depthwise(isa: Isa, cx, x, wv, bv, attrs):
    """A depthwise-like qconv of int16 activations (a w8a16 layer of the bit-width search)
    as two uint8 ones through the depthwise kernel, or None. With u = x + 32768 = 256*hi + lo
    in bytes, and the zero point split alike (zx + 32768 = 256*zh + zl):

        sum((x - zx) * w) + b == 256 * sum((hi - zh) * w) + (sum((lo - zl) * w) + b)

    and padding, written as zh and zl, adds nothing to either sum. Each byte's sum is exact
    (|.| <= 255 * 128 * taps), and 256 times the high one stays inside int32 for up to 256
    taps per output, so the result is the reference's int32 accumulator bit for bit. The
    generic lowering ran PP-OCR det's two a16 5x5 depthwise convs at 9 GMAC/s (0.44 and
    0.31 ms of its 10.9)."""
    from tvm import te

    zu = int(attrs.get("x_zero_point", 0)) + 32768
    if not 0 <= zu < 1 << 16 or int(np.prod(wv.shape[1:])) > 256:
        return None
    shape = cx.shape_of(x)
    hi = _dw_packed(isa, shape, "uint8", wv, None, dict(attrs, x_zero_point=zu >> 8))
    lo = _dw_packed(isa, shape, "uint8", wv, bv, dict(attrs, x_zero_point=zu & 255))
    if hi is None or lo is None:
        return None

    def byte(shift):
        def split(xt):
            return te.compute(xt.shape, lambda *i: (((xt(*i).astype("int32") + 32768) >> shift) & 255)
                              .astype("uint8"), name="int16_byte")
        return cx.emit_te(split, x, primfunc_name_hint="int16_byte")

    y_hi, y_lo = _emit_dw(isa, cx, byte(8), hi), _emit_dw(isa, cx, byte(0), lo)
    return cx.emit_te(lambda h, l: te.compute(h.shape, lambda *i: h(*i) * 256 + l(*i), name="int16_sum"),
                      y_hi, y_lo, primfunc_name_hint="int16_sum")


def lower_float_conv_x86(isa: Isa, cx, x, w, attrs, out_dtype):
    """The float kernel's conv of x by constant w (no bias), or None (generic conv). Weights
    are float32, or int8 (-O1's weight-only layers: stored int8, converted in the kernel)."""
    wv = cx.const_value(w)
    if wv is None or wv.ndim != 4 or cx.dtype_of(x) != "float32" or cx.dtype_of(w) not in ("float32", "int8") \
            or out_dtype not in (None, "float32"):
        return None
    plan = float_conv_plan(cx.shape_of(x), wv.shape, attrs, isa)
    if plan is None:
        return None
    wt = cx.dtype_of(w)  # int8 weights become float32 in the kernel's first stage
    zero = cx.const(np.zeros(plan.o, np.float32), "float32")
    if plan.cg <= MAX_GROUP_CHANNELS and plan.groups > 1:
        dw = dw_plan(cx.shape_of(x), "float32", wv.shape, attrs, isa.lanes)
        return cx.emit_te(lambda xt, wt_, bt: dw_te(dw, xt, wt_, bt), x, cx.const(wv, wt),
                          zero, primfunc_name_hint=f"{isa.prefix}_dwconv")
    return cx.emit_te(lambda xt, wt_, bt: conv_te(plan, xt, wt_, bt), x,
                      cx.const(pack_float_conv_weights(plan, wv), wt), zero,
                      primfunc_name_hint=f"{isa.prefix}_conv")


def lower_float_matmul_x86(isa: Isa, cx, a, b, out_dtype):
    """The float kernel's a @ b for a constant 2-D b (float32, or -O1's int8, converted in the
    kernel's first stage), or None (R.matmul)."""
    bv = cx.const_value(b)
    if bv is None or cx.dtype_of(a) != "float32" or cx.dtype_of(b) not in ("float32", "int8") \
            or out_dtype not in (None, "float32"):
        return None
    plan = float_matmul_plan(cx.shape_of(a), bv.shape, isa)
    if plan is None:
        return None
    zero = cx.const(np.zeros(plan.n, np.float32), "float32")
    return cx.emit_te(lambda at, bt, ct: matmul_te(plan, at, bt, ct), a,
                      cx.const(pack_float_matmul_weights(plan, bv), cx.dtype_of(b)), zero,
                      primfunc_name_hint=f"{isa.prefix}_matmul")


def lower_float_batch_matmul_x86(isa: Isa, cx, a, b, out_dtype):
    """The float kernel's a @ b for two run-time float32 operands with the same batch dims,
    or None (R.matmul): TVM's own schedule ran attention's Q.K^T at ~18 GMAC/s."""
    if cx.dtype_of(a) != "float32" or cx.dtype_of(b) != "float32" or out_dtype not in (None, "float32"):
        return None
    plan = batch_matmul_plan(cx.shape_of(a), cx.shape_of(b), isa)
    if plan is None:
        return None
    return cx.emit_te(lambda at, bt: batch_matmul_te(plan, at, bt), cx.emit(a), cx.emit(b),
                      primfunc_name_hint=f"{isa.prefix}_batch_matmul")


def lower_qmatmul_x86(isa: Isa, cx, node, ins, attrs):
    """qmatmul by a constant 2-D matrix through the `isa` kernel, else the generic lowering."""
    a, b, bias = (list(ins) + [None])[:3]
    bv = cx.const_value(b)
    biv = cx.const_value(bias) if bias is not None else None
    plan = None
    if bv is not None and (bias is None or (biv is not None and biv.ndim <= 1)) \
            and attrs.get("acc") != "i64":  # the kernel accumulates in int32
        a16 = cx.dtype_of(a) == "int16"
        plan = matmul_plan(cx.shape_of(a), cx.dtype_of(a), bv.shape, int(attrs.get("a_zero_point", 0)),
                           VNNI16 if a16 and isa is VNNI else isa)
    packed = None
    if plan is not None:
        centred = bv.astype(np.int64) - int(attrs.get("b_zero_point", 0))
        packed = pack_matmul_weights(plan, centred, biv)
    if packed is None:
        return _generic("qmatmul")(cx, node, ins, attrs)
    bpk, folded = packed
    return cx.emit_te(lambda at, bt, ct: matmul_te(plan, at, bt, ct), a, cx.const(bpk, plan.isa.wt),
                      cx.const(folded, "int32"), primfunc_name_hint=f"{plan.isa.prefix}_matmul")


register_strategy("x86", X86Strategy)
