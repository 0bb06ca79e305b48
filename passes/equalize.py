"""equalize: cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization").

A layer's output channel i can be divided by s_i > 0 if every reader of it multiplies
its input channel i by s_i again: the float model computes the same function. Between
the two layers only positively homogeneous ops may stand -- f(s·x) = s·f(x) for s > 0:
relu, leaky relu / prelu, a clip whose bounds are only 0 and ±inf, max and average
pools, and a multiplication by a value the scaling does not reach (a squeeze-excite
gate). A clip with a finite upper bound (relu6), hard-swish, an add of two branches, a
graph output or anything else ends the search: that layer pair is left alone.

Quantization is where the choice of s pays: activations are quantized per tensor, so
one wide channel sets the step for all the narrow ones beside it, and weights per
output channel, so a reader's input channels share one step. Two criteria:

  * `weights` -- Nagel's: s_i = sqrt(r1_i · r2_i) / r2_i with r1_i the range of the
    producer's output channel i and r2_i that of the readers' input channel i, which
    makes the two equal; iterated over chains (a layer both reads and produces) until
    the scales settle;
  * `ranges` (default) -- the same balance struck between the *activation* range a_i of
    channel i and r2_i: s_i = sqrt(a_i / r2_i). A reader whose output channels each
    read one input channel (depthwise) has per-channel weights that absorb any scale,
    so there s_i = a_i and the activation channels are fully equalized. The a_i come
    from the batch-norm statistics `fuse` kept (qcc.stats: mean + 6σ), data-free --
    or, with `use-calib=true`, from the same moments measured on the calibration
    data; a group with neither falls back to the weights criterion.

Scales are limited to [1/max-scale, max-scale] relative to the channels' median, and a
channel that is never active (a_i = 0) keeps s_i = 1. Batch-norm statistics kept in a
layer's meta are scaled with its output, so data-free ranges stay right.

Before: %c = qcc.conv(%x, %w1, %b1) : f32[1,8,..]   %r = qcc.relu(%c)   %d = qcc.conv(%r, %w2, %b2) {group=8}
After:  %c = qcc.conv(%x, %w1.eq, %b1.eq) ...       %r = qcc.relu(%c)   %d = qcc.conv(%r, %w2.eq, %b2) {group=8}
        (w1.eq[i] = w1[i] / s_i, b1.eq[i] = b1[i] / s_i, w2.eq[i] = w2[i] · s_i)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from qcc.ir.graph import Graph, Node, Value
from qcc.pass_manager import PassContext
from qcc.passes_registry import Pass, register_pass

# ops through which a per-channel positive scale passes unchanged: f(s·x) = s·f(x)
HOMOGENEOUS = ("relu", "leaky_relu", "prelu", "max_pool", "avg_pool", "global_avg_pool",
               "global_max_pool")


@dataclass
class Group:
    """A producer layer, the values its scaled channels flow through, and the readers that
    absorb the scale on their input channels."""

    producer: Node
    values: List[Value]
    readers: List[Node]


def _const(v: Optional[Value]) -> Optional[np.ndarray]:
    return None if v is None or not v.is_const else v.data


def _layer_ok(n: Node) -> bool:
    """A conv or gemm with constant weights (and bias), channel on axis 1 of its result."""
    if n.op == "conv":
        return _const(n.inputs[1]) is not None and (len(n.inputs) < 3 or n.inputs[2] is None
                                                    or _const(n.inputs[2]) is not None)
    if n.op == "gemm":
        w, b = n.inputs[1], n.inputs[2] if len(n.inputs) > 2 else None
        if _const(w) is None or w.type.rank != 2 or n.attrs.get("trans_a", 0) or n.output.type.rank != 2:
            return False
        return b is None or (_const(b) is not None and _const(b).size == n.output.shape[1])
    return False


def _is_homogeneous_clip(n: Node) -> bool:
    lo, hi = float(n.attrs.get("min", -np.inf)), float(n.attrs.get("max", np.inf))
    return lo in (0.0, -np.inf) and hi in (0.0, np.inf)


def find_group(p: Node, g: Graph) -> Optional[Group]:
    """Everything `p`'s output channels reach before a reader absorbs them, or None if
    some path ends anywhere that cannot take a per-channel scale."""
    if not _layer_ok(p):
        return None
    outs = set(g.outputs)
    C = p.output.shape[1]
    values, readers, todo = [], [], [p.output]
    seen = set()
    while todo:
        v = todo.pop()
        if id(v) in seen:
            continue
        seen.add(id(v))
        if v in outs or not v.uses or v.type.rank < 2 or v.shape[1] != C:
            return None
        values.append(v)
        for u, i in v.uses:
            if u.op in ("conv", "gemm") and i == 0 and _layer_ok(u):
                if u.op == "gemm" and v.type.rank != 2:
                    return None
                if u.op == "conv" and u.inputs[1].shape[1] * u.attrs.get("group", 1) != C:
                    return None
                if u not in readers:
                    readers.append(u)
            elif u.op in HOMOGENEOUS and i == 0 or (u.op == "clip" and _is_homogeneous_clip(u)):
                if u.op == "prelu" and _const(u.inputs[1]) is None:
                    return None
                todo.append(u.output)
            elif u.op == "mul" and len(u.inputs) == 2 and u.inputs[0] is not u.inputs[1] \
                    and u.output.shape == v.shape:
                todo.append(u.output)  # the other factor must stay unscaled: checked below
            else:
                return None
    ids = {id(v) for v in values}
    for v in values:  # a mul's other factor must not be reached by the scaling itself
        for u in v.users():
            if u.op == "mul" and all(id(i) in ids for i in u.inputs):
                return None
    for r in readers:
        if r is p:
            return None
    return Group(p, values, readers)


# --- ranges ---------------------------------------------------------------------------

def _out_range(p: Node) -> np.ndarray:
    """r1: the range of each output channel's weights."""
    w = np.abs(p.inputs[1].data.astype(np.float64))
    if p.op == "conv":
        return w.reshape(w.shape[0], -1).max(1)
    return (w.max(1) if p.attrs.get("trans_b", 0) else w.max(0))


def _in_ranges(r: Node, C: int) -> Tuple[np.ndarray, bool]:
    """r2: the range of each input channel's weights over the reader's output channels, and
    whether every output channel reads a single input channel (depthwise)."""
    w = np.abs(r.inputs[1].data.astype(np.float64))
    if r.op == "gemm":
        return (w.max(0) if r.attrs.get("trans_b", 0) else w.max(1)), False
    grp = r.attrs.get("group", 1)
    O, Cg = w.shape[:2]
    per = w.reshape(O, Cg, -1).max(2)  # [O, Cg]
    out = np.zeros(C)
    opg = O // grp
    for k in range(grp):
        out[k * Cg:(k + 1) * Cg] = per[k * opg:(k + 1) * opg].max(0)
    return out, Cg == 1


def _scale_producer(p: Node, s: np.ndarray, g: Graph) -> None:
    w = p.inputs[1].data.astype(np.float64)
    if p.op == "conv":
        w2 = w / s.reshape((-1,) + (1,) * (w.ndim - 1))
    else:
        w2 = w / (s.reshape(-1, 1) if p.attrs.get("trans_b", 0) else s.reshape(1, -1))
    _set_const(p, 1, w2, g)
    if len(p.inputs) > 2 and p.inputs[2] is not None:
        b = p.inputs[2].data.astype(np.float64)
        if b.size == s.size:
            _set_const(p, 2, b / s.reshape(b.shape), g)
        else:  # a scalar gemm bias broadcast over the columns
            _set_const(p, 2, np.broadcast_to(b.reshape(-1), s.shape) / s, g)
    stats = p.output.meta.get("bn_stats")
    if stats is not None:
        p.output.meta["bn_stats"] = (np.asarray(stats[0]) / s, np.asarray(stats[1]) / s)


def scaled_reader_weights(r: Node, s: np.ndarray) -> np.ndarray:
    """The weights of reader `r` (conv of any group, or gemm) with input channel i times s_i."""
    w = r.inputs[1].data.astype(np.float64)
    if r.op == "gemm":
        return w * (s.reshape(1, -1) if r.attrs.get("trans_b", 0) else s.reshape(-1, 1))
    grp = r.attrs.get("group", 1)
    O, Cg = w.shape[:2]
    opg = O // grp
    f = np.empty((O, Cg))
    for k in range(grp):
        f[k * opg:(k + 1) * opg] = s[k * Cg:(k + 1) * Cg][None, :]
    return w * f.reshape((O, Cg) + (1,) * (w.ndim - 2))


def _scale_reader(r: Node, s: np.ndarray, g: Graph) -> None:
    _set_const(r, 1, scaled_reader_weights(r, s), g)


def _set_const(n: Node, i: int, arr: np.ndarray, g: Graph) -> None:
    old = n.inputs[i]
    name = old.name if old.name.endswith(".eq") else old.name + ".eq"
    if len(old.uses) == 1:  # ours alone: replace in place, keeping the name stable
        c = g.add_const(name, arr.astype(old.data.dtype).reshape(old.shape), old.dtype)
        n.set_input(i, c)
        g.remove_const(old)
        if c.name != name and not g.has_value(name):
            g.rename(c, name)
    else:
        n.set_input(i, g.add_const(name, arr.astype(old.data.dtype).reshape(old.shape), old.dtype))


def _calib_ranges(g: Graph, groups: List[Group], samples) -> Dict[str, np.ndarray]:
    """Per-channel mean + 6σ of |x| of every group's value on the calibration data (a float
    run): the same robust extent the batch-norm statistics give, not a lone outlier's."""
    from qcc.interp import Interpreter
    from qcc.stats import SIGMAS

    want = {v.name for grp in groups for v in grp.values}
    acc: Dict[str, List[np.ndarray]] = {}

    class _Moments(Interpreter):
        def on_value(self, value, array):
            if value.name in want:
                a = np.abs(np.moveaxis(np.asarray(array, np.float64), 1, 0).reshape(array.shape[1], -1))
                m = [a.sum(1), (a * a).sum(1), np.full(a.shape[0], float(a.shape[1]))]
                old = acc.get(value.name)
                acc[value.name] = m if old is None else [x + y for x, y in zip(old, m)]

    it = _Moments(g)
    for feeds in samples:
        it.run(feeds)
    out = {}
    for k, (s1, s2, n) in acc.items():
        mu = s1 / n
        out[k] = mu + SIGMAS * np.sqrt(np.maximum(s2 / n - mu * mu, 0.0))
    return out


def _stats_ranges(g: Graph, groups: List[Group]) -> Dict[str, np.ndarray]:
    """Per-channel max |x| from batch-norm statistics (mean ± 6σ, rectified by relus)."""
    from qcc.stats import SIGMAS, propagate

    st = propagate(g)
    out = {}
    for grp in groups:
        for v in grp.values:
            if v.name in st:
                mu, sd = st[v.name]
                out[v.name] = np.maximum(np.abs(mu - SIGMAS * sd), np.abs(mu + SIGMAS * sd)) \
                    if v is grp.producer.output else np.maximum(mu + SIGMAS * sd, 0.0)
    return out


def _act_range(grp: Group, ranges: Dict[str, np.ndarray]) -> Optional[np.ndarray]:
    """a_i: the widest range channel i has in any value of the group that a quantizer sees.
    The producer's own output counts only when something other than a relu/clip reads it
    (the relu after a layer is fused into its requantize)."""
    cands = []
    for v in grp.values:
        if v is grp.producer.output and all(u.op in ("relu", "clip") for u in v.users()):
            continue
        if v.name not in ranges:
            return None
        cands.append(ranges[v.name])
    return np.max(cands, axis=0) if cands else None


def _clamp(s: np.ndarray, limit: float) -> np.ndarray:
    s = np.where(np.isfinite(s) & (s > 0), s, 1.0)
    mid = float(np.median(s))
    return np.clip(s / mid, 1.0 / limit, limit)


@register_pass
@dataclass(frozen=True)
class Equalize(Pass):
    """Cross-layer equalization: rescale channels between layers so ranges match (float output unchanged)."""

    name = "equalize"
    criterion: str = "ranges"  # ranges | weights
    max_scale: float = 16.0
    max_iters: int = 20
    use_calib: bool = False  # ranges criterion: measure on --calib data (default: batch-norm statistics)

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        if self.criterion not in ("ranges", "weights"):
            raise ValueError(f"equalize: criterion must be ranges or weights, got {self.criterion}")
        groups = [grp for n in graph.nodes if (grp := find_group(n, graph)) is not None]
        if not groups:
            return False
        ranges: Dict[str, np.ndarray] = {}
        source = "weights"
        if self.criterion == "ranges":
            samples = ctx.options.get("calib")
            if self.use_calib and isinstance(samples, list) and samples:
                ranges, source = _calib_ranges(graph, groups, samples), "calibration"
            else:
                ranges, source = _stats_ranges(graph, groups), "batch-norm statistics"
        report = {}
        by_range = [(grp, _act_range(grp, ranges)) for grp in groups] if ranges else []
        by_range = [(grp, a) for grp, a in by_range if a is not None]
        done = set()
        for grp, a in by_range:  # independent: a reader's scaling leaves its output as it was
            C = a.size
            r2s = [_in_ranges(r, C) for r in grp.readers]
            live = a > 0
            if all(dw for _, dw in r2s):
                s = np.where(live, a, 1.0)
            else:
                r2 = np.max([r for r, _ in r2s], axis=0)
                s = np.where(live & (r2 > 0), np.sqrt(a / np.where(r2 > 0, r2, 1.0)), 1.0)
            s = _clamp(s, self.max_scale)
            self._apply(grp, s, graph)
            done.add(id(grp.producer))
            report[grp.producer.name] = _summary(s, source)
        rest = [grp for grp in groups if id(grp.producer) not in done]
        total = {id(grp.producer): np.ones(grp.producer.output.shape[1]) for grp in rest}
        for _ in range(self.max_iters if rest else 0):  # Nagel: iterate over chains until settled
            worst = 0.0
            for grp in rest:
                r1 = _out_range(grp.producer)
                r2 = np.max([_in_ranges(r, r1.size)[0] for r in grp.readers], axis=0)
                ok = (r1 > 0) & (r2 > 0)
                s = np.where(ok, np.sqrt(np.where(ok, r1 / np.where(r2 > 0, r2, 1.0), 1.0)), 1.0)
                t = np.clip(total[id(grp.producer)] * s, 1.0 / self.max_scale, self.max_scale)
                s = t / total[id(grp.producer)]
                total[id(grp.producer)] = t
                self._apply(grp, s, graph)
                worst = max(worst, float(np.abs(np.log(s)).max()))
            if worst < 1e-3:
                break
        for grp in rest:
            report[grp.producer.name] = _summary(total[id(grp.producer)], "weights")
        ctx.report["equalized"] = report
        return True

    @staticmethod
    def _apply(grp: Group, s: np.ndarray, g: Graph) -> None:
        _scale_producer(grp.producer, s, g)
        for r in grp.readers:
            _scale_reader(r, s, g)


def _summary(s: np.ndarray, source: str) -> Dict:
    return {"channels": int(s.size), "min_scale": round(float(s.min()), 4),
            "max_scale": round(float(s.max()), 4), "ranges_from": source}
