"""fuse: fold batch norms and bias adds into the layers before them, and turn
decomposed activations back into single ops.

Quantization works per layer: a batch norm left standing would be quantized on
its own (losing accuracy) and a GELU spelled as six elementwise ops would get six
sets of ranges. So before observing:
  * batch_norm(conv/conv_transpose/gemm) -> the layer with scaled weights and bias
    (the BN statistics are kept in the value's scratch meta for data-free ranges);
  * add(conv/conv_transpose(x, w, b), c) with c per output channel -> the layer with
    bias b + c, and
    mul(conv(x, w, b), k) -> conv(x, w·k, b·k) (PP-LCNet's learnable affine blocks);
    a 2-D matmul with a constant right side plus a bias becomes gemm;
  * x * hard_sigmoid(x) and x * clip(x + 3, 0, 6) / 6 -> hard_swish(x);
    0.5·x·(1 + erf(x/√2)) -> gelu(x);
    the ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div(/Mul/Add) chain -> layer_norm;
  * then a conv_transpose with a stride of 2 or more -> conv + depth_to_space (+ slice)
    (quantized as a conv), with a relu/clip after it moved before the depth_to_space.
Activations after a layer (relu, clip) are fused at quantization time, into the
requantize clamp, and by TVM's operator fusion in float.

Before: %c = qcc.conv(%x, %w, %b) {...}   %n = qcc.batch_norm(%c, %g, %be, %m, %v) {epsilon=1e-05}
After:  %n = qcc.conv(%x, %w.bn, %b.bn) {...}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np

from qcc.ir.graph import Graph, Node, Value
from qcc.ops.nn import transposed_conv_phases
from qcc.pass_manager import PassContext
from qcc.rewrite import rewrite_to_fixpoint
from qcc.passes_registry import Pass, register_pass


def _const(v: Optional[Value]) -> Optional[np.ndarray]:
    return None if v is None or not v.is_const else v.data


def _single_user(v: Value, g: Graph) -> Optional[Node]:
    users = v.users()
    return users[0] if len(users) == 1 and v not in g.outputs else None


def _replace_layer(g: Graph, old_out: Value, op: str, inputs, attrs, before: Node) -> Value:
    """A new layer node whose result takes over `old_out`'s uses. It is named after the
    layer it replaces (`before`), so reports name layers as the model did, unless the
    replaced value is a graph output, whose name is part of the model's interface."""
    name = old_out.name if old_out in g.outputs else before.output.name
    new = g.add_node(op, inputs, attrs, names=[name + ".fused"], before=before, types=[old_out.type])
    g.replace_value(old_out, new.output)
    return new.output


def _fold_bn(bn: Node, g: Graph) -> bool:
    x = bn.inputs[0]
    layer = x.producer
    if layer is None or layer.op not in ("conv", "conv_transpose", "gemm") or _single_user(x, g) is not bn:
        return False
    gamma, beta, mean, var = (_const(v) for v in bn.inputs[1:5])
    w = _const(layer.inputs[1])
    if any(a is None for a in (gamma, beta, mean, var, w)):
        return False
    eps = float(bn.attrs.get("epsilon", 1e-5))
    k = (gamma / np.sqrt(var.astype(np.float64) + eps))
    C = k.size
    b_in = layer.inputs[2] if len(layer.inputs) > 2 else None
    if b_in is not None and not b_in.is_const:
        return False
    b = np.zeros(C) if b_in is None else b_in.data.astype(np.float64).reshape(-1)
    if b.size == 1 and C > 1:
        b = np.full(C, b[0])
    if b.size != C:
        return False
    if layer.op == "conv":
        w2 = w * k.reshape((-1,) + (1,) * (w.ndim - 1))
    elif layer.op == "conv_transpose":
        if layer.attrs.get("group", 1) != 1:
            return False
        w2 = w * k.reshape((1, -1) + (1,) * (w.ndim - 2))
    else:  # gemm: output [M, N], channel axis 1
        if layer.attrs.get("trans_a", 0) or float(layer.attrs.get("alpha", 1.0)) != 1.0 \
                or float(layer.attrs.get("beta", 1.0)) != 1.0:
            return False
        w2 = w * (k.reshape(-1, 1) if layer.attrs.get("trans_b", 0) else k.reshape(1, -1))
    b2 = (b - mean) * k + beta
    wc = g.add_const(layer.inputs[1].name + ".bn", w2.astype(w.dtype))
    bc = g.add_const((b_in.name if b_in is not None else layer.name + ".b") + ".bn",
                     b2.astype(w.dtype).reshape((C,) if layer.op != "gemm" or b_in is None else b_in.shape))
    out = _replace_layer(g, bn.output, layer.op, [layer.inputs[0], wc, bc], dict(layer.attrs), before=layer)
    out.meta["bn_stats"] = (beta.astype(np.float64), np.abs(gamma).astype(np.float64))
    return True


def _fold_bias(add: Node, g: Graph) -> bool:
    a, c = add.inputs
    if _const(a) is not None:
        a, c = c, a
    cd = _const(c)
    layer = a.producer if a is not None else None
    if cd is None or layer is None or _single_user(a, g) is not add:
        return False
    if layer.op in ("conv", "conv_transpose") and _layer_bias(layer) is not None:
        per_channel = _per_channel(cd, layer)
        if per_channel is None or add.output.type != layer.output.type:
            return False
        bc = g.add_const(c.name + ".bias", (_layer_bias(layer) + per_channel).astype(np.float32))
        _replace_layer(g, add.output, layer.op, [layer.inputs[0], layer.inputs[1], bc], dict(layer.attrs), layer)
        return True
    if layer.op == "matmul" and layer.inputs[0].type.rank == 2 and _const(layer.inputs[1]) is not None:
        N = layer.output.shape[1]
        if cd.size != N or add.output.type != layer.output.type:
            return False
        bc = g.add_const(c.name + ".bias", cd.reshape(N).astype(np.float32))
        _replace_layer(g, add.output, "gemm", [layer.inputs[0], layer.inputs[1], bc],
                       {"alpha": 1.0, "beta": 1.0, "trans_a": 0, "trans_b": 0}, layer)
        return True
    return False


def _layer_bias(layer: Node) -> Optional[np.ndarray]:
    """A conv's bias as float64 [C] (zeros when it has none), None when it is not constant."""
    C = layer.output.shape[1]
    b = layer.inputs[2] if len(layer.inputs) > 2 else None
    if b is None:
        return np.zeros(C)
    return None if not b.is_const or b.data.size not in (1, C) else np.broadcast_to(
        b.data.astype(np.float64).reshape(-1), (C,)).copy()


def _per_channel(c: np.ndarray, layer: Node) -> Optional[np.ndarray]:
    """A constant that broadcasts against the conv's output along its channels only (a scalar
    or [C, 1, ...] shaped), as float64 [C]; None for anything else."""
    C, rank = layer.output.shape[1], layer.output.type.rank
    if c.ndim > rank:
        return None
    full = (1,) * (rank - c.ndim) + c.shape
    if any(d != 1 for i, d in enumerate(full) if i != 1) or full[1] not in (1, C):
        return None
    return np.broadcast_to(c.astype(np.float64).reshape(-1), (C,)).copy()


def _fold_scale(mul: Node, g: Graph) -> bool:
    """conv(x, w, b) * k, k a constant per output channel (or a scalar) -> conv(x, w·k, b·k).

    PP-LCNetV3 (PP-OCRv4) follows every conv with a learnable affine y = a·x + b of
    scalars: left standing, the two ops run on full activation maps between the dequantize
    and the next quantize; folded, the add then folds into the bias as well."""
    a, c = mul.inputs
    if _const(a) is not None:
        a, c = c, a
    cd = _const(c)
    layer = a.producer if a is not None else None
    if cd is None or layer is None or layer.op != "conv" or _single_user(a, g) is not mul \
            or mul.output.type != layer.output.type:
        return False
    w, b = _const(layer.inputs[1]), _layer_bias(layer)
    k = _per_channel(cd, layer)
    if w is None or b is None or k is None or not np.all(np.isfinite(k)):
        return False
    wc = g.add_const(layer.inputs[1].name + ".scaled", (w * k.reshape((-1,) + (1,) * (w.ndim - 1))).astype(w.dtype))
    has_bias = len(layer.inputs) > 2 and layer.inputs[2] is not None
    bc = g.add_const(layer.inputs[2].name + ".scaled", (b * k).astype(w.dtype)) if has_bias else None
    _replace_layer(g, mul.output, "conv", [layer.inputs[0], wc, bc], dict(layer.attrs), layer)
    return True


def _hard_swish_by_clip(div: Node, g: Graph) -> bool:
    """x * clip(x + 3, 0, 6) / 6 (or * 1/6, in either operand order) -> hard_swish(x): how
    paddle2onnx spells HardSwish."""
    if div.op == "div" and not _is_scalar(div.inputs[1], 6.0, 1e-6):
        return False
    if div.op == "mul":
        num = next((v for v in div.inputs if not _is_scalar(v, 1 / 6, 1e-6)), None)
        if num is None or _other(div, num) is None or not _is_scalar(_other(div, num), 1 / 6, 1e-6):
            return False
    else:
        num = div.inputs[0]
    m = num.producer if num is not None else None
    if m is None or m.op != "mul" or _single_user(num, g) is not div:
        return False
    for x, h in (_operands(m), _operands(m)[::-1]):
        clip = h.producer if h is not None else None
        if clip is None or clip.op != "clip" or float(clip.attrs.get("min", 0)) != 0.0 \
                or float(clip.attrs.get("max", 0)) != 6.0:
            continue
        add = clip.inputs[0].producer
        if add is not None and add.op == "add" and x in add.inputs and _is_scalar(_other(add, x), 3.0, 1e-6):
            new = g.add_node("hard_swish", [x], {}, names=[div.output.name + ".hs"], before=div)
            g.replace_value(div.output, new.output)
            return True
    return False


def _is_scalar(v: Optional[Value], target: float, tol: float = 1e-3) -> bool:
    d = _const(v)
    return d is not None and d.size == 1 and abs(float(d.ravel()[0]) - target) <= tol * max(1.0, abs(target))


def _operands(n: Node):
    return n.inputs[0], n.inputs[1]


def _other(n: Node, v: Value) -> Optional[Value]:
    a, b = _operands(n)
    return b if a is v else a if b is v else None


def _hard_swish(mul: Node, g: Graph) -> bool:
    for x, h in (_operands(mul), _operands(mul)[::-1]):
        p = h.producer if h is not None else None
        if p is not None and p.op == "hard_sigmoid" and p.inputs[0] is x \
                and abs(p.attrs.get("alpha", 0.2) - 1 / 6) < 1e-4 and abs(p.attrs.get("beta", 0.5) - 0.5) < 1e-4:
            new = g.add_node("hard_swish", [x], {}, names=[mul.output.name + ".hs"], before=mul)
            g.replace_value(mul.output, new.output)
            return True
    return False


def _gelu(erf: Node, g: Graph) -> bool:
    """0.5 * x * (1 + erf(x / sqrt(2))), in any association of the multiplications."""
    d = erf.inputs[0].producer
    if d is None or not ((d.op == "div" and _is_scalar(d.inputs[1], np.sqrt(2)))
                         or (d.op == "mul" and _is_scalar(d.inputs[1], 1 / np.sqrt(2)))):
        return False
    x = d.inputs[0]
    add = _single_user(erf.output, g)
    if add is None or add.op != "add" or not _is_scalar(_other(add, erf.output), 1.0):
        return False
    m1 = _single_user(add.output, g)
    if m1 is None or m1.op != "mul":
        return False
    o = _other(m1, add.output)
    # forms: (x*0.5)*(1+erf) | x*(1+erf) then *0.5 | (1+erf)*0.5 then *x
    if o is not None and o.producer is not None and o.producer.op == "mul" \
            and x in o.producer.inputs and _is_scalar(_other(o.producer, x), 0.5):
        end = m1
    elif o is x:
        end = _single_user(m1.output, g)
        if end is None or end.op != "mul" or not _is_scalar(_other(end, m1.output), 0.5):
            return False
    elif _is_scalar(o, 0.5):
        end = _single_user(m1.output, g)
        if end is None or end.op != "mul" or _other(end, m1.output) is not x:
            return False
    else:
        return False
    new = g.add_node("gelu", [x], {"approximate": "none"}, names=[end.output.name + ".gelu"], before=end)
    g.replace_value(end.output, new.output)
    return True


def _layer_norm(div: Node, g: Graph) -> bool:
    """(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) [* gamma] [+ beta] over trailing axes."""
    sub, sq = div.inputs
    if sub.producer is None or sub.producer.op != "sub" or sq.producer is None or sq.producer.op != "sqrt":
        return False
    x, mean = sub.producer.inputs
    if mean.producer is None or mean.producer.op != "reduce_mean" or mean.producer.inputs[0] is not x:
        return False
    axes = list(mean.producer.attrs.get("axes", []))
    rank = x.type.rank
    if not axes or axes != list(range(rank - len(axes), rank)) or not mean.producer.attrs.get("keepdims", 1):
        return False
    addeps = sq.producer.inputs[0].producer
    if addeps is None or addeps.op != "add":
        return False
    var = next((v for v in addeps.inputs if v.producer is not None and v.producer.op == "reduce_mean"), None)
    eps = _const(_other(addeps, var)) if var is not None else None
    if var is None or eps is None or eps.size != 1 or list(var.producer.attrs.get("axes", [])) != axes:
        return False
    pw = var.producer.inputs[0].producer
    if pw is None or not ((pw.op == "pow" and pw.inputs[0] is sub and _is_scalar(pw.inputs[1], 2.0))
                          or (pw.op == "mul" and pw.inputs[0] is sub and pw.inputs[1] is sub)):
        return False
    norm_shape = x.shape[axes[0]:]
    end, scale, bias = div, None, None
    m = _single_user(div.output, g)
    if m is not None and m.op == "mul" and _const(_other(m, div.output)) is not None:
        s = _const(_other(m, div.output))
        if s.size == int(np.prod(norm_shape)):
            scale, end = s, m
    if scale is not None:
        a = _single_user(end.output, g)
        if a is not None and a.op == "add" and _const(_other(a, end.output)) is not None:
            bb = _const(_other(a, end.output))
            if bb.size == int(np.prod(norm_shape)):
                bias, end = bb, a
    sc = g.add_const(end.output.name + ".ln.scale",
                     (scale if scale is not None else np.ones(norm_shape)).reshape(norm_shape).astype(np.float32))
    ins = [x, sc]
    if bias is not None:
        ins.append(g.add_const(end.output.name + ".ln.bias", bias.reshape(norm_shape).astype(np.float32)))
    new = g.add_node("layer_norm", ins, {"axis": axes[0], "epsilon": float(eps.ravel()[0])},
                     names=[end.output.name + ".ln"], before=end, types=[end.output.type])
    g.replace_value(end.output, new.output)
    return True


def _transposed_as_conv(ct: Node, g: Graph) -> bool:
    """A 2-D conv_transpose (square kernel k, stride s <= k in both axes, no dilation or
    groups) -> a conv to O*s*s channels + depth_to_space(s, CRD) (+ a slice that crops the
    padding).

    Each of the s x s output phases is a plain conv of the input (qcc.ops.nn.
    transposed_conv_phases): one conv with K = ceil(k/s) taps a side, its channels the
    phases, which depth_to_space interleaves; the slice drops the padding. A kernel equal to its
    stride (an FPN or U-Net upsampling head: every input pixel scattered into its own k x k
    tile) is the 1x1 case with nothing to crop. As a conv the layer is quantized like one
    (per-channel int8 weights, the int8 kernels) and depth_to_space and slice move integers;
    TVM's own conv2d_transpose is unscheduled (k=4, s=2, 64->32 channels at 48x72: 3.4 ms as
    float, against 1.8 ms in onnxruntime). A k=3, s=2 kernel pays for zero taps: 16 products
    where 9 were."""
    x, w = ct.inputs[0], _const(ct.inputs[1])
    if w is None or w.ndim != 4 or x.type.rank != 4:
        return False
    C, O, kh, kw = w.shape
    a = ct.attrs
    strides = list(a.get("strides", [1, 1]))
    if kh != kw or strides[0] != strides[1] or (strides[0] < 2 and kh != 1) \
            or any(d != 1 for d in a.get("dilations", [1, 1])) or a.get("group", 1) != 1:
        return False
    s = strides[0]
    b = _layer_bias(ct)
    if b is None:
        return False
    pads = [int(p) for p in a.get("pads", [0] * 4)]
    (H, W), (OH, OW) = x.shape[2:], ct.output.shape[2:]
    phases = transposed_conv_phases(w, (s, s), (H, W), (OH, OW), pads)
    if phases is None:
        return False
    wconv, (K, _) = phases
    full = ((H + K - 1) * s, (W + K - 1) * s)  # the phases' interleaved map, padding included
    wc = g.add_const(ct.inputs[1].name + ".conv", wconv)
    bc = g.add_const(ct.inputs[1].name + ".conv.b", np.repeat(b, s * s).astype(w.dtype))
    out = ct.output
    last = out in g.outputs
    crop = (pads[0], pads[1], pads[0] + OH, pads[1] + OW) != (0, 0) + full
    conv = g.add_node("conv", [x, wc, bc], {"strides": [1, 1], "pads": [K - 1] * 4, "dilations": [1, 1], "group": 1},
                      names=[out.name + (".conv" if last else ".fused")], before=ct)
    d2s = g.add_node("depth_to_space", [conv.output], {"blocksize": s, "mode": "CRD"},
                     names=[out.name + (".d2s" if crop or not last else ".fused")], before=ct,
                     types=None if crop else [out.type])
    if crop:
        d2s = g.add_node("slice", [d2s.output], {"starts": pads[:2], "ends": [pads[0] + OH, pads[1] + OW],
                                                 "axes": [2, 3], "steps": [1, 1]},
                         names=[out.name + (".fused" if last else ".crop")], before=ct, types=[out.type])
    g.replace_value(out, d2s.output)
    return True


def _activation_first(act: Node, g: Graph) -> bool:
    """relu/clip(depth_to_space(y)) -> depth_to_space(relu/clip(y)), and through the slice
    of a cropped one: an elementwise map commutes with moving data, and next to the layer it
    joins its requantize clamp."""
    src = act.inputs[0].producer
    if src is None or src.op not in ("depth_to_space", "slice") or _single_user(act.inputs[0], g) is not act:
        return False
    y = src.inputs[0]
    moved = g.add_node(act.op, [y] + list(act.inputs[1:]), dict(act.attrs), names=[act.output.name + "." + act.op], before=src)
    d2s = g.add_node(src.op, [moved.output], dict(src.attrs), names=[act.output.name + ".fused"],
                     before=act, types=[act.output.type])
    g.replace_value(act.output, d2s.output)
    return True


# (op of the node where a pattern is anchored) -> rewrites tried in order
PATTERNS: Dict[str, List[Callable[[Node, Graph], bool]]] = {
    "batch_norm": [_fold_bn],
    "add": [_fold_bias],
    "mul": [_hard_swish, _fold_scale, _hard_swish_by_clip],
    "erf": [_gelu],
    "div": [_layer_norm, _hard_swish_by_clip],
}
LATE_PATTERNS: Dict[str, List[Callable[[Node, Graph], bool]]] = {
    "conv_transpose": [_transposed_as_conv],
    "relu": [_activation_first],
    "clip": [_activation_first],
}


@register_pass
@dataclass(frozen=True)
class Fuse(Pass):
    """Fold batch norm and bias adds into layers; recognise hard-swish, GELU and layer norm."""

    name = "fuse"
    max_iters: int = 8

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        counts: Dict[str, int] = {}
        changed = rewrite_to_fixpoint(graph, PATTERNS, self.max_iters, counts)
        # once biases and batch norms are folded into them
        changed |= rewrite_to_fixpoint(graph, LATE_PATTERNS, self.max_iters, counts)
        _restore_names(graph)
        ctx.report["fused"] = dict(sorted(counts.items()))
        return changed


def _restore_names(g: Graph) -> None:
    """`conv.fused` goes back to the name of the value it replaced, once that one is gone."""
    suffixes = (".fused", ".hs", ".gelu", ".ln")
    for v in g.values():
        base = v.name
        while v.producer is not None and base.endswith(suffixes):  # a layer fused twice: c.fused.fused
            base = base[: base.rindex(".")]
        if base != v.name and not g.has_value(base):
            g.rename(v, base)
