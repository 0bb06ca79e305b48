"""align-input-grid: quantize an input that holds 8-bit data on its own grid, exactly.

Most image models read 8-bit pixels through a float normalization, (p / 255 - m) / s, so
every value of the input lies on a grid of at most 256 levels. A range chosen from a
histogram (mse, percentile) puts the uint8 grid across that one: on PP-OCR cls (inputs
(p - 127.5) / 127.5) mse chose [-0.898, 0.877], a step of 0.00696 against the pixels' 0.00784,
and the rounding alone, fed to the float model, flipped 17 of 4096 held-out crops (RMS logit
error 0.074; the whole -O2 model's is about 0.28). With the grid's own step as the scale no
pixel moves: this pass finds the grid in the calibration data and fixes the input's range
to it (the observe op it inserts carries `source="grid"`, and insert-observers leaves it).

A uint8 grid needs an integer zero point, so zero must be a grid level. Where it is not --
(p - 127.5) / 127.5 puts zero half-way between two pixels -- the input is shifted by the
offset delta (a float `add` on the input, before its quantize: one add per input element)
and delta * (sum of each output channel's weights) goes into the bias of every conv/gemm
reading it. That is exact but where a conv's zero padding enters: a padded tap reads delta
instead of 0 (half a pixel step at most). Exact zeros in the data that are not grid levels
(the padding a preprocessing adds) round to the nearest level, also half a step off.

Only inputs read by layers alone are shifted (a bias can absorb the shift), and only data
that looks like a grid is taken: at most 256 levels spanned, every non-zero value on them,
and at least half of the spanned levels (and 16) present, so a handful of values is not
mistaken for one. Without calibration data nothing changes. The report's `input_grid`
says, per input, the step, the levels seen, the range, the shift and where it went.

Before: %c = qcc.conv(%x, %w, %b) {pads=[1, 1, 1, 1], ...}
After:  %x.aligned = qcc.add(%x, %x.shift)               (x.shift = -delta)
        %x.aligned.obs = qcc.observe(%x.aligned) {method="grid", range=[lo, hi], source="grid"}
        %c = qcc.conv(%x.aligned.obs, %w, %b.grid)       (b.grid = b + delta * sum(w))
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np

from qcc.ir.graph import Graph, Node, Value
from qcc.pass_manager import PassContext
from qcc.passes_registry import Pass, register_pass

from .fuse import _layer_bias
from .smooth import readers

LEVELS = 256  # a uint8 grid
MAX_DISTINCT = 4 * LEVELS  # more distinct values than this: not 8-bit data, stop collecting
MIN_DISTINCT = 16
TOL = 1e-3  # of a step: how far from a level a float32 value of it may land


@dataclass(frozen=True)
class Grid:
    """Values a + k * step for integers k; `zero` is where 0 falls, in steps from a."""

    a: float
    step: float
    levels: int  # spanned by the data: k in [0, levels)
    distinct: int

    @property
    def zero(self) -> float:
        return -self.a / self.step

    @property
    def zero_level(self) -> int:
        """The level that becomes 0: the nearest to where 0 falls (the upper one at a tie,
        so the choice does not follow float noise)."""
        return math.floor(self.zero + 0.5 + TOL)

    @property
    def shift(self) -> float:
        """delta: how far the grid sits from one through 0 (0.0 when zero is a level)."""
        frac = self.zero - self.zero_level
        return 0.0 if abs(frac) < TOL else -frac * self.step


def distinct_values(batches: List[np.ndarray]) -> Optional[np.ndarray]:
    """The sorted distinct finite values over the batches; None past MAX_DISTINCT."""
    seen = np.empty(0, np.float32)
    for x in batches:
        u = np.unique(np.asarray(x, np.float32))
        seen = np.union1d(seen, u[np.isfinite(u)])
        if seen.size > MAX_DISTINCT:
            return None
    return seen


def find_grid(values: np.ndarray) -> Optional[Grid]:
    """The uniform grid the non-zero `values` lie on, when they look like 8-bit data."""
    u = values[values != 0].astype(np.float64)
    if u.size < MIN_DISTINCT:
        return None
    step = float(np.min(np.diff(u)))
    if not step > 0:
        return None
    k = (u - u[0]) / step
    ki = np.round(k)
    if np.max(np.abs(k - ki)) > TOL or ki[-1] + 1 > LEVELS:
        return None
    step, a = np.polyfit(ki, u, 1)  # the float32 values' least-squares grid
    levels = int(ki[-1]) + 1
    if u.size * 2 < levels:
        return None
    return Grid(float(a), float(step), levels, int(u.size))


def grid_range(g: Grid) -> Optional[Tuple[float, float]]:
    """The uint8 range whose levels are the grid's (shifted by -shift), zero among them: a
    step of exactly `g.step`. Levels the data did not reach are split between both ends,
    unless the data stays on one side of zero."""
    j0 = g.zero_level
    jmin, jmax = min(-j0, 0), max(g.levels - 1 - j0, 0)
    spare = (LEVELS - 1) - (jmax - jmin)
    if spare < 0:
        return None
    if jmin == 0:
        lo = 0
    elif jmax == 0:
        lo = -(LEVELS - 1)
    else:
        lo = jmin - spare // 2
    return lo * g.step, (lo + LEVELS - 1) * g.step


def _readers(v: Value) -> Optional[List[Node]]:
    """The convs/gemms reading `v` as their data input (smooth's readers: a bias can take the
    shift back), when nothing else reads it and no gemm scales its product or bias."""
    rs = readers(v) if v.type.rank >= 2 else None
    if rs is None or any(r.op == "gemm" and (r.attrs.get("alpha", 1.0), r.attrs.get("beta", 1.0)) != (1.0, 1.0)
                         for r in rs):
        return None
    return rs


def _weight_sums(n: Node) -> np.ndarray:
    """Each output channel's sum of weights: what a constant input of 1 adds to it."""
    w = n.inputs[1].data.astype(np.float64)
    if n.op == "conv":
        return w.reshape(w.shape[0], -1).sum(axis=1)
    return w.sum(axis=1) if n.attrs.get("trans_b", 0) else w.sum(axis=0)


def _add_to_bias(n: Node, extra: np.ndarray, g: Graph) -> None:
    b = n.inputs[2] if len(n.inputs) > 2 else None
    old = _layer_bias(n)  # a constant: smooth's readers take only layers with constant biases
    name = (b.name if b is not None else n.output.name + ".b") + ".grid"
    c = g.add_const(name, (old + extra).astype(np.float32))
    if len(n.inputs) < 3:
        n.inputs.append(None)
    n.set_input(2, c)
    if b is not None and not b.uses:
        g.remove_const(b)


@register_pass
@dataclass(frozen=True)
class AlignInputGrid(Pass):
    """Give a graph input holding 8-bit data (a grid of <= 256 levels) its own grid as range."""

    name = "align-input-grid"
    produces = frozenset()

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        samples = ctx.options.get("calib")
        if not (isinstance(samples, list) and samples):
            return False
        report: Dict[str, Dict] = {}
        for v in list(graph.inputs):
            if v.dtype != "f32" or not v.uses or any(u.op == "observe" for u in v.users()):
                continue
            xs = [s.get(v.name) if isinstance(s, Mapping) else None for s in samples]
            if not all(isinstance(x, np.ndarray) and x.dtype.kind in "fiu" for x in xs):
                continue  # data insert-observers will refuse, with the reason
            vals = distinct_values(xs)
            g = find_grid(vals) if vals is not None else None
            if g is None:
                continue
            shift = g.shift
            layers = _readers(v) if shift else []
            if layers is None:
                continue  # zero is not a level and something other than a layer reads it
            rng = grid_range(g)
            if rng is None:
                continue
            first = graph.nodes[0] if len(graph) else None
            src = v
            if shift:
                c = graph.add_const(v.name + ".shift", np.array(-shift, np.float32))
                src = graph.add_node("add", [v, c], names=[v.name + ".aligned"], before=first).output
            uses = [(u, i) for u, i in v.uses if u is not src.producer]
            obs = graph.add_node("observe", [src], {"method": "grid", "range": [float(r) for r in rng],
                                                    "source": "grid"},
                                 names=[src.name + ".obs"], types=[src.type],
                                 **({"after": src.producer} if src is not v else {"before": first}))
            for u, i in uses:
                u.set_input(i, obs.output)
            for r in layers:
                _add_to_bias(r, shift * _weight_sums(r), graph)
            padded = [r.output.name for r in layers if r.op == "conv" and any(r.attrs.get("pads", []))]
            report[v.name] = {"step": g.step, "levels": g.levels, "distinct": g.distinct,
                              "range": [float(r) for r in rng], "shift": shift,
                              "into_bias_of": [r.output.name for r in layers],
                              **({"padded": padded} if padded else {}),  # these read `shift` at their pads
                              "zeros_off_grid": bool(shift) and bool(np.any(vals == 0))}
        if report:
            ctx.report["input_grid"] = report
        return bool(report)
