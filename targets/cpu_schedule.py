"""A minimal CPU schedule for fused kernels: inline the elementwise stages.

TVM's CPU pipeline fuses chains of ops into one PrimFunc (FuseOps + FuseTIR) but
leaves every stage as its own loop nest writing a full intermediate buffer: a
qconv -> requantize -> dequantize -> hard_swish -> quantize chain becomes ~30
loop nests and 30 temporary tensors, which LLVM then spends seconds optimising
and the CPU spends memory bandwidth on. `InlineElementwise()` compute-inlines
every injective stage that each consumer reads once into its (non-reduction)
consumers, so a fused kernel is its prologue (padding), its reduction and
(mostly) one epilogue loop nest. The arithmetic of each element is
unchanged (same operations, same order); only where intermediate values live
changes. A stage with several consumers is inlined (recomputed by each) only when
it is cheap (no transcendental call); a fenced float product (exact_fp.py) is never
inlined, so its consumers stay vectorizable.
"""
from __future__ import annotations

import re

import tvm
from tvm import s_tir, tirx

from .cpu_rules import has_root_block
from .exact_fp import FENCE

_EXPENSIVE = re.compile(r"T\.(exp|exp2|exp10|log|log2|log10|log1p|tanh|erf|sigmoid|pow|sqrt|rsqrt|sin|cos|"
                        r"tan|atan|asin|acos|sinh|cosh)\(")
# a stage with more selects than this (a concat of many inputs) is inlined only into a
# reader that reads it elementwise (see _inline_stages)
_MAX_SELECTS_INLINED = 8
_DECL = re.compile(r"^\s*[\w.]+ = T\.\w+\(")
# a stage whose kernel needs it as a buffer of its own carries this annotation (set to
# True) and is never inlined (x86_winograd's output stage: inlined, its interleaved
# columns kept the epilogue from running in vectors)
KEEP = "qcc_keep"


def _reads_in(sch, consumer, buffer_name: str) -> int:
    """How many times the consumer block's computation loads `buffer_name`."""
    text = "\n".join(line for line in str(sch.get(consumer).body).splitlines() if not _DECL.match(line))
    return len(re.findall(r"(?<![\w.])" + re.escape(buffer_name) + r"\[", text))


def _inline_stages(sch: s_tir.Schedule) -> bool:
    changed = False
    progress = True
    while progress:
        progress = False
        root = sch.get_sblock("root") if has_root_block(sch) else None
        blocks = sch.get_child_blocks(root) if root is not None else []
        for b in blocks:
            try:
                consumers = sch.get_consumers(b)
                block = sch.get(b)
            except Exception:  # noqa: BLE001 - schedule queries raise TVMError subclasses
                continue
            if not consumers or len(block.writes) != 1 or KEEP in block.annotations:
                continue  # an output stage, or one that asks to stay
            name = block.writes[0].source.name
            # never duplicate work: each consumer loads the stage once (a stage read twice
            # and inlined doubles, and chains of them blow up exponentially)
            if any(_reads_in(sch, c, name) != 1 for c in consumers):
                continue
            body = str(block.body)
            if len(consumers) > 1 and _EXPENSIVE.search(body):
                continue
            # a concat of many inputs is a chain of selects: an elementwise consumer's loops are
            # cut per source (cpu_rules.LoopNests) and the selects fold, but a consumer that
            # reshapes or transposes it would walk the whole chain for every element
            # (PP-OCRv2 rec's 160-input LSTM output concat inlined into a transpose: 200 us);
            # kept as its own loop nest, it is copied input by input
            if body.count("if_then_else") > _MAX_SELECTS_INLINED and \
                    not all(_reads_at_own_index(sch.get(c), name) for c in consumers):
                continue
            # a fenced product (exact_fp.py) keeps its own loop: LLVM does not vectorize
            # the fence, and inlined it would make the whole consumer loop scalar
            if FENCE in body:
                continue
            # keep padding (and other producers) of a reduction materialised: an
            # if_then_else in a conv's innermost loop costs more than the buffer
            if any(_is_reduction(sch.get(c)) for c in consumers):
                continue
            try:
                sch.compute_inline(b)
            except Exception:  # noqa: BLE001 - not inlinable (reduction, non-injective...)
                continue
            # the other blocks' handles stay valid: go on down the list rather than start
            # over (starting over after each inline made this quadratic in the stages); a
            # stage that became inlinable through a later inline is caught by the next sweep
            changed = progress = True
    return changed


def _reads_at_own_index(block, buffer_name: str) -> bool:
    """The block reads `buffer_name` only at its own iteration variables, in order (an
    elementwise consumer), not through a reshape's or transpose's index arithmetic."""
    ivs = [iv.var for iv in block.iter_vars]
    regions = [r.region for r in block.reads if r.source.name == buffer_name]
    return bool(regions) and all(
        len(rg) == len(ivs) and all(int(getattr(d.extent, "value", -1)) == 1 and d.min.same_as(v)
                                    for d, v in zip(rg, ivs)) for rg in regions)


def _is_reduction(block) -> bool:
    return any(int(iv.iter_type) != 0 for iv in block.iter_vars)  # 0 = data-parallel


def InlineElementwise() -> tvm.transform.Pass:  # noqa: N802 - a TVM pass
    @tvm.transform.module_pass(opt_level=0, name="qcc.InlineElementwise")
    def transform(mod, ctx):
        updates = {}
        for gv, func in mod.functions_items():
            if not isinstance(func, tirx.PrimFunc):
                continue
            if func.attrs is not None and "tirx.is_scheduled" in func.attrs:
                continue
            sch = s_tir.Schedule(func)
            if _inline_stages(sch):
                updates[gv] = sch.mod["main"]
        if not updates:
            return mod
        funcs = {gv: updates.get(gv, f) for gv, f in mod.functions_items()}
        return tvm.IRModule(funcs, attrs=mod.attrs, global_infos=mod.global_infos)

    return transform
