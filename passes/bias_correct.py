"""bias-correct: fold the mean error quantization adds to each layer back into its bias.

Rounding weights to int8 and activations to 8 bits is unbiased on average per element,
but not per output channel: a channel whose rounded weights sum a little high adds
that excess times the mean of its input to every output, and relus and clipping skew
the activations too. Downstream layers see a shifted mean they were never trained on
(Nagel et al. 2019, "Data-Free Quantization", section 4.2; Finkelstein et al. 2019).

With calibration data (empirical): the layers are quantized exactly as `quantize` will
(same ranges, same bit-width decisions, on a copy), and that copy runs on the
calibration batches one layer at a time. At each integer layer the per-channel mean of
its accumulator is compared with the float layer's output mean, the difference is
subtracted from the bias, and the layer is re-run before anything downstream is
computed -- so each layer corrects only the error that reaches it *after* the layers
above were corrected. The corrections go into the float graph's biases, which
`quantize` then rounds to int32 as usual.

Without calibration data (`data-free`): the weight-rounding part alone, from the
batch-norm statistics of each layer's input (qcc.stats): Δb = -(W_q - W)·E[x].

It sits after `assign-bitwidths` (it needs the per-layer decisions) and before
`quantize` (the graph is still float, so the corrections are plain bias edits).

Before: %c = qcc.conv(%x.obs, %w, %b) {...}
After:  %c = qcc.conv(%x.obs, %w, %b.bc) {...}     (b.bc = b - mean error per channel)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional

import numpy as np

from qcc.ir.graph import Graph, Node
from qcc.pass_manager import PassContext
from qcc.passes_registry import Pass, register_pass
from qcc.quantization import quantize_weights

LAYERS = ("conv", "gemm")
SIGNIFICANCE = 2.0  # standard errors


def _bias_of(n: Node) -> Optional[np.ndarray]:
    """The layer's bias as one value per output channel, as added to the output (a gemm's
    times beta; zeros if it has none), or None when it cannot be corrected (a gemm with a
    full-matrix bias, a computed bias). _set_bias takes the same."""
    C = n.output.shape[1]
    b = n.inputs[2] if len(n.inputs) > 2 else None
    if b is None:
        return np.zeros(C)
    if not b.is_const:
        return None
    d = b.data.astype(np.float64).reshape(-1) * (float(n.attrs.get("beta", 1.0)) if n.op == "gemm" else 1.0)
    if d.size == 1:
        return np.full(C, float(d[0]))
    return d if d.size == C else None


def _set_bias(n: Node, b: np.ndarray, g: Graph) -> None:
    old = n.inputs[2] if len(n.inputs) > 2 else None
    if n.op == "gemm":
        b = b / float(n.attrs.get("beta", 1.0))  # y = alpha·(x @ W) + beta·C
    base = (old.name if old is not None else n.name + ".b")
    name = base if base.endswith(".bc") else base + ".bc"
    dtype = old.data.dtype if old is not None else np.float32
    c = g.add_const(name, b.astype(dtype))
    _give_bias(n, c, g)
    if old is not None and not old.uses and old not in g.outputs:
        g.remove_const(old)


def _give_bias(n: Node, c, g: Graph) -> Node:
    """Set the layer's bias operand to `c`; a layer without that operand is rebuilt with it
    (same name, attributes and scratch meta)."""
    if len(n.inputs) > 2:
        n.set_input(2, c)
        return n
    new = g.add_node(n.op, [n.inputs[0], n.inputs[1], c], dict(n.attrs), names=[n.name + ".bc"],
                     before=n, types=[n.output.type])
    new.output.meta.update(n.output.meta)
    new.output.quant = n.output.quant
    old, name = n.output, n.output.name
    g.replace_value(old, new.output)
    g.remove_node(n)
    g.rename(new.output, name)
    return new


def _correctable(n: Node, decisions: Optional[Dict[str, str]] = None) -> bool:
    """Whether the layer's bias can take a per-output-channel shift: a conv, or a 2-d gemm
    whose bias is not multiplied by zero, with constant weights and not decided float
    (`decisions`: none given, every layer counts as int8)."""
    if n.op not in LAYERS or (decisions or {}).get(n.name, "int8") == "float" or not n.inputs[1].is_const:
        return False
    if n.op == "gemm" and (n.attrs.get("trans_a", 0) or n.output.type.rank != 2
                           or float(n.attrs.get("beta", 1.0)) == 0.0):
        return False
    return _bias_of(n) is not None


# --- empirical ----------------------------------------------------------------------------

def _float_means(g: Graph, names: set, samples) -> Dict[str, List[np.ndarray]]:
    """Per batch, the per-image per-channel (axis 1) mean [N, C] of each named value."""
    from qcc.interp import Interpreter

    out: Dict[str, List[np.ndarray]] = {}

    class _Means(Interpreter):
        def on_value(self, value, array):
            if value.name in names:
                out.setdefault(value.name, []).append(_image_channel_mean(array, 1))

    it = _Means(g)
    for feeds in samples:
        it.run(feeds)
    return out


def _image_channel_mean(a: np.ndarray, axis: int) -> np.ndarray:
    """[N, C]: the mean of each channel of each image (axis 0 is the batch)."""
    a = np.moveaxis(np.asarray(a, np.float64), axis % a.ndim, -1)
    return a.reshape(a.shape[0], -1, a.shape[-1]).mean(1)


def _sweep(q: Graph, targets: Dict[str, str], means: Dict[str, np.ndarray], samples) -> Dict[str, np.ndarray]:
    """Run the quantized copy `q` on all batches node by node; at each accumulator named in
    `targets` (acc value -> float layer), shift its int32 bias so the per-channel mean
    matches the float one, and re-run it. Returns the real-valued shift per layer."""
    from qcc.interp import Interpreter

    it = Interpreter(q)
    nodes = q.nodes
    last: Dict[int, int] = {}
    for i, n in enumerate(nodes):
        for v in n.inputs:
            if v is not None and not v.is_const:
                last[id(v)] = i
    outs_keep = {id(v) for v in q.outputs}
    envs: List[Dict[int, np.ndarray]] = [{id(v): f[v.name] for v in q.inputs} for f in samples]
    shifts: Dict[str, np.ndarray] = {}

    def run_all(n: Node):
        for env in envs:
            ins = [None if v is None else (v.data if v.is_const else env[id(v)]) for v in n.inputs]
            for o, a in zip(n.outputs, it.run_node(n, ins)):
                env[id(o)] = np.asarray(a)

    for i, n in enumerate(nodes):
        run_all(n)
        layer = targets.get(n.outputs[0].name) if len(n.outputs) == 1 else None  # (a split has several)
        if layer is not None and n.output.quant is not None:
            qp = n.output.quant
            axis = 1 if n.op == "qconv" else n.output.type.rank - 1
            scale = np.broadcast_to(np.asarray(qp.scale, np.float64).reshape(-1), (n.output.shape[axis],))
            got = np.concatenate([_image_channel_mean(env[id(n.output)], axis) for env in envs]) * scale
            err = got - np.concatenate(means[layer])  # [images, C]
            diff = err.mean(0)
            # only what the calibration images agree on: an error within a few standard
            # errors of zero is noise (a 1x1 layer sees one value per image and channel)
            se = err.std(0, ddof=1) / np.sqrt(len(err)) if len(err) > 1 else np.zeros_like(diff)
            keep = np.clip(1.0 - (SIGNIFICANCE * se / np.maximum(np.abs(diff), 1e-30)) ** 2, 0.0, 1.0)
            step = np.rint(diff * keep / scale)
            if np.any(step != 0):
                b = n.inputs[2] if len(n.inputs) > 2 else None
                old = b.data.astype(np.int64) if b is not None else np.zeros(scale.size, np.int64)
                new = np.clip(old.reshape(-1) - step.astype(np.int64), -(2 ** 31), 2 ** 31 - 1)
                c = q.add_const(n.output.name + ".bc", new.astype(np.int32), "i32",
                                b.quant if b is not None else None)
                n = _give_bias(n, c, q)
                run_all(n)
                shifts[layer] = -step * scale
        for env in envs:  # free what nothing reads any more
            for v in n.inputs:
                if v is not None and not v.is_const and last.get(id(v)) == i and id(v) not in outs_keep:
                    env.pop(id(v), None)
    return shifts


def _empirical(g: Graph, layers: List[Node], decisions: Dict[str, str], samples,
               rounded: Optional[Dict] = None) -> Dict[str, np.ndarray]:
    from qcc.sensitivity import quantized_copy

    means = _float_means(g, {n.name for n in layers}, samples)
    q = quantized_copy(g, decisions, rounded=rounded)
    accs = {n.output.name: n for n in q.nodes if n.op in ("qconv", "qmatmul")}
    targets = {}
    for n in layers:
        acc = accs.get(n.name + ".acc")
        if acc is not None and n.name in means:
            targets[acc.output.name] = n.name
    return _sweep(q, targets, means, samples)


# --- data-free ------------------------------------------------------------------------------

def _data_free(g: Graph, layers: List[Node]) -> Dict[str, np.ndarray]:
    """Δb = -(W_q - W)·E[x], with E[x] per input channel from batch-norm statistics."""
    from qcc.stats import propagate

    st = propagate(g)
    out = {}
    for n in layers:
        x = n.inputs[0]
        if x.name not in st:
            continue
        mu = st[x.name][0]
        w = n.inputs[1].data.astype(np.float64)
        if n.op == "conv":
            wq, ws = quantize_weights(w.astype(np.float32), 0)
            err = wq.astype(np.float64) * ws.reshape((-1,) + (1,) * (w.ndim - 1)) - w
            O, Cg = w.shape[:2]
            grp = n.attrs.get("group", 1)
            if mu.size != Cg * grp:
                continue
            idx = (np.arange(O) // (O // grp))[:, None] * Cg + np.arange(Cg)[None, :]
            out[n.name] = -(err.reshape(O, Cg, -1).sum(-1) * mu[idx]).sum(1)
        else:
            wt = w.T if n.attrs.get("trans_b", 0) else w  # [in, out]
            alpha = float(n.attrs.get("alpha", 1.0))
            wq, ws = quantize_weights((wt * alpha).astype(np.float32), 1)
            err = wq.astype(np.float64) * ws.reshape(1, -1) - wt * alpha
            if mu.size != err.shape[0]:
                continue
            out[n.name] = -(mu @ err)
    return out


@register_pass
@dataclass(frozen=True)
class BiasCorrect(Pass):
    """Fold the per-channel mean error of each quantized layer into its bias."""

    name = "bias-correct"
    requires = frozenset({"ranged"})
    data_free: bool = True  # without --calib: correct the weight-rounding bias from BN statistics
    samples: int = 0  # calibration batches used (0: all)

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        decisions = ctx.options.get("bitwidths", {})
        layers = [n for n in graph.nodes if _correctable(n, decisions)]
        samples = ctx.options.get("calib")
        if isinstance(samples, list) and samples:
            shifts = _empirical(graph, layers, decisions, samples[: self.samples or None],
                                ctx.options.get("rounded_weights"))
            how = "empirical"
        elif self.data_free:
            shifts, how = _data_free(graph, layers), "data-free"
        else:
            return False
        by_name = {n.name: n for n in layers}
        report = {}
        for name, d in shifts.items():
            n = by_name[name]
            _set_bias(n, _bias_of(n) + d, graph)
            report[name] = round(float(np.abs(d).max()), 6)
        ctx.report["bias_correction"] = {"method": how, "max_shift": report}
        return bool(shifts)
