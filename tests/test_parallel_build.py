"""targets/parallel_build.py: the kernels compiled as several LLVM modules give the same
library as one module would, and it loads and runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import tvm
from tvm import relax

import qcc
from qcc.targets import get_target, parallel_build
from qcc.targets.lower import lower_graph
from qcc.targets.strategy import strategy_for

ROOT = Path(__file__).resolve().parents[1]


def _graph():
    return qcc.import_onnx(ROOT / "examples/tiny_cnn.onnx", {"input": [1, 3, 32, 32]})


def test_split_build_matches_one_module_bit_for_bit(tmp_path):
    preset = get_target("x86-avx2")
    graph = _graph()
    strategy = strategy_for(preset)
    target = preset.target()
    mod = strategy.prepare(lower_graph(graph, strategy), target)
    whole = tvm.compile(mod, target=target, relax_pipeline=strategy.relax_pipeline(target),
                        tir_pipeline=strategy.tir_pipeline(target))
    split = parallel_build.compile_module(mod, target, strategy.relax_pipeline(target), strategy.tir_pipeline(target))
    assert len(split.mod._collect_dso_modules()) == parallel_build.PARTS
    assert len(whole.mod._collect_dso_modules()) == 1
    paths = {}
    for name, ex in (("whole", whole), ("split", split)):
        paths[name] = tmp_path / f"{name}.so"
        parallel_build.export_library(ex, str(paths[name]))
    x = np.load(ROOT / "examples/tiny_cnn_input.npz")["input"]

    def run(path):
        vm = relax.VirtualMachine(tvm.runtime.load_module(str(path)), tvm.cpu())
        return vm["main"](tvm.runtime.tensor(x))[0].numpy()

    ref = run(paths["whole"])
    assert ref.shape == (1, 10) and np.isfinite(ref).all()
    assert np.array_equal(run(paths["split"]), ref)
