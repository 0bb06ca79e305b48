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
- `relax_pipeline(target)`: the Relax pipeline handed to tvm.compile.

Strategies are picked by preset family (`strategy_for(preset)`); a later
stage registers its own with `register_strategy("x86", MyStrategy)`.
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

    # --- build-time hooks ----------------------------------------------------------
    def prepare(self, mod, target):
        """Relax-level rewrites before compilation; identity by default."""
        return mod

    def relax_pipeline(self, target):
        """The `relax_pipeline` argument of tvm.compile for this target."""
        return "default"

    def tir_pipeline(self, target):
        return "default"

    def __repr__(self) -> str:
        preset = getattr(self.preset, "name", None)
        return f"{type(self).__name__}(preset={preset!r})"


class FusedCPUStrategy(LoweringStrategy):
    """Plain lowering, but compiled with the CPU backend pipeline (FuseOps + FuseTIR):
    elementwise epilogues are fused into their producers, fewer kernels and buffers."""

    name = "cpu-fused"

    def relax_pipeline(self, target):
        from tvm import relax

        return relax.backend.cpu_generic.get_default_pipeline(target)


class CUDAStrategy(LoweringStrategy):
    """CUDA: TVM's GPU default pipeline (dlight thread binding) via `"default"`."""

    name = "cuda"


_BY_FAMILY: Dict[str, Type[LoweringStrategy]] = {
    "x86": FusedCPUStrategy,
    "arm": FusedCPUStrategy,
    "cuda": CUDAStrategy,
}


def register_strategy(family: str, cls: Type[LoweringStrategy]) -> None:
    """Make `cls` the strategy for every preset of `family`."""
    _BY_FAMILY[family] = cls


def strategy_for(preset) -> LoweringStrategy:
    """The strategy for a preset (or None: the plain strategy)."""
    if preset is None:
        return LoweringStrategy()
    cls = _BY_FAMILY.get(preset.family, LoweringStrategy)
    return cls(preset)
