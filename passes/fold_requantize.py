"""fold-requantize: remove the float boundaries between integer layers.

Three local rewrites, repeated to a fixed point:
  1. dequantize → quantize with equal params cancels; with different params it
     becomes one integer `requantize` (multiplier/shift from the scale ratio);
  2. a range-preserving op (reshape, transpose, maxpool, concat, slice, pad,
     nearest resize, ...) reading dequantized values with one shared set of params
     runs on the integers instead: op(dequantize(q)) → dequantize(op(q));
  3. relu / clip of a dequantized value becomes an exact identity requantize
     (multiplier 2^30, shift 1) whose clamp is the activation;
  4. a quantize of a range-preserving op's float output moves above the op:
     quantize(op(x, y)) → op(quantize(x), quantize(y)), same params. Data movement
     commutes with an elementwise map and max with a monotone one, so the integers
     are the same (NaN aside: it quantizes to the zero point before a max pool, after
     it otherwise). Only where the op's output is no smaller than its inputs (an
     upsampling, a concat, a pad, a transpose), so no more values are converted than
     before. The op then moves bytes, not floats, and a quantize that reaches
     a dequantize cancels by rule 1 (a resize → concat → quantize of float branches:
     the upsampling runs on uint8).
After it, conv → relu → maxpool → conv is integer end to end.

Before: %a = qcc.dequantize(%q) {scale=[0.1], zero_point=[3]}
        %p = qcc.max_pool(%a) {...}
        %b = qcc.quantize(%p) {scale=[0.1], zero_point=[3], dtype="u8"}
After:  %p = qcc.max_pool(%q) {...} : u8[...]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional

import numpy as np

from qcc.ir.graph import Graph, Node, Value
from qcc.ir.types import QuantParams, int_range
from qcc.ops.quant import quantize_multiplier
from qcc.pass_manager import PassContext
from qcc.passes_registry import Pass, register_pass
from qcc.rewrite import rewrite_to_fixpoint

# ops that commute with dequantize when all their activation operands share params
COMMUTES = frozenset({"reshape", "flatten", "transpose", "squeeze", "unsqueeze", "slice", "concat",
                      "max_pool", "global_max_pool", "pad", "resize", "depth_to_space", "split",
                      "expand", "tile", "gather"})
IDENTITY_M, IDENTITY_SHIFT = 1 << 30, 1  # real multiplier exactly 1.0


def _dq_params(v: Optional[Value]) -> Optional[QuantParams]:
    """Per-tensor params of a dequantize producing `v`."""
    if v is None or v.producer is None or v.producer.op != "dequantize":
        return None
    d = v.producer
    if d.attrs.get("axis", -1) != -1:
        return None
    return d.inputs[0].quant


def _dequantize_after(g: Graph, q: Value, after: Node, name: str) -> Value:
    p = q.quant
    dq = g.add_node("dequantize", [q], {"scale": list(p.scale), "zero_point": list(p.zero_point), "axis": -1},
                    names=[name], after=after)
    return dq.output


def _fold_pair(n: Node, g: Graph) -> bool:
    """quantize(dequantize(q)) -> q, or requantize(q)."""
    src = _dq_params(n.inputs[0])
    if src is None or n.attrs.get("axis", -1) != -1:
        return False
    q_in = n.inputs[0].producer.inputs[0]
    dst = n.output.quant
    if dst is None:
        return False
    if (src.scale, src.zero_point, src.dtype) == (dst.scale, dst.zero_point, dst.dtype):
        g.replace_value(n.output, q_in)
        return True
    m, s = quantize_multiplier(src.scale[0] / dst.scale[0])
    rq = g.add_node("requantize", [q_in], {"multiplier": [m], "shift": [s], "axis": -1,
                                           "input_zero_point": src.zero_point[0],
                                           "zero_point": dst.zero_point[0], "dtype": dst.dtype},
                    names=[n.output.name + ".rq"], before=n)
    rq.output.quant = dst
    g.replace_value(n.output, rq.output)
    return True


def _commute(n: Node, g: Graph) -> bool:
    """op(dequantize(q), ...) -> dequantize(op(q, ...)) for range-preserving ops."""
    if n.op not in COMMUTES or any(o.dtype != "f32" for o in n.outputs):
        return False
    acts = _activations(n)
    params = [_dq_params(n.inputs[i]) for i in acts]
    if not params or any(p is None for p in params) or len({(p.scale, p.zero_point, p.dtype) for p in params}) != 1:
        return False
    p = params[0]
    attrs = dict(n.attrs)
    if n.op == "resize" and attrs.get("mode", "nearest") != "nearest":
        return False
    if n.op == "pad":
        if attrs.get("mode", "constant") == "constant":
            qv = round(float(attrs.get("value", 0.0)) / p.scale[0]) + p.zero_point[0]
            lo, hi = int_range(p.dtype)
            if not lo <= qv <= hi:
                return False
            attrs["value"] = float(qv)
    ins = [v.producer.inputs[0] if i in acts else v for i, v in enumerate(n.inputs)]
    new = g.add_node(n.op, ins, attrs, names=[o.name + ".int" for o in n.outputs], before=n)
    for old, out in zip(n.outputs, new.outputs):
        out.quant = p
        g.replace_value(old, _dequantize_after(g, out, new, old.name + ".dq"))
    return True


def _activation(n: Node, g: Graph) -> bool:
    """relu/clip(dequantize(q)) -> dequantize(requantize{identity, clamp}(q))."""
    if n.op not in ("relu", "clip"):
        return False
    p = _dq_params(n.inputs[0])
    if p is None:
        return False
    lo_r = 0.0 if n.op == "relu" else float(n.attrs.get("min", -np.inf))
    hi_r = np.inf if n.op == "relu" else float(n.attrs.get("max", np.inf))
    qmin, qmax = int_range(p.dtype)
    z, s = p.zero_point[0], p.scale[0]
    lo = qmin if not np.isfinite(lo_r) else int(np.clip(np.ceil(lo_r / s - 1e-9) + z, qmin, qmax))
    hi = qmax if not np.isfinite(hi_r) else int(np.clip(np.floor(hi_r / s + 1e-9) + z, qmin, qmax))
    q_in = n.inputs[0].producer.inputs[0]
    rq = g.add_node("requantize", [q_in], {"multiplier": [IDENTITY_M], "shift": [IDENTITY_SHIFT], "axis": -1,
                                           "input_zero_point": z, "zero_point": z, "dtype": p.dtype,
                                           "clamp": [lo, hi]},
                    names=[n.output.name + ".int"], before=n)
    rq.output.quant = p
    g.replace_value(n.output, _dequantize_after(g, rq.output, rq, n.output.name + ".dq"))
    return True


def _merge_clamp(n: Node, g: Graph) -> bool:
    """requantize(identity-with-clamp(q)) -> requantize with the clamp moved after it.

    A requantize is monotonic, so B(clamp(x, lo, hi)) == clamp(B(x), B(lo), B(hi))."""
    a = n.inputs[0].producer
    if a is None or a.op != "requantize" or len(n.inputs[0].users()) != 1 or n.inputs[0] in g.outputs:
        return False
    if a.attrs["multiplier"] != [IDENTITY_M] or a.attrs["shift"] != [IDENTITY_SHIFT] \
            or a.attrs.get("input_zero_point", 0) != a.attrs.get("zero_point", 0) or n.attrs.get("axis", -1) != -1:
        return False
    if a.attrs.get("input_zero_point", 0) != n.attrs.get("input_zero_point", 0) and a.attrs.get("zero_point", 0) \
            != n.attrs.get("input_zero_point", 0):
        return False
    from qcc.ops.quant import requantize as rq_kernel

    attrs = n.opdef.with_defaults(n.attrs)
    lo_hi = a.attrs.get("clamp") or list(int_range(a.attrs["dtype"]))
    b_lo, b_hi = rq_kernel(np.array(lo_hi, np.int64), **attrs).tolist()
    old = attrs.get("clamp") or list(int_range(attrs["dtype"]))
    new_attrs = dict(n.attrs)
    new_attrs["clamp"] = [max(b_lo, old[0]), min(b_hi, old[1])]
    rq = g.add_node("requantize", [a.inputs[0]], new_attrs, names=[n.output.name + ".m"], before=n)
    rq.output.quant = n.output.quant
    g.replace_value(n.output, rq.output)
    return True


def _activations(n: Node) -> List[int]:
    """Input positions of a COMMUTES op that carry the tensor (not gather's indices)."""
    return [i for i, v in enumerate(n.inputs) if v is not None and not (n.op == "gather" and i == 1)]


def _hoist(n: Node, g: Graph) -> bool:
    """quantize(op(x, ...)) -> op(quantize(x), ...) for a range-preserving op (rule 4)."""
    src = n.inputs[0].producer
    if src is None or src.op not in COMMUTES or src.op == "split" or n.attrs.get("axis", -1) != -1:
        return False
    if len(n.inputs[0].users()) != 1 or n.inputs[0] in g.outputs or n.output.quant is None:
        return False
    acts = _activations(src)
    if not acts or any(src.inputs[i].dtype != "f32" for i in acts):
        return False
    if src.output.type.size < sum({src.inputs[i]: src.inputs[i].type.size for i in acts}.values()):
        return False  # a slice, pool or downsampling: quantizing its input would convert more values
    attrs = dict(src.attrs)
    if src.op == "resize" and attrs.get("mode", "nearest") != "nearest":
        return False
    q = n.output.quant
    if src.op == "pad" and attrs.get("mode", "constant") == "constant":
        from qcc.ops.quant import quantize as q_kernel

        attrs["value"] = float(q_kernel(np.float32(attrs.get("value", 0.0)).reshape(1), scale=q.scale,
                                        zero_point=q.zero_point, axis=-1, dtype=q.dtype)[0])
    qattrs = {"scale": list(q.scale), "zero_point": list(q.zero_point), "dtype": q.dtype, "axis": -1}
    quantized = {}
    for i in acts:
        v = src.inputs[i]
        if v not in quantized:
            qn = g.add_node("quantize", [v], qattrs, names=[f"{v.name}.q"], before=src)
            qn.output.quant = q
            quantized[v] = qn.output
    ins = [quantized[v] if i in acts else v for i, v in enumerate(src.inputs)]
    new = g.add_node(src.op, ins, attrs, names=[n.output.name + ".int"], before=n)
    new.output.quant = q
    g.replace_value(n.output, new.output)
    return True


# op -> rewrites anchored there, tried in order (see qcc.rewrite)
RULES = {
    "quantize": [_fold_pair, _hoist],
    "requantize": [_merge_clamp],
    **{op: [_commute] for op in COMMUTES},
    "relu": [_activation],
    "clip": [_activation],
}


@register_pass
@dataclass(frozen=True)
class FoldRequantize(Pass):
    """Cancel dequantize→quantize pairs, fold the rest into requantize, keep integers flowing."""

    name = "fold-requantize"
    max_iters: int = 16

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        return rewrite_to_fixpoint(graph, RULES, self.max_iters)
