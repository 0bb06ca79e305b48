"""CUDA int8 kernels: qconv and qmatmul as `__dp4a` reductions, search-free and bit-exact.

`CUDAInt8Strategy` (registered for the "cuda" family) replaces the lowering of `qconv`
(2-D, group 1, constant int8 weights) and `qmatmul` (constant 2-D int8 right operand)
with TE kernels whose reduction runs over groups of four int8 x int8 products, and
schedules the fused functions that contain them with its own dlight rule
(`dp4a_rule`), run right after FuseOps/FuseTIR and before TVM's default GPU rules (which
skip what it scheduled). Depthwise and other grouped
convolutions keep the generic lowering (dp4a sums over input channels; a depthwise
conv has one) and dlight's schedules.

Exactness. `__dp4a(a, b, c)` multiplies *signed* bytes by signed bytes, so uint8
activations are shifted to int8 (x - 128; zero point zx - 128) and the zero point moves
to a per-output-channel constant folded into the bias at compile time:

    sum((x - zx) * w) + b  ==  sum(x' * w) + (b - zx' * sum(w)),   x' = x - 128, zx' = zx - 128

Spatial padding is written explicitly with zx' (it then contributes (zx'-zx')*w = 0, as
the reference's padding does); channels padded up to a multiple of 4 meet zero weights.
Products are exact and the int32 sum wraps like any int32 sum, so the result equals the
reference's int32 accumulator bit for bit (the folded bias is wrapped to int32 too).

Kernel (one call_tir, three stages; FuseOps then appends the requantize epilogue):

1. pack: x[n, c, h, w] -> xp[n, c/4, hp, wp, 4] int8 (shifted, padded, 4 channels
   contiguous). The schedule inlines it into the shared-memory load of the conv.
2. conv: acc[n, o, oh, ow] = sum over (c/4, kh, kw, 4) of xp[...] * wp[o, c/4, kh, kw, 4],
   weights packed in numpy. The innermost 4 is tensorized with TVM's `dp4a_s8s8s32`
   (re-registered over an int64 lane loop, see DP4A_INTRIN) -> `__dp4a` in the CUDA source.
3. bias: y = acc + bias' (int32), NCHW, so the graph around it is unchanged.

Matmul: a[M, K] -> ap[M, K/4, 4] (shifted); b packed to [N, K/4, 4]; same schedule.

GPU schedule (`schedule_dp4a`): output channels over threadIdx.y (each thread `vo` of
them), output rows x columns over threadIdx.x (each thread `vc` columns; rows and columns
are tiled separately so a block's input tile is a fixed-size rectangle), accumulators in
registers, tiles over blockIdx.x; per step of `ci` channel groups (<= 16 channels) the
packed input and weight tiles are fetched cooperatively into shared memory (the pack
stage is inlined into that fetch); the epilogue FuseOps appended (requantize, activation,
a residual add) runs in the register write-back, or, when it broadcasts the conv's output
(squeeze-excite), as a second kernel. Tile factors divide their extents (no tail
predicates). A function the rule cannot schedule is left to dlight (plain int32 loops),
with a warning on the `qcc.targets.cuda_int8` logger.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from .conv_geometry import ConvGeometry, conv_geometry
from .strategy import CUDAStrategy, register_strategy

PREFIX = "qcc_dp4a"
CONV_BLOCK = f"{PREFIX}_conv"
MM_BLOCK = f"{PREFIX}_matmul"
PACK_BLOCK = f"{PREFIX}_pack"
# TVM's `dp4a_s8s8s32` (C[0] += sum(int32(A[0:4]) * int32(B[0:4])), A/B shared, C local), with an
# int64 lane loop: relax's emit_te gives every loop of our kernels int64 iterators
DP4A_INTRIN = "qcc_dp4a_s8s8s32_i64"

_log = logging.getLogger(__name__)
_SHARED_BYTES = 48 * 1024  # static shared memory of one thread block


def _wrap_i32(v: np.ndarray) -> np.ndarray:
    """int64 -> int32 modulo 2^32 (the kernel's sums wrap the same way)."""
    return ((np.asarray(v, np.int64) + (1 << 31)) % (1 << 32) - (1 << 31)).astype(np.int32)


def _shift_of(dtype: str, zp: int) -> Optional[Tuple[int, int]]:
    """(shift, zp'): x' = x - shift is int8 and zp' = zp - shift fits int8; None if not."""
    shift = {"uint8": 128, "int8": 0}.get(dtype)
    if shift is None or not -128 <= zp - shift <= 127:
        return None
    return shift, zp - shift


# --- qconv ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ConvPlan(ConvGeometry):
    shift: int = 0  # x' = x - shift (128 for uint8)
    zx: int = 0     # zero point of x'

    @property
    def c4(self) -> int:
        return -(-self.c // 4)

    @property
    def padded_hw(self) -> Tuple[int, int]:
        """Rows and columns of the padded input the output reads (no more)."""
        oh, ow = self.out_hw
        return ((oh - 1) * self.strides[0] + (self.kh - 1) * self.dilations[0] + 1,
                (ow - 1) * self.strides[1] + (self.kw - 1) * self.dilations[1] + 1)


def conv_plan(x_shape, x_dtype: str, w_shape, attrs) -> Optional[ConvPlan]:
    """The plan of a 2-D, group-1 qconv that dp4a can run, else None."""
    geom = conv_geometry(x_shape, w_shape, attrs)
    if geom is None or geom.groups != 1:
        return None
    sz = _shift_of(x_dtype, int(attrs.get("x_zero_point", 0)))
    if sz is None:
        return None
    return ConvPlan(**geom.fields(), shift=sz[0], zx=sz[1])


def pack_conv_weights(plan: ConvPlan, w: np.ndarray, b: Optional[np.ndarray]):
    """(wp [O, C/4, KH, KW, 4] int8, bias' [O] int32) with bias' = b - zx' * sum(w)."""
    wp = np.zeros((plan.o, plan.c4 * 4, plan.kh, plan.kw), np.int8)
    wp[:, :plan.c] = w
    wp = np.ascontiguousarray(wp.reshape(plan.o, plan.c4, 4, plan.kh, plan.kw).transpose(0, 1, 3, 4, 2))
    bias = np.zeros(plan.o, np.int64) if b is None else np.asarray(b, np.int64).reshape(plan.o)
    folded = bias - np.int64(plan.zx) * w.astype(np.int64).reshape(plan.o, -1).sum(axis=1)
    return wp, _wrap_i32(folded)


def conv_te(plan: ConvPlan, x, wp, bias):
    """pack -> dp4a-shaped conv -> + bias', as TE (NCHW in, NCHW int32 out)."""
    from tvm import te, tirx

    (pt, pl, _, _), (sh, sw), (dh, dw) = plan.pads, plan.strides, plan.dilations
    hp, wpad = plan.padded_hw

    def pack(n, cb, hh, ww, ci):
        ch, yy, xx = cb * 4 + ci, hh - pt, ww - pl
        inside = tirx.all(ch < plan.c, yy >= 0, yy < plan.h, xx >= 0, xx < plan.w)
        v = x[n, ch, yy, xx].astype("int32") - plan.shift
        return tirx.if_then_else(inside, v.astype("int8"), tirx.const(plan.zx, "int8"))

    xp = te.compute((plan.n, plan.c4, hp, wpad, 4), pack, name=PACK_BLOCK)
    oh, ow = plan.out_hw
    rc = te.reduce_axis((0, plan.c4), "rc")
    ry = te.reduce_axis((0, plan.kh), "ry")
    rx = te.reduce_axis((0, plan.kw), "rx")
    r4 = te.reduce_axis((0, 4), "r4")
    acc = te.compute(
        (plan.n, plan.o, oh, ow),
        lambda n, o, y, z: te.sum(xp[n, rc, y * sh + ry * dh, z * sw + rx * dw, r4].astype("int32")
                                  * wp[o, rc, ry, rx, r4].astype("int32"), axis=[rc, ry, rx, r4]),
        name=CONV_BLOCK)
    return te.compute(acc.shape, lambda n, o, y, z: acc[n, o, y, z] + bias[o], name=f"{PREFIX}_bias")


# --- qmatmul -------------------------------------------------------------------------------

@dataclass(frozen=True)
class MatmulPlan:
    m: int
    k: int
    n: int
    shift: int
    za: int

    @property
    def k4(self) -> int:
        return -(-self.k // 4)


def matmul_plan(a_shape, a_dtype: str, b_shape, za: int) -> Optional[MatmulPlan]:
    if len(a_shape) != 2 or len(b_shape) != 2 or int(a_shape[1]) != int(b_shape[0]):
        return None
    sz = _shift_of(a_dtype, za)
    return None if sz is None else MatmulPlan(int(a_shape[0]), int(a_shape[1]), int(b_shape[1]), *sz)


def pack_matmul_weights(plan: MatmulPlan, b: np.ndarray, bias: Optional[np.ndarray]):
    """(bp [N, K/4, 4] int8, bias' [N] int32), bias' = bias - za' * sum_k b[k, :]."""
    bp = np.zeros((plan.n, plan.k4 * 4), np.int8)
    bp[:, :plan.k] = b.T
    bp = np.ascontiguousarray(bp.reshape(plan.n, plan.k4, 4))
    base = np.zeros(plan.n, np.int64) if bias is None else np.broadcast_to(np.asarray(bias, np.int64), (plan.n,))
    return bp, _wrap_i32(base - np.int64(plan.za) * b.astype(np.int64).sum(axis=0))


def matmul_te(plan: MatmulPlan, a, bp, bias):
    from tvm import te, tirx

    def pack(m, kb, ki):
        k = kb * 4 + ki
        v = a[m, k].astype("int32") - plan.shift
        return tirx.if_then_else(k < plan.k, v.astype("int8"), tirx.const(0, "int8"))

    ap = te.compute((plan.m, plan.k4, 4), pack, name=PACK_BLOCK)
    rk = te.reduce_axis((0, plan.k4), "rk")
    r4 = te.reduce_axis((0, 4), "r4")
    acc = te.compute((plan.m, plan.n),
                     lambda i, j: te.sum(ap[i, rk, r4].astype("int32") * bp[j, rk, r4].astype("int32"),
                                         axis=[rk, r4]), name=MM_BLOCK)
    return te.compute(acc.shape, lambda i, j: acc[i, j] + bias[j], name=f"{PREFIX}_bias")


# --- lowerings -----------------------------------------------------------------------------

def _generic(op: str):
    from . import lower_quant

    return {"qconv": lower_quant.lower_qconv, "qmatmul": lower_quant.lower_qmatmul}[op]


def lower_qconv_dp4a(cx, node, ins, attrs):
    """qconv through the dp4a kernel when it applies, else the generic lowering."""
    x, w, b = (list(ins) + [None])[:3]
    wv = cx.const_value(w)
    bv = cx.const_value(b) if b is not None else None
    plan = None
    if (wv is not None and (b is None or bv is not None) and cx.dtype_of(w) == "int8"
            and (attrs.get("acc") or "i32") == "i32"):
        plan = conv_plan(cx.shape_of(x), cx.dtype_of(x), wv.shape, attrs)
    if plan is None:
        return _generic("qconv")(cx, node, ins, attrs)
    wp, folded = pack_conv_weights(plan, wv, bv)
    return cx.emit_te(lambda xt, wt, bt: conv_te(plan, xt, wt, bt), x, cx.const(wp, "int8"),
                      cx.const(folded, "int32"), primfunc_name_hint=CONV_BLOCK)


def lower_qmatmul_dp4a(cx, node, ins, attrs):
    """qmatmul of a 2-D operand by a constant int8 matrix through the dp4a kernel, else generic."""
    a, b, bias = (list(ins) + [None])[:3]
    bv = cx.const_value(b)
    biv = cx.const_value(bias) if bias is not None else None
    plan = None
    if (bv is not None and cx.dtype_of(b) == "int8" and int(attrs.get("b_zero_point", 0)) == 0
            and (attrs.get("acc") or "i32") == "i32"
            and (bias is None or (biv is not None and biv.size in (1, bv.shape[-1]) and biv.ndim <= 1))):
        plan = matmul_plan(cx.shape_of(a), cx.dtype_of(a), bv.shape, int(attrs.get("a_zero_point", 0)))
    if plan is None:
        return _generic("qmatmul")(cx, node, ins, attrs)
    bp, folded = pack_matmul_weights(plan, bv, biv)
    return cx.emit_te(lambda at, bt, ct: matmul_te(plan, at, bt, ct), a, cx.const(bp, "int8"),
                      cx.const(folded, "int32"), primfunc_name_hint=MM_BLOCK)


# --- tensor intrinsic ---------------------------------------------------------------------
_registered = False


def register_intrinsic() -> None:
    """Register DP4A_INTRIN (once): TVM's dp4a_s8s8s32 description and `__dp4a` implementation,
    over an int64 lane loop."""
    global _registered
    if _registered:
        return
    from tvm.s_tir import TensorIntrin
    from tvm.script import tirx as T

    z = T.int64(0)

    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((T.int64(4),), "int8", offset_factor=1, align=4, scope="shared"),
             B: T.Buffer((T.int64(4),), "int8", offset_factor=1, align=4, scope="shared"),
             C: T.Buffer((T.int64(1),), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[z], A[z:z + 4], B[z:z + 4])
            T.writes(C[z])
            for i in T.serial(T.int64(4)):
                with T.sblock("update"):
                    vi = T.axis.remap("R", [i])
                    C[z] = C[z] + T.cast(A[vi], "int32") * T.cast(B[vi], "int32")

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((T.int64(4),), "int8", offset_factor=1, align=4, scope="shared"),
             B: T.Buffer((T.int64(4),), "int8", offset_factor=1, align=4, scope="shared"),
             C: T.Buffer((T.int64(1),), "int32", offset_factor=1, align=4, scope="local")) -> None:
        with T.sblock("root"):
            T.reads(C[z], A[z:z + 4], B[z:z + 4])
            T.writes(C[z])
            C[z] += T.call_pure_extern("__dp4a", A.vload([z], "int8x4"), B.vload([z], "int8x4"), T.int32(0),
                                       dtype="int32")

    TensorIntrin.register(DP4A_INTRIN, desc, impl, override=True)
    _registered = True


# --- GPU schedule --------------------------------------------------------------------------

def _divisor_at_most(v: int, cap: int) -> int:
    return max(d for d in range(1, min(v, cap) + 1) if v % d == 0)


def _tiles(o: int, rows: int, cols: int, shrink: int = 0) -> Tuple[int, int, int, int, int]:
    """(ty, vo, tr, tc, vc): threads and per-thread tile over output channels (ty x vo), output
    rows (tr threads) and columns (tc threads x vc). Every factor divides its extent: a tail
    predicate on the dp4a block defeats tensorize. Pixel threads <= 32, all threads <= 128;
    `shrink` halves the output-channel tile that many times (shared memory)."""
    tc = _divisor_at_most(cols, 32)
    vc = 2 if cols >= 64 and (cols // tc) % 2 == 0 else 1
    tr = _divisor_at_most(rows, max(1, 32 // tc))
    ty = _divisor_at_most(o, max(1, (128 // (tc * tr)) >> shrink))
    vo = next(v for v in (4 >> min(shrink, 2), 2, 1) if (o // ty) % v == 0)
    return ty, vo, tr, tc, vc


def _split(sch, loop, factors: list):
    """sch.split with integer factors in the loop variable's dtype (int64 for relax kernels: an
    int32 extent on an int64 loop breaks blockize inside tensorize)."""
    from tvm import tirx

    dt = str(sch.get(loop).extent.ty)
    return sch.split(loop, [None if f is None else tirx.const(f, dt) for f in factors])


def _own_loops(sch, block, depth: int) -> List:
    return list(sch.get_loops(block))[depth:]


def _extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def schedule_dp4a(sch, main, o_loop, row_loop, col_loop, batch_loops: list, red_loops: list, lane_loop, *,
                  lanes_first: bool, shrink: int = 0):
    """Tile, bind, stage through shared memory and tensorize one dp4a reduction block; returns
    the innermost thread loop (where the write-back goes).

    `main`'s loops: batch_loops, o_loop (output channels), row_loop and col_loop (output
    pixels; either may be None), reduction loops red_loops (the channel-group loop first), the
    4-lane loop innermost. Rows and columns are tiled separately (never fused) so a thread
    block's input tile is a rectangle of constant size. `lanes_first`: fetch the activation tile
    lane-major (the pack reads NCHW, so neighbouring threads then read neighbouring pixels)."""
    # the 4 lanes become their own block first: tensorizing a loop after tiling makes blockize
    # re-derive the tiled int64 bindings, which it gets wrong (int32 IterVar over int64 vars)
    main = sch.blockize(lane_loop)
    ext = lambda lp: _extent(sch, lp) if lp is not None else 1  # noqa: E731
    ty, vo, tr, tc, vc = _tiles(ext(o_loop), ext(row_loop), ext(col_loop), shrink)
    bo, to, io = _split(sch, o_loop, [None, ty, vo])
    br, trr = _split(sch, row_loop, [None, tr]) if row_loop is not None else (None, None)
    bc, tcc, ic = _split(sch, col_loop, [None, tc, vc]) if col_loop is not None else (None, None, None)
    rc, rest = red_loops[0], list(red_loops[1:])
    ci = next(f for f in (4 >> min(shrink, 2), 2, 1) if _extent(sch, rc) % f == 0)
    rco, rci = _split(sch, rc, [None, ci])
    present = lambda *ls: [lp for lp in ls if lp is not None]  # noqa: E731
    blocks, tx_loops = present(*batch_loops, bo, br, bc), present(trr, tcc)
    sch.reorder(*blocks, to, *tx_loops, rco, rci, *rest, *present(io, ic))
    sch.bind(sch.fuse(*blocks) if len(blocks) > 1 else blocks[0], "blockIdx.x")
    sch.bind(to, "threadIdx.y")
    thread = to
    if tx_loops:
        thread = sch.fuse(*tx_loops) if len(tx_loops) > 1 else tx_loops[0]
        sch.bind(thread, "threadIdx.x")
    tx = tr * tc

    # operand tiles in shared memory, one step of `ci` channel groups at a time
    target_loop = sch.get(rco)
    depth = 1 + next(i for i, lp in enumerate(sch.get_loops(main)) if sch.get(lp).same_as(target_loop))
    shared = 0
    for idx in (0, 1):
        sh = sch.cache_read(main, idx, "shared")
        sch.compute_at(sh, rco, preserve_unit_loops=True)
        shared += int(np.prod([_extent(sch, lp) for lp in _own_loops(sch, sh, depth)]))  # int8 tile
        if shared > _SHARED_BYTES:  # e.g. a 7x7 conv to one pixel over hundreds of channels
            raise _TooBig(f"dp4a tiles need {shared} bytes of shared memory")
        for b in sch.get_producers(sh):
            if sch.get(b).name_hint.startswith(PACK_BLOCK):
                sch.compute_inline(b)
        loops = _own_loops(sch, sh, depth)
        if idx == 0 and lanes_first:
            sch.reorder(loops[-1], *loops[:-1])
            loops = _own_loops(sch, sh, depth)
        _, fy, fx = _split(sch, sch.fuse(*loops), [None, ty, tx])
        sch.bind(fy, "threadIdx.y")
        sch.bind(fx, "threadIdx.x")

    sch.decompose_reduction(main, rco)
    sch.tensorize(main, DP4A_INTRIN)  # the update block, after decompose_reduction
    return thread


def _inline_elementwise(sch, keep) -> None:
    """compute_inline every block of the root but those named in `keep` (and the last), until
    none will: the epilogue FuseOps appended (requantize, activation, a residual's dequantize
    feeding an add) collapses into one output stage."""
    root = sch.get_sblock("root")
    progress = True
    while progress:
        progress = False
        blocks = list(sch.get_child_blocks(root))
        for b in blocks[:-1]:
            if sch.get(b).name_hint in keep:
                continue
            try:
                sch.compute_inline(b)
            except Exception:  # noqa: BLE001 - schedule errors are TVMError subclasses
                continue
            progress = True
            break


def _same_space(sch, out, main) -> bool:
    """`out` writes a tensor of `main`'s shape (an elementwise epilogue, not a broadcast)."""
    shape = lambda b: [int(d) for d in sch.get(b).writes[0].source.shape]  # noqa: E731
    return shape(out) == shape(main)


def _bind_flat(sch, block, threads: int = 256) -> None:
    loops = sch.get_loops(block)
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    bx, tx = _split(sch, fused, [None, threads])
    sch.bind(bx, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")


class _TooBig(ValueError):
    """The tiles of one step do not fit in shared memory."""


def _apply(func, target, shrink: int = 0):
    from tvm import s_tir

    register_intrinsic()
    sch = s_tir.Schedule(func)
    root = sch.get_sblock("root")
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    main_name = next((n for n in names if n.startswith((CONV_BLOCK, MM_BLOCK))), None)
    if main_name is None:
        return None
    pack_name = next((n for n in names if n.startswith(PACK_BLOCK)), None)
    _inline_elementwise(sch, {main_name, pack_name})
    blocks = list(sch.get_child_blocks(root))
    names = [sch.get(b).name_hint for b in blocks]
    if names[:2] != [pack_name, main_name] or len(names) > 3:  # (the rule warns, dlight takes it)
        raise ValueError(f"stages that do not inline around {main_name}: {names}")
    main = sch.get_sblock(main_name)
    out = blocks[2] if len(blocks) == 3 else None
    wb = sch.cache_write(main, 0, "local")
    if out is not None:
        if _same_space(sch, out, main):
            sch.reverse_compute_inline(out)  # the epilogue runs in the register write-back
        else:  # e.g. squeeze-excite: a [1, C, 1, 1] conv broadcast over an image
            _bind_flat(sch, out)
    loops = list(sch.get_loops(main))
    if main_name.startswith(CONV_BLOCK):  # n, o, y, z | rc, ry, rx, r4
        n, o, y, z = loops[:4]
        thread = schedule_dp4a(sch, main, o, y, z, [n], loops[4:7], loops[7], lanes_first=True,
                               shrink=shrink)
    else:  # i, j | rk, r4
        i, j = loops[:2]
        thread = schedule_dp4a(sch, main, j, i, None, [], loops[2:3], loops[3], lanes_first=False,
                               shrink=shrink)
    sch.reverse_compute_at(wb, thread, preserve_unit_loops=True)
    return sch


def dp4a_rule():
    """The dlight rule: schedules a fused function holding a qcc dp4a kernel, else None."""
    from tvm.s_tir import dlight

    @dlight.ScheduleRule.from_callable("qcc_dp4a")
    def rule(func, target, _tunable):
        if target.kind.name != "cuda":
            return None
        for shrink in range(8):  # smaller output-channel tiles until they fit in shared memory
            try:
                return _apply(func, target, shrink)
            except _TooBig as e:
                err = e
            except Exception as e:  # noqa: BLE001 - never fail a build over a schedule: dlight takes it
                err = e
                break
        _log.warning("a qcc dp4a kernel is left to dlight (plain int32 loops): %s",
                     str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__)
        return None

    return rule


# --- the strategy --------------------------------------------------------------------------

class CUDAInt8Strategy(CUDAStrategy):
    """TVM's GPU pipeline with qconv/qmatmul lowered to dp4a kernels scheduled by `dp4a_rule`
    ahead of dlight's default GPU rules."""

    name = "cuda-dp4a"

    def __init__(self, preset=None):
        super().__init__(preset)
        if preset is None or preset.has("dp4a"):
            self.overrides["qconv"] = lower_qconv_dp4a
            self.overrides["qmatmul"] = lower_qmatmul_dp4a

    def schedule_rules(self, target) -> list:
        return [dp4a_rule()] if self.overrides else []

    def base_relax_pipeline(self, target):
        rules = self.schedule_rules(target)
        if not rules or target.kind.name != "cuda":  # (an llvm build of these lowerings: CPU checks)
            return super().base_relax_pipeline(target)
        import tvm
        from tvm.relax.backend.cuda import pipeline as cuda
        from tvm.s_tir import dlight

        legalize = cuda.legalize_passes(target)
        # FuseOps/FuseTIR, then our rule, then dlight's defaults (they skip scheduled functions)
        at = next((i for i, p in enumerate(legalize) if "ApplyDefaultSchedule" in str(p.info.name)), len(legalize))
        legalize.insert(at, dlight.ApplyDefaultSchedule(*rules))

        @tvm.transform.module_pass(opt_level=0, name="qcc.cuda_pipeline")
        def _pipeline(mod, _ctx):
            with target:
                return tvm.transform.Sequential(
                    cuda.library_dispatch_passes(target) + legalize + cuda.dataflow_lower_passes(target)
                    + cuda.finalize_passes(target))(mod)

        return _pipeline


register_strategy("cuda", CUDAInt8Strategy)
