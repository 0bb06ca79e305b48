"""Apply local rewrites until nothing changes: the loop every pattern pass shares.

Rules are a table from op name to functions `(node, graph) -> bool` that rewrite
around the node and say whether they did ("*" rules are tried on every node).
Dead code is swept after every round, so a rule may simply redirect uses and
leave the old nodes behind.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional

from .ir.graph import Graph, Node

Rule = Callable[[Node, Graph], bool]


def rewrite_to_fixpoint(graph: Graph, rules: Dict[str, List[Rule]], max_iters: int = 8,
                        applied: Optional[Dict[str, int]] = None) -> bool:
    """Run `rules` over the graph until a round changes nothing (at most `max_iters` rounds).

    `applied`, if given, counts how often each rule fired (by function name)."""
    changed_any = False
    for _ in range(max_iters):
        changed = False
        for n in graph.nodes:
            for rule in rules.get("*", []) + rules.get(n.op, []):
                if n.graph is None:  # an earlier rule in this round removed it
                    break
                if rule(n, graph):
                    changed = True
                    if applied is not None:
                        key = rule.__name__.strip("_")
                        applied[key] = applied.get(key, 0) + 1
                    break
        if graph.eliminate_dead_code():
            changed = True
        if not changed:
            break
        changed_any = True
    return changed_any
