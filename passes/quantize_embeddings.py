"""quantize-embeddings: tables read by `gather` (embeddings) stored as int8, one scale per row.

A transformer's token embedding is often its largest constant: all-MiniLM-L6-v2's word
table is 30522 x 384 floats, 47 of its 90 MB. No conv/gemm/matmul reads it, so the
weight quantization of the other passes leaves it float, and the artifact stays large
(onnxruntime's quantize_static does quantize it). Each gathered slice is one row of the
table, so each row gets its own symmetric int8 scale (a rare token's row is not crushed
by a frequent one's range), and the row's scale is gathered with the row:

Before: %E = const @E : f32[30522,384]
        %e = qcc.gather(%E, %ids) {axis=0} : f32[1,32,384]
After:  %E.q = const @E.q : i8[30522,384] !q<i8 axis=0 scale=@E.q.scale>
        %E.scale = const @E.scale : f32[30522,1]
        %e.q = qcc.gather(%E.q, %ids) {axis=0} : i8[1,32,384]
        %e.s = qcc.gather(%E.scale, %ids) {axis=0} : f32[1,32,1]
        %e.f = qcc.cast(%e.q) {to="f32"} : f32[1,32,384]
        %e = qcc.mul(%e.f, %e.s) : f32[1,32,384]

The lookup stays a copy (a quarter of the bytes), the multiply is one elementwise op,
and every value is exactly q * scale in float32, in the interpreter as in compiled code.
Tables under `min-bytes` stay float: two more ops to save a few kB (BERT's token-type
table is 2 x 384); so does a table holding an inf or a NaN. The report lists each table
with its bytes and the SQNR of its int8 form (`embeddings`). A gather with constant
indices was folded by canonicalize already.
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
from qcc.report import signal_noise, sqnr_db


@register_pass
@dataclass(frozen=True)
class QuantizeEmbeddings(Pass):
    """Store the constant tables `gather` reads as int8 rows, each with its own scale."""

    name = "quantize-embeddings"
    min_bytes: int = 1 << 16  # smaller float tables stay float
    exclude: str = ""  # 'glob;glob' of table names to keep float

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        keep = [p for p in self.exclude.split(";") if p]
        changed = False
        for n in list(graph.nodes):
            if n.op != "gather":
                continue
            table, ids = n.inputs
            if (not table.is_const or ids.is_const or table.dtype != "f32" or table.type.rank < 2
                    or table.type.nbytes < self.min_bytes
                    or any(fnmatch.fnmatchcase(table.name, p) for p in keep)):
                continue
            axis = n.attrs.get("axis", 0) % table.type.rank
            data = np.asarray(table.data, np.float32)
            if not np.isfinite(data).all():  # no int8 grid holds an inf: the table stays as it is
                continue
            q, scale = quantize_weights(data, axis)
            shape = [1] * data.ndim
            shape[axis] = -1
            scales = scale.astype(np.float32).reshape(shape)
            out = n.output
            name = out.name
            graph.rename(out, graph.unique_name(name + ".float"))  # the mul that replaces it takes its name
            tq = graph.add_const(table.name + ".q", q, "i8", QuantParams(8, True, scale, 0, axis=axis))
            ts = graph.add_const(table.name + ".scale", scales)
            gq = graph.add_node("gather", [tq, ids], {"axis": axis}, names=[name + ".q"], before=n)
            gs = graph.add_node("gather", [ts, ids], {"axis": axis}, names=[name + ".s"], before=n)
            gf = graph.add_node("cast", [gq.output], {"to": "f32"}, names=[name + ".f"], before=n)
            mul = graph.add_node("mul", [gf.output, gs.output], names=[name], before=n)
            graph.replace_value(out, mul.output)
            graph.remove_node(n)
            ctx.report.setdefault("embeddings", {})[table.name] = {
                "shape": list(data.shape), "axis": axis, "bytes_float": int(data.nbytes),
                "bytes_int8": int(q.nbytes + scales.nbytes),
                "sqnr_db": sqnr_db(*signal_noise(data, q * scales))}
            changed = True
        if changed:
            graph.eliminate_dead_code()
        return changed
