"""The compile report: every number the compiler chose, per layer, and what it cost.

Per layer: op, MACs, weight/activation bits, scales, the calibrated range and how
it was derived, the requantize multiplier/shift, and — when calibration data was
given — the SQNR of that layer's output against the float model on that data.
`summary` holds the totals build systems and benchmarks read.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from .analysis import macs, output_parts, total_macs, weight_bytes
from .ir.graph import Graph
from .ir.types import FLOAT_DTYPES, INT_INFO

LOW_BITS = ("i8", "u8", "i4", "u4")


def _bits(dtype: Optional[str]):
    if dtype is None:
        return None
    return INT_INFO[dtype][0] if dtype in INT_INFO else "float"


def precision_of(weight_bits, activation_bits) -> str:
    """The bit-width choice a layer ended up with, as assign-bitwidths names them."""
    if not isinstance(weight_bits, int) or not isinstance(activation_bits, int):
        return "float"
    if (weight_bits, activation_bits) == (8, 8):
        return "int8"
    return f"w{weight_bits}a{activation_bits}"


def layer_name(node) -> str:
    return node.name[: -len(".acc")] if node.op in ("qconv", "qmatmul") and node.name.endswith(".acc") else node.name


def signal_noise(ref: np.ndarray, got: np.ndarray) -> Tuple[float, float, int]:
    """(sum of ref^2, sum of (got - ref)^2, element count), in float64: what sqnr_db of
    several arrays together needs, without keeping them."""
    ref = ref.astype(np.float64)
    return float(np.sum(ref ** 2)), float(np.sum((got.astype(np.float64) - ref) ** 2)), ref.size


def sqnr_db(signal: float, noise: float, count: int) -> float:
    """SQNR in dB of summed signal and noise powers over `count` elements (signal_noise)."""
    if noise == 0:
        return float("inf")
    return round(10 * np.log10(max(signal / count, 1e-30) / (noise / count)), 2)


def layer_errors(float_graph: Graph, quant_graph: Graph, samples: Sequence[Dict[str, np.ndarray]],
                 layers: Dict[str, Dict], batch_outputs: Optional[List[Dict[str, float]]] = None
                 ) -> Dict[str, float]:
    """SQNR (dB) of each quantized layer's output, and of each model output (and each part
    of a concatenated one, analysis.output_parts), against float.

    Per batch: the float run keeps only the layers' outputs, the quantized run compares
    each with its reference as it is produced, and the batch is reduced to per-layer sums
    of signal and noise power (sqnr_db of the concatenated batches, without keeping them:
    on BEiT-base every value of two runs of 8 batches held gigabytes)."""
    from .batches import imap_batches
    from .interp import Interpreter
    from .ops.quant import dequantize

    out_parts = output_parts(float_graph)
    refs_wanted = {info.get("output_value") for info in layers.values()}
    by_quant_value = {}  # quantized graph value -> (layer, "requantize" | "dequantize")
    for name, info in layers.items():
        for kind in ("requantize", "dequantize"):
            if info.get(kind):
                by_quant_value.setdefault(info[kind], []).append((name, kind))

    class _Refs(Interpreter):
        def on_value(self, value, array):
            if value.name in refs_wanted:
                self.refs[value.name] = array

    class _Compare(Interpreter):
        def on_value(self, value, array):
            for name, kind in by_quant_value.get(value.name, ()):
                ref = self.refs.get(layers[name].get("output_value"))
                if ref is None or ref.dtype.kind != "f" or (kind == "dequantize" and name in self.sums):
                    continue
                if kind == "requantize":  # an 8-bit output: its real values
                    q = quant_graph.value(value.name).quant
                    array = dequantize(array, scale=list(q.scale), zero_point=list(q.zero_point), axis=-1)
                self.sums[name] = signal_noise(ref, array)  # a requantize, when there is one, wins

    def one(feeds) -> Dict[str, tuple]:
        fi = _Refs(float_graph)
        fi.refs = {}
        fo = fi.run(feeds)
        qi = _Compare(quant_graph)
        qi.refs, qi.sums = fi.refs, {}
        qo = qi.run(feeds)
        sums = qi.sums
        for (k, ref), got, parts in zip(fo.items(), qo.values(), out_parts):
            if ref.dtype.kind == "f":
                sums["output:" + k] = signal_noise(ref, got)
                for label, index in parts:
                    sums["output:" + label] = signal_noise(ref[index], got[index])
        return sums

    totals: Dict[str, List[float]] = {}
    for sums in imap_batches(one, list(samples)):
        if batch_outputs is not None:  # -O3's recipe choice compares recipes batch by batch
            batch_outputs.append({k: sqnr_db(*v) for k, v in sums.items() if k.startswith("output:")})
        for name, (signal, noise, count) in sums.items():
            t = totals.setdefault(name, [0.0, 0.0, 0])
            t[0] += signal
            t[1] += noise
            t[2] += count
    return {name: sqnr_db(*t) for name, t in totals.items()}


# what passes put in ctx.report that report.json carries, in this order; a pass's new key goes
# here or in PASS_KEYS_KEPT_OUT (tests/test_compile.py checks every built-in pass's keys)
PASS_KEYS = ("bitwidths", "shared_scale_groups", "calibration", "fused", "embeddings", "equalized", "smoothed",
             "input_grid", "bias_correction", "round_weights_before_search", "round_weights",
             "predicted_output_sqnr_db", "a16_share", "size_budget", "bitwidth_search_batches", "bitwidth_search_stopped",
             "error_batches")
# merged into the per-layer entries; the pass times differ run to run (report.json is deterministic)
PASS_KEYS_KEPT_OUT = ("layers_quantized", "pass_times_s")


def build_report(g: Graph, float_graph_bytes: int, opaque: List[str], pass_report: Optional[Dict] = None,
                 errors: Optional[Dict[str, float]] = None) -> Dict:
    pass_report = pass_report or {}
    errors = errors or {}
    quantized = pass_report.get("layers_quantized", {})
    layers = []
    for n in g.nodes:
        m = macs(n)
        if not m:
            continue
        w = n.inputs[1] if len(n.inputs) > 1 else None
        x = n.inputs[0]
        name = layer_name(n)
        entry = {"name": name, "op": n.op, "macs": m,
                 "weight_bits": _bits(w.dtype if w is not None else None),
                 "activation_bits": _bits(x.dtype if x is not None else None)}
        info = quantized.get(name)
        if info:
            entry.update(info)
        if name in errors:
            entry["sqnr_db"] = errors[name]
        layers.append(entry)
    all_macs = total_macs(g)
    int8 = sum(l["macs"] for l in layers
               if isinstance(l["weight_bits"], int) and l["weight_bits"] <= 8
               and isinstance(l["activation_bits"], int) and l["activation_bits"] <= 8)
    by_precision: Dict[str, int] = {}
    for l in layers:
        key = precision_of(l["weight_bits"], l["activation_bits"])
        by_precision[key] = by_precision.get(key, 0) + l["macs"]
    summary = {
        "nodes": len(g),
        "macs": all_macs,
        "int8_mac_fraction": round(int8 / all_macs, 6) if all_macs else 0.0,
        # MAC shares per precision ("int8", "w4a8", "w8a16", ..., "float"): int8_mac_fraction
        # is the share at 8 bits or fewer (int8 and w4a8)
        "mac_fraction_by_precision": {k: round(v / all_macs, 6) for k, v in sorted(by_precision.items())}
        if all_macs else {},
        "size_bytes_float": float_graph_bytes,
        "size_bytes_quantized": weight_bytes(g),
        "float_ops_left": sorted({n.op for n in g.nodes if n.outputs and n.outputs[0].dtype in FLOAT_DTYPES
                                  and n.op not in ("dequantize",)}),
    }
    outs = {k[len("output:"):]: v for k, v in errors.items() if k.startswith("output:")}
    if outs:
        summary["output_sqnr_db"] = outs
    report = {"layers": layers, "opaque_ops": opaque, "summary": summary}
    for key in PASS_KEYS:
        if key in pass_report:
            report[key] = pass_report[key]
    return report


def summary_table(report: Dict, limit: int = 12) -> str:
    """A short terminal table: the layers with the most MACs, then totals."""
    rows = sorted(report["layers"], key=lambda l: -l["macs"])[:limit]
    lines = [f"  {'layer':<28} {'op':<8} {'MMACs':>7} {'w':>5} {'a':>5} {'SQNR dB':>8}"]
    for l in rows:
        sq = l.get("sqnr_db")
        lines.append(f"  {l['name'][:28]:<28} {l['op']:<8} {l['macs'] / 1e6:7.2f} {str(l['weight_bits']):>5} "
                     f"{str(l['activation_bits']):>5} {'' if sq is None else f'{sq:8.1f}'}")
    if len(report["layers"]) > limit:
        lines.append(f"  ... {len(report['layers']) - limit} more layers in report.json")
    return "\n".join(lines)
