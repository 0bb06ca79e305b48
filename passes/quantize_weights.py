"""quantize-weights: int8 weights, float compute (-O1: no calibration data needed).

Each conv/gemm/matmul weight becomes a symmetric per-channel int8 constant read
through a `dequantize`, so the artifact stores a quarter of the bytes while
activations stay float. `canonicalize` never folds a dequantize of a constant,
or this pass would be undone.

Before: %w = const @w : f32[8,3,3,3]         %y = qcc.conv(%x, %w) {...}
After:  %w.q = const @w.q : i8[8,3,3,3] !q<i8 axis=0 scale=[...]>
        %w.dq = qcc.dequantize(%w.q) {axis=0, scale=[...], zero_point=[...]} : f32[8,3,3,3]
        %y = qcc.conv(%x, %w.dq) {...}
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import numpy as np

from qcc.ir.graph import Graph
from qcc.ir.types import QuantParams
from qcc.pass_manager import PassContext
from qcc.passes_registry import Pass, register_pass
from qcc.quantization import quantize_weights


def _weight_axis(node) -> int:
    """The output-channel axis of the weight operand."""
    if node.op == "conv":
        return 0
    if node.op == "gemm":
        return 0 if node.attrs.get("trans_b", 0) else 1
    return node.inputs[1].type.rank - 1  # matmul: columns


@register_pass
@dataclass(frozen=True)
class QuantizeWeights(Pass):
    """Store conv/gemm/matmul weights as per-channel int8; compute stays float."""

    name = "quantize-weights"
    exclude: str = ""  # 'glob;glob' of layer names to keep float

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        keep = [p for p in self.exclude.split(";") if p]
        changed = False
        for n in graph.nodes:
            if n.op not in ("conv", "gemm", "matmul") or len(n.inputs) < 2:
                continue
            w = n.inputs[1]
            if w is None or not w.is_const or w.dtype != "f32" or w.type.rank < 2:
                continue
            if any(fnmatch.fnmatchcase(n.name, p) for p in keep):
                continue
            axis = _weight_axis(n)
            wq, ws = quantize_weights(w.data, axis)
            q = QuantParams(8, True, ws, 0, axis=axis)
            wc = graph.add_const(w.name + ".q", wq, "i8", q)
            dq = graph.add_node("dequantize", [wc], {"scale": [float(s) for s in ws],
                                                     "zero_point": [0] * ws.size, "axis": axis},
                                names=[w.name + ".dq"], before=n)
            n.set_input(1, dq.output)
            ctx.report.setdefault("layers_quantized", {})[n.name] = {"precision": "int8-weights"}
            changed = True
        graph.eliminate_dead_code()
        return changed
