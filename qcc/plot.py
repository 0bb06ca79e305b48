"""A per-layer picture for people who would rather look than read: one bar per layer
(its measured SQNR, or its sensitivity when the search measured one), coloured by the
precision chosen. Plain, deterministic SVG: no plotting library, diffable in a review."""
from __future__ import annotations

from typing import Dict
from xml.sax.saxutils import escape

from .report import precision_of

# by precision (qcc.report.precision_of): int8 blue, 4-bit weights teal, 16-bit activations
# orange, 16-bit weights purple, float red
COLORS = {"int8": "#4c78a8", "float": "#e45756", "w4a8": "#72b7b2", "w8a16": "#f58518",
          "w4a16": "#eeca3b", "w16a8": "#b279a2", "w16a16": "#9d755d"}


def layers_svg(report: Dict) -> str:
    rows = [l for l in report.get("layers", [])]
    sens = {k: v.get("sensitivity_db") for k, v in report.get("bitwidths", {}).items()}
    vals = []
    for l in rows:
        v = sens.get(l["name"])
        v = l.get("sqnr_db") if v is None else v
        vals.append(None if v is None or v == float("inf") else float(v))
    top = max([v for v in vals if v is not None] + [10.0])
    bar_h, label_w, plot_w = 14, 220, 420
    h = 40 + bar_h * len(rows)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + plot_w + 80}" height="{h}" '
           f'font-family="sans-serif" font-size="11">',
           f'<text x="4" y="14" font-weight="bold">per-layer SQNR vs float (dB; sensitivity where searched)'
           f' — blue int8, teal w4, orange a16, red float</text>']
    for i, (l, v) in enumerate(zip(rows, vals)):
        y = 24 + i * bar_h
        color = COLORS.get(precision_of(l.get("weight_bits"), l.get("activation_bits")), "#999")
        out.append(f'<text x="4" y="{y + 10}">{escape(l["name"][:34])}</text>')
        if v is not None:
            w = max(1, int(plot_w * max(v, 0) / top))
            out.append(f'<rect x="{label_w}" y="{y + 1}" width="{w}" height="{bar_h - 3}" fill="{color}"/>')
            out.append(f'<text x="{label_w + w + 4}" y="{y + 10}">{v:.1f}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
