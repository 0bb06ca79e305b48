"""promote-f16: a half-precision model computes in float32; its inputs and outputs keep their dtype.

Models exported in float16 (or bfloat16) for GPUs reach CPU deployments too. The
quantizing passes meet their float values where integer code starts and ends, and
`dequantize` yields float32: a float16 graph would need a cast at every such seam, and
the folds that cancel quantize/dequantize pairs would have to look through them. CPUs
compute half precision by widening to float32 anyway, so the quantizing pipelines widen
the whole graph once, up front: every half value becomes float32, half constants are
widened exactly, casts to half inside the graph become casts to float32, and the model's
interface is kept with one cast after each half input and one before each half output.
A float32 model is left untouched.

Before: graph @main(%x: f16[1,4]) { %y = qcc.relu(%x) : f16[1,4]; return %y }
After:  %x.f32 = qcc.cast(%x) {to="f32"} : f32[1,4]
        %y.f32 = qcc.relu(%x.f32) : f32[1,4]
        %y = qcc.cast(%y.f32) {to="f16"} : f16[1,4]
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qcc.ir.graph import Graph
from qcc.ir.types import TensorType
from qcc.pass_manager import PassContext
from qcc.passes_registry import Pass, register_pass

HALF = ("f16", "bf16")


@register_pass
@dataclass(frozen=True)
class PromoteF16(Pass):
    """Compute a float16/bfloat16 model in float32, keeping its input and output dtypes."""

    name = "promote-f16"

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        if not any(v.dtype in HALF for v in graph.values()):
            return False
        widened = {}
        for n in list(graph.nodes):
            for i, v in enumerate(n.inputs):
                if v is not None and v.is_const and v.dtype in HALF:
                    if id(v) not in widened:
                        widened[id(v)] = graph.add_const(v.name + ".f32", np.asarray(v.data, np.float32), "f32")
                    n.set_input(i, widened[id(v)])
            if n.op == "cast" and n.attrs.get("to") in HALF:
                n.attrs["to"] = "f32"
        outputs = [(k, v, v.dtype) for k, v in enumerate(graph.outputs) if v.dtype in HALF]
        for n in graph.nodes:
            for o in n.outputs:
                if o.dtype in HALF:
                    o.type = TensorType(o.shape, "f32")
        first = graph.nodes[0] if graph.nodes else None
        for x in graph.inputs:
            if x.dtype in HALF and x.uses:
                users = list(x.uses)
                c = graph.add_node("cast", [x], {"to": "f32"}, names=[x.name + ".f32"],
                                   types=[TensorType(x.shape, "f32")], before=first)
                for node, i in users:
                    node.set_input(i, c.output)
        for k, v, dtype in outputs:
            if v in graph.inputs and v.dtype == dtype:
                continue  # an input passed straight through keeps its dtype already
            name = v.name
            graph.rename(v, name + ".f32")
            c = graph.add_node("cast", [v], {"to": dtype}, names=[name], types=[TensorType(v.shape, dtype)])
            graph.outputs[k] = c.output
        graph.eliminate_dead_code()
        return True
