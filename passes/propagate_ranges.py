"""propagate-ranges: turn observed ranges into the ranges quantization will use.

Three rules, each recorded in the observe op's `source` so the report can say
where every range came from:
  * shared  - values linked by range-preserving ops (reshape, maxpool, slice, ...)
              and the operands and result of ops needing one scale (concat) get
              one range, the union of theirs (union-find), so no requantize is
              needed between them;
  * relu / clip - a range produced by relu or clip is narrowed to its bounds;
  * bn / weights - with no calibration data, a conv/gemm whose batch norm `fuse`
              folded gets mean ± 6σ per channel from the batch-norm statistics, and
              statistics flow on through weights, relu and adds (qcc.stats); other
              values take their producer's input range where it passes through.
Every range is widened to include 0 (zero must be exact: padding, relu), and an
all-constant tensor's zero-width range gets a small positive width instead of a
NaN scale.

Before: %a.obs = qcc.observe(%a) {range=[-1.0, 3.0]}   %p = qcc.max_pool(%a.obs)
        %p.obs = qcc.observe(%p) {range=[0.5, 2.5]}
After:  both observe ops: {range=[-1.0, 3.0], source="shared:a"}
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from qcc.ir.graph import Graph, Node, Value
from qcc.ir.opdef import RANGE_PRESERVING, SHARED_SCALE
from qcc.pass_manager import PassContext, register_property
from qcc.passes_registry import Pass, register_pass

MIN_WIDTH = 1e-6


def _ranged(g: Graph) -> bool:
    obs = [n for n in g.nodes if n.op == "observe"]
    return all(n.attrs.get("source") for n in obs)  # source="none": no range, stays float


register_property("ranged", "every observe op has its final range", _ranged)


class _UnionFind:
    def __init__(self):
        self.parent: Dict[int, int] = {}

    def find(self, a: int) -> int:
        self.parent.setdefault(a, a)
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _observer_of(v: Optional[Value]) -> Optional[Node]:
    """The observe op reading `v` (v's result is what consumers see), or producing it."""
    if v is None:
        return None
    if v.producer is not None and v.producer.op == "observe":
        return v.producer
    for u in v.users():
        if u.op == "observe":
            return u
    return None


def _source_value(obs: Node) -> Value:
    return obs.inputs[0]


def _data_free_range(obs: Node, ranges: Dict[int, Tuple[float, float]], stats):
    """A range without calibration data: from statistics derived from batch norms and
    weights (qcc.stats), or passed through from the producer's input."""
    from qcc.stats import stats_range

    v = _source_value(obs)
    p = v.producer
    if p is None:
        return None
    if v.name in stats:
        return stats_range(stats[v.name])
    if p.op in ("relu", "clip") or (p.opdef is not None and p.opdef.has(RANGE_PRESERVING)):
        src = _observer_of(p.inputs[0])
        if src is not None and id(src) in ranges:
            return ranges[id(src)]
    if p.op == "sigmoid":
        return 0.0, 1.0
    if p.op == "tanh":
        return -1.0, 1.0
    return None


@register_pass
@dataclass(frozen=True)
class PropagateRanges(Pass):
    """Share ranges across range-preserving ops and concat, narrow by relu/clip, fill gaps."""

    name = "propagate-ranges"
    produces = frozenset({"ranged"})

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        obs = [n for n in graph.nodes if n.op == "observe"]
        if not obs:
            return False
        order = {id(n): i for i, n in enumerate(graph.nodes)}
        ranges: Dict[int, Tuple[float, float]] = {}
        wide: Dict[int, Tuple[float, float]] = {}  # range16, where calibration chose one
        sources: Dict[int, str] = {}
        derived = []
        stats = None
        for n in obs:  # topological: producers' ranges are known first
            r = n.attrs.get("range")
            if r:
                ranges[id(n)] = (float(r[0]), float(r[1]))
                r16 = n.attrs.get("range16")
                if r16:
                    wide[id(n)] = (float(r16[0]), float(r16[1]))
                sources[id(n)] = n.attrs.get("source") or "observer"
            else:
                if stats is None:
                    from qcc.stats import propagate

                    stats = propagate(graph)
                r = _data_free_range(n, ranges, stats)
                if r is not None:
                    ranges[id(n)] = r
                    sources[id(n)] = "bn" if _source_value(n).meta.get("bn_stats") is not None else \
                        ("weights" if _source_value(n).name in stats else "derived")
                    derived.append(n)
        if derived:
            ctx.warn(f"{len(derived)} activation ranges derived without calibration data")

        # narrowing by relu / clip producers
        for n in obs:
            p = _source_value(n).producer
            if id(n) not in ranges or p is None:
                continue
            if p.op == "relu":
                for rs in (ranges, wide):
                    if id(n) in rs:
                        lo, hi = rs[id(n)]
                        rs[id(n)] = (max(lo, 0.0), max(hi, 0.0))
                sources[id(n)] += "+relu"
            elif p.op == "clip":
                a, b = p.attrs.get("min", -np.inf), p.attrs.get("max", np.inf)
                for rs in (ranges, wide):
                    if id(n) in rs:
                        lo, hi = rs[id(n)]
                        rs[id(n)] = (min(max(lo, a), b), max(min(hi, b), a))
                sources[id(n)] += "+clip"

        # sharing: union-find over observe ops linked through range-preserving ops and concat
        uf = _UnionFind()
        by_id = {id(n): n for n in obs}
        for node in graph.nodes:
            d = node.opdef
            if d is None or node.op == "observe":
                continue
            if not (d.has(RANGE_PRESERVING) or d.has(SHARED_SCALE)):
                continue
            out_obs = [_observer_of(o) for o in node.outputs]
            acts = [i for i in node.inputs if i is not None and not i.is_const]
            in_obs = [_observer_of(i) for i in (acts if d.has(SHARED_SCALE) else acts[:1])]
            members = [o for o in out_obs + in_obs if o is not None and id(o) in ranges]
            for m in members[1:]:
                uf.union(id(members[0]), id(m))
        groups: Dict[int, List[int]] = {}
        for k in ranges:
            groups.setdefault(uf.find(k), []).append(k)
        shared_report = []
        for root, members in groups.items():
            if len(members) < 2:
                continue
            members.sort(key=lambda m: order[m])  # deterministic: label by the first in the graph
            lo = min(ranges[m][0] for m in members)
            hi = max(ranges[m][1] for m in members)
            label = _source_value(by_id[members[0]]).name
            if any(m in wide for m in members):  # one 16-bit scale too: a member without its own
                lo16 = min(wide.get(m, ranges[m])[0] for m in members)  # range16 brings its range
                hi16 = max(wide.get(m, ranges[m])[1] for m in members)
                wide.update((m, (lo16, hi16)) for m in members)
            for m in members:
                ranges[m] = (lo, hi)
                sources[m] = f"shared:{label}"
            shared_report.append({"group": label, "members": sorted(_source_value(by_id[m]).name for m in members),
                                  "range": [lo, hi]})

        changed = False
        missing = []
        for n in obs:
            if n.attrs.get("scale"):  # a QDQ model's fixed params: range and source stay as imported
                continue
            if id(n) not in ranges:
                missing.append(_source_value(n).name)
                n.attrs["source"] = "none"
                continue
            lo, hi = ranges[id(n)]
            lo, hi = min(lo, 0.0), max(hi, 0.0)
            if hi - lo < MIN_WIDTH:
                hi = lo + MIN_WIDTH
            new = {"range": [float(lo), float(hi)], "source": sources[id(n)]}
            if id(n) in wide:
                lo16, hi16 = wide[id(n)]
                lo16, hi16 = min(lo16, lo), max(hi16, hi)  # never narrower than the 8-bit range
                new["range16"] = [float(lo16), float(hi16)]
            if any(n.attrs.get(k) != v for k, v in new.items()):
                n.attrs.update(new)
                changed = True
        if missing:
            ctx.warn(f"no range for {len(missing)} activations (e.g. %{missing[0]}); they stay in float")
        ctx.report["shared_scale_groups"] = shared_report
        return changed
