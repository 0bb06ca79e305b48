"""assign-bitwidths: decide each layer's precision before `quantize` acts on it.

Today: int8 for every conv/gemm/matmul, except layers the user names
(`assign-bitwidths{precision=head.*:float;conv1:float}` or `--precision` on the
command line), which stay float. The decisions go to ctx.options["bitwidths"],
where `quantize` reads them, and to the report with the reason for each.
Sensitivity-driven mixed precision (issue 5) replaces the default rule here.

Before: %y = qcc.conv(...)            (layer "head.conv")
After:  unchanged IR; report: {"head.conv": {"bits": "float", "why": "user override head.*"}}
"""
from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from typing import Dict, List, Tuple

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


@register_pass
@dataclass(frozen=True)
class AssignBitwidths(Pass):
    """Choose int8 or float per layer (default int8; user overrides by name glob or op type)."""

    name = "assign-bitwidths"
    precision: str = ""

    def run(self, graph: Graph, ctx: PassContext) -> bool:
        rules = parse_precision(self.precision) + parse_precision(ctx.options.get("precision") or "")
        decisions: Dict[str, str] = {}
        report = {}
        for n in graph.nodes:
            if n.op not in LAYER_OPS:
                continue
            choice, why = "int8", "default"
            for pat, c in rules:  # later rules win, like command-line flags
                if fnmatch.fnmatchcase(n.name, pat) or pat == n.op:
                    choice, why = c, f"user override {pat}"
            decisions[n.name] = choice
            report[n.name] = {"bits": choice, "why": why}
        ctx.options["bitwidths"] = decisions
        ctx.report["bitwidths"] = report
        return False
