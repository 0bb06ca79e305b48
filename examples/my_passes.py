"""Two user passes, loaded with `qcc opt model.qir --plugin examples/my_passes.py --passes ...`.

The API a pass is written against: `graph.nodes` (in topological order),
`node.op`, `node.attrs`, `node.inputs`, `node.outputs`; values' `type`, `quant`,
`producer`, `uses`; and the mutation methods `graph.add_node`,
`graph.replace_value`, `graph.remove_node`, `graph.eliminate_dead_code`.
"""
from dataclasses import dataclass

from qcc import Pass, register_pass


@register_pass("fold-double-neg")
def fold_double_neg(graph, ctx) -> bool:
    """Replace neg(neg(x)) by x.

    Before: %a = qcc.neg(%x)   %b = qcc.neg(%a)   %y = qcc.relu(%b)
    After:  %y = qcc.relu(%x)
    """
    changed = False
    for node in graph.nodes:
        src = node.inputs[0] if node.inputs else None
        if node.op == "neg" and src is not None and src.producer is not None and src.producer.op == "neg":
            graph.replace_value(node.output, src.producer.inputs[0])
            changed = True
    return graph.eliminate_dead_code() or changed


@register_pass
@dataclass(frozen=True)
class ClampRelu(Pass):
    """Turn every relu into clip(0, max): an upper bound keeps int8 ranges tight.

    Before: %y = qcc.relu(%x)
    After:  %y = qcc.clip(%x) {max=6.0, min=0.0}
    Option: clamp-relu{max=4.0}
    """

    name = "clamp-relu"
    max: float = 6.0

    def run(self, graph, ctx) -> bool:
        changed = False
        for node in graph.nodes:
            if node.op == "relu":
                clip = graph.add_node("clip", [node.inputs[0]], {"min": 0.0, "max": float(self.max)},
                                      before=node, names=[node.output.name + ".clip"])
                graph.replace_value(node.output, clip.output)
                graph.remove_node(node)
                changed = True
        ctx.report.setdefault("clamp-relu", {})["clamped"] = changed
        return changed
