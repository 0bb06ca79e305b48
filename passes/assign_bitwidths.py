"""assign-bitwidths: choose each layer's precision from measured sensitivity, under a budget.

Uniform int8 is where other tools stop, and on real models it breaks. With
calibration data this pass measures, for every conv/gemm/matmul, the model's
output SQNR when only that layer is quantized (reusing float activations, see
qcc.sensitivity). Then, starting from all-int8, it keeps the most sensitive layers
in float until the whole quantized model meets the error budget (`min-sqnr`, dB at
the outputs), never letting the share of int8 MACs fall below `min-int8-fraction`.
User rules (`precision=head.*:float;conv1:int8`, or `--precision`) are honoured
first and never overridden. Decisions go to ctx.options["bitwidths"] for `quantize`
and to the report with the reason and sensitivity of each layer.

Before: every layer int8            After: {"conv_12": "float" (sensitivity 18.2 dB), others int8}
(the IR is unchanged; the decisions travel in the context and the report)
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Dict, List, Tuple

from qcc.analysis import macs
from qcc.ir.graph import Graph
from qcc.pass_manager import PassContext
from qcc.passes_registry import Pass, register_pass

CHOICES = ("int8", "float")
LAYER_OPS = ("conv", "gemm", "matmul", "conv_transpose")


def parse_precision(text: str) -> List[Tuple[str, str]]:
    """'conv1:float;head.*:float' (or with '=') -> [(glob, choice), ...]."""
    rules = []
    for item in filter(None, (t.strip() for t in text.replace(",", ";").split(";"))):
        sep = "=" if "=" in item else ":"
        if sep not in item:
            raise ValueError(f"precision rule '{item}' must be GLOB=PRECISION (e.g. 'head.*=float')")
        pat, choice = (s.strip() for s in item.rsplit(sep, 1))
        if choice not in CHOICES:
            raise ValueError(f"precision rule '{item}': '{choice}' is not one of {', '.join(CHOICES)}")
        rules.append((pat, choice))
    return rules


def parse_error_budget(text: str) -> float:
    """'30dB' -> 30.0 (minimum output SQNR); '0.01' (a relative error) -> 40.0 dB."""
    import math

    t = str(text).strip().lower()
    if not t:
        return 0.0
    if t.endswith("db"):
        return float(t[:-2])
    r = float(t)
    if not 0 < r < 1:
        raise ValueError(f"--max-error {text}: give dB (like 30dB) or a relative error in (0, 1)")
    return -20 * math.log10(r)


@register_pass
@dataclass(frozen=True)
class AssignBitwidths(Pass):
    """Choose int8 or float per layer from measured sensitivity under an error budget."""

    name = "assign-bitwidths"
    precision: str = ""
    search: bool = True  # measure and search when calibration data is there
    min_sqnr: float = 30.0  # dB at the model's outputs; 0 disables the error budget
    min_int8_fraction: float = 0.0
    samples: int = 4  # calibration batches used for the measurements
    max_float_layers: int = 16

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        rules = parse_precision(self.precision) + parse_precision(ctx.options.get("precision") or "")
        layers = [n for n in graph.nodes if n.op in LAYER_OPS]
        layer_macs = {n.name: macs(n) for n in layers}
        decisions: Dict[str, str] = {}
        report: Dict[str, Dict] = {}
        pinned = set()
        for n in layers:
            choice, why = "int8", "default"
            for pat, c in rules:  # later rules win, like command-line flags
                if fnmatch.fnmatchcase(n.name, pat) or pat == n.op:
                    choice, why = c, f"user rule {pat}"
                    pinned.add(n.name)
            decisions[n.name] = choice
            report[n.name] = {"bits": choice, "why": why, "macs": layer_macs[n.name]}
        samples = ctx.options.get("calib")
        budget = ctx.options.get("min_sqnr", self.min_sqnr)
        floor = ctx.options.get("min_int8_fraction", self.min_int8_fraction)
        if self.search and samples and budget and isinstance(samples, list):
            self._search(graph, ctx, samples[: self.samples], decisions, report, pinned, layer_macs, budget, floor)
        ctx.options["bitwidths"] = decisions
        ctx.report["bitwidths"] = report
        return False

    def _search(self, graph, ctx, samples, decisions, report, pinned, layer_macs, budget, floor):
        from qcc.sensitivity import FloatCache, layer_sensitivity, output_sqnr, quantized_copy

        total = sum(layer_macs.values()) or 1
        free = [n for n in decisions if n not in pinned and decisions[n] == "int8"]
        cache = FloatCache(graph, samples)
        current = output_sqnr(cache, quantized_copy(graph, decisions))
        ctx.report["predicted_output_sqnr_db"] = {"all_int8": round(current, 2)}
        if current >= budget or not free:
            return
        ctx.progress(f"int8 output SQNR {current:.1f} dB is under the {budget:g} dB budget: "
                     f"measuring {len(free)} layers")
        sens = layer_sensitivity(graph, cache, free, ctx.progress)
        for name, s in sens.items():
            report[name]["sensitivity_db"] = round(s, 2)
        raised = 0
        for name in sorted(free, key=lambda l: sens[l]):  # most sensitive first
            int8_after = sum(m for l, m in layer_macs.items()
                             if decisions[l] == "int8" and l != name) / total
            if int8_after < floor or raised >= self.max_float_layers:
                ctx.warn(f"error budget {budget:g} dB not met ({current:.1f} dB): "
                         f"{'the int8 MAC floor' if int8_after < floor else 'the float layer limit'} stops the search")
                break
            decisions[name] = "float"
            report[name].update(bits="float", why=f"sensitive: {sens[name]:.1f} dB when quantized alone")
            raised += 1
            current = output_sqnr(cache, quantized_copy(graph, decisions))
            ctx.progress(f"kept {name} in float: output SQNR now {current:.1f} dB")
            if current >= budget:
                break
        ctx.report["predicted_output_sqnr_db"]["chosen"] = round(current, 2)
