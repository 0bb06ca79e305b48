"""Search-free CPU schedules for fused kernels: dlight rules for x86 and ARM.

After FuseOps/FuseTIR and `InlineElementwise` (cpu_schedule.py) a fused kernel is a
few loop nests under one root block: an optional prologue (padding, a dequantize), at
most a few reductions (a conv, a matmul, a pool, the rows of a softmax) and an
epilogue (bias, requantize, activation). Unscheduled, each is a naive single-threaded
loop nest. The rules here, tried in order on every kernel no earlier rule claimed:

- `TiledReduction`: every reduction block whose innermost output axis is contiguous in
  what it reads (conv in NCHW/OIHW incl. depthwise and int8, conv-transpose, matmul,
  max/avg pool) gets a register tile: the output's inner axis split into vector lanes,
  an optional second axis (one the main input does not depend on: output channels of a
  conv, rows of a matmul) unrolled by 2-4, the reduction loops *outside* the tile, the
  accumulators in a small tile buffer (cache_write + decompose_reduction), the outer tile
  loops fused and parallel, and the epilogue computed per tile (reverse_compute_at).
- `RowReduction`: softmax / layer norm / mean over the last axis: rows parallel, every
  stage computed per row (dlight's own CPU `Reduction` rule was slower than no schedule
  here: its predicated splits scalarize).
- `LoopNests`: anything else, block by block: injective blocks get their outer loops
  fused and parallel and their innermost loop vectorized (by LLVM, or here when it holds
  a fenced product LLVM will not vectorize); reductions get their spatial loops parallel.

Small kernels (< PARALLEL_MIN_WORK loop iterations) stay single-threaded: every parallel
loop is a barrier of TVM's static thread pool.

Exactness: moving spatial loops inside reduction loops, splitting and fusing loops,
vectorizing over *output* elements and per-tile epilogues never change the sequence
of operations that produces one output element, so integer results stay bit-exact and
float reductions keep their order (no rfactor, no reassociation). Fenced products
(exact_fp.py) keep their fence whether or not their loop vectorizes.

Each rule returns None for a kernel it does not handle and never raises: a schedule
error leaves the kernel to the next rule (the last one schedules block by block and
skips any block it cannot schedule), so a build never fails here.
"""
from __future__ import annotations

import warnings
from typing import List, Optional, Sequence, Tuple

from tvm import s_tir, tirx
from tvm.s_tir import dlight

from .exact_fp import FENCE

# below this many loop iterations a parallel launch (a barrier of TVM's static thread
# pool: microseconds when the cores are free, a scheduler slice when they are not)
# costs more than it saves
PARALLEL_MIN_WORK = 1 << 14  # (1 << 16 until 2026-12-04: see x86_int8._PAR_MACS)
# block annotation: the innermost output axis interleaves this many sources (see schedule_injective)
UNROLL_INNER = "qcc_unroll_inner"
# accumulator tile: at most this many vector registers (fits AVX2/NEON's 16 with room)
MAX_ACC_VECTORS = 8


# --- small helpers ----------------------------------------------------------------------------

def vector_bits(target) -> int:
    """The target's SIMD width in bits (128 when unknown)."""
    try:
        from tvm.target.codegen import llvm_get_vector_width

        bits = int(llvm_get_vector_width(target))
    except Exception:  # noqa: BLE001 - not an llvm target / no LLVM info
        bits = 0
    return bits if bits > 0 else 128


def _extent(sch, loop) -> Optional[int]:
    ext = sch.get(loop).extent
    return int(ext) if isinstance(ext, tirx.IntImm) else None


def _dtype_bits(dtype) -> int:
    """Bits of one element of a TIR dtype ("float32" -> 32, "bool" -> 8)."""
    import re

    m = re.search(r"(\d+)$", str(dtype).split("x")[0])
    return max(int(m.group(1)) if m else 32, 8)


def _vector_factor(n: int, lanes: int) -> Optional[int]:
    """Vector length for a loop of n iterations: the largest power of two <= lanes
    (>= 4) dividing n. Odd lengths (v10f32) make LLVM scalarize the whole vector
    expression, so a loop without one stays serial (LLVM's own loop vectorizer, with
    its remainder loop, may still take it)."""
    v = 1 << max(int(lanes).bit_length() - 1, 0)
    while v >= 4:
        if n % v == 0:
            return v
        v //= 2
    return None


def _divisor(n: int, hi: int, lo: int = 2) -> Optional[int]:
    """Largest divisor of n in [lo, hi], or None."""
    for d in range(min(hi, n), lo - 1, -1):
        if n % d == 0:
            return d
    return None


def _is_reduction(block) -> bool:
    return any(int(iv.iter_type) != 0 for iv in block.iter_vars)


def has_root_block(sch) -> bool:
    try:
        sch.get_sblock("root")
        return True
    except Exception:  # noqa: BLE001 - TVM raises its own error types
        return False


def _root_blocks(sch) -> list:
    return list(sch.get_child_blocks(sch.get_sblock("root")))


def _has(var, expr) -> bool:
    """Whether an index expression uses `var`."""
    return any(v.same_as(var) for v in tirx.analysis.undefined_vars(expr))


def _work(sch, loops) -> int:
    n = 1
    for lp in loops:
        e = _extent(sch, lp)
        n *= e if e is not None else 1 << 20
    return n


def _trivial_binding(sch, block_rv, loops) -> bool:
    """Each block iter is bound to exactly one loop var, in loop order."""
    block = sch.get(block_rv)
    loop_vars = [sch.get(lp).loop_var for lp in loops]
    values = _iter_values(sch, block_rv)
    if values is None or len(values) != len(block.iter_vars) or len(loop_vars) != len(values):
        return False
    return all(isinstance(v, tirx.Var) and v.same_as(lv) for v, lv in zip(values, loop_vars))


def _iter_values(sch, block_rv):
    """The iter_values of the block's SBlockRealize."""
    import tvm

    return list(tvm.get_global_func("s_tir.schedule.GetSBlockRealize")(sch, block_rv).iter_values)


# --- the loop-nest schedules ------------------------------------------------------------------

def _parallel(sch, loops: Sequence, total_work: int, min_work: int = PARALLEL_MIN_WORK):
    """Fuse `loops` and mark the result parallel when the work is worth a launch."""
    loops = list(loops)
    if not loops:
        return None
    outer = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    ext = _extent(sch, outer)
    if total_work >= min_work and (ext is None or ext > 1):
        sch.parallel(outer)
    return outer


def _select_cuts(sch, block_rv, loops):
    """(k, [c0, c1, ...]) when every if_then_else in the block picks its source by comparing
    loop k's iterator with constants (a concatenation along axis k: `240 <= v1 ? b : a`),
    else None. Cut at those constants, each part of the loop reads one source and the
    selects fold away."""
    if not _trivial_binding(sch, block_rv, loops):
        return None
    import re

    block = sch.get(block_rv)
    names = [iv.var.name for iv in block.iter_vars]
    text = str(block.body)
    num = r"(?:T\.int(?:32|64)\()?(-?\d+)\)?"
    conds = re.findall(rf"if_then_else\(({num} (<=|<) (\w+)|(\w+) (<|>=) {num}),", text)
    if not conds or len(conds) != text.count("if_then_else("):
        return None
    cuts, axes = set(), set()
    for _, c1, _op1, v1, v2, _op2, c2 in conds:
        var, const = (v1, int(c1)) if v1 else (v2, int(c2))
        if var not in names:
            return None
        axes.add(names.index(var))
        # c <= v and v < c split at c (as v >= c: the other forms are not what concat writes);
        # c < v at c + 1
        cuts.add(const + 1 if _op1 == "<" else const)
    if len(axes) != 1:
        return None
    k = axes.pop()
    ext = _extent(sch, loops[k])
    cuts = sorted(c for c in cuts if ext is not None and 0 < c < ext)
    return (k, cuts) if cuts else None


def _cut_fused(sch, fused, parts, k: int, cuts) -> None:
    """Partition `fused` (the fusion of loops with extents `parts`, outermost first) where
    loop k of them crosses each cut (see _select_cuts)."""
    if fused is None or k >= len(parts) or any(p is None for p in parts):
        return
    stride = 1
    for p in parts[k + 1:]:
        stride *= p
    bounds = [c * stride for c in cuts]
    sizes = [b - a for a, b in zip([0] + bounds[:-1], bounds)]
    par = int(sch.get(fused).kind) == int(tirx.ForKind.PARALLEL)  # the parts must stay parallel
    for part in sch.loop_partition(fused, sizes + [None]):
        if par:
            sch.parallel(part)


def schedule_injective(sch, block_rv, target, min_work: int = PARALLEL_MIN_WORK) -> None:
    """Outer loops fused + parallel; the innermost loop left to LLVM's loop vectorizer,
    or vectorized here (power-of-two lanes) when it holds a fenced product. A concatenation
    along an outer axis is cut into one loop per source (_select_cuts): a select between
    two buffers in the loop kept LLVM from vectorizing it (mixnet_s's concatenated
    depthwise branches with SiLU: 6.6 ns per value)."""
    loops = list(sch.get_loops(block_rv))
    if not loops:
        return
    select = _select_cuts(sch, block_rv, loops)
    outer_n = [_extent(sch, lp) for lp in loops]
    fused = _schedule_injective_loops(sch, block_rv, loops, target, min_work)
    if select is not None and fused is not None:
        fused, n_fused = fused
        _cut_fused(sch, fused, outer_n[:n_fused], *select)


def _schedule_injective_loops(sch, block_rv, loops, target, min_work):
    """schedule_injective's loops: returns (the fused outer loop, how many of the block's
    leading loops it fuses) or None."""
    block = sch.get(block_rv)
    total = _work(sch, loops)
    # trailing unit loops ([1, C, 1, 1]) make the contiguous axis the one before them
    while len(loops) > 1 and _extent(sch, loops[-1]) == 1:
        loops = loops[:-2] + [sch.fuse(loops[-2], loops[-1])]
    bits = max([_dtype_bits(w.source.dtype) for w in block.writes] + [32])
    lanes = max(vector_bits(target) // bits, 4)
    inner = loops[-1]
    ext = _extent(sch, inner)
    vec, split = None, False
    # LLVM's loop vectorizer does better than an explicit vector loop on plain
    # elementwise code (measured: rounding/select chains scalarized when explicit); it
    # does not vectorize a loop holding a fenced product (exact_fp.py), so those are
    # vectorized here
    explicit = FENCE in str(block.body)
    k = int(block.annotations[UNROLL_INNER]) if UNROLL_INNER in block.annotations else 0
    if not explicit and k > 1 and ext is not None and ext % k == 0 and ext > k:
        # an output row that interleaves k sources (depth_to_space, an integer upsampling):
        # its k phases unrolled, LLVM vectorizes the row of groups with interleaved stores
        # (a 1.3 MB uint8 depth_to_space: 158 -> 13 us)
        outer_in, phase = sch.split(inner, factors=[None, k])
        sch.unroll(phase)
        return _parallel(sch, loops[:-1], total, min_work), len(loops) - 1
    if explicit and ext is not None and ext % lanes and len(loops) > 1:
        # a row that is no whole number of vectors (14, 7, 18 wide): rows and columns
        # fused, vectors of full width and a short serial remainder (vector_with_remainder)
        outer = _parallel(sch, loops[:-2], total, min_work)
        vector_with_remainder(sch, sch.fuse(loops[-2], loops[-1]), lanes)
        return outer, len(loops) - 2
    if explicit and ext is not None and ext >= 4:
        v = _vector_factor(ext, lanes)
        if v is not None:
            if v < ext:
                outer_in, vec = sch.split(inner, factors=[None, v])
                loops, split = loops[:-1] + [outer_in], True
            else:
                vec, loops = inner, loops[:-1]
    elif ext is None:
        return None
    if vec is None:
        loops = loops[:-1]  # the innermost stays serial (LLVM may vectorize it)
    outer = _parallel(sch, loops, total, min_work)
    if vec is not None:
        sch.vectorize(vec)
    return None if split else (outer, len(loops))  # (a split loop is not one of the block's)


def vector_with_remainder(sch, loop, lanes: int) -> None:
    """Vectorize `loop` (a fenced product's: LLVM leaves it scalar) in full vectors of
    `lanes`, then the last ext % lanes iterations in vectors of half as many lanes, a
    quarter, ... down to four (a 28-wide row: 16 + 8 + 4; 7 wide: 4 + 3 serial): the
    14x14 and 7x7 maps of a mobile net's last stages had no vector length dividing them,
    and their hard-swish epilogues ran one value at a time (mobilenet_v3_small's 1x1 40->240
    conv at 14x14: 228 us for 1.9 M multiply-adds); with a serial remainder, PP-LCNet's 1x1
    64->128 conv at 28x28 still ran 12 of each row's 28 values one at a time."""
    ext = _extent(sch, loop)
    if ext is None:
        return
    full = ext - ext % lanes
    if full == 0:
        v = _vector_factor(ext, lanes)
        if v is not None:
            sch.vectorize(sch.split(loop, factors=[None, v])[1] if v < ext else loop)
        return
    if full < ext:
        # one partition of the whole loop: TVM 0.27's loop_partition misplaces the pieces of
        # a loop that does not start at 0 (a remainder loop partitioned again)
        tail = _tail_vectors(ext - full, lanes // 2)
        loop, *rest = sch.loop_partition(loop, [full] + [n for n, _ in tail[:-1]] + [None])
        for piece, (_, vector) in zip(rest, tail):
            if vector:
                sch.vectorize(piece)
    sch.vectorize(sch.split(loop, factors=[None, lanes])[1] if lanes < full else loop)


def _tail_vectors(ext: int, lanes: int) -> List[Tuple[int, bool]]:
    """A remainder of `ext` (< 2 * lanes) iterations as (length, vectorized) pieces: one
    vector of `lanes` where it fits, then of half as many, down to four lanes; the (up to
    three) iterations left serial (two-lane vectors of PP-LCNet's 7x7 epilogues measured
    slower than the values one at a time: its 1x1 conv to 512 channels 82 -> 119 us)."""
    pieces = []
    while lanes >= 4 and ext > 0:
        if ext >= lanes:
            pieces.append((lanes, True))
            ext -= lanes
        lanes //= 2
    if ext:
        pieces.append((ext, False))
    return pieces


def epilogue_run(sch, rows, row, pitch: int, width: int, lanes: int):
    """The loop an epilogue vectorizes along: its `row` loop, or `rows` and `row` fused into one
    contiguous run when the kernel's sums have the output's row pitch (`pitch` == `width`: a
    1x1 conv's, the VNNI depthwise kernel's) and a row is no whole number of `lanes`-wide
    vectors: a 7x7 map then puts 48 of its 49 values in vectors, against 4 of each 7-wide row
    (PP-LCNet's 1x1 256->512 conv at 7x7: 72 -> 29 us; its 5x5 depthwise at 14x14: 39 -> 23
    us). Rows of whole vectors stay rows (fused, its 1x1 conv at 112x112 took 95 -> 108 us)."""
    return sch.fuse(rows, row) if pitch == width and width % lanes else row


def vectorize_fenced_row(sch, block_rv, row, target) -> None:
    """An epilogue's row loop (`row`, innermost), when the block holds a fenced product (LLVM
    leaves those scalar): vectorized here along the row, in vectors as wide as the row allows
    plus a serial remainder. Along the row, not rows fused: a kernel's sums have a row pitch
    that is not the output's, and fused rows would load them by gathers."""
    if FENCE not in str(sch.get(block_rv).body):
        return
    lanes, width = max(vector_bits(target) // 32, 4), _extent(sch, row)
    while lanes > 4 and width is not None and lanes > width:
        lanes //= 2
    vector_with_remainder(sch, row, lanes)


def schedule_reduction_plain(sch, block_rv, target, min_work: int = PARALLEL_MIN_WORK):
    """Spatial loops fused + parallel, the reduction loops serial inside (order kept);
    returns the fused outer loop (None when the block is left as it is)."""
    block = sch.get(block_rv)
    loops = list(sch.get_loops(block_rv))
    if not _trivial_binding(sch, block_rv, loops):
        return
    kinds = [int(iv.iter_type) for iv in block.iter_vars]
    n_lead = 0
    while n_lead < len(kinds) and kinds[n_lead] == 0:
        n_lead += 1
    if n_lead == 0:
        return
    # the innermost spatial loop stays a loop of its own (LLVM vectorizes it when the
    # reduction is short: a strided depthwise conv); the ones outside are parallel
    outer = loops[:n_lead - 1] if n_lead > 1 and (_extent(sch, loops[n_lead - 1]) or 0) > 1 else loops[:n_lead]
    return _parallel(sch, outer, _work(sch, loops), min_work)


def _vector_axis(block, loops_vars) -> Optional[int]:
    """Index of the iter to vectorize a reduction over: the innermost spatial iter that
    indexes the last dimension of the output, and of every read that uses it (so the
    loads are contiguous or broadcast), or None."""
    kinds = [int(iv.iter_type) for iv in block.iter_vars]
    spatial = [i for i, k in enumerate(kinds) if k == 0]
    if not spatial or len(block.writes) != 1:
        return None
    sv = spatial[-1]
    var = block.iter_vars[sv].var
    w = block.writes[0]
    if not w.region or not _has(var, w.region[-1].min):
        return None
    for r in block.reads:
        if r.source.same_as(w.source):
            continue
        for dim in r.region[:-1]:
            if _has(var, dim.min):
                return None  # a strided (gather) load
    return sv


def _strided(block, sv) -> bool:
    """Whether a read moves by more than one element along the vector axis (a strided conv)."""
    var = block.iter_vars[sv].var
    return any(r.region and _has(var, r.region[-1].min) and _stride(r.region[-1].min, var) != 1
               for r in block.reads if not r.source.same_as(block.writes[0].source))


def _stride(expr, var) -> Optional[int]:
    """The coefficient of `var` in an index expression (None if not linear)."""
    from tvm.sym.pattern import detect_linear_equation

    try:
        coef = detect_linear_equation(expr, [var])
    except Exception:  # noqa: BLE001
        return None
    if not coef or not isinstance(coef[0], tirx.IntImm):
        return None
    return int(coef[0])


def _register_axis(sch, block, sv, ext_of) -> Optional[int]:
    """A spatial iter a read that holds the vector axis does not depend on: unrolling
    it reuses each vector load of that read (a conv's output channels, matmul rows)."""
    kinds = [int(iv.iter_type) for iv in block.iter_vars]
    vvar = block.iter_vars[sv].var
    vec_reads = [r for r in block.reads if not r.source.same_as(block.writes[0].source)
                 and any(_has(vvar, d.min) for d in r.region)]
    best = None
    for i, k in enumerate(kinds):
        if k != 0 or i == sv or (ext_of[i] or 0) < 2:
            continue
        var = block.iter_vars[i].var
        if any(not any(_has(var, d.min) for d in r.region) for r in vec_reads):
            if any(any(_has(var, d.min) for d in r.region) for r in block.reads
                   if not r.source.same_as(block.writes[0].source)):
                best = i  # innermost such axis
    return best


def schedule_tiled_reduction(sch, block_rv, target, fuse_epilogue: bool = True,
                             min_work: int = PARALLEL_MIN_WORK) -> bool:
    """Register-tiled, vectorized, parallel schedule of one reduction block (see the
    module docstring); False when the block has no contiguous vector axis."""
    block = sch.get(block_rv)
    loops = list(sch.get_loops(block_rv))
    if not _is_reduction(block) or not _trivial_binding(sch, block_rv, loops):
        return False
    exts = [_extent(sch, lp) for lp in loops]
    if any(e is None for e in exts):
        return False
    sv = _vector_axis(block, loops)
    if sv is None or exts[sv] < 4:
        return False
    acc_dtype = block.writes[0].source.dtype
    lanes = max(vector_bits(target) // max(_dtype_bits(acc_dtype), 8), 4)
    # a power-of-two vector, else an odd one (9 of 18) that fits one register: the
    # multiply-accumulate body legalizes fine at odd lengths (rounding chains do not)
    v = _vector_factor(exts[sv], lanes) or _divisor(exts[sv], lanes, 4)
    if v is None:
        return False
    sr = _register_axis(sch, block, sv, exts)
    kinds = [int(iv.iter_type) for iv in block.iter_vars]
    mr, nv = _tile(exts[sr] if sr is not None else 1, exts[sv] // v, _max_acc(target))
    mr = mr if mr > 1 else None
    if mr is None and _strided(block, sv):
        return False  # strided depthwise: LLVM's own interleaved loads do better (measured)
    total = _work(sch, loops)

    v_loops = sch.split(loops[sv], factors=[None, nv, v]) if nv > 1 else sch.split(loops[sv], factors=[None, v])
    r_loops = sch.split(loops[sr], factors=[None, mr]) if mr else None
    outer, reduce, inner = [], [], []
    for i, lp in enumerate(loops):
        if i == sv:
            outer.append(v_loops[0])
        elif mr and i == sr:
            outer.append(r_loops[0])
        elif kinds[i] == 0:
            outer.append(lp)
        else:
            reduce.append(lp)
    if mr:
        inner.append(r_loops[1])
    inner += list(v_loops[1:])
    sch.reorder(*outer, *reduce, *inner)
    fused = sch.fuse(*outer) if len(outer) > 1 else outer[0]
    if total >= min_work and _extent(sch, fused) != 1:
        sch.parallel(fused)
    consumers = list(sch.get_consumers(block_rv))
    # accumulators in registers: a small tile buffer, written back per tile. Scope "global",
    # not "local": TVM 0.27 heap-allocates every "local" buffer through the workspace pool
    # (an alloc/free pair per tile); global ones go on the stack (cpu_tir_passes.py)
    local = sch.cache_write(block_rv, 0, "global")
    sch.reverse_compute_at(local, fused, preserve_unit_loops=True)
    _vectorize_tile(sch, local, target)
    sch.vectorize(inner[-1])
    for lp in inner[:-1]:
        sch.unroll(lp)
    if reduce:
        init = sch.decompose_reduction(block_rv, reduce[0])
        init_loops = sch.get_loops(init)
        for lp in init_loops[len(init_loops) - len(inner):-1]:
            sch.unroll(lp)
    if fuse_epilogue:
        _fuse_epilogue(sch, consumers, fused, target)
    return True


def _max_acc(target) -> int:
    """Accumulator vectors a register tile may hold: 12 with 32 vector registers
    (AVX-512, AArch64), 8 with 16 (AVX2)."""
    if vector_bits(target) >= 512 or "aarch64" in str(target.attrs.get("mtriple", "")):
        return 12
    return MAX_ACC_VECTORS


def _tile(m_ext: int, n_vec: int, max_acc: int):
    """(mr, nv): mr rows of the register axis x nv vectors of the vector axis, both
    dividing their extents, mr*nv <= max_acc, most FMAs per load (mr*nv / (mr+nv))."""
    best, best_score = (1, 1), -1.0
    for mr in range(1, min(m_ext, 8) + 1):
        if m_ext % mr:
            continue
        for nv in range(1, min(n_vec, 6) + 1):
            if n_vec % nv or mr * nv > max_acc:
                continue
            score = mr * nv / (mr + nv) + 0.01 * mr * nv
            if score > best_score:
                best, best_score = (mr, nv), score
    return best


def _vectorize_tile(sch, block_rv, target) -> None:
    """Vectorize the innermost loop of a per-tile stage (epilogue, accumulator write-back)."""
    tile = [lp for lp in sch.get_loops(block_rv) if sch.get(lp).kind == tirx.ForKind.SERIAL]
    if not tile:
        return
    ext = _extent(sch, tile[-1])
    if ext is not None and ext >= 4 and (ext & (ext - 1) == 0 or ext % 8 == 0):
        sch.vectorize(tile[-1])  # odd lengths left to LLVM (see _vector_factor)


def _reads_plain_indices(block) -> bool:
    """Every index the block reads at is a loop variable, a constant, or a variable plus or
    minus a constant. reverse_compute_at covers a consumer's reads with a box: one reading a
    flat accumulator at oh * W + ow from a tile of part of a row got whole rows, written from
    sums other tiles had not made yet (x86's VNNI depthwise kernel, when its own schedule
    failed: half the outputs wrong on two threads)."""
    from tvm import tirx as _t

    def plain(e) -> bool:
        if isinstance(e, (_t.Var, _t.IntImm)):
            return True
        return isinstance(e, (_t.Add, _t.Sub)) and isinstance(e.a, _t.Var) and isinstance(e.b, _t.IntImm)

    return all(plain(r.min) for rd in block.reads for r in rd.region)


def _fuse_epilogue(sch, consumers, loop, target) -> None:
    """Compute each elementwise consumer chain of the tiled block per tile (reverse_compute_at
    at the tile loop), in order; a consumer that does not fit stays its own loop nest."""
    pending = list(consumers)
    seen = set()
    while pending:
        c = pending.pop(0)
        name = sch.get(c).name_hint
        if name in seen:
            continue
        seen.add(name)
        block = sch.get(c)
        if _is_reduction(block) or not _reads_plain_indices(block):
            continue
        try:
            sch.reverse_compute_at(c, loop, preserve_unit_loops=True)
        except Exception:  # noqa: BLE001 - not a per-tile consumer (broadcast, other shape)
            continue
        _vectorize_tile(sch, c, target)
        pending += list(sch.get_consumers(c))


def _schedule_rest(sch, target, min_work: int = PARALLEL_MIN_WORK) -> None:
    """Every root block no loop is parallel in yet: injective or plain reduction."""
    for b in _root_blocks(sch):
        loops = sch.get_loops(b)
        if any(sch.get(lp).kind != tirx.ForKind.SERIAL for lp in loops):
            continue
        try:
            if _is_reduction(sch.get(b)):
                outer = schedule_reduction_plain(sch, b, target, min_work)
                if outer is not None and sch.get(outer).kind == tirx.ForKind.PARALLEL:
                    # its epilogue (a cast, a quantize) in the same parallel loop: on its
                    # own it was a second launch, or a serial loop when too small for one
                    _fuse_epilogue(sch, list(sch.get_consumers(b)), outer, target)
            else:
                schedule_injective(sch, b, target, min_work)
        except Exception:  # noqa: BLE001 - a block this cannot schedule stays as it is
            continue


# --- the dlight rules -------------------------------------------------------------------------

class _CPURule(dlight.ScheduleRule):
    """A rule for llvm targets that returns None instead of raising."""

    name = "cpu"

    def __init__(self, parallel_min_work: int = None):
        # loops with less work than this stay serial (None: PARALLEL_MIN_WORK)
        self.min_work = PARALLEL_MIN_WORK if parallel_min_work is None else parallel_min_work

    def apply(self, func, target, tunable):  # noqa: ARG002 - search-free
        if not isinstance(func, tirx.PrimFunc) or target.kind.name != "llvm":
            return None
        try:
            sch = s_tir.Schedule(func)
            if not has_root_block(sch):  # nothing a block rule can schedule (no "root" block)
                return None
            if not self.schedule(sch, target):
                return None
            return sch
        except Exception as e:  # noqa: BLE001 - leave the kernel to the next rule
            warnings.warn(f"qcc cpu rule {self.name}: {type(e).__name__}: "
                          f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}")
            return None

    def schedule(self, sch, target) -> bool:
        raise NotImplementedError


class TiledReduction(_CPURule):
    """Conv / depthwise / matmul / pool: register-tiled, vectorized, parallel, epilogue per tile."""

    name = "tiled-reduction"

    def schedule(self, sch, target) -> bool:
        blocks = _root_blocks(sch)
        reductions = [b for b in blocks if _is_reduction(sch.get(b))]
        if not reductions:
            return False
        done = 0
        for b in reductions:
            if schedule_tiled_reduction(sch, b, target, fuse_epilogue=len(reductions) == 1,
                                        min_work=self.min_work):
                done += 1
        if not done:
            return False
        _schedule_rest(sch, target, self.min_work)
        return True


class RowReduction(_CPURule):
    """Softmax / layer norm / mean over the last axis: the rows (leading spatial axes
    every stage shares) fused and parallel, every stage computed per row (compute_at),
    the loops inside a row left to LLVM (in order: a float row reduction keeps its
    sequential order)."""

    name = "row-reduction"

    def schedule(self, sch, target) -> bool:
        blocks = _root_blocks(sch)
        if len(blocks) < 2 or _is_reduction(sch.get(blocks[-1])):
            return False
        reds = [b for b in blocks if _is_reduction(sch.get(b))]
        if not reds or not all(_is_row_reduction(sch.get(b)) for b in reds):
            return False
        n_lead = _row_axes([sch.get(b) for b in blocks])
        if not n_lead:
            return False
        last = blocks[-1]
        loops = sch.get_loops(last)
        if not _trivial_binding(sch, last, loops):
            return False
        outer = sch.fuse(*loops[:n_lead]) if n_lead > 1 else loops[0]
        work = sum(_work(sch, sch.get_loops(b)) for b in blocks)
        if work >= self.min_work and _extent(sch, outer) != 1:
            sch.parallel(outer)
        for b in reversed(blocks[:-1]):
            sch.compute_at(b, outer, preserve_unit_loops=True)
        return True


def _row_axes(blocks) -> int:
    """How many leading axes are the rows: the longest prefix of leading spatial iters every
    block has, with the same extents. A reduction that keeps its reduced axis (ReduceMean
    keepdims, as ONNX exporters write a layer norm) has a spatial iter of extent 1 where its
    consumers have the row's length: counted as a row axis, every element of the consumer
    recomputed the whole row's sum (PP-OCRv4 rec's unfused layer norms at -O0: 0.29 ms a
    kernel for 40 rows of 120, 120 times the work)."""
    lead = []
    for block in blocks:
        extents = []
        for iv in block.iter_vars:
            if int(iv.iter_type) != 0:
                break
            ext = iv.dom.extent
            extents.append(int(ext) if isinstance(ext, tirx.IntImm) else None)
        lead.append(extents)
    n = 0
    while all(n < len(e) for e in lead) and lead[0][n] is not None and all(e[n] == lead[0][n] for e in lead):
        n += 1
    return n


def _is_row_reduction(block) -> bool:
    """A reduction over the last axis of what it reads (softmax, layer norm rows), not a
    window (conv, pool: an output axis also moves along the reduced one)."""
    reduce = [iv.var for iv in block.iter_vars if int(iv.iter_type) != 0]
    spatial = [iv.var for iv in block.iter_vars if int(iv.iter_type) == 0]
    rows = False
    for r in block.reads:
        if r.source.same_as(block.writes[0].source) or not r.region:
            continue
        for dim in r.region:
            if any(_has(v, dim.min) for v in reduce) and any(_has(v, dim.min) for v in spatial):
                return False  # a sliding window
        last = r.region[-1].min
        rows = rows or any(_has(v, last) for v in reduce)
    return rows


class PartialReductions(_CPURule):
    """lower_math._interleaved's kernels: each row's sum (or max) as `lanes` interleaved
    partials, their total, and a tail. Rows parallel, every stage computed per row, the
    partials' lanes vectorized with the row's elements streaming through them. The other
    rules tiled the partials alone and left the total a serial loop over every row after
    the parallel one: 200 rows of 16 dependent float64 adds on PP-OCR cls's squeeze-excite
    sums, more than the partials themselves."""

    name = "partial-reductions"

    def schedule(self, sch, target) -> bool:
        blocks = _root_blocks(sch)
        names = [sch.get(b).name_hint for b in blocks]
        if len(blocks) < 2 or not names[0].startswith("partial_") or not names[1].endswith("_of_partials"):
            return False
        part, last = blocks[0], blocks[-1]
        loops = sch.get_loops(last)
        if len(loops) < 1 or not _trivial_binding(sch, last, loops):
            return False
        rows = loops[0]
        work = _work(sch, sch.get_loops(part))
        if work >= self.min_work and _extent(sch, rows) != 1:
            sch.parallel(rows)
        for b in reversed(blocks[:-1]):
            sch.compute_at(b, rows, preserve_unit_loops=True)
        lane, k = sch.get_loops(part)[-2:]  # under the row: lanes, then the row's groups
        sch.reorder(k, lane)
        sch.vectorize(lane)
        sch.decompose_reduction(part, k)  # the init's copy of the lane loop stays vectorized
        return True


class LoopNests(_CPURule):
    """Anything else, block by block: parallel outer loops, vectorized inner loop."""

    name = "loop-nests"

    def schedule(self, sch, target) -> bool:
        _schedule_rest(sch, target, self.min_work)
        return True


def cpu_rules(target=None, parallel_min_work: Optional[int] = None) -> List[dlight.ScheduleRule]:
    """The generic CPU rules, in the order they are tried. `parallel_min_work`: the loop
    iterations below which a kernel stays single-threaded (a huge value: no threads)."""
    return [rule(parallel_min_work) for rule in (PartialReductions, TiledReduction, RowReduction, LoopNests)]
