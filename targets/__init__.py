"""qcc.targets: TVM back ends (presets, Graph -> Relax lowering, build/export/load).

Presets need no TVM; everything else imports it on first use:

    from qcc.targets import get_target, build, load
    path = build(graph, "x86-avx512", "out/")
    outputs = load(path).run({"x": x})
"""
from .presets import (TargetPreset, get_target, host_preset, list_targets, register_target,  # noqa: F401
                      target_names)

_LAZY = {
    "lower_graph": "lower", "lower_node": "lower", "LowerContext": "lower", "LoweringError": "lower",
    "lowering": "lower", "supported_ops": "lower", "tvm_dtype": "lower",
    "LoweringStrategy": "strategy", "FusedCPUStrategy": "strategy", "CUDAStrategy": "strategy",
    "strategy_for": "strategy", "register_strategy": "strategy",
    "build": "builder", "load": "builder", "compile_graph": "builder", "lower_for": "builder",
    "Runner": "builder", "configure_threads": "builder", "runner_from_executable": "builder",
    "llvm_source": "parallel_build",
}

__all__ = ["TargetPreset", "get_target", "list_targets", "target_names", "host_preset", "register_target",
           *_LAZY]


def __getattr__(name):
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)
