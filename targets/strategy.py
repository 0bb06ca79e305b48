"""Per-target lowering strategies: where layout and schedule choices plug in.

The op lowerings in `lower_*.py` produce plain, layout-faithful Relax (NCHW,
OIHW, one relax op per qcc op). A `LoweringStrategy` is the single place a
target family changes that, without touching every op lowering:

- `lowering_for(op)`: replace the lowering of one op (e.g. an int8 conv that
  packs its weights to [O/16, I/4, kh, kw, 16, 4] and calls a tensorized TIR
  kernel). Return None to use the generic table.
- `conv_layout(node)`: the (data, kernel) layouts the generic conv lowering
  emits; NHWC/OHWI makes untuned int8 code vectorize (see the TVM notes).
- `prepare(mod, target)`: Relax-to-Relax rewrites after lowering and before
  tvm.compile (ConvertLayout, weight pre-packing, applying a tuning database).
- `relax_pipeline(target)`: the Relax pipeline handed to tvm.compile
  (`base_relax_pipeline` preceded by the FMA fence of `exact_fp.py`).
- `schedule_rules(target)`: dlight-style `ScheduleRule`s tried in order on every
  fused kernel (after FuseOps/FuseTIR and the elementwise inlining of
  `cpu_schedule.py`); the first that returns a schedule wins. This is where a
  target family's own kernels (VNNI int8 conv, sdot, parallel/vectorized
  fallbacks) plug in, search-free.

Strategies are picked by preset family (`strategy_for(preset)`). A family's
strategy lives in its own module (`_FAMILY_MODULES`), imported on first use,
which calls `register_strategy(family, cls)`.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple, Type

LowerFn = Callable  # (ctx, node, inputs, attrs) -> relax.Expr | list[relax.Expr]


class LoweringStrategy:
    """The plain strategy: generic lowering, NC... layouts, TVM's default pipeline."""

    name = "plain"

    def __init__(self, preset=None):
        self.preset = preset
        self.overrides: Dict[str, LowerFn] = {}

    # --- lowering-time hooks -------------------------------------------------------
    def lowering_for(self, op: str) -> Optional[LowerFn]:
        return self.overrides.get(op)

    def conv_layout(self, node) -> Tuple[str, str]:
        """(data_layout, kernel_layout) for the generic conv lowering; rank-generic names."""
        spatial = "DHW"[3 - (len(node.inputs[0].shape) - 2):]
        return "NC" + spatial, "OI" + spatial

    # long sums (global pooling) as this many interleaved partial sums (0: one running sum)
    partial_sums = 0

    def conv_kernel(self, cx, node, x, w, attrs, out_dtype):
        """A target's own kernel for the convolution conv_nd is about to emit (NC... in and
        out, no bias), or None for the generic conv: the hook float convs take."""
        return None

    def matmul_kernel(self, cx, a, b, out_dtype):
        """A target's own kernel for a @ b -- b a constant 2-D matrix (float32, or -O1's int8
        weights, which the kernel converts) or a value computed at run time --, or None for
        R.matmul: the hook float matmuls and gemms take."""
        return None

    # --- build-time hooks ----------------------------------------------------------
    def prepare(self, mod, target):
        """Relax-level rewrites before compilation; identity by default."""
        return mod

    # Float multiplies are fenced against FMA contraction (targets/exact_fp.py), so the
    # float math between integer segments rounds exactly as the reference does.
    exact_float_multiply = True

    # TIR module passes run on the fused kernels just before the schedule rules (CPU
    # pipeline): e.g. tune.TuningPass, which schedules the kernels its database has a tuned
    # record for and marks them `tirx.is_scheduled`, so the rules leave them alone.
    kernel_passes: tuple = ()

    def base_relax_pipeline(self, target):
        """The Relax pipeline proper (a name or a pass); subclasses override this."""
        return "default"

    def relax_pipeline(self, target):
        """The `relax_pipeline` argument of tvm.compile for this target: the base pipeline,
        preceded by ExactFloatMultiply when `exact_float_multiply`."""
        base = self.base_relax_pipeline(target)
        if not self.exact_float_multiply:
            return base
        import tvm
        from tvm import relax

        from .exact_fp import ExactFloatMultiply

        if isinstance(base, str):  # resolved as tvm.compile resolves it
            if base == "default" and "gpu" in target.keys:
                base = relax.get_default_pipeline(target)
            else:
                base = relax.get_pipeline(base)
        return tvm.transform.Sequential([ExactFloatMultiply(target), base], name="qcc.relax_pipeline")

    def tir_pipeline(self, target):
        return "default"

    def schedule_rules(self, target) -> list:
        """dlight `ScheduleRule`s applied to each fused kernel, first match wins; none here."""
        return []

    def __repr__(self) -> str:
        preset = getattr(self.preset, "name", None)
        return f"{type(self).__name__}(preset={preset!r})"


class FusedCPUStrategy(LoweringStrategy):
    """Plain lowering, but compiled with the CPU backend pipeline (FuseOps + FuseTIR):
    elementwise epilogues are fused into their producers, fewer kernels and buffers;
    then the stages of each fused kernel are inlined into one loop nest, and every kernel
    gets a search-free schedule (cpu_rules.py: tiled + vectorized + parallel)."""

    name = "cpu-fused"

    # inline the elementwise stages of every fused kernel (targets/cpu_schedule.py)
    inline_elementwise = True
    # long sums (global pooling) keep this many partial sums, which vectorize (lower_math)
    partial_sums = 16
    # quantize divides by its scale as a reciprocal multiply corrected by two FMAs, the
    # same correctly rounded quotient at a fraction of a vector division (lower_quant._quotient)
    fma_quotient = True

    def tir_pipeline(self, target):
        """TVM's default TIR pipeline plus cpu_tir_passes.py: scratch buffers (the kernels'
        register tiles and per-block sums) kept on the stack, codegen-unknown pragmas dropped."""
        from .cpu_tir_passes import register

        return register()

    def base_relax_pipeline(self, target):
        import tvm
        from tvm import relax
        from tvm.relax.backend.cpu_generic import pipeline as cpu

        if not self.inline_elementwise:
            return cpu.get_default_pipeline(target)
        from .cpu_schedule import InlineElementwise

        rules = self.schedule_rules(target)
        schedule = []
        if rules:
            from tvm.s_tir import dlight

            schedule = [dlight.ApplyDefaultSchedule(*rules)]

        @tvm.transform.module_pass(opt_level=0, name="qcc.cpu_pipeline")
        def _pipeline(mod, _ctx):
            with target:
                return tvm.transform.Sequential(
                    cpu.library_dispatch_passes(target) + cpu.legalize_passes(target) + [InlineElementwise()]
                    + list(self.kernel_passes) + schedule
                    + cpu.dataflow_lower_passes(target) + cpu.finalize_passes(target))(mod)

        return _pipeline

    # kernels with fewer loop iterations run single-threaded (None: cpu_rules' default;
    # a huge value: no parallel loops at all, e.g. for a machine whose cores are shared)
    parallel_min_work = None

    def schedule_rules(self, target) -> list:
        """The generic search-free CPU schedules of cpu_rules.py (tiled conv/matmul/pool,
        row reductions, parallel + vectorized loop nests); family strategies put their own
        kernels' rules before these."""
        from .cpu_rules import cpu_rules

        return cpu_rules(target, self.parallel_min_work)


class CUDAStrategy(LoweringStrategy):
    """CUDA: TVM's GPU default pipeline (dlight thread binding) via `"default"`."""

    name = "cuda"


_BY_FAMILY: Dict[str, Type[LoweringStrategy]] = {
    "x86": FusedCPUStrategy,
    "arm": FusedCPUStrategy,
    "cuda": CUDAStrategy,
}


# family -> module of this package that registers the family's own strategy on import
_FAMILY_MODULES: Dict[str, str] = {"x86": "x86_int8", "arm": "arm_int8", "cuda": "cuda_int8"}


def _import_family(family: str) -> None:
    import importlib
    import importlib.util

    name = _FAMILY_MODULES.pop(family, None)
    if name and importlib.util.find_spec(f"{__package__}.{name}") is not None:
        importlib.import_module(f"{__package__}.{name}")


def register_strategy(family: str, cls: Type[LoweringStrategy]) -> None:
    """Make `cls` the strategy for every preset of `family`."""
    _BY_FAMILY[family] = cls


def strategy_for(preset) -> LoweringStrategy:
    """The strategy for a preset (or None: the plain strategy)."""
    if preset is None:
        return LoweringStrategy()
    _import_family(preset.family)
    cls = _BY_FAMILY.get(preset.family, LoweringStrategy)
    return cls(preset)
