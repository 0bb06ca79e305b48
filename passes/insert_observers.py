"""insert-observers: mark every float activation for quantization and calibrate it.

An `observe` op (an identity) goes after each float activation that something
reads. With calibration data (`--calib`, in ctx.options["calib"]) the float graph
runs over every sample through the reference interpreter, streaming each
observed tensor into a bounded histogram, and the chosen range is written into
the observe op, where `--print-ir-after=insert-observers` shows it.

Before: %c = qcc.conv(%x, %w, %b) {...} : f32[1,8,4,4]
        %r = qcc.relu(%c) : f32[1,8,4,4]
After:  %x.obs = qcc.observe(%x) {method="percentile", range=[-2.1, 2.3], source="observer"} : f32[...]
        %c = qcc.conv(%x.obs, %w, %b) {...} : f32[1,8,4,4]
        %c.obs = qcc.observe(%c) {...}
        %r = qcc.relu(%c.obs) : f32[1,8,4,4]
        %r.obs = qcc.observe(%r) {...}
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Dict

from qcc.calibrate import METHODS, CalibError, load_samples, observe
from qcc.ir.graph import Graph, Value
from qcc.ir.types import FLOAT_DTYPES
from qcc.pass_manager import PassContext, register_property
from qcc.passes_registry import Pass, register_pass

SKIP_PRODUCERS = ("observe", "quantize", "dequantize", "shape")


def observe_nodes(g: Graph):
    return [n for n in g.nodes if n.op == "observe"]


def _calibrated(g: Graph) -> bool:
    obs = observe_nodes(g)
    return bool(obs) and all(n.attrs.get("range") for n in obs)


register_property("calibrated", "every observe op carries a calibrated range", _calibrated)


def _parse_overrides(text: str) -> Dict[str, str]:
    """'conv1*:mse;fc*:minmax' -> {'conv1*': 'mse', 'fc*': 'minmax'}"""
    out = {}
    for item in filter(None, (t.strip() for t in text.split(";"))):
        if ":" not in item:
            raise ValueError(f"per-tensor override '{item}' must be GLOB:METHOD")
        pat, m = item.rsplit(":", 1)
        if m not in METHODS:
            raise ValueError(f"unknown calibration method '{m}' (known: {', '.join(METHODS)})")
        out[pat] = m
    return out


def _wants_observer(v: Value, outputs) -> bool:
    if v.dtype not in FLOAT_DTYPES or not (v.uses or v in outputs):
        return False
    if any(u.op == "observe" for u in v.users()):
        return False  # already observed (e.g. a QDQ model's fixed params)
    return v.producer is None or v.producer.op not in SKIP_PRODUCERS


@register_pass
@dataclass(frozen=True)
class InsertObservers(Pass):
    """Observe every float activation and, given --calib data, calibrate its range."""

    name = "insert-observers"
    produces = frozenset()
    method: str = "percentile"
    percentile: float = 99.99
    per_tensor: str = ""  # 'glob:method;glob:method'

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method '{self.method}' (known: {', '.join(METHODS)})")
        method = ctx.options.get("calib_method") or self.method
        overrides = _parse_overrides(self.per_tensor)
        first = graph.nodes[0] if len(graph) else None
        outs = set(graph.outputs)
        targets = [v for v in graph.inputs if _wants_observer(v, outs)]
        targets += [o for n in graph.nodes for o in n.outputs if _wants_observer(o, outs)]
        if not targets:
            return False
        for v in targets:
            m = next((mm for pat, mm in overrides.items() if fnmatch.fnmatchcase(v.name, pat)), method)
            uses = list(v.uses)
            node = graph.add_node("observe", [v], {"method": m}, names=[v.name + ".obs"], types=[v.type],
                                  **({"after": v.producer} if v.producer is not None else {"before": first}))
            for user, i in uses:
                user.set_input(i, node.output)
            graph.set_outputs([node.output if o is v else o for o in graph.outputs])
        calib = ctx.options.get("calib")
        if calib is not None:
            self._calibrate(graph, ctx, calib)
        elif any(not n.attrs.get("scale") for n in observe_nodes(graph)):
            ctx.warn("no calibration data (--calib): activation ranges will be derived from "
                     "batch-norm statistics and weights, which is less accurate")
        return True

    def _calibrate(self, graph: Graph, ctx: PassContext, calib) -> None:
        samples = load_samples(calib, graph, warn=ctx.warn) if not isinstance(calib, list) else calib
        nodes = [n for n in observe_nodes(graph) if not n.attrs.get("scale")]  # fixed params stay
        names = sorted({n.inputs[0].name for n in nodes})
        ctx.progress(f"calibrating {len(names)} tensors on {len(samples)} batches")
        observers = observe(graph, samples, names, ctx.progress)
        for n in nodes:
            ob = observers[n.inputs[0].name]
            try:
                lo, hi = ob.range(n.attrs["method"], self.percentile)
            except CalibError as e:
                raise CalibError(f"%{n.inputs[0].name}: {e}") from None
            n.attrs["range"] = [float(lo), float(hi)]
            n.attrs["source"] = "observer"
        ctx.properties.add("calibrated")
        ctx.report["calibration"] = {"batches": len(samples), "tensors": len(names),
                                     "method": self.method}
