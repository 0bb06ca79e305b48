"""canonicalize: fold what is known at compile time and drop what does nothing.

Every later pass pattern-matches, and patterns are simpler when constants are
folded, no-op reshapes/casts/transposes are gone, dead values are removed and an op
computed twice from the same inputs is computed once.

Before:                                        After:
  %s = qcc.reshape(%x) {shape=[1,8]}             %y = qcc.relu(%x)
  %t = qcc.reshape(%s) {shape=[1,2,4]}  ->       (with %x: f32[1,2,4])
  %y = qcc.relu(%t)
  %w2 = qcc.transpose(%w) {perm=[1,0]}           %w2 = const ... (folded)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import numpy as np

from qcc.ir.graph import Graph, Node, Value
from qcc.ir.opdef import opaque_runner
from qcc.ir.printer import node_signature
from qcc.pass_manager import PassContext
from qcc.passes_registry import Pass, register_pass
from qcc.rewrite import rewrite_to_fixpoint

# Folding a constant bigger than this would bloat the artifact (e.g. expand to a huge
# shape); such nodes are left for the back end to compute at run time.
MAX_FOLD_ELEMENTS = 1 << 24
# dequantize of an int8 constant is how weights stay small; folding it would undo that
NEVER_FOLD = frozenset({"dequantize", "observe"})


def _is_noop(node: Node) -> bool:
    """True when the node returns its (first) input unchanged."""
    x = node.inputs[0] if node.inputs else None
    if x is None or len(node.outputs) != 1 or node.output.type != x.type:
        return False
    a = node.attrs
    op = node.op
    if op in ("reshape", "expand", "flatten", "squeeze", "unsqueeze", "cast", "tile", "concat"):
        return len(node.inputs) == 1
    if op == "transpose":
        return list(a.get("perm", [])) == sorted(a.get("perm", []))
    if op == "slice":
        return all(s == 1 for s in a.get("steps", []))  # same type and unit steps: whole tensor
    if op == "pad":
        return not any(a.get("pads", []))
    if op == "resize":
        return True  # same output shape: every mode maps pixels onto themselves
    return False


def _compose_reshape(node: Node, g: Graph) -> Optional[Value]:
    """reshape(reshape(x)) -> reshape(x): only the last shape matters."""
    src = node.inputs[0]
    if src is None or src.producer is None or src.producer.op not in ("reshape", "flatten", "squeeze", "unsqueeze"):
        return None
    inner = src.producer.inputs[0]
    new = g.add_node("reshape", [inner], {"shape": list(node.output.shape)}, before=node,
                     names=[node.output.name + ".r"], types=[node.output.type])
    return new.output


def _compose_transpose(node: Node, g: Graph) -> Optional[Value]:
    src = node.inputs[0]
    if src is None or src.producer is None or src.producer.op != "transpose":
        return None
    p1, p2 = src.producer.attrs["perm"], node.attrs["perm"]
    perm = [p1[i] for i in p2]
    new = g.add_node("transpose", [src.producer.inputs[0]], {"perm": perm}, before=node,
                     names=[node.output.name + ".t"], types=[node.output.type])
    return new.output


# (op -> rewrite returning the value that replaces the node's output, or None)
REWRITES: Dict[str, Callable[[Node, Graph], Optional[Value]]] = {
    "reshape": _compose_reshape,
    "transpose": _compose_transpose,
}


def _live_taps(n_in: int, n_out: int, k: int, stride: int, dil: int, pad: int):
    """(first, last) kernel tap along one axis that reads the input, not padding, for
    some output position; None if none does."""
    live = [t for t in range(k) if any(0 <= o * stride + t * dil - pad < n_in for o in range(n_out))]
    return (live[0], live[-1]) if live else None


def _crop_dead_taps(node: Node, g: Graph) -> bool:
    """A conv whose kernel rows or columns read only padding, at every output position,
    loses them: a 5x5 depthwise conv over a 2-row feature map (late layers of a network
    fed text lines) multiplies zeros in 2 of its 5 rows. The taps go from the constant
    weights and the pads shrink by as much, so every output reads the same inputs with
    the same weights, minus products that were exactly zero: integer results are
    unchanged bit for bit, float ones gain only summation order."""
    x, w = node.inputs[0], node.inputs[1]
    if x is None or w is None or not w.is_const:
        return False
    a = node.attrs
    r = len(w.shape) - 2
    shape_in, shape_out = x.shape[2:], node.output.shape[2:]
    strides, dils = a.get("strides") or [1] * r, a.get("dilations") or [1] * r
    pads = list(a.get("pads") or [0] * 2 * r)
    if r < 1 or len(shape_in) != r or len(pads) != 2 * r:
        return False
    crop, new_pads = [], list(pads)
    for i in range(r):
        k, s, d = w.shape[2 + i], strides[i], dils[i]
        live = _live_taps(shape_in[i], shape_out[i], k, s, d, pads[i])
        if live is None:
            return False
        t0, t1 = live
        k2 = t1 - t0 + 1
        new_pads[i] = pads[i] - t0 * d
        new_pads[r + i] = max(0, (shape_out[i] - 1) * s + (k2 - 1) * d + 1 - shape_in[i] - new_pads[i])
        if new_pads[i] < 0 or (shape_in[i] + new_pads[i] + new_pads[r + i] - (k2 - 1) * d - 1) // s + 1 \
                != shape_out[i]:
            return False
        crop.append(slice(t0, t1 + 1))
    if all(c.stop - c.start == w.shape[2 + i] for i, c in enumerate(crop)):
        return False
    data = np.ascontiguousarray(w.data[(slice(None), slice(None), *crop)])
    node.set_input(1, g.add_const(w.name + ".live", data, w.dtype, w.quant))
    node.attrs["pads"] = new_pads
    return True


def _fold(node: Node, g: Graph) -> bool:
    """Evaluate a node whose operands are all constants; True if it was replaced."""
    if not node.inputs or any(v is None or not v.is_const for v in node.inputs if v is not None):
        return False
    if any(v is None for v in node.inputs) and node.opdef.opaque:
        return False
    if sum(o.type.size for o in node.outputs) > MAX_FOLD_ELEMENTS:
        return False
    if node.op in NEVER_FOLD:
        return False
    d = node.opdef
    args = [None if v is None else v.data for v in node.inputs]
    if d.opaque:
        runner = opaque_runner(node.op)
        if runner is None:
            return False
        outs = runner(node, args)
    else:
        outs = d.kernel(*args, **d.with_defaults(node.attrs))
    if not isinstance(outs, (tuple, list)):
        outs = [outs]
    for o, arr in zip(node.outputs, outs):
        arr = np.asarray(arr).astype(o.type.np_dtype, copy=False).reshape(o.shape)
        c = g.add_const(o.name + ".folded", arr, o.dtype, o.quant)
        g.replace_value(o, c)
    g.remove_node(node)
    return True


@register_pass
@dataclass(frozen=True)
class Canonicalize(Pass):
    """Fold constants and shape arithmetic, drop no-op ops, remove dead code."""

    name = "canonicalize"
    max_iters: int = 8
    fold: bool = True

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        rules = {"*": ([_fold] if self.fold else []) + [_drop_noop],
                 **{op: [_as_rule(rw)] for op, rw in REWRITES.items()},
                 "conv": [_crop_dead_taps], "qconv": [_crop_dead_taps]}
        changed = rewrite_to_fixpoint(graph, rules, self.max_iters)
        if merge_duplicates(graph):
            graph.eliminate_dead_code()
            changed = True
        _keep_output_names(graph)
        return changed


# observers collect statistics per node: two on one value are two reports, not one computation
_NOT_MERGED = frozenset({"observe"})


def merge_duplicates(g: Graph) -> bool:
    """Common subexpressions: a node with the same op, inputs, attributes and output types
    (quantization included) as an earlier one reads the earlier one's outputs instead.

    The quantize pass writes one quantize per consumer of a float value, so a value read by
    two integer ops (an LSTM's h_t: the next step's matmul and the layer's output) got two
    identical quantizes; in the back end neither can join the kernel that makes h_t (it has
    two readers), and each costs a kernel launch per step. True if anything merged."""
    seen: Dict[tuple, Node] = {}
    merged = False
    for n in g.nodes:
        if n.op in _NOT_MERGED or not n.outputs or n.opdef.opaque or any(o in g.outputs for o in n.outputs):
            continue
        key = (tuple(None if v is None else id(v) for v in n.inputs), node_signature(n))
        first = seen.setdefault(key, n)
        if first is not n:
            for old, new in zip(n.outputs, first.outputs):
                g.replace_value(old, new)
            merged = True
    return merged


def _drop_noop(node: Node, g: Graph) -> bool:
    if _is_noop(node) and node.output.quant == node.inputs[0].quant:
        return _bypass(node, g)
    return False


def _as_rule(rw: Callable[[Node, Graph], Optional[Value]]):
    """A rewrite returning the replacement value, as a rule returning whether it fired."""
    def rule(node: Node, g: Graph) -> bool:
        new = rw(node, g)
        if new is None:
            return False
        new.quant = node.output.quant
        g.replace_value(node.output, new)
        return True

    rule.__name__ = rw.__name__
    return rule


def _bypass(node: Node, g: Graph) -> bool:
    """Replace a no-op by its input, keeping a graph output's name on the graph output."""
    out, src = node.output, node.inputs[0]
    if out not in g.outputs:
        g.replace_value(out, src)
        return True
    if src.producer is None or src in g.outputs:
        return False  # the output would become an input's alias: keep the op
    name = out.name
    g.replace_value(out, src)
    g.remove_node(node)
    g.rename(src, name)
    return True


def _keep_output_names(g: Graph) -> None:
    """A rewrite may leave a graph output under an internal name (`y.r`); a user's
    output names are part of the model's interface, so restore them where free."""
    for v in g.outputs:
        for suffix in (".r", ".t", ".folded"):
            if v.name.endswith(suffix):
                base = v.name[: -len(suffix)]
                if not g.has_value(base):
                    g.rename(v, base)
