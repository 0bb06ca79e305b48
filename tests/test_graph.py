"""Graph's node order: inserting next to a node and removing one (constant time, through the
nodes) must keep exactly the order a plain list would, and copies must be independent."""
from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from qcc.ir import Graph, TensorType
from qcc.ir.printer import print_graph

OPS = st.lists(st.tuples(st.sampled_from(["append", "before", "after", "remove", "read"]),
                         st.integers(0, 1 << 16)), max_size=60)


def _graph():
    g = Graph("g")
    x = g.add_input("x", TensorType((4,), "f32"))
    return g, x


@settings(max_examples=200, deadline=None)
@given(OPS)
def test_node_order_is_the_order_a_list_keeps(ops):
    g, x = _graph()
    model = []  # what the graph's order must be
    for k, (op, r) in enumerate(ops):
        if op == "read" or (op in ("before", "after", "remove") and not model):
            assert g.nodes == model and len(g) == len(model) and list(g) == model
            continue
        if op == "remove":
            node = model.pop(r % len(model))
            g.remove_node(node)
            assert node.graph is None
            continue
        anchor = model[r % len(model)] if model else None
        kw = {op: anchor} if op != "append" else {}
        node = g.add_node("exp", [x], names=[f"n{k}"], **kw)
        at = len(model) if op == "append" else model.index(anchor) + (op == "after")
        model.insert(at, node)
    assert g.nodes == model and len(g) == len(model)
    assert [g.index(n) for n in model] == list(range(len(model)))
    c = g.copy()
    assert print_graph(c) == print_graph(g)
    if model:  # the copy's order is its own
        c.remove_node(c.nodes[0])
        assert g.nodes == model and len(c) == len(model) - 1


def test_topo_sort_relinks_the_order():
    g, x = _graph()
    a = g.add_node("exp", [x], names=["a"])
    b = g.add_node("neg", [a.output], names=["b"])
    early = g.add_node("exp", [b.output], names=["early"], before=a)  # reads b before b exists
    g.topo_sort()
    assert g.nodes == [a, b, early]
    c = g.add_node("relu", [early.output], names=["c"], after=b)
    assert g.nodes == [a, b, c, early]
    g.topo_sort()
    assert g.nodes == [a, b, early, c]


def test_nodes_of_another_graph_are_refused():
    g, x = _graph()
    h, y = _graph()
    n = h.add_node("exp", [y], names=["n"])
    with pytest.raises(ValueError, match="not in the graph"):
        g.add_node("exp", [x], before=n)
    with pytest.raises(ValueError, match="not in the graph"):
        g.remove_node(n)
    assert h.nodes == [n] and len(g) == 0


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 1 << 16), st.booleans()), min_size=1, max_size=30),
       st.integers(0, 1 << 16), st.lists(st.integers(0, 1 << 16), max_size=3))
def test_dead_code_from_a_replaced_producer_is_what_the_whole_scan_removes(spec, pick, extra_outputs):
    """eliminate_dead_code(roots): after a rewrite replaces a value, looking only at its old
    producer and what dies with it leaves the graph the whole-graph scan leaves."""
    import numpy as np

    g, x = _graph()
    vals = [x]
    for k, (a, b, const) in enumerate(spec):
        other = g.add_const(f"c{k}", np.full((4,), k, np.float32)) if const else vals[b % len(vals)]
        vals.append(g.add_node("add", [vals[a % len(vals)], other], names=[f"v{k}"]).output)
    g.set_outputs([vals[-1]] + [vals[1 + i % (len(vals) - 1)] for i in extra_outputs])
    g.eliminate_dead_code()
    live = g.nodes
    n = live[pick % len(live)]
    if n.output in g.outputs:
        return
    copies = [g.copy(), g.copy()]
    for c, local in zip(copies, (True, False)):
        v = c.value(n.output.name)
        producer = v.producer
        c.replace_value(v, c.inputs[0])
        c.eliminate_dead_code([producer] if local else None)
    assert print_graph(copies[0]) == print_graph(copies[1])
    assert sorted(copies[0].constants) == sorted(copies[1].constants)
