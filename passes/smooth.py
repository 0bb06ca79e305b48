"""smooth: per-channel scales moved from an activation into the layers that read it, where a
nonlinearity stops cross-layer equalization.

`equalize` moves a per-channel scale from a layer's output to its readers' inputs only
through positively homogeneous ops; a hard-swish, gelu, sigmoid or an add of a constant
ends its search. The readers' side can still be balanced (SmoothQuant's migration, Xiao
et al. 2023, with the scale placed after the nonlinearity): a tensor produced by an
elementwise op and read only by convs/gemms gets an explicit per-channel `mul` by 1/s_i,
and each reader's input channel i is multiplied by s_i. The float model computes the same
function; the mul joins the float epilogue that already computes the nonlinearity, in the
producer's kernel (one multiply per element there).

Whether it pays is measured, not assumed: quantized per tensor, one wide channel sets the
step of all the narrow ones, but moving the scale into the weights coarsens the weights'
per-output-channel step instead. For each candidate tensor the pass keeps its float
activations on the calibration data (up to `samples` batches, no more than `cache-bytes`
for all candidates) and, for s_i = a_i^α / w_i^(1-α) (a_i the channel's 99.99th-percentile
|x|, w_i the readers' largest |weight| on it) at each α in `ALPHAS`, runs every reader with
the scaled tensor on a uint8 grid over its [0.01, 99.99] percentiles (the observers' default
until 2026-12-05, now mse: the -O2 measurements that made mse the default ran with this) and
the scaled weights on quantize's int8 per-channel grid. The s whose readers' output error
is lowest is kept if it beats no scaling by `min-gain-db`; the report gives that gain
(`measured_gain_db`, on the calibration data). Without calibration data nothing changes.

PP-LCNet's stem (PP-OCR det) is the case it was written for: after a depthwise conv +
hard-swish + scalar affine, one channel reaches 12.5 while another stays within
[-0.19, 0.48], and the 1x1 reader's weights compensate, so no one step fits all.

Before: %h = qcc.hard_swish(%c)                %y = qcc.conv(%h, %w)
After:  %h = qcc.hard_swish(%c)  %h.smoothed = qcc.mul(%h, %h.smooth)  %y = qcc.conv(%h.smoothed, %w.eq)
        (h.smooth[i] = 1 / s_i, w.eq[:, i] = w[:, i] · s_i)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from qcc.batches import imap_batches, milestone
from qcc.ir.graph import Graph, Node, Value
from qcc.ops.quant import quantize
from qcc.pass_manager import PassContext
from qcc.passes_registry import Pass, register_pass
from qcc.quantization import params_for_range, quantize_weights
from qcc.tails import percentiles

from .equalize import _clamp, _in_ranges, _layer_ok, _scale_reader, _summary, scaled_reader_weights

ALPHAS = (0.25, 0.5, 0.75, 1.0)  # migration strengths tried
# elementwise ops that end a fused kernel's float epilogue: a per-channel mul after one of
# them joins the same kernel
SMOOTH_AFTER = ("hard_swish", "hard_sigmoid", "gelu", "sigmoid", "tanh", "clip", "add", "sub",
                "mul", "div", "leaky_relu", "prelu", "elu", "relu")


def readers(v: Value) -> Optional[List[Node]]:
    """The convs/gemms reading `v` on their data input -- dense (group 1) or depthwise --
    when every use of `v` is one, else None."""
    C = v.shape[1]
    out = []
    for u, i in v.uses:
        if i != 0 or u.op not in ("conv", "gemm") or not _layer_ok(u):
            return None
        if u.op == "gemm" and v.type.rank != 2:
            return None
        if u.op == "conv":
            group, cg = u.attrs.get("group", 1), u.inputs[1].shape[1]
            if cg * group != C or group not in (1, C):
                return None
        if u not in out:
            out.append(u)
    return out


def candidate(n: Node, g: Graph) -> Optional[Tuple[Value, List[Node]]]:
    """`n`'s output and its readers, when an elementwise op makes it and layers alone read it."""
    if n.op not in SMOOTH_AFTER or len(n.outputs) != 1:
        return None
    v = n.output
    if v in g.outputs or not v.uses or v.type.rank < 2 or v.dtype != "f32":
        return None
    rs = readers(v)
    return (v, rs) if rs else None


def activations(g: Graph, values: List[Value], samples, budget: int) -> Dict[str, np.ndarray]:
    """{name: the value's float activations, batches concatenated}: as many of `samples` as
    fit `budget` bytes for all the values together (at least one batch)."""
    from qcc.interp import Interpreter

    per_batch = sum(v.type.nbytes for v in values)
    n = max(1, min(len(samples), budget // max(per_batch, 1)))
    want = {v.name for v in values}

    def run(feeds) -> Dict[str, np.ndarray]:
        got: Dict[str, np.ndarray] = {}

        class _Keep(Interpreter):
            def on_value(self, value, array):
                if value.name in want:
                    got[value.name] = np.array(array, np.float32)

        _Keep(g).run(feeds)
        return got

    acc: Dict[str, List[np.ndarray]] = {}
    for got in imap_batches(run, samples[:n]):  # the batches side by side, kept in order
        for k, a in got.items():
            acc.setdefault(k, []).append(a)
    return {k: np.concatenate(v) for k, v in acc.items()}


def _fake_quant_activation(x: np.ndarray, percentile: float) -> np.ndarray:
    """x on a uint8 grid over its [100-p, p] percentiles (a cheap stand-in for the observers')."""
    lo, hi = percentiles(x, [100.0 - percentile, percentile])  # np.percentile's numbers, faster
    qp = params_for_range(lo, hi, "u8")
    # the codes by the interpreter's own quantize (in place, in float32), and each code's
    # value computed once and looked up: 0.30 -> 0.09 s a call on a 7x48x96x144 tensor
    codes = quantize(x, scale=list(qp.scale), zero_point=list(qp.zero_point), axis=-1, dtype="u8")
    levels = (np.arange(256, dtype=np.float32) - qp.zero_point_array(0)) * qp.scale_array(0)
    return levels.astype(np.float32)[codes]


def _fake_quant_weights(r: Node, w: np.ndarray) -> np.ndarray:
    """w on the int8 grid quantize gives the reader's weights (per output channel)."""
    axis = 1 if r.op == "gemm" and not r.attrs.get("trans_b", 0) else 0
    q, scale = quantize_weights(w, axis)
    shape = [1] * w.ndim
    shape[axis] = -1
    return (q.astype(np.float64) * scale.reshape(shape)).astype(np.float32)


def _apply_layer(r: Node, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The reader's op (no bias) on x with weights w, by the reference interpreter."""
    from qcc.interp import Interpreter
    from qcc.ir.types import TensorType

    p = Graph("probe")
    xv = p.add_input("x", TensorType(x.shape, "f32"))
    n = p.add_node(r.op, [xv, p.add_const("w", w.astype(np.float32))], dict(r.attrs))
    p.set_outputs([n.output])
    return next(iter(Interpreter(p).run({"x": x}).values()))


def quantization_error(x: np.ndarray, rs: List[Node], refs: List[np.ndarray], s: np.ndarray,
                       percentile: float) -> float:
    """Mean over readers of their output's relative quantization noise power when x is
    divided by s, their input channels multiplied by it, and both are quantized."""
    shape = (1, s.size) + (1,) * (x.ndim - 2)
    xq = _fake_quant_activation(x / s.reshape(shape).astype(np.float32), percentile)
    errs = []
    for r, ref in zip(rs, refs):
        wq = _fake_quant_weights(r, scaled_reader_weights(r, s))
        y = _apply_layer(r, xq, wq)
        errs.append(float(((y - ref) ** 2).sum() / max(float((ref ** 2).sum()), 1e-30)))
    return float(np.mean(errs))


def choose_scales(x: np.ndarray, rs: List[Node], alphas, max_scale: float,
                  percentile: float) -> Tuple[np.ndarray, float, float]:
    """(best s, its error, the error without any): s_i = a_i^α / w_i^(1-α) over `alphas`."""
    C = x.shape[1]
    a = np.percentile(np.abs(np.moveaxis(x, 1, 0).reshape(C, -1)), percentile, axis=1).astype(np.float64)
    w = np.max([_in_ranges(r, C)[0] for r in rs], axis=0)
    refs = [_apply_layer(r, x, r.inputs[1].data.astype(np.float32)) for r in rs]
    base = quantization_error(x, rs, refs, np.ones(C), percentile)
    best, best_err = np.ones(C), base
    live = (a > 0) & (w > 0)
    w = np.where(live, w, 1.0)
    for alpha in alphas:
        s = np.where(live, a ** alpha / w ** (1.0 - alpha), 1.0)
        s = _clamp(s, max_scale)
        err = quantization_error(x, rs, refs, s, percentile)
        if err < best_err:
            best, best_err = s, err
    return best, best_err, base


@register_pass
@dataclass(frozen=True)
class Smooth(Pass):
    """Per-channel scales from an activation into its reader layers, where a nonlinearity stops equalize (measured, needs --calib)."""

    name = "smooth"
    min_gain_db: float = 1.0  # cut of the readers' measured int8 error a tensor's mul must buy
    max_scale: float = 16.0  # scales limited to [1/max-scale, max-scale] around their median
    samples: int = 32  # calibration batches the errors are measured on, at most ...
    cache_bytes: int = 1 << 28  # ... and no more than fit in this many bytes of activations
    percentile: float = 99.99  # the activation ranges' percentile (insert-observers' default)

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        samples = ctx.options.get("calib")
        if not (isinstance(samples, list) and samples):
            return False
        cands = [c for n in graph.nodes if (c := candidate(n, graph)) is not None]
        if not cands:
            return False
        ctx.progress(f"smooth: trying scales on {len(cands)} tensors")
        acts = activations(graph, [v for v, _ in cands], samples[:self.samples], self.cache_bytes)
        cands = [(v, rs) for v, rs in cands if v.name in acts]

        def choose(c):  # candidates share no reader, so each choice is independent of the others'
            return choose_scales(acts.pop(c[0].name), c[1], ALPHAS, self.max_scale, self.percentile)

        report = {}
        # every candidate may start at once (a result is one scale vector): their sizes differ 1000x
        chosen = imap_batches(choose, cands, ahead=len(cands))
        for k, ((v, rs), (s, err, base)) in enumerate(zip(cands, chosen)):
            if milestone(k + 1, len(cands), 4):
                ctx.progress(f"smooth: {k + 1}/{len(cands)} tensors tried")
            if not err < base:  # no scale beat none (an exact tensor too: both 0)
                continue
            gain = 10 * np.log10(base / err) if err > 0 else np.inf
            if gain < self.min_gain_db:
                continue
            shape = (1, s.size) + (1,) * (v.type.rank - 2)
            c = graph.add_const(v.name + ".smooth", (1.0 / s).reshape(shape).astype(np.float32))
            m = graph.add_node("mul", [v, c], names=[v.name + ".smoothed"], after=v.producer)
            for r in rs:
                r.set_input(0, m.output)
                _scale_reader(r, s, graph)
            report[v.name] = {**_summary(s, "calibration"), "measured_gain_db": round(float(gain), 2)}
        if report:
            ctx.report["smoothed"] = report
        return bool(report)
